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
from ..training.cluster import BACKENDS
from .common import EXIT_USAGE, print_verdict


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train one model; the last stdout line is its run folder")
    add_train_args(p)
    p.add_argument("--run-dir", type=Path, help="train a prepared run folder (its config.json)")
    p.add_argument("--resume", metavar="RUN", nargs="?", const="", default=None,
                   help="continue a run from its last checkpoint (with --run-dir, that one)")
    p.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking server as it trains "
                   "(after each epoch; the same MLflow run mlflow-sync keeps up to date)")
    p.add_argument("--mlflow-experiment", default="retino", metavar="NAME", help="MLflow experiment (default retino)")
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
    add_job_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("stop", help="stop a run: a queued one is cancelled, a running one keeps its last "
                                    "checkpoint; a SLURM or submitit job is cancelled")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("resume", help="continue an interrupted or failed run from its last checkpoint, in the "
                                      "background (the queue's worker, or a new job of its SLURM or submitit backend)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_resume)

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


def add_job_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("jobs", "--backend slurm sends the sweep to a SLURM cluster as one submitit job array "
                                     "(a task per run); submitit-local runs the same jobs on this machine")
    g.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local (default): this process or the queue's worker; slurm; submitit-local")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs per run (default 1 on SLURM; "
                   "with submitit-local 1 when this machine has a GPU, each run its own)")
    g.add_argument("--time", type=int, metavar="MIN", help="time limit of each run in minutes (default: "
                   "24 hours on SLURM; 30 days with submitit-local)")
    g.add_argument("--array-parallelism", type=int, metavar="N", help="at most N runs at once (default: all)")
    g.add_argument("--cpus-per-task", type=int, metavar="N", help="CPUs per run (SLURM)")
    g.add_argument("--mem", help="memory per run, e.g. 32G (SLURM)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line the batch script runs first, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other #SBATCH option, e.g. account=mylab or qos=normal (repeatable)")
    g.add_argument("--dry-run", action="store_true", help="print the batch script and submit nothing (SLURM)")


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


def live_listeners(args) -> tuple:
    """``--mlflow URI``: the MLflow live sync, in the process that writes the run folder only
    (checked here, before training: an unreachable server fails at once)."""
    import os

    if not getattr(args, "mlflow", None) or os.environ.get("RANK", "0") != "0":
        return ()
    from ..engines.tracking import LiveSync

    return (LiveSync(args.mlflow, args.mlflow_experiment),)


def train_one(cfg, args, listeners: tuple = ()) -> Path:
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
        run_training(own_dir, quiet=args.quiet or not distributed.is_main(), source=source, listeners=listeners)
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
    cmd = launch.trainer_cmd(run_dir, processes=cfg.processes)
    if getattr(args, "mlflow", None):  # rank 0 of torchrun follows it live
        cmd += ["--mlflow", args.mlflow, "--mlflow-experiment", args.mlflow_experiment]
    code = subprocess.call(cmd, stdout=2, cwd=runs.PROJECT_ROOT)
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
        listeners = live_listeners(args)
        distributed.init((runs.read_json(run_dir / "config.json", {}) or {}).get("device", "auto"))
        resume = args.resume is not None
        with distributed.local_run_dir(run_dir, resume) as own_dir:
            run_training(own_dir, resume=resume, quiet=args.quiet or not distributed.is_main(), listeners=listeners)
    else:
        cfg = config_from_args(args)
        run_dir = train_one(cfg, args, () if cfg.processes > 1 and not distributed.launched() else live_listeners(args))
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
    if args.backend != "local":
        return sweep_as_jobs(configs, args)
    job_flags = [f for f in ("partition", "gpus_per_node", "time", "array_parallelism", "cpus_per_task", "mem",
                             "setup", "slurm_option", "dry_run") if getattr(args, f) not in (None, [], False)]
    if job_flags:
        raise ConfigError(f"--{job_flags[0].replace('_', '-')} goes with --backend slurm or submitit-local")
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


def job_spec(args):
    """The resources each job of a sweep asks for, from the command line."""
    from ..training import cluster

    options = {}
    for item in args.slurm_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-option {item!r}: give it as KEY=VALUE, e.g. account=mylab")
        options[key.strip()] = value.strip()
    return cluster.JobSpec(args.backend, args.partition, args.gpus_per_node, args.time, args.array_parallelism,
                           args.cpus_per_task, args.mem, tuple(args.setup), options).checked()


def sweep_as_jobs(configs: list, args) -> int:
    """The sweep as one job per run (SLURM job array, or submitit's local executor); prints each
    run folder (stdout) and its job (stderr), and returns at once: the jobs train on."""
    from ..data.sources import source_of
    from ..training import cluster, launch

    if args.queue or args.parallel is not None:
        raise ConfigError(f"--queue and --parallel are for --backend local; with {args.backend} use --array-parallelism")
    if any(cfg.processes > 1 for cfg in configs):
        raise ConfigError("--processes goes with --backend local; for one run on many GPUs use torchrun (README)")
    spec = job_spec(args)
    base = (args.runs_dir or runs.default_runs_dir()).resolve()
    if args.dry_run:
        if args.backend != "slurm":
            raise ConfigError("--dry-run shows the SLURM batch script: use it with --backend slurm")
        print(cluster.sbatch_script(spec, len(configs), base), end="")
        return 0
    for cfg in configs:  # bad data fails before anything is prepared; the jobs may run elsewhere
        source_of(cfg)
    made = [launch.enqueue(portable(cfg).to_dict(), base, dedupe=False, start_worker=False, backend=args.backend)[0]
            for cfg in configs]
    try:
        records = cluster.submit(made, spec, base, launch.visible_gpus())
    except Exception:
        for run_dir in made:  # nothing ran: leave no run folders behind
            runs.delete_run(run_dir.name, base)
        raise
    for run_dir, record in zip(made, records):
        print(run_dir, flush=True)
        job = record.get("job_id") or "waiting for a free place in the array"
        print(f"{run_dir.name}: {args.backend} job {job}", file=sys.stderr, flush=True)
    print(f"{len(made)} run(s) sent to {args.backend}; follow them with `python -m retino_core runs` or the app",
          file=sys.stderr)
    return 0


def portable(cfg):
    """The config with its data and weights as absolute paths: a job may start in another folder."""
    changes = {}
    for key in ("data", "weights"):
        value = getattr(cfg, key)
        if value and not Path(value).is_absolute() and Path(value).expanduser().exists():
            changes[key] = str(Path(value).expanduser().resolve())
    return cfg.replace(**changes) if changes else cfg


def cmd_stop(args) -> int:
    from ..training import cluster

    run = runs.load_run(runs.resolve_run_dir(args.run, args.runs_dir))
    state = cluster.stop(run.run_id, run.path.parent)
    print(f"{run.run_id}: {state}")
    return 0


def cmd_resume(args) -> int:
    from ..training import cluster

    run = runs.load_run(runs.resolve_run_dir(args.run, args.runs_dir))
    cluster.resume(run.run_id, run.path.parent)
    job = cluster.read_job(run.path).get("job_id")
    print(f"{run.run_id}: queued to resume from its last checkpoint" + (f" (job {job})" if job else ""))
    return 0


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
