"""Results: one run's page. Its id and a link to it; a finished run's verdict, confusion matrix,
per-grade precision / recall / F1 and QWK (choose a cell to see the images behind it); any run's
state, whole failure reason, settings, notes and train.log. ``?run=ID`` opens that run."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core import runs
from retino_core.training import launch
from retino_core.judging import champions, external, trust
from retino_core.config import GRADE_NAMES
from retino_core.errors import DataError, ImageError
from retino_core.data.sources import source_of
from retino_core.report import figures
from retino_core.report import display
from retino_core.grading import exported

from pages import choose_runs, share_runs, stands_line, through_the_app, user_chose

through_the_app(__file__)

GALLERY_SIZE = 24


@st.cache_resource(show_spinner="Opening the run's dataset…", max_entries=4)
def load_source(spec: str, val_fraction: float, seed: int, patient_column: str, patient_regex: str):
    return source_of({"data": spec, "val_fraction": val_fraction, "seed": seed,
                      "patient_column": patient_column, "patient_regex": patient_regex})


# Built once for every session showing this matrix the same way (a plotly figure takes tens of
# milliseconds to build); the matrix's counts are the key.
@st.cache_resource(show_spinner=False, max_entries=32)
def confusion_of(matrix: tuple, normalize: bool, selected: tuple):
    return figures.confusion_figure(matrix, normalize, selected=selected)


def pick_cell(chart_key: str) -> None:
    """A click on a square of the matrix selects that (true, predicted) cell below."""
    points = st.session_state[chart_key].selection.points
    if points:
        st.session_state.cell_true = int(round(points[0]["y"]))
        st.session_state.cell_pred = int(round(points[0]["x"]))


def pin_button(run: runs.RunInfo) -> None:
    """Pin the run to stand for its configuration on its dataset, or unpin it."""
    pinned = run.run_id in champions.pins(run.path.parent)
    if not champions.is_finished(run):
        return
    label = "Unpin" if pinned else f"Pin: make this run stand for {run.configuration}"
    if st.button(label, icon=":material/push_pin:", key=f"pin-{run.run_id}",
                 help="a pinned run stands for its configuration on its dataset on every page, in the report and "
                      "in `python -m retino_core champions`, whatever the rules would choose"):
        try:
            if pinned:
                champions.unpin(run.run_id, run.path.parent)
            else:
                champions.pin(run.run_id, run.path.parent)
        except runs.RunError as err:
            st.error(str(err))
        else:
            st.rerun()


def elsewhere_panel(run) -> None:
    """Evaluations of this run on other photos (``evaluate``), beside its own test results."""
    found = external.read_all(run.path)
    st.caption(external.measured_where(run.path, run.summary).capitalize() + ".")
    for result in found:
        kind = "success" if trust.is_usable_verdict(result.get("verdict")) else "warning"
        with st.expander(f"External: {external.sentence(result)}", icon=":material/public:",
                         expanded=kind == "warning"):
            getattr(st, kind)(f"**{result['name']}** ({result.get('evaluated_at', '?')[:16]}): "
                              f"{external.sentence(result)}.")
            for line in result.get("warnings", []):
                st.caption(f":material/info: {line}")
            st.markdown("\n".join(f"- {line.lstrip('- ')}" for line in external.detail_lines(result)))


st.title("Results")

all_runs = runs.list_runs()
if not all_runs:
    st.info("No run yet: results appear here when a run ends. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

by_id = {r.run_id: r for r in all_runs}
# Grouped by configuration, newest first within each: a configuration's seeds sit together.
ordered = sorted(by_id, key=lambda i: by_id[i].configuration)
newest = next((r.run_id for r in all_runs if r.summary), all_runs[0].run_id)  # the newest finished
choose_runs("results_run", "run", ordered, newest)
left, right = st.columns([3, 1])
run = by_id[left.selectbox("Run", ordered, key="results_run", on_change=user_chose, args=("results_run",),
                         format_func=lambda i: f"{by_id[i].configuration} · {i} · {display.state_text(by_id[i])}"
                         + (f" · {', '.join(by_id[i].tags)}" if by_id[i].tags else ""))]
share_runs("run", "results_run")


def run_header(run: runs.RunInfo) -> None:
    """The run's id, a link to this page on it (copy button on the right), what it is doing."""
    base = (st.context.url or "").rstrip("/")
    base = base[:-len("/results")] if base.endswith("/results") else base
    left, right = st.columns([2, 3], vertical_alignment="center")
    left.markdown(f"**{run.run_id}** · {run.configuration} · {display.state_text(run)}")
    right.code(f"{base}/results?run={run.run_id}", language=None, wrap_lines=True)
    if run.state != "done":
        progress = display.run_progress(run)
        st.progress(progress.fraction, text=progress.text)
    if run.state in runs.ACTIVE_STATES:
        st.page_link("pages/live.py", label="Watch it on Live", icon=":material/monitoring:",
                     query_params={"runs": run.run_id})
    error = run.status.get("error")
    if error and run.state == "failed":  # the whole reason, not its first line
        st.error(f"**Failed**: {error}")
    elif error and run.state != "done":
        st.warning(error)
    for note in run.status.get("notes") or []:
        st.caption(f":material/info: {note}")


