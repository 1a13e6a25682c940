"""Quality on RetinaMNIST's official test split: ResNet18 and ResNet50 from scratch, ``cpu`` preset.

    python bench/quality.py --runs-dir /tmp/q                     # both archs, seed 0
    python bench/quality.py --runs-dir /tmp/q --seeds 0 1 2       # seed spread
    python bench/quality.py --runs-dir /tmp/q --ablations         # + one-option changes, ResNet18

Every choice is made on the 120 validation images: the epoch (the preset's select_metric),
the temperature and, through the preset, the recipe itself. The 400 test images only
report. Each configuration is a real training run (``run_training``) in --runs-dir; a run
that already finished there with the same config is reused, so an interrupted benchmark
continues where it stopped. Rows that differ from another only in an evaluation option
(``tta``) re-evaluate that run's selected checkpoint instead of training again.

Writes quality.md / quality.json (and ablations.md / ablations.json) to --out, default
bench/results. Seconds are wall clock of the whole run (data, epochs, final evaluation) on
this machine; the load average beside them shows whether other work shared the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from retino_core import runs  # noqa: E402
from retino_core.config import ARCHS, PRESETS, make_config  # noqa: E402
from retino_core.data.sources import open_source  # noqa: E402
from retino_core.judging.metrics import classification_metrics, softmax  # noqa: E402
from retino_core.models.builders import build_model  # noqa: E402
from retino_core.training.loaders import build_loaders  # noqa: E402
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.training.loop import predict_logits

# MedMNIST v2 (Yang et al., Scientific Data 2023), Table 3, RetinaMNIST test split.
PAPER_ROWS = (
    ("MedMNIST v2: ResNet-18 (28)", 0.524, 0.717),
    ("MedMNIST v2: Google AutoML Vision (best row)", 0.531, 0.750),
)
TARGET_ACC, TARGET_AUC = 0.531, 0.750  # beat the best row of the paper
STRETCH_ACC, STRETCH_AUC = 0.56, 0.78

# One change to the cpu preset per row, on ResNet18. A change that equals the preset's own
# value is skipped, so the table stays right when the preset moves.
ABLATIONS: tuple[tuple[str, dict], ...] = (
    ("tta off", {"tta": False}),
    ("tta on", {"tta": True}),
    ("ema off", {"ema": 0.0}),
    ("ema 0.99", {"ema": 0.99}),
    ("loss ce", {"loss": "ce"}),
    ("loss weighted_ce", {"loss": "weighted_ce"}),
    ("loss focal", {"loss": "focal"}),
    ("loss ordinal", {"loss": "ordinal"}),
    ("sampler weighted", {"sampler": "weighted"}),
    ("preprocess crop", {"preprocess": "crop"}),
    ("preprocess ben_graham", {"preprocess": "ben_graham"}),
    ("augment flip", {"augment": "flip"}),
    ("augment strong", {"augment": "strong"}),
    ("label_smoothing 0", {"label_smoothing": 0.0}),
    ("image_size 48", {"image_size": 48}),
    ("image_size 64", {"image_size": 64}),
    ("image_size 96", {"image_size": 96}),
)
EVAL_ONLY = {"tta"}  # options that change the evaluation of a trained model, not its training
COMPARED = ("data", "arch", "pretrained", "weights", "preset", "epochs", "batch_size", "lr", "optimizer",
            "momentum", "weight_decay", "scheduler", "warmup_epochs", "label_smoothing", "image_size",
            "augment", "preprocess", "loss", "sampler", "select_metric", "ema", "tta", "val_fraction", "seed",
            "max_steps_per_epoch")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", type=Path, required=True, help="where the run folders go (e.g. /tmp/q)")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--ablations", action="store_true", help="also the one-option changes, on ResNet18")
    p.add_argument("--ablation-seeds", nargs="+", type=int, help="seeds of the ablation rows (default --seeds)")
    p.add_argument("--only", nargs="+", help="ablation rows to run, by name (default all)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return p


def _same(a: dict, b: dict, keys=COMPARED) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


def find_done_run(runs_dir: Path, cfg: dict, keys=COMPARED) -> Path | None:
    """A finished run in ``runs_dir`` whose config equals ``cfg`` on ``keys``."""
    for info in runs.list_runs(runs_dir):
        if info.state == "done" and info.summary and _same(info.config, cfg, keys):
            return info.path
    return None


def train_or_reuse(cfg, runs_dir: Path) -> tuple[Path, dict, float, bool]:
    """(run folder, summary, wall seconds, reused?) of ``cfg``."""
    done = find_done_run(runs_dir, cfg.to_dict())
    if done is not None:
        meta = runs.read_json(done / "bench.json", {}) or {}
        return done, runs.read_json(done / "summary.json"), float(meta.get("wall_seconds", float("nan"))), True
    run_dir = prepare_run(cfg, runs_dir)
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    summary = run_training(run_dir, quiet=True)
    wall = time.monotonic() - t0
    runs.write_json(run_dir / "bench.json", {"wall_seconds": wall, "load_start": load0,
                                            "load_end": os.getloadavg()[0], "threads": torch.get_num_threads()})
    return run_dir, summary, wall, False


def reevaluate(run_dir: Path, cfg) -> dict:
    """Val and test metrics of ``run_dir``'s selected checkpoint under ``cfg``'s evaluation options."""
    ck = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg.arch)
    model.load_state_dict(ck["model"])
    source = open_source(cfg.data, cfg.val_fraction, cfg.seed)
    loaders = build_loaders(cfg, source, torch.device("cpu"))
    out = {"best_epoch": ck["epoch"]}
    for split in ("val", "test"):
        logits, y = predict_logits(model, loaders[split], torch.device("cpu"), cfg, tta=cfg.tta)
        out.update(classification_metrics(y, softmax(logits), prefix=f"{split}_"))
    return out


def row_of(name: str, cfg, summary: dict, wall: float, run_dir: Path, note: str = "") -> dict:
    meta = runs.read_json(run_dir / "bench.json", {}) or {}
    return {"config": name, "arch": cfg.arch, "seed": cfg.seed, "run": run_dir.name, "note": note,
            **{k: summary.get(k) for k in ("test_acc", "test_auc", "test_qwk", "test_macro_f1",
                                           "test_referable_auc", "val_acc", "val_auc", "val_qwk",
                                           "best_epoch", "test_recall", "val_recall")},
            "seconds": wall, "load_start": meta.get("load_start"), "load_end": meta.get("load_end"),
            "threads": meta.get("threads"),
            "changes": {k: getattr(cfg, k) for k in cfg.to_dict() if k in COMPARED}}


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def main_table(rows: list[dict]) -> list[str]:
    lines = ["| configuration | seed | test ACC | test AUC | test QWK | macro-F1 | referable AUC | val ACC "
             "| best epoch | seconds | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['seed']} | {_f(r['test_acc'])} | {_f(r['test_auc'])} | "
                     f"{_f(r['test_qwk'])} | {_f(r['test_macro_f1'])} | {_f(r['test_referable_auc'])} | "
                     f"{_f(r['val_acc'])} | {r['best_epoch']} | {_f(r['seconds'], 0)} | "
                     f"{_f(r['load_start'], 1)}-{_f(r['load_end'], 1)} |")
    for name, acc, auc in PAPER_ROWS:
        lines.append(f"| {name} | - | {acc:.3f} | {auc:.3f} | - | - | - | - | - | - | - |")
    return lines


def mean_rows(rows: list[dict]) -> list[str]:
    """Mean and spread (min-max) over seeds, per configuration."""
    lines = ["| configuration | seeds | test ACC mean (min-max) | test AUC mean (min-max) | test QWK mean "
             "| referable AUC mean | seconds mean |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == name]

        def stat(key, group=group):
            v = [r[key] for r in group if r.get(key) is not None]
            return f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "-"

        lines.append(f"| {name} | {' '.join(str(r['seed']) for r in group)} | {stat('test_acc')} | "
                     f"{stat('test_auc')} | {_f(np.mean([r['test_qwk'] for r in group]))} | "
                     f"{_f(np.mean([r['test_referable_auc'] for r in group]))} | "
                     f"{_f(np.mean([r['seconds'] for r in group]), 0)} |")
    return lines


def ablation_table(rows: list[dict]) -> list[str]:
    lines = ["| change to the preset | seed | val ACC | val AUC | val QWK | test ACC | test AUC | test QWK "
             "| referable AUC | test recall per grade 0/1/2/3/4 | best epoch | seconds (threads) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "/".join(f"{x:.2f}" for x in (r.get("test_recall") or []))
        lines.append(f"| {r['config']} | {r['seed']} | {_f(r['val_acc'])} | {_f(r.get('val_auc'))} | "
                     f"{_f(r.get('val_qwk'))} | {_f(r['test_acc'])} | {_f(r['test_auc'])} | "
                     f"{_f(r['test_qwk'])} | {_f(r['test_referable_auc'])} | {rec} | {r['best_epoch']} | "
                     f"{_f(r['seconds'], 0)} ({r.get('threads') or '-'}) |")
    return lines


DELTA_KEYS = (("test_acc", "test ACC"), ("test_auc", "test AUC"), ("test_qwk", "test QWK"),
              ("test_referable_auc", "referable AUC"))


def ablation_summary(rows: list[dict]) -> list[str]:
    """Per change: the mean over seeds of each test metric and of its difference to the preset
    trained with the same seed, and in how many seeds the change raised it."""
    base = {r["seed"]: r for r in rows if r["config"] == "(the preset)"}
    head = " | ".join(f"{label} (change vs preset, raised in)" for _, label in DELTA_KEYS)
    lines = [f"| change to the preset | seeds | {head} | grade-1 recall | grade-4 recall |",
             "|---|---|" + "---|" * (len(DELTA_KEYS) + 2)]
    for name in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == name and r["seed"] in base]
        cells = []
        for key, _ in DELTA_KEYS:
            vals = [r[key] for r in group]
            deltas = [r[key] - base[r["seed"]][key] for r in group]
            cell = f"{np.mean(vals):.3f}"
            if name != "(the preset)":
                cell += f" ({np.mean(deltas):+.3f}, {sum(d > 0 for d in deltas)}/{len(deltas)})"
            cells.append(cell)
        recall = [r.get("test_recall") or [float("nan")] * 5 for r in group]
        lines.append(f"| {name} | {len(group)} | {' | '.join(cells)} | "
                     f"{np.mean([x[1] for x in recall]):.2f} | {np.mean([x[4] for x in recall]):.2f} |")
    return lines


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads")


def write(out: Path, stem: str, lines: list[str], rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    runs.write_json(out / f"{stem}.json", rows)


def run_main(args) -> list[dict]:
    rows = []
    for arch in args.archs:
        for seed in args.seeds:
            cfg = make_config("cpu", arch=arch, seed=seed, name=f"quality-{arch}-s{seed}")
            run_dir, summary, wall, reused = train_or_reuse(cfg, args.runs_dir)
            rows.append(row_of(f"{arch} scratch, cpu preset", cfg, summary, wall, run_dir,
                               "reused" if reused else ""))
            r = rows[-1]
            print(f"{arch} seed {seed}: test acc {_f(r['test_acc'])} auc {_f(r['test_auc'])} "
                  f"qwk {_f(r['test_qwk'])} in {_f(wall, 0)} s{' (reused)' if reused else ''}", flush=True)
    return rows


def run_ablations(args) -> list[dict]:
    preset = PRESETS["cpu"]
    wanted = [(n, c) for n, c in ABLATIONS if not args.only or n in args.only]
    rows = []
    for seed in args.ablation_seeds or args.seeds:
        base = make_config("cpu", arch="resnet18", seed=seed, name=f"quality-resnet18-s{seed}")
        base_dir, base_summary, base_wall, _ = train_or_reuse(base, args.runs_dir)
        rows.append(row_of("(the preset)", base, base_summary, base_wall, base_dir))
        for name, change in wanted:
            if all(preset.get(k, getattr(base, k)) == v for k, v in change.items()):
                continue  # the preset already does this
            cfg = base.replace(name=f"ablation-{name.replace(' ', '-')}-s{seed}", **change)
            if set(change) <= EVAL_ONLY:
                summary = reevaluate(base_dir, cfg)
                rows.append(row_of(name, cfg, summary, float("nan"), base_dir, "same checkpoint, re-evaluated"))
            else:
                run_dir, summary, wall, _ = train_or_reuse(cfg, args.runs_dir)
                rows.append(row_of(name, cfg, summary, wall, run_dir))
            r = rows[-1]
            print(f"ablation {name} seed {seed}: val acc {_f(r['val_acc'])} test acc {_f(r['test_acc'])} "
                  f"auc {_f(r['test_auc'])} qwk {_f(r['test_qwk'])}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    preset = ", ".join(f"{k}={v}" for k, v in PRESETS["cpu"].items())
    head = ["# RetinaMNIST quality: ResNets from scratch on a CPU", "",
            "Official MedMNIST split (train 1080 / val 120 / test 400, 28x28 RGB). The epoch and the "
            "temperature are chosen on validation only; the test split never chooses anything.", "",
            f"- command: `{command}`", f"- machine: {machine()}", f"- cpu preset: {preset}", ""]
    rows = run_main(args)
    ok = [r for r in rows if r["test_acc"] > TARGET_ACC and r["test_auc"] > TARGET_AUC]
    stretch = [r for r in rows if r["test_acc"] >= STRETCH_ACC and r["test_auc"] >= STRETCH_AUC]
    lines = head + main_table(rows) + [""]
    if len(args.seeds) > 1:
        lines += mean_rows(rows) + [""]
    lines += [f"Beat AutoML Vision ({TARGET_ACC} / {TARGET_AUC}) on both: {len(ok)} of {len(rows)} runs. "
              f"ACC >= {STRETCH_ACC} and AUC >= {STRETCH_AUC}: {len(stretch)} of {len(rows)} runs."]
    write(args.out, "quality", lines, rows)
    print("\n".join(lines))
    if args.ablations:
        abl = run_ablations(args)
        alines = ["# RetinaMNIST ablations: one change to the cpu preset, ResNet18 from scratch", "",
                  f"- command: `{command}`", f"- machine: {machine()}", f"- cpu preset: {preset}",
                  "- tta rows re-evaluate the preset's selected checkpoint; every other row is its own run.",
                  "- seconds are the run's own wall clock with its thread count; runs trained side by side "
                  "on 1 thread each are slower than the quality table's.", ""]
        if len({r["seed"] for r in abl}) > 1:
            alines += ["## Mean over seeds", ""] + ablation_summary(abl) + ["", "## Every run", ""]
        alines += ablation_table(abl)
        write(args.out, "ablations", alines, abl)
        print("\n".join(alines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
