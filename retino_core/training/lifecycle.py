"""A run's lifecycle around ``fit``: queued -> running -> done / failed / interrupted, kept true in
status.json, with a retry at half the batch when CUDA runs out of memory.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from pathlib import Path

import torch

from .. import runs
from ..config import TrainConfig
from ..data.splits import DataSource
from ..errors import Interrupted, TrainingFailed
from . import distributed
from .device import apply_slot
from .recorder import Recorder
from .trainer import fit


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted(f"stopped from outside (signal {signal.Signals(signum).name})")


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
        runs.atomic_write(rec.metrics, b"")
    rec.status("running", notes=list(notes))
    return cfg.replace(batch_size=smaller)


def run_training(run_dir: Path, resume: bool = False, quiet: bool = False,
                 source: DataSource | None = None, listeners: tuple = ()) -> dict:
    """Train the run whose config.json is in ``run_dir``, keeping status.json true throughout.

    Out of CUDA memory it retries with half the batch (down to MIN_RETRY_BATCH), from the
    last checkpoint when there is one; status.json ``notes`` says so. ``listeners`` hear of
    every metrics row and of the end (see Recorder).
    """
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(runs.read_json(run_dir / "config.json", {}) or {})
    rec = Recorder(run_dir, quiet, listeners)
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
