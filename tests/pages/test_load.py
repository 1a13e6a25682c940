"""Many viewers, bounded: three browser sessions walk every page (an upload each) of a real
`streamlit run` while a run trains, through bench/load.py's own functions. Asserts what must
hold at any speed: no errors, every session reached every page and graded its upload. Timings
are bench/load.py's to report, never asserted here.

Needs Debian's chromium (/usr/bin/chromium) and Playwright's Python package; outside CI the
test skips when either is missing, as the browser test does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from retino_core import runs

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if not CHROMIUM.exists() and not IN_CI:
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium); CI installs it and runs this test",
                allow_module_level=True)
if not IN_CI:
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import load  # noqa: E402 - bench/load.py, a script; its dataclasses need it imported as a module


def test_three_viewers_while_a_run_trains(tmp_path: Path, usable_run: Path) -> None:
    # Small and bounded: a 32 px trainer, no warm-up walk and no solo measurement, one walk each,
    # then all three on Live together for 2 s.
    args = load.get_args_parser().parse_args([
        "--viewers", "3", "--browsers", "normal", "--walks", "1", "--dwell", "0.5", "--ramp", "1",
        "--solo-seconds", "0", "--settle", "0", "--watch", "2", "--seconds", "120", "--timeout", "60", "--no-warm-up",
        "--trainer-args", "--image-size", "32", "--batch-size", "16"])
    result = load.run_load(args, tmp_path, finished_run=usable_run)

    (phase,) = result["phases"]
    assert load.phase_errors(phase) == []
    assert result["server_tracebacks"] == 0
    every_page = {link for link, _, _ in load.WALK}
    for viewer in phase["sessions"]:
        assert viewer.reached == every_page, f"viewer {viewer.number} reached only {sorted(viewer.reached)}"
        assert len(viewer.uploads) == 1, f"viewer {viewer.number}'s upload was not graded"
        assert viewer.watched, f"viewer {viewer.number} did not stay on Live while the others watched"
    assert result["trainer_alive"], "the training run stopped while the viewers walked"


def test_run_folders_are_read_once_per_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session lists the runs every 2 s: an unchanged file is not parsed again, a changed
    one is seen at once, and a deleted run leaves nothing behind in the shared cache."""
    from app_fixtures import write_run

    run_dir = write_run(tmp_path / "runs")
    parsed = []
    read_json = runs.read_json
    monkeypatch.setattr(runs, "read_json", lambda path, default=None: parsed.append(Path(path).name)
                        or read_json(path, default))

    (first,) = runs.list_runs(tmp_path / "runs")
    assert sorted(parsed) == ["config.json", "status.json", "summary.json"]  # no notes.json yet
    parsed.clear()
    (again,) = runs.list_runs(tmp_path / "runs")
    assert parsed == [] and again.summary == first.summary and again.summary is not first.summary

    runs.write_notes(run_dir, "checked by hand", "reviewed")
    runs.write_status(run_dir, "failed", error="synthetic")
    (changed,) = runs.list_runs(tmp_path / "runs")
    assert changed.state == "failed" and changed.tags == ["reviewed"]

    runs.delete_run(run_dir.name, tmp_path / "runs")
    assert runs.list_runs(tmp_path / "runs") == []
    assert not [key for key in runs._json_files if key.startswith(str(run_dir))]
