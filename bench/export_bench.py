"""Batch grading and single-photo latency: torch eager (``predict``) vs onnxruntime (the export).

    python bench/export_bench.py                     # ResNet18 and ResNet50, 64 px (flip TTA) and 512 px
    python bench/export_bench.py --archs resnet50 --sizes 512 --photos 32 --rounds 3

Batch grading = a folder of JPEG photos in, one result row per photo out, timed end to end:
``batch.grade`` (DataLoader workers decode while the model runs; the ``predict --out`` path)
against the exported model driven by the generated ``predict_onnx.py`` (its own ``grade_files``:
decode, check, resize, one ``session.run`` a batch). Single photo = a decoded photo to its
probabilities and checks: ``Predictor.predict`` against ``prepare`` + ``session.run``, in
seconds and in CPU seconds of the process (all its threads: what the photo costs, whatever the load).
At 64 px the graph averages the four flips (the ``cpu`` preset's TTA), at 512 px it does not
(the ``lab`` and ``fast`` presets). Weights are random; speed does not depend on them. Every
number is the median over ``--rounds`` rounds, each taken in turns across the variants, with the
load average beside it: on a shared machine the load moves the numbers more than anything else.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cpu_latency import summary, timed_round_robin  # noqa: E402
from retino_core.grading import batch  # noqa: E402
from retino_core.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from retino_core.data.images import load_image  # noqa: E402
from retino_core.models.builders import build_model  # noqa: E402
from retino_core.grading.predictor import Predictor  # noqa: E402
from retino_core.grading import standalone  # noqa: E402
from retino_core.grading import export  # noqa: E402

FEATURES = {"resnet18": 512, "resnet50": 2048}
WARMUP = 2


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"], choices=tuple(FEATURES))
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 512])
    p.add_argument("--photos", type=int, default=48, help="photos in the graded folder")
    p.add_argument("--photo-size", type=int, default=768, help="side of the JPEG photos")
    p.add_argument("--batch-size", type=int, help="photos a batch, both ways (default: predict's for the size)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="single-photo calls per round")
    p.add_argument("--out", type=Path, help="write export.json and export.md into this folder")
    return p


def photo(side: int, seed: int) -> Image.Image:
    """A fundus-like photo: a textured orange disc on black, a few dark spots."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(img)
    m = side // 12
    draw.ellipse((m, m, side - m, side - m), fill=(200 + int(rng.integers(0, 40)), 90, 40))
    for _ in range(12):
        x, y = rng.integers(side // 4, 3 * side // 4, 2)
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), fill=(90, 20, 10))
    noise = rng.integers(-12, 13, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def make_predictor(arch: str, size: int) -> Predictor:
    """A random-weight Predictor with the checks of a real run (feature statistics included)."""
    torch.manual_seed(0)
    d = FEATURES[arch]
    stats = {"means": torch.randn(5, d), "grades": torch.arange(5), "precision": torch.eye(d),
             "threshold": torch.tensor(1e12)}
    pre = {"image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "preprocess": "none"}
    return Predictor(build_model(arch).eval(), pre, 1.0, arch, f"bench-{arch}-{size}", tta=size <= 64, ood_stats=stats)


def load_script(folder: Path):
    """The generated predict_onnx.py as a module, with its session and preprocessing."""
    path = folder / export.SCRIPT
    path.write_text(standalone.standalone_script())
    spec = importlib.util.spec_from_file_location("predict_onnx", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    pre, session = module.load(folder)
    return module, pre, session


def export_for_bench(predictor: Predictor, folder: Path) -> None:
    graph = export.grader_graph(predictor)
    export.write_onnx(graph, predictor.image_size, folder / export.FORMATS["onnx"])
    pre = export.preprocessing_json(predictor, {}, predictor.run_id, "onnx", graph.outputs)
    (folder / export.PREPROCESSING).write_text(json.dumps(pre))


def measure(arch: str, size: int, items: list, args) -> dict:
    predictor = make_predictor(arch, size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        export_for_bench(predictor, folder)
        export_s = time.perf_counter() - t
        script, pre, session = load_script(folder)

        size_of_batch = args.batch_size or batch.default_batch_size(size)

        def grade_eager() -> None:
            assert sum(1 for _ in batch.grade(predictor, items, batch_size=size_of_batch)) == len(items)

        def grade_onnx() -> None:
            for start in range(0, len(items), size_of_batch):
                rows = script.grade_files(session, pre, items[start:start + size_of_batch])
                assert not any(row["error"] for row in rows)

        img = load_image(items[0][0])

        point = script.OperatingPoint.from_dict(pre["referable"])

        def one_onnx() -> None:  # what grade_files does for one decoded photo: run, check, decide
            out = dict(zip(pre["outputs"], session.run(None, {export.INPUT: standalone.prepare(img, size)[None]})))
            check = script.check_photo(img, float(out["ood_score"][0]), pre["ood"]["threshold"])
            script.decide(out["probabilities"][0], check, point, True)

        cpu: dict[str, list[float]] = {"eager": [], "onnxruntime": []}

        def cpu_timed(name: str, fn):  # the process's CPU seconds too: every thread, the load aside
            def run() -> None:
                start = time.process_time()
                fn()
                cpu[name].append(time.process_time() - start)
            return run

        single = {"eager": cpu_timed("eager", lambda: predictor.predict([img])),
                  "onnxruntime": cpu_timed("onnxruntime", one_onnx)}
        rounds = {"eager": [], "onnxruntime": []}
        latency = {"eager": [], "onnxruntime": []}
        loads = []
        grade_eager(), grade_onnx()  # warm-up: worker start, onnxruntime's first-run allocations
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, fn in (("eager", grade_eager), ("onnxruntime", grade_onnx)):
                t = time.perf_counter()
                fn()
                rounds[name].append(len(items) / (time.perf_counter() - t))
            for name, ms in timed_round_robin(single, args.repeats, WARMUP).items():
                latency[name].append(summary(ms)["median_ms"])
                cpu[name][-args.repeats - WARMUP:-args.repeats] = []  # the warm-up calls
    return {"arch": arch, "size": size, "tta": predictor.tta, "batch_size": size_of_batch, "export_s": export_s,
            "load_1min": loads, "workers": batch.default_workers(),
            "images_per_s": rounds, "single_ms": latency,
            "single_cpu_s": cpu,
            "median": {k: {"images_per_s": statistics.median(rounds[k]), "single_ms": statistics.median(latency[k]),
                           "single_cpu_s": statistics.median(cpu[k])} for k in rounds}}


def markdown(results: list[dict], args) -> str:
    lines = [f"Torch {torch.__version__.split('+')[0]} ({torch.get_num_threads()} threads), onnxruntime "
             f"{__import__('onnxruntime').__version__}; {args.photos} JPEG photos of {args.photo_size} px; "
             f"{results[0]['workers'] if results else 0} decode workers (predict's default here); median of "
             f"{args.rounds} rounds.", "",
             "| model | input | flip TTA | batch | batch grading, eager (img/s) | batch grading, onnxruntime (img/s) | "
             "one photo, eager (s; CPU s) | one photo, onnxruntime (s; CPU s) | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        lines.append(f"| {r['arch']} | {r['size']} px | {'on' if r['tta'] else 'off'} | {r['batch_size']} | "
                     f"{m['eager']['images_per_s']:.1f} | {m['onnxruntime']['images_per_s']:.1f} | "
                     f"{m['eager']['single_ms'] / 1000:.3f}; {m['eager']['single_cpu_s']:.3f} | "
                     f"{m['onnxruntime']['single_ms'] / 1000:.3f}; {m['onnxruntime']['single_cpu_s']:.3f} | "
                     f"{', '.join(f'{x:.1f}' for x in r['load_1min'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.photos):
            photo(args.photo_size, i).save(Path(tmp) / f"{i:04d}.jpg", quality=90)
        items = batch.expand_inputs([tmp])
        results = []
        for size in args.sizes:
            for arch in args.archs:
                results.append(measure(arch, size, items, args))
                print(json.dumps(results[-1]["median"]), f"load {results[-1]['load_1min']}", arch, size, flush=True)
    table = markdown(results, args)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "export.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "export.md").write_text("# Batch grading and single-photo latency: eager vs onnxruntime\n\n"
                                            f"`python bench/export_bench.py --out bench/results`\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
