"""Metrics over labels and probabilities: pure functions, scikit-learn where it has them.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import COLLAPSE_SHARE, NUM_CLASSES, REFERABLE_GRADE, TEMPERATURE_RANGE  # noqa: F401 - re-exported


def _sk():
    """scikit-learn's metrics, imported at first use: the import costs over a second of CPU, and
    most pages that import this module (for its charts' helpers) never compute a metric."""
    from sklearn import metrics as sk

    return sk


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro ROC AUC over the grades present in ``y`` (None if < 2 present)."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    aucs = [_sk().roc_auc_score(y == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def referable_scores(probs: np.ndarray) -> np.ndarray:
    """P(grade >= 2): summed probabilities of moderate, severe and proliferative."""
    return probs[:, REFERABLE_GRADE:].sum(axis=1)


def referable_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    ref = y >= REFERABLE_GRADE
    if ref.all() or not ref.any():
        return None
    return float(_sk().roc_auc_score(ref, referable_scores(probs)))


def referable_roc(y: np.ndarray, probs: np.ndarray) -> dict[str, list[float]]:
    """ROC curve of referable DR: false positive rate, true positive rate, thresholds."""
    ref = np.asarray(y) >= REFERABLE_GRADE
    if ref.all() or not ref.any():
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = roc_curve(ref, referable_scores(probs))
    thr = np.minimum(thr, 1.0)  # +inf first, as in scikit-learn
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ``roc_curve`` (with ``drop_intermediate``), point for point, in numpy: the
    Evaluation page draws it on opening, and importing scikit-learn costs most of a second there."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores, dtype=np.float64)[order], np.asarray(positive, dtype=bool)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last image of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    thresholds = s[last]
    if len(fps) > 2:  # drop points on a straight segment: they change nothing drawn
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps, thresholds = np.r_[0, tps], np.r_[0, fps], np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def operating_point(y: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Sensitivity, specificity, PPV, NPV and the 2x2 counts of 'refer if P(grade>=2) >= t'."""
    ref = np.asarray(y) >= REFERABLE_GRADE
    flag = referable_scores(probs) >= threshold
    tp, fp = int(np.sum(flag & ref)), int(np.sum(flag & ~ref))
    fn, tn = int(np.sum(~flag & ref)), int(np.sum(~flag & ~ref))

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def majority_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Accuracy on ``y_eval`` of always predicting the commonest grade of ``y_train``."""
    major = int(np.argmax(np.bincount(np.asarray(y_train), minlength=NUM_CLASSES)))
    return float(np.mean(np.asarray(y_eval) == major)) if len(y_eval) else 0.0


def collapse(pred: np.ndarray, share: float = COLLAPSE_SHARE) -> dict:
    """Whether >= ``share`` of the predictions fall in one grade (a collapsed model)."""
    counts = np.bincount(np.asarray(pred), minlength=NUM_CLASSES)
    top = int(np.argmax(counts))
    frac = float(counts[top] / max(len(pred), 1))
    return {"collapsed": frac >= share, "grade": top, "share": frac}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, list]:
    """Reliability diagram data: per confidence bin, mean confidence, accuracy and count."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float((pred[m] == y[m]).mean()) if m.any() else None)
        out["count"].append(int(m.sum()))
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true grades (NaN for no samples)."""
    y = np.asarray(y)
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """Temperature that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y)

    def objective(log_t: float) -> float:
        return nll(y, softmax(logits, math.exp(log_t)))

    res = minimize_scalar(objective, bounds=(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])), method="bounded")
    return float(math.exp(res.x))


def classification_metrics(y: np.ndarray, probs: np.ndarray, prefix: str = "") -> dict:
    """Accuracy, QWK, macro-F1, AUCs, confusion and per-grade P/R/F1, keys ``<prefix>acc`` etc."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1)
    labels = list(range(NUM_CLASSES))
    prec, rec, f1, support = _sk().precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    qwk = _sk().cohen_kappa_score(y, pred, labels=labels, weights="quadratic") if len(y) else float("nan")
    col = collapse(pred)
    out = {
        "acc": float(_sk().accuracy_score(y, pred)) if len(y) else None,
        "qwk": _nan_to_none(float(qwk)),
        "macro_f1": float(_sk().f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auc": macro_auc(y, probs),
        "referable_auc": referable_auc(y, probs),
        "confusion": _sk().confusion_matrix(y, pred, labels=labels).tolist(),
        "precision": prec.tolist(),
        "recall": rec.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "collapsed": col["collapsed"],
        "collapse_grade": col["grade"],
        "collapse_share": col["share"],
        "n": int(len(y)),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}
