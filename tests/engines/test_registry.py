"""The model registry against a real ``mlflow server``: each configuration's champion registered as
``retino-<data>-<configuration>`` with the alias ``champion``, loaded back with
``mlflow.pyfunc.load_model`` and answering exactly as the export's predict_onnx.py does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from conftest import fundus_image, jpeg_bytes
from retino_core import runs
from retino_core.cli import main
from retino_core.grading import standalone
from retino_core.judging import champions, decision, operating


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory, usable_run: Path, finished_run: Path) -> Path:
    """A runs folder with two configurations' worth of runs: the usable one on its easy data, and
    the one that learned nothing on the tiny RetinaMNIST sample (with their checkpoints: the
    registry exports them)."""
    base = tmp_path_factory.mktemp("registry") / "runs"
    for run in (usable_run, finished_run):
        shutil.copytree(run, base / run.name, ignore=shutil.ignore_patterns("export", "last.pt"))
    return base


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    made = []
    for grade in range(3):
        path = folder / f"eye-{grade}.jpg"
        path.write_bytes(jpeg_bytes(fundus_image(48, seed=grade, grade=grade, easy=True)))
        made.append(path)
    disc = Image.new("RGB", (300, 300))
    ImageDraw.Draw(disc).ellipse((10, 10, 290, 290), fill=(220, 110, 40))  # no retinal detail: refused
    disc.save(folder / "disc.png")
    (folder / "notes.txt").write_text("not a photo")
    return made + [folder / "disc.png", folder / "notes.txt"]


def export_answers(run_dir: Path, photos: list[Path]) -> list[dict]:
    """What the run's exported predict_onnx.py answers, as a user runs it."""
    script = run_dir / "export" / "onnx" / "predict_onnx.py"
    out = subprocess.run([sys.executable, str(script), *map(str, photos)], capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: (None if v in ("", [], None) or v != v else v) for k, v in row.items()} for row in rows]


def app_answers(run_dir: Path, photos: list[Path], capsys) -> list[dict]:
    """What ``predict --json`` answers (the app's own door: Predictor.from_run, decide)."""
    capsys.readouterr()
    assert main(["predict", *map(str, photos), "--run", str(run_dir), "--json"]) == 1  # notes.txt is unreadable
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


NUMBERS = ("referable_probability", *decision.PROBABILITY_COLUMNS, "ood_score")


def assert_same_answers(got: list[dict], want: list[dict]) -> None:
    """The same keys, the same decision, the same numbers up to ONNX's rounding."""
    assert [list(row) for row in got] == [list(row) for row in want]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in NUMBERS} == {k: v for k, v in w.items() if k not in NUMBERS}
        assert [g[k] for k in NUMBERS] == [w[k] if w[k] is None else pytest.approx(w[k], rel=1e-3, abs=1e-4)
                                           for k in NUMBERS]


