"""What writing the checkpoints costs a training epoch: in the training thread (how the trainer
wrote last.pt before) against the background writer (how it writes it now).

    .venv/bin/python bench/checkpoints.py --out bench/results       # RetinaMNIST, cpu preset, ResNet18

Trains the bundled RetinaMNIST with the ``cpu`` preset (last.pt of a ResNet18 is about 179 MB:
weights, AdamW state and the weight average) for --epochs epochs in each mode, the modes
interleaved --repeats times so load shifts hit both alike:
- ``training thread``: every checkpoint written where the epoch ends, through an in-memory copy
  of the file, as the trainer wrote them before the writer existed;
- ``background``: the trainer as it is (``CheckpointWriter``).
Per epoch after the first: wall time (one epoch row to the next), training and evaluation
seconds. The cost of the checkpoints is the epoch's wall time less the training and
evaluation of the undisturbed epochs (the training-thread mode, whose training no writer
competes with), so a writer that slows training down is counted too. Writes checkpoints.md
and checkpoints.json to --out.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.timing import load_average, timed_calls  # noqa: E402
from retino_core import runs  # noqa: E402
from retino_core.config import make_config  # noqa: E402
from retino_core.training import recorder  # noqa: E402
from retino_core.training.lifecycle import prepare_run, run_training  # noqa: E402

MODES = ("training thread", "background")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    p.add_argument("--epochs", type=int, default=4, help="epochs a run; the first is not counted")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--runs-dir", type=Path, help="where the run folders go, kept (default: a temp folder, removed at the end)")
    p.add_argument("--out", type=Path, help="folder for checkpoints.md and checkpoints.json")
    return p


def _in_training_thread(self, files) -> None:
    """How the trainer wrote its checkpoints before the writer: where the epoch ends, through
    an in-memory copy of the file, the epoch waiting for every byte."""
    for obj, path in files:
        buf = io.BytesIO()
        torch.save(obj, buf)
        runs.atomic_write(path, buf.getvalue())


def one_run(args, mode: str, runs_dir: Path) -> dict:
    cfg = make_config("cpu", data="retinamnist", arch=args.arch, epochs=args.epochs, name=f"ckpt-{args.arch}")
    run_dir = prepare_run(cfg, runs_dir)
    load = load_average()
    real = recorder.CheckpointWriter.submit
    if mode == "training thread":
        recorder.CheckpointWriter.submit = _in_training_thread
    try:
        with timed_calls({"submit": (recorder.CheckpointWriter, "submit"),
                          "write": (recorder, "save_checkpoint")}) as calls:
            run_training(run_dir, quiet=True)
    finally:
        recorder.CheckpointWriter.submit = real
    rows = runs.epoch_rows(run_dir)
    walls = [b["elapsed"] - a["elapsed"] for a, b in zip(rows, rows[1:])]
    n = len(calls["submit"])
    return {"mode": mode, "load_average": [load, load_average()], "wall_s": walls,
            "train_s": [r["train_seconds"] for r in rows[1:]], "eval_s": [r["eval_seconds"] for r in rows[1:]],
            "train_img_s": [r["train_images_per_s"] for r in rows[1:]],
            # Every epoch's hand-over in the training thread, and the writer thread's CPU seconds.
            "training_thread_s": [c["end"] - c["start"] for c in calls["submit"]],
            "writer_cpu_s": sum(c["cpu"] for c in calls["write"] if not c["main"]) / max(n, 1),
            "last_pt_mb": (run_dir / "checkpoints" / "last.pt").stat().st_size / 1e6}


def summarise(results: list[dict]) -> dict:
    by = {m: [r for r in results if r["mode"] == m] for m in MODES}

    def mean(mode: str, key: str) -> float:
        return statistics.fmean(x for r in by[mode] for x in r[key])

    undisturbed = mean("training thread", "train_s") + mean("training thread", "eval_s")
    out = {"undisturbed_epoch_s": undisturbed, "last_pt_mb": results[0]["last_pt_mb"]}
    for m in MODES:
        wall = mean(m, "wall_s")
        out[m] = {"epoch_s": wall, "train_img_s": mean(m, "train_img_s"), "cost_s": wall - undisturbed,
                  "cost_share": (wall - undisturbed) / undisturbed,
                  "training_thread_s": mean(m, "training_thread_s"),
                  "writer_cpu_s": statistics.fmean(r["writer_cpu_s"] for r in by[m])}
    return out


def markdown(res: dict) -> str:
    s = res["summary"]
    loads = [x for r in res["runs"] for x in r["load_average"] if x is not None]
    lines = [f"# What the checkpoints cost an epoch (RetinaMNIST, `cpu` preset, {res['arch']})", "",
             f"{res['cpus']}-core CPU, {res['torch_threads']} torch threads, torch {res['torch']}; "
             f"{res['epochs']} epochs a run (the first not counted), {res['repeats']} interleaved repeats; "
             f"load average (1 min) {min(loads, default=0):.1f}–{max(loads, default=0):.1f}; "
             f"{res['wall_s'] / 60:.1f} min in all. last.pt: {s['last_pt_mb']:.0f} MB.", "",
             f"Command: `{res['command']}`", "",
             "| last.pt written | epoch s | training img/s | cost s per epoch (share) | training thread s "
             "| writer thread CPU s | training thread + writer CPU (share) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in MODES:
        r = s[m]
        bound = r["training_thread_s"] + r["writer_cpu_s"]
        lines.append(f"| {'in the training thread (before)' if m == MODES[0] else 'by the background writer (now)'} "
                     f"| {r['epoch_s']:.2f} | {r['train_img_s']:.0f} | {r['cost_s']:.2f} ({100 * r['cost_share']:.1f} %) "
                     f"| {r['training_thread_s']:.3f} | {r['writer_cpu_s']:.2f} "
                     f"| {bound:.2f} ({100 * bound / s['undisturbed_epoch_s']:.1f} %) |")
    lines += ["", f"Cost: the epoch's wall time less {s['undisturbed_epoch_s']:.2f} s, the mean training and "
              "evaluation time of the epochs that wrote in the training thread (no writer competing with their "
              "training), so a writer that slows training down is counted; the share is of that epoch time. "
              "It is a difference of two noisy wall times; the last column does not depend on the load: the "
              "seconds the training thread spends on the checkpoints (copying the tensors, and waiting, if the "
              "previous write is not done) plus every CPU second of the writer thread, as if each were taken from "
              "training (an upper bound)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="retino-ckpt-"))
    t0 = time.perf_counter()
    results = []
    try:
        for rep in range(args.repeats):
            for mode in MODES:
                print(f"repeat {rep + 1}: last.pt {mode}", file=sys.stderr)
                results.append(one_run(args, mode, runs_dir))
    finally:
        if args.runs_dir is None:  # the runs' checkpoints, about 0.2 GB each
            shutil.rmtree(runs_dir, ignore_errors=True)
    res = {"command": " ".join(["python bench/checkpoints.py", *argv]), "arch": args.arch, "epochs": args.epochs,
           "repeats": args.repeats, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "runs": results, "summary": summarise(results),
           "wall_s": time.perf_counter() - t0}
    report = markdown(res)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        runs.write_json(args.out / "checkpoints.json", res)
        runs.atomic_write(args.out / "checkpoints.md", report.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
