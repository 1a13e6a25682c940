"""How sure a number is, and whether two runs really differ: bootstrap and exact tests.

Everything is vectorised over resamples: a bootstrap is a (B, N) matrix of counts (how often
each test image is drawn into each resample), and every metric is computed for all B
resamples at once from it. Resampling is stratified by true grade (each resample keeps the
test set's grade counts), seeded, and paired when two runs are compared (the same resamples
score both). No torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..config import NUM_CLASSES, REFERABLE_GRADE

N_BOOT = 1000


LEVEL = 0.95


SEED = 0


CI_METRICS = ("acc", "auc", "qwk", "referable_auc")


METRIC_NAMES = {"acc": "accuracy", "auc": "macro AUC", "qwk": "QWK", "referable_auc": "referable-DR AUC"}


def bootstrap_counts(y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n_boot, N) draw counts of a bootstrap stratified by grade: each row sums to N and keeps
    every grade's count."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(y)), dtype=np.float32)
    for grade in np.unique(y):
        idx = np.flatnonzero(y == grade)
        n = len(idx)
        draws = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n  # row-offset draws
        counts[:, idx] = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts


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


def _qwk(confusion: np.ndarray) -> np.ndarray:
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


def resampled_metrics(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro AUC, QWK and referable-DR AUC under each row of counts ``w``: (B,) each."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1)
    n = w.sum(1)
    out = {"acc": (w @ (pred == y).astype(np.float32)) / n}
    cells = np.eye(NUM_CLASSES * NUM_CLASSES, dtype=np.float32)[y * NUM_CLASSES + pred]  # (N, 25)
    out["qwk"] = _qwk((w @ cells).reshape(-1, NUM_CLASSES, NUM_CLASSES).astype(np.float64))
    present = np.unique(y)
    referable = y >= REFERABLE_GRADE
    tasks = [(probs[:, c], y == c) for c in present] if len(present) > 1 else []
    if 0 < referable.sum() < len(y):
        tasks.append((probs[:, REFERABLE_GRADE:].sum(1), referable))
    # numpy leaves the GIL for these big array passes: the AUCs run on every core.
    with ThreadPoolExecutor(min(len(tasks), os.cpu_count() or 1) or 1) as pool:
        aucs = list(pool.map(lambda task: weighted_auc(task[0], task[1], w), tasks))
    nan = np.full(len(w), np.nan)
    out["auc"] = np.mean(aucs[:len(present)], axis=0) if len(present) > 1 else nan
    out["referable_auc"] = aucs[-1] if 0 < referable.sum() < len(y) else nan
    return out


def _interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def confidence_intervals(y: np.ndarray, probs: np.ndarray, prefix: str = "test_", n_boot: int = N_BOOT,
                         seed: int = SEED, level: float = LEVEL) -> dict:
    """95 % percentile intervals of the CI_METRICS by a stratified bootstrap over images:
    ``{"test_acc_ci": [lo, hi], ..., "test_ci_resamples": n_boot}``."""
    w = bootstrap_counts(y, n_boot, seed)
    found = resampled_metrics(y, probs, w)
    out: dict = {f"{prefix}{m}_ci": _interval(found[m], level) for m in CI_METRICS}
    out[f"{prefix}ci_resamples"] = n_boot
    return out


def mcnemar_exact(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers' accuracies on the same images (two-sided
    binomial test of the discordant pairs)."""
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    return {"only_a_right": only_a, "only_b_right": only_b, "p": _sign_test_p(only_a, only_a + only_b)}


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


def resample(y: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> dict:
    """One run's metrics under every resample (``boot``) and on the test set as it is (``point``):
    computed once per run, then paired with any other run scored under the same ``counts``."""
    whole = np.ones((1, len(y)), np.float32)
    return {"boot": resampled_metrics(y, probs, counts), "point": resampled_metrics(y, probs, whole),
            "right": np.asarray(probs).argmax(1) == np.asarray(y)}


def paired_from(a: dict, b: dict, level: float = LEVEL) -> dict:
    """A minus B from two ``resample`` results under the same counts."""
    n_boot = len(a["boot"]["acc"])
    out = {"n": int(len(a["right"])), "resamples": n_boot, "level": level, "metrics": {}}
    for m in CI_METRICS:
        diff = a["boot"][m] - b["boot"][m]
        pa, pb = float(a["point"][m][0]), float(b["point"][m][0])
        out["metrics"][m] = {"a": pa, "b": pb, "diff": pa - pb, "ci": _interval(diff, level),
                             # the share of resamples on the other side of zero, two-sided
                             "p_bootstrap": _bootstrap_p(diff)}
    out["mcnemar"] = mcnemar_exact(a["right"], b["right"])
    return out


def paired_comparison(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int = N_BOOT,
                      seed: int = SEED, level: float = LEVEL) -> dict:
    """A minus B on one test set: each metric's difference with a paired-bootstrap interval
    (the same resamples score both), and McNemar's exact test for accuracy."""
    counts = bootstrap_counts(y, n_boot, seed)
    return paired_from(resample(y, probs_a, counts), resample(y, probs_b, counts), level)


def _bootstrap_p(diff: np.ndarray) -> float | None:
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return None
    return float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))


def signed(x: float, scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * x + 0.0:+.{digits}f}"  # + 0.0: never '-0.0'


def verdict_sentence(name_a: str, name_b: str, result: dict, p_accuracy: float | None = None,
                     alpha: float = 0.05) -> str:
    """Plain words, the more accurate run first: 'B is more accurate than A by 0.7 points, 95 %
    CI -0.4 to +1.8: not a real difference on this test set (McNemar p = 0.21); QWK ...'.
    ``p_accuracy``: an adjusted p-value (Holm) to judge by instead of McNemar's own."""
    acc, qwk = result["metrics"]["acc"], result["metrics"]["qwk"]
    p = result["mcnemar"]["p"] if p_accuracy is None else p_accuracy
    sign = -1.0 if acc["diff"] < 0 else 1.0  # differences read as (the first named) minus (the second)
    first, second = (name_b, name_a) if sign < 0 else (name_a, name_b)

    def ci(m: dict, scale: float, digits: int) -> str:
        if m["ci"] is None:
            return "no interval"
        lo, hi = sorted((sign * m["ci"][0], sign * m["ci"][1]))
        return f"95 % CI {signed(lo, scale, digits)} to {signed(hi, scale, digits)}"

    if acc["diff"] == 0:
        head = f"{name_a} and {name_b} are equally accurate"
    else:
        head = f"{first} is more accurate than {second} by {abs(100 * acc['diff']):.1f} points"
    real = "a real difference" if p < alpha else "not a real difference"
    adjusted = "Holm-adjusted " if p_accuracy is not None else ""
    text = f"{head}, {ci(acc, 100, 1)}: {real} on this test set ({adjusted}McNemar p = {p:.3g})"
    if qwk["ci"] is not None:
        lo, hi = sorted((sign * qwk["ci"][0], sign * qwk["ci"][1]))
        qwk_real = "a real difference" if lo > 0 or hi < 0 else "not a real difference"
        text += f"; its QWK differs by {signed(sign * qwk['diff'], 1, 3)} ({ci(qwk, 1, 3)}, {qwk_real})"
    return text + "."