def settings_and_notes(run: runs.RunInfo) -> None:
    left, right = st.columns(2)
    with left.expander("Configuration of this run"):
        st.dataframe(pd.DataFrame({"setting": list(run.config), "value": [str(v) for v in run.config.values()]}),
                     hide_index=True, width="stretch")
    with right.expander(f"Notes and tags{' · ' + ', '.join(run.tags) if run.tags else ''}", expanded=bool(run.notes)):
        with st.form(f"notes-{run.run_id}", border=False):
            notes = st.text_area("Notes", value=run.notes, height=100, key=f"notes-text-{run.run_id}")
            tags = st.text_input("Tags (comma-separated)", value=", ".join(run.tags), key=f"notes-tags-{run.run_id}")
            if st.form_submit_button("Save notes", icon=":material/save:"):
                try:
                    runs.write_notes(run.path, notes, tags)
                except runs.RunError as err:
                    st.error(str(err))
                else:
                    st.toast(f"Saved the notes of {run.run_id}")


def training_log(run: runs.RunInfo) -> None:
    """The end of train.log, and the whole file as a download."""
    tail = display.log_tail(run)
    with st.expander("Training log (train.log)", expanded=run.state in ("failed", "interrupted") and bool(tail)):
        if not tail:
            st.caption("No train.log: the run was trained outside the queue (train on the command line prints "
                       "to the terminal), or it has not started yet.")
            return
        st.code(tail, language=None)
        st.download_button("Download train.log", lambda: launch.log_path(run.path).read_bytes(),
                           file_name=f"{run.run_id}-train.log", mime="text/plain", icon=":material/download:")


run_header(run)
if not run.summary:
    st.info("No results yet: they appear when the run finishes." if run.state in runs.ACTIVE_STATES else
            "This run has no results: it ended before its test evaluation. Its settings, notes and log are below.")
    settings_and_notes(run)
    training_log(run)
    st.stop()

splits = [s for s in ("test", "val") if run.summary.get(f"{s}_confusion")]
split = right.radio("Split", splits, horizontal=True)
s = {k[len(split) + 1:]: v for k, v in run.summary.items() if k.startswith(f"{split}_")}

if st.session_state.get("cell_for") != (run.run_id, split):
    # Start on the commonest mistake: the most instructive cell of a new matrix.
    off_diagonal = np.array(s["confusion"])
    np.fill_diagonal(off_diagonal, -1)
    true_grade, pred_grade = divmod(int(off_diagonal.argmax()), len(GRADE_NAMES))
    st.session_state.update(cell_for=(run.run_id, split), cell_true=true_grade, cell_pred=pred_grade)

