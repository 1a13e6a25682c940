"""The four-configuration sweep trained one at a time against N at once, through the worker.

    .venv/bin/python bench/parallel.py                          # RetinaMNIST, cpu preset, 3 epochs
    .venv/bin/python bench/parallel.py --parallel 1 2 --epochs 3 --out bench/results/parallel.md
    python3 bench/parallel.py --device cuda --preset fast --parallel 1 4   # on a 4-GPU machine

For each N the four runs are queued in a fresh runs folder and ``python -m retino_core worker
--parallel N`` (the worker the app and ``sweep --parallel`` use) trains them; the wall time
runs from the worker's start to its exit. Each run's own time is from its trainer's start to
its last status write. The goal on a machine with 4+ GPUs: the sweep in the time of its
slowest run plus at most 10 %.

Pretrained configurations need torchvision's ImageNet files in the torch cache. Where they are
missing (an offline machine) each architecture's pretrained run is replaced by a second
from-scratch run (seed 1): the same network, the same images, the same number of steps, so
the same work; the output says which was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retino_core.training import launch  # noqa: E402
from retino_core import runs  # noqa: E402
from retino_core.models import weights  # noqa: E402
from retino_core.config import ARCHS, PRESETS, make_config  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="slot counts to compare (1 = serial)")
    p.add_argument("--data", default="retinamnist")
    p.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, help="default: the preset's")
    p.add_argument("--max-steps-per-epoch", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more config fields for every run, e.g. compile=false")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for each sweep at most")
    p.add_argument("--out", type=Path, help="write the Markdown table here (and a .json beside it)")
    return p


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def configurations(args) -> tuple[list[dict], bool]:
    """The four configurations (or their stand-ins), and whether they are the real four."""
    real = all(weights.cached_file(a).is_file() for a in ARCHS)
    fields = dict(data=args.data, epochs=args.epochs, device=args.device, max_steps_per_epoch=args.max_steps_per_epoch)
    for item in args.extra:
        key, _, value = item.partition("=")
        fields[key.replace("-", "_")] = _value(value)
    if args.image_size:
        fields["image_size"] = args.image_size
    out = []
    for arch in ARCHS:
        for pretrained in (False, True):
            stand_in = pretrained and not real
            cfg = make_config(args.preset, arch=arch, pretrained=pretrained and real, seed=1 if stand_in else 0,
                              name=f"{arch}-{'pre' if pretrained else 'scratch'}{'-standin' if stand_in else ''}",
                              **fields)
            out.append(cfg.to_dict())
    return out, real


def sweep(configs: list[dict], parallel: int, timeout: float) -> dict:
    """Queue ``configs`` in a fresh runs folder and let a worker with ``parallel`` slots train them."""
    with tempfile.TemporaryDirectory(prefix="retino-parallel-") as tmp:
        base = Path(tmp)
        for cfg in configs:
            launch.enqueue(cfg, base, start_worker=False)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        log = base / "worker.out"
        with open(log, "wb") as fh:
            # In this process group, so whoever stops this benchmark stops the sweep with it.
            proc = subprocess.Popen(launch.python_cmd("worker", "--runs-dir", str(base), "--parallel", str(parallel)),
                                    cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                for run in runs.list_runs(base):  # the trainers outlive their worker: stop them too
                    if run.state == "running":
                        launch.stop(run.run_id, base, timeout=5)
        wall = time.perf_counter() - t0
        per_run = []
        order = [c["name"] for c in configs]
        for run in sorted(runs.list_runs(base), key=lambda r: order.index(r.config.get("name"))):
            status = runs.read_status(run.path)
            steps = [r for r in runs.step_rows(run.path) if r.get("images_per_s")]
            per_run.append({
                "run": run.config.get("name"), "state": status["state"], "slot": (status.get("slot") or {}).get("label"),
                "threads": status.get("torch_threads"),
                "seconds": round(float(status.get("updated_ts", 0)) - float(status.get("started_ts") or 0), 1),
                "images_per_s": round(sum(r["images_per_s"] for r in steps) / len(steps), 1) if steps else None,
                "test_acc": run.summary.get("test_acc") if run.summary else None,
            })
        return {"parallel": parallel, "wall_s": round(wall, 1), "worker_exit": proc.returncode,
                "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                "all_done": all(r["state"] == "done" for r in per_run), "runs": per_run,
                "worker_log": log.read_text(errors="replace")[-2000:] if proc.returncode else ""}


def markdown(results: list[dict], args, real: bool) -> str:
    serial = next((r for r in results if r["parallel"] == 1), None)
    slowest = max((x["seconds"] for x in serial["runs"]), default=0) if serial else None
    lines = [f"# The four-configuration sweep: serial vs parallel slots ({args.preset} preset, {args.data})", "",
             f"- command: `python bench/parallel.py {' '.join(sys.argv[1:])}`".rstrip(),
             f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}), GPUs: {', '.join(launch.visible_gpus()) or 'none'}",
             f"- runs: {'the four configurations' if real else 'ImageNet files not in the torch cache: each pretrained run is a second from-scratch run (seed 1), the same work'};"
             f" {args.epochs} epoch(s) each", "",
             "| runs at once | wall s | speed-up vs serial | wall / slowest serial run | load avg before → after | every run done |",
             "|---:|---:|---:|---:|---|---|"]
    for r in results:
        vs = f"{serial['wall_s'] / r['wall_s']:.2f}×" if serial and r["wall_s"] else "-"
        vs_slowest = f"{r['wall_s'] / slowest:.2f}×" if slowest else "-"
        lines.append(f"| {r['parallel']} | {r['wall_s']:.0f} | {vs if r is not serial else '-'} | {vs_slowest} | "
                     f"{r['load_before']:.1f} → {r['load_after']:.1f} | {'yes' if r['all_done'] else 'NO'} |")
    lines += ["", "| runs at once | run | slot | threads | run s | train images/s | test acc |", "|---:|---|---|---:|---:|---:|---:|"]
    for r in results:
        for x in r["runs"]:
            acc = "-" if x["test_acc"] is None else f"{x['test_acc']:.3f}"
            lines.append(f"| {r['parallel']} | {x['run']} | {x['slot'] or '-'} | {x['threads'] or 'all'} | {x['seconds']:.0f} | "
                         f"{x['images_per_s'] or '-'} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configs, real = configurations(args)
    results = []
    for n in args.parallel:
        print(f"sweep with {n} run(s) at once…", file=sys.stderr, flush=True)
        results.append(sweep(configs, n, args.timeout))
        print(f"  {results[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    text = markdown(results, args, real)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"real_four": real, "results": results}, indent=2))
    return 0 if all(r["all_done"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
