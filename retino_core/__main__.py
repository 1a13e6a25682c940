"""The command line: ``python -m retino_core {train,sweep,predict,export,runs,worker,validate,bench}``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from . import runs
from .config import ARCHS, AUGMENTS, DEVICES, LOSSES, OPTIMIZERS, PREPROCESS, PRESETS, SAMPLERS, SCHEDULERS, SELECT_METRICS, ConfigError, make_config
from .data import DataError, ImageError
from .errors import CheckpointError, Interrupted, TrainingFailed, WeightsError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _add_train_args(p: argparse.ArgumentParser, with_arch: bool = True) -> None:
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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retino_core",
                                     description="Train and use diabetic-retinopathy graders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model; the last stdout line is its run folder")
    _add_train_args(p)
    p.add_argument("--run-dir", type=Path, help="train a prepared run folder (its config.json)")
    p.add_argument("--resume", metavar="RUN", nargs="?", const="", default=None,
                   help="continue a run from its last checkpoint (with --run-dir, that one)")

    p = sub.add_parser("sweep", help="the four configurations one after another")
    _add_train_args(p, with_arch=False)
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--queue", action="store_true", help="queue them for the background worker instead")
    p.add_argument("--seeds", type=int, default=1,
                   help="train each configuration this many times, seeded --seed, --seed + 1, ... (default 1)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="train up to N runs at once, each in its own slot (a GPU each, or cores/N threads "
                        "each on a CPU); sets the runs folder's number of slots")

    p = sub.add_parser("predict", help="grade images, folders and globs with a trained run")
    p.add_argument("images", nargs="+", type=Path,
                   help="image files, folders (every file below them, dot-names skipped) or glob patterns ('**' recurses)")
    p.add_argument("--run", required=True, help="run folder or run id")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips (default: as the run was evaluated)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="one JSON object per image")
    shown.add_argument("--out", type=Path, help="write a CSV, one row per file, as it goes (a progress bar on stderr)")
    p.add_argument("--resume", action="store_true", help="with --out: keep its rows, grade only the files it lacks")
    p.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    p.add_argument("--batch-size", type=int, help="photos per forward pass (default 16, fewer from 256 px up)")
    p.add_argument("--workers", type=int, help="decoding processes; the model gets the other cores "
                                               "(default: a quarter of the cores, at most 4; none on 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--runs-dir", type=Path)

    p = sub.add_parser("export", help="write a run's grader for use outside the app: the model, "
                                      "preprocessing.json, the model card and predict_onnx.py")
    p.add_argument("run", help="run folder or run id (its best checkpoint is exported)")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", type=Path, help="folder to write (default: <run>/export/<format>)")
    p.add_argument("--verify-images", type=int, default=64,
                   help="test images on which the export must match the app's model (0: all; default 64)")
    p.add_argument("--runs-dir", type=Path)

    p = sub.add_parser("compare", help="is the difference between two runs real? (paired tests on one test set)")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir", type=Path)

    p = sub.add_parser("note", help="set a run's notes and tags (kept in its notes.json)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--notes", help="free text (replaces the run's notes)")
    p.add_argument("--tags", help="comma-separated tags (replace the run's tags)")
    p.add_argument("--runs-dir", type=Path)

    p = sub.add_parser("runs", help="table of runs with state and headline metrics")
    p.add_argument("--runs-dir", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("validate", help="check a dataset: CSVs, labels, patients, duplicates and every image "
                                        "file; every problem at once")
    p.add_argument("data", help="'retinamnist', a lab folder, a labels .csv or an .npz")
    p.add_argument("--deep", action="store_true",
                   help="decode every image in full and hash it (finds truncated files and duplicate images "
                        "across splits; minutes for 35k photos, seconds again from the cache)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="with --deep: identical images in two splits are a warning, not an error")
    p.add_argument("--patient-column", help="the labels CSV's column holding the patient id")
    p.add_argument("--patient-regex",
                   help="a regular expression over the image name; its first group (or the match) is the patient id")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="of the carved splits (default 0, as training)")
    p.add_argument("--workers", type=int, help="decoding processes for --deep (default: all cores)")
    p.add_argument("--no-cache", action="store_true", help="with --deep: neither read nor write the hash cache")
    p.add_argument("--json", action="store_true", help="the report as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("worker", help="train queued runs, one per slot (started by the app)")
    p.add_argument("--runs-dir", type=Path)
    p.add_argument("--parallel", type=int, metavar="N",
                   help="set the runs folder's number of slots (default: one per GPU, or 1)")

    # Parsed by bench/throughput.py itself (main() hands it the arguments); listed for --help.
    sub.add_parser("bench", help="training images/s: the lab's loop vs this trainer vs the model alone "
                                 "(options: bench --help)")
    return parser


def _config_from_args(args: argparse.Namespace, **fixed):
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


def _train_one(cfg, args) -> Path:
    from . import distributed
    from .data import source_of
    from .train import prepare_run, run_training

    source = source_of(cfg)  # bad data fails before a run exists
    if cfg.processes > 1 and not distributed.launched():
        return _train_under_torchrun(cfg, args)
    distributed.init(cfg.device)  # only under torchrun: then rank 0 makes the run folder
    run_dir = distributed.broadcast(prepare_run(cfg, args.runs_dir) if distributed.is_main() else None)
    if distributed.is_main():
        print(f"training {cfg.arch} ({'pretrained' if cfg.pretrained else 'scratch'}) into {run_dir}", file=sys.stderr)
    with distributed.local_run_dir(run_dir) as own_dir:
        run_training(own_dir, quiet=args.quiet or not distributed.is_main(), source=source)
    return run_dir


def _train_under_torchrun(cfg, args) -> Path:
    """``--processes N`` outside torchrun: prepare the run, then train it under torchrun."""
    import subprocess

    from . import launch
    from .train import prepare_run

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
    from . import distributed
    from .train import run_training

    if args.run_dir is not None or args.resume:
        target = args.run_dir if args.run_dir is not None else runs.resolve_run_dir(args.resume, args.runs_dir)
        run_dir = runs.resolve_run_dir(target, args.runs_dir)
        distributed.init((runs.read_json(run_dir / "config.json", {}) or {}).get("device", "auto"))
        resume = args.resume is not None
        with distributed.local_run_dir(run_dir, resume) as own_dir:
            run_training(own_dir, resume=resume, quiet=args.quiet or not distributed.is_main())
    else:
        run_dir = _train_one(_config_from_args(args), args)
    if distributed.is_main():
        print(run_dir, flush=True)
        _print_verdict(run_dir)
    return 0


def _print_verdict(run_dir: Path) -> None:
    """How far the run can be trusted, on stderr after the run folder (stdout's last line)."""
    from . import trust

    verdict = trust.of_summary(runs.read_json(Path(run_dir) / "summary.json", {}))
    print("\n".join(trust.lines(verdict)), file=sys.stderr, flush=True)


def cmd_sweep(args) -> int:
    from . import launch

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.parallel is not None:
        launch.check_parallel(args.parallel)
    first = args.seed or 0  # --seed, when given, is the first seed
    configs = [_config_from_args(args, arch=arch, pretrained=pretrained, seed=seed)
               for seed, arch, pretrained in itertools.product(range(first, first + args.seeds), args.archs, (False, True))]
    if args.parallel is not None:
        launch.set_parallel(args.parallel, args.runs_dir)
        if not args.queue:
            return _sweep_in_slots(configs, args)
    for cfg in configs:
        if args.queue:
            run_dir, _ = launch.enqueue(cfg.to_dict(), args.runs_dir)
        else:
            run_dir = _train_one(cfg, args)
        print(run_dir, flush=True)
        if not args.queue:
            _print_verdict(run_dir)
    return 0


def _sweep_in_slots(configs: list, args) -> int:
    """Queue the sweep and drain the queue here, up to --parallel runs at once.

    Each run folder is printed as its run ends. When a worker started by the app already
    holds the queue, it trains them (with the new number of slots) and this waits. Ctrl-C
    cancels the runs not started yet; the running ones stop resumable.
    """
    import time

    from . import launch
    from .data import source_of

    for cfg in configs:  # bad data fails before anything is queued
        source_of(cfg)
    mine = [launch.enqueue(cfg.to_dict(), args.runs_dir, start_worker=False)[0] for cfg in configs]
    shown: set = set()

    def show(run_dir: Path) -> None:
        if run_dir in mine and run_dir not in shown:
            shown.add(run_dir)
            print(run_dir, flush=True)
            _print_verdict(run_dir)

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


def cmd_predict(args) -> int:
    from . import batch, modelcard, trust
    from .predict import Predictor

    if (args.resume or args.overwrite) and args.out is None:
        print("error: --resume and --overwrite go with --out", file=sys.stderr)
        return EXIT_USAGE
    predictor = Predictor.from_run(args.run, args.checkpoint, args.runs_dir)
    run_dir = runs.resolve_run_dir(args.run, args.runs_dir)
    verdict = trust.of_summary(runs.read_json(run_dir / "summary.json", {}))
    run_warnings = [] if trust.is_usable_verdict(verdict) else [trust.warning(verdict)]
    if not args.json:
        print(f"model {run_dir.name}: {trust.label(verdict)}; {predictor.domain()}", file=sys.stderr)
        for line in run_warnings:
            print(f"warning: {line}", file=sys.stderr)
    items = batch.expand_inputs(args.images)
    if args.out is not None:
        point = modelcard.referable_point(run_dir, predictor.temperature)
        try:
            with batch.ResultsCsv(args.out, run_dir.name, args.resume, args.overwrite) as out:
                counts = batch.grade_to_csv(predictor, items, out, point and point["threshold"], trust.label(verdict),
                                            args.tta, args.batch_size, args.workers, progress=not args.quiet)
        except batch.OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{counts['graded']} graded ({counts['out_of_distribution']} not like the training photos), "
              f"{counts['failed']} could not be read, {counts['skipped']} already in {args.out}", file=sys.stderr)
        return 1 if counts["failed"] else 0
    failed = 0
    for done in batch.grade(predictor, items, args.tta, args.batch_size, args.workers):
        pred = done.prediction
        if pred is None:
            failed += 1
            print(json.dumps({"image": done.file, "error": done.error}) if args.json else f"error: {done.error}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            out = pred.to_dict()
            out["warnings"] = run_warnings + out.get("warnings", [])
            out["trust"] = verdict
            print(json.dumps(out))
        else:
            probs = "  ".join(f"{p:.3f}" for p in pred.probabilities)
            shown = f"grade {pred.grade} ({pred.grade_name})"
            if pred.check is not None and pred.check.in_distribution is False:
                shown = f"not graded: out of distribution; the model would say {pred.grade} ({pred.grade_name})"
            print(f"{done.file}\t{shown}\t[{probs}]")
            for line in pred.check.warnings if pred.check is not None else []:
                print(f"  warning: {line}")
    return 1 if failed else 0


def cmd_export(args) -> int:
    from . import export, trust

    try:
        out = export.export_run(args.run, args.format, args.out, args.runs_dir, args.verify_images)
    except export.ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pre = runs.read_json(out / export.PREPROCESSING, {})
    checked = pre["verified"]
    print(f"checked on {checked['images']} {checked['on']} images: probabilities within "
          f"{checked['max_abs_diff']:.1e} of the app's", file=sys.stderr)
    if pre["trust"]["verdict"] != trust.USABLE:
        print(f"warning: this model is {pre['trust']['verdict']}; its card and preprocessing.json say so",
              file=sys.stderr)
    print(out, flush=True)
    return 0


def _fmt(x, digits=4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and x is not None else "-"


def cmd_runs(args) -> int:
    from . import trust

    infos = runs.list_runs(args.runs_dir)
    if args.json:
        print(json.dumps([{"run_id": r.run_id, "state": r.state, "arch": r.arch, "pretrained": r.pretrained,
                           "test_acc": r.summary.get("test_acc"), "test_majority_acc": r.summary.get("test_majority_acc"),
                           "test_qwk": r.summary.get("test_qwk"), "test_auc": r.summary.get("test_auc"),
                           "trust": trust.of_summary(r.summary), "tags": r.tags, "notes": r.notes}
                          for r in infos], indent=2))
        return 0
    if not infos:
        print("no runs yet: python -m retino_core train --data retinamnist")
        return 0
    header = (f"{'run id':40} {'state':12} {'configuration':22} {'epoch':>7} {'test_acc':>8} {'majority':>8} "
              f"{'test_qwk':>8} {'test_auc':>8}  {'verdict':24} tags")
    print(header)
    for r in infos:
        prog = r.status.get("progress") or {}
        epoch = f"{prog.get('epoch', 0):.0f}/{r.config.get('epochs', '?')}" if prog else f"-/{r.config.get('epochs', '?')}"
        verdict = trust.label(trust.of_summary(r.summary)) if r.summary else "-"
        print(f"{r.run_id:40} {r.state:12} {r.configuration:22} {epoch:>7} {_fmt(r.summary.get('test_acc')):>8} "
              f"{_fmt(r.summary.get('test_majority_acc')):>8} {_fmt(r.summary.get('test_qwk')):>8} "
              f"{_fmt(r.summary.get('test_auc')):>8}  {verdict:24} {', '.join(r.tags)}".rstrip())
    return 0


def cmd_compare(args) -> int:
    from . import comparison, stats

    a, b = (runs.load_run(runs.resolve_run_dir(r, args.runs_dir)) for r in (args.run_a, args.run_b))
    try:
        result = comparison.compare_runs(a, b, args.resamples or stats.N_BOOT)
    except comparison.ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    result["sentence"] = stats.verdict_sentence(comparison.label(a), comparison.label(b), result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"A = {a.run_id} ({a.configuration}), B = {b.run_id} ({b.configuration}); "
          f"{result['n']} shared test images, {result['resamples']} paired bootstrap resamples")
    for m, found in result["metrics"].items():
        ci = found["ci"]
        shown = "-" if ci is None else f"{found['diff']:+.4f}  95 % CI {ci[0]:+.4f} to {ci[1]:+.4f}"
        print(f"  {stats.METRIC_NAMES[m]:17} A {_fmt(found['a'])}  B {_fmt(found['b'])}  A - B {shown}")
    mc = result["mcnemar"]
    print(f"  McNemar exact test: {mc['only_a_right']} images only A gets right, {mc['only_b_right']} only B; "
          f"p = {mc['p']:.3g}")
    print(result["sentence"])
    return 0


def cmd_note(args) -> int:
    run = runs.load_run(runs.resolve_run_dir(args.run, args.runs_dir))
    body = runs.write_notes(run.path, run.notes if args.notes is None else args.notes,
                            run.tags if args.tags is None else args.tags)
    print(f"{run.run_id}: tags {', '.join(body['tags']) or '-'}; notes {len(body['notes'])} characters")
    return 0


def cmd_validate(args) -> int:
    from .data import DatasetInvalid, open_source
    from .integrity import Report, check_source_images, describe_patients

    def check(src, report) -> None:  # the image files too, even when the CSVs have errors
        check_source_images(src, report, deep=args.deep, allow_duplicates=args.allow_duplicates,
                            workers=args.workers, use_cache=not args.no_cache,
                            progress=not (args.quiet or args.json) and sys.stderr.isatty())

    try:
        source = open_source(args.data, args.val_fraction, args.seed, patient_column=args.patient_column,
                             patient_regex=args.patient_regex)
    except DatasetInvalid as err:
        if err.found is not None:
            check(err.found, err.report)
        if args.json:
            print(json.dumps(err.report.to_dict(), indent=2))
            return EXIT_USAGE
        raise DataError(err.report.text()) from None
    except DataError as err:
        if not args.json:
            raise
        report = Report(source=str(args.data))
        report.add("dataset cannot be opened", str(args.data), str(err))
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_USAGE
    report = source.report
    check(source, report)
    report.info["counts"] = {name: len(split) for name, split in source.splits.items()}
    report.info["notes"] = source.notes
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_USAGE if report.errors else 0
    counts = ", ".join(f"{name} {len(split):,}" for name, split in source.splits.items())
    checked = ("every image decoded and hashed" if args.deep
               else "every image header read; --deep decodes them and finds duplicates")
    if source.kind == "retinamnist":
        checked = "images in the npz" + ("; every one hashed" if args.deep else "; --deep finds duplicates")
    images = report.info["images"]
    if images.get("from_cache"):
        checked += f", {images['from_cache']:,} from the cache"
    verdict = "not usable" if report.errors else "ok"
    print(f"{source.name}: {verdict} ({counts}; {checked})")
    for line in describe_patients(report.info.get("patients", {})):
        print(line)
    for note in source.notes:
        print(f"note: {note}")
    if report.problems:
        print(report.text(), file=sys.stderr if report.errors else sys.stdout)
    return EXIT_USAGE if report.errors else 0


def cmd_worker(args) -> int:
    from . import launch

    launch.worker(args.runs_dir, parallel=args.parallel)
    return 0


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "predict": cmd_predict, "runs": cmd_runs, "compare": cmd_compare, "note": cmd_note,
            "worker": cmd_worker, "validate": cmd_validate, "export": cmd_export}


def cmd_bench(argv: list[str]) -> int:
    """Run bench/throughput.py of this checkout with ``argv``."""
    import runpy

    script = runs.PROJECT_ROOT / "bench" / "throughput.py"
    if not script.is_file():
        print(f"error: {script} not found; the benchmark runs from a checkout of the project", file=sys.stderr)
        return EXIT_USAGE
    return int(runpy.run_path(str(script), run_name="retino_bench")["main"](argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # bench/throughput.py parses its own options
        return cmd_bench(argv[1:])
    args = get_args_parser().parse_args(argv)

    try:
        return COMMANDS[args.command](args)
    except (DataError, ConfigError, ImageError, WeightsError, CheckpointError, runs.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
