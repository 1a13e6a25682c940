"""A short measurement of this machine's training speed, for duration estimates before any run
has trained here (report/eta prefers what real runs measured). The model alone, on random
images already in memory: it leaves data loading out, so an estimate from it is a lower bound.

Results are kept in the runs folder (``.speed.json``), one per architecture, image size, batch
size, device and machine. Reading them needs no torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import runs

SPEED_FILE = ".speed.json"
STEPS = 4  # timed training steps (after one untimed warm-up), and as many evaluation batches
KEPT = 20  # calibrations kept in the file


def calibrate(config: dict, runs_dir: Path | None = None, steps: int = STEPS) -> dict:
    """Time ``steps`` training steps and evaluation batches of ``config``'s model at its image
    and batch size; record and return the images per second."""
    import torch

    from ..config import NUM_CLASSES, TrainConfig
    from ..models.builders import build_model
    from .device import resolve_device
    from .recipe import build_optimizer

    cfg = TrainConfig.from_dict(config)
    device = resolve_device(cfg.device)
    model = build_model(cfg.arch).to(device)
    optimizer = build_optimizer(cfg, model, device)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), device=device)

    def timed(step, n: int) -> float:
        step()  # warm-up: allocations, kernel choice
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # note: a sync point, so the time covers the queued kernels
        return time.perf_counter() - t0

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    train_s = timed(train_step, steps)
    model.eval()
    with torch.no_grad():
        eval_s = timed(lambda: model(images), steps)
    result = {"arch": cfg.arch, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "device": device.type,
              "host": os.uname().nodename, "time": time.time(), "threads": torch.get_num_threads(),
              "train_images_per_s": steps * cfg.batch_size / train_s, "eval_images_per_s": steps * cfg.batch_size / eval_s}
    record(result, runs_dir)
    return result


def _key(found: dict) -> tuple:
    return tuple(found.get(k) for k in ("arch", "image_size", "batch_size", "device", "host"))


def record(result: dict, runs_dir: Path | None = None) -> None:
    """Keep ``result`` in the runs folder's speed file, replacing an older one of the same kind."""
    base = Path(runs_dir or runs.default_runs_dir())
    base.mkdir(parents=True, exist_ok=True)
    kept = [c for c in recorded(base) if _key(c) != _key(result)] + [result]
    runs.write_json(base / SPEED_FILE, {"calibrations": kept[-KEPT:]})


def recorded(runs_dir: Path | None = None) -> list[dict]:
    """The calibrations kept in the runs folder (a damaged file counts as none)."""
    found = (runs.read_json(Path(runs_dir or runs.default_runs_dir()) / SPEED_FILE, {}) or {}).get("calibrations")
    return [c for c in found if isinstance(c, dict) and c.get("train_images_per_s")] if isinstance(found, list) else []