acc, base = s.get("acc"), s.get("majority_acc")
c = st.columns(5)
c[0].metric("accuracy", display.percent(acc),
            delta=None if acc is None or base is None else f"{100 * (acc - base):+.1f} pts vs majority",
            delta_color=display.verdict_colour(trust.of_summary(run.summary)),
            help=f"majority-class baseline {display.percent(base)}: always answering the commonest training grade")
c[1].metric("QWK", display.number(s.get("qwk")), help="quadratic weighted kappa: 0 = chance, 1 = perfect agreement")
c[2].metric("macro AUC", display.number(s.get("auc")), help="one-vs-rest ROC AUC averaged over the grades")
c[3].metric("referable-DR AUC", display.number(s.get("referable_auc")),
            help="how well P(grade ≥ 2) separates moderate-or-worse from the rest")
c[4].metric("best epoch", f"{run.summary.get('best_epoch', '–')} / {run.config.get('epochs', '?')}",
            help=f"checkpoint chosen on {run.summary.get('selected_on', '?')} {run.config.get('select_metric', '')}")
verdict = trust.of_summary(run.summary)
kind, text = trust.notice(verdict)
getattr(st, kind)(text)
stands_line(run, all_runs, "results_run")
pin_button(run)
if verdict and verdict.get("split") != split:
    st.caption(f"The verdict rests on the {verdict.get('split')} split; the numbers above are {split}.")
elsewhere_panel(run)
detector = run.summary.get("ood")
if detector:
    st.caption(f"Out-of-distribution check: {display.percent(detector.get('test_flagged_share'))} of the test photos look "
               f"unlike the training ones to the model (threshold: the {detector.get('calibrated_on')} split's "
               f"{100 * detector.get('quantile', 0.99):.0f}th percentile). Classify does not grade such photos.")
settings_and_notes(run)
training_log(run)

left, right = st.columns([3, 2])
with left:
    normalize = st.toggle("Row-normalised (share of each true grade)", value=False)
    chart_key = f"confusion-{run.run_id}-{split}-{normalize}"
    selected = (st.session_state.get("cell_true"), st.session_state.get("cell_pred"))
    st.plotly_chart(confusion_of(tuple(map(tuple, s["confusion"])), normalize, selected), key=chart_key,
                    on_select=lambda: pick_cell(chart_key), selection_mode="points", width="content",
                    config={"displayModeBar": False})
    st.caption("Hover a square for its count and row share; click it to see those images below.")
with right:
    per_grade = pd.DataFrame({"precision": s.get("precision"), "recall": s.get("recall"),
                              "F1": s.get("f1"), "images": s.get("support")}, index=GRADE_NAMES)
    st.markdown("**Per grade**")
    st.dataframe(per_grade.style.format({"precision": "{:.2f}", "recall": "{:.2f}", "F1": "{:.2f}"}),
                 width="stretch")
    st.caption(f"macro F1 {display.number(s.get('macro_f1'))} · {s.get('n', '?')} images · "
               f"calibration temperature {display.number(run.summary.get('temperature'), 2)}")

st.subheader("Images in a cell")
c = st.columns(2)
true_grade = c[0].selectbox("True grade", range(len(GRADE_NAMES)), key="cell_true",
                            format_func=lambda g: f"{g} {GRADE_NAMES[g]}")
pred_grade = c[1].selectbox("Predicted grade", range(len(GRADE_NAMES)), key="cell_pred",
                            format_func=lambda g: f"{g} {GRADE_NAMES[g]}")


