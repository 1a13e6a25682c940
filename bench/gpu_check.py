"""One command on a lent GPU: checks and measurements of the GPU fast path, results in $OUT.

    python3 bench/gpu_check.py                        # on the GPU machine, about 7 minutes
    python3 bench/gpu_check.py --device cpu --tiny    # the same steps, tiny, on a CPU

Steps, each in its own process with a time limit; a failed step is recorded and the next runs,
and a step that would not fit in what is left of --budget is skipped:
1. env       torch, torchvision, GPU, driver
2. parity    the GPU data path on the device against the CPU (nvJPEG against libjpeg decode,
             the evaluation transform, augmentation), and the host synchronisations counted
             in a training epoch through it (torch.cuda.set_sync_debug_mode)
3. bench     bench/throughput.py, ResNet18 and ResNet50 at 512 px: the lab loop against the trainer
             at batch 8 and 64, the model alone, the trainer end to end itemised, the sweep
             extrapolated -> throughput.json / .md
4. train     the CLI, ``fast`` preset, 2 epochs on the same generated 512 px JPEGs; run folder checked
5. parallel  bench/parallel.py: the four-configuration sweep on RetinaMNIST, one run at a time
             against one per GPU (two sharing the GPU on a one-GPU machine) -> parallel.md
6. torchrun  training through torchrun on this machine's GPUs (NCCL), bundled RetinaMNIST
7. pytest    tests/data/test_gpu_data.py and tests/training/test_distributed.py, when pytest is installed
Writes gpu_check.json (each step's state, seconds and numbers), gpu_check.md and <step>.log.
Needs only torch, torchvision, numpy, pandas, scikit-learn, Pillow and tqdm.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="small sizes and one arch: a smoke test of this script")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_check_out"))
    p.add_argument("--work", type=Path, help="generated data and run folders (default: <out>/../gpu_check_work)")
    p.add_argument("--budget", type=float, default=560.0, help="seconds for all steps together")
    p.add_argument("--steps", nargs="+", default=["env", "parity", "bench", "train", "parallel", "torchrun", "pytest"])
    p.add_argument("--step", help=argparse.SUPPRESS)  # run one step in this process (used by the steps)
    return p


# ---------------------------------------------------------------- steps run in a child process


def step_env(args) -> dict:
    import torch
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
           "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        out.update(gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return out


def step_parity(args) -> dict:
    """GPU data path on ``args.device`` against the same code on the CPU."""
    import numpy as np
    import torch

    from bench.fundus import make_lab_folder
    from retino_core.config import make_config
    from retino_core.data import gpu
    from retino_core.data.sources import open_source
    from retino_core.models.builders import build_model
    from retino_core.training.recipe import build_loss, build_optimizer, lr_factor
    from retino_core.training.loop import train_one_epoch

    dev, cpu = torch.device(args.device), torch.device("cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    lab = make_lab_folder(args.work / "parity", 200, 40, 96 if args.tiny else 256)
    source = open_source(lab, 0.1, 0)
    split = source.splits["test"]
    ds = gpu.EncodedImages(split, 64)
    items = [ds[i] for i in range(16)]
    payloads, shapes, _, names = gpu._collate(items)
    out: dict = {}
    a = gpu.decode_batch(payloads, shapes, names, 256, dev).cpu().int()
    b = gpu.decode_batch(payloads, shapes, names, 256, cpu).int()
    diff = (a - b).abs().float()
    out["decode_mean_abs_levels"], out["decode_max_abs_levels"] = float(diff.mean()), float(diff.max())
    u8 = b.to(torch.uint8)
    ev_dev = gpu.GpuTransform(128)(u8.to(dev)).cpu()
    ev_cpu = gpu.GpuTransform(128)(u8)
    out["eval_transform_max_abs"] = float((ev_dev - ev_cpu).abs().max())
    torch.manual_seed(0)
    strong = gpu.GpuTransform(128, "strong", channels_last=dev.type == "cuda")(u8.to(dev))
    out["strong_ok"] = bool(strong.shape == (16, 3, 128, 128) and torch.isfinite(strong).all())

    # One short training epoch through the GPU path, counting host synchronisations.
    cfg = make_config("fast", data=str(lab), image_size=128, batch_size=16, compile=False, max_steps_per_epoch=8,
                      epochs=1, device=dev.type)
    loaders = gpu.build_device_loaders(cfg, source, dev, None, cfg.batch_size, workers=2)
    model = build_model("resnet18").to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model, dev)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, 8))
    loss_fn = build_loss(cfg, source.splits["train"].labels).to(dev)
    train_one_epoch(model, loaders["train"], loss_fn, opt, sched, dev, cfg, 1)  # warm: workers, cuDNN
    syncs = None
    if dev.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                row = train_one_epoch(model, loaders["train"], loss_fn, opt, sched, dev, cfg, 2)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    else:
        row = train_one_epoch(model, loaders["train"], loss_fn, opt, sched, dev, cfg, 2)
    out["epoch_steps"] = 8
    out["host_syncs_in_epoch"] = None if syncs is None else len(syncs)
    out["host_sync_examples"] = None if syncs is None else sorted(set(syncs))[:5]
    out["train_loss_finite"] = bool(np.isfinite(row["train_loss"]))
    out["ok"] = (out["decode_mean_abs_levels"] < 2.0 and out["eval_transform_max_abs"] < 0.05 and out["strong_ok"]
                 and out["train_loss_finite"] and (syncs is None or len(syncs) < out["epoch_steps"]))
    return out


# ---------------------------------------------------------------- the driver


def _run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    t = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        # Its own process group: a step that runs out of time is stopped with every process it
        # started (a sweep's worker and trainers), not just the first.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = 124
            fh.write(f"\n[timed out after {timeout:.0f} s]\n")
    return code, time.perf_counter() - t


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out.parent / "gpu_check_work"
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step:  # child: one step, its result as JSON on the last line
        result = {"env": step_env, "parity": step_parity}[args.step](args)
        print(json.dumps(result))
        return 0 if result.get("ok", True) else 1

    py, tiny, cuda = sys.executable, args.tiny, args.device == "cuda"
    size = 64 if tiny else 512
    me = [py, str(Path(__file__).resolve()), "--device", args.device, "--out", str(args.out), "--work", str(args.work)]
    me += ["--tiny"] if tiny else []
    bench = [py, "bench/throughput.py", "--device", args.device, "--image-size", str(size), "--workdir",
             str(args.work / "bench"), "--out", str(args.out)]
    bench += ["--steps", "2", "--archs", "resnet18", "--batch-size", "4", "--workers", "0", "--threads", "1",
              "--warmup", "1", "--repeats", "1", "--train-images", "64", "--test-images", "16"] if tiny else []
    data = args.work / "bench" / f"fundus{size}"  # written by the bench step
    train = [py, "-m", "retino_core", "train", "--data", str(data), "--preset", "fast", "--arch", "resnet18",
             "--epochs", "2", "--device", args.device, "--image-size", str(size),
             "--max-steps-per-epoch", "3" if tiny else "20", "--runs-dir", str(args.work / "runs"), "--quiet"]
    train += ["--batch-size", "4", "--num-workers", "0"] if tiny else []
    nproc = max(1, __import__("torch").cuda.device_count()) if cuda else 2
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "retino_core",
                "train", "--data", "retinamnist", "--preset", "fast", "--no-compile", "--epochs", "1",
                "--image-size", "64", "--batch-size", str(16 * nproc), "--max-steps-per-epoch", "5",
                "--device", args.device, "--runs-dir", str(args.work / "druns"), "--quiet"]
    slots = max(2, nproc) if cuda else 2
    parallel = [py, "bench/parallel.py", "--device", args.device, "--preset", "fast", "--parallel", "1", str(slots),
                "--epochs", "1" if tiny else "2", "--image-size", "32" if tiny else "128", "--out", str(args.out / "parallel.md"),
                "--extra", "compile=false"] + (["batch_size=8", "--max-steps-per-epoch", "2"] if tiny else [])
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/data/test_gpu_data.py", "tests/training/test_distributed.py"]
    # name: (command, time limit, seconds it needs at least to be worth starting)
    plan = {
        "env": (me + ["--step", "env"], 60, 5),
        "parity": (me + ["--step", "parity"], 120, 20),
        "bench": (bench, 420, 120),
        "train": (train, 150, 60),
        "parallel": (parallel, 240, 90),
        "torchrun": (torchrun, 120, 30),
        "pytest": (pytest, 150, 40),
    }
    report: dict = {"device": args.device, "tiny": tiny, "steps": {}}
    t0 = time.perf_counter()
    for name in args.steps:
        cmd, limit, need = plan[name]
        left = args.budget - (time.perf_counter() - t0)
        entry: dict = {"command": " ".join(cmd)}
        report["steps"][name] = entry
        if name == "pytest" and subprocess.run([py, "-c", "import pytest"], capture_output=True).returncode:
            entry.update(state="skipped", why="pytest is not installed")
            continue
        if name == "train" and not data.is_dir():
            entry.update(state="skipped", why="the bench step did not write the generated JPEGs")
            continue
        if left < need:
            entry.update(state="skipped", why=f"{left:.0f} s left of the budget, the step needs about {need} s")
            continue
        log = args.out / f"{name}.log"
        env = {"OMP_NUM_THREADS": "1"} if name in ("torchrun", "pytest") and not cuda else None
        code, secs = _run(cmd, log, min(limit, max(left, need)), env)
        entry.update(state="ok" if code == 0 else "failed", exit=code, seconds=round(secs, 1))
        if name in ("env", "parity"):
            try:
                entry["result"] = json.loads(_tail(log, 1))
            except json.JSONDecodeError:
                entry["tail"] = _tail(log)
        elif code != 0:
            entry["tail"] = _tail(log)
        if name in ("train", "torchrun") and code == 0:
            runs_dir = args.work / ("runs" if name == "train" else "druns")
            folders = sorted(p for p in runs_dir.iterdir() if p.is_dir())  # names start with the time
            entry["result"] = _check_run(folders[-1]) if folders else {"complete": False}
            entry["state"] = "ok" if entry["result"]["complete"] else "failed"
        _write(args.out, report, t0)
        print(f"{name}: {entry['state']} ({entry.get('seconds', 0):.0f} s)", file=sys.stderr)
    _write(args.out, report, t0)
    print((args.out / "gpu_check.md").read_text())
    return 0 if all(e["state"] != "failed" for e in report["steps"].values()) else 1


def _check_run(run_dir: Path) -> dict:
    """Is a run folder complete: done, every file there, one row per epoch."""
    from retino_core import runs

    names = ("config.json", "status.json", "metrics.jsonl", "summary.json", "predictions.csv",
             "checkpoints/best.pt", "checkpoints/last.pt")
    missing = [n for n in names if not (run_dir / n).is_file()]
    rows = runs.epoch_rows(run_dir) if run_dir.is_dir() else []
    epochs = [r["epoch"] for r in rows]
    out = {"run_dir": str(run_dir), "missing": missing, "state": runs.read_status(run_dir).get("state"),
           "epochs": epochs, "train_img_s": [round(r.get("train_images_per_s", 0), 1) for r in rows],
           "eval_seconds": [round(r.get("eval_seconds", 0), 2) for r in rows],
           "test_acc": (runs.read_json(run_dir / "summary.json", {}) or {}).get("test_acc")}
    out["complete"] = not missing and out["state"] == "done" and epochs == sorted(set(epochs)) and bool(epochs)
    return out


def _bench_note(res: dict) -> str:
    """The throughput benchmark's headline ratios, for the step table."""
    parts = []
    for arch, r in res.get("archs", {}).items():
        ratios = [f"trainer/lab {r[k]:.2f}x at {k.rsplit('@', 1)[1]}" for k in r if k.startswith("trainer_over_lab@")
                  and r[k] is not None]
        ratios += [f"trainer/model {r[k]:.2f} at {k.rsplit('@', 1)[1]}" for k in r
                   if k.startswith("trainer_over_model@") and r[k] is not None]
        parts.append(f"{arch}: {', '.join(ratios)}")
    if res.get("sweep"):
        parts.append(f"sweep {res['sweep']['trainer_minutes']:.1f} min (lab loop {res['sweep']['lab_hours']:.1f} h)")
    return "; ".join(parts)


