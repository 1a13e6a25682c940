"""Training throughput: the lab's loop vs this project's trainer vs the model alone.

    python -m retino_core bench                        # GPU: ResNet18 and ResNet50 at 512 px
    python -m retino_core bench --data LAB_FOLDER      # on real images instead of generated ones
    python bench/throughput.py --device cpu --image-size 64 --steps 3    # CPU smoke test

For each arch, in one process on one device:
(a) lab      the lab report's loop: batch 8, fp32, PIL decode and transforms in the main
             process, no workers, SGD, the loss read back after every step;
(b) trainer  this project's trainer end to end (``run_training``, ``fast`` preset) from JPEG
             files on disk; images/s of the steady epochs (the first one, which compiles, is
             reported apart) and evaluation images/s;
(c) model    the same model, optimiser, batch and precision on synthetic data already on the
             device, compiled on CUDA: the ceiling for (b).
It prints images/s, b/a, b/c, peak GPU memory and the wall time of the lab's four-configuration
sweep (10 epochs of 28,100 training and 7,026 test images each) extrapolated from the measured
rates, and writes throughput.json and throughput.md to --out (default $OUT when set).
Without --data it first writes fundus-like JPEGs at --image-size in the lab's folder layout.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from retino_core import runs  # noqa: E402
from retino_core.config import ARCHS, make_config  # noqa: E402
from retino_core.data.splits import SplitDataset  # noqa: E402
from retino_core.data.sources import open_source
from retino_core.models.builders import build_model  # noqa: E402
from retino_core.training.recipe import build_optimizer  # noqa: E402
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.data.transforms import build_eval_transform, build_train_transform  # noqa: E402

# The lab report's sweep: four configurations, 10 epochs each, on 28,100 + 7,026 images.
LAB_TRAIN, LAB_TEST, LAB_EPOCHS, LAB_CONFIGS_PER_ARCH, LAB_REPORTED_HOURS = 28_100, 7_026, 10, 2, 18.0
GOAL_B_OVER_C, GOAL_SWEEP_MIN = 0.85, 12.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m retino_core bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, help="trainer and model batch (default 64 on CUDA, 8 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps of each loop and trainer steps per epoch "
                                              "(default 40 on CUDA, 3 on CPU)")
    p.add_argument("--epochs", type=int, help="trainer epochs; the first is not counted (default 3 on CUDA, 2 on CPU)")
    p.add_argument("--data", help="a lab folder to read instead of generated JPEGs")
    p.add_argument("--workers", type=int, default=-1, help="trainer DataLoader workers (-1: the trainer's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile in (b) and (c) (default: on CUDA only)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workdir", type=Path, help="where generated images and run folders go (default: a temp folder)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="folder for throughput.json and throughput.md")
    return p


# ---------------------------------------------------------------- fundus-like JPEGs


def fundus_array(seed: int, size: int, grade: int) -> np.ndarray:
    """An RGB uint8 fundus-like photo: an orange disc with shading, texture, vessels, lesions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    base = np.array([185, 85, 30], np.float32) + rng.normal(0, 12, 3).astype(np.float32)
    img = base * (1 - 0.35 * r[..., None] ** 2)
    low = Image.fromarray(rng.normal(128, 30, (8, 8, 3)).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR)
    img += (np.asarray(low, np.float32) - 128) * 0.3
    img += rng.normal(0, 5, (size, size, 3)).astype(np.float32)  # sensor noise: realistic JPEG sizes
    img *= (r < 0.94)[..., None]
    pic = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    disc = (size * (0.62 + rng.uniform(-0.04, 0.04)), size * 0.5)
    width = max(1, size // 160)
    for _ in range(10):  # vessels leaving the optic disc
        a = rng.uniform(0, 2 * np.pi)
        pts = [disc]
        for step in range(1, 8):
            a += rng.normal(0, 0.25)
            pts.append((pts[-1][0] + np.cos(a) * size / 14, pts[-1][1] + np.sin(a) * size / 14))
        draw.line(pts, fill=(110, 25, 15), width=width)
    d = size / 14
    draw.ellipse((disc[0] - d, disc[1] - d, disc[0] + d, disc[1] + d), fill=(235, 190, 110))
    for _ in range(grade * 6):  # haemorrhages and exudates grow with the grade
        x, y = rng.uniform(0.25, 0.75, 2) * size
        s = rng.uniform(0.004, 0.012) * size
        colour = (90, 15, 10) if rng.random() < 0.6 else (240, 220, 120)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=colour)
    return np.asarray(pic)


