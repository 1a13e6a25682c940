"""Single-image prediction latency on the CPU, as the Classify page sees it.

    python bench/cpu_latency.py                      # ResNet50, 512 px, 2 threads, the bundled photo
    python bench/cpu_latency.py --threads 1 2 --compile --out results/

One prediction = read the JPEG file, decode and check it (``load_image``), the evaluation
transform (resize, normalise), the model under ``torch.inference_mode``, softmax. Variants of
the model call: eager NCHW, eager channels_last, BatchNorm folded into the convolutions (with
channels_last), and ``torch.compile`` (its build time is reported apart; ``--compile``). The
``predictor`` row is ``Predictor.predict_files`` itself, whatever it does now. Weights are
random: latency does not depend on them. Prints median and 90th-percentile milliseconds and the
machine's load average, which on a shared machine moves the numbers more than anything else.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from retino_core.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from retino_core.data.images import SAMPLE_IMAGE, load_image  # noqa: E402
from retino_core.judging.metrics import softmax  # noqa: E402
from retino_core.models.builders import build_model  # noqa: E402
from retino_core.grading.predictor import Predictor  # noqa: E402
from retino_core.data.transforms import build_eval_transform  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", choices=("resnet18", "resnet50"))
    p.add_argument("--image", type=Path, default=SAMPLE_IMAGE)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to build on 2 cores)")
    p.add_argument("--out", type=Path, help="folder for cpu_latency.json")
    return p


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval copy with every BatchNorm folded into the convolution before it (torch.fx)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def timed_round_robin(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, taken in turns so that all see the same load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "min_ms": ms[0]}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = args.image.read_bytes()
    tf = build_eval_transform(args.image_size)
    base = build_model(args.arch).eval()
    pre = {"image_size": args.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "preprocess": "none"}
    res = {"arch": args.arch, "image": args.image.name, "image_size": args.image_size, "torch": torch.__version__,
           "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "threads": {}}

    for threads in args.threads:
        torch.set_num_threads(threads)
        img = load_image(data, "sample")
        fns = {"decode": lambda: load_image(data, "sample"), "preprocess": lambda: tf(img)}
        variants = {"eager": (base, False), "channels_last": (copy.deepcopy(base).to(memory_format=torch.channels_last), True),
                    "folded_bn_channels_last": (fold_batchnorm(base).to(memory_format=torch.channels_last), True)}
        if args.compile:
            compiled = torch.compile(copy.deepcopy(base).to(memory_format=torch.channels_last))
            x = tf(img).unsqueeze(0).contiguous(memory_format=torch.channels_last)
            t = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            res.setdefault("compile_build_s", {})[threads] = time.perf_counter() - t
            variants["compiled_channels_last"] = (compiled, True)
        for name, (model, cl) in variants.items():
            def predict(model=model, cl=cl):
                x = tf(load_image(data, "sample")).unsqueeze(0)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    return softmax(model(x).float().numpy())

            fns[name] = predict
        predictor = Predictor(copy.deepcopy(base), pre, arch=args.arch)
        fns["predictor"] = lambda: predictor.predict_files([args.image])
        rows = {name: summary(ms) for name, ms in timed_round_robin(fns, args.repeats, args.warmup).items()}
        for name, r in rows.items():
            print(f"threads {threads} {name:26s} median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms",
                  file=sys.stderr)
        res["threads"][threads] = rows
    res["load_avg_after"] = os.getloadavg()

    print(f"\n{args.arch} at {args.image_size} px, one image ({args.image.name}), torch {torch.__version__}, "
          f"load average before/after {res['load_avg_before'][0]:.1f}/{res['load_avg_after'][0]:.1f}")
    print("| threads | step | median ms | p90 ms |\n|---:|---|---:|---:|")
    for threads, rows in res["threads"].items():
        for name, r in rows.items():
            print(f"| {threads} | {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
    if "compile_build_s" in res:
        print("torch.compile build: " + ", ".join(f"{s:.0f} s ({t} threads)" for t, s in res["compile_build_s"].items()))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_latency.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
