"""The run folder while training: status.json with a heartbeat, metrics.jsonl rows, a progress
bar, and checkpoints written atomically (an epoch's in the background while the next trains).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from .. import runs
from ..config import NUM_CLASSES, TrainConfig
from .loaders import preprocessing
from .loop import unwrap

HEARTBEAT_EVERY_S = 5.0


class Recorder:
    """Writes status.json (with a heartbeat thread), metrics.jsonl rows and a tqdm bar, and
    tells its listeners: TensorBoard's event files, and whatever the caller adds (the MLflow
    live sync of ``train --mlflow``). A listener has ``start(run_dir)``, ``row(kind, row)`` and
    ``stop(state)``; one that fails is reported and dropped, never training."""

    def __init__(self, run_dir: Path, quiet: bool = False, listeners: tuple = ()):
        from .events import TensorBoardEvents

        self.run_dir = Path(run_dir)
        self.listeners = [TensorBoardEvents(), *listeners]
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
        self._tell("start", self.run_dir)

    def _tell(self, what: str, *args) -> None:
        for listener in list(self.listeners):
            try:
                getattr(listener, what)(*args)
            except Exception as err:  # noqa: BLE001 - a listener must never stop training
                print(f"warning: {type(listener).__name__} stopped: {type(err).__name__}: {err}", file=sys.stderr)
                self.listeners.remove(listener)

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
        self._tell("stop", state)

    def row(self, kind: str, **values) -> None:
        row = {"kind": kind, "time": time.time(), **values}
        runs.append_jsonl(self.metrics, [row])
        self._tell("row", kind, row)

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


def checkpoint_dict(model: nn.Module, cfg: TrainConfig, epoch: int, extra: dict | None = None) -> dict:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    ckpt = {"model": state, "arch": cfg.arch, "num_classes": NUM_CLASSES, "epoch": epoch,
            "config": cfg.to_dict(), "preprocessing": preprocessing(cfg),
            "torch_version": str(torch.__version__)}
    if extra:
        ckpt.update(extra)
    return ckpt


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save to a temp file, then rename: a reader never sees half a checkpoint."""
    # Streamed into the file, not through an in-memory copy: a third of the CPU time.
    runs.atomic_write(path, lambda fh: torch.save(obj, fh))


def snapshot(obj):
    """``obj`` with every tensor copied to fresh CPU memory: training may change the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes an epoch's checkpoints in a background thread while the next epoch trains.

    ``submit`` copies the tensors (a memory copy, a tenth of the write's cost) and returns; the
    thread serialises each file, syncs it and renames it into place (save_checkpoint), in the
    order given. One submission is in flight at a time: the next waits for it. Leaving the
    ``with`` block waits for the pending write, so a trainer that stops, is interrupted or fails
    leaves the last epoch's files complete; a trainer killed mid-write leaves the previous ones
    and a temp file (the rename is atomic). A failed write raises in the training thread, at
    the next submit or on leaving the block (there only a warning when an error is already
    on its way out).
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, files: list[tuple[dict, Path]]) -> None:
        self.wait()
        copies = [(snapshot(obj), Path(path)) for obj, path in files]
        # Not a daemon: an interpreter that exits while a write is pending finishes it first.
        self._thread = threading.Thread(target=self._write, args=(copies,), name="retino-checkpoint")
        self._thread.start()

    def _write(self, files: list[tuple[dict, Path]]) -> None:
        try:
            for obj, path in files:
                save_checkpoint(obj, path)
        except BaseException as err:  # noqa: BLE001 - re-raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait()
            return
        try:
            self.wait()
        except Exception as err:  # noqa: BLE001 - the error already leaving says what went wrong
            print(f"warning: the last checkpoint write failed too: {err}", file=sys.stderr)
