"""Each trust rule on crafted confusion matrices (rows: true grade, columns: predicted)."""

from __future__ import annotations

import numpy as np
import pytest

from retino_core.judging import trust
from retino_core.judging.metrics import classification_metrics, majority_baseline


def summary_of(confusion, auc=0.8, qwk=0.6, temperature=1.3, val_acc=0.6, majority=None) -> dict:
    m = np.asarray(confusion)
    true_share = m.sum(1) / m.sum()
    return {"test_confusion": m.tolist(), "test_auc": auc, "test_qwk": qwk, "temperature": temperature,
            "val_acc": val_acc, "test_majority_acc": float(true_share.max()) if majority is None else majority}


# 400 images with RetinaMNIST's test shares: 174 / 46 / 92 / 68 / 20.
GOOD = [[140, 10, 20, 4, 0],
        [20, 10, 12, 4, 0],
        [20, 6, 50, 14, 2],
        [6, 2, 20, 36, 4],
        [2, 0, 4, 8, 6]]


def test_a_model_well_above_the_baseline_is_usable():
    verdict = trust.assess(summary_of(GOOD))
    assert verdict["verdict"] == "usable" and verdict["reasons"] == []
    assert verdict["checks"]["p_above_baseline"] < 1e-6
    lo, hi = verdict["checks"]["acc_ci"]
    assert lo < 242 / 400 < hi
    assert "60.5 %" in verdict["basis"] and "43.5 %" in verdict["basis"]


def test_a_constant_model_is_no_better_than_guessing():
    constant = [[174, 0, 0, 0, 0], [46, 0, 0, 0, 0], [92, 0, 0, 0, 0], [68, 0, 0, 0, 0], [20, 0, 0, 0, 0]]
    verdict = trust.assess(summary_of(constant, auc=0.5, qwk=0.0))
    assert verdict["verdict"] == trust.GUESSING
    assert any("collapsed onto one grade" in r for r in verdict["reasons"])
    assert any("not above always answering" in r for r in verdict["reasons"])


def test_the_lab_reports_scratch_models_are_caught_from_their_metrics():
    """Always 'No DR' on the lab's 7,026 test images: accuracy 0.733 = the grade-0 share."""
    y = np.repeat(np.arange(5), [5153, 488, 1082, 175, 128])
    probs = np.tile([0.7, 0.1, 0.1, 0.05, 0.05], (len(y), 1))
    s = classification_metrics(y, probs, "test_")
    s["test_majority_acc"] = majority_baseline(y, y)
    assert trust.assess(s)["verdict"] == trust.GUESSING


def test_near_collapse_counts_even_below_the_collapse_flag():
    """89.5 % predicted grade 0 while 46.7 % are grade 0, accuracy under the baseline."""
    near = [[150, 20, 17, 0, 0],   # 187 true grade 0 of 400 (46.75 %)
            [66, 2, 0, 0, 0],
            [75, 0, 1, 0, 0],
            [49, 0, 0, 1, 0],
            [18, 0, 0, 0, 1]]
    m = np.asarray(near)
    assert m[:, 0].sum() / m.sum() == pytest.approx(0.895) and m[0].sum() / m.sum() == pytest.approx(0.4675)
    verdict = trust.assess(summary_of(near, auc=0.62, qwk=0.35))
    assert verdict["verdict"] == trust.GUESSING  # not above the baseline, and nearly collapsed
    assert any("nearly collapsed" in r and "89.5 %" in r and "46.8 %" in r for r in verdict["reasons"])
    # With accuracy clearly above the baseline the same over-use of a grade makes it weak.
    assert trust.near_collapse(near)["grade"] == 0


def test_a_grade_over_predicted_from_a_small_share_is_near_collapse():
    """75.7 % of answers grade 1, a grade that is 11.5 % of the images."""
    m = np.zeros((5, 5), int)
    m[0] = [40, 134, 0, 0, 0]
    m[1] = [0, 46, 0, 0, 0]
    m[2] = [0, 70, 22, 0, 0]
    m[3] = [0, 50, 0, 18, 0]
    m[4] = [0, 3, 0, 0, 17]
    assert m[:, 1].sum() / m.sum() == pytest.approx(0.7575)
    found = trust.near_collapse(m)
    assert found["grade"] == 1
    assert trust.assess(summary_of(m, auc=0.75, qwk=0.5))["verdict"] == trust.GUESSING


def test_accuracy_below_the_baseline_with_real_agreement_is_weak_not_guessing():
    """Class weighting: accuracy under the majority share, but the grades are ordered (QWK 0.48)."""
    below = [[80, 50, 40, 4, 0],
             [12, 16, 14, 4, 0],
             [14, 14, 40, 20, 4],
             [4, 2, 16, 30, 16],
             [0, 0, 2, 10, 8]]
    verdict = trust.assess(summary_of(below, auc=0.74, qwk=0.48))
    assert verdict["verdict"] == trust.WEAK
    assert any("not above always answering" in r for r in verdict["reasons"])


@pytest.mark.parametrize("auc, qwk, verdict, words", [
    (0.52, 0.6, trust.GUESSING, "at chance level"),
    (0.65, 0.6, trust.WEAK, "ranks the grades poorly"),
    (0.8, 0.3, trust.WEAK, "0.30 (under 0.40): fair agreement with the graders"),
    (0.8, 0.0, trust.WEAK, "no agreement beyond chance"),
    (0.8, None, trust.WEAK, "undefined"),
])
def test_auc_and_qwk_rules(auc, qwk, verdict, words):
    found = trust.assess(summary_of(GOOD, auc=auc, qwk=qwk))
    assert found["verdict"] == verdict and any(words in r for r in found["reasons"])


def test_a_temperature_at_its_range_limit_is_a_reason():
    high = trust.assess(summary_of(GOOD, temperature=19.9999))
    assert high["verdict"] == trust.WEAK and any("could not be calibrated" in r for r in high["reasons"])
    assert trust.assess(summary_of(GOOD, temperature=0.05, val_acc=0.6))["verdict"] == trust.WEAK
    # A model right on every validation image sharpens to the low limit: no failure.
    assert trust.assess(summary_of(GOOD, temperature=0.05, val_acc=1.0))["verdict"] == trust.USABLE


def test_a_tiny_test_set_is_a_reason():
    small = (np.asarray(GOOD) // 10).tolist()
    found = trust.assess(summary_of(small))
    assert found["checks"]["n"] < trust.MIN_TEST_IMAGES
    assert any("tested on" in r for r in found["reasons"])


def test_old_summaries_get_a_verdict_and_stored_ones_are_used():
    s = summary_of(GOOD)
    assert trust.of_summary(s)["verdict"] == "usable"
    s["trust"] = {"verdict": trust.WEAK, "reasons": ["stored"], "rules": trust.RULES}
    assert trust.of_summary(s)["reasons"] == ["stored"]
    # A verdict stored by older rules is judged again: the run's numbers, today's rules.
    s["trust"] = {"verdict": trust.USABLE, "reasons": []}
    never = np.asarray(GOOD)
    never[1] = [36, 0, 10, 0, 0]
    s["test_confusion"] = never.tolist()
    assert trust.of_summary(s)["verdict"] == trust.WEAK and trust.of_summary(s)["rules"] == trust.RULES
    assert trust.of_summary({}) is None and trust.assess({"test_acc": 0.5}) is None
    assert trust.lines(None) == ["verdict: not judged (no test results)"]
    assert trust.lines(trust.of_summary(s))[-1].startswith("verdict: weak")


def test_wilson_interval_brackets_the_proportion():
    lo, hi = trust.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert trust.wilson_interval(0, 0) == (0.0, 1.0)


def test_a_grade_never_recognised_makes_a_run_at_most_weak():
    """Usable by every other rule, but no Mild photo (46 of them) is ever called Mild."""
    m = np.asarray(GOOD)
    m[1] = [30, 0, 12, 4, 0]
    found = trust.assess(summary_of(m.tolist()))
    assert found["verdict"] == trust.WEAK
    assert "It never recognises Mild (46 test photos): its recall there is 0." in found["reasons"]
    assert found["checks"]["never_recognised"] == [{"grade": 1, "images": 46}]
    # Fewer than 10 photos of a grade are too few for the rule.
    small = np.asarray(GOOD)
    small[4] = [5, 0, 2, 2, 0]
    assert trust.assess(summary_of(small.tolist()))["verdict"] == trust.USABLE


@pytest.mark.parametrize("auc, shown", [(0.6999, "0.6999 (under 0.70)"), (0.65, "0.65 (under 0.70)"),
                                        (0.69951, "0.6995 (under 0.70)")])
def test_a_number_is_printed_on_its_side_of_the_threshold(auc, shown):
    reasons = trust.assess(summary_of(GOOD, auc=auc))["reasons"]
    assert any(f"Its macro AUC is {shown}" in r for r in reasons), reasons
    assert trust.shown_against(0.70, 0.70) == "0.70" and trust.shown_against(0.4001, 0.40) == "0.4001"
    assert trust.shown_against(0.5501, 0.55) == "0.5501" and trust.shown_against(0.3, 0.4) == "0.30"


@pytest.mark.parametrize("kappa, words", [(-0.1, "no agreement beyond chance"), (0.0, "no agreement beyond chance"),
                                          (0.1, "slight agreement"), (0.2, "fair agreement"), (0.39, "fair agreement"),
                                          (0.5, "moderate agreement"), (0.7, "substantial agreement"),
                                          (0.85, "almost perfect agreement"), (None, "no agreement beyond chance")])
def test_kappa_is_worded_by_landis_and_kochs_bands(kappa, words):
    assert trust.kappa_words(kappa) == words
