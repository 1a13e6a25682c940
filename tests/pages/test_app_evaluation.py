"""The Evaluation page: referable-DR operating point, calibration, TTA on a real run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from retino_core.judging import metrics
from retino_core.judging import operating

APP = Path(__file__).resolve().parents[2] / "streamlit_app.py"


def open_evaluation() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception[0].value
    return at


def test_empty_registry_says_what_to_do(runs_dir):
    at = open_evaluation()
    assert "No finished run yet" in at.info[0].value


def test_real_run_operating_point_follows_the_slider(runs_dir, finished_run):
    shutil.copytree(finished_run, runs_dir / finished_run.name)
    at = open_evaluation()
    labels = {m.label: m.value for m in at.metric}
    assert {"sensitivity", "specificity", "PPV", "NPV", "referable-DR AUC"} <= labels.keys()
    assert len(at.get("plotly_chart")) >= 2
    # 16 validation photos cannot support a threshold: the page says so and starts from the default.
    assert any(w.value.startswith("No reliable operating point: the validation split has") for w in at.warning)
    assert at.slider(key="eval_threshold").value == 0.5
    at.slider(key="eval_threshold").set_value(0.0).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["sensitivity"] == "100.0%"
    at.button[1].click().run()  # compute with and without flips
    assert not at.exception
    assert not [e.value for e in at.error if "Could not evaluate" in e.value]
    table = at.dataframe[-1].value
    assert set(table["TTA"]) == {"none", "flips"} and set(table["split"]) == {"val", "test"}


def test_threshold_for_sensitivity_is_chosen_on_the_given_split():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5))
    logits[np.arange(300), y] += 2
    probs = metrics.softmax(logits)
    thr = operating.threshold_for_sensitivity(y, probs, 0.9)
    assert metrics.operating_point(y, probs, thr)["sensitivity"] >= 0.9
    assert metrics.operating_point(y, probs, thr + 0.02)["sensitivity"] < 0.9 or thr >= 0.98
