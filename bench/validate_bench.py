"""``validate --deep`` speed: decode, pixel hash and near-copy code of every photo, then again from the cache.

    python bench/validate_bench.py                    # 3,000 generated 512 px JPEGs, 2 workers
    python bench/validate_bench.py --images 35000     # the lab's full size (about 3 GB of disk)

Writes a lab folder of distinct fundus-like 512x512 JPEGs (quality 90, about 30 KB each, like
the lab's photos) to a temporary folder, runs ``python -m retino_core validate --deep`` on it
in-process twice (cold: no cache; warm: every hash from the cache), and times the near-duplicate
search alone on 35,000 random codes (it grows with the square of the count). Prints images/s,
the times extrapolated to 35,000 photos and the load average; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from retino_core.cli import main as cli  # noqa: E402
from retino_core.data import nearcopy  # noqa: E402

LAB_SIZE = 35_000


def fundus_jpeg(seed: int, size: int) -> bytes:
    """An orange disc on black with smooth random texture: every seed a different picture."""
    rng = np.random.default_rng(seed)
    texture = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2)[..., None]
    base = np.array([200, 90, 40], np.float32)
    arr = np.clip(base * 0.7 + np.asarray(texture, np.float32) * 0.3, 0, 255) * disc
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_lab(root: Path, n: int, size: int) -> Path:
    (root / "data").mkdir(parents=True)
    n_test = n // 5
    for split, seeds in (("train", range(n - n_test)), ("test", range(n - n_test, n))):
        names = [f"{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in seeds]
        for seed, name in zip(seeds, names):
            (root / "data" / f"{name}.jpeg").write_bytes(fundus_jpeg(seed, size))
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(str(i % 5) for i in range(len(names))) + "\n")
    return root


def timed_validate(folder: Path, workers: int) -> tuple[float, dict, int]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli(["validate", str(folder), "--deep", "--json", "--workers", str(workers)])
    return time.perf_counter() - start, json.loads(out.getvalue()), code


def run(n: int, size: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_lab(Path(tmp) / "lab", n, size)
        mb = sum(p.stat().st_size for p in (folder / "data").iterdir()) / 2**20
        cold, report, code = timed_validate(folder, workers)
        warm, again, _ = timed_validate(folder, workers)
    rng = np.random.default_rng(0)
    codes = [rng.integers(1, 256, nearcopy.GRID ** 2, dtype=np.uint8).tobytes().hex() for _ in range(LAB_SIZE)]
    start = time.perf_counter()
    nearcopy.near_pairs(codes)
    search = time.perf_counter() - start
    return {"images": n, "size_px": size, "workers": workers, "jpeg_mb": round(mb, 1), "exit_code": code,
            "cold_s": round(cold, 2), "cold_images_per_s": round(n / cold, 1),
            "warm_s": round(warm, 2), "warm_from_cache": again["images"]["from_cache"],
            "near_search_35k_s": round(search, 2),
            "extrapolated_35k_cold_min": round((LAB_SIZE / (n / cold) + search) / 60, 1),
            "extrapolated_35k_warm_min": round((LAB_SIZE * warm / n + search) / 60, 1),
            "problems": [p["kind"] for p in report["problems"]], "load_avg": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    result = run(args.images, args.size, args.workers)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
