"""The measurements behind bench/throughput.py, each on the real code it names.

- ``lab_loop``: the lab report's loop (PIL in the training process, fp32, the loss read back
  after every step), at any batch.
- ``trainer_steady``: the trainer's own ``train_one_epoch`` on its own loaders, model,
  optimiser, schedule and weight average (``build_loaders`` and ``build_training``, as ``fit``
  builds them), after a warm-up epoch.
- ``model_alone``: the same model, optimiser, weight average and precision on synthetic data
  already on the device: the ceiling for the trainer.
- ``StepClock``: where a step's time goes, from hooks on a loop's objects (the loops are not
  changed): waiting for the batch, forward, loss and backward, optimiser, weight average, rest.
- ``end_to_end``: ``run_training`` as the CLI runs it, with its calls timed (``timed_calls``)
  so each epoch and the run's set-up and finish are itemised.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from retino_core import runs
from retino_core.config import TrainConfig
from retino_core.data.splits import SplitDataset
from retino_core.data.transforms import build_eval_transform, build_train_transform
from retino_core.judging import stats
from retino_core.models.builders import build_model
from retino_core.training import recorder, trainer
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.training.loaders import build_loaders
from retino_core.training.loop import train_one_epoch
from retino_core.training.recipe import build_loss, build_optimizer, weight_ema


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------- where a step's time goes


class StepClock:
    """Seconds per part of a training step, from hooks: the loop itself is not changed.

    ``data`` is the wait for the next batch (``timed(loader)``), ``forward`` the model's own
    forward (module hooks), ``backward`` everything from the end of the forward to the start of
    the optimiser step (the loss, zero_grad, backward), ``optimizer`` the step itself (optimiser
    hooks), ``average`` the weight average's update; ``rest`` is what the loop does besides
    (the schedule, moving the batch to the device, running sums, progress rows). Host time:
    meaningful on a CPU, not on a GPU that runs ahead of the host.
    """

    PARTS = ("data", "forward", "backward", "optimizer", "average")

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema=None):
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self._mark: dict[str, float] = {}
        self._ema = ema
        self._hooks = [model.register_forward_pre_hook(lambda *a: self._start("forward")),
                       model.register_forward_hook(lambda *a: self._end("forward")),
                       optimizer.register_step_pre_hook(lambda *a: self._start("optimizer")),
                       optimizer.register_step_post_hook(lambda *a: self._end("optimizer"))]
        if ema is not None:
            real = ema.update_parameters

            def update(*args, **kwargs):
                t = time.perf_counter()
                real(*args, **kwargs)
                self.seconds["average"] += time.perf_counter() - t

            ema.update_parameters = update  # an instance attribute, removed by close()

    def _start(self, part: str) -> None:
        now = time.perf_counter()
        if part == "optimizer" and "forward_end" in self._mark:
            self.seconds["backward"] += now - self._mark.pop("forward_end")
        self._mark[part] = now

    def _end(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part] += now - self._mark.pop(part, now)
        if part == "forward":
            self._mark["forward_end"] = now

    def timed(self, loader):
        """``loader`` with the wait for each batch counted as ``data``."""
        clock = self

        class Timed:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                it = iter(loader)
                while True:
                    t = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                    clock.seconds["data"] += time.perf_counter() - t
                    yield batch

        return Timed()

    def close(self, steps: int, total_s: float) -> dict:
        """Milliseconds per step of each part, ``rest`` and the whole ``step``."""
        for h in self._hooks:
            h.remove()
        if self._ema is not None:
            del self._ema.update_parameters
        ms = {k: 1000 * v / steps for k, v in self.seconds.items()}
        ms["step"] = 1000 * total_s / steps
        ms["rest"] = ms["step"] - sum(ms[k] for k in self.PARTS)
        return ms


# ---------------------------------------------------------------- steady state


def _batches(loader):
    while True:  # as many batches as asked for, starting over when the loader runs out
        yield from loader


def lab_loop(arch: str, source, device: torch.device, image_size: int, batch: int, steps: int, warmup: int,
             eval_steps: int = 0) -> dict:
    """The lab's loop: SGD, flips, fp32, PIL in this process, the loss read every step."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = False  # as the lab ran: no autotuning, no TF32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = build_model(arch).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        train = DataLoader(SplitDataset(source.splits["train"], build_train_transform(image_size, "flip")),
                           batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
        clock = StepClock(model, opt)
        batches = _batches(clock.timed(train))
        model.train()
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                clock.seconds = dict.fromkeys(StepClock.PARTS, 0.0)
                t0 = time.perf_counter()
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        sync(device)
        seconds = time.perf_counter() - t0
        out = {"train_img_s": batch * steps / seconds, "profile_ms": clock.close(steps, seconds)}
        if eval_steps:
            out["eval_img_s"] = _lab_eval(model, source, device, image_size, batch, eval_steps, warmup)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return out


