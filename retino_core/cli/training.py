"""Commands that train: ``train``, ``sweep``, ``worker`` and ``bench``."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from .. import runs
from ..config import (ARCHS, AUGMENTS, DEVICES, LOSSES, OPTIMIZERS, PREPROCESS, PRESETS, SAMPLERS, SCHEDULERS,
                      SELECT_METRICS, ConfigError, make_config)
from ..errors import TrainingFailed
from .common import EXIT_USAGE, print_verdict


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train one model; the last stdout line is its run folder")
    add_train_args(p)
    p.add_argument("--run-dir", type=Path, help="train a prepared run folder (its config.json)")
    p.add_argument("--resume", metavar="RUN", nargs="?", const="", default=None,
                   help="continue a run from its last checkpoint (with --run-dir, that one)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="the four configurations one after another")
    add_train_args(p, with_arch=False)
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--queue", action="store_true", help="queue them for the background worker instead")
    p.add_argument("--seeds", type=int, default=1,
                   help="train each configuration this many times, seeded --seed, --seed + 1, ... (default 1)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="train up to N runs at once, each in its own slot (a GPU each, or cores/N threads "
                        "each on a CPU); sets the runs folder's number of slots")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("worker", help="train queued runs, one per slot (started by the app)")
    p.add_argument("--runs-dir", type=Path)
    p.add_argument("--parallel", type=int, metavar="N",
                   help="set the runs folder's number of slots (default: one per GPU, or 1)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("calibrate", help="measure this machine's training speed for duration estimates (seconds)")
    p.add_argument("--arch", choices=ARCHS, default="resnet18")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--runs-dir", type=Path, help="where the result is kept (.speed.json)")
    p.set_defaults(func=cmd_calibrate)

    # Parsed by bench/throughput.py itself (main() hands it the arguments); listed for --help.
    sub.add_parser("bench", help="training images/s: the lab's loop vs this trainer vs the model alone "
                                 "(options: bench --help)")


def add_train_args(p: argparse.ArgumentParser, with_arch: bool = True) -> None:
    p.add_argument("--data", default="retinamnist",
                   help="'retinamnist' (bundled), a lab folder with the four CSVs, a labels .csv or an .npz")
    if with_arch:
        p.add_argument("--arch", choices=ARCHS, default="resnet18")
        p.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    p.add_argument("--weights", help="start from a local state dict or retino checkpoint")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu",
                   help="lab: the report's recipe; fast: GPU; cpu: RetinaMNIST on a laptop")
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--image-size", int),
                      ("--weight-decay", float), ("--label-smoothing", float), ("--warmup-epochs", float),
                      ("--ema", float), ("--val-fraction", float), ("--seed", int), ("--num-workers", int),
                      ("--max-steps-per-epoch", int), ("--processes", int)):
        p.add_argument(flag, type=typ)
    for flag, choices in (("--optimizer", OPTIMIZERS), ("--scheduler", SCHEDULERS), ("--augment", AUGMENTS),
                          ("--loss", LOSSES), ("--sampler", SAMPLERS), ("--preprocess", PREPROCESS),
                          ("--select-metric", SELECT_METRICS), ("--device", DEVICES)):
        p.add_argument(flag, choices=choices)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gpu-data", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--patient-column", help="labels CSV column naming each image's patient (keeps a patient's "
                   "images on one side of the carved splits)")
    p.add_argument("--patient-regex", help="regular expression whose first group is the patient id in a file name")
    p.add_argument("--runs-dir", type=Path, help="where run folders go (default artifacts/runs)")
    p.add_argument("--name", default="", help="a label for the run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, **fixed):
    keys = ("data", "weights", "epochs", "batch_size", "lr", "image_size", "weight_decay", "label_smoothing",
            "warmup_epochs", "ema", "val_fraction", "seed", "num_workers", "max_steps_per_epoch", "processes", "optimizer",
            "scheduler", "augment", "loss", "sampler", "preprocess", "select_metric", "device", "compile",
            "amp", "gpu_data", "name", "patient_column", "patient_regex")
    values = {k: getattr(args, k, None) for k in keys}
    for k in ("arch", "pretrained"):
        if hasattr(args, k):
            values[k] = getattr(args, k)
    values.update(fixed)
    return make_config(args.preset, **values)


def train_one(cfg, args) -> Path:
    from ..training import distributed
    from ..data.sources import source_of
    from ..training.lifecycle import prepare_run, run_training

    source = source_of(cfg)  # bad data fails before a run exists
    if cfg.processes > 1 and not distributed.launched():
        return train_under_torchrun(cfg, args)
    distributed.init(cfg.device)  # only under torchrun: then rank 0 makes the run folder
    run_dir = distributed.broadcast(prepare_run(cfg, args.runs_dir) if distributed.is_main() else None)
    if distributed.is_main():
        print(f"training {cfg.arch} ({'pretrained' if cfg.pretrained else 'scratch'}) into {run_dir}", file=sys.stderr)
    with distributed.local_run_dir(run_dir) as own_dir:
        run_training(own_dir, quiet=args.quiet or not distributed.is_main(), source=source)
    return run_dir


def train_under_torchrun(cfg, args) -> Path:
    """``--processes N`` outside torchrun: prepare the run, then train it under torchrun."""
    import subprocess

    from ..training import launch
    from ..training.lifecycle import prepare_run

    run_dir = prepare_run(cfg, args.runs_dir)
    print(f"training {cfg.arch} ({'pretrained' if cfg.pretrained else 'scratch'}) into {run_dir} "
          f"with {cfg.processes} processes", file=sys.stderr)
    # The processes' own stdout goes to stderr: this process prints the run folder once.
    code = subprocess.call(launch.trainer_cmd(run_dir, processes=cfg.processes), stdout=2, cwd=runs.PROJECT_ROOT)
    if code != 0:
        status = runs.read_status(run_dir)
        raise TrainingFailed(f"torchrun exited with code {code}: {status.get('error') or 'see the log above'}")
    return run_dir


def cmd_train(args) -> int:
    from ..training import distributed
    from ..training.lifecycle import run_training

    if args.run_dir is not None or args.resume:
        target = args.run_dir if args.run_dir is not None else runs.resolve_run_dir(args.resume, args.runs_dir)
        run_dir = runs.resolve_run_dir(target, args.runs_dir)
        distributed.init((runs.read_json(run_dir / "config.json", {}) or {}).get("device", "auto"))
        resume = args.resume is not None
        with distributed.local_run_dir(run_dir, resume) as own_dir:
            run_training(own_dir, resume=resume, quiet=args.quiet or not distributed.is_main())
    else:
        run_dir = train_one(config_from_args(args), args)
    if distributed.is_main():
        print(run_dir, flush=True)
        print_verdict(run_dir)
    return 0


def cmd_sweep(args) -> int:
    from ..training import launch

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.parallel is not None:
        launch.check_parallel(args.parallel)
    first = args.seed or 0  # --seed, when given, is the first seed
    configs = [config_from_args(args, arch=arch, pretrained=pretrained, seed=seed)
               for seed, arch, pretrained in itertools.product(range(first, first + args.seeds), args.archs, (False, True))]
    if args.parallel is not None:
        launch.set_parallel(args.parallel, args.runs_dir)
        if not args.queue:
            return sweep_in_slots(configs, args)
    for cfg in configs:
        if args.queue:
            run_dir, _ = launch.enqueue(cfg.to_dict(), args.runs_dir)
        else:
            run_dir = train_one(cfg, args)
        print(run_dir, flush=True)
        if not args.queue:
            print_verdict(run_dir)
    return 0


def sweep_in_slots(configs: list, args) -> int:
    """Queue the sweep and drain the queue here, up to --parallel runs at once.

    Each run folder is printed as its run ends. When a worker started by the app already
    holds the queue, it trains them (with the new number of slots) and this waits. Ctrl-C
    cancels the runs not started yet; the running ones stop resumable.
    """
    import time

    from ..training import launch
    from ..data.sources import source_of

    for cfg in configs:  # bad data fails before anything is queued
        source_of(cfg)
    mine = [launch.enqueue(cfg.to_dict(), args.runs_dir, start_worker=False)[0] for cfg in configs]
    shown: set = set()

    def show(run_dir: Path) -> None:
        if run_dir in mine and run_dir not in shown:
            shown.add(run_dir)
            print(run_dir, flush=True)
            print_verdict(run_dir)

    try:
        launch.worker(args.runs_dir, on_end=show)
        while not all(runs.read_status(r)["state"] in runs.ENDED_STATES for r in mine):
            time.sleep(1.0)  # another worker holds the queue: it trains them
    except KeyboardInterrupt:
        for run_dir in mine:
            if runs.read_status(run_dir)["state"] == "queued":
                launch.stop(run_dir.name, args.runs_dir)
        raise
    for run_dir in mine:
        show(run_dir)
    failed = [r for r in mine if runs.read_status(r)["state"] != "done"]
    for run_dir in failed:
        status = runs.read_status(run_dir)
        print(f"error: {run_dir.name} {status['state']}: {status.get('error') or 'see its train.log'}", file=sys.stderr)
    return 1 if failed else 0


def cmd_worker(args) -> int:
    from ..training import launch

    launch.worker(args.runs_dir, parallel=args.parallel)
    return 0


def cmd_calibrate(args) -> int:
    from ..training import calibrate

    cfg = make_config(args.preset, arch=args.arch, image_size=args.image_size, batch_size=args.batch_size)
    found = calibrate.calibrate(cfg.to_dict(), args.runs_dir)
    print(f"{found['arch']} at {found['image_size']} px, batch {found['batch_size']} on {found['device']} "
          f"({found['threads']} threads): {found['train_images_per_s']:,.0f} training images/s, "
          f"{found['eval_images_per_s']:,.0f} evaluation images/s")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """Run bench/throughput.py of this checkout with ``argv``.

    Imported by its name (``bench.throughput``), as the script itself imports its parts, so
    the processes it starts (JPEG writers, DataLoader workers) can find every function.
    """
    import importlib

    script = runs.PROJECT_ROOT / "bench" / "throughput.py"
    if not script.is_file():
        print(f"error: {script} not found; the benchmark runs from a checkout of the project", file=sys.stderr)
        return EXIT_USAGE
    if str(runs.PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(runs.PROJECT_ROOT))
    return int(importlib.import_module("bench.throughput").main(argv) or 0)
