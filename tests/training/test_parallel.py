"""The worker's slots: several real trainer subprocesses at once, each in its own share."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import wait_until as _wait

from retino_core.training import launch
from retino_core import runs
from retino_core.cli import main
from retino_core.config import make_config

TINY = dict(image_size=32, batch_size=8, epochs=1, max_steps_per_epoch=2)




def _ended(run: Path) -> float:
    """When the trainer recorded its end (status.json's last write)."""
    return float(runs.read_json(run / "status.json")["updated_ts"])


@pytest.fixture
def no_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_slots_split_gpus_and_cores():
    four = launch.plan_slots(None, gpus=["0", "1", "2", "3"], cpus=list(range(16)))
    assert [s.gpus for s in four] == [("0",), ("1",), ("2",), ("3",)]
    assert [s.cpus for s in four] == [tuple(range(i * 4, i * 4 + 4)) for i in range(4)]
    assert all(s.threads == 4 for s in four) and four[2].label == "GPU 2 · slot 3 of 4 · 4 threads"
    env = four[1].env("abc")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "4" and env["RETINO_LAUNCH"] == "abc"
    # More slots than GPUs share them in turn; a torchrun run's slots merge.
    six = launch.plan_slots(6, gpus=["0", "1", "2", "3"], cpus=list(range(12)))
    assert [s.gpus[0] for s in six] == ["0", "1", "2", "3", "0", "1"]
    both = launch.Slot.merge(four[:2])
    assert both.gpus == ("0", "1") and both.cpus == tuple(range(8)) and both.label.startswith("GPU 0,1 · slot 1,2 of 4")
    # CPU only: one slot by default, the whole machine, nothing restricted.
    (one,) = launch.plan_slots(None, gpus=[], cpus=[0, 1])
    assert one.label == "CPU" and one.threads == 0 and one.cpus == ()
    assert one.env("x").get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")  # left as it was
    two = launch.plan_slots(2, gpus=[], cpus=[0, 1])
    assert [s.cpus for s in two] == [(0,), (1,)] and all(s.threads == 1 for s in two)
    # More slots than cores: every slot shares them all with one thread.
    three = launch.plan_slots(3, gpus=[], cpus=[0, 1])
    assert all(s.cpus == (0, 1) and s.threads == 1 for s in three)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert launch.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,3")  # CUDA stops at the first invalid one
    assert launch.visible_gpus() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.visible_gpus() == []


def test_the_number_of_slots_is_a_checked_setting_of_the_runs_folder(runs_dir):
    assert launch.parallel_setting(runs_dir) is None
    launch.set_parallel(3, runs_dir)
    assert launch.parallel_setting(runs_dir) == 3
    for bad in (0, -1, 65, 2.5, True, "2"):
        with pytest.raises(runs.RunError, match="whole number from 1 to 64"):
            launch.set_parallel(bad, runs_dir)
    (runs_dir / launch.POOL_FILE).write_text("{not json")
    assert launch.parallel_setting(runs_dir) is None  # a damaged file means the default
    launch.set_parallel(None, runs_dir)
    assert not (runs_dir / launch.POOL_FILE).exists()
    assert main(["sweep", "--parallel", "0", "--runs-dir", str(runs_dir)]) == 2


def test_two_cpu_slots_train_two_runs_at_once(tiny_npz, runs_dir, no_gpus):
    cfg = dict(data=str(tiny_npz), **{**TINY, "epochs": 2, "max_steps_per_epoch": 4})
    a, _ = launch.enqueue(make_config("cpu", arch="resnet18", **cfg).to_dict(), start_worker=False)
    b, _ = launch.enqueue(make_config("cpu", arch="resnet18", seed=1, **cfg).to_dict(), start_worker=False)
    ended = []
    assert launch.worker(runs_dir, parallel=2, on_end=ended.append) == 2
    assert sorted(ended) == sorted([a, b])
    sa, sb = runs.read_status(a), runs.read_status(b)
    assert sa["state"] == sb["state"] == "done", (sa, sb)
    # Both trained at the same time ...
    assert sa["started_ts"] < _ended(b) and sb["started_ts"] < _ended(a)
    # ... each in its own slot, with the thread split applied in the trainer itself.
    assert {tuple(sa["slot"]["indexes"]), tuple(sb["slot"]["indexes"])} == {(0,), (1,)}
    cores = launch.usable_cpus()
    per = max(1, len(cores) // 2)
    assert sa["torch_threads"] == sb["torch_threads"] == per
    if len(cores) >= 2:
        assert not set(sa["cpus"]) & set(sb["cpus"]) and len(sa["cpus"]) == per
    assert "slot 1 of 2" in sa["slot"]["label"] + sb["slot"]["label"]


def test_a_killed_workers_runs_are_taken_up_by_the_next_one(tiny_npz, runs_dir, no_gpus):
    """The trainer of a killed worker finishes and keeps its slot; the next worker waits for
    it, then trains the rest of the queue: no run lost, none trained twice."""
    long = make_config("cpu", data=str(tiny_npz), **{**TINY, "epochs": 4, "max_steps_per_epoch": 6})
    short = make_config("cpu", data=str(tiny_npz), seed=1, **TINY)
    a, _ = launch.enqueue(long.to_dict(), start_worker=False)
    b, _ = launch.enqueue(short.to_dict(), start_worker=False)
    launch.set_parallel(1, runs_dir)
    pid = launch.spawn_worker(runs_dir)
    assert _wait(lambda: runs.read_status(a).get("started_ts"), 120)
    token = runs.read_status(a)["launch"]
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not launch.worker_active(runs_dir), 20)
    assert runs.read_status(a)["state"] == "running"  # the trainer outlives its worker
    assert runs.read_status(b)["state"] == "queued"
    assert launch.ensure_worker(runs_dir)
    assert _wait(lambda: all(runs.read_status(r)["state"] in runs.ENDED_STATES for r in (a, b)))
    sa, sb = runs.read_status(a), runs.read_status(b)
    assert sa["state"] == sb["state"] == "done", (sa, sb)
    assert sa["launch"] == token  # never started again
    assert sb["started_ts"] >= _ended(a) - 0.5  # one slot: b waited for the adopted trainer
    for run, epochs in ((a, 4), (b, 1)):
        assert [r["epoch"] for r in runs.epoch_rows(run)] == list(range(1, epochs + 1))  # once each


def test_a_torchrun_run_takes_as_many_slots_as_it_has_processes(tiny_npz, runs_dir, no_gpus):
    pair = make_config("cpu", data=str(tiny_npz), processes=2, **TINY)
    after = make_config("cpu", data=str(tiny_npz), seed=1, **TINY)
    p, _ = launch.enqueue(pair.to_dict(), start_worker=False)
    s, _ = launch.enqueue(after.to_dict(), start_worker=False)
    assert launch.worker(runs_dir, parallel=2) == 2
    sp, ss = runs.read_status(p), runs.read_status(s)
    assert sp["state"] == ss["state"] == "done", (sp, ss, (p / "train.log").read_text()[-2000:])
    assert sp["slot"]["indexes"] == [0, 1] and sp["launcher_pid"] != sp["pid"]  # torchrun, then rank 0
    assert ss["started_ts"] >= _ended(p) - 0.5  # the second run waited for a free slot
    assert len(runs.epoch_rows(p)) == 1 and (p / "summary.json").exists()


def test_sweep_parallel_trains_in_slots_and_prints_each_run(tiny_npz, runs_dir, tmp_path, monkeypatch, capsys, no_gpus):
    import torchvision.models as tvm
    import torch

    from retino_core.models.builders import weights_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the trainers inherit it
    target = weights_cache_file("resnet18")
    target.parent.mkdir(parents=True)
    torch.save(tvm.resnet18(num_classes=1000).state_dict(), target)
    assert main(["sweep", "--data", str(tiny_npz), "--archs", "resnet18", "--parallel", "2", "--image-size", "32",
                 "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "2", "--quiet"]) == 0
    out = capsys.readouterr()
    printed = [Path(line) for line in out.out.split()]
    infos = runs.list_runs(runs_dir)
    assert sorted(printed) == sorted(r.path for r in infos) and len(infos) == 2
    assert sorted(r.configuration for r in infos) == ["resnet18 / pretrained", "resnet18 / scratch"]
    assert all(r.state == "done" for r in infos) and out.err.count("verdict:") == 2
    assert {tuple(r.status["slot"]["indexes"]) for r in infos} == {(0,), (1,)}
    assert launch.parallel_setting(runs_dir) == 2


def test_train_with_processes_runs_under_torchrun(tiny_npz, runs_dir, capsys, monkeypatch, no_gpus):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train", "--data", str(tiny_npz), "--processes", "2", "--device", "cpu", "--image-size", "32",
                 "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "2", "--quiet"]) == 0
    out = capsys.readouterr().out.split()
    (run,) = runs.list_runs(runs_dir)
    assert out == [str(run.path)]  # printed once, by this process, not by the ranks
    assert run.state == "done" and run.status["launcher_pid"] != run.status["pid"]
    assert main(["train", "--data", str(tiny_npz), "--processes", "0"]) == 2
    assert "processes must be from 1 to 64" in capsys.readouterr().err
