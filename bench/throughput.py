"""Training throughput, like for like: the lab's loop against this project's trainer at the same
batch, the model alone, the trainer end to end with its costs itemised, and the lab's sweep
extrapolated from those figures.

    python -m retino_core bench --device cpu --out bench/results   # a CPU: 64 px, both ResNets
    python -m retino_core bench --out "$OUT"                       # a GPU: 512 px
    python -m retino_core bench --data LAB_FOLDER                  # real images, not generated ones
    python bench/throughput.py ...                                 # the same, as a script

For each arch, on one device, in one process:
1. Steady state: training images/s after a warm-up, at the lab's batch (8) and at the batch of
   the trainer's preset, repeats interleaved so load shifts hit all alike:
   - lab loop: the lab report's loop (SGD, flips, fp32, PIL in the training process, no
     workers, the loss read back after every step);
   - trainer, lab recipe: the trainer's ``train_one_epoch`` on its own loaders with the ``lab``
     preset (the same SGD, flips and batch): the same work, the trainer's machinery;
   - trainer, its recipe: the same with the preset it uses on this device (``cpu`` / ``fast``);
   - model alone: that recipe's model, optimiser, weight average and precision on synthetic
     data already on the device (compiled where the preset compiles): the ceiling.
   The best of the repeats is reported (the least disturbed by other work), all of them kept.
   On a CPU, where each step's time goes (bench/timing.py StepClock).
2. End to end: ``run_training`` with its recipe over whole epochs, each part timed: training,
   evaluation, checkpoints (the training thread's share and the writer thread's), set-up, the
   final evaluation, the out-of-distribution fit and the bootstrap.
3. The lab's four-configuration sweep (10 epochs of 28,100 training and 7,026 test images)
   extrapolated from 1 and 2: which figures are measured and which extrapolated is written out.
Writes throughput.json and throughput.md to --out (default $OUT when set); the report opens with
the README's table (a row per arch, the same columns on a CPU and a GPU).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import timing  # noqa: E402
from bench.fundus import make_lab_folder, writer_processes  # noqa: E402,F401 - make_lab_folder: gpu_check
from retino_core import runs  # noqa: E402
from retino_core.config import ARCHS, PRESETS, make_config  # noqa: E402
from retino_core.data.sources import open_source  # noqa: E402
from retino_core.errors import DataError  # noqa: E402
from retino_core.judging import ood  # noqa: E402

# The lab report's sweep: four configurations, 10 epochs each, on 28,100 + 7,026 images at 512 px.
LAB_TRAIN, LAB_TEST, LAB_EPOCHS, LAB_CONFIGS_PER_ARCH, LAB_REPORTED_HOURS = 28_100, 7_026, 10, 2, 18.0
LAB_BATCH, LAB_IMAGE_SIZE = 8, 512
GOAL_B_OVER_C, GOAL_SWEEP_MIN = 0.85, 12.0
KINDS = ("lab", "trainer_lab", "trainer", "model")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: at least {low}")
        return value
    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m retino_core bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--image-size", type=_at_least(32), help="pixels (default 512 on CUDA, 64 on CPU)")
    p.add_argument("--preset", choices=("cpu", "fast"), help="the trainer's recipe (default fast on CUDA, cpu on CPU)")
    p.add_argument("--batch-size", type=_at_least(1), help="the trainer's batch (default the preset's, 64); "
                                                  "the steady state is also measured at the lab's 8")
    p.add_argument("--steps", type=_at_least(1), help="timed steps at --batch-size; batch 8 times as many images "
                                             "(default 20 on CUDA, 6 on CPU)")
    p.add_argument("--warmup", type=_at_least(0), help="warm-up steps before each timing (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--repeats", type=_at_least(1), help="interleaved repeats of the steady state, the best reported "
                                               "(default 1 on CUDA, 3 on CPU)")
    p.add_argument("--epochs", type=_at_least(1), default=2, help="end-to-end epochs; the first is also reported apart")
    p.add_argument("--epoch-steps", type=_at_least(0), default=0, help="cap the end-to-end epochs (default: whole epochs)")
    p.add_argument("--train-images", type=_at_least(20), help="generated training images (default 3,000 on CUDA, 1,200 "
                                                    "on CPU: 1,080 + 120 validation, RetinaMNIST's sizes)")
    p.add_argument("--test-images", type=_at_least(5), help="generated test images (default 750 on CUDA, 400 on CPU)")
    p.add_argument("--data", help="a lab folder to read instead of generated JPEGs")
    p.add_argument("--workers", type=int, default=-1, help="trainer DataLoader workers (-1: the trainer's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the trainer's recipe and the model alone (default: the preset's choice)")
    p.add_argument("--threads", type=_at_least(1), help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workdir", type=Path, help="where generated images and run folders go, kept "
                   "(default: a temp folder, removed at the end)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="folder for throughput.json and throughput.md")
    return p


def _defaults(args, cuda: bool) -> None:
    args.image_size = args.image_size or (512 if cuda else 64)
    args.preset = args.preset or ("fast" if cuda else "cpu")
    args.batch_size = args.batch_size or PRESETS[args.preset]["batch_size"]
    args.steps = args.steps or (20 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    args.repeats = args.repeats or (1 if cuda else 3)
    args.train_images = args.train_images or (3000 if cuda else 1200)
    args.test_images = args.test_images or (750 if cuda else 400)


def recipe(args, preset: str, arch: str, batch: int, **extra):
    """The trainer's configuration for ``preset`` at this benchmark's size, device and batch."""
    return make_config(preset, arch=arch, batch_size=batch, image_size=args.image_size, device=args.device_used,
                       num_workers=args.workers, compile=args.compile if preset != "lab" else None, **extra)


# ---------------------------------------------------------------- measuring one arch


def steady_state(arch: str, source, device, args, work: Path) -> dict:
    """Images/s of the four loops at batch 8 and the preset batch, repeats interleaved."""
    samples: dict = {}
    for rep in range(args.repeats):
        for batch in sorted({LAB_BATCH, args.batch_size}):
            steps = timing.steps_for(args.steps * args.batch_size, batch)
            for kind in _kinds(batch, args):
                print(f"{arch}: steady state, batch {batch}, {kind} (repeat {rep + 1})", file=sys.stderr)
                load = timing.load_average()
                if kind == "lab":
                    r = timing.lab_loop(arch, source, device, args.image_size, batch, steps, args.warmup,
                                        eval_steps=steps if rep == 0 and batch == LAB_BATCH else 0)
                elif kind == "model":
                    r = timing.model_alone(recipe(args, args.preset, arch, batch), device, steps, args.warmup)
                else:
                    cfg = recipe(args, "lab" if kind == "trainer_lab" else args.preset, arch, batch)
                    r = timing.trainer_steady(cfg, source, device, steps, args.warmup,
                                              work / "scratch" / f"{arch}-{kind}-{batch}-{rep}")
                r["load_average"] = [load, timing.load_average()]
                samples.setdefault(f"{kind}@{batch}", []).append(r)
                _release(device)
    return {key: _best(rs) for key, rs in samples.items()}


def _kinds(batch: int, args) -> tuple[str, ...]:
    """The loops measured at ``batch``: on CUDA with compilation on, the preset's recipe and the
    model alone only at the preset's batch (each batch size would be one more compilation)."""
    compiles = args.device_used == "cuda" and (args.compile if args.compile is not None
                                               else PRESETS[args.preset].get("compile", False))
    if compiles and batch != args.batch_size:
        return ("lab", "trainer_lab")
    return KINDS


