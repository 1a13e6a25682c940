"""The trainer: one code path for CPU and CUDA, writing a run folder as it goes.

``train_one_epoch`` and ``evaluate`` return numbers; ``fit`` wires data, model, optimiser
and the run folder; ``run_training`` adds the status lifecycle (running -> done / failed /
interrupted) around it. On CUDA it uses bf16 autocast, channels_last, pinned-memory loaders
with workers and no per-step host synchronisation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from . import distributed, gpu_data, ood, runs, stats, trust
from .config import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, TrainConfig
from .errors import CheckpointError, Interrupted, TrainingFailed, refused_load
from .data import DataSource, SplitDataset, check_images, source_of
from .metrics import classification_metrics, expected_calibration_error, fit_temperature, majority_baseline, nll, softmax
from .models import build_model
from .transforms import build_eval_transform, build_train_transform, tta_views

STEP_ROW_EVERY_S = 2.0
HEARTBEAT_EVERY_S = 5.0


# ---------------------------------------------------------------- building blocks


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingFailed("device 'cuda' was asked for but no CUDA GPU is visible")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def preprocessing(cfg: TrainConfig) -> dict:
    """What an image must go through before the model: stored with the weights."""
    return {"image_size": int(cfg.image_size), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "preprocess": cfg.preprocess}


def _workers(cfg: TrainConfig, source: DataSource, device: torch.device) -> int:
    if cfg.num_workers >= 0:
        return cfg.num_workers
    if device.type == "cpu" and source.kind == "retinamnist":
        return 0  # tiny in-memory images: workers would only compete for the 2 cores
    return max(0, min(8, len(_cores()) - 1))


def _cores() -> set[int]:
    """The cores this process may use: all of them, or its worker slot's share."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 2))


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
    return {**fields, "slot": slot, "torch_threads": torch.get_num_threads(), "cpus": sorted(_cores())}


def build_loaders(cfg: TrainConfig, source: DataSource, device: torch.device) -> dict[str, DataLoader]:
    """DataLoaders for every split; train shuffled (or class-balanced) with augmentation."""
    pre = preprocessing(cfg)
    train_tf = build_train_transform(cfg.image_size, cfg.augment, cfg.preprocess, pre["mean"], pre["std"])
    eval_tf = build_eval_transform(cfg.image_size, cfg.preprocess, pre["mean"], pre["std"])
    workers = _workers(cfg, source, device)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)
    if workers > 0:
        common["prefetch_factor"] = 4
    train = source.splits["train"]
    if len(train) == 0:
        raise TrainingFailed("the training split is empty")
    sampler = None
    if cfg.sampler == "weighted":
        counts = np.maximum(np.bincount(train.labels, minlength=NUM_CLASSES), 1)
        sampler = WeightedRandomSampler(torch.as_tensor(1.0 / counts[train.labels]), len(train))
    # Under torchrun: this rank's shard and its share of the (global) batch.
    sampler, batch_size = distributed.train_sampler(sampler, len(train), cfg.batch_size, cfg.seed)
    if gpu_data.wanted(cfg, device):
        return gpu_data.build_device_loaders(cfg, source, device, sampler, batch_size, workers,
                                             pre["mean"], pre["std"])
    loaders = {"train": DataLoader(
        SplitDataset(train, train_tf), batch_size=batch_size, shuffle=sampler is None,
        sampler=sampler, drop_last=len(train) > cfg.batch_size, **common)}
    for name, split in source.splits.items():
        if name != "train" and len(split):
            loaders[name] = DataLoader(SplitDataset(split, eval_tf), batch_size=batch_size * 2,
                                       sampler=distributed.eval_sampler(len(split)), shuffle=False, **common)
    return loaders


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
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fast)


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


# ---------------------------------------------------------------- the loops


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
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
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
    tap = ood.FeatureTap(_unwrap(model)) if features else None
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


# ---------------------------------------------------------------- the run folder while training


