"""Commands that hand runs to the engines a lab already runs: ``mlflow-sync``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import runs
from ..errors import TrackingError


def add_parsers(sub) -> None:
    p = sub.add_parser("mlflow-sync", help="copy runs into MLflow: one MLflow run per run, brought up to date "
                                           "each time (params, metrics, verdict, artifacts)")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or folders (default: every run that has ended)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), metavar="URI",
                   help="the MLflow tracking server, e.g. http://mlflow.lab:5000 (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="retino", metavar="NAME", help="MLflow experiment (default retino)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register the champion of each configuration synced as the model "
                        "retino-<data>-<configuration> with the alias champion (its run is exported to ONNX "
                        "first when it has no export)")
    p.add_argument("--json", action="store_true", help="one JSON object per run, then per registered model, on stdout")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_mlflow_sync)


def _chosen_runs(args) -> list[runs.RunInfo]:
    """The runs named (each must have ended), or every run that has ended."""
    if not args.runs:
        every = runs.list_runs(args.runs_dir)
        for run in every:
            if run.state in runs.ACTIVE_STATES:
                print(f"skipped {run.run_id}: {run.state}; sync it once it has ended", file=sys.stderr)
        return [r for r in reversed(every) if r.state not in runs.ACTIVE_STATES]
    chosen = [runs.load_run(runs.resolve_run_dir(ref, args.runs_dir)) for ref in args.runs]
    active = [f"{r.run_id} ({'still training' if r.state == 'running' else r.state})"
              for r in chosen if r.state in runs.ACTIVE_STATES]
    if active:
        raise TrackingError(f"not synced, because {'it has' if len(active) == 1 else 'they have'} not ended: "
                            f"{', '.join(active)}; sync once training ends, or follow a run live with "
                            "train --mlflow URI")
    return chosen


def cmd_mlflow_sync(args) -> int:
    from ..engines import tracking

    chosen = _chosen_runs(args)
    client = tracking.connect(args.tracking_uri)
    if not chosen:
        print("no ended runs to sync", file=sys.stderr)
        return 0
    for run in chosen:
        sent = tracking.sync_run(client, run.path, args.experiment)
        if args.json:
            print(json.dumps(sent), flush=True)
            continue
        what = "created" if sent["created"] else "updated" if sent["metrics"] or sent["artifacts"] or sent["params"] \
            else "already up to date"
        print(f"{run.run_id}\t{sent['mlflow_run_id']}\t{sent['url']}", flush=True)
        print(f"{run.run_id}: {what} ({sent['params']} params, {sent['metrics']} metric values, "
              f"{sent['artifacts']} artifacts sent)", file=sys.stderr)
    return 0 if args.no_register else register(client, chosen, args)


def register(client, chosen: list[runs.RunInfo], args) -> int:
    """The champion of each data set and configuration of the synced runs, in the registry."""
    from ..engines import registry

    everything = [r for base in sorted({r.path.parent for r in chosen}) for r in runs.list_runs(base)]
    failed = 0
    for done in registry.register_champions(client, everything, args.experiment, among=chosen):
        if args.json:
            print(json.dumps(done), flush=True)
        elif "error" in done:
            print(f"error: {done['model']} not registered: {done['error']}", file=sys.stderr)
        else:
            moved = f" (the alias moved from version {done['moved_from']})" if done["moved_from"] else ""
            print(f"{done['uri']}\tversion {done['version']}\t{done['run_id']}", flush=True)
            print(f"{done['model']}: version {done['version']} is the champion{moved}: run {done['run_id']}, "
                  f"{done['reason']}", file=sys.stderr)
        failed += "error" in done
    return 1 if failed else 0