def _best(rs: list[dict]) -> dict:
    """The fastest of the repeats, with its step profile: the least disturbed by other work on
    the machine (as timeit reports its best); every repeat's rate is kept beside it."""
    best = max(rs, key=lambda r: r["train_img_s"])
    out = {**best, "samples_img_s": [round(r["train_img_s"], 1) for r in rs],
           "load_average": [x for r in rs for x in r["load_average"]]}
    evals = [r["eval_img_s"] for r in rs if r.get("eval_img_s")]
    if evals:
        out["eval_img_s"] = max(evals)
    return out


def _release(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_arch(arch: str, source, device, args, work: Path) -> dict:
    steady = steady_state(arch, source, device, args, work)
    print(f"{arch}: end to end, {args.epochs} epochs", file=sys.stderr)
    cfg = recipe(args, args.preset, arch, args.batch_size, epochs=args.epochs,
                 max_steps_per_epoch=args.epoch_steps, name=f"bench-{arch}")
    e2e = timing.end_to_end(cfg, source, work / "runs")
    _release(device)
    res = {"steady": steady, "end_to_end": e2e}
    for b in sorted({LAB_BATCH, args.batch_size}):
        res[f"trainer_over_lab@{b}"] = _ratio(steady, f"trainer_lab@{b}", f"lab@{b}")
        res[f"trainer_over_model@{b}"] = _ratio(steady, f"trainer@{b}", f"model@{b}")
    res["sweep"] = extrapolate(steady, e2e, args)
    return res


def _ratio(steady: dict, a: str, b: str) -> float | None:
    return steady[a]["train_img_s"] / steady[b]["train_img_s"] if a in steady and b in steady else None


# ---------------------------------------------------------------- the sweep, extrapolated


def extrapolate(steady: dict, e2e: dict, args) -> dict:
    """Two configurations of one arch (from scratch and pretrained: the same work), the lab's
    way and the trainer's, at the lab's image counts and the measured image size.

    Lab loop: 10 x (28,100 / its batch-8 training rate + 7,026 / its evaluation rate).
    Trainer: per epoch, the training images it keeps after carving 10 % validation / its
    steady-state rate at its batch, validation and test / its measured evaluation rate, plus
    the measured per-epoch checkpoint and bookkeeping seconds (they grow with the model, not
    the data); per configuration, the set-up (the image check scaled to the lab's image
    count), the first epoch's extra, and the final evaluation, out-of-distribution fit and
    bootstrap, each scaled by the images it reads.
    """
    lab = steady[f"lab@{LAB_BATCH}"]
    lab_h = LAB_EPOCHS * (LAB_TRAIN / lab["train_img_s"] + LAB_TEST / lab["eval_img_s"]) / 3600
    n = e2e["images"]
    val = round(LAB_TRAIN * 0.1)
    train = (LAB_TRAIN - val) // args.batch_size * args.batch_size  # full batches only
    per = e2e["steady_epoch"]
    epoch = {"train": train / steady[f"trainer@{args.batch_size}"]["train_img_s"],
             "evaluation": (val + LAB_TEST) / e2e["eval_img_s"],
             "checkpoints": per["checkpoint_main_s"], "other": max(per["other_s"], 0.0)}
    measured_eval = n.get("val", 0) + n.get("test", 0)
    once = {
        "setup": e2e["setup_s"] - e2e["open_data_s"]
        + e2e["open_data_s"] * (LAB_TRAIN + LAB_TEST) / sum(n.values()),
        "first_epoch_extra": max(e2e["first_epoch_extra_s"] or 0.0, 0.0),
        "final_evaluation": (e2e["final_s"] - e2e["ood_s"] - e2e["bootstrap_s"] - e2e["final_best_s"])
        * (val + LAB_TEST) / max(measured_eval, 1),
        "ood_fit": e2e["ood_s"] * min(train, ood.FIT_MAX_IMAGES) / max(min(n["train"], ood.FIT_MAX_IMAGES), 1),
        "bootstrap": e2e["bootstrap_s"] * LAB_TEST / max(n.get("test", 0), 1),
        "rest": e2e["after_epochs_s"] + e2e["final_best_s"] + e2e["finish_s"],
    }
    config_s = LAB_EPOCHS * sum(epoch.values()) + sum(once.values())
    return {"lab_hours": LAB_CONFIGS_PER_ARCH * lab_h, "trainer_minutes": LAB_CONFIGS_PER_ARCH * config_s / 60,
            "trainer_epoch_s": epoch, "trainer_once_s": once}


# ---------------------------------------------------------------- report


def _f(x, spec: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(res: dict) -> str:
    a = res["args"]
    loads = [x for r in res["archs"].values() for s in r["steady"].values() for x in s["load_average"] if x is not None]
    lines = [
        "# Training throughput: the lab's loop, this trainer and the model alone", "",
        f"{res['device_name']} · {res['torch_threads']} torch threads · torch {res['torch']} · "
        f"torchvision {res['torchvision']} · {a['image_size']} px {res['data']} · the trainer's recipe: "
        f"`{a['preset']}` preset, batch {a['batch_size']} · load average (1 min): {_f(res['load_start'], '.1f')} "
        f"at the start, {_f(min(loads, default=None), '.1f')}–{_f(max(loads, default=None), '.1f')} during, "
        f"{_f(res.get('load_end'), '.1f')} at the end · {_f(res.get('wall_s', 0) / 60, '.1f')} min in all",
        "", f"Command: `{res['command']}`", "", *summary_lines(res), "",
        f"## Steady state (measured): training images/s after {a['warmup']} warm-up steps, "
        f"the best of {a['repeats']} interleaved repeat{'s' if a['repeats'] > 1 else ''}", "",
        "| arch | batch | lab loop | trainer, lab recipe | trainer ÷ lab | trainer, "
        f"`{a['preset']}` recipe | model alone, `{a['preset']}` recipe | trainer ÷ model | load average |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arch, r in res["archs"].items():
        for b in sorted({LAB_BATCH, a["batch_size"]}):
            s = {k: v["train_img_s"] for k, v in r["steady"].items()}
            lines.append(f"| {arch} | {b} | {_f(s.get(f'lab@{b}'), ',.1f')} | {_f(s.get(f'trainer_lab@{b}'), ',.1f')} "
                         f"| {_f(r[f'trainer_over_lab@{b}'], '.2f')}× | {_f(s.get(f'trainer@{b}'), ',.1f')} "
                         f"| {_f(s.get(f'model@{b}'), ',.1f')} | {_f(r[f'trainer_over_model@{b}'], '.2f')} "
                         f"| {_load_range(r['steady'], b)} |")
    lines += ["", "Lab recipe: SGD (lr 1e-3, momentum 0.9), horizontal flips, no weight average; the lab loop also "
              "runs in fp32, decodes in the training process and reads the loss back after every step. "
              f"Trainer: DataLoader workers ({_workers(res)}), the running loss read every 2 s, progress rows "
              f"as in a run. The `{a['preset']}` recipe: {_recipe_words(a['preset'])}."]
    lines += _profile_lines(res) + _end_to_end_lines(res) + _sweep_lines(res)
    for arch, err in res.get("errors", {}).items():
        lines.append(f"\n{arch}: FAILED: {err}")
    return "\n".join(lines) + "\n"


def summary_lines(res: dict) -> list[str]:
    """The README's throughput table: a row per arch, the same columns on a CPU and a GPU."""
    a = res["args"]
    b, p = a["batch_size"], a["preset"]
    cpu = res["device"] == "cpu"
    n = res["torch_threads"]
    machine = f"{res['cpus']}-core CPU, {n} thread{'s' if n != 1 else ''}" if cpu else res["device_name"]
    lines = ["## Summary (the README's table)", "",
             f"| machine | arch | px | batch {LAB_BATCH}: lab loop · trainer, lab recipe · ÷ "
             f"| batch {b}: lab loop · trainer, lab recipe · ÷ | batch {b}: trainer, `{p}` recipe · model alone · ÷ "
             "| end to end: epoch s (checkpoints s) | sweep, extrapolated: lab loop h · trainer min | load average |",
             "|---|---|---:|---|---|---|---|---|---|"]
    for arch, r in res["archs"].items():
        s = {k: v["train_img_s"] for k, v in r["steady"].items()}
        cells = []
        for x, y, ratio in ((f"lab@{LAB_BATCH}", f"trainer_lab@{LAB_BATCH}", f"trainer_over_lab@{LAB_BATCH}"),
                            (f"lab@{b}", f"trainer_lab@{b}", f"trainer_over_lab@{b}"),
                            (f"trainer@{b}", f"model@{b}", f"trainer_over_model@{b}")):
            cells.append(f"{_f(s.get(x), ',.1f')} · {_f(s.get(y), ',.1f')} · {_f(r[ratio], '.2f')}×")
        m = r["end_to_end"]["steady_epoch"]
        loads = [x for v in r["steady"].values() for x in v["load_average"] if x is not None]
        loads += [x for x in r["end_to_end"]["load_average"] if x is not None]
        lines.append(f"| {machine} | {arch} | {a['image_size']} | {' | '.join(cells)} "
                     f"| {m['wall_s']:.1f} ({m['checkpoint_main_s']:.2f}) "
                     f"| {r['sweep']['lab_hours']:.2f} · {r['sweep']['trainer_minutes']:.1f} "
                     f"| {_f(min(loads, default=None), '.1f')}–{_f(max(loads, default=None), '.1f')} |")
    return lines


def _load_range(steady: dict, batch: int) -> str:
    loads = [x for k, v in steady.items() if k.endswith(f"@{batch}") for x in v["load_average"] if x is not None]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "-"


def _workers(res: dict) -> str:
    ws = {s.get("workers") for r in res["archs"].values() for k, s in r["steady"].items() if k.startswith("trainer")}
    return ", ".join(str(w) for w in sorted(w for w in ws if w is not None)) or "-"


def _recipe_words(preset: str) -> str:
    p = PRESETS[preset]
    words = [f"{p['optimizer'].upper() if p['optimizer'] == 'sgd' else 'AdamW'}", f"{p['augment']} augmentation"]
    if p.get("ema"):
        words.append(f"a weight average (EMA {p['ema']}) updated every step")
    if p.get("compile"):
        words.append("torch.compile and bf16 on CUDA")
    return ", ".join(words)


def _profile_lines(res: dict) -> list[str]:
    rows = []
    for arch, r in res["archs"].items():
        for kind, name in (("lab", "lab loop"), ("trainer_lab", "trainer, lab recipe"),
                           ("trainer", f"trainer, `{res['args']['preset']}` recipe")):
            p = r["steady"].get(f"{kind}@{LAB_BATCH}", {}).get("profile_ms")
            if p:
                rows.append(f"| {arch} | {name} | {p['data']:.1f} | {p['forward']:.1f} | {p['backward']:.1f} "
                            f"| {p['optimizer']:.1f} | {p['average']:.1f} | {p['rest']:.1f} | {p['step']:.1f} |")
    if not rows:
        return []
    return ["", f"## Where a batch-{LAB_BATCH} step goes (measured, ms per step, CPU)", "",
            "| arch | loop | waiting for data | forward | loss + backward | optimiser | weight average | rest | step |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
            "From hooks on each loop's own model, optimiser, weight average and loader (bench/timing.py "
            "StepClock); 'rest' is the schedule, moving the batch, running sums and progress rows."]


def _end_to_end_lines(res: dict) -> list[str]:
    a = res["args"]
    lines = ["", f"## End to end (measured): `run_training`, `{a['preset']}` recipe, batch {a['batch_size']}, "
             f"{a['epochs']} epochs", "",
             "| arch | images train / val / test | epoch s | training s (img/s) | evaluation s (img/s) "
             "| checkpoints, training thread s | checkpoints, writer thread s (CPU s) | other s | first epoch extra s "
             "| load average |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for arch, r in res["archs"].items():
        e, m = r["end_to_end"], r["end_to_end"]["steady_epoch"]
        n = e["images"]
        lines.append(f"| {arch} | {n['train']:,} / {n.get('val', 0):,} / {n.get('test', 0):,} | {m['wall_s']:.2f} "
                     f"| {m['train_s']:.2f} ({e['train_img_s']:,.0f}) | {m['eval_s']:.2f} ({e['eval_img_s']:,.0f}) "
                     f"| {m['checkpoint_main_s']:.3f} | {m['writer_s']:.2f} ({m['writer_cpu_s']:.2f}) "
                     f"| {m['other_s']:.3f} | {_f(e['first_epoch_extra_s'], '.2f')} "
                     f"| {' → '.join(_f(x, '.1f') for x in e['load_average'])} |")
    lines += ["", "| arch | set-up s (image check) | final evaluation s | out-of-distribution fit s | bootstrap s "
              "| last checkpoints + best.pt + summary s | whole run s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for arch, r in res["archs"].items():
        e = r["end_to_end"]
        final_eval = e["final_s"] - e["ood_s"] - e["bootstrap_s"] - e["final_best_s"]
        lines.append(f"| {arch} | {e['setup_s']:.2f} ({e['open_data_s']:.2f}) | {final_eval:.2f} | {e['ood_s']:.2f} "
                     f"| {e['bootstrap_s']:.2f} | {e['after_epochs_s'] + e['final_best_s'] + e['finish_s']:.2f} "
                     f"| {e['wall_s']:.1f} |")
    lines += ["", "Per epoch: the mean of the epochs after the first. Evaluation is validation and test every "
              "epoch; the final evaluation scores the selected checkpoint (with flip TTA where the recipe has it) "
              "and writes predictions.csv; the out-of-distribution fit and the bootstrap run once per run."]
    for arch, r in res["archs"].items():
        e, m = r["end_to_end"], r["end_to_end"]["steady_epoch"]
        lines.append(f"\n{arch}: last.pt is {e['last_pt_mb']:.0f} MB (weights, optimiser state, weight average). "
                     f"Written in the training thread it takes {e['sync_write_s']:.2f} s, "
                     f"{100 * e['sync_write_s'] / m['wall_s']:.1f} % of an epoch; handed to the writer thread it costs "
                     f"the training thread {m['checkpoint_main_s']:.3f} s ({100 * m['checkpoint_main_s'] / m['wall_s']:.1f} %) "
                     f"while the writer spends {m['writer_cpu_s']:.2f} CPU s beside training "
                     f"(at most {100 * (m['checkpoint_main_s'] + m['writer_cpu_s']) / m['wall_s']:.1f} % of the epoch "
                     "if every one of them were taken from it).")
    return lines


def _sweep_lines(res: dict) -> list[str]:
    a = res["args"]
    lines = ["", f"## The lab's four-configuration sweep (extrapolated from the figures above, at {a['image_size']} px)",
             "", "| arch | lab loop, 2 configurations h | trainer, 2 configurations min | trainer: training "
             "| evaluation | checkpoints + other | once per configuration |", "|---|---:|---:|---:|---:|---:|---:|"]
    for arch, r in res["archs"].items():
        s = r["sweep"]
        ep, once = s["trainer_epoch_s"], s["trainer_once_s"]
        lines.append(f"| {arch} | {s['lab_hours']:.2f} | {s['trainer_minutes']:.1f} | {LAB_EPOCHS * ep['train'] / 60:.1f} min "
                     f"| {LAB_EPOCHS * ep['evaluation'] / 60:.1f} min | {LAB_EPOCHS * (ep['checkpoints'] + ep['other']):.0f} s "
                     f"| {sum(once.values()):.0f} s |")
    sw = res["sweep"]
    size_note = ("" if a["image_size"] == LAB_IMAGE_SIZE else
                 f" These are at {a['image_size']} px: the lab's image counts, not its {LAB_IMAGE_SIZE} px images, "
                 "so they compare the two loops, not the lab's hours.")
    lines += ["", f"All four: lab loop {sw['lab_hours']:.2f} h, this trainer {sw['trainer_minutes']:.1f} min "
              f"({'both archs' if sw['complete'] else 'not every arch measured'}). Measured: every rate and every "
              "second in the tables above. Extrapolated: the lab's 10 epochs of 28,100 training and 7,026 test images "
              "(the trainer carves 10 % of the training images for validation), from the steady-state training rates "
              "(the lab loop at batch 8, the trainer at its batch), the measured evaluation rates, the per-epoch "
              "checkpoint and bookkeeping seconds as measured (they grow with the model, not the data) and the "
              f"once-per-run costs scaled by the images they read.{size_note} The lab report took "
              f"{LAB_REPORTED_HOURS:.0f} h on an RTX 2070; the goal is <= {GOAL_SWEEP_MIN:.0f} min on one H100/H200 "
              f"({'met' if sw['goal_met'] else 'not met here'}), and the trainer at >= {GOAL_B_OVER_C:.0%} of the "
              f"model alone at its batch ({'met' if res['b_over_c_goal_met'] else 'not met here'})."]
    return lines


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    args.device_used = device.type
    _defaults(args, device.type == "cuda")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="retino-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, argv, device, work)
    finally:
        if args.workdir is None:  # its images and run folders (checkpoints of 0.2-0.5 GB) go too
            shutil.rmtree(work, ignore_errors=True)


def run(args, argv: list[str], device: torch.device, work: Path) -> int:
    """Measure every arch of ``args`` in ``work``; print the report, write it to --out."""
    t0 = time.perf_counter()
    res = {"command": " ".join(["python -m retino_core bench", *argv]), "load_start": timing.load_average(),
           "device": device.type, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
           "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
           "args": {k: getattr(args, k) for k in ("image_size", "preset", "batch_size", "steps", "warmup", "repeats",
                                                  "epochs", "epoch_steps", "workers", "compile")},
           "archs": {}, "errors": {}}
    data = Path(args.data) if args.data else None
    if data is None:
        data = make_lab_folder(work / f"fundus{args.image_size}", args.train_images, args.test_images, args.image_size)
        res["data"] = "generated fundus-like JPEGs in the lab's layout"
        res["generated"] = {"images": args.train_images + args.test_images, "seconds": time.perf_counter() - t0,
                            "processes": writer_processes(args.train_images + args.test_images)}
        print(f"wrote {args.train_images + args.test_images:,} fundus-like JPEGs ({args.image_size} px) in "
              f"{res['generated']['seconds']:.1f} s", file=sys.stderr)
    else:
        res["data"] = f"images of the lab folder {data.name}"
    try:
        source = open_source(data, 0.1, 0)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res["splits"] = {k: len(s) for k, s in source.splits.items()}
    for arch in args.archs:
        try:
            res["archs"][arch] = measure_arch(arch, source, device, args, work)
        except Exception as err:  # noqa: BLE001 - one arch failing must not lose the other's numbers
            import traceback

            res["errors"][arch] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        if args.out:  # after each arch, so a cut-off run still leaves its numbers
            _write(args.out, res)
    _summarise(res, args)
    res["wall_s"], res["load_end"] = time.perf_counter() - t0, timing.load_average()
    report = markdown(res)
    print(report)
    if args.out:
        _write(args.out, res, report)
    return 1 if res["errors"] else 0


def _summarise(res: dict, args) -> None:
    archs = res["archs"].values()
    all_four = set(res["archs"]) == set(ARCHS)
    minutes = sum(r["sweep"]["trainer_minutes"] for r in archs)
    res["sweep"] = {"lab_hours": sum(r["sweep"]["lab_hours"] for r in archs), "trainer_minutes": minutes,
                    "complete": all_four, "goal_met": all_four and res["device"] == "cuda" and minutes <= GOAL_SWEEP_MIN}
    res["b_over_c_goal_met"] = (bool(archs) and not res["errors"]
                                and all(r[f"trainer_over_model@{args.batch_size}"] >= GOAL_B_OVER_C for r in archs))


def _write(out: Path, res: dict, report: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "throughput.json", res)
    if report is not None:
        runs.atomic_write(out / "throughput.md", report.encode())


if __name__ == "__main__":
    sys.exit(main())
