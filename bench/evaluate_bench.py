"""Photos per second of ``evaluate`` (a labelled data set graded and measured) next to
``predict`` (the same photos graded, ``batch.grade``: the path of ``predict --out``).

    python bench/evaluate_bench.py                          # ResNet18 and ResNet50 at 512 px
    python bench/evaluate_bench.py --archs resnet50 --photos 48 --rounds 3 --out bench/results

Both are timed end to end on the same folder of JPEG photos (``--photo-size`` px, made from the
bundled CC0 fundus photograph, turned and mirrored, so they pass the photo checks as real photos
do): decoding, the checks, the model and the decision; ``evaluate`` also opens the labels CSV
and computes the numbers with their bootstrap intervals and writes its two files. The run
folder holds a random-weight model (speed does not depend on the weights) with feature
statistics, as a trained run's checkpoint does. Rounds take the two in turns; the median of the
rounds is reported with the load average beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from export_bench import FEATURES, make_predictor  # noqa: E402

from retino_core import runs  # noqa: E402
from retino_core.data.images import SAMPLE_IMAGE, load_image  # noqa: E402
from retino_core.grading import batch  # noqa: E402
from retino_core.grading.evaluate import evaluate  # noqa: E402
from retino_core.grading.predictor import Predictor  # noqa: E402
from retino_core.training.recorder import save_checkpoint  # noqa: E402

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"], choices=tuple(FEATURES))
    p.add_argument("--size", type=int, default=512, help="the model's input side")
    p.add_argument("--photos", type=int, default=32, help="photos in the labelled folder")
    p.add_argument("--photo-size", type=int, default=768, help="side of the JPEG photos")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, help="write evaluate.json and evaluate.md into this folder")
    return p


def write_photos(folder: Path, n: int, side: int) -> Path:
    """n JPEG photos made from the bundled one, grades 0-4 in turn, and their labels CSV."""
    base = load_image(SAMPLE_IMAGE)
    (folder / "images").mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image", "level"))
        for i in range(n):
            img = base.rotate(37.0 * i, Image.BILINEAR)
            img = img.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else img
            img.resize((side, side), Image.LANCZOS).save(folder / "images" / f"{i:04d}.jpg", quality=90)
            writer.writerow((f"{i:04d}.jpg", i % 5))
    return folder / "labels.csv"


def write_run(runs_dir: Path, arch: str, size: int) -> Path:
    """A run folder whose best.pt holds export_bench's random-weight model with feature statistics."""
    predictor = make_predictor(arch, size)
    run_dir = runs.create_run_dir(f"bench-{arch}-{size}", runs_dir)
    save_checkpoint({"model": predictor.model.state_dict(), "arch": arch, "preprocessing": predictor.pre,
                     "temperature": predictor.temperature, "tta": predictor.tta, "ood": predictor.ood_stats},
                    runs.checkpoint_path(run_dir))
    runs.write_json(run_dir / "config.json", {"arch": arch, "image_size": size, "data": "bench"})
    runs.write_json(run_dir / "summary.json", {"temperature": predictor.temperature})
    return run_dir


def measure(arch: str, labels: Path, runs_dir: Path, args) -> dict:
    run_dir = write_run(runs_dir, arch, args.size)
    items = batch.expand_inputs([labels.parent / "images"])

    def predict() -> None:
        predictor = Predictor.from_run(run_dir)  # predict loads the run too
        for _ in batch.grade(predictor, items):
            pass

    def external() -> None:
        evaluate(run_dir, str(labels), "bench", progress=False)

    rates: dict[str, list[float]] = {"predict": [], "evaluate": []}
    loads = []
    predict()  # warm-up: first-call costs out of the rounds
    for _ in range(args.rounds):
        for name, fn in (("predict", predict), ("evaluate", external)):
            t = time.perf_counter()
            fn()
            rates[name].append(args.photos / (time.perf_counter() - t))
            loads.append(os.getloadavg()[0])
    return {"arch": arch, "size": args.size, "photos": args.photos, "rounds": rates,
            "median": {k: statistics.median(v) for k, v in rates.items()},
            "load_1min": [round(min(loads), 2), round(max(loads), 2)]}


def markdown(results: list[dict], args) -> str:
    lines = ["| model | input | photos | predict (photos/s) | evaluate (photos/s) | evaluate / predict | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        lines.append(f"| {r['arch']} | {r['size']} px | {r['photos']} × {args.photo_size} px JPEG | "
                     f"{m['predict']:.1f} | {m['evaluate']:.1f} | {m['evaluate'] / m['predict']:.2f} | "
                     f"{r['load_1min'][0]}–{r['load_1min'][1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_photos(Path(tmp) / "clinic", args.photos, args.photo_size)
        results = [measure(arch, labels, Path(tmp) / "runs", args) for arch in args.archs]
    for r in results:
        print(json.dumps(r["median"]), f"load {r['load_1min']}", r["arch"], flush=True)
    table = markdown(results, args)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluate.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "evaluate.md").write_text(
            "# evaluate next to predict: photos per second\n\n"
            f"`python bench/evaluate_bench.py {' '.join(argv or sys.argv[1:])}`, on "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