def _write(out: Path, report: dict, t0: float) -> None:
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU check ({report['device']}{', tiny' if report['tiny'] else ''}), {report['wall_s']:.0f} s", "",
             "| step | state | seconds | note |", "|---|---|---:|---|"]
    for name, e in report["steps"].items():
        note = e.get("why") or ""
        r = e.get("result") or {}
        if name == "env" and r:
            note = f"torch {r.get('torch')}, torchvision {r.get('torchvision')}, {', '.join(r.get('gpus') or ['no GPU'])}"
        if name == "parity" and r:
            note = (f"decode mean/max {r['decode_mean_abs_levels']:.2f}/{r['decode_max_abs_levels']:.0f} levels; "
                    f"eval max {r['eval_transform_max_abs']:.3f}; host syncs in {r['epoch_steps']} steps: "
                    f"{r['host_syncs_in_epoch']}")
        if name == "bench" and (out / "throughput.json").is_file():
            note = _bench_note(json.loads((out / "throughput.json").read_text()))
        if name in ("train", "torchrun") and r:
            note = f"epochs {r.get('epochs')}, train img/s {r.get('train_img_s')}, complete {r.get('complete')}"
        lines.append(f"| {name} | {e.get('state', 'running')} | {e.get('seconds', '')} | {note} |")
    if report["steps"].get("parallel", {}).get("state") in ("ok", "failed") and (out / "parallel.md").is_file():
        lines += ["", (out / "parallel.md").read_text()]
    bench = out / "throughput.md"
    if report["steps"].get("bench", {}).get("state") in ("ok", "failed") and bench.is_file():
        lines += ["", "## Throughput", "", bench.read_text()]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
