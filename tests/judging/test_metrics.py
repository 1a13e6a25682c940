"""Metric functions against hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from retino_core.judging import metrics


def one_hot(pred, n=5, p=0.9):
    out = np.full((len(pred), n), (1 - p) / (n - 1))
    out[np.arange(len(pred)), pred] = p
    return out


def test_all_no_dr_model_is_flagged_collapsed_and_scores_the_majority_share():
    y = np.array([0] * 73 + [1] * 5 + [2] * 15 + [3] * 4 + [4] * 3)
    probs = one_hot(np.zeros(100, int))
    m = metrics.classification_metrics(y, probs, prefix="test_")
    assert m["test_acc"] == pytest.approx(0.73)
    assert m["test_acc"] == pytest.approx(metrics.majority_baseline(y, y))
    assert m["test_collapsed"] and m["test_collapse_grade"] == 0 and m["test_collapse_share"] == 1.0
    assert m["test_qwk"] == pytest.approx(0.0)
    assert m["test_recall"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert m["test_confusion"][0][0] == 73 and m["test_confusion"][2][0] == 15


def test_perfect_model():
    y = np.arange(5).repeat(4)
    m = metrics.classification_metrics(y, one_hot(y))
    assert m["acc"] == 1.0 and m["qwk"] == pytest.approx(1.0) and m["auc"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0) and m["referable_auc"] == pytest.approx(1.0)
    assert not m["collapsed"]


def test_qwk_penalises_far_errors_more():
    y = np.array([0, 1, 2, 3, 4] * 4)
    near = metrics.classification_metrics(y, one_hot(np.clip(y + 1, 0, 4)))["qwk"]
    far = metrics.classification_metrics(y, one_hot(4 - y))["qwk"]
    assert near > far


def test_referable_operating_point_counts():
    y = np.array([0, 0, 1, 2, 3, 4])
    probs = one_hot(np.array([0, 2, 0, 2, 0, 4]))
    op = metrics.operating_point(y, probs, 0.5)
    assert (op["tp"], op["fn"], op["fp"], op["tn"]) == (2, 1, 1, 2)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == pytest.approx(2 / 3)
    roc = metrics.referable_roc(y, probs)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    logits = rng.normal(size=(2000, 5))
    logits[np.arange(2000), y] += 1.0
    logits *= 6.0  # overconfident
    t = metrics.fit_temperature(y, logits)
    assert t > 2.0
    before = metrics.expected_calibration_error(y, metrics.softmax(logits))
    after = metrics.expected_calibration_error(y, metrics.softmax(logits, t))
    assert after < before / 2
    rel = metrics.reliability(y, metrics.softmax(logits, t))
    assert sum(rel["count"]) == 2000


def test_auc_with_missing_grades_uses_the_present_ones():
    y = np.array([0, 0, 2, 2])
    probs = one_hot(np.array([0, 0, 2, 2]))
    assert metrics.macro_auc(y, probs) == pytest.approx(1.0)
    assert metrics.macro_auc(np.zeros(3, int), probs[:3]) is None


def test_the_roc_curve_is_scikit_learns_point_for_point():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    for n in (3, 40, 700):
        for digits in (None, 1):  # distinct scores, and many ties
            y = rng.random(n) < 0.3
            y[:2] = True, False
            scores = rng.random(n) if digits is None else np.round(rng.random(n), digits)
            for ours, theirs in zip(metrics.roc_curve(y, scores), roc_curve(y, scores)):
                np.testing.assert_array_equal(ours, theirs)
