"""Queue and worker: real trainer subprocesses, one at a time, stop and resume."""

from __future__ import annotations

import pytest

from conftest import wait_until as _wait

from retino_core.training import launch
from retino_core import runs
from retino_core.config import make_config




def test_queued_runs_train_one_at_a_time_in_subprocesses(tiny_npz, runs_dir):
    base = dict(data=str(tiny_npz), image_size=32, batch_size=8, epochs=1, max_steps_per_epoch=2)
    a, created_a = launch.enqueue(make_config("cpu", arch="resnet18", **base).to_dict())
    b, created_b = launch.enqueue(make_config("cpu", arch="resnet18", seed=1, **base).to_dict())
    again, created_again = launch.enqueue(make_config("cpu", arch="resnet18", **base).to_dict())
    assert created_a and created_b and not created_again and again == a
    seen_running = set()

    def both_done():
        states = {r.run_id: r.state for r in runs.list_runs(runs_dir)}
        seen_running.add(sum(s == "running" for s in states.values()))
        return all(s in ("done", "failed") for s in states.values())

    assert _wait(both_done), [(r.run_id, r.status) for r in runs.list_runs(runs_dir)]
    assert all(r.state == "done" for r in runs.list_runs(runs_dir))
    assert max(seen_running) <= 1
    assert runs.read_status(a)["pid"] != runs.read_status(b)["pid"]
    assert (a / "train.log").exists()


def test_stop_then_resume(tiny_npz, runs_dir):
    cfg = make_config("cpu", data=str(tiny_npz), image_size=32, batch_size=8, epochs=30)
    run, _ = launch.enqueue(cfg.to_dict())
    assert _wait(lambda: (run / "checkpoints" / "last.pt").exists())
    assert launch.stop(run.name) == "interrupted"
    status = runs.read_status(run)
    assert status["state"] == "interrupted"
    epochs_before = len(runs.epoch_rows(run))
    assert epochs_before >= 1
    launch.resume(run.name)
    assert runs.read_status(run)["state"] in ("queued", "running")
    assert _wait(lambda: len(runs.epoch_rows(run)) > epochs_before)
    assert launch.stop(run.name) == "interrupted"
    epochs = [r["epoch"] for r in runs.epoch_rows(run)]
    assert epochs == list(range(1, len(epochs) + 1))  # continued, not restarted


def test_stop_a_queued_run_cancels_it(tiny_npz, runs_dir):
    cfg = make_config("cpu", data=str(tiny_npz), image_size=32, batch_size=8, epochs=1)
    run, _ = launch.enqueue(cfg.to_dict(), start_worker=False)
    assert launch.stop(run.name) == "cancelled"
    assert launch.worker(runs_dir) == 0
    info = runs.load_run(run)
    assert not launch.can_resume(info) and launch.can_start_again(info)
    with pytest.raises(runs.RunError, match="only interrupted or failed runs resume"):
        launch.resume(run.name, start_worker=False)
    launch.start_again(run.name, start_worker=False)
    assert runs.read_status(run)["state"] == "queued" and runs.read_metrics(run) == []
    with pytest.raises(runs.RunError, match="is queued"):
        launch.start_again(run.name, start_worker=False)


def test_ensure_worker_restarts_a_queue_nothing_drains(tiny_npz, runs_dir, monkeypatch):
    spawned = []
    monkeypatch.setattr(launch, "spawn_worker", lambda base=None: spawned.append(base) or 0)
    assert not launch.ensure_worker()  # nothing queued
    cfg = make_config("cpu", data=str(tiny_npz), image_size=32, batch_size=8, epochs=1)
    launch.enqueue(cfg.to_dict(), start_worker=False)
    assert launch.ensure_worker() and len(spawned) == 1
    with launch._locked(runs_dir / launch.WORKER_LOCK):  # a live worker holds the lock
        assert launch.worker_active()
        assert not launch.ensure_worker()
    assert len(spawned) == 1


def test_a_resumed_run_waits_behind_a_run_queued_before_it(tiny_npz, runs_dir):
    """First come, first served: a run's place is when it was last queued, not when it was created."""
    base = dict(data=str(tiny_npz), image_size=32, batch_size=8, epochs=3)
    older, _ = launch.enqueue(make_config("cpu", seed=0, **base).to_dict(), start_worker=False)
    runs.write_status(older, "interrupted", error="the trainer stopped without saying why (killed?)")
    runs.checkpoint_path(older, "last").write_bytes(b"")  # resume needs a last checkpoint
    waiting, _ = launch.enqueue(make_config("cpu", seed=1, **base).to_dict(), start_worker=False)
    launch.resume(older.name, start_worker=False)
    assert [r.run_id for r in launch.queue(runs_dir)] == [waiting.name, older.name]
    assert launch.next_queued(runs_dir).run_id == waiting.name  # the worker starts this one first

    assert launch.stop(older.name) == "interrupted"  # a queued resume stays resumable
    launch.resume(older.name, start_worker=False, first=True)  # "next in line", asked for
    assert [r.run_id for r in launch.queue(runs_dir)] == [older.name, waiting.name]


def test_stop_says_who_stopped_the_run(tiny_npz, runs_dir):
    from retino_core.report import display

    run, _ = launch.enqueue(make_config("cpu", data=str(tiny_npz), image_size=32, epochs=1).to_dict(),
                            start_worker=False)
    assert launch.stop(run.name) == "cancelled"
    info = runs.load_run(run)
    assert display.state_text(info) == "cancelled by you" and info.status["error"] == "cancelled by you before it started"
    runs.write_status(run, "interrupted", stopped_by=None, error="the trainer stopped without saying why (killed?)")
    assert display.state_text(runs.load_run(run)) == "interrupted"


def test_the_worker_trains_the_queue_in_the_order_it_was_queued(tiny_npz, runs_dir):
    """Real trainers, one slot: a run started again after a later one was queued trains after it."""
    base = dict(data=str(tiny_npz), image_size=32, batch_size=8, epochs=1, max_steps_per_epoch=1)
    first, _ = launch.enqueue(make_config("cpu", seed=0, **base).to_dict(), start_worker=False)
    assert launch.stop(first.name) == "cancelled"
    second, _ = launch.enqueue(make_config("cpu", seed=1, **base).to_dict(), start_worker=False)
    launch.start_again(first.name, start_worker=False)
    ended: list = []
    assert launch.worker(runs_dir, parallel=1, on_end=lambda d: ended.append(d.name)) == 2
    assert ended == [second.name, first.name]
    assert all(runs.read_status(d)["state"] == "done" for d in (first, second))
