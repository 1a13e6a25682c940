"""Numbers, durations, labels, verdict badges and progress in words, the same on every page.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import numpy as np

from .. import runs
from ..training import launch
from ..runs import RunInfo

# The rate behind an ETA comes from recent step rows; an older gap (a pause before a resume,
# say) would make it look slower than it is.
ETA_WINDOW_ROWS = 30


ETA_MAX_GAP_S = 120.0


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and not np.isfinite(x))


def percent(x: float | None, digits: int = 1) -> str:
    """``43.5%``; ``–`` for a missing value."""
    return "–" if _missing(x) else f"{100 * x:.{digits}f}%"


def number(x: float | None, digits: int = 3) -> str:
    return "–" if _missing(x) else f"{x:.{digits}f}"


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def data_label(spec: str) -> str:
    """A short name for a data spec: ``RetinaMNIST`` or the folder / file name."""
    text = str(spec or "").strip().rstrip("/")
    if text.lower() in ("", "retinamnist"):
        return "RetinaMNIST (bundled)"
    return text.rsplit("/", 1)[-1]


def short_label(run: RunInfo) -> str:
    """``resnet18-pre 18:45:12`` from a run id ``20261127-184512-resnet18-pre``; the id otherwise."""
    parts = run.run_id.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and len(parts[1]) == 6 and parts[1].isdigit():
        t = parts[1]
        return f"{parts[2]} {t[:2]}:{t[2:4]}:{t[4:]}"
    return run.run_id


@dataclass
class Progress:
    """Where a run is, from its freshest rows: the trainer writes a step row every ~2 s."""

    state: str
    fraction: float
    epoch: int
    epochs: int
    step: int
    steps: int
    images_per_s: float | None
    eta_s: float | None
    train_loss: float | None
    epochs_done: int = 0

    @property
    def text(self) -> str:
        if self.state == "queued":
            return "waiting in the queue"
        if not self.steps:
            return f"{self.state}: starting (loading data and model)" if self.state == "running" else self.state
        if self.state not in ("running", "done"):  # where it stopped
            partial = self.epoch > self.epochs_done and self.step < self.steps
            return (f"{self.epochs_done}/{self.epochs} epochs done"
                    + (f" · stopped at step {self.step}/{self.steps} of epoch {self.epoch}" if partial else ""))
        parts = [f"epoch {self.epoch}/{self.epochs}", f"step {self.step}/{self.steps}"]
        if self.images_per_s:
            parts.append(f"{self.images_per_s:,.0f} images/s")
        if self.state == "running" and self.eta_s is not None:
            parts.append(f"ETA {duration(self.eta_s)}")
        return " · ".join(parts)


def _row_fraction(row: dict, epochs: int) -> float:
    steps = max(int(row.get("steps") or 1), 1)
    return (int(row.get("epoch") or 1) - 1 + int(row.get("step") or 0) / steps) / max(epochs, 1)


def run_progress(run: RunInfo, steps: list[dict] | None = None, now: float | None = None) -> Progress:
    """Progress, speed and ETA of ``run``: the epochs it finished plus the steps of the epoch it
    was in, from its metric rows (``steps``: its step rows, oldest first, read when not given)."""
    now = time.time() if now is None else now
    epochs = int(run.config.get("epochs") or (run.status.get("progress") or {}).get("epochs") or 1)
    steps = runs.step_rows(run.path) if steps is None else steps
    finished = max((int(r.get("epoch") or 0) for r in runs.epoch_rows(run.path)), default=0)
    if not steps and not finished:
        done = 1.0 if run.state == "done" else 0.0
        return Progress(run.state, done, 0, epochs, 0, 0, None, None, None)
    last = steps[-1] if steps else {}
    in_epoch = last and int(last.get("epoch") or 0) == finished + 1
    partial = int(last.get("step") or 0) / max(int(last.get("steps") or 1), 1) if in_epoch else 0.0
    fraction = 1.0 if run.state == "done" else min((finished + partial) / max(epochs, 1), 1.0)
    window = steps[-ETA_WINDOW_ROWS:]
    for i in range(len(window) - 1, 0, -1):
        if window[i]["time"] - window[i - 1]["time"] > ETA_MAX_GAP_S:
            window = window[i:]
            break
    eta = None
    if run.state == "running" and len(window) >= 2:
        gained = _row_fraction(window[-1], epochs) - _row_fraction(window[0], epochs)
        spent = window[-1]["time"] - window[0]["time"]
        if gained > 0 and spent > 0:
            eta = max((1 - fraction) * spent / gained - (now - last["time"]), 0.0)
    epoch, step = (int(last.get("epoch") or 0), int(last.get("step") or 0)) if in_epoch or not finished \
        else (finished, int(last.get("steps") or 0))
    return Progress(run.state, fraction, epoch, epochs, step, int(last.get("steps") or 0),
                    last.get("images_per_s"), eta, last.get("train_loss"), finished)


# A run's state in the user's words: who stopped it, and why it ended.
def state_text(run: RunInfo, place: int | None = None) -> str:
    """``queued · 2nd in line``, ``running``, ``done``, ``stopped by you``, ``cancelled by you``,
    ``failed``, ``interrupted`` (``place``: the run's 1-based place in the queue)."""
    state, by_user = run.state, run.status.get("stopped_by") == "user"
    if state == "queued":
        return "queued" + (f" · {ordinal(place)} in line" if place else "")
    if state == "interrupted" and by_user:
        return "stopped by you"
    if state == "cancelled":
        return "cancelled by you" if by_user else "cancelled"
    if state == "interrupted" and run.status.get("stale"):
        return "interrupted: the trainer stopped"
    return state


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def slot_text(run: RunInfo) -> str:
    """Where a run trains (its worker slot: GPU, or share of the CPU; or the SLURM or submitit
    job that trains it, with that job's state), or waits; "" when unknown."""
    if run.status.get("backend"):
        from ..training import cluster

        job = cluster.job_status(run)
        return job["label"] if job else ""
    slot = run.status.get("slot") if isinstance(run.status.get("slot"), dict) else None
    if run.state == "queued":
        return "waiting for a free slot"
    if slot is None or run.state != "running":
        return f"trained on {slot['label']}" if slot and run.state == "done" else ""
    threads = run.status.get("torch_threads")
    extra = f" ({threads} thread{'s' if threads != 1 else ''})" if threads and "thread" not in slot["label"] else ""
    return f"on {slot['label']}{extra}"


VERDICT_COLOURS = {"usable": "green", "weak": "orange", "no better than guessing": "red"}


def verdict_colour(trust: dict | None) -> str:
    """The verdict's colour (green, orange, red; gray when not judged): for a number that the
    verdict qualifies, such as the gain over the majority baseline."""
    return VERDICT_COLOURS.get(trust["verdict"], "gray") if trust else "gray"


def verdict_badge(trust: dict | None) -> str:
    """The verdict as Streamlit markdown, coloured: :green[usable], :orange[weak], :red[...]."""
    if not trust:
        return ":gray[not judged]"
    return f":{verdict_colour(trust)}[**{trust['verdict']}**]"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def log_tail(run: RunInfo, max_lines: int = 60, max_bytes: int = 64_000) -> str:
    """The end of the run's train.log as a terminal last showed it: a progress bar's redraws
    (carriage returns) keep only their last state, colour codes go. "" when there is no log."""
    try:
        with open(launch.log_path(run.path), "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = []
    for line in _ANSI.sub("", data).replace("\r\n", "\n").split("\n"):
        shown = [part.rstrip() for part in line.split("\r") if part.strip()]
        if shown:
            lines.append(shown[-1])
    return "\n".join(lines[-max_lines:])
