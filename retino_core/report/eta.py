"""How long a run will take, and when the queue will be through, from the speeds that past runs
measured on this machine (their epoch rows: images, seconds of training and of evaluation).

A configuration nobody trained here yet is scaled from the nearest one measured: by image area
(a convolution's cost grows with the pixels) and, for the other architecture, by the ratio the
two architectures showed on this machine (or ``ARCH_COST`` when only one was measured). No torch.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Callable

from .. import runs
from . import display

# Training cost per image relative to ResNet18 (ResNet50's epoch takes about 2.4x on a CPU, the
# `cpu` preset's reason for giving it fewer epochs).
ARCH_COST = {"resnet18": 1.0, "resnet50": 2.4}
# The trainer caps the training images its out-of-distribution statistics are fitted on.
OOD_FIT_MAX = 10_000


@dataclass(frozen=True)
class Speed:
    """What one past run measured: images per second in training and in evaluation, at its size."""

    run_id: str
    arch: str
    image_size: int
    batch_size: int
    slots: int  # how many runs shared the machine's slots when it trained (1: it had every core)
    train_ips: float
    eval_ips: float | None
    when: float


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str  # which run(s) it is scaled from, in words


def this_host() -> str:
    return os.uname().nodename


def speed_of(run: runs.RunInfo) -> Speed | None:
    """The median speeds of a run's finished epochs, or None when it has none with timings."""
    rows = [r for r in runs.epoch_rows(run.path) if r.get("train_seconds") and r.get("train_images")]
    if not rows:
        return None
    train = statistics.median(r["train_images"] / r["train_seconds"] for r in rows)
    evals = [(r.get("val_n") or 0) + (r.get("test_n") or 0) for r in rows]
    eval_rates = [n / r["eval_seconds"] for n, r in zip(evals, rows) if n and r.get("eval_seconds")]
    slot = run.status.get("slot") if isinstance(run.status.get("slot"), dict) else {}
    return Speed(run.run_id, run.arch, int(run.config.get("image_size") or 0), int(run.config.get("batch_size") or 0),
                 int(slot.get("of") or 1), float(train), float(statistics.median(eval_rates)) if eval_rates else None,
                 float(rows[-1].get("time") or 0.0))


def measured_speeds(all_runs: list[runs.RunInfo], host: str | None = None,
                    calibrations: list[dict] | None = None) -> list[Speed]:
    """Speeds of the runs that trained on this machine (``host``), newest first, then its
    calibrations (``calibrate``; by default those kept in the runs folder)."""
    from ..training import calibrate

    host = host or this_host()
    found = [speed_of(r) for r in all_runs if r.status.get("host") in (host,) and r.state != "queued"]
    measured = sorted((s for s in found if s is not None), key=lambda s: -s.when)
    return measured + [Speed(CALIBRATION, c["arch"], int(c["image_size"]), int(c["batch_size"]), 1,
                             float(c["train_images_per_s"]), c.get("eval_images_per_s"), float(c.get("time") or 0))
                       for c in (calibrate.recorded() if calibrations is None else calibrations)
                       if c.get("host") == host]


CALIBRATION = "calibration"  # the run_id of a speed measured by `calibrate`, not by a run


def _arch_factor(arch: str, measured: str, speeds: list[Speed]) -> float:
    """How much slower ``arch`` trains than ``measured`` per image at the same size."""
    if arch == measured:
        return 1.0
    own = {a: [s.train_ips * s.image_size ** 2 for s in speeds if s.arch == a] for a in (arch, measured)}
    if own[arch] and own[measured]:
        return statistics.median(own[measured]) / statistics.median(own[arch])
    return ARCH_COST.get(arch, 1.0) / ARCH_COST.get(measured, 1.0)


# An estimate rests on the newest few runs most like the new one (one run may have shared the
# machine with other work; the median of several is steadier).
BASIS_RUNS = 5


def closest(config: dict, speeds: list[Speed], slots: int = 1) -> list[Speed]:
    """The measured runs most like ``config`` (same architecture, same number of slots, nearest
    image size; at most BASIS_RUNS, newest first); [] with none measured."""
    if not speeds:
        return []
    size = int(config.get("image_size") or 64)

    def likeness(s: Speed) -> tuple:  # a real run before a calibration of the same kind
        return (s.arch != config.get("arch"), s.slots != slots,
                round(abs(math.log(max(s.image_size, 1) / max(size, 1))), 6), s.run_id == CALIBRATION)

    best = min(likeness(s) for s in speeds)
    return [s for s in speeds if likeness(s) == best][:BASIS_RUNS]


