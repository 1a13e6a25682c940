"""Referable DR (grade >= 2): the operating point chosen on validation, the published screening
systems to compare with, and calibration before and after temperature scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs
from ..config import NUM_CLASSES
from . import metrics

# The referable-DR operating point starts at this sensitivity, its threshold chosen on validation
# (the Evaluation page, the model card and the export use it).
TARGET_SENSITIVITY = 0.90


@dataclass(frozen=True)
class ReferencePoint:
    """A published screening system's operating point for referable DR (for orientation only)."""

    label: str
    sensitivity: float
    specificity: float
    source: str


# Different populations, cameras and reference standards: context, not a like-for-like target.
REFERENCE_POINTS = (
    ReferencePoint("Gulshan 2016, high-specificity", 0.903, 0.981,
                   "Gulshan et al., JAMA 2016;316(22):2402-2410, EyePACS-1"),
    ReferencePoint("Gulshan 2016, high-sensitivity", 0.975, 0.934,
                   "Gulshan et al., JAMA 2016;316(22):2402-2410, EyePACS-1"),
    ReferencePoint("IDx-DR pivotal trial", 0.872, 0.907,
                   "Abramoff et al., npj Digital Medicine 2018;1:39"),
)


@dataclass
class SplitScores:
    """Labels and logits of one split, with the probabilities at a temperature."""

    labels: np.ndarray
    logits: np.ndarray
    names: list[str]

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        return metrics.softmax(self.logits, temperature)


def load_scores(run_dir: Path) -> dict[str, SplitScores]:
    """Validation and test logits from predictions.csv; empty when the run has none. A file
    without logits gives log-probabilities instead, which differ from the logits by a constant
    per image: every temperature scales them to the same probabilities."""
    df = runs.read_predictions(run_dir)
    if df is None:
        return {}
    out = {}
    columns = [f"logit{c}" for c in range(NUM_CLASSES)]
    for split, part in df.groupby("split", sort=False):
        if set(columns) <= set(part.columns):
            logits = part[columns].to_numpy(dtype=np.float64)
        else:
            logits = np.log(np.clip(part[[f"p{c}" for c in range(NUM_CLASSES)]].to_numpy(dtype=np.float64), 1e-12, 1))
        out[str(split)] = SplitScores(part["label"].to_numpy(dtype=np.int64), logits, part["name"].astype(str).tolist())
    return out


def threshold_for_sensitivity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The highest threshold on P(grade >= 2) whose sensitivity reaches ``target``."""
    roc = metrics.referable_roc(labels, probs)
    for thr, tpr in zip(roc["thresholds"], roc["tpr"]):
        if tpr >= target:
            return float(thr)
    return 0.0


def calibration_table(scores: dict[str, SplitScores], temperature: float) -> list[dict]:
    """ECE and NLL before and after temperature scaling, per split."""
    rows = []
    for split, s in scores.items():
        for label, t in (("uncalibrated", 1.0), (f"T = {temperature:.2f}", temperature)):
            p = s.probs(t)
            rows.append({"split": split, "probabilities": label, "ECE": metrics.expected_calibration_error(s.labels, p),
                         "NLL": metrics.nll(s.labels, p), "accuracy": float(np.mean(p.argmax(1) == s.labels))})
    return rows


def calibration_check(run_dir: Path, temperature: float | None) -> dict | None:
    """Whether temperature scaling improved the test probabilities (lower NLL *and* lower ECE),
    on how many validation images the temperature was fitted, and one sentence that says so.
    Where it did not improve them, Classify and Evaluation show the uncalibrated probabilities
    by default. None without test predictions."""
    from .trust import shown_against

    scores = load_scores(Path(run_dir))
    test, val = scores.get("test"), scores.get("val")
    if test is None:
        return None
    t = float(temperature or 1.0)
    nll = [metrics.nll(test.labels, test.probs(x)) for x in (1.0, t)]
    ece = [metrics.expected_calibration_error(test.labels, test.probs(x)) for x in (1.0, t)]
    n_val = 0 if val is None else len(val.labels)
    helps = t != 1.0 and nll[1] < nll[0] and ece[1] < ece[0]
    change = (f"NLL {nll[0]:.3f} → {shown_against(nll[1], nll[0], 3)}, "
              f"ECE {ece[0]:.3f} → {shown_against(ece[1], ece[0], 3)}")
    if t == 1.0:
        sentence = "No temperature was fitted (no validation split): the probabilities are the model's own."
    elif helps:
        sentence = f"Temperature {t:.2f}, fitted on {n_val:,} validation images, improves the test probabilities: {change}."
    else:
        worse = " and ".join(w for w, (a, b) in (("NLL", nll), ("ECE", ece)) if not b < a)
        sentence = (f"Temperature scaling (T = {t:.2f}, fitted on {n_val:,} validation images) does not improve the "
                    f"test {worse}: {change}.")
    return {"temperature": t, "val_images": n_val, "helps": helps, "test_nll": nll, "test_ece": ece,
            "sentence": sentence}
