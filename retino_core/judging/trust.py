"""How far a run can be trusted: one verdict from its validation-selected test results.

Every door (the ``train`` and ``runs`` commands, ``predict``, Classify, Results, Compare,
Overview and the exported report) shows this one verdict, computed here and stored in
``summary.json`` as ``trust``. No torch and no streamlit: it reads numbers only.

The rules (each one that fires adds a sentence to ``reasons``):

no better than guessing, when any of
  G1  one grade gets COLLAPSE_SHARE (95 %) or more of the predictions (a constant model);
  G2  macro AUC at or below GUESS_AUC (0.55; 0.5 is a coin): the scores do not rank grades;
  G3  accuracy is not above the majority baseline (one-sided exact binomial test, alpha 0.05)
      and either QWK is below GUESS_QWK (0.20) or the model nearly collapsed (W4):
      it neither beats "always the commonest grade" nor orders the grades.
weak, when none of those but any of
  W1  accuracy is not significantly above the majority baseline;
  W2  macro AUC below WEAK_AUC (0.70);
  W3  QWK below WEAK_QWK (0.40, under "moderate" agreement on Landis and Koch's scale);
  W4  near-collapse: a grade predicted at least NEAR_COLLAPSE_RATIO (1.5) times as often as
      it occurs and NEAR_COLLAPSE_POINTS (20) points more (89.5 % predicted vs 46.7 % true);
  W5  the temperature fitted on validation sits at a limit of its search range (0.05 to 20):
      the probabilities could not be calibrated (usually a model that has barely trained;
      the low limit is allowed when every validation image is right);
  W6  fewer than MIN_TEST_IMAGES (50) test images: every number is too uncertain to act on;
  W7  a grade with at least MIN_GRADE_IMAGES (10) test images is never recognised (recall 0):
      "never recognises Mild (46 test photos)".
usable otherwise.

A number is compared with its threshold exactly, and printed with as many decimals as it takes
for the printed number to fall on the same side of the printed threshold (0.6999 is "0.6999
(under 0.70)", never "0.70 (under 0.70)"). Kappa is worded by Landis and Koch's bands.

A verdict stored by an older set of rules (``rules`` below RULES) is judged again when read.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import COLLAPSE_SHARE, GRADE_NAMES, TEMPERATURE_RANGE
from .stats import wilson_interval  # noqa: F401 - the accuracy interval, used here and by the model card

USABLE, WEAK, GUESSING = "usable", "weak", "no better than guessing"


VERDICTS = (USABLE, WEAK, GUESSING)


GUESS_AUC, WEAK_AUC = 0.55, 0.70


GUESS_QWK, WEAK_QWK = 0.20, 0.40


NEAR_COLLAPSE_RATIO, NEAR_COLLAPSE_POINTS = 1.5, 0.20


MIN_TEST_IMAGES = 50


MIN_GRADE_IMAGES = 10  # a grade this common in the test set that is never recognised makes a run weak


ALPHA = 0.05


# The version of these rules; a stored verdict of an older version is judged again (of_summary).
RULES = 2


# Landis and Koch (Biometrics 1977;33:159-174), for kappa above 0; each band from its lower
# bound (inclusive) to the next. At or below 0: no agreement beyond chance.
KAPPA_BANDS = ((0.8, "almost perfect"), (0.6, "substantial"), (0.4, "moderate"), (0.2, "fair"), (0.0, "slight"))


def kappa_words(kappa: float | None) -> str:
    """'moderate agreement', 'no agreement beyond chance', ... for a (weighted) kappa."""
    if kappa is None or not math.isfinite(kappa) or kappa <= 0:
        return "no agreement beyond chance"
    return next(f"{name} agreement" for bound, name in KAPPA_BANDS if kappa >= bound)


def shown_against(value: float, threshold: float, digits: int = 2) -> str:
    """``value`` with the fewest decimals (at least ``digits``) that keep it on its side of
    ``threshold`` once both are printed: 0.6999 against 0.70 is '0.6999', 0.65 is '0.65'."""
    for d in range(digits, 10):
        a, b = round(value, d), round(threshold, d)
        if (a > b) - (a < b) == (value > threshold) - (value < threshold):
            return f"{value:.{d}f}"
    return repr(value)


def beats_baseline_p(k: int, n: int, baseline: float) -> float:
    """One-sided exact binomial p-value that accuracy k / n is above ``baseline``."""
    from scipy.stats import binomtest

    if n <= 0:
        return 1.0
    return float(binomtest(int(k), int(n), min(max(baseline, 1e-9), 1 - 1e-9), alternative="greater").pvalue)


def near_collapse(confusion) -> dict | None:
    """The grade predicted most out of proportion to its true share, when that is extreme."""
    m = np.asarray(confusion, dtype=np.float64)
    n = m.sum()
    if n <= 0:
        return None
    predicted, true = m.sum(0) / n, m.sum(1) / n
    excess = predicted - true
    g = int(np.argmax(excess))
    if excess[g] >= NEAR_COLLAPSE_POINTS and predicted[g] >= NEAR_COLLAPSE_RATIO * true[g]:
        return {"grade": g, "predicted_share": float(predicted[g]), "true_share": float(true[g])}
    return None


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def assess(summary: dict, split: str = "test") -> dict | None:
    """``{verdict, reasons, split, checks}`` from a summary's ``<split>_*`` metrics.

    None when the summary has no confusion matrix for ``split`` (nothing to judge).
    """
    confusion = summary.get(f"{split}_confusion")
    if confusion is None:
        return None
    m = np.asarray(confusion, dtype=np.int64)
    checks = _checks(summary, split, m)
    n, acc, (lo, hi), baseline = checks["n"], checks["acc"], checks["acc_ci"], checks["majority_acc"]
    auc, qwk, p_value = checks["auc"], checks["qwk"], checks["p_above_baseline"]
    guessing, weak = [], []
    predicted = m.sum(0) / max(n, 1)
    top = int(np.argmax(predicted))
    if predicted[top] >= COLLAPSE_SHARE:
        guessing.append(f"It answers {GRADE_NAMES[top]} for {_pct(predicted[top])} of the {split} images: "
                        "it has collapsed onto one grade.")
    if auc is not None and auc <= GUESS_AUC:
        guessing.append(f"Its macro AUC is {shown_against(auc, GUESS_AUC)}, at chance level (at most "
                        f"{GUESS_AUC:.2f}; 0.50 is a coin toss): its scores do not rank the grades.")
    no_skill = p_value is not None and p_value >= ALPHA
    near = near_collapse(m)
    checks["near_collapse"] = near
    if no_skill:
        reason = (f"Its accuracy, {_pct(acc)} (95 % CI {_pct(lo)} to {_pct(hi)}), is not above always answering "
                  f"the commonest grade ({_pct(baseline)}).")
        if (qwk is None or qwk < GUESS_QWK) or near:
            guessing.append(reason)
        else:
            weak.append(reason)
    weak += _weak_reasons(summary, split, m, checks)
    verdict = GUESSING if guessing else WEAK if weak else USABLE
    return {"verdict": verdict, "reasons": guessing + weak, "basis": _basis(split, checks), "split": split,
            "checks": checks, "rules": RULES}


def _weak_reasons(summary: dict, split: str, m: np.ndarray, checks: dict) -> list[str]:
    """The sentences of the rules that make a run at most weak (W2 to W7; W1 is in assess)."""
    n, auc, qwk, temperature, near = checks["n"], checks["auc"], checks["qwk"], checks["temperature"], checks["near_collapse"]
    weak = []
    if auc is not None and GUESS_AUC < auc < WEAK_AUC:
        weak.append(f"Its macro AUC is {shown_against(auc, WEAK_AUC)} (under {WEAK_AUC:.2f}): it ranks the grades poorly.")
    if qwk is None:
        weak.append("Its quadratic weighted kappa is undefined: it agrees with the graders no better than chance.")
    elif qwk < WEAK_QWK:
        weak.append(f"Its quadratic weighted kappa is {shown_against(qwk, WEAK_QWK)} (under {WEAK_QWK:.2f}): "
                    f"{kappa_words(qwk)} with the graders.")
    predicted = m.sum(0) / max(n, 1)
    if near and not (predicted.max() >= COLLAPSE_SHARE):
        weak.append(f"It nearly collapsed: it answers {GRADE_NAMES[near['grade']]} for {_pct(near['predicted_share'])} "
                    f"of the {split} images, which are {_pct(near['true_share'])} {GRADE_NAMES[near['grade']]}.")
    never = checks["never_recognised"] = [
        {"grade": g, "images": int(m[g].sum())} for g in range(len(m)) if m[g].sum() >= MIN_GRADE_IMAGES and m[g, g] == 0]
    if never:
        weak.append("It never recognises " + " or ".join(
            f"{GRADE_NAMES[x['grade']]} ({x['images']} {split} photos)" for x in never) + ": its recall there is 0.")
    if temperature is not None and at_temperature_limit(temperature, summary.get("val_acc")):
        weak.append(f"Its calibration temperature ({temperature:.2f}) sits at the limit of its search range: "
                    "its probabilities could not be calibrated.")
    if n < MIN_TEST_IMAGES:
        lo, hi = checks["acc_ci"]
        weak.append(f"It was tested on {n} images only: accuracy could lie anywhere from {_pct(lo)} to {_pct(hi)}.")
    return weak


def _checks(summary: dict, split: str, m: np.ndarray) -> dict:
    """The numbers a verdict rests on, from a summary's ``<split>_*`` metrics and its confusion matrix."""
    n = int(m.sum())
    correct = int(np.trace(m))
    baseline = summary.get(f"{split}_majority_acc")
    lo, hi = wilson_interval(correct, n)  # what the tables show too (stats.CI_METHOD)
    return {"n": n, "acc": correct / n if n else 0.0, "acc_ci": [lo, hi], "majority_acc": baseline,
            "p_above_baseline": beats_baseline_p(correct, n, baseline) if baseline is not None else None,
            "auc": summary.get(f"{split}_auc"), "qwk": summary.get(f"{split}_qwk"),
            "temperature": summary.get("temperature")}


