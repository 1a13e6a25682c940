"""The command line: ``python -m retino_core {train,sweep,stop,resume,predict,evaluate,export,runs,compare,
note,mlflow-sync,validate,worker,bench}``.

One module per group of commands; each adds its parsers (``add_parsers``) and its ``cmd_*``
functions, which ``main`` calls through the parser's ``func`` default.
"""

from __future__ import annotations

import argparse
import sys

from .. import runs
from ..config import ConfigError
from ..errors import (CheckpointError, ClusterError, DataError, ImageError, Interrupted, TrackingError, TrainingFailed,
                      WeightsError)
from . import data, engines, grading, tracking, training
from .common import EXIT_INTERRUPTED, EXIT_USAGE


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retino_core",
                                     description="Train and use diabetic-retinopathy graders.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, grading, tracking, engines, data):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # bench/throughput.py parses its own options
        return training.cmd_bench(argv[1:])
    args = get_args_parser().parse_args(argv)

    try:
        return args.func(args)
    except (DataError, ConfigError, ImageError, WeightsError, CheckpointError, runs.RunError, ClusterError,
            TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
