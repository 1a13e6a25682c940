"""How sure a number is, and whether two runs really differ: intervals and exact tests.

Accuracy, a proportion, gets Wilson's score interval (Wilson 1927): its width never collapses,
not for a model that answers one grade for every photo nor for one that is always right. The
other metrics get a seeded percentile bootstrap over the test images, vectorised over
resamples: a bootstrap is a (B, N) matrix of counts (how often each test image is drawn into
each resample), and every metric is computed for all B resamples at once from it.

Resampling is over images (each resample draws N images from all N), so a resample's grade
counts vary as they would on another test set; only the AUCs, which need every grade present,
draw each grade's images from that grade (stratified). Two runs are compared paired: the same
resamples score both. Every interval holds its own point estimate. No torch.
"""

from __future__ import annotations

import math
import os
from statistics import NormalDist
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import NUM_CLASSES, REFERABLE_GRADE

N_BOOT = 1000


LEVEL = 0.95


SEED = 0


CI_METRICS = ("acc", "auc", "qwk", "referable_auc")


METRIC_NAMES = {"acc": "accuracy", "auc": "macro AUC", "qwk": "QWK", "referable_auc": "referable-DR AUC"}


# Stored with the intervals (summary.json ``test_ci_method``): intervals of another method,
# written by an older version, are computed again when read (comparison.intervals).
CI_METHOD = ("accuracy: Wilson score interval; QWK: bootstrap over images; "
             "macro and referable-DR AUC: bootstrap stratified by grade")


# Two runs on the same images: the accuracy difference gets Tango's score interval for paired
# proportions, which keeps its width when the runs agree on every image; the rest as above.
PAIRED_METHOD = ("accuracy difference: Tango's score interval for paired proportions; QWK: paired bootstrap "
                 "over images; AUCs: paired bootstrap stratified by grade; McNemar's exact test")


# The metrics whose resamples draw each grade's images from that grade: they need every grade.
STRATIFIED = ("auc", "referable_auc")


P_FLOOR = 0.001  # a smaller p-value is written "< 0.001"


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n; (0, 1) when n is 0. It holds k / n exactly."""
    if n <= 0:
        return (0.0, 1.0)
    z, p = _z(level), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (min(max(0.0, centre - half), p), max(min(1.0, centre + half), p))


def _z(level: float) -> float:
    # The standard library's normal quantile (scipy.stats would add most of a second to a page's first open).
    return NormalDist().inv_cdf(0.5 + level / 2)


def paired_accuracy_interval(only_a: int, only_b: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Tango's score interval (Stat Med 1998;17:891-908) for A's accuracy minus B's on the same n
    images, from the images only A gets right and only B gets right. Runs that agree on every
    image get about +-z^2 / (n + z^2), not zero width. It holds the difference exactly."""
    if n <= 0:
        return (-1.0, 1.0)
    from scipy.optimize import brentq

    z, b, c = _z(level), float(only_a), float(only_b)
    diff = (b - c) / n

    def score(delta: float) -> float:
        # The restricted maximum-likelihood share of 'only B right' under A - B = delta.
        w = b * (1 + delta) + c * (1 - delta) - 2 * n * delta
        q = (w + math.sqrt(max(w * w + 8 * n * c * delta * (1 - delta), 0.0))) / (4 * n)
        var = n * (2 * q + delta - delta * delta)
        gap = b - c - n * delta
        return gap / math.sqrt(var) if var > 0 else math.copysign(math.inf, gap) if gap else 0.0

    edge = 1 - 1e-12
    lo = -1.0 if score(-edge) <= z else brentq(lambda d: score(d) - z, -edge, diff)
    hi = 1.0 if score(edge) >= -z else brentq(lambda d: score(d) + z, diff, edge)
    return (min(lo, diff), max(hi, diff))