def _basis(split: str, checks: dict) -> str:
    lo, hi = checks["acc_ci"]
    baseline, auc, qwk = checks["majority_acc"], checks["auc"], checks["qwk"]
    return (f"{split} accuracy {_pct(checks['acc'])} (95 % CI {_pct(lo)} to {_pct(hi)}, {checks['n']} images)"
            + (f" vs {_pct(baseline)} for always the commonest grade" if baseline is not None else "")
            + (f"; macro AUC {auc:.2f}" if auc is not None else "") + (f"; QWK {qwk:.2f}" if qwk is not None else ""))


def at_temperature_limit(temperature: float, val_acc: float | None = None) -> bool:
    """Whether the fit ran into the end of its range. The low end is no failure for a model
    that is right on every validation image (sharpening its logits only lowers the NLL)."""
    low, high = TEMPERATURE_RANGE
    if temperature >= high * 0.99:
        return True
    return temperature <= low * 1.01 and (val_acc is None or val_acc < 0.99)


def of_summary(summary: dict | None) -> dict | None:
    """The run's stored verdict, or one computed now for a summary written before verdicts."""
    if not summary:
        return None
    stored = summary.get("trust")
    if isinstance(stored, dict) and stored.get("verdict") in VERDICTS and stored.get("rules") == RULES:
        return stored
    return assess(summary, "test") or assess(summary, "val")


