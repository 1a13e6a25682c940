"""What a run trains with besides data and model: losses, the weight average, the optimiser and
the learning-rate schedule.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import NUM_CLASSES, TrainConfig


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy, mostly grade-0, examples."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(logits, target, weight=self.weight, reduction="none",
                                         label_smoothing=self.label_smoothing)
        pt = torch.exp(-nn.functional.cross_entropy(logits, target, reduction="none"))
        return ((1 - pt) ** self.gamma * ce).mean()


class OrdinalLoss(nn.Module):
    """CORAL's loss (Cao et al. 2020) on the 5-way softmax: binary cross-entropy of
    P(grade > k) = sum of p_j over j > k, for k = 0..3.

    A miss by three grades fails three of the four binary tasks, a miss by one fails one.
    The cumulative probabilities come from the softmax, so they are rank-consistent by
    construction and the head stays five logits: metrics, predictions.csv, temperature
    scaling and the Predictor read ``softmax(logits)`` as for any other loss.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, 1)
        log_above = torch.logcumsumexp(logp.flip(1), 1).flip(1)[:, 1:]  # log P(grade > k)
        log_at_most = torch.logcumsumexp(logp, 1)[:, :-1]  # log P(grade <= k)
        ks = torch.arange(logits.shape[1] - 1, device=logits.device)
        t = (target[:, None] > ks).float()
        t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return -(t * log_above + (1 - t) * log_at_most).sum(1).mean()


def build_loss(cfg: TrainConfig, train_labels: np.ndarray) -> nn.Module:
    counts = np.maximum(np.bincount(train_labels, minlength=NUM_CLASSES), 1).astype(np.float64)
    weight = torch.tensor(len(train_labels) / (NUM_CLASSES * counts), dtype=torch.float32)
    if cfg.loss == "focal":
        return FocalLoss(2.0, None, cfg.label_smoothing)
    if cfg.loss == "ordinal":
        return OrdinalLoss(cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight if cfg.loss == "weighted_ce" else None,
                               label_smoothing=cfg.label_smoothing)


class WarmEmaDecay:
    """EMA update whose decay ramps up with the step count, as timm's ModelEmaV3 warm-up does:
    ``decay_t = min(decay, 1 - (1 + t) ** -0.75)``.

    With a fixed 0.99 and a few steps an epoch, the average stays near the random start for
    the first epochs and validation selects a model that learned nothing; the ramp lets the
    average follow the model early (0.77 after 6 steps, 0.97 after 100) and settle later.
    """

    POWER = 0.75

    def __init__(self, decay: float):
        self.decay = float(decay)
        self.step: int | None = None  # counted on the host: no per-step device sync

    def value(self, step: int) -> float:
        return min(self.decay, 1.0 - (1.0 + step) ** -self.POWER)

    @torch.no_grad()
    def __call__(self, averaged: list, current: list, num_averaged) -> None:
        # AveragedModel calls this once per (device, dtype) group of one update.
        if not torch.is_floating_point(averaged[0]):  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        if self.step is None:  # once, also after a resume (n_averaged is in the EMA's state)
            self.step = int(num_averaged)
        self.step += 1
        torch._foreach_lerp_(averaged, current, 1.0 - self.value(self.step))


def weight_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights (``update_parameters`` each step),
    with the decay warmed up over the first steps (WarmEmaDecay)."""
    # use_buffers: average the BatchNorm running statistics too; without it the copy keeps
    # the statistics of the untrained model and evaluates as noise.
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=WarmEmaDecay(decay), use_buffers=True)


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (they are not weights that overfit).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # Fused kernels on the CPU too: one pass over the weights instead of one per operation,
    # 2.5x (SGD) to 3.5x (AdamW) faster than foreach for a ResNet18 here (bench/throughput.py).
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of the base lr: linear warm-up, then constant, cosine or one-cycle."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch) if cfg.scheduler != "none" else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "none":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.scheduler == "onecycle":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor
