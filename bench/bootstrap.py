"""Time of the statistics behind Compare on the lab's test-set size: 95 % intervals for four
runs and the paired comparison of their six pairs, 7,026 test images, 1,000 resamples each.

    python bench/bootstrap.py [--images 7026] [--resamples 1000] [--repeats 3]

Predictions are made up with the lab test set's grade shares (73.3 / 6.9 / 15.4 / 2.5 / 1.8 %);
the work depends only on their number. Prints the median of --repeats and the load average.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retino_core.judging import stats  # noqa: E402
from retino_core.judging.metrics import softmax  # noqa: E402

LAB_TEST_SHARES = (5153, 488, 1082, 175, 128)  # the lab's test_label.csv, 7,026 rows


def made_up_runs(n_images: int, n_runs: int = 4, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    shares = np.array(LAB_TEST_SHARES) / sum(LAB_TEST_SHARES)
    y = rng.choice(5, n_images, p=shares)
    runs = []
    for k in range(n_runs):
        logits = rng.normal(size=(n_images, 5))
        logits[np.arange(n_images), y] += 1.0 + 0.3 * k
        runs.append(softmax(logits))
    return y, runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=sum(LAB_TEST_SHARES))
    p.add_argument("--resamples", type=int, default=stats.N_BOOT)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    y, probs = made_up_runs(args.images)
    timings = {"intervals, 4 runs": [], "paired comparisons, 6 pairs": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for k, pr in enumerate(probs):
            stats.confidence_intervals(y, pr, n_boot=args.resamples, seed=k)
        timings["intervals, 4 runs"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # as Compare does it (comparison.all_pairs): each run resampled once
        counts = stats.Resamples.draw(y, args.resamples)
        resampled = [stats.resample(y, pr, counts) for pr in probs]
        for a, b in itertools.combinations(resampled, 2):
            stats.paired_from(a, b)
        timings["paired comparisons, 6 pairs"].append(time.perf_counter() - t0)
    print(f"{args.images:,} test images, {args.resamples:,} resamples, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, median of {args.repeats}")
    print("| work | seconds |\n|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {np.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