def lines(trust: dict | None) -> list[str]:
    """For a terminal: the reasons, then ``verdict: ... (basis)`` as the last line."""
    if not trust:
        return ["verdict: not judged (no test results)"]
    basis = trust.get("basis")
    return [f"  - {r}" for r in trust["reasons"]] + [f"verdict: {trust['verdict']}" + (f" ({basis})" if basis else "")]


def is_usable_verdict(trust: dict | None) -> bool:
    return bool(trust) and trust["verdict"] == USABLE


def warning(trust: dict | None) -> str:
    """One sentence for a prediction made with a model that is not usable."""
    if not trust:
        return "This model has no test results, so how far to trust it is unknown."
    return f"This model is {trust['verdict']}: " + " ".join(trust["reasons"])


NOTICE_KINDS = {USABLE: "success", WEAK: "warning", GUESSING: "error"}


def notice(trust: dict | None) -> tuple[str, str]:
    """How a page shows the verdict: a Streamlit notice kind (success / warning / error / info)
    and its Markdown, the verdict first, then what it rests on and why."""
    if not trust:
        return "info", "**Not judged**: this run has no test results."
    text = f"**{_sentence_case(trust['verdict'])}.** {_sentence_case(trust.get('basis', ''))}."
    if trust["reasons"]:
        text += "\n\n" + "\n".join(f"- {r}" for r in trust["reasons"])
    return NOTICE_KINDS.get(trust["verdict"], "info"), text


def _sentence_case(text: str) -> str:
    """The first letter up, the rest as written (str.capitalize would lower 'AUC' and 'QWK')."""
    return text[:1].upper() + text[1:]


def label(trust: dict | None) -> str:
    """A short label for tables: the verdict, or 'not judged'."""
    return trust["verdict"] if trust else "not judged"
