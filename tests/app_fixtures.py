"""Synthetic run folders in the real layout, written without training (for the app tests and
bench/pages_bench.py): config, status, metrics rows, summary and predictions; and opening a page
of the app in AppTest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from retino_core import runs
from retino_core.config import NUM_CLASSES, make_config
from retino_core.data.sources import open_source
from retino_core.judging import stats, trust
from retino_core.judging.metrics import classification_metrics, majority_baseline, softmax


APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    if page != "overview":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception[0].value
    return at


def texts(at: AppTest) -> str:
    """Everything a user reads on the page, as one string."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "title",
                                  "subheader") for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def write_run(runs_dir: Path, arch: str = "resnet18", pretrained: bool = False, state: str = "done",
              epochs: int = 3, steps: int = 20, rows_per_epoch: int = 5, data: str = "retinamnist",
              skill: float = 1.5, seed: int = 0, name: str = "", epochs_done: int | None = None,
              logits: bool = True) -> Path:
    """A run folder as the trainer leaves it; ``skill`` 0 gives a model collapsed onto grade 0;
    ``logits`` False leaves them out of predictions.csv, as runs trained before them did."""
    rng = np.random.default_rng(seed)
    cfg = make_config("cpu", data=data, arch=arch, pretrained=pretrained, epochs=epochs, name=name)
    run_dir = runs.create_run_dir(name or f"{arch}-{'pre' if pretrained else 'scratch'}", runs_dir)
    runs.write_json(run_dir / "config.json", {**cfg.to_dict(), "created": runs.now_iso()})
    source = open_source(data)
    train_labels = source.splits["train"].labels
    baseline = {f"{s}_majority_acc": majority_baseline(train_labels, source.splits[s].labels)
                for s in source.splits if s != "train"}

    def probabilities(labels: np.ndarray, strength: float) -> np.ndarray:
        logits = rng.normal(0, 1, (len(labels), NUM_CLASSES))
        logits[np.arange(len(labels)), labels] += strength
        logits[:, 0] += 1.0 if skill else 6.0  # the majority grade pulls, as in real runs
        return softmax(logits)

    if epochs_done is None:
        epochs_done = {"done": epochs, "queued": 0}.get(state, epochs // 2)
    done = epochs_done
    t0 = time.time() - 60.0 * max(done, 1)
    rows = []
    for epoch in range(1, done + 1):
        for k in range(1, rows_per_epoch + 1):
            step = round(k * steps / rows_per_epoch)
            rows.append({"kind": "step", "epoch": epoch, "step": step, "steps": steps,
                         "global_step": (epoch - 1) * steps + step, "train_loss": 1.6 / (1 + 0.3 * epoch) + 0.05 * rng.random(),
                         "train_acc": 0.4 + 0.05 * epoch, "lr": 1e-3, "images_per_s": 200.0,
                         "time": t0 + 60.0 * (epoch - 1) + 50.0 * k / rows_per_epoch})
        row = {"kind": "epoch", "epoch": epoch, "best": True, "elapsed": 60.0 * epoch, "time": t0 + 60.0 * epoch,
               "train_loss": 1.6 / (1 + 0.3 * epoch), "train_acc": 0.4 + 0.05 * epoch,
               "train_seconds": 50.0, "eval_seconds": 10.0, "train_images": steps * cfg.batch_size}
        for split in ("val", "test"):
            labels = source.splits[split].labels
            row.update(classification_metrics(labels, probabilities(labels, skill * epoch / epochs), f"{split}_"))
            row[f"{split}_loss"] = 1.3
        rows.append(row)
    runs.append_jsonl(run_dir / "metrics.jsonl", rows)

    status = {"created": runs.now_iso(), "progress": {"epoch": done, "epochs": epochs, **baseline}}
    if state != "queued":  # where it trained: its speed counts for estimates on this machine
        status["host"] = os.uname().nodename
    if state == "running":
        status.update(pid=os.getpid(), host=os.uname().nodename, heartbeat_ts=time.time(), started=runs.now_iso())
    if state in ("failed", "interrupted"):
        status["error"] = "stopped by the user" if state == "interrupted" else "ValueError: synthetic failure"
    runs.write_status(run_dir, state, **status)
    if state != "done":
        return run_dir

    summary = {"best_epoch": epochs, "selected_on": "val", "temperature": 1.3, "arch": arch,
               "trained_on": {"data": data, "name": source.name, "train_images": len(train_labels)},
               "pretrained": pretrained, "epochs": epochs, "data": data, "data_name": source.name,
               "train_seconds": 60.0 * epochs, "test_acc_per_epoch": [r["test_acc"] for r in rows if r["kind"] == "epoch"],
               **baseline}
    frames = []
    for split in ("val", "test"):
        labels = source.splits[split].labels
        probs = probabilities(labels, skill)
        summary.update(classification_metrics(labels, probs, f"{split}_"))
        if split == "test":  # the intervals the trainer stores with the summary
            summary.update(stats.confidence_intervals(labels, probs, prefix="test_", seed=seed))
        df = pd.DataFrame({"split": split, "index": np.arange(len(labels)), "name": source.splits[split].names,
                           "label": labels, "pred": probs.argmax(1)})
        for c in range(NUM_CLASSES):
            df[f"p{c}"] = probs[:, c]
        for c in range(NUM_CLASSES if logits else 0):  # as the trainer writes them (Evaluation reads them)
            df[f"logit{c}"] = np.log(probs[:, c])
        frames.append(df)
    summary["trust"] = trust.assess(summary, "test")  # stored with the summary, as the trainer does
    runs.write_json(run_dir / "summary.json", summary)
    pd.concat(frames).to_csv(run_dir / "predictions.csv", index=False)
    return run_dir


def write_run_at(runs_dir: Path, minute: int, name: str, arch: str = "resnet18", state: str = "done",
                 skill: float = 2.0, epochs: int = 6, steps: int = 0, data: str = "retinamnist", **summary) -> Path:
    """A synthetic run created at 12:<minute>, with ``summary`` values set (val_loss, ...)."""
    run_dir = write_run(runs_dir, arch, state=state, skill=skill, epochs=epochs, name=name, data=data, seed=minute)
    stamp = f"2026-01-01T12:{minute:02d}:00+00:00"
    config = json.loads((run_dir / "config.json").read_text())
    runs.write_json(run_dir / "config.json", {**config, "created": stamp, "max_steps_per_epoch": steps})
    runs.write_status(run_dir, state, created=stamp)
    if summary:
        runs.write_json(run_dir / "summary.json", {**json.loads((run_dir / "summary.json").read_text()), **summary})
    return run_dir


def write_four(runs_dir: Path, data: str = "retinamnist", collapsed: str = "resnet50 / scratch") -> list[Path]:
    """The four configurations, done, one of them collapsed onto the majority grade."""
    out = []
    for i, (arch, pretrained) in enumerate([("resnet18", True), ("resnet50", True),
                                             ("resnet18", False), ("resnet50", False)]):
        name = f"{arch} / {'pretrained' if pretrained else 'scratch'}"
        out.append(write_run(runs_dir, arch, pretrained, data=data, seed=i,
                             skill=0.0 if name == collapsed else 1.0 + 0.5 * pretrained))
    return out
