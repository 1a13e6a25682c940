"""Evaluation: referable-DR operating points, calibration and test-time augmentation of a run."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core.judging import metrics
from retino_core import runs
from retino_core.judging import trust

from pages import choose_runs, share_runs, stand_ins, stands_line, through_the_app, user_chose
from retino_core.report import lab
from retino_core.report import figures  # noqa: E402
from retino_core.report import display  # noqa: E402
from retino_core.judging import operating  # noqa: E402

through_the_app(__file__)


@st.cache_data(show_spinner="Grading the validation and test images with flips…", max_entries=8)
def tta_metrics(run_dir: str, mtime: float) -> pd.DataFrame:  # noqa: ARG001 - mtime keys the cache
    """Metrics without and with flip TTA on validation and test, from the best checkpoint."""
    from retino_core.data.sources import source_of
    from retino_core.grading.predictor import Predictor

    run = runs.load_run(run_dir)
    predictor = Predictor.from_run(run_dir)
    source = source_of(run.config)
    rows = []
    for split in ("val", "test"):
        if split not in source.splits:
            continue
        part = source.splits[split]
        images = [part.image(i) for i in range(len(part))]
        for tta in (False, True):
            probs = np.concatenate([predictor.probabilities(images[i:i + 128], tta=tta)
                                    for i in range(0, len(images), 128)])
            m = metrics.classification_metrics(part.labels, probs)
            rows.append({"split": split, "TTA": "flips" if tta else "none", "accuracy": m["acc"],
                         "QWK": m["qwk"], "macro AUC": m["auc"], "referable AUC": m["referable_auc"],
                         "macro F1": m["macro_f1"]})
    return pd.DataFrame(rows)


st.title("Evaluation")
st.caption("Screening numbers for a finished run. Every choice (temperature, threshold) is made on "
           "the validation split and only then applied to test.")

all_runs = runs.list_runs()
finished = [r for r in all_runs if r.state == "done" and (r.path / "predictions.csv").exists()]
if not finished:
    st.info("No finished run yet: evaluation appears here when a run ends. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

by_id = {r.run_id: r for r in finished}
data = st.session_state.get("data") or lab.default_data(all_runs)
first = [c.run.run_id for c in lab.champion_four(all_runs, data, stand_ins(data)).values()
         if c and c.run.run_id in by_id]
ordered = first + [i for i in by_id if i not in first]  # the runs that stand for the configurations first
choose_runs("eval_run", "run", ordered, ordered[0])  # ?run=ID opens that run; else this session's pick
run = by_id[st.selectbox("Run", ordered, key="eval_run", on_change=user_chose, args=("eval_run",),
                         format_func=lambda i: f"{i} · {by_id[i].configuration}" + (" · stands for it" if i in first else ""))]
share_runs("run", "eval_run")
stands_line(run, all_runs, "eval_run")
scores = operating.load_scores(run.path)
if "test" not in scores:
    st.warning("This run's predictions.csv has no test rows; nothing to evaluate.")
    st.stop()
temperature = float(run.summary.get("temperature") or 1.0)
test = scores["test"]
val = scores.get("val")

s = run.summary
kind, text = trust.notice(trust.of_summary(s))
getattr(st, kind)(text)
c = st.columns(5)
c[0].metric("test accuracy", display.percent(s.get("test_acc")), help=f"majority baseline {display.percent(s.get('test_majority_acc'))}")
c[1].metric("QWK", display.number(s.get("test_qwk")))
c[2].metric("macro F1", display.number(s.get("test_macro_f1")))
c[3].metric("macro AUC", display.number(s.get("test_auc")))
c[4].metric("referable-DR AUC", display.number(s.get("test_referable_auc")), help="grade ≥ 2 against the rest, "
            "scored by the summed probabilities of grades 2-4")

calibration = operating.calibration_check(run.path, temperature) or {"helps": temperature != 1.0, "sentence": ""}

st.subheader("Referable DR operating point")
as_graded = operating.grades_calibrated(run.path, run.summary)
calibrated = st.toggle("Calibrated probabilities", value=as_graded, key=f"eval_calibrated_{run.run_id}",
                       help=f"temperature {temperature:.2f}, fitted on validation; on at first only when it "
                            "improved the test probabilities, as every door grades")
if not as_graded and temperature != 1.0:
    st.caption(":material/info: Off at first: temperature scaling did not improve this run's test probabilities "
               "(see Calibration below), so Classify, `predict` and the exported grader use the uncalibrated ones.")
t = temperature if calibrated else 1.0
test_probs = test.probs(t)
left, right = st.columns([1, 2])
point = operating.of_run(run.path, calibrated)  # as graded: the threshold Classify, predict and the export apply
kind = "calibrated" if as_graded else "uncalibrated"
(st.caption if point.reliable else st.warning)(point.sentence() + (
    " Classify, `predict` and the exported grader refer at this threshold." if calibrated == as_graded else
    f" (Chosen on {'calibrated' if calibrated else 'uncalibrated'} probabilities: Classify, `predict` and the "
    f"exported grader use the {kind} ones.)"))
target = left.number_input("Target sensitivity (chosen on validation)", 0.5, 1.0, operating.TARGET_SENSITIVITY, 0.01)
suggested = operating.threshold_for_sensitivity(val.labels, val.probs(t), target) if val else 0.5
if st.session_state.get("eval_for") != (run.run_id, calibrated, target):
    # A new run or calibration starts from the threshold in force; a new target from validation's for it.
    start = point.threshold if target == operating.TARGET_SENSITIVITY else suggested
    st.session_state.update(eval_for=(run.run_id, calibrated, target), eval_threshold=round(start, 3))
left.button("Back to the validation threshold", on_click=st.session_state.update,
            kwargs={"eval_threshold": round(suggested, 3)},
            help=f"{suggested:.3f} reaches {target:.0%} sensitivity on validation")
threshold = left.slider("Refer when P(grade ≥ 2) ≥", 0.0, 1.0, step=0.005, key="eval_threshold")
op = metrics.operating_point(test.labels, test_probs, threshold)
m = left.columns(2)
m[0].metric("sensitivity", display.percent(op["sensitivity"]))
m[1].metric("specificity", display.percent(op["specificity"]))
m[0].metric("PPV", display.percent(op["ppv"]))
m[1].metric("NPV", display.percent(op["npv"]))
left.dataframe(pd.DataFrame({"referred": [op["tp"], op["fp"]], "not referred": [op["fn"], op["tn"]]},
                            index=["referable (grade ≥ 2)", "not referable"]), width="stretch")
curves = {"test": metrics.referable_roc(test.labels, test_probs)}
if val:
    curves["validation"] = metrics.referable_roc(val.labels, val.probs(t))
right.plotly_chart(figures.referable_roc_figure(curves, op), width="stretch")
with st.expander("Reference operating points"):
    st.dataframe(pd.DataFrame([{"system": r.label, "sensitivity": r.sensitivity, "specificity": r.specificity,
                                "source": r.source} for r in operating.REFERENCE_POINTS]),
                 hide_index=True, width="stretch")
    st.caption("Published on other populations, cameras and reference standards; shown for orientation, "
               "not as a like-for-like comparison.")

st.subheader("Calibration")
if calibration["sentence"]:
    (st.success if calibration["helps"] else st.warning)(calibration["sentence"])
left, right = st.columns([2, 1])
left.plotly_chart(figures.reliability_figure(test.labels, {"uncalibrated": test.probs(1.0),
                                                             f"T = {temperature:.2f}": test.probs(temperature)}),
                  width="stretch")
right.dataframe(pd.DataFrame(operating.calibration_table(scores, temperature)).round(4), hide_index=True,
                width="stretch")
right.caption("Temperature scaling divides the logits by one number fitted on validation: it changes how "
              "confident the probabilities are, never which grade wins.")

st.subheader("Test-time augmentation")
st.caption("Averages the model over the image and its flips. Decide on validation whether it helps.")
if st.button("Compute with and without flips"):
    try:
        st.dataframe(tta_metrics(str(run.path), runs.checkpoint_path(run.path).stat().st_mtime).round(4),
                     hide_index=True, width="stretch")
    except Exception as err:  # noqa: BLE001 - a missing dataset or checkpoint is shown, not raised
        st.error(f"Could not evaluate with TTA: {err}")