class Recorder:
    """Writes status.json (with a heartbeat thread), metrics.jsonl rows and a tqdm bar."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.run_dir = Path(run_dir)
        self.metrics = self.run_dir / "metrics.jsonl"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self.quiet = quiet
        self.progress: dict = {}

    def status(self, state: str, **fields) -> None:
        with self._lock:
            runs.write_status(self.run_dir, state, heartbeat=runs.now_iso(),
                              heartbeat_ts=time.time(), **fields)

    def start(self, **fields) -> None:
        self.status("running", pid=os.getpid(), host=socket.gethostname(),
                    started=runs.now_iso(), started_ts=time.time(), error=None, **fields)
        self._thread = threading.Thread(target=self._beat, name="retino-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            try:
                self.status("running", progress=self.progress)
            except OSError:
                pass  # a full disk must not kill training; the next beat tries again

    def stop(self, state: str, **fields) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.close_bar()
        self.status(state, finished=runs.now_iso(), progress=self.progress, **fields)

    def row(self, kind: str, **values) -> None:
        runs.append_jsonl(self.metrics, [{"kind": kind, "time": time.time(), **values}])

    def bar(self, total: int, desc: str):
        self.close_bar()
        if not self.quiet:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                             dynamic_ncols=True, mininterval=1.0)
        return self._bar

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _checkpoint(model: nn.Module, cfg: TrainConfig, epoch: int, extra: dict | None = None) -> dict:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    ckpt = {"model": state, "arch": cfg.arch, "num_classes": NUM_CLASSES, "epoch": epoch,
            "config": cfg.to_dict(), "preprocessing": preprocessing(cfg),
            "torch_version": str(torch.__version__)}
    if extra:
        ckpt.update(extra)
    return ckpt


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP / AveragedModel
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save to a temp file, then rename: a reader never sees half a checkpoint."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    runs.atomic_write_bytes(path, buf.getvalue())


def _score(metrics: dict, split: str, metric: str) -> float:
    value = metrics.get(f"{split}_{metric}")
    if value is None or not math.isfinite(value):
        return -math.inf
    return -value if metric == "loss" else value


# ---------------------------------------------------------------- fit


@dataclass
class Training:
    """What one run trains with: built by build_training, advanced by run_epochs."""

    model: nn.Module  # the raw model (its state_dict goes into the checkpoints)
    train_model: nn.Module  # what the loop calls: DDP-wrapped and / or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.optim.swa_utils.AveragedModel | None
    loss_fn: nn.Module
    steps_per_epoch: int
    start_epoch: int = 1
    best_score: float = -math.inf
    best_epoch: int = 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


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


def open_data(cfg: TrainConfig, device: torch.device, source: DataSource | None = None) -> tuple[DataSource, dict]:
    """The data source (image headers checked) and a loader per split."""
    source = source or source_of(cfg)
    for name, split in source.splits.items():  # headers only: seconds for 35k files
        if split.paths is not None:
            check_images(split.paths, f"the {name} split of {source.name}")
    return source, build_loaders(cfg, source, device)


def build_training(cfg: TrainConfig, source: DataSource, loaders: dict, device: torch.device) -> Training:
    """Model, optimiser, schedule, weight average and loss for ``cfg``."""
    model = build_model(cfg.arch, pretrained=cfg.pretrained, weights=cfg.weights).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, device)
    steps_per_epoch = len(loaders["train"])
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    train_model = distributed.wrap(model, device)  # DDP under torchrun, else the model itself
    train_model = torch.compile(train_model) if cfg.compile and device.type == "cuda" else train_model
    return Training(model, train_model, optimizer, scheduler, weight_ema(model, cfg.ema) if cfg.ema else None,
                    build_loss(cfg, source.splits["train"].labels).to(device), steps_per_epoch)


def resume_training(t: Training, run_dir: Path, rec: "Recorder", device: torch.device) -> None:
    """Load last.pt into ``t`` and drop the metric rows of the epoch that was cut off."""
    last_path = run_dir / "checkpoints" / "last.pt"
    if not last_path.exists():
        raise TrainingFailed(f"cannot resume: {last_path} does not exist (no epoch finished yet)")
    try:
        ck = torch.load(last_path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a planted or damaged file: say so, run nothing
        raise CheckpointError(f"cannot resume: {last_path} is not a loadable checkpoint "
                              f"({refused_load(err)})") from None
    t.model.load_state_dict(ck["model"])
    t.optimizer.load_state_dict(ck["optimizer"])
    t.scheduler.load_state_dict(ck["scheduler"])
    if t.ema is not None and "ema" in ck:
        t.ema.load_state_dict(ck["ema"])
    t.start_epoch, t.best_score, t.best_epoch = ck["epoch"] + 1, ck["best_score"], ck["best_epoch"]
    # Drop rows of the epoch that was cut off, so charts show one clean history.
    kept = [r for r in runs.read_metrics(run_dir) if int(r.get("epoch", 0)) <= ck["epoch"]]
    runs.atomic_write_bytes(rec.metrics, b"")
    runs.append_jsonl(rec.metrics, kept + [{"kind": "resume", "epoch": ck["epoch"], "time": time.time()}])


def _step_reporter(rec: "Recorder", epoch: int, bar) -> Callable[[StepReport], None]:
    """on_step for one epoch: a metrics row, the status progress and the progress bar."""
    done_steps = [0]

    def on_step(r: StepReport) -> None:
        rec.row("step", epoch=r.epoch, step=r.step, steps=r.steps, global_step=(r.epoch - 1) * r.steps + r.step,
                train_loss=r.loss, train_acc=r.acc, lr=r.lr, images_per_s=r.images_per_s)
        rec.progress.update(epoch=epoch - 1 + r.step / r.steps, step=r.step, steps=r.steps,
                            images_per_s=r.images_per_s, train_loss=r.loss)
        if bar is not None:
            bar.update(r.step - done_steps[0])
            done_steps[0] = r.step
            bar.set_postfix(loss=f"{r.loss:.3f}", acc=f"{r.acc:.3f}", refresh=False)

    return on_step


def run_epochs(cfg: TrainConfig, t: Training, loaders: dict, device: torch.device, run_dir: Path,
               rec: "Recorder", select_split: str, quiet: bool) -> None:
    """Train, evaluate and checkpoint each remaining epoch; best.pt follows the selection score."""
    ckdir = run_dir / "checkpoints"
    t_start = time.monotonic()
    for epoch in range(t.start_epoch, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # resume replays the same epochs
        distributed.set_epoch(loaders["train"], epoch)
        on_step = _step_reporter(rec, epoch, rec.bar(t.steps_per_epoch, f"epoch {epoch}/{cfg.epochs}"))
        row = train_one_epoch(t.train_model, loaders["train"], t.loss_fn, t.optimizer, t.scheduler, device,
                              cfg, epoch, t.ema, on_step)
        t_eval = time.monotonic()
        for split in loaders:
            if split != "train":
                row.update(evaluate(t.eval_model, loaders[split], device, cfg, split))
        row["eval_seconds"] = time.monotonic() - t_eval
        row["lr"] = t.optimizer.param_groups[0]["lr"]
        score = _score(row, select_split, cfg.select_metric)
        improved = score > t.best_score or t.best_epoch == 0  # a NaN score still leaves a best.pt
        if improved:
            t.best_score, t.best_epoch = score, epoch
            save_checkpoint(_checkpoint(t.eval_model, cfg, epoch, {"selected_on": select_split}), ckdir / "best.pt")
        # The epoch's row before its last.pt: a checkpoint never claims an epoch the metrics lack
        # (a trainer stopped between the two resumes from the previous epoch and drops this row).
        rec.row("epoch", epoch=epoch, best=improved, elapsed=time.monotonic() - t_start, **row)
        extra = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                 "best_score": t.best_score, "best_epoch": t.best_epoch}
        if t.ema is not None:
            extra["ema"] = t.ema.state_dict()
        save_checkpoint(_checkpoint(t.model, cfg, epoch, extra), ckdir / "last.pt")
        rec.progress.update(epoch=epoch, best_epoch=t.best_epoch,
                            **{k: row.get(k) for k in ("val_acc", "test_acc", "val_qwk", "test_qwk")})
        rec.close_bar()
        if not quiet:
            shown = " ".join(f"{k}={row[k]:.4f}" for k in ("train_loss", "train_acc", f"{select_split}_loss",
                                                          f"{select_split}_acc", f"{select_split}_qwk")
                             if isinstance(row.get(k), float))
            print(f"epoch {epoch}/{cfg.epochs} {shown}{' *' if improved else ''}", file=sys.stderr)


def fit(cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
        recorder: Recorder | None = None, source: DataSource | None = None) -> dict:
    """Train ``cfg`` into ``run_dir``; returns (and writes) summary.json."""
    run_dir = Path(run_dir)
    rec = recorder or Recorder(run_dir, quiet)
    device = prepare_device(cfg, run_dir)
    source, loaders = open_data(cfg, device, source)
    select_split = "val" if "val" in loaders else "test"
    training = build_training(cfg, source, loaders, device)
    if resume:
        resume_training(training, run_dir, rec, device)
    baseline = {f"{s}_majority_acc": majority_baseline(source.splits["train"].labels, source.splits[s].labels)
                for s in source.splits if s != "train"}
    rec.progress = {"epoch": training.start_epoch - 1, "epochs": cfg.epochs, "device": str(device),
                    "selected_on": select_split, **baseline}
    run_epochs(cfg, training, loaders, device, run_dir, rec, select_split, quiet)

    summary = finalize(cfg, run_dir, source, loaders, device, training.best_epoch, select_split)
    # Summed from the epoch rows, so time spent before a resume is counted too.
    epochs_done = runs.epoch_rows(run_dir)
    summary["train_seconds"] = float(sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in epochs_done))
    summary["test_acc_per_epoch"] = [r.get("test_acc") for r in epochs_done]
    summary.update(baseline)
    summary["trust"] = trust.assess(summary, "test" if "test_confusion" in summary else select_split)
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def finalize(cfg: TrainConfig, run_dir: Path, source: DataSource, loaders: dict, device: torch.device,
             best_epoch: int, select_split: str) -> dict:
    """Test metrics of the best checkpoint, temperature fitted on validation, predictions.csv."""
    ck = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg.arch).to(device)
    model.load_state_dict(ck["model"])
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Flip TTA, when on, also feeds the temperature fit: val and test see the same predictor.
    outputs = {s: predict_logits(model, loaders[s], device, cfg, tta=cfg.tta, features=True)
               for s in loaders if s != "train"}
    logits = {s: out[:2] for s, out in outputs.items()}
    ck["ood"], ood_summary = _fit_ood(model, cfg, source, device, {s: out[2] for s, out in outputs.items()})
    ck["trained_on"] = {"data": str(cfg.data), "name": source.name, "native_size": source.native_size(),
                        "train_images": len(source.splits["train"])}
    temperature = fit_temperature(logits["val"][1], logits["val"][0]) if "val" in logits else 1.0
    summary: dict = {"best_epoch": best_epoch, "selected_on": select_split, "temperature": temperature,
                     "tta": cfg.tta, "ood": ood_summary, "trained_on": ck["trained_on"],
                     "arch": cfg.arch, "pretrained": cfg.pretrained, "epochs": cfg.epochs,
                     "data": cfg.data, "data_name": source.name}
    for split, (lg, y) in logits.items():
        probs = softmax(lg)
        summary.update(classification_metrics(y, probs, prefix=f"{split}_"))
        if split == "test":  # how far each headline number can move on another draw of test images
            summary.update(stats.confidence_intervals(y, probs, prefix="test_", seed=cfg.seed))
        summary[f"{split}_loss"] = nll(y, probs)
        summary[f"{split}_ece"] = expected_calibration_error(y, probs)
        summary[f"{split}_ece_calibrated"] = expected_calibration_error(y, softmax(lg, temperature))
    _write_predictions(run_dir, source, logits)
    ck["temperature"], ck["tta"] = temperature, cfg.tta
    save_checkpoint(ck, run_dir / "checkpoints" / "best.pt")
    return summary


def _fit_ood(model: nn.Module, cfg: TrainConfig, source: DataSource, device: torch.device,
             eval_features: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The Mahalanobis detector's statistics (on training features, eval transform) and its
    threshold (on validation, else test), plus the share of each split it flags."""
    train = source.splits["train"]
    if len(train) > ood.FIT_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train), ood.FIT_MAX_IMAGES, replace=False))
        train = train.subset(keep)
    fit_source = dataclasses.replace(source, splits={"train": train, "fit": train})
    loader = build_loaders(cfg, fit_source, device)["fit"]
    _, labels, features = predict_logits(model, loader, device, cfg, features=True)
    stats = ood.fit(features, labels)
    calibrated_on = "val" if "val" in eval_features else "test"
    stats = ood.calibrate(stats, eval_features[calibrated_on])
    threshold = float(stats["threshold"])
    flagged = {f"{s}_flagged_share": float(np.mean(ood.scores(f, stats) > threshold)) for s, f in eval_features.items()}
    return stats, {"threshold": threshold, "quantile": ood.THRESHOLD_QUANTILE, "calibrated_on": calibrated_on,
                   "fitted_on_images": int(len(labels)), **flagged}


