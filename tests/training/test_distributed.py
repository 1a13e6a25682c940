"""Training under torchrun: two CPU processes (gloo) write one complete, consistent run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_tiny_npz
from retino_core.training import distributed
from retino_core import runs
from retino_core.data.sources import open_source
from retino_core.training.distributed import ShardSampler, WeightedShardSampler

ROOT = Path(__file__).resolve().parents[2]


def test_shards_cover_a_split_exactly_once_without_padding():
    n, world = 11, 3
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_weighted_shards_differ_by_rank_and_epoch_and_repeat_on_resume():
    w = torch.tensor([1.0, 1.0, 5.0, 5.0])
    a, b = WeightedShardSampler(w, 50, rank=0, seed=1), WeightedShardSampler(w, 50, rank=1, seed=1)
    assert list(a) != list(b) and len(a) == 50
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first


def test_one_process_changes_nothing():
    assert not distributed.active() and distributed.is_main()
    sampler = object()
    assert distributed.train_sampler(sampler, 10, 8) == (sampler, 8)
    assert distributed.eval_sampler(10) is None
    x, y = np.arange(3), np.arange(3)
    assert distributed.gather_shards(x, y) == (x, y)
    assert distributed.sum_over_ranks(torch.tensor(2.0), 3) == [torch.tensor(2.0), 3]


def test_torchrun_two_cpu_processes_write_one_complete_run(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    runs_dir, scratch = tmp_path / "runs", tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "retino_core", "train", "--data", str(npz), "--device", "cpu", "--epochs", "2",
           "--batch-size", "8", "--image-size", "32", "--num-workers", "0", "--runs-dir", str(runs_dir), "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    folders = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1, "ranks other than 0 train into scratch folders"
    run_dir = folders[0]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    for name in ("config.json", "status.json", "metrics.jsonl", "summary.json", "predictions.csv",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert runs.read_status(run_dir)["state"] == "done"
    assert not list(scratch.glob("retino-rank*")), "scratch folders are removed"

    source = open_source(npz, 0.1, 0)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2], "one row per epoch, from rank 0 only"
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)
    # Both ranks' images are counted: together they are the whole training split.
    assert all(r["train_images"] == len(source.splits["train"]) for r in epochs)

    pred = pd.read_csv(run_dir / "predictions.csv")
    for split in ("val", "test"):
        part = pred[pred["split"] == split]
        assert len(part) == len(source.splits[split])  # gathered, no padded repeats
        assert list(part["index"]) == list(range(len(part)))
        assert np.array_equal(part["label"].to_numpy(), source.splits[split].labels)
    summary = json.loads((run_dir / "summary.json").read_text())
    test = pred[pred["split"] == "test"]
    assert summary["test_acc"] == pytest.approx(float((test["pred"] == test["label"]).mean()))
    ck = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])
