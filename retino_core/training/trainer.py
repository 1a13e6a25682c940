"""``fit``: data, model, optimiser and the run folder wired together; each epoch trained,
evaluated and checkpointed; at the end the test metrics of the validation-selected
checkpoint, the temperature, the out-of-distribution statistics and predictions.csv.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import runs
from ..config import NUM_CLASSES, TrainConfig
from ..data.splits import DataSource
from ..errors import CheckpointError, TrainingFailed, refused_load
from ..judging import ood, operating, stats, trust
from ..judging.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    majority_baseline,
    nll,
    softmax,
)
from ..models.builders import build_model
from . import distributed
from .device import prepare_device
from .loaders import build_loaders, open_data
from .loop import StepReport, evaluate, predict_logits, train_one_epoch
from .recipe import build_loss, build_optimizer, lr_factor, weight_ema
from .recorder import CheckpointWriter, Recorder, checkpoint_dict, save_checkpoint


def _score(metrics: dict, split: str, metric: str) -> float:
    value = metrics.get(f"{split}_{metric}")
    if value is None or not math.isfinite(value):
        return -math.inf
    return -value if metric == "loss" else value


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
    runs.atomic_write(rec.metrics, b"")
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
               rec: "Recorder", select_split: str, quiet: bool, writer: CheckpointWriter) -> None:
    """Train, evaluate and checkpoint each remaining epoch; best.pt follows the selection score.

    The checkpoints of an epoch are written by ``writer`` while the next one trains.
    """
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
        # The epoch's row before its checkpoints: a checkpoint never claims an epoch the metrics
        # lack (a trainer stopped before last.pt is on disk resumes from the previous epoch and
        # drops this row).
        rec.row("epoch", epoch=epoch, best=improved, elapsed=time.monotonic() - t_start, **row)
        extra = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                 "best_score": t.best_score, "best_epoch": t.best_epoch}
        if t.ema is not None:
            extra["ema"] = t.ema.state_dict()
        files = [(checkpoint_dict(t.model, cfg, epoch, extra), ckdir / "last.pt")]
        if improved:
            files.insert(0, (checkpoint_dict(t.eval_model, cfg, epoch, {"selected_on": select_split}),
                             ckdir / "best.pt"))
        writer.submit(files)
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
    with CheckpointWriter() as writer:  # leaving it waits for the last epoch's files
        run_epochs(cfg, training, loaders, device, run_dir, rec, select_split, quiet, writer)

    summary = finalize(cfg, run_dir, source, loaders, device, training.best_epoch, select_split)
    # Summed from the epoch rows, so time spent before a resume is counted too.
    epochs_done = runs.epoch_rows(run_dir)
    summary["train_seconds"] = float(sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in epochs_done))
    summary["test_acc_per_epoch"] = [r.get("test_acc") for r in epochs_done]
    summary.update(baseline)
    summary["trust"] = trust.assess(summary, "test" if "test_confusion" in summary else select_split)
    # Whether every door grades with calibrated probabilities (not where the temperature made test
    # NLL or ECE worse), and the referral threshold they apply, chosen on those probabilities.
    summary["grades_calibrated"] = operating.calibration_helps(run_dir, summary["temperature"])
    temperature = operating.grading_temperature(run_dir, summary=summary)
    summary["operating_point"] = operating.of_scores(operating.load_scores(run_dir), temperature).to_dict()
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
            summary.update(stats.confidence_intervals(y, probs, prefix="test_", seed=cfg.seed, points={
                m: summary.get(f"test_{m}") for m in stats.CI_METRICS}))
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
    runs.atomic_write(run_dir / "predictions.csv",
                            pd.concat(frames).to_csv(index=False, float_format="%.6g").encode())