def _write_predictions(run_dir: Path, source: DataSource, logits: dict) -> None:
    """predictions.csv: split, index, name, label, pred, p0..p4, logit0..logit4 (no torch to read)."""
    import pandas as pd

    frames = []
    for split, (lg, y) in logits.items():
        probs = softmax(lg)
        df = pd.DataFrame({"split": split, "index": np.arange(len(y)),
                           "name": source.splits[split].names, "label": y, "pred": probs.argmax(1)})
        for c in range(NUM_CLASSES):
            df[f"p{c}"] = probs[:, c]
        for c in range(NUM_CLASSES):
            df[f"logit{c}"] = lg[:, c]
        frames.append(df)
    runs.atomic_write_bytes(run_dir / "predictions.csv",
                            pd.concat(frames).to_csv(index=False, float_format="%.6g").encode())


# ---------------------------------------------------------------- lifecycle


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted(f"stopped by signal {signum}")


def _one_line(err: BaseException) -> str:
    """The error for status.json and the CLI, without the traceback a DataLoader worker adds."""
    text = str(err)
    if "\nOriginal Traceback" in text:  # "Caught ImageError in DataLoader worker ..."
        text = re.sub(r"^[\w.]+: ", "", text.strip().splitlines()[-1])
    return text


# Out of CUDA memory, the trainer halves the batch and tries again, down to this size.
MIN_RETRY_BATCH = 4


