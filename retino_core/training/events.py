"""TensorBoard event files in the run folder, written as the run trains (tensorboardX, 0.5 MB;
no TensorBoard install needed to write them): ``tensorboard --logdir artifacts/runs``.

``<run>/tensorboard/`` holds the scalars of each step row at its global step (``step/...``)
and of each epoch row at its epoch (``epoch/...``); ``<run>/tensorboard/hparams/`` holds the
run's configuration with its final test metrics for TensorBoard's HParams dashboard. A resumed
run's event file is written again from metrics.jsonl (whose rows of the epoch cut off are
dropped), after a purge marker, so TensorBoard shows one clean history, like the app.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import runs

FOLDER = "tensorboard"
FLUSH_S = 5
_NOT_SCALARS = ("kind", "epoch", "step", "steps", "global_step", "time")
FINAL_METRICS = ("test_acc", "test_auc", "test_qwk", "test_macro_f1", "test_referable_auc", "test_loss",
                 "test_ece", "test_majority_acc", "val_acc", "val_qwk", "val_loss", "best_epoch", "train_seconds")


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardEvents:
    """A Recorder listener: each metrics row as scalars, the configuration and final metrics
    as hparams. Opened at the first row (after a resume has trimmed metrics.jsonl)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.writer = None

    def start(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / FOLDER

    def _open(self) -> None:
        from tensorboardX import SummaryWriter

        earlier = self.folder.is_dir() and any(self.folder.iterdir())
        if earlier:  # a resume, or a start again: the history is metrics.jsonl's, written anew
            shutil.rmtree(self.folder)
        # purge_step=0 writes a restart marker: a TensorBoard that read the old file drops it.
        self.writer = SummaryWriter(str(self.folder), purge_step=0 if earlier else None, flush_secs=FLUSH_S)
        for row in runs.read_metrics(self.folder.parent):  # includes the row that opened it
            self._write(row)

    def _write(self, row: dict) -> None:
        kind, when = row.get("kind"), row.get("time")
        if kind == "step" and row.get("global_step") is not None:
            for key, value in _scalars(row).items():
                self.writer.add_scalar(f"step/{key}", value, int(row["global_step"]), walltime=when)
        elif kind == "epoch":
            for key, value in _scalars(row).items():
                self.writer.add_scalar(f"epoch/{key}", value, int(row["epoch"]), walltime=when)

    def row(self, kind: str, row: dict) -> None:
        if self.folder is None:
            return
        if self.writer is None:
            self._open()
        else:
            self._write({"kind": kind, **row})

    def stop(self, state: str) -> None:
        if self.writer is None:
            return
        summary = runs.read_json(self.folder.parent / "summary.json", {}) or {}
        if state == "done" and summary:
            config = runs.read_json(self.folder.parent / "config.json", {}) or {}
            hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
            final = {f"final/{k}": float(summary[k]) for k in FINAL_METRICS
                     if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}
            self.writer.add_hparams(hparams, final, name="hparams")
        self.writer.close()
        self.writer = None