def gallery() -> None:
    """The images of the picked cell; returns early (not st.stop) so the page goes on below."""
    preds = runs.read_predictions(run.path)
    if preds is None:
        st.info("This run has no predictions.csv, so its images cannot be listed.")
        return
    cell = preds[(preds["split"] == split) & (preds["label"] == true_grade) & (preds["pred"] == pred_grade)]
    if cell.empty:
        st.info(f"No {split} image is true {GRADE_NAMES[true_grade]}, predicted {GRADE_NAMES[pred_grade]}. "
                "Click another square.")
        return
    try:
        source = load_source(*(run.config.get(k, d) for k, d in (("data", "retinamnist"), ("val_fraction", 0.1),
                                                                 ("seed", 0), ("patient_column", ""),
                                                                 ("patient_regex", ""))))
        images = [figures.display_image(source.splits[split].image(int(i))) for i in cell["index"].head(GALLERY_SIZE)]
    except (DataError, ImageError, KeyError, IndexError) as err:
        st.warning(f"The images of this run's dataset cannot be shown: {err}")
        return
    st.caption(f"True {GRADE_NAMES[true_grade]}, predicted {GRADE_NAMES[pred_grade]}: {len(cell)} {split} image(s), "
               f"showing {len(images)}. Under each: its name and P({GRADE_NAMES[pred_grade]}).")
    st.image(images, width=112, caption=[f"{row['name']} · {row[f'p{pred_grade}']:.0%}"
                                         for _, row in cell.head(GALLERY_SIZE).iterrows()])


gallery()

# ---------------------------------------------------------------- take the grader out
st.subheader("Take this grader out")
st.caption("The model card says what this grader is for and not for, what it learned from and how well it "
           "did, in Markdown or HTML. The export is the model (ONNX or TorchScript; normalisation, flip averaging "
           "and the temperature inside), preprocessing.json, the card and, for ONNX, predict_onnx.py, which grades "
           "files and folders with only onnxruntime, numpy and Pillow.")


# Built when a card is downloaded, not when the page opens: the card reads the run's dataset and
# scores its operating point, and the export needs torch, which takes seconds to import.
@st.cache_data(show_spinner=False, max_entries=16)
def card_texts(run_dir: str, mtime: float) -> tuple[str, str]:  # noqa: ARG001 - mtime keys the cache
    from retino_core.report import modelcard

    card = modelcard.build(run_dir)
    return modelcard.to_markdown(card), modelcard.to_html(card)


summary_mtime = (run.path / "summary.json").stat().st_mtime
c = st.columns(2)
c[0].download_button("Model card (Markdown)", lambda: card_texts(str(run.path), summary_mtime)[0],
                     file_name=f"{run.run_id}-model-card.md", mime="text/markdown", icon=":material/description:")
c[1].download_button("Model card (HTML)", lambda: card_texts(str(run.path), summary_mtime)[1],
                     file_name=f"{run.run_id}-model-card.html", mime="text/html", icon=":material/description:")
fmt = st.radio("Export format", list(exported.FORMATS), horizontal=True, key="export_format",
               help="ONNX runs anywhere onnxruntime does; TorchScript needs torch")
folder = exported.default_folder(run.path, fmt)
done = exported.read_export(folder)
if st.button("Export again" if done else f"Export as {fmt}", icon=":material/output:"):
    from retino_core.errors import CheckpointError
    from retino_core.grading import export

    with st.spinner("Exporting and checking the export against the app's model on the test images…"):
        try:
            export.export_run(run.path, fmt, folder)
        except (export.ExportError, CheckpointError, DataError, runs.RunError) as err:
            st.error(f"The export failed: {err}")
    done = exported.read_export(folder)
if done:
    checked = done["verified"]
    st.download_button(f"Download {run.run_id}-{fmt}.zip", lambda: exported.zip_folder(folder),
                       file_name=f"{run.run_id}-{fmt}.zip", mime="application/zip", icon=":material/download:")
    st.caption(f"Checked on {checked['images']} {checked['on']} images: every probability within "
               f"{checked['max_abs_diff']:.1e} of the app's. Verdict written into it: {done['trust']['verdict']}.")