def _write_jpeg(job: tuple) -> None:
    path, seed, size, grade = job
    Image.fromarray(fundus_array(seed, size, grade)).save(path, "JPEG", quality=90)


def make_lab_folder(root: Path, n_train: int, n_test: int, size: int) -> Path:
    """The lab layout (four headerless CSVs, images in data/) with fundus-like JPEGs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    jobs = []
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1_000_000)):
        names, grades = [], []
        for i in range(n):
            name, grade = f"{offset + i // 2}_{'left' if i % 2 == 0 else 'right'}", i % 5
            names.append(name)
            grades.append(str(grade))
            jobs.append((root / "data" / f"{name}.jpeg", offset + i, size, grade))
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(grades) + "\n")
    procs = min(len(jobs) // 64, os.cpu_count() or 1, 16)
    if procs > 1:
        with Pool(procs) as pool:
            pool.map(_write_jpeg, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_jpeg(job)
    return root


# ---------------------------------------------------------------- the three measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(loader):
    while True:  # as many batches as asked for, starting over when the loader runs out
        yield from loader


def lab_loop(arch: str, source, device: torch.device, image_size: int, steps: int, warmup: int = 2) -> dict:
    """(a) The lab's loop: batch 8, fp32, PIL in the main process, the loss read every step."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = False  # as the lab ran: no autotuning, no TF32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = build_model(arch).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        train = DataLoader(SplitDataset(source.splits["train"], build_train_transform(image_size, "flip")),
                           batch_size=8, shuffle=True, drop_last=True, num_workers=0)
        batches = _batches(train)
        model.train()
        t0 = None
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        train_rate = 8 * steps / (time.perf_counter() - t0)
        model.eval()
        test = DataLoader(SplitDataset(source.splits["test"], build_eval_transform(image_size)),
                          batch_size=8, shuffle=False, num_workers=0)
        batches = _batches(test)
        with torch.no_grad():
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                x, _ = next(batches)
                model(x.to(device)).argmax(1).cpu()
        eval_rate = 8 * steps / (time.perf_counter() - t0)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return {"train_img_s": train_rate, "eval_img_s": eval_rate}


