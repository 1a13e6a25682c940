"""Commands that grade photos outside the app: ``predict`` and ``export``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import runs
from .common import EXIT_USAGE


def add_parsers(sub) -> None:
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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a run's grader for use outside the app: the model, "
                                      "preprocessing.json, the model card and predict_onnx.py")
    p.add_argument("run", help="run folder or run id (its best checkpoint is exported)")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", type=Path, help="folder to write (default: <run>/export/<format>)")
    p.add_argument("--verify-images", type=int, default=64,
                   help="test images on which the export must match the app's model (0: all; default 64)")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_export)


def cmd_predict(args) -> int:
    from ..grading import batch
    from ..judging import trust
    from ..report import modelcard
    from ..grading.predictor import Predictor

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
    from ..grading import export
    from ..judging import trust

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
