"""Commands that grade photos outside the app: ``predict``, ``evaluate`` and ``export``."""

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
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="one JSON object per image")
    shown.add_argument("--out", type=Path, help="write a CSV, one row per file, as it goes (a progress bar on stderr)")
    p.add_argument("--resume", action="store_true", help="with --out: keep its rows, grade only the files it lacks")
    p.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    p.add_argument("--workers", type=int, help="decoding processes; the model gets the other cores "
                                               "(default: a quarter of the cores, at most 4; none on 2)")
    _grading_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="grade a labelled data set from elsewhere (another camera, another clinic) "
                                        "as every door would, and measure the run on it")
    p.add_argument("run", help="run folder or run id")
    p.add_argument("--data", required=True, help="a labels .csv, a lab folder, an .npz or 'retinamnist': all its photos")
    p.add_argument("--name", help="what to call these photos (letters, digits, . _ -; default: the data's name); "
                                  "the result is <run>/external/<name>.json, with the photos' answers in <name>.csv")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _grading_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run's grader for use outside the app: the model, "
                                      "preprocessing.json, the model card and predict_onnx.py")
    p.add_argument("run", help="run folder or run id (its best checkpoint is exported)")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", type=Path, help="folder to write (default: <run>/export/<format>)")
    p.add_argument("--verify-images", type=int, default=64,
                   help="test images on which the export must match the app's model (0: all; default 64)")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_export)


def _grading_options(p) -> None:
    """What predict and evaluate share: flips, batch size, progress bar, runs folder."""
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips (default: as the run was evaluated)")
    p.add_argument("--batch-size", type=int, help="photos per forward pass (default 16, fewer from 256 px up)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--runs-dir", type=Path)


def cmd_predict(args) -> int:
    from ..grading import batch
    from ..grading.predictor import Predictor
    from ..judging import trust

    if (args.resume or args.overwrite) and args.out is None:
        print("error: --resume and --overwrite go with --out", file=sys.stderr)
        return EXIT_USAGE
    predictor = Predictor.from_run(args.run, args.checkpoint, args.runs_dir)
    run_dir = runs.resolve_run_dir(args.run, args.runs_dir)
    verdict = trust.label(predictor.verdict)
    print(f"model {run_dir.name}: {verdict}; {predictor.domain()}", file=sys.stderr)
    for line in predictor.batch_warnings():  # once for the batch, not on every photo
        print(f"warning: {line}", file=sys.stderr)
    items = batch.expand_inputs(args.images)
    if args.out is not None:
        try:
            with batch.ResultsCsv(args.out, run_dir.name, args.resume, args.overwrite) as out:
                tally = batch.grade_to_csv(predictor, items, out, verdict, args.tta, args.batch_size, args.workers,
                                           progress=not args.quiet)
        except batch.OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
    else:
        tally = batch.Tally(predictor.image_size)
        for done in batch.grade(predictor, items, args.tta, args.batch_size, args.workers):
            row = done.record(run_dir.name, verdict)
            tally.add(row, None if done.prediction is None else done.prediction.check.size)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                _print_text(row)
    for line in tally.lines(str(args.out) if args.out is not None else ""):
        print(line, file=sys.stderr)
    return tally.exit_code


def _print_text(row: dict) -> None:
    """One photo's answer as a line (and its reasons or warnings indented below); an unreadable
    file's error goes to stderr."""
    if row["error"]:
        print(f"error: {row['error']}", file=sys.stderr)
        return
    from ..judging.decision import GRADED, NO_USABLE_MODEL, PROBABILITY_COLUMNS

    probs = "  ".join(f"{row[c]:.3f}" for c in PROBABILITY_COLUMNS)
    would = (f"the model would say {row['would_say_grade']} ({row['would_say_grade_name']}), refer "
             f"{'yes' if row['would_say_refer'] else 'no'}: not a grade")
    if row["status"] == GRADED:
        shown = (f"grade {row['grade']} ({row['grade_name']}) · refer {'yes' if row['refer'] else 'no'} "
                 f"(P(grade ≥ 2) {row['referable_probability']:.3f}, threshold {row['threshold']:.3f})")
    else:
        why = "no usable model" if row["status"] == NO_USABLE_MODEL else "failed a photo check"
        shown = f"not graded ({why}); {would}"
    print(f"{row['file']}\t{shown}\t[{probs}]")
    for line in row["reasons"]:
        print(f"  reason: {line}")
    for line in row["warnings"]:
        print(f"  warning: {line}")


def cmd_evaluate(args) -> int:
    from ..grading.evaluate import evaluate
    from ..judging import external

    result = evaluate(args.run, args.data, args.name, args.runs_dir, args.tta, args.batch_size,
                      progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        for line in result["warnings"]:
            print(f"warning: {line}", file=sys.stderr)
        print(f"{result['run_id']} {external.sentence(result)}")
        for line in external.detail_lines(result):
            print(f"  {line}")
        print(f"written to {result['json']} (answers per photo: {result['csv']})")
    return 1 if result["n_unreadable"] else 0


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
