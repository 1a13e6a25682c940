"""Clinical evaluation of a finished run: referable DR, operating points, calibration.

Reads ``predictions.csv`` (logits of the validation and test images) so it needs no torch.
Every choice — temperature, a threshold for a target sensitivity — is made on validation and
only then applied to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from . import metrics, runs
from .config import NUM_CLASSES


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
    """Validation and test logits from predictions.csv; empty when the run has none."""
    df = runs.read_predictions(run_dir)
    if df is None:
        return {}
    out = {}
    for split, part in df.groupby("split", sort=False):
        logits = part[[f"logit{c}" for c in range(NUM_CLASSES)]].to_numpy(dtype=np.float64)
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


# ---------------------------------------------------------------- figures


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0), height=height, template="plotly_white",
                      margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))
    return fig


def referable_roc_figure(curves: dict[str, dict], point: dict | None = None) -> go.Figure:
    """ROC of referable DR (sensitivity vs 1 - specificity) per curve, the chosen point and
    the published reference points."""
    fig = go.Figure()
    for name, roc in curves.items():
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=name,
                                 customdata=roc["thresholds"],
                                 hovertemplate="1-spec %{x:.3f}<br>sens %{y:.3f}<br>threshold %{customdata:.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"))
    for ref in REFERENCE_POINTS:
        fig.add_trace(go.Scatter(x=[1 - ref.specificity], y=[ref.sensitivity], mode="markers", name=ref.label,
                                 marker=dict(symbol="diamond", size=11),
                                 hovertemplate=f"{ref.label}<br>sens {ref.sensitivity:.1%} spec {ref.specificity:.1%}"
                                               f"<br>{ref.source}<extra></extra>"))
    if point and point.get("sensitivity") is not None and point.get("specificity") is not None:
        fig.add_trace(go.Scatter(x=[1 - point["specificity"]], y=[point["sensitivity"]], mode="markers",
                                 name=f"threshold {point['threshold']:.2f}",
                                 marker=dict(symbol="x", size=14, color="black")))
    fig.update_xaxes(title="1 - specificity", range=[-0.01, 1.01])
    fig.update_yaxes(title="sensitivity", range=[-0.01, 1.01])
    return _layout(fig, "Referable DR (grade ≥ 2): ROC")


def reliability_figure(labels: np.ndarray, probs_by_name: dict[str, np.ndarray], bins: int = 10) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per calibration."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"))
    for name, probs in probs_by_name.items():
        rel = metrics.reliability(labels, probs, bins)
        keep = [i for i, c in enumerate(rel["count"]) if c]
        fig.add_trace(go.Scatter(
            x=[rel["confidence"][i] for i in keep], y=[rel["accuracy"][i] for i in keep],
            mode="lines+markers", name=f"{name} (ECE {metrics.expected_calibration_error(labels, probs):.3f})",
            customdata=[rel["count"][i] for i in keep],
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images"))
    fig.update_xaxes(title="mean confidence of the top grade", range=[0, 1])
    fig.update_yaxes(title="accuracy", range=[0, 1])
    return _layout(fig, "Calibration: reliability diagram")
