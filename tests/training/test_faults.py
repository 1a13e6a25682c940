"""Faults a long-running dashboard meets: a trainer killed with SIGKILL mid-epoch, a loss that
blows up, CUDA out of memory, two users queueing the four runs at once, the app restarting."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, write_tiny_npz
from retino_core import runs
from retino_core.cli import main
from retino_core.config import make_config
from retino_core.errors import TrainingFailed
from retino_core.models.builders import weights_cache_file
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.training import trainer
from retino_core.training import recipe
from retino_core.training import loop

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 300  # generous: the machine is shared; nothing here asserts a duration


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE_S):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def assert_no_half_written_file(run_dir: Path) -> None:
    """Every JSON parses, every JSONL line but a partial last one parses, checkpoints load safely."""
    for path in run_dir.rglob("*"):
        if path.is_dir() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue  # a writer's temp file, never read by anyone
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().split("\n")
            for line in lines[:-1]:  # the text after the last newline may be a row being appended
                json.loads(line)
        elif path.suffix == ".pt":
            ck = torch.load(path, map_location="cpu", weights_only=True)
            assert "model" in ck and "epoch" in ck


# ---------------------------------------------------------------- kill -9 mid-epoch, then resume

# The real CLI in a real process; a step row after every step, so "mid-epoch" is easy to catch.
TRAINER = textwrap.dedent("""
    import sys
    import retino_core.training.loop as loop
    loop.STEP_ROW_EVERY_S = 0.0
    from retino_core.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _mid_epoch_after_a_checkpoint(run_dir: Path):
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return None
    rows = runs.read_metrics(run_dir)
    done = [r["epoch"] for r in rows if r.get("kind") == "epoch"]
    last = rows[-1] if rows else {}
    if done and last.get("kind") == "step" and last["epoch"] > max(done) and last["step"] < last["steps"]:
        return last
    return None


def test_sigkill_mid_epoch_reads_interrupted_and_resume_continues(tmp_path: Path, runs_dir: Path) -> None:
    npz = write_tiny_npz(tmp_path / "tiny.npz", n_train=64, n_val=16, n_test=16)  # 8 steps an epoch
    with open(tmp_path / "trainer.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAINER, "train", "--data", str(npz), "--epochs", "2", "--image-size", "32",
             "--batch-size", "8", "--num-workers", "0", "--name", "killed", "--quiet"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        run_dir = wait_for(lambda: next(iter(runs_dir.iterdir()), None), "the run folder", proc)
        row = wait_for(lambda: _mid_epoch_after_a_checkpoint(run_dir), "a step row after last.pt", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    on_disk = runs.read_json(run_dir / "status.json")
    assert on_disk["state"] == "running" and on_disk["pid"] == proc.pid  # nobody said goodbye
    status = runs.read_status(run_dir)
    assert status["state"] == "interrupted" and status["stale"] and "killed" in status["error"]
    assert_no_half_written_file(run_dir)
    ck_epoch = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= ck_epoch < row["epoch"]
    before = [r for r in runs.epoch_rows(run_dir) if r["epoch"] <= ck_epoch]

    assert main(["train", "--resume", run_dir.name, "--quiet"]) == 0
    status = runs.read_status(run_dir)
    assert status["state"] == "done" and status["resumed"] is True
    rows = runs.read_metrics(run_dir)
    epochs = [r["epoch"] for r in rows if r["kind"] == "epoch"]
    assert epochs == [1, 2]  # continued, not restarted, and no epoch twice
    assert [r["epoch"] for r in rows if r["kind"] == "resume"] == [ck_epoch]
    assert runs.epoch_rows(run_dir)[:ck_epoch] == before  # the rows from before the kill are kept
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert_no_half_written_file(run_dir)


# ---------------------------------------------------------------- a loss that blows up


def test_huge_learning_rate_fails_the_run_naming_the_loss(tiny_npz: Path, runs_dir: Path, capsys) -> None:
    assert main(["train", "--data", str(tiny_npz), "--lr", "1e30", "--image-size", "32", "--batch-size", "8",
                 "--epochs", "2", "--max-steps-per-epoch", "3", "--num-workers", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: the training loss became (nan|inf)", err) and "lower the learning rate" in err
    [info] = runs.list_runs(runs_dir)
    assert info.state == "failed" and re.search("training loss became (nan|inf)", info.status["error"])
    assert not runs.epoch_rows(info.path)  # stopped within the first epoch


def test_infinite_loss_fails_the_run(tiny_npz: Path, runs_dir: Path, monkeypatch) -> None:
    real = recipe.build_loss

    def exploding(cfg, labels):
        loss = real(cfg, labels)
        return lambda logits, y: loss(logits, y) * float("inf")

    monkeypatch.setattr(trainer, "build_loss", lambda cfg, labels: _Module(exploding(cfg, labels)))
    run_dir = prepare_run(make_config("cpu", data=str(tiny_npz), **TINY, max_steps_per_epoch=1))
    with pytest.raises(TrainingFailed, match="training loss became inf"):
        run_training(run_dir, quiet=True)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "training loss became inf" in status["error"]


class _Module(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, y):
        return self.fn(logits, y)


# ---------------------------------------------------------------- CUDA out of memory (injected)


def _oom_above(monkeypatch, limit: int) -> list[int]:
    """train_one_epoch raises CUDA OOM for batches over ``limit``; returns the sizes tried."""
    tried: list[int] = []
    real = loop.train_one_epoch

    def fake(model, loader, loss_fn, optimizer, scheduler, device, cfg, *args, **kwargs):
        tried.append(cfg.batch_size)
        if cfg.batch_size > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, loader, loss_fn, optimizer, scheduler, device, cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", fake)
    return tried


def test_out_of_memory_retries_with_half_the_batch(tiny_npz: Path, runs_dir: Path, monkeypatch) -> None:
    tried = _oom_above(monkeypatch, 8)
    run_dir = prepare_run(make_config("cpu", data=str(tiny_npz), **{**TINY, "batch_size": 32},
                                      max_steps_per_epoch=1))
    run_training(run_dir, quiet=True)
    assert tried == [32, 16, 8]
    status = runs.read_status(run_dir)
    assert status["state"] == "done"
    assert status["notes"] == ["CUDA out of memory with batch size 32; retried with 16",
                               "CUDA out of memory with batch size 16; retried with 8"]
    assert runs.read_json(run_dir / "config.json")["batch_size"] == 8  # what really trained
    assert torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["config"]["batch_size"] == 8


def test_out_of_memory_at_the_smallest_batch_fails_naming_it(tiny_npz: Path, runs_dir: Path, monkeypatch,
                                                             capsys) -> None:
    tried = _oom_above(monkeypatch, 0)
    assert main(["train", "--data", str(tiny_npz), "--image-size", "32", "--batch-size", "16",
                 "--epochs", "1", "--num-workers", "0", "--quiet"]) == 1
    assert tried == [16, 8, 4]
    err = capsys.readouterr().err
    assert "CUDA out of memory with batch size 4" in err and "try --batch-size 2" in err
    [info] = runs.list_runs(runs_dir)
    assert info.state == "failed" and "batch size 4" in info.status["error"]
    assert len(info.status["notes"]) == 2


# ---------------------------------------------------------------- two users, one queue, app restart

ENQUEUE_FOUR = textwrap.dedent("""
    import os, sys, time
    from retino_core.report import lab
    from retino_core.training import launch
    while not os.path.exists(sys.argv[2]):  # both users press the button at the same moment
        time.sleep(0.005)
    for cfg in lab.four_configs("cpu", data=sys.argv[1], epochs=1, image_size=32, batch_size=8,
                                   max_steps_per_epoch=1, num_workers=0):
        launch.enqueue(cfg.to_dict())
""")


def _fake_imagenet_cache() -> None:
    from torchvision import models as tvm

    for arch, builder in (("resnet18", tvm.resnet18), ("resnet50", tvm.resnet50)):
        target = weights_cache_file(arch)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(builder(num_classes=1000).state_dict(), target)


def _worker_pids(runs_dir: Path) -> list[int]:
    """Worker processes of this runs folder (found by their exact command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and str(runs_dir).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def test_two_users_queue_the_four_at_once_and_the_app_restarts(tmp_path: Path, runs_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RETINO_OFFLINE", "1")
    _fake_imagenet_cache()
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    go = tmp_path / "go"
    users = [subprocess.Popen([sys.executable, "-c", ENQUEUE_FOUR, str(npz), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    go.touch()
    try:
        for user in users:  # the two "app processes" finish and go away
            _, err = user.communicate(timeout=DEADLINE_S)
            assert user.returncode == 0, err.decode()
        # A new app process: it finds the runs on disk, and they train without the launchers.
        found = runs.list_runs(runs_dir)
        assert len(found) == 4 and len({r.run_id for r in found}) == 4
        assert any(r.state in runs.ACTIVE_STATES for r in found)

        def all_finished():
            infos = runs.list_runs(runs_dir)
            return infos if all(r.state not in runs.ACTIVE_STATES for r in infos) else None

        infos = wait_for(all_finished, "the four runs to finish")
        wait_for(lambda: not _worker_pids(runs_dir), "the workers to exit")
    finally:
        for pid in _worker_pids(runs_dir):
            os.kill(pid, signal.SIGKILL)
    assert sorted(r.configuration for r in infos) == [
        "resnet18 / pretrained", "resnet18 / scratch", "resnet50 / pretrained", "resnet50 / scratch"]
    for info in infos:
        assert info.state == "done", info.status.get("error")
        rows = runs.read_metrics(info.path)
        assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1]  # trained once
        assert (info.path / "train.log").read_text().count("Traceback") == 0
