"""The one decision per photo: grade and referral agree by construction (a property test, through
decide and through the exported ONNX graph's decision), a refused photo has no grade, and the
operating point falls back to the default where validation cannot support it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retino_core.config import GRADE_NAMES
from retino_core.judging import decision, metrics, operating
from retino_core.judging.decision import (
    GRADED,
    NO_USABLE_MODEL,
    NOT_GRADED,
    Decision,
    OperatingPoint,
    decide,
    referral_first,
)
from retino_core.judging.photo import FieldOfView, ImageCheck

# Five non-negative weights normalised to a probability vector; often with exact ties and zeros.
weights = st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.sampled_from([0.25, 0.5])), min_size=5, max_size=5)
thresholds = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0]))


def vector(w: list[float]) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return np.full(5, 0.2) if w.sum() <= 0 else w / w.sum()


def agrees(refer: bool, grade: int) -> bool:
    return (grade >= 2) == refer


@settings(max_examples=500, deadline=None)
@given(weights, thresholds, st.booleans(), st.booleans())
def test_grade_and_referral_never_contradict(w, threshold, usable, refused) -> None:
    p = vector(w)
    check = ImageCheck((28, 28), FieldOfView(not refused, "it is dark all over"))
    d = decide(p, check, OperatingPoint(threshold, True, ""), usable)
    referable = float(p[2:].sum())
    assert d.would_say_refer == (referable >= threshold)
    assert agrees(d.would_say_refer, d.would_say_grade)
    side = [2, 3, 4] if d.would_say_refer else [0, 1]
    assert p[d.would_say_grade] == max(p[g] for g in side)  # the most probable grade on its side
    if d.status == GRADED:
        assert usable and not refused
        assert agrees(d.refer, d.grade) and (d.grade, d.refer) == (d.would_say_grade, d.would_say_refer)
    else:
        assert d.grade is None and d.refer is None and d.grade_name is None
        assert d.status == (NOT_GRADED if refused else NO_USABLE_MODEL)
    row = d.to_dict()
    assert row["grade"] == d.grade and row["refer"] == d.refer and row["status"] == d.status


def test_the_examples_of_the_issue() -> None:
    """0 · No DR with refer=True can no longer happen: the referral decides the side first."""
    p = [0.45, 0.05, 0.2, 0.15, 0.15]  # argmax 0, but P(grade >= 2) = 0.5
    d = decide(p, None, OperatingPoint(0.3, True, ""))
    assert (d.grade, d.refer) == (2, True)
    assert "single most probable grade is 0 · No DR" in d.warnings[0]
    d = decide(p, None, OperatingPoint(0.6, True, ""))
    assert (d.grade, d.refer, d.warnings) == (0, False, ())
    assert referral_first([0.1, 0.5, 0.1, 0.2, 0.1], 0.45) == (False, 1)


def test_a_refused_photo_has_no_grade_and_says_why_in_sentences() -> None:
    check = ImageCheck((2000, 200), FieldOfView(False, "it is a 2000×200 image (10.0:1); a fundus photograph is "
                                                       "close to square"), None, 6628.0, 1117.0)
    d = decide([0.1, 0.1, 0.6, 0.1, 0.1], check, OperatingPoint(0.4, True, ""))
    assert d.status == NOT_GRADED and d.to_dict()["grade"] is None and d.to_dict()["refer"] is None
    assert (d.would_say_grade, d.would_say_refer) == (2, True)
    assert len(d.reasons) == 2 and all(r[0].isupper() and r.endswith(".") for r in d.reasons)
    assert "close to square" in d.reasons[0] and "6628" in d.reasons[1]
    assert json.loads(json.dumps(d.to_dict()))["grade_name"] is None


def test_decision_to_dict_keys_are_the_csv_columns() -> None:
    from retino_core.grading.batch import CSV_COLUMNS

    d = decide([0.2] * 5)
    assert list(d.to_dict()) == [c for c in CSV_COLUMNS if c not in ("file", "error", "model", "model_verdict")]
    assert isinstance(d, Decision) and d.threshold_from == "default" and d.threshold == decision.DEFAULT_THRESHOLD


def test_an_ensemble_check_is_its_farthest_member() -> None:
    near = ImageCheck((28, 28), FieldOfView(True), None, 100.0, 500.0)
    far = ImageCheck((28, 28), FieldOfView(True), None, 900.0, 800.0)
    assert decision.combine([near, far]) is far and decision.combine([far, near]).reasons == far.reasons


# ---------------------------------------------------------------- the ONNX graph


@pytest.fixture(scope="module")
def decision_graph(tmp_path_factory):
    """The exported graph's decision (export.ReferralFirst) alone, as ONNX with the threshold an input."""
    import onnxruntime as ort
    import torch

    from retino_core.grading import export

    class WithThreshold(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decide = export.ReferralFirst()

        def forward(self, probs, threshold):
            return self.decide(probs, threshold)

    path = tmp_path_factory.mktemp("onnx") / "decision.onnx"
    example = (torch.full((2, 5), 0.2), torch.tensor(0.5))
    program = torch.onnx.export(WithThreshold().eval(), example, dynamo=True, opset_version=export.OPSET, verbose=False,
                                input_names=["probabilities", "threshold"],
                                output_names=["referable_probability", "would_say_refer", "would_say_grade"],
                                dynamic_shapes=({0: torch.export.Dim("batch")}, None))
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@settings(max_examples=300, deadline=None)
@given(st.lists(weights, min_size=1, max_size=8), thresholds)
def test_the_onnx_graph_decides_as_decide_does(decision_graph, batch, threshold) -> None:
    p = np.stack([vector(w) for w in batch]).astype(np.float32)
    referable, refer, grade = decision_graph.run(None, {"probabilities": p, "threshold": np.array(threshold, dtype=np.float32)})
    for k in range(len(p)):
        assert agrees(bool(refer[k]), int(grade[k]))  # the graph's own guarantee, exactly
        # Against decide on the same float32 numbers: the same answer, except within float32
        # rounding of the threshold (the graph sums in float32, decide in float64).
        if abs(float(p[k, 2:].astype(np.float64).sum()) - np.float32(threshold)) > 1e-6:
            d = decide(p[k], None, OperatingPoint(float(np.float32(threshold)), True, ""))
            assert (bool(refer[k]), int(grade[k])) == (d.would_say_refer, d.would_say_grade)


# ---------------------------------------------------------------- the operating point


def scores_for(n_per_grade: int, skill: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), n_per_grade)
    logits = rng.normal(size=(len(y), 5))
    logits[np.arange(len(y)), y] += skill
    return y, metrics.softmax(logits)


