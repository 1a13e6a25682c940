"""The run-folder contract, read without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from retino_core import runs


def test_reading_runs_does_not_import_torch(finished_run):
    code = ("import sys; from retino_core import runs, config; from retino_core.training import cluster, launch;"
            "from retino_core.data import sources, images, integrity;"
            "from retino_core.judging import metrics, trust, decision, operating;"
            "from retino_core.models import weights; from retino_core.report import display, eta, runs_table;"
            "from retino_core.grading import exported; from retino_core.training import calibrate;"
            f"r = runs.load_run({str(finished_run)!r}); assert r.state == 'done', r.state; display.slot_text(r);"
            "eta.measured_speeds([r]); runs_table.table_rows([r]);"
            "d = decision.decide([0.2] * 5, None, operating.of_run(r.path), trust.is_usable_verdict(r.summary.get('trust')));"
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_ids_are_unique_and_safe(tmp_path):
    ids = {runs.create_run_dir("same", tmp_path).name for _ in range(5)}
    assert len(ids) == 5
    assert runs.create_run_dir("../../etc/passwd; rm -rf /", tmp_path).parent == tmp_path
    for bad in ("../x", "a/b", "..", "", "a b", "$(id)", "x;y"):
        with pytest.raises(runs.RunError):
            runs.run_path(bad, tmp_path)


def test_jsonl_reader_skips_a_partial_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    runs.append_jsonl(path, [{"kind": "step", "a": 1}, {"kind": "epoch", "b": 2}])
    with open(path, "a") as fh:
        fh.write('{"kind": "step", "a": ')
    assert runs.read_jsonl(path) == [{"kind": "step", "a": 1}, {"kind": "epoch", "b": 2}]


def test_atomic_json_leaves_no_temp_files(tmp_path):
    runs.write_json(tmp_path / "s.json", {"x": 1})
    runs.write_json(tmp_path / "s.json", {"x": 2})
    assert runs.read_json(tmp_path / "s.json") == {"x": 2}
    assert os.listdir(tmp_path) == ["s.json"]


def test_dead_or_silent_trainer_reads_as_interrupted(tmp_path):
    run = runs.create_run_dir("r", tmp_path)
    runs.write_json(run / "config.json", {"arch": "resnet18"})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    runs.write_status(run, "running", pid=proc.pid, heartbeat_ts=time.time())
    assert runs.read_status(run)["state"] == "interrupted"
    runs.write_status(run, "running", pid=os.getpid(), heartbeat_ts=time.time() - 3600)
    assert runs.read_status(run)["state"] == "interrupted"
    runs.write_status(run, "running", pid=os.getpid(), heartbeat_ts=time.time())
    assert runs.read_status(run)["state"] == "running"
    with pytest.raises(runs.RunError, match="still running"):
        runs.delete_run(run.name, tmp_path)


def test_a_real_run_stands_for_its_configuration_and_pins_live_beside_the_runs(finished_run, tmp_path):
    from retino_core.judging import champions

    base = finished_run.parent
    infos = runs.list_runs(base)
    found = champions.champion_of(infos[0], infos)
    assert found.run.path == finished_run and found.reason == "only finished run"
    assert runs.checkpoint_path(finished_run).exists()
    assert runs.read_pins(tmp_path) == []
    assert runs.update_pins(lambda p: p + ["a", "b", "a"], tmp_path) == ["a", "b"]
    assert runs.read_pins(tmp_path) == ["a", "b"] and not list(tmp_path.glob(f".{runs.PINS_FILE}.*.tmp"))
    (tmp_path / runs.PINS_FILE).write_text("{not json")  # a damaged file reads as no pins
    assert runs.read_pins(tmp_path) == [] and runs.update_pins(lambda p: p + ["c"], tmp_path) == ["c"]
    with pytest.raises(runs.RunError):
        runs.checkpoint_path(finished_run, "../x")


def test_metrics_are_read_incrementally_and_a_partial_line_waits(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    runs.append_jsonl(path, [{"kind": "step", "step": 1}])
    assert [r["step"] for r in runs.read_jsonl(path)] == [1]
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: reads.append(f) or real_open(f, *a, **k))
    assert [r["step"] for r in runs.read_jsonl(path)] == [1] and reads == []  # unchanged: a stat, no read
    with real_open(path, "a") as fh:
        fh.write('{"kind": "step", "step": 2}\n{"kind": "st')  # the trainer is mid-write
    assert [r["step"] for r in runs.read_jsonl(path)] == [1, 2]
    with real_open(path, "a") as fh:
        fh.write('ep", "step": 3}\n')
    assert [r["step"] for r in runs.read_jsonl(path)] == [1, 2, 3]
    runs.atomic_write(path, b'{"kind": "resume", "step": 0}\n')  # rewritten on resume
    assert [r["step"] for r in runs.read_jsonl(path)] == [0]
    path.unlink()
    assert runs.read_jsonl(path) == []