@torch.no_grad()
def _lab_eval(model, source, device, image_size: int, batch: int, steps: int, warmup: int) -> float:
    model.eval()
    test = DataLoader(SplitDataset(source.splits["test"], build_eval_transform(image_size)),
                      batch_size=batch, shuffle=False, num_workers=0)
    batches = _batches(test)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, _ = next(batches)
        model(x.to(device)).argmax(1).cpu()
    return batch * steps / (time.perf_counter() - t0)


def trainer_steady(cfg: TrainConfig, source, device: torch.device, steps: int, warmup: int, scratch: Path) -> dict:
    """``train_one_epoch`` as ``fit`` calls it (its loaders, recipe and progress rows), timed over
    ``steps`` after a warm-up epoch of ``warmup`` steps (workers started, compiled, autotuned)."""
    loaders = build_loaders(cfg, source, device)
    t = trainer.build_training(cfg, source, loaders, device)
    rec = recorder.Recorder(scratch, quiet=True)
    scratch.mkdir(parents=True, exist_ok=True)
    for epoch, n in ((1, warmup), (2, steps)):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        profile = StepClock(t.model, t.optimizer, t.ema) if epoch == 2 and device.type == "cpu" else None
        loader = profile.timed(loaders["train"]) if profile else loaders["train"]
        row = train_one_epoch(t.train_model, loader, t.loss_fn, t.optimizer, t.scheduler, device,
                              cfg.replace(max_steps_per_epoch=n), epoch, t.ema,
                              trainer._step_reporter(rec, epoch, None))
    out = {"train_img_s": row["train_images"] / row["train_seconds"], "steps": steps,
           "workers": getattr(loaders["train"], "num_workers", None)}
    if profile:
        out["profile_ms"] = profile.close(steps, row["train_seconds"])
    return out


