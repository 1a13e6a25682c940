"""The loops: ``train_one_epoch`` and ``evaluate`` return numbers; ``predict_logits`` scores a
loader. One code path for CPU and CUDA (bf16 autocast, channels_last, no per-step sync).
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import NUM_CLASSES, TrainConfig
from ..data.transforms import tta_views
from ..errors import TrainingFailed
from ..judging import ood
from ..judging.metrics import classification_metrics, nll, softmax
from . import distributed

STEP_ROW_EVERY_S = 2.0


@dataclass
class StepReport:
    """Passed to ``on_step`` every STEP_ROW_EVERY_S: running numbers of the epoch so far."""

    epoch: int
    step: int
    steps: int
    loss: float
    acc: float
    lr: float
    images_per_s: float


def _autocast(cfg: TrainConfig, device: torch.device):
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, cfg: TrainConfig):
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, device: torch.device,
                    cfg: TrainConfig, epoch: int, ema=None,
                    on_step: Callable[[StepReport], None] | None = None) -> dict:
    """One pass over ``loader``; returns train_loss, train_acc, images and seconds."""
    model.train()
    steps = len(loader)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    # Sums stay on the device; reading them is a sync point, done only every few seconds.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    t0 = last = time.monotonic()
    seen_at_last = 0
    # islice: a capped epoch does not load (and augment) one batch more than it trains on.
    for step, (x, y) in enumerate(itertools.islice(loader, steps)):
        x, y = _to_device(x, y, device, cfg)
        with _autocast(cfg, device):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n = y.shape[0]
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        now = time.monotonic()
        if on_step and (now - last >= STEP_ROW_EVERY_S or step == steps - 1):
            mean_loss = float(loss_sum) / seen  # sync point, every ~2 s
            if not math.isfinite(mean_loss):
                raise TrainingFailed(
                    f"the training loss became {mean_loss} at epoch {epoch}, step {step + 1}: "
                    f"lower the learning rate (now {cfg.lr:g}) or check the data"
                )
            on_step(StepReport(epoch, step + 1, steps, mean_loss, int(correct) / seen,
                               optimizer.param_groups[0]["lr"],
                               (seen - seen_at_last) / max(now - last, 1e-9)))
            last, seen_at_last = now, seen
    loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen)
    seconds = time.monotonic() - t0
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise TrainingFailed(f"the training loss became {mean_loss} in epoch {epoch}: lower the learning rate")
    return {"train_loss": mean_loss, "train_acc": int(correct) / max(seen, 1),
            "train_images": seen, "train_seconds": seconds,
            "train_images_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainConfig,
                   tta: bool = False, features: bool = False) -> tuple[np.ndarray, ...]:
    """Logits (N, 5) and labels (N,) over a loader; flips averaged in logit space with ``tta``.

    ``features``: also the penultimate features (N, D) of the unflipped view (for ood.fit).
    """
    model.eval()
    distributed.sync_buffers(model)
    tap = ood.FeatureTap(unwrap(model)) if features else None
    outs, labels, feats = [], [], []
    try:
        for x, y in loader:
            x, _ = _to_device(x, y, device, cfg)
            with _autocast(cfg, device):
                views = tta_views(x) if tta else [x]
                logits = torch.stack([model(v).float() for v in views]).mean(0)
            outs.append(logits)
            labels.append(y)
            if tap is not None:
                feats.append(tap.take())
    finally:
        if tap is not None:
            tap.close()
    logits = torch.cat(outs).cpu().numpy() if outs else np.zeros((0, NUM_CLASSES), np.float32)
    ys = torch.cat(labels).cpu().numpy() if labels else np.zeros(0, np.int64)
    arrays = (logits, ys) + ((torch.cat(feats).float().cpu().numpy(),) if features and feats else ())
    # Under torchrun each rank saw its shard; every rank gets the whole split back, in order.
    return tuple(distributed.gather_shards(*arrays))


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainConfig,
             prefix: str, tta: bool = False) -> dict:
    """Loss and classification metrics of ``model`` on ``loader``, keys ``<prefix>_...``."""
    logits, y = predict_logits(model, loader, device, cfg, tta)
    probs = softmax(logits)
    loss = nll(y, probs)
    out = classification_metrics(y, probs, prefix=f"{prefix}_")
    out[f"{prefix}_loss"] = loss
    return out


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP / AveragedModel
    return getattr(model, "_orig_mod", model)  # torch.compile