def test_champions_are_registered_and_load_by_alias(mlflow_server, lab_runs, photos, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    assert main(["mlflow-sync", "--tracking-uri", mlflow_server.uri, "--runs-dir", str(lab_runs),
                 "--experiment", "registry", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    registered = {d["model"]: d for d in lines if "model" in d}
    every = runs.list_runs(lab_runs)
    expected = {}
    for data in {champions.data_of(r) for r in every}:
        for champ in champions.champions(every, data).values():
            expected[champ.run.run_id] = champ
    assert sorted(d["run_id"] for d in registered.values()) == sorted(expected)
    assert set(registered) == {"retino-easy-resnet18-scratch", "retino-tiny-resnet18-scratch"}

    client = MlflowClient(mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    statuses = {}
    for name, done in registered.items():
        version = client.get_model_version_by_alias(name, "champion")
        assert version.version == done["version"] and version.tags["retino.run_id"] == done["run_id"]
        assert version.tags["retino.champion_reason"] == expected[done["run_id"]].reason
        assert version.tags["retino.operating_point"] == operating.of_run(lab_runs / done["run_id"]).sentence()
        mrun = client.get_run(version.run_id)
        assert mrun.data.tags["retino.run_id"] == done["run_id"]  # the champion's synced run
        assert {a.path for a in client.list_artifacts(version.run_id, "export/onnx")} >= \
            {"export/onnx/model.onnx", "export/onnx/preprocessing.json", "export/onnx/predict_onnx.py"}
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        got = model.predict(pd.DataFrame({"path": [str(p) for p in photos]}))
        want = export_answers(lab_runs / done["run_id"], photos)
        assert comparable(got.to_dict("records")) == comparable(want)  # the export's own answer, decision and all
        app = app_answers(lab_runs / done["run_id"], photos, capsys)
        assert_same_answers(got.replace({np.nan: None}).to_dict("records"), app)  # and the app's
        statuses[name] = [row["status"] for row in app]
        refused = app[-2]  # the plain disc: not graded, so no grade and no referral
        assert refused["status"] == decision.NOT_GRADED and refused["reasons"]
        assert refused["grade"] is refused["grade_name"] is refused["refer"] is None
        uploads = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos],
                                              "name": [p.name for p in photos]}))
        assert uploads["file"].tolist() == [p.name for p in photos]
        assert uploads.drop(columns=["file", "error"]).astype(str).values.tolist() == \
            got.drop(columns=["file", "error"]).astype(str).values.tolist()
    # A usable model grades the photos like its training ones; one that learned nothing grades none.
    assert statuses["retino-easy-resnet18-scratch"] == ["graded"] * 3 + ["not graded", "unreadable"]
    assert set(statuses["retino-tiny-resnet18-scratch"][:4]) <= {"not graded", "no usable model"}
    # Nothing new: the same versions, the alias where it was.
    assert main(["mlflow-sync", "--tracking-uri", mlflow_server.uri, "--runs-dir", str(lab_runs),
                 "--experiment", "registry", "--json"]) == 0
    again = {d["model"]: d for d in map(json.loads, capsys.readouterr().out.splitlines()) if "model" in d}
    assert {k: (d["version"], d["moved_from"]) for k, d in again.items()} == \
        {k: (d["version"], None) for k, d in registered.items()}


def test_the_alias_follows_the_champion(mlflow_server, lab_runs, usable_run, capsys) -> None:
    """A newer run of the same configuration that does as well takes over; pinning the first
    brings the alias back to its version (no new one)."""
    first = lab_runs / usable_run.name
    assert (first / "export" / "onnx" / "predict_onnx.py").exists()  # exported by the test above
    newer = Path(shutil.copytree(first, lab_runs / "zz-newer-easy-run"))  # the same weights and export
    status = runs.read_status(newer)
    runs.write_json(newer / "status.json", {**status, "created": runs.now_iso()})
    name = "retino-easy-resnet18-scratch"
    client = MlflowClient(mlflow_server.uri)
    before = client.get_model_version_by_alias(name, "champion").version

    assert main(["mlflow-sync", str(newer), "--tracking-uri", mlflow_server.uri, "--experiment", "registry"]) == 0
    moved = client.get_model_version_by_alias(name, "champion")
    assert moved.tags["retino.run_id"] == newer.name and moved.version != before
    assert f"the alias moved from version {before}" in capsys.readouterr().err

    champions.pin(first.name, lab_runs)
    assert main(["mlflow-sync", str(first), "--tracking-uri", mlflow_server.uri, "--experiment", "registry"]) == 0
    back = client.get_model_version_by_alias(name, "champion")
    assert (back.version, back.tags["retino.champion_reason"]) == (before, "pinned")
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    # An export that would not answer as the app does today (a predict_onnx.py of an older
    # release) is made again before it is registered; made again, it is the files the champion's
    # version already holds (the export is reproducible), so no new version.
    script = first / "export" / "onnx" / "predict_onnx.py"
    script.write_text(script.read_text() + "\n# an older release\n")
    capsys.readouterr()
    assert main(["mlflow-sync", str(first), "--tracking-uri", mlflow_server.uri, "--experiment", "registry"]) == 0
    assert "its export answers by an older rule" in capsys.readouterr().err
    assert script.read_text() == standalone.standalone_script()
    now = client.get_model_version_by_alias(name, "champion")
    assert (now.version, now.tags["retino.grader"]) == (back.version, back.tags["retino.grader"])


def test_the_same_package_writes_the_same_predict_onnx_py_in_every_process() -> None:
    """A registration in another process must find the export current (not make a new version
    of the same model): the script's constants may not follow a process's string hashing."""
    code = "import sys; from retino_core.grading import standalone; sys.stdout.write(standalone.standalone_script())"
    scripts = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(scripts) == 1 and "GLOB_CHARS = frozenset({" in scripts.pop()