def _retry_smaller_batch(cfg: TrainConfig, run_dir: Path, rec: "Recorder", notes: list[str]) -> TrainConfig:
    smaller = cfg.batch_size // 2
    notes.append(f"CUDA out of memory with batch size {cfg.batch_size}; retried with {smaller}")
    print(notes[-1], file=sys.stderr)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # config.json tells the truth about what trained; a fresh start drops the cut-off rows.
    runs.write_json(run_dir / "config.json",
                    {**(runs.read_json(run_dir / "config.json", {}) or {}), "batch_size": smaller})
    if not runs.checkpoint_path(run_dir, "last").exists():
        runs.atomic_write_bytes(rec.metrics, b"")
    rec.status("running", notes=list(notes))
    return cfg.replace(batch_size=smaller)


def run_training(run_dir: Path, resume: bool = False, quiet: bool = False,
                 source: DataSource | None = None) -> dict:
    """Train the run whose config.json is in ``run_dir``, keeping status.json true throughout.

    Out of CUDA memory it retries with half the batch (down to MIN_RETRY_BATCH), from the
    last checkpoint when there is one; status.json ``notes`` says so.
    """
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(runs.read_json(run_dir / "config.json", {}) or {})
    rec = Recorder(run_dir, quiet)
    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    rec.start(resumed=resume, **apply_slot())
    notes: list[str] = []
    try:
        while True:
            try:
                summary = fit(cfg, run_dir, resume=resume, quiet=quiet, recorder=rec, source=source)
                break
            except torch.cuda.OutOfMemoryError:
                # Under torchrun one rank alone cannot change the batch: the others would hang.
                if cfg.batch_size // 2 < MIN_RETRY_BATCH or distributed.active():
                    raise
            # Outside the except block: the failed attempt's tensors go with its traceback.
            cfg = _retry_smaller_batch(cfg, run_dir, rec, notes)
            resume = runs.checkpoint_path(run_dir, "last").exists()
    except (Interrupted, KeyboardInterrupt) as err:
        rec.stop("interrupted", error=f"{err or 'interrupted'}; resume continues from the last checkpoint")
        raise
    except torch.cuda.OutOfMemoryError:
        tried = f" (after {len(notes)} retries with smaller batches)" if notes else ""
        msg = (f"CUDA out of memory with batch size {cfg.batch_size} at {cfg.image_size} px{tried}; "
               f"try --batch-size {max(1, cfg.batch_size // 2)} or a smaller --image-size")
        rec.stop("failed", error=msg, notes=notes)
        raise TrainingFailed(msg) from None
    except Exception as err:
        text = _one_line(err)
        rec.stop("failed", error=f"{type(err).__name__}: {text}")
        if text != str(err):
            raise type(err)(text) from None
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    rec.stop("done", notes=notes,
             summary={k: summary.get(k) for k in ("test_acc", "test_qwk", "test_auc", "best_epoch")})
    return summary


def prepare_run(cfg: TrainConfig, runs_dir: Path | None = None) -> Path:
    """Create a run folder holding config.json and a ``queued`` status; returns it."""
    run_dir = runs.create_run_dir(cfg.name or f"{cfg.arch}-{'pre' if cfg.pretrained else 'scratch'}", runs_dir)
    runs.write_json(run_dir / "config.json", {**cfg.to_dict(), "created": runs.now_iso()})
    runs.write_status(run_dir, "queued", created=runs.now_iso(), pid=None)
    return run_dir
