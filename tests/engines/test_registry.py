"""The model registry against a real ``mlflow server``: each configuration's champion registered as
``retino-<data>-<configuration>`` with the alias ``champion``, loaded back with
``mlflow.pyfunc.load_model`` and answering exactly as the export's predict_onnx.py does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import fundus_image, jpeg_bytes
from retino_core import runs
from retino_core.cli import main
from retino_core.judging import champions


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
    (folder / "notes.txt").write_text("not a photo")
    return made + [folder / "notes.txt"]


def export_answers(run_dir: Path, photos: list[Path]) -> list[dict]:
    """What the run's exported predict_onnx.py answers, as a user runs it."""
    script = run_dir / "export" / "onnx" / "predict_onnx.py"
    out = subprocess.run([sys.executable, str(script), *map(str, photos)], capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: (None if v in ("", [], None) or v != v else v) for k, v in row.items()} for row in rows]


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
    for name, done in registered.items():
        version = client.get_model_version_by_alias(name, "champion")
        assert version.version == done["version"] and version.tags["retino.run_id"] == done["run_id"]
        assert version.tags["retino.champion_reason"] == expected[done["run_id"]].reason
        mrun = client.get_run(version.run_id)
        assert mrun.data.tags["retino.run_id"] == done["run_id"]  # the champion's synced run
        assert {a.path for a in client.list_artifacts(version.run_id, "export/onnx")} >= \
            {"export/onnx/model.onnx", "export/onnx/preprocessing.json", "export/onnx/predict_onnx.py"}
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        got = model.predict(pd.DataFrame({"path": [str(p) for p in photos]}))
        want = export_answers(lab_runs / done["run_id"], photos)
        assert comparable(got.to_dict("records")) == comparable(want)  # the export's own answer, decision and all
        uploads = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos],
                                              "name": [p.name for p in photos]}))
        assert uploads["file"].tolist() == [p.name for p in photos]
        assert uploads.drop(columns=["file", "error"]).astype(str).values.tolist() == \
            got.drop(columns=["file", "error"]).astype(str).values.tolist()
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