def bootstrap_counts(y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, stratify: bool = False) -> np.ndarray:
    """(n_boot, N) draw counts; each row sums to N. Plain: each resample draws N images from all
    N with replacement. ``stratify``: each grade's images are drawn from that grade, so every row
    keeps every grade's count."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == grade) for grade in np.unique(y)] if stratify else [np.arange(len(y))]
    counts = np.zeros((n_boot, len(y)), dtype=np.float32)
    for idx in groups:
        n = len(idx)
        draws = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n  # row-offset draws
        counts[:, idx] = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts


@dataclass
class Resamples:
    """The two sets of resamples of one test set: over images, and stratified by grade (the AUCs)."""

    images: np.ndarray
    by_grade: np.ndarray

    @classmethod
    def draw(cls, y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> "Resamples":
        return cls(bootstrap_counts(y, n_boot, seed), bootstrap_counts(y, n_boot, seed + 1, stratify=True))

    @classmethod
    def whole(cls, n: int) -> "Resamples":
        """The test set as it is: one 'resample' holding every image once."""
        ones = np.ones((1, n), np.float32)
        return cls(ones, ones)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for ``positive`` under each row of weights ``w`` (B, N); ties
    count one half, as in the Mann-Whitney statistic."""
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    ws = w[:, order]
    wp = ws * pos
    # Negative weight strictly below each image (counts stay exact in float32).
    below = np.cumsum(ws * ~pos, axis=1, dtype=np.float32)
    if np.all(s[1:] != s[:-1]):  # no ties: 'below' excludes the image itself, a positive
        num = (wp * below).sum(1, dtype=np.float64)
    else:
        cum = np.concatenate([np.zeros((len(w), 1), np.float32), below], axis=1)
        _, start, size = np.unique(s, return_index=True, return_counts=True)
        first = np.repeat(start, size)
        last = first + np.repeat(size, size)
        num = (wp * (cum[:, first] + 0.5 * (cum[:, last] - cum[:, first]))).sum(1, dtype=np.float64)
    den = wp.sum(1, dtype=np.float64) * (ws.sum(1, dtype=np.float64) - wp.sum(1, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def qwk_of(confusion: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of (B, K, K) weighted confusion matrices."""
    k = confusion.shape[-1]
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    total = confusion.sum((1, 2), keepdims=True)
    expected = confusion.sum(2, keepdims=True) * confusion.sum(1, keepdims=True) / total
    observed = (weights * confusion).sum((1, 2))
    chance = (weights * expected).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance > 0, 1 - observed / chance, np.nan)


def resampled_metrics(y: np.ndarray, probs: np.ndarray, w: Resamples,
                      which: tuple[str, ...] = CI_METRICS, pred: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ``which`` of accuracy, macro AUC, QWK and referable-DR AUC under each resample: (B,) each.
    Accuracy and QWK are computed over ``w.images``, the AUCs over ``w.by_grade``; accuracy and QWK
    score ``pred``, the grades given (default: the most probable ones)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1) if pred is None else np.asarray(pred, dtype=np.int64)
    # Counts are whole numbers, exact in float32; the division is in float64 so that a resample
    # equal to the test set gives exactly the stored accuracy (0.435, not 0.4350000023841858).
    n = w.images.sum(1, dtype=np.float64)
    out = {}
    if "acc" in which:
        out["acc"] = (w.images @ (pred == y).astype(np.float32)).astype(np.float64) / n
    if "qwk" in which:
        cells = np.eye(NUM_CLASSES * NUM_CLASSES, dtype=np.float32)[y * NUM_CLASSES + pred]  # (N, 25)
        out["qwk"] = qwk_of((w.images @ cells).reshape(-1, NUM_CLASSES, NUM_CLASSES).astype(np.float64))
    if any(m in which for m in STRATIFIED):
        out.update(_resampled_aucs(y, probs, w.by_grade, which))
    return out


def _resampled_aucs(y: np.ndarray, probs: np.ndarray, w: np.ndarray, which: tuple[str, ...]) -> dict:
    present = np.unique(y)
    referable = y >= REFERABLE_GRADE
    tasks = [(probs[:, c], y == c) for c in present] if "auc" in which and len(present) > 1 else []
    n_macro = len(tasks)
    both_kinds = "referable_auc" in which and 0 < referable.sum() < len(y)
    if both_kinds:
        tasks.append((probs[:, REFERABLE_GRADE:].sum(1), referable))
    # numpy leaves the GIL for these big array passes: the AUCs run on every core.
    with ThreadPoolExecutor(min(len(tasks), os.cpu_count() or 1) or 1) as pool:
        aucs = list(pool.map(lambda task: weighted_auc(task[0], task[1], w), tasks))
    nan = np.full(len(w), np.nan)
    out = {}
    if "auc" in which:
        out["auc"] = np.mean(aucs[:n_macro], axis=0) if n_macro else nan
    if "referable_auc" in which:
        out["referable_auc"] = aucs[-1] if both_kinds else nan
    return out


def _interval(values: np.ndarray, point: float | None = None, level: float = LEVEL) -> list[float] | None:
    """The percentile interval of ``values``, widened where needed to hold ``point``."""
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    return hold([float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))], point)


def hold(ci: list[float] | None, point: float | None) -> list[float] | None:
    """``ci`` widened, where needed, to hold ``point`` exactly (a stored float is never outside)."""
    if ci is None or point is None or not np.isfinite(point):
        return ci
    return [min(ci[0], float(point)), max(ci[1], float(point))]


def confidence_intervals(y: np.ndarray, probs: np.ndarray, prefix: str = "test_", n_boot: int = N_BOOT,
                         seed: int = SEED, level: float = LEVEL, points: dict | None = None,
                         pred: np.ndarray | None = None) -> dict:
    """95 % intervals of the CI_METRICS (see CI_METHOD): ``{"test_acc_ci": [lo, hi], ...,
    "test_ci_resamples": n_boot, "test_ci_method": CI_METHOD}``. ``points``: the metric values as
    stored elsewhere (``{"auc": 0.71}``), which each interval is made to hold as well."""
    y = np.asarray(y)
    point = {m: v[0] for m, v in resampled_metrics(y, probs, Resamples.whole(len(y)), pred=pred).items()}
    found = resampled_metrics(y, probs, Resamples.draw(y, n_boot, seed), ("auc", "qwk", "referable_auc"), pred)
    right = int(np.sum((np.asarray(probs).argmax(1) if pred is None else np.asarray(pred)) == y))
    out: dict = {f"{prefix}acc_ci": hold(list(wilson_interval(right, len(y), level)), (points or {}).get("acc"))}
    for m, values in found.items():
        out[f"{prefix}{m}_ci"] = hold(_interval(values, point[m], level), (points or {}).get(m))
    out[f"{prefix}ci_resamples"] = n_boot
    out[f"{prefix}ci_method"] = CI_METHOD
    return out


def mcnemar_exact(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers' accuracies on the same images (two-sided
    binomial test of the discordant pairs)."""
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    # Thousands of discordant images underflow the binomial tail to 0.0: keep the smallest float.
    p = max(_sign_test_p(only_a, only_a + only_b), np.finfo(float).tiny)
    return {"only_a_right": only_a, "only_b_right": only_b, "p": p}


def _sign_test_p(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of k successes in n at p = 1/2, in exact integers (what
    scipy's binomtest gives; scipy.stats alone takes most of a second to import)."""
    if n == 0:
        return 1.0
    tail, comb = 0, 1
    for i in range(min(k, n - k) + 1):  # the symmetric distribution: twice the smaller tail
        tail += comb
        comb = comb * (n - i) // (i + 1)
    return min(1.0, 2 * tail / (1 << n))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def resample(y: np.ndarray, probs: np.ndarray, counts: Resamples, which: tuple[str, ...] = CI_METRICS) -> dict:
    """One run's metrics under every resample (``boot``) and on the test set as it is (``point``):
    computed once per run, then paired with any other run scored under the same ``counts``."""
    return {"boot": resampled_metrics(y, probs, counts, which),
            "point": resampled_metrics(y, probs, Resamples.whole(len(y)), which),
            "right": np.asarray(probs).argmax(1) == np.asarray(y)}


def paired_from(a: dict, b: dict, level: float = LEVEL) -> dict:
    """A minus B from two ``resample`` results under the same counts. Each difference's interval
    holds the difference itself; ``p_bootstrap`` is never 0: when no resample crosses zero it is
    the bound 2 / resamples, with ``p_bootstrap_bound`` "<"."""
    n_boot = len(next(iter(a["boot"].values())))
    out = {"n": int(len(a["right"])), "resamples": n_boot, "level": level, "metrics": {}}
    for m in a["boot"]:
        diff = a["boot"][m] - b["boot"][m]
        pa, pb = float(a["point"][m][0]), float(b["point"][m][0])
        p, bound = _bootstrap_p(diff)
        out["metrics"][m] = {"a": pa, "b": pb, "diff": pa - pb, "ci": _interval(diff, pa - pb, level),
                             # the share of resamples on the other side of zero, two-sided
                             "p_bootstrap": p, "p_bootstrap_bound": bound, "p_bootstrap_resamples": n_boot}
    out["mcnemar"] = mc = mcnemar_exact(a["right"], b["right"])
    if "acc" in out["metrics"]:
        acc = out["metrics"]["acc"]
        acc["ci"] = list(paired_accuracy_interval(mc["only_a_right"], mc["only_b_right"], out["n"], level))
        acc["diff"] = (mc["only_a_right"] - mc["only_b_right"]) / out["n"]  # exactly the interval's centre
    out["method"] = PAIRED_METHOD
    return out


def paired_comparison(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int = N_BOOT,
                      seed: int = SEED, level: float = LEVEL, which: tuple[str, ...] = CI_METRICS) -> dict:
    """A minus B on one test set: each metric's difference with a paired-bootstrap interval
    (the same resamples score both), and McNemar's exact test for accuracy."""
    counts = Resamples.draw(y, n_boot, seed)
    return paired_from(resample(y, probs_a, counts, which), resample(y, probs_b, counts, which), level)


def _bootstrap_p(diff: np.ndarray) -> tuple[float | None, str | None]:
    """Two-sided bootstrap p-value and "=", or its upper bound and "<" when no resample crosses zero."""
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return None, None
    p = float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))
    return (p, "=") if p > 0 else (min(1.0, 2 / len(diff)), "<")


def p_text(p: float | None, bound: str | None = "=") -> str:
    """A p-value with its relation, never '0': '= 0.21', '< 0.001', '< 0.002' (a bound)."""
    if p is None:
        return "not computed"
    if bound == "<":
        return f"< {p:.2g}"
    return f"< {P_FLOOR:g}" if p < P_FLOOR else f"= {p:.2g}"


def signed(x: float, scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * x + 0.0:+.{digits}f}"  # + 0.0: never '-0.0'


def verdict_sentence(name_a: str, name_b: str, result: dict, p_accuracy: float | None = None,
                     alpha: float = 0.05) -> str:
    """Plain words, the more accurate run first: 'B is more accurate than A by 0.7 points, 95 %
    CI -0.4 to +1.8: not a real difference on this test set (McNemar p = 0.21); QWK ...'.
    ``p_accuracy``: an adjusted p-value (Holm) to judge by instead of McNemar's own."""
    acc, qwk, mc = result["metrics"]["acc"], result["metrics"].get("qwk"), result["mcnemar"]
    p = mc["p"] if p_accuracy is None else p_accuracy
    sign = -1.0 if acc["diff"] < 0 else 1.0  # differences read as (the first named) minus (the second)
    first, second = (name_b, name_a) if sign < 0 else (name_a, name_b)

    def ci(m: dict, scale: float, digits: int) -> str:
        if m["ci"] is None:
            return "no interval"
        lo, hi = sorted((sign * m["ci"][0], sign * m["ci"][1]))
        return f"95 % CI {signed(lo, scale, digits)} to {signed(hi, scale, digits)}"

    if mc["only_a_right"] + mc["only_b_right"] == 0:
        return (f"{name_a} and {name_b} are equally accurate: they get exactly the same of the {result['n']:,} test "
                f"images right ({ci(acc, 100, 1)}: on other photos like these they could still differ that much).")
    if acc["diff"] == 0:
        head = f"{name_a} and {name_b} are equally accurate"
    else:
        head = f"{first} is more accurate than {second} by {abs(100 * acc['diff']):.1f} points"
    real = "a real difference" if p < alpha else "not a real difference"
    adjusted = "Holm-adjusted " if p_accuracy is not None else ""
    text = f"{head}, {ci(acc, 100, 1)}: {real} on this test set ({adjusted}McNemar p {p_text(p)})"
    if qwk is not None and qwk["ci"] is not None:
        lo, hi = sorted((sign * qwk["ci"][0], sign * qwk["ci"][1]))
        qwk_real = "a real difference" if lo > 0 or hi < 0 else "not a real difference"
        text += f"; its QWK differs by {signed(sign * qwk['diff'], 1, 3)} ({ci(qwk, 1, 3)}, {qwk_real})"
    return text + "."
