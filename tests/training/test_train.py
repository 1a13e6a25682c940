"""The trainer end to end on tiny real data: every run-folder file, resume, failures."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from retino_core import runs
from retino_core.config import make_config
from retino_core.errors import TrainingFailed
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.training import recipe
from retino_core.training import loop, trainer


def test_one_epoch_writes_every_run_folder_file(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.json", "status.json", "metrics.jsonl", "summary.json", "predictions.csv", "checkpoints"} <= names
    status = runs.read_status(finished_run)
    assert status["state"] == "done" and status["pid"] and status["heartbeat"]
    summary = json.loads((finished_run / "summary.json").read_text())
    for key in ("test_acc", "test_auc", "test_qwk", "test_confusion", "best_epoch", "selected_on", "train_seconds"):
        assert key in summary, key
    assert summary["selected_on"] == "val"
    assert len(summary["test_confusion"]) == 5 and all(len(r) == 5 for r in summary["test_confusion"])
    assert sum(map(sum, summary["test_confusion"])) == 16
    assert summary["test_majority_acc"] > 0
    rows = runs.read_metrics(finished_run)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert steps and {"train_loss", "train_acc", "lr", "images_per_s"} <= steps[-1].keys()
    assert len(epochs) == 1
    for key in ("train_loss", "val_loss", "val_acc", "val_qwk", "val_confusion", "test_acc", "test_loss"):
        assert key in epochs[0], key
    for which in ("best", "last"):
        ck = torch.load(finished_run / "checkpoints" / f"{which}.pt", weights_only=True)
        assert ck["preprocessing"]["image_size"] == 32
        assert len(ck["preprocessing"]["mean"]) == 3 and len(ck["preprocessing"]["std"]) == 3
        assert ck["arch"] == "resnet18" and set(ck["model"]) == set(ck["model"])


def _interrupt_at_epoch(monkeypatch, epoch_to_stop: int):
    real = loop.train_one_epoch

    def wrapped(*args, **kwargs):
        if args[7] == epoch_to_stop:  # the `epoch` argument
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", wrapped)


def test_resume_continues_from_last_checkpoint_and_matches_an_uninterrupted_run(tiny_npz, tmp_path, monkeypatch):
    cfg = make_config("cpu", data=str(tiny_npz), **{**TINY, "epochs": 2}, augment="flip")
    straight = prepare_run(cfg, tmp_path / "runs")
    reference = run_training(straight, quiet=True)

    broken = prepare_run(cfg, tmp_path / "runs")
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_training(broken, quiet=True)
    status = runs.read_status(broken)
    assert status["state"] == "interrupted" and "resume" in status["error"]
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (broken / "summary.json").exists()

    resumed = run_training(broken, resume=True, quiet=True)
    assert runs.read_status(broken)["state"] == "done"
    assert [r["epoch"] for r in runs.epoch_rows(broken)] == [1, 2]
    assert resumed["test_acc"] == pytest.approx(reference["test_acc"])
    assert resumed["test_confusion"] == reference["test_confusion"]


def test_nan_loss_fails_the_run_with_a_message(tiny_npz, tmp_path):
    cfg = make_config("cpu", data=str(tiny_npz), **TINY, lr=1e30, optimizer="sgd", scheduler="none")
    run_dir = prepare_run(cfg, tmp_path / "runs")
    with pytest.raises(TrainingFailed, match="loss became"):
        run_training(run_dir, quiet=True)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "loss became" in status["error"]


def test_lr_schedule_warms_up_then_decays():
    cfg = make_config("cpu", epochs=4, warmup_epochs=1.0, scheduler="cosine")
    f = recipe.lr_factor(cfg, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(39) < 0.01
    lab = recipe.lr_factor(make_config("lab"), 10)
    assert {lab(s) for s in range(0, 100, 7)} == {1.0}


@pytest.mark.parametrize("loss,sampler", [("weighted_ce", "none"), ("focal", "weighted")])
def test_imbalance_options_train(tiny_npz, tmp_path, loss, sampler):
    cfg = make_config("cpu", data=str(tiny_npz), **TINY, loss=loss, sampler=sampler, max_steps_per_epoch=2)
    summary = run_training(prepare_run(cfg, tmp_path / "runs"), quiet=True)
    assert 0 <= summary["test_acc"] <= 1