def estimate(config: dict, train_images: int, eval_images: int, speeds: list[Speed],
             slots: int = 1) -> Estimate | None:
    """Seconds for ``config`` to train from the start: its epochs (training and evaluation) and
    the final pass (test predictions, out-of-distribution statistics); None with no speed measured."""
    basis = closest(config, speeds, slots)
    if not basis:
        return None
    base = basis[0]
    arch, size = config.get("arch", "resnet18"), int(config.get("image_size") or base.image_size)
    measured_ips = statistics.median(s.train_ips for s in basis)
    evals = [s.eval_ips for s in basis if s.eval_ips]
    slower = (size / max(base.image_size, 1)) ** 2 * _arch_factor(arch, base.arch, speeds)
    train_ips = measured_ips / slower
    eval_ips = (statistics.median(evals) if evals else 3 * measured_ips) / slower  # evaluation: forward only
    batch = int(config.get("batch_size") or 1)
    per_epoch = train_images
    if config.get("max_steps_per_epoch"):
        per_epoch = min(train_images, int(config["max_steps_per_epoch"]) * batch)
    epochs = int(config.get("epochs") or 1)
    seconds = epochs * (per_epoch / train_ips + eval_images / eval_ips)
    seconds += (min(train_images, OOD_FIT_MAX) + eval_images) / eval_ips
    how = "measured by" if (base.arch, base.image_size) == (arch, size) else "scaled from"
    which = ("a calibration (the model alone, no data loading: a lower bound)" if base.run_id == CALIBRATION
             else f"run {base.run_id}" if len(basis) == 1 else f"the {len(basis)} newest such runs (median)")
    text = (f"{how} {which}: {base.arch} at {base.image_size} px, {measured_ips:,.0f} training images/s on this "
            "machine" + (f" with {base.slots} runs at once" if base.slots > 1 else ""))
    return Estimate(seconds, text)


SizesOf = Callable[[dict], "tuple[int, int] | None"]


def remaining(run: runs.RunInfo, speeds: list[Speed], sizes_of: SizesOf, slots: int = 1,
              now: float | None = None) -> float | None:
    """Seconds until ``run`` is done: a running run's own ETA, else its estimate less what it has done."""
    progress = display.run_progress(run, now=now)
    if run.state == "running" and progress.eta_s is not None:
        return progress.eta_s
    sizes = sizes_of(run.config)
    found = estimate(run.config, *sizes, speeds, slots) if sizes else None
    return None if found is None else found.seconds * (1.0 - progress.fraction)


@dataclass(frozen=True)
class Job:
    """A run as the queue sees it: how long it has left, whether it already holds its slots."""

    run_id: str
    seconds: float | None  # None: no estimate (counted as taking no time)
    running: bool = False
    slots: int = 1


@dataclass(frozen=True)
class QueueEta:
    seconds: float | None  # until every job is done; None when there is none
    finishes: dict[str, float]  # run id -> seconds from now until it is done
    unknown: tuple[str, ...]  # jobs without an estimate


def schedule(jobs: list[Job], slots: int) -> QueueEta:
    """Running jobs hold their slots for their time left; the others start in order, first come
    first served, as soon as enough slots are free."""
    free_at = [0.0] * max(1, slots)
    finishes = {}
    for job in jobs:
        left = job.seconds or 0.0
        need = min(max(1, job.slots), len(free_at))
        free_at.sort()
        start = 0.0 if job.running else free_at[need - 1]
        for i in range(need):  # a running run beyond the slots (their number just changed) shares one
            free_at[i] = max(free_at[i], start + left)
        finishes[job.run_id] = start + left
    return QueueEta(max(finishes.values()) if finishes else None, finishes,
                    tuple(j.run_id for j in jobs if j.seconds is None))


def queue_jobs(running: list[runs.RunInfo], queued: list[runs.RunInfo], speeds: list[Speed], sizes_of: SizesOf,
               slots: int = 1, processes: Callable[[dict], int] = lambda c: 1, now: float | None = None) -> list[Job]:
    """The running runs, then the queued ones in queue order, as jobs with their time left."""
    return [Job(r.run_id, remaining(r, speeds, sizes_of, slots, now), r.state == "running", processes(r.config))
            for r in running + queued]


def sizes_from_runs(all_runs: list[runs.RunInfo], config: dict) -> tuple[int, int] | None:
    """(training images, validation + test images) of ``config``'s data, as a finished run on the
    same data and validation share counted them; None when no run did."""
    for run in all_runs:
        same = (str(run.config.get("data")).rstrip("/") == str(config.get("data")).rstrip("/")
                and run.config.get("val_fraction") == config.get("val_fraction"))
        train = (run.summary.get("trained_on") or {}).get("train_images") if same else None
        if train:
            return int(train), int((run.summary.get("val_n") or 0) + (run.summary.get("test_n") or 0))
    return None


def current_jobs(all_runs: list[runs.RunInfo], speeds: list[Speed], sizes_of: SizesOf, slots: int) -> list[Job]:
    """The queue as it stands: its running runs, then its queued ones in the order they start."""
    from ..training import launch

    running = [r for r in all_runs if r.state == "running"]
    return queue_jobs(running, launch.queue(all_runs=all_runs), speeds, sizes_of, slots, launch.processes_of)


def behind_queue(configs: list[dict], sizes: tuple[int, int], speeds: list[Speed], slots: int,
                 queued: list[Job]) -> QueueEta:
    """``configs`` queued now, behind ``queued``: when each would be done (``new-0``, ``new-1``, ...)
    and when everything would be."""
    from ..training import launch

    new = [Job(f"new-{i}", getattr(estimate(c, *sizes, speeds, slots), "seconds", None), slots=launch.processes_of(c))
           for i, c in enumerate(configs)]
    return schedule(queued + new, slots)
