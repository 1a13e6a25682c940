"""Checkpoints written in the background while the next epoch trains: the file holds the state
of the epoch it names, an interrupted trainer leaves it complete, a failed write fails the run."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import TINY
from retino_core import runs
from retino_core.config import make_config
from retino_core.training import loop, recorder, trainer
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.training.recorder import CheckpointWriter


def _held_writes(monkeypatch, release: threading.Event, held: threading.Event):
    """save_checkpoint as the writer thread calls it, held until ``release`` is set."""
    real = recorder.save_checkpoint

    def slow(obj, path):
        held.set()
        assert release.wait(60), "the test never released the write"
        real(obj, path)

    monkeypatch.setattr(recorder, "save_checkpoint", slow)


def test_the_file_holds_the_tensors_as_they_were_at_submit(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()
    release, held = threading.Event(), threading.Event()
    _held_writes(monkeypatch, release, held)
    with CheckpointWriter() as writer:
        writer.submit([({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "last.pt")])
        assert held.wait(60)
        with torch.no_grad():  # the next epoch trains on while the file is written
            for p in model.parameters():
                p.add_(1.0)
        opt.step()
        release.set()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(torch.equal(ck["model"][k], v) for k, v in before.items())
    assert torch.equal(ck["optimizer"]["state"][0]["exp_avg"], exp_avg)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_fails_the_run_naming_the_error(tiny_npz, tmp_path, monkeypatch):
    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "save_checkpoint", full)
    run_dir = prepare_run(make_config("cpu", data=str(tiny_npz), **TINY), tmp_path / "runs")
    with pytest.raises(OSError, match="No space left"):
        run_training(run_dir, quiet=True)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "No space left" in status["error"]
    assert not (run_dir / "summary.json").exists()


def test_an_error_leaving_the_block_is_not_hidden_by_a_failed_write(tmp_path, monkeypatch, capsys):
    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "save_checkpoint", full)
    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter() as writer:
            writer.submit([({"x": torch.ones(2)}, tmp_path / "last.pt")])
            raise KeyboardInterrupt
    assert "No space left" in capsys.readouterr().err


def test_an_interrupt_while_last_pt_is_written_leaves_it_whole_and_resume_is_exact(tiny_npz, tmp_path,
                                                                                   monkeypatch):
    cfg = make_config("cpu", data=str(tiny_npz), **{**TINY, "epochs": 2}, augment="flip")
    reference = run_training(prepare_run(cfg, tmp_path / "runs"), quiet=True)

    broken = prepare_run(cfg, tmp_path / "runs")
    release, held = threading.Event(), threading.Event()
    real_epoch = loop.train_one_epoch

    def interrupted_in_epoch_2(*args, **kwargs):
        if args[7] == 2:  # the `epoch` argument: epoch 1's files are still being written
            assert held.is_set()
            release.set()
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    with monkeypatch.context() as m:
        _held_writes(m, release, held)
        m.setattr(trainer, "train_one_epoch", interrupted_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            run_training(broken, quiet=True)
    # The trainer waited for the pending write before it said it stopped.
    assert runs.read_status(broken)["state"] == "interrupted"
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list((broken / "checkpoints").glob(".*.tmp"))

    resumed = run_training(broken, resume=True, quiet=True)
    assert [r["epoch"] for r in runs.epoch_rows(broken)] == [1, 2]
    assert resumed["test_acc"] == pytest.approx(reference["test_acc"])
    assert resumed["test_confusion"] == reference["test_confusion"]
    assert resumed["test_loss"] == pytest.approx(reference["test_loss"])