def trainer_run(arch: str, data: Path, source, device: torch.device, args, runs_dir: Path) -> dict:
    """(b) run_training with the fast preset; rates from its own epoch rows."""
    cfg = make_config("fast", data=str(data), arch=arch, epochs=args.epochs, batch_size=args.batch_size,
                      image_size=args.image_size, device=device.type, max_steps_per_epoch=args.steps,
                      num_workers=args.workers, compile=args.compile, name=f"bench-{arch}")
    run_dir = prepare_run(cfg, runs_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run_training(run_dir, quiet=True, source=source)
    wall = time.perf_counter() - t0
    rows = runs.epoch_rows(run_dir)
    steady = rows[1:] or rows
    walls = [r["elapsed"] - p["elapsed"] for p, r in zip(rows, rows[1:])] or [rows[0]["elapsed"]]
    eval_images = sum(len(s) for k, s in source.splits.items() if k != "train")
    train_s = sum(r["train_seconds"] for r in steady)
    eval_s = sum(r["eval_seconds"] for r in steady)
    return {
        "train_img_s": sum(r["train_images"] for r in steady) / train_s,
        "eval_img_s": eval_images * len(steady) / max(eval_s, 1e-9),
        "first_epoch_extra_s": rows[0]["elapsed"] - float(np.mean(walls)),  # compile, autotune, workers
        "epoch_overhead_s": float(np.mean(walls)) - (train_s + eval_s) / len(steady),  # checkpoints etc.
        "setup_finalize_s": wall - rows[-1]["elapsed"],
        "epochs": len(rows),
        "images_per_epoch": rows[-1]["train_images"],
        "path": "gpu_data" if cfg.gpu_data and device.type == "cuda" else "dataloader",
        "compiled": bool(cfg.compile and device.type == "cuda"),
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "run_dir": str(run_dir),
    }


def model_alone(arch: str, device: torch.device, args, compile_: bool, warmup: int = 3) -> dict:
    """(c) The trainer's model, optimiser and precision on on-device synthetic data."""
    cfg = make_config("fast", arch=arch, batch_size=args.batch_size, image_size=args.image_size)
    cuda = device.type == "cuda"
    model = build_model(arch).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch_size,), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            loss = loss_fn(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    rate = args.batch_size * args.steps / (time.perf_counter() - t0)
    return {"train_img_s": rate, "compiled": compile_, "warmup_s": warm_s,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


# ---------------------------------------------------------------- the sweep, extrapolated


def lab_sweep_hours(lab: dict) -> float:
    """Two configurations of this arch, the lab's way: 10 x (28,100 train + 7,026 test)."""
    epoch = LAB_TRAIN / lab["train_img_s"] + LAB_TEST / lab["eval_img_s"]
    return LAB_CONFIGS_PER_ARCH * LAB_EPOCHS * epoch / 3600


def trainer_sweep_minutes(b: dict, batch_size: int, val_fraction: float = 0.1) -> float:
    """Two configurations of this arch with the trainer, at the measured rates and overheads.

    The trainer carves validation from train and evaluates validation and test every epoch
    and once more at the end; compilation and start-up are counted once per configuration.
    """
    val = round(LAB_TRAIN * val_fraction)
    train = (LAB_TRAIN - val) // batch_size * batch_size  # full batches only
    epoch = train / b["train_img_s"] + (val + LAB_TEST) / b["eval_img_s"] + max(b["epoch_overhead_s"], 0.0)
    config = (b["setup_finalize_s"] + (val + LAB_TEST) / b["eval_img_s"] + max(b["first_epoch_extra_s"], 0.0)
              + LAB_EPOCHS * epoch)
    return LAB_CONFIGS_PER_ARCH * config / 60


# ---------------------------------------------------------------- report


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(res: dict) -> str:
    lines = [
        f"Device: {res['device_name']} · torch {res['torch']} · torchvision {res['torchvision']} · "
        f"{res['image_size']} px · batch {res['batch_size']} · {res['steps']} steps · trainer {res['epochs']} epochs",
        "",
        "| arch | (a) lab img/s | (b) trainer img/s | (c) model img/s | b/a | b/c | (b) eval img/s "
        "| (b) first-epoch extra s | (c) eager img/s | peak GPU GB (b / c) | lab sweep h | trainer sweep min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in res["archs"].items():
        a, b, c = r["lab"], r["trainer"], r["model"]
        lines.append(
            f"| {arch} | {_fmt(a['train_img_s'])} | {_fmt(b['train_img_s'])} | {_fmt(c['train_img_s'])} "
            f"| {_fmt(r['b_over_a'], '.1f')} | {_fmt(r['b_over_c'], '.2f')} | {_fmt(b['eval_img_s'])} "
            f"| {_fmt(b['first_epoch_extra_s'], '.1f')} | {_fmt(r['model_eager']['train_img_s'])} "
            f"| {_fmt(b['peak_gpu_gb'], '.1f')} / {_fmt(c['peak_gpu_gb'], '.1f')} "
            f"| {_fmt(r['lab_sweep_h'], '.2f')} | {_fmt(r['trainer_sweep_min'], '.1f')} |")
    s = res["sweep"]
    for arch, err in res.get("errors", {}).items():
        lines.append(f"\n{arch}: FAILED: {err}")
    for arch, r in res["archs"].items():
        if r["compile_saves_s_per_config"] is not None:
            lines.append(f"\n{arch}: compiling saves {r['compile_saves_s_per_config']:.0f} s of training per lab "
                         f"configuration and costs about {r['compile_costs_s_per_config']:.0f} s (the trainer's "
                         "first-epoch extra, a cold cache).")
    lines += [
        "",
        f"Four-configuration lab sweep ({LAB_EPOCHS} epochs x ({LAB_TRAIN:,} train + {LAB_TEST:,} test), "
        f"extrapolated, evaluation included): lab loop {_fmt(s['lab_hours'], '.2f')} h on this device "
        f"(the report: {LAB_REPORTED_HOURS:.0f} h on an RTX 2070); this trainer {_fmt(s['trainer_minutes'], '.1f')} min "
        f"(goal <= {GOAL_SWEEP_MIN:.0f} min on one H100/H200: {'met' if s['goal_met'] else 'not met'}).",
        f"b/c goal >= {GOAL_B_OVER_C:.0%} for every arch: {'met' if res['b_over_c_goal_met'] else 'not met'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.steps = args.steps or (40 if cuda else 3)
    args.epochs = args.epochs or (3 if cuda else 2)
    args.compile = cuda if args.compile is None else args.compile
    work = args.workdir or Path(tempfile.mkdtemp(prefix="retino-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data = Path(args.data) if args.data else None
    if data is None:
        # Enough files that every trainer epoch is full after validation is carved out.
        n_train = math.ceil(args.steps * args.batch_size / 0.85) + args.batch_size
        n_test = max(2 * args.batch_size, args.steps * args.batch_size // 4, 16)
        data = make_lab_folder(work / f"fundus{args.image_size}", n_train, n_test, args.image_size)
        print(f"wrote {n_train + n_test:,} fundus-like JPEGs ({args.image_size} px) to {data} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    source = open_source(data, 0.1, 0)

    res = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
           "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
           "cpus": os.cpu_count(), "image_size": args.image_size, "batch_size": args.batch_size,
           "steps": args.steps, "epochs": args.epochs, "data": str(data),
           "splits": {k: len(s) for k, s in source.splits.items()}, "archs": {}}
    res["errors"] = {}
    for arch in args.archs:
        try:
            res["archs"][arch] = measure_arch(arch, data, source, device, args, work)
        except Exception as err:  # noqa: BLE001 - one arch failing must not lose the other's numbers
            import traceback

            res["errors"][arch] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        if args.out:  # after each arch, so a cut-off run still leaves its numbers
            _write(args.out, res)
    archs = res["archs"].values()
    all_four = set(res["archs"]) == set(ARCHS)
    trainer_min = sum(r["trainer_sweep_min"] for r in archs)
    res["sweep"] = {"lab_hours": sum(r["lab_sweep_h"] for r in archs), "trainer_minutes": trainer_min,
                    "complete": all_four, "goal_met": all_four and trainer_min <= GOAL_SWEEP_MIN}
    res["b_over_c_goal_met"] = bool(archs) and not res["errors"] and all(r["b_over_c"] >= GOAL_B_OVER_C for r in archs)
    res["wall_s"] = time.perf_counter() - t0
    report = markdown(res)
    print(report)
    if args.out:
        _write(args.out, res, report)
    return 1 if res["errors"] else 0


def measure_arch(arch: str, data: Path, source, device: torch.device, args, work: Path) -> dict:
    """(a), (b) and (c) for one arch, with the ratios and the sweep extrapolated."""
    cuda = device.type == "cuda"
    print(f"{arch}: (a) lab loop", file=sys.stderr)
    lab = lab_loop(arch, source, device, args.image_size, args.steps)
    gc.collect()
    print(f"{arch}: (b) trainer end to end", file=sys.stderr)
    trainer = trainer_run(arch, data, source, device, args, work / "runs")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    print(f"{arch}: (c) model alone{' compiled' if args.compile else ''}", file=sys.stderr)
    model = model_alone(arch, device, args, args.compile)
    # Does compiling pay? The eager model alone, and the time it would lose per configuration.
    eager = model_alone(arch, device, args, False) if args.compile else model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    saved = LAB_EPOCHS * LAB_TRAIN * 0.9 * (1 / eager["train_img_s"] - 1 / model["train_img_s"])
    print(f"{arch}: a {lab['train_img_s']:,.0f}  b {trainer['train_img_s']:,.0f}  "
          f"c {model['train_img_s']:,.0f} img/s", file=sys.stderr)
    return {
        "lab": lab, "trainer": trainer, "model": model, "model_eager": eager,
        "compile_saves_s_per_config": saved if args.compile else None,
        "compile_costs_s_per_config": max(trainer["first_epoch_extra_s"], 0.0) if args.compile else None,
        "b_over_a": trainer["train_img_s"] / lab["train_img_s"],
        "b_over_c": trainer["train_img_s"] / model["train_img_s"],
        "lab_sweep_h": lab_sweep_hours(lab),
        "trainer_sweep_min": trainer_sweep_minutes(trainer, args.batch_size),
    }


def _write(out: Path, res: dict, report: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "throughput.json", res)
    if report is not None:
        runs.atomic_write_bytes(out / "throughput.md", report.encode())


if __name__ == "__main__":
    sys.exit(main())
