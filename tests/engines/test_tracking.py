"""Runs in MLflow: ``mlflow-sync`` and ``train --mlflow`` against a real ``mlflow server``
(SQLite backend), every item read back through MlflowClient."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import TINY
from retino_core import runs
from retino_core.cli import main
from retino_core.engines import tracking
from retino_core.judging import trust

TINY_ARGS = ["--image-size", str(TINY["image_size"]), "--batch-size", str(TINY["batch_size"]),
             "--num-workers", "0", "--quiet"]


def assert_clean(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


def copy_run(run: Path, into: Path) -> Path:
    """A copy of a run folder without its checkpoints (syncing never reads them)."""
    return Path(shutil.copytree(run, into / run.name, ignore=shutil.ignore_patterns("*.pt", "export")))


def the_run(client: MlflowClient, experiment: str, run_id: str):
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`retino.run_id` = '{run_id}'")
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


def sync(uri: str, experiment: str, *run_refs, capsys) -> list[dict]:
    """Sync only (the registry has tests of its own, tests/engines/test_registry.py)."""
    assert main(["mlflow-sync", *map(str, run_refs), "--tracking-uri", uri, "--experiment", experiment, "--json",
                 "--no-register"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sync_reads_back_every_item_and_is_idempotent(mlflow_server, finished_run, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    runs.write_notes(run_dir, "first try of the recipe", "baseline, lab")
    [sent] = sync(mlflow_server.uri, "readback", run_dir, capsys=capsys)
    assert sent["created"] and sent["metrics"] > 0 and sent["artifacts"] >= 6
    client = MlflowClient(mlflow_server.uri)
    got = the_run(client, "readback", run_dir.name)
    assert got.info.run_id == sent["mlflow_run_id"] and got.info.status == "FINISHED"
    assert got.info.run_name == run_dir.name

    config = runs.read_json(run_dir / "config.json")
    assert got.data.params == tracking.params_of(config) and len(got.data.params) == len(config)
    for row in runs.epoch_rows(run_dir):  # per-epoch numbers, each at its epoch
        for key, value in tracking.numbers(row).items():
            history = client.get_metric_history(got.info.run_id, key)
            assert [(m.step, m.value) for m in history if m.step == row["epoch"]] == [(row["epoch"], pytest.approx(value))]
    steps = [r for r in runs.step_rows(run_dir)]
    assert sorted(m.step for m in client.get_metric_history(got.info.run_id, "step/train_loss")) == \
        [r["global_step"] for r in steps]
    summary = runs.read_json(run_dir / "summary.json")
    metrics = got.data.metrics
    assert metrics["summary/test_acc"] == pytest.approx(summary["test_acc"])
    for name in ("test_acc", "test_auc", "test_qwk"):  # the intervals
        assert (metrics[f"summary/{name}_ci_lo"], metrics[f"summary/{name}_ci_hi"]) == \
            pytest.approx(tuple(summary[f"{name}_ci"]))
    assert metrics["summary/test_recall_grade1"] == pytest.approx(summary["test_recall"][1])

    verdict = trust.of_summary(summary)
    tags = got.data.tags
    assert tags["retino.verdict"] == verdict["verdict"] == "no better than guessing"
    assert tags["retino.verdict_reasons"] == " ".join(verdict["reasons"]) and tags["retino.verdict_basis"]
    assert tags["retino.configuration"] == "resnet18 / scratch" and tags["retino.tags"] == "baseline, lab"
    assert tags["mlflow.note.content"] == "first try of the recipe"

    listed = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert {"summary.json", "config.json", "predictions.csv", "confusion_matrix.png", "model_card.md",
            "model_card.html"} <= listed
    down = Path(client.download_artifacts(got.info.run_id, "", str(tmp_path / "down")))
    for name in ("summary.json", "config.json", "predictions.csv"):
        assert (down / name).read_bytes() == (run_dir / name).read_bytes()
    assert Image.open(io.BytesIO((down / "confusion_matrix.png").read_bytes())).size[0] > 400
    assert run_dir.name in (down / "model_card.md").read_text() and "no better than guessing" in \
        (down / "model_card.md").read_text()

    [again] = sync(mlflow_server.uri, "readback", run_dir, capsys=capsys)  # nothing new: nothing sent
    assert (again["created"], again["params"], again["metrics"], again["artifacts"]) == (False, 0, 0, 0)
    assert again["mlflow_run_id"] == got.info.run_id
    assert len(client.get_metric_history(got.info.run_id, "summary/test_acc")) == 1
    runs.write_notes(run_dir, "second thoughts", "baseline")  # changed notes and tags go in
    sync(mlflow_server.uri, "readback", run_dir, capsys=capsys)
    tags = the_run(client, "readback", run_dir.name).data.tags
    assert (tags["mlflow.note.content"], tags["retino.tags"]) == ("second thoughts", "baseline")


def test_train_live_then_an_interrupted_copy_gets_its_new_epochs_appended(mlflow_server, tiny_npz, runs_dir,
                                                                          tmp_path, capsys) -> None:
    uri = mlflow_server.uri
    assert main(["train", "--data", str(tiny_npz), "--epochs", "2", *TINY_ARGS, "--max-steps-per-epoch", "3",
                 "--mlflow", uri, "--mlflow-experiment", "live"]) == 0
    out = capsys.readouterr()
    run_dir = Path(out.out.strip().splitlines()[-1])
    client = MlflowClient(uri)
    live = the_run(client, "live", run_dir.name)
    assert live.info.status == "FINISHED" and f"MLflow run {live.info.run_id}" in out.err
    assert sorted(m.step for m in client.get_metric_history(live.info.run_id, "val_acc")) == [1, 2]
    assert "summary/test_acc" in live.data.metrics and "confusion_matrix.png" in \
        {a.path for a in client.list_artifacts(live.info.run_id)}
    [again] = sync(uri, "live", run_dir, capsys=capsys)  # the live run is the one mlflow-sync keeps
    assert again["mlflow_run_id"] == live.info.run_id and again["metrics"] == again["artifacts"] == 0

    # The same run as it was when stopped after its first epoch, synced, then finished.
    copy = copy_run(run_dir, tmp_path / "copy")
    rows = runs.read_metrics(run_dir)
    first = [r for r in rows if int(r.get("epoch", 0)) <= 1]
    runs.atomic_write(copy / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in first).encode())
    for name in ("summary.json", "predictions.csv"):
        (copy / name).unlink()
    runs.write_status(copy, "interrupted", error="stopped by the user")
    [one] = sync(uri, "append", copy, capsys=capsys)
    mid = client.get_run(one["mlflow_run_id"])
    assert mid.info.status == "KILLED" and "summary/test_acc" not in mid.data.metrics
    assert [m.step for m in client.get_metric_history(one["mlflow_run_id"], "val_acc")] == [1]
    for name in ("metrics.jsonl", "summary.json", "predictions.csv", "status.json"):
        shutil.copy2(run_dir / name, copy / name)
    [two] = sync(uri, "append", copy, capsys=capsys)
    assert two["mlflow_run_id"] == one["mlflow_run_id"] and not two["created"]
    end = client.get_run(one["mlflow_run_id"])
    assert end.info.status == "FINISHED" and "summary/test_acc" in end.data.metrics
    history = client.get_metric_history(one["mlflow_run_id"], "val_acc")
    assert sorted(m.step for m in history) == [1, 2]  # epoch 2 appended, epoch 1 not twice
    assert sorted(m.step for m in client.get_metric_history(one["mlflow_run_id"], "step/train_loss")) == \
        sorted(r["global_step"] for r in rows if r.get("kind") == "step")


def test_bad_input_gets_a_clear_error(mlflow_server, finished_run, runs_dir, tiny_npz, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    assert main(["mlflow-sync", str(run_dir), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot use the MLflow tracking server at http://127.0.0.1:9: connection refused" in err
    assert_clean(err)
    assert main(["mlflow-sync", str(run_dir), "--tracking-uri", "nosuch://x"]) == 2
    assert "cannot use the MLflow tracking server at nosuch://x" in capsys.readouterr().err
    assert main(["mlflow-sync", str(run_dir), "--tracking-uri", ""]) == 2
    assert "no tracking URI" in capsys.readouterr().err

    runs.write_status(run_dir, "running", pid=1, heartbeat_ts=9e12, host=None)  # a live trainer's record
    assert main(["mlflow-sync", str(run_dir), "--tracking-uri", mlflow_server.uri]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir.name} (still training)" in err and "train --mlflow" in err
    assert_clean(err)
    # with no run named, the runs still training are skipped, the others synced
    shutil.copytree(finished_run, runs_dir / finished_run.name, ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(run_dir, runs_dir / "training-now")
    # ... and the champion it would register has no checkpoint left: said, the sync kept, status 1
    assert main(["mlflow-sync", "--tracking-uri", mlflow_server.uri, "--experiment", "all"]) == 1
    out = capsys.readouterr()
    assert finished_run.name in out.out and "training-now" not in out.out
    assert "skipped training-now: running" in out.err
    assert "error: retino-tiny-resnet18-scratch not registered: checkpoint " in out.err and "not found" in out.err
    assert_clean(out.err)
    assert main(["mlflow-sync", "--tracking-uri", mlflow_server.uri, "--experiment", "all", "--no-register"]) == 0
    assert "already up to date" in capsys.readouterr().err

    # live mode checks the server before a run folder exists
    assert main(["train", "--data", str(tiny_npz), "--mlflow", "http://127.0.0.1:9", *TINY_ARGS]) == 2
    assert "connection refused" in capsys.readouterr().err
    assert not [p for p in runs_dir.iterdir() if p.name not in (finished_run.name, "training-now")]