def test_a_validation_split_large_enough_gives_a_trusted_threshold() -> None:
    y, p = scores_for(20, 3.0)  # 60 referable, 40 others
    point = operating.choose(y, p, y, p)
    assert point.reliable and point.why == "" and point.threshold_from == "validation"
    assert point.threshold == pytest.approx(operating.threshold_for_sensitivity(y, p, 0.9))
    assert point.val_sensitivity >= 0.9 and point.val_specificity >= operating.MIN_SPECIFICITY
    assert point.sentence().startswith("Refer when P(grade ≥ 2) ≥")


def test_a_small_validation_split_falls_back_to_the_default_threshold() -> None:
    y, p = scores_for(5, 3.0)  # 15 referable, 10 others: a threshold on them is not to be trusted
    point = operating.choose(y, p, y, p)
    assert not point.reliable and point.threshold == decision.DEFAULT_THRESHOLD
    assert "15 referable (grade ≥ 2) and 10 other photos" in point.why and "at least 30" in point.why
    assert point.chosen_threshold == pytest.approx(operating.threshold_for_sensitivity(y, p, 0.9))
    assert point.val_sensitivity == metrics.operating_point(y, p, 0.5)["sensitivity"]
    assert point.sentence().startswith("No reliable operating point") and "0.50" in point.sentence()
    d = decide(p[0], None, point)
    assert d.threshold_from == "default" and d.threshold == 0.5


def test_a_threshold_that_refers_nearly_everyone_is_not_trusted() -> None:
    y, p = scores_for(20, 0.0)  # no skill: 90 % sensitivity needs a threshold near 0
    point = operating.choose(y, p)
    assert not point.reliable and "refer nearly everyone" in point.why
    assert point.threshold == decision.DEFAULT_THRESHOLD


def test_a_runs_stored_operating_point_is_the_one_every_door_reads(tmp_path) -> None:
    from retino_core import runs

    stored = OperatingPoint(0.37, True, "", val_referable=40, val_non_referable=50)
    runs.write_json(tmp_path / "summary.json", {"temperature": 1.0, "operating_point": stored.to_dict()})
    assert operating.of_run(tmp_path) == stored
    assert OperatingPoint.from_dict(json.loads(json.dumps(stored.to_dict()))) == stored
    missing = operating.of_run(tmp_path, calibrated=False)  # no predictions.csv to choose one on
    assert not missing.reliable and missing.threshold == 0.5 and "no validation predictions" in missing.why
    assert GRADE_NAMES[decide([0, 0, 1, 0, 0], None, missing).grade] == "Moderate"
