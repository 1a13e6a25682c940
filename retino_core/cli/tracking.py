"""Commands over the run folders: ``runs``, ``compare``, ``note``, ``champions``, ``pin`` and ``unpin``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import runs
from .common import EXIT_USAGE, fmt


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="is the difference between two runs real? (paired tests on one test set)")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("note", help="set a run's notes and tags (kept in its notes.json)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--notes", help="free text (replaces the run's notes)")
    p.add_argument("--tags", help="comma-separated tags (replace the run's tags)")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_note)

    p = sub.add_parser("runs", help="table of runs with state and headline metrics; filter with --where, --tag, ...",
                       description="List runs, newest first. Every filter given must hold.")
    p.add_argument("--runs-dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting or summary number: image_size=64, lr<0.01, augment!=strong, test_acc>=0.5 "
                        "(repeat for several; = and != also compare text, true/false and none)")
    p.add_argument("--tag", action="append", default=[], help="runs carrying this tag (repeat or comma-separate: all must be there)")
    p.add_argument("--state", action="append", default=[], choices=runs.STATES, help="runs in this state (repeat for any of several)")
    p.add_argument("--verdict", action="append", default=[], help="usable, weak, 'no better than guessing' or 'not judged'")
    p.add_argument("--configuration", action="append", default=[], metavar="CONFIG",
                   help="e.g. 'resnet18 / scratch' (repeat for any of several)")
    p.add_argument("--search", default="", metavar="TEXT",
                   help="words to find in the run id, name, configuration, tags, notes, data, state or error")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("champions", help="the run that stands for each configuration, and why")
    p.add_argument("--data", help="only this data set (default: every data set with a finished run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir", type=Path)
    p.set_defaults(func=cmd_champions)

    for name, text in (("pin", "make a finished run stand for its configuration on its data set"),
                       ("unpin", "let the rules choose the run that stands for the configuration again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", metavar="RUN")
        p.add_argument("--runs-dir", type=Path)
        p.set_defaults(func=cmd_pin if name == "pin" else cmd_unpin)


def cmd_runs(args) -> int:
    from ..report import runs_table
    from ..training import cluster, launch

    # A run that a SLURM or submitit job trains: its state, plus the job's (a job that ended
    # without the run saying so is recorded first).
    infos = [cluster.reconcile(r) for r in runs.list_runs(args.runs_dir)]
    jobs = {r.run_id: cluster.job_status(r) for r in infos}
    try:
        query = runs_table.make_query(infos, args.search, args.tag, args.configuration, args.state, args.verdict,
                                      args.where)
    except runs_table.SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    shown = runs_table.search(infos, query)
    if args.json:
        from ..judging import trust

        print(json.dumps([{"run_id": r.run_id, "state": r.state, "arch": r.arch, "pretrained": r.pretrained,
                           "test_acc": r.summary.get("test_acc"), "test_majority_acc": r.summary.get("test_majority_acc"),
                           "test_qwk": r.summary.get("test_qwk"), "test_auc": r.summary.get("test_auc"),
                           "trust": trust.of_summary(r.summary), "tags": r.tags, "notes": r.notes, "config": r.config,
                           "job": jobs[r.run_id]} for r in shown], indent=2))
        return 0
    if not infos:
        print("no runs yet: python -m retino_core train --data retinamnist")
        return 0
    if not shown:
        print(f"no run matches; {len(infos)} run(s) in all (python -m retino_core runs lists them)")
        return 0
    header = (f"{'run id':40} {'state':22} {'configuration':22} {'epochs':>7} {'size':>5} {'preset':6} "
              f"{'progress':>8} {'test acc (95 % CI)':21} {'test_qwk':>8} {'test_auc':>8}  {'verdict':24} tags")
    print(header)
    for row, r in zip(runs_table.table_rows(shown, launch.queue(all_runs=infos)), shown):
        verdict = row["verdict"] or "-"
        print(f"{r.run_id:40} {row['state']:22} {r.configuration:22} {row['epochs']:>7} {row['image size']:>5} "
              f"{row['preset']:6} {100 * row['progress']:>7.0f}% {row['test accuracy'] or '-':21} "
              f"{fmt(r.summary.get('test_qwk')):>8} {fmt(r.summary.get('test_auc')):>8}  {verdict:24} "
              f"{row['tags']}".rstrip())
        if jobs[r.run_id]:
            print(f"{'':40} {jobs[r.run_id]['label']}")
    if not query.empty:
        print(f"{len(shown)} of {len(infos)} run(s) match")
    return 0


def cmd_compare(args) -> int:
    from ..judging import comparison, stats

    a, b = (runs.load_run(runs.resolve_run_dir(r, args.runs_dir)) for r in (args.run_a, args.run_b))
    try:
        result = comparison.compare_runs(a, b, args.resamples or stats.N_BOOT)
    except comparison.ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"A = {a.run_id} ({a.configuration}), B = {b.run_id} ({b.configuration}); "
          f"{result['n']} shared test images, {result['resamples']} paired bootstrap resamples")
    for m, found in result["metrics"].items():
        ci = found["ci"]
        shown = "-" if ci is None else f"{found['diff']:+.4f}  95 % CI {ci[0]:+.4f} to {ci[1]:+.4f}"
        print(f"  {stats.METRIC_NAMES[m]:17} A {fmt(found['a'])}  B {fmt(found['b'])}  A - B {shown}")
    mc = result["mcnemar"]
    print(f"  McNemar exact test: {mc['only_a_right']} images only A gets right, {mc['only_b_right']} only B; "
          f"p {stats.p_text(mc['p'])}")
    for d in result["recipe_differences"]:
        print(f"  recipe differs: {d['setting']:20} A {d['a']}  B {d['b']}")
    print(result["sentence"])
    return 0


def cmd_champions(args) -> int:
    from ..judging import champions, trust

    infos = runs.list_runs(args.runs_dir)
    specs = [args.data] if args.data else sorted({champions.data_of(r) for r in infos if champions.is_finished(r)})
    found = [c for spec in specs for c in champions.champions(infos, spec).values()]
    found.sort(key=lambda c: (champions.data_of(c.run), c.configuration))
    if args.json:
        print(json.dumps([c.to_dict() for c in found], indent=2))
        return 0
    if not found:
        print("no finished run yet" + (f" on {args.data}" if args.data else "")
              + ": python -m retino_core sweep --data retinamnist")
        return 0
    print(f"{'data':24} {'configuration':22} {'run id':40} {'verdict':24} why")
    for c in found:
        print(f"{champions.data_of(c.run)[-24:]:24} {c.configuration:22} {c.run.run_id:40} "
              f"{trust.label(c.verdict):24} {c.reason}")
    return 0


def cmd_pin(args) -> int:
    from ..judging import champions

    replaced = champions.pin(args.run, args.runs_dir)
    run = runs.load_run(runs.resolve_run_dir(args.run, args.runs_dir))
    print(f"{run.run_id} now stands for {run.configuration} on {champions.data_of(run)}"
          + (f" (instead of the pinned {', '.join(replaced)})" if replaced else ""))
    return 0


def cmd_unpin(args) -> int:
    from ..judging import champions

    if champions.unpin(args.run, args.runs_dir):
        print(f"{args.run} is no longer pinned: the rules choose the run that stands for its configuration")
    else:
        print(f"{args.run} was not pinned")
    return 0


def cmd_note(args) -> int:
    run = runs.load_run(runs.resolve_run_dir(args.run, args.runs_dir))
    body = runs.write_notes(run.path, run.notes if args.notes is None else args.notes,
                            run.tags if args.tags is None else args.tags)
    print(f"{run.run_id}: tags {', '.join(body['tags']) or '-'}; notes {len(body['notes'])} characters")
    return 0
