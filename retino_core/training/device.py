"""The device a trainer runs on and the share of the machine its worker slot gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import TrainConfig
from ..errors import TrainingFailed
from . import distributed
from .launch import usable_cpus


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingFailed("device 'cuda' was asked for but no CUDA GPU is visible")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def apply_slot() -> dict:
    """Keep to the share of the machine the worker gave this trainer (``RETINO_SLOT``).

    The slot's cores become this process's CPU affinity (under torchrun each local process
    takes its own part of them) and its thread count is set explicitly, so runs trained at
    once do not fight over OpenMP threads. Returns what status.json records: the slot, and
    the threads and cores actually in force.
    """
    fields: dict = {"launcher_pid": os.getppid() if distributed.launched() else os.getpid(),
                    "launch": os.environ.get("RETINO_LAUNCH")}
    try:
        slot = json.loads(os.environ.get("RETINO_SLOT") or "null")
    except ValueError:
        slot = None
    if not isinstance(slot, dict):
        return fields
    cpus = [int(c) for c in slot.get("cpus") or []]
    local, count = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if count > 1 and len(cpus) >= count:
        per = len(cpus) // count
        cpus = cpus[local * per:(local + 1) * per]
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass  # cores taken away since the worker planned: keep what the process has
    if int(slot.get("threads") or 0) > 0:
        torch.set_num_threads(int(slot["threads"]))
    return {**fields, "slot": slot, "torch_threads": torch.get_num_threads(), "cpus": usable_cpus()}


def prepare_device(cfg: TrainConfig, run_dir: Path) -> torch.device:
    """The device, the seed and the checkpoints folder (without a killed trainer's half file)."""
    ckdir = run_dir / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".*.tmp"):  # half a checkpoint, left by a trainer killed mid-write
        stale.unlink(missing_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device