def model_alone(cfg: TrainConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """The trainer's model, optimiser, weight average and precision on synthetic on-device data."""
    cuda = device.type == "cuda"
    model = build_model(cfg.arch).to(device)
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model, device)
    ema = weight_ema(model, cfg.ema) if cfg.ema else None
    loss_fn = build_loss(cfg, torch.arange(5).numpy()).to(device)
    fwd = torch.compile(model) if cfg.compile and cuda else model
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    if cuda and cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (cfg.batch_size,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with autocast:
            loss = loss_fn(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return {"train_img_s": cfg.batch_size * steps / (time.perf_counter() - t0), "warmup_s": warm_s,
            "compiled": bool(cfg.compile and cuda),
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


# ---------------------------------------------------------------- end to end, itemised


def _recording(real, calls: list):
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            calls.append({"start": start, "end": time.perf_counter(), "cpu": time.thread_time() - cpu,
                          "main": threading.current_thread() is threading.main_thread()})
    return wrapper


@contextmanager
def timed_calls(targets: dict[str, tuple[object, str]]):
    """Each ``owner.attribute`` replaced by a wrapper that records its calls (start, end, the
    calling thread's CPU seconds); yields {name: [call, ...]} and puts the originals back."""
    calls: dict[str, list] = {name: [] for name in targets}
    saved = []
    try:
        for name, (owner, attr) in targets.items():
            real = getattr(owner, attr)
            saved.append((owner, attr, real))
            setattr(owner, attr, _recording(real, calls[name]))
        yield calls
    finally:
        for owner, attr, real in reversed(saved):
            setattr(owner, attr, real)


TRAINER_CALLS = {
    "open_data": (trainer, "open_data"),  # image headers checked, loaders built
    "epochs": (trainer, "run_epochs"),
    "evaluate": (trainer, "evaluate"),
    "submit": (recorder.CheckpointWriter, "submit"),  # the training thread's share of a checkpoint
    "write": (recorder, "save_checkpoint"),  # the writer thread's
    "finalize": (trainer, "finalize"),
    "ood": (trainer, "_fit_ood"),
    "bootstrap": (stats, "confidence_intervals"),
    "final_best": (trainer, "save_checkpoint"),  # best.pt again, with temperature and OOD statistics
}


def _span(calls: list) -> float:
    return sum(c["end"] - c["start"] for c in calls)


def _within(calls: list, start: float, end: float) -> list:
    return [c for c in calls if start <= c["start"] < end]


def end_to_end(cfg: TrainConfig, source, runs_dir: Path) -> dict:
    """``run_training`` from a prepared run folder to its summary, every part of it timed."""
    run_dir = prepare_run(cfg, runs_dir)
    load = [load_average()]
    with timed_calls(TRAINER_CALLS) as calls:
        t0 = time.perf_counter()
        run_training(run_dir, quiet=True, source=source)
        t_end = time.perf_counter()
    load.append(load_average())
    rows = runs.epoch_rows(run_dir)
    (ep,) = calls["epochs"]
    bounds = [ep["start"]] + [ep["start"] + r["elapsed"] for r in rows]
    epochs = []
    for i, r in enumerate(rows):
        lo, hi = bounds[i], bounds[i + 1]
        # From one epoch row to the next: the previous epoch's checkpoints handed to the writer
        # (after its row), then this epoch's training and evaluation.
        main = _span(_within(calls["submit"], lo, hi))
        epochs.append({"wall_s": hi - lo, "train_s": r["train_seconds"], "train_images": r["train_images"],
                       "eval_s": r["eval_seconds"], "checkpoint_main_s": main})
    # The writer thread's calls in order: each epoch's best.pt (when it improved), then last.pt.
    for e, w in zip(epochs, _writes_per_epoch(calls["write"], rows)):
        e["writer_s"], e["writer_cpu_s"] = _span(w), sum(c["cpu"] for c in w)
    for e in epochs:
        e["other_s"] = e["wall_s"] - e["train_s"] - e["eval_s"] - e["checkpoint_main_s"]
    (fin,) = calls["finalize"]
    steady = epochs[1:] or epochs
    mean = {k: statistics.fmean(e[k] for e in steady) for k in steady[0]}
    eval_images = sum(len(s) for k, s in source.splits.items() if k != "train")
    last_pt = run_dir / "checkpoints" / "last.pt"
    return {
        "epochs": epochs, "steady_epoch": mean,
        "train_img_s": mean["train_images"] / mean["train_s"],
        "eval_img_s": eval_images / max(mean["eval_s"], 1e-9),
        "first_epoch_extra_s": epochs[0]["wall_s"] - mean["wall_s"] if len(epochs) > 1 else None,
        "setup_s": ep["start"] - t0, "open_data_s": _span(calls["open_data"]),
        "after_epochs_s": fin["start"] - bounds[-1],  # the last epoch's checkpoints, written and waited for
        "final_s": fin["end"] - fin["start"], "ood_s": _span(calls["ood"]), "bootstrap_s": _span(calls["bootstrap"]),
        "final_best_s": _span(calls["final_best"]), "finish_s": t_end - fin["end"], "wall_s": t_end - t0,
        "images": {k: len(s) for k, s in source.splits.items()},
        "last_pt_mb": last_pt.stat().st_size / 1e6, "sync_write_s": _sync_write_s(last_pt),
        "load_average": load,
    }


def _writes_per_epoch(writes: list, rows: list) -> list[list]:
    out, i = [], 0
    for r in rows:
        n = 2 if r.get("best") else 1
        out.append(writes[i:i + n])
        i += n
    return out


def _sync_write_s(last_pt: Path, repeats: int = 2) -> float:
    """What writing last.pt in the training thread costs (how the trainer wrote it before)."""
    ck = torch.load(last_pt, map_location="cpu", weights_only=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        recorder.save_checkpoint(ck, last_pt.with_name("sync-test.pt"))
        times.append(time.perf_counter() - t)
    last_pt.with_name("sync-test.pt").unlink()
    return statistics.median(times)


def steps_for(images: int, batch: int) -> int:
    return max(3, math.ceil(images / batch))
