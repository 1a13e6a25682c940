"""Multi-GPU and multi-node training under torchrun: one process per device, rank 0 writes.

Launch with ``torchrun --nproc_per_node=N -m retino_core train ...`` (add ``--nnodes``,
``--node_rank`` and ``--rdzv_endpoint`` for several machines). torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK; without them every function here is a no-op and training is one process.

Under torchrun:
- ``batch_size`` stays the global batch: each process takes ``batch_size / WORLD_SIZE``, so the
  learning rate, the schedule and the steps per epoch are those of one device;
- the training split is sharded by DistributedSampler, reshuffled each epoch by ``set_epoch``;
  evaluation splits are sharded without padding and gathered, so every metric covers the
  whole split exactly once, on every rank;
- train_loss and train_acc are summed over all processes before they are reported;
- only rank 0 writes the run folder. The other ranks run the same code against a private
  scratch copy of it (deleted at exit), so no file is ever written twice.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from ..errors import TrainingFailed


def launched() -> bool:
    """True in a process started by torchrun (or anything that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto") -> None:
    """Join the process group torchrun describes (once); NCCL on GPUs, gloo on the CPU.

    ``device`` is the config's device setting: ``cpu`` uses gloo even where a GPU is visible.
    Each process is pinned to GPU LOCAL_RANK, so ``torch.device("cuda")`` means its own GPU.
    """
    if not launched() or active():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    atexit.register(close)


def close() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def local_run_dir(run_dir: Path, resume: bool = False) -> Iterator[Path]:
    """The folder this rank trains into: ``run_dir`` on rank 0, a scratch copy elsewhere.

    The copy holds config.json and, to resume, links to the run's checkpoints and a copy of
    its metrics (so several nodes resuming need the run folder on a shared filesystem).
    """
    run_dir = Path(run_dir)
    if is_main():
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"retino-rank{rank()}-"))
    try:
        (scratch / "checkpoints").mkdir()
        shutil.copy2(run_dir / "config.json", scratch / "config.json")
        if resume:
            for name in ("last.pt", "best.pt"):
                if (run_dir / "checkpoints" / name).exists():
                    # A link, not a copy: save_checkpoint replaces the link, never its target.
                    (scratch / "checkpoints" / name).symlink_to((run_dir / "checkpoints" / name).resolve())
            if (run_dir / "metrics.jsonl").exists():
                shutil.copy2(run_dir / "metrics.jsonl", scratch / "metrics.jsonl")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: a shard with no padding and no repeats."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class WeightedShardSampler(Sampler[int]):
    """Class-balanced draws with replacement, different on every rank and every epoch."""

    def __init__(self, weights: torch.Tensor, num_samples: int, rank: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples, self.rank, self.seed, self.epoch = num_samples, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + self.rank)
        return iter(torch.multinomial(self.weights, self.num_samples, True, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


def train_sampler(sampler: Sampler | None, n: int, batch_size: int, seed: int = 0) -> tuple[Sampler | None, int]:
    """(sampler, per-process batch size) for the training split.

    One process: both unchanged. Under torchrun: this rank's shard of a plain shuffle or of a
    weighted sampler (one with ``weights``), and ``batch_size / WORLD_SIZE``.
    """
    if not active():
        return sampler, batch_size
    world = world_size()
    if batch_size % world:
        raise TrainingFailed(
            f"batch size {batch_size} is the global batch and must divide by the {world} processes; "
            f"use --batch-size {max(world, batch_size // world * world)}"
        )
    weights = getattr(sampler, "weights", None)
    if weights is not None:
        return WeightedShardSampler(weights, -(-n // world), rank(), seed), batch_size // world
    return DistributedSampler(range(n), world, rank(), shuffle=True, seed=seed), batch_size // world


def eval_sampler(n: int) -> Sampler | None:
    """None on one process (plain order); this rank's shard under torchrun."""
    return ShardSampler(n, rank(), world_size()) if active() else None


def set_epoch(loader: Any, epoch: int) -> None:
    """Reshuffle a sharded training loader for ``epoch`` (same order on every rank)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` under torchrun, else ``model`` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) before evaluation.

    DDP broadcasts them at the start of each training forward, so after the last step each
    rank holds its own last update; rank 0's are the ones its checkpoint saves.
    """
    if active():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def sum_over_ranks(*values: torch.Tensor | int | float) -> list:
    """Each value summed over all ranks (one all_reduce); ints come back as ints."""
    if not active():
        return list(values)
    ref = next((v for v in values if isinstance(v, torch.Tensor)), None)
    device = ref.device if ref is not None else torch.device("cpu")
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    dist.all_reduce(packed)
    out = []
    for v, total in zip(values, packed):
        if isinstance(v, torch.Tensor):
            out.append(total.to(v.dtype))
        else:
            out.append(type(v)(total.item()))
    return out


def gather_shards(*arrays: np.ndarray) -> Sequence[np.ndarray]:
    """Whole-split arrays from the per-rank shards of ShardSampler, in the split's order."""
    if not active():
        return arrays
    world = world_size()
    parts: list = [None] * world
    dist.all_gather_object(parts, arrays)
    out = []
    for k, first in enumerate(arrays):
        n = sum(len(p[k]) for p in parts)
        full = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for r, p in enumerate(parts):
            full[r::world] = p[k]
        out.append(full)
    return out
