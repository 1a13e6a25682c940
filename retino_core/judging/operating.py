"""Referable DR (grade >= 2): the operating point chosen on validation, the published screening
systems to compare with, and calibration before and after temperature scaling.

``of_run`` is the one place a run's operating point comes from: stored in ``summary.json`` at
the end of training, else chosen the same way from ``predictions.csv``. The threshold is trusted
only where validation can support it (``choose``); otherwise the run's operating point says
why and every door refers at ``decision.DEFAULT_THRESHOLD``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs
from ..config import NUM_CLASSES
from . import metrics
from .decision import DEFAULT_THRESHOLD, OperatingPoint

# The referable-DR operating point starts at this sensitivity, its threshold chosen on validation
# (the Evaluation page, the model card and the export use it).
TARGET_SENSITIVITY = 0.90


# Validation must hold at least this many referable and non-referable photos: with 30 referable,
# 27 of 30 found (90 %) has a 95 % Wilson interval of 74-97 %; with 20 it is 70-97 %, with 10
# 60-98 %, so one or two photos move the threshold (README, "The referral threshold").
MIN_PER_SIDE = 30


# A threshold that leaves validation specificity under this refers nearly everyone.
MIN_SPECIFICITY = 0.10


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


def _why_not(labels: np.ndarray, probs: np.ndarray, target: float) -> tuple[float | None, str]:
    """The threshold validation picks (None when it cannot) and why it is not to be trusted
    ("" when it is)."""
    referable = int(np.sum(labels >= metrics.REFERABLE_GRADE))
    other = len(labels) - referable
    counts = f"the validation split has {referable} referable (grade ≥ 2) and {other} other photos"
    if not referable or not other:
        return None, f"{counts}; both kinds are needed to choose a threshold"
    chosen = threshold_for_sensitivity(labels, probs, target)
    if referable < MIN_PER_SIDE or other < MIN_PER_SIDE:
        return chosen, f"{counts}; at least {MIN_PER_SIDE} of each are needed to choose a threshold"
    specificity = metrics.operating_point(labels, probs, chosen)["specificity"]
    if specificity < MIN_SPECIFICITY:
        return chosen, (f"the threshold that reaches {target:.0%} sensitivity on validation ({chosen:.3f}) leaves a "
                        f"specificity of {specificity:.1%} there: it would refer nearly everyone")
    return chosen, ""


def choose(val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray | None = None,
           test_probs: np.ndarray | None = None, target: float = TARGET_SENSITIVITY) -> OperatingPoint:
    """The operating point: the highest threshold on P(grade >= 2) that reaches ``target``
    sensitivity on validation, when validation supports it (MIN_PER_SIDE photos of each side,
    specificity at least MIN_SPECIFICITY there); otherwise DEFAULT_THRESHOLD and the reason.
    Sensitivity and specificity on validation and test are those of the threshold in force."""
    val_labels = np.asarray(val_labels)
    chosen, why = _why_not(val_labels, val_probs, target)
    threshold = chosen if not why else DEFAULT_THRESHOLD
    at = {"val": metrics.operating_point(val_labels, val_probs, threshold)}
    if test_labels is not None and len(test_labels):
        at["test"] = metrics.operating_point(np.asarray(test_labels), test_probs, threshold)
    referable = int(np.sum(val_labels >= metrics.REFERABLE_GRADE))
    return OperatingPoint(float(threshold), not why, why, target, chosen, referable, len(val_labels) - referable,
                          **{f"{split}_{k}": at[split][k] if split in at else None for split in ("val", "test")
                             for k in ("sensitivity", "specificity")})


def of_scores(scores: dict[str, SplitScores], temperature: float = 1.0,
              target: float = TARGET_SENSITIVITY) -> OperatingPoint:
    """``choose`` on a run's validation (and test) scores at ``temperature``."""
    val, test = scores.get("val"), scores.get("test")
    if val is None:
        return OperatingPoint(why="the run has no validation predictions with logits to choose a threshold on",
                              target_sensitivity=target)
    return choose(val.labels, val.probs(temperature), None if test is None else test.labels,
                  None if test is None else test.probs(temperature), target)


def _summary(run_dir: Path) -> dict:
    return runs.read_json(Path(run_dir) / "summary.json", {}) or {}


def calibration_helps(run_dir: Path, temperature: float | None) -> bool:
    """The rule every door grades by: calibrated probabilities unless temperature scaling made
    the run's test probabilities no better (``calibration_check``; no test split: calibrated)."""
    check = calibration_check(Path(run_dir), temperature)
    return check is None or bool(check["helps"])


def grades_calibrated(run_dir: Path, summary: dict | None = None) -> bool:
    """Whether every door divides this run's logits by its temperature (``calibration_helps``):
    stored in summary.json at the end of training, worked out from predictions.csv for older
    runs. ``summary``: the run's, when the caller has read it already."""
    summary = _summary(run_dir) if summary is None else summary
    if "grades_calibrated" in summary:
        return bool(summary["grades_calibrated"])
    return calibration_helps(run_dir, summary.get("temperature"))


def grading_temperature(run_dir: Path, calibrated: bool | None = None, summary: dict | None = None) -> float:
    """The temperature the run's probabilities are taken at (``calibrated`` None: as every door
    grades, ``grades_calibrated``)."""
    summary = _summary(run_dir) if summary is None else summary
    calibrated = grades_calibrated(run_dir, summary) if calibrated is None else calibrated
    return float(summary.get("temperature") or 1.0) if calibrated else 1.0


def of_run(run_dir: Path, calibrated: bool | None = None, summary: dict | None = None) -> OperatingPoint:
    """A run's operating point: the one stored in summary.json, else chosen from its
    predictions.csv as training would have. ``calibrated`` None: on the probabilities every door
    grades with (``grades_calibrated``); True / False: at the run's temperature / at 1."""
    summary = _summary(run_dir) if summary is None else summary
    stored = summary.get("operating_point")
    as_graded = grades_calibrated(run_dir, summary)
    calibrated = as_graded if calibrated is None else calibrated
    if calibrated == as_graded and isinstance(stored, dict) and "threshold" in stored:
        return OperatingPoint.from_dict(stored)
    return of_scores(load_scores(Path(run_dir)), grading_temperature(run_dir, calibrated, summary))


def of_runs(run_dirs: list[Path], calibrated: bool | None = None) -> OperatingPoint:
    """The operating point of an ensemble that averages the runs' probabilities (each at
    ``grading_temperature``), chosen the same way on their averaged validation probabilities
    (one run: ``of_run``)."""
    if len(run_dirs) == 1:
        return of_run(run_dirs[0], calibrated)
    splits: dict[str, list] = {}
    for run_dir in run_dirs:
        temperature = grading_temperature(run_dir, calibrated)
        for split, s in load_scores(Path(run_dir)).items():
            splits.setdefault(split, []).append((s, s.probs(temperature)))
    averaged = {}
    for split, members in splits.items():
        first = members[0][0]
        if len(members) != len(run_dirs) or any(s.names != first.names for s, _ in members):
            return OperatingPoint(why="the models were not validated on the same photos, so no threshold can be "
                                      "chosen for their average")
        averaged[split] = (first.labels, np.mean([p for _, p in members], axis=0))
    if "val" not in averaged:
        return OperatingPoint(why="the models have no validation predictions with logits to choose a threshold on")
    test = averaged.get("test", (None, None))
    return choose(*averaged["val"], *test)


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
