"""Classify: grade uploaded fundus photographs with one or several trained runs, side by side,
with their ensemble and Grad-CAM."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core import report, runs, viz
from retino_core.config import GRADE_NAMES
from retino_core.data import SAMPLE_IMAGE, ImageError, load_image

if not st.session_state.get("app"):  # opened before streamlit_app.py ran: see there
    st.session_state.return_to = "pages/classify.py"
    st.switch_page("streamlit_app.py")

OVERLAY_SIDE = 320  # Grad-CAM is drawn on a copy this wide; the model sees the original


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def load_predictor(checkpoint: str, mtime: float, run_id: str):
    """One Predictor per checkpoint file and modification time (a newer best.pt reloads)."""
    from retino_core.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, run_id)


st.title("Classify")

all_runs = runs.list_runs()
usable = [r for r in all_runs if r.state == "done" and runs.checkpoint_path(r.path).exists()]
if not usable:
    st.info("No trained model yet: train one (or all four) first, then grade photographs here.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

by_id = {r.run_id: r for r in usable}
default = [r.run_id for r in report.pick_four(usable, done_only=True).values() if r is not None]
chosen = st.multiselect("Models", list(by_id), default=default,
                        format_func=lambda i: f"{by_id[i].configuration} · {viz.short_label(by_id[i])}",
                        help="by default the newest finished run of each of the four configurations")
uploads = st.file_uploader("Fundus photographs (JPEG or PNG)", type=["jpg", "jpeg", "png"],
                           accept_multiple_files=True)
c = st.columns(4)
use_sample = c[0].checkbox("Bundled sample photo", value=False, help="a CC0 fundus photograph shipped with retino")
calibrated = c[1].toggle("Calibrated probabilities", value=True, key="calibrated",
                         help="logits divided by the temperature fitted on the validation split")
tta = c[2].toggle("Test-time augmentation", value=bool(chosen) and all(by_id[i].config.get("tta") for i in chosen),
                  key="tta", help="average the model over flipped copies; on at first when every chosen run "
                  "was evaluated that way")
show_cam = c[3].toggle("Grad-CAM", value=True, key="grad_cam", help="where the model looked for its answer")

images, names = [], []
for upload in uploads or []:
    try:
        images.append(load_image(upload.getvalue(), upload.name))
        names.append(upload.name)
    except ImageError as err:
        st.error(f"Skipped: {err}")
if use_sample:
    images.append(load_image(SAMPLE_IMAGE))
    names.append("sample fundus photo (CC0)")
if not images:
    st.info("Upload one or more fundus photographs, or tick the bundled sample.")
    st.stop()
if not chosen:
    st.info("Choose at least one model above.")
    st.stop()

predictors = {}
for run_id in chosen:
    path = runs.checkpoint_path(by_id[run_id].path)
    try:
        predictors[run_id] = load_predictor(str(path), path.stat().st_mtime, run_id)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError
        st.error(f"{run_id}: {err}")
if not predictors:
    st.stop()

labels = {i: f"{by_id[i].configuration} · {viz.short_label(by_id[i])}" for i in predictors}
with st.spinner("Grading…"):
    probs = {i: p.probabilities(images, tta=tta, calibrated=calibrated) for i, p in predictors.items()}
stack = np.stack(list(probs.values()))  # (models, images, grades)
ensemble, low, high = stack.mean(0), stack.min(0), stack.max(0)


def grad_cam(predictor, k: int, grade: int):
    from retino_core.predict import overlay

    shown = images[k].copy()
    shown.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    return overlay(shown, predictor.grad_cam(shown, target=grade))


def detail(k: int) -> None:
    """One image: the (ensemble) answer, and per model the probabilities and Grad-CAM."""
    grade = int(ensemble[k].argmax())
    single = len(predictors) == 1
    photo, answer = st.columns([1, 2])
    photo.image(viz.display_image(images[k], OVERLAY_SIDE), caption=names[k], width=OVERLAY_SIDE)
    with answer:
        title = labels[next(iter(predictors))] if single else "Ensemble (mean of the models)"
        st.metric(f"{title}: predicted grade", f"{grade} · {GRADE_NAMES[grade]}")
        st.caption(f"P(referable DR, grade ≥ 2) = {viz.percent(float(ensemble[k, 2:].sum()))}"
                   + (" · bars show the lowest to highest probability among the models" if not single else ""))
        if not single:
            votes = [int(probs[i][k].argmax()) for i in predictors]
            spread = viz.percent(float((high[k] - low[k]).max()))
            if len(set(votes)) == 1:
                st.success(f"The models agree. Largest spread of a probability between them: {spread}.")
            else:
                st.warning("The models disagree: " + "; ".join(
                    f"{labels[i]} says {GRADE_NAMES[v]}" for i, v in zip(predictors, votes))
                    + f". Largest spread of a probability between them: {spread}.")
        st.plotly_chart(viz.probability_figure({"ensemble" if not single else "probability": ensemble[k]},
                                               None if single else (low[k], high[k])),
                        width="stretch", key=f"ens-{k}")
    if single:
        if show_cam:
            photo.image(grad_cam(next(iter(predictors.values())), k, grade),
                        caption=f"Grad-CAM for {GRADE_NAMES[grade]}", width=OVERLAY_SIDE)
        return
    for column, (run_id, predictor) in zip(st.columns(len(predictors)), predictors.items()):
        with column.container(border=True):
            g = int(probs[run_id][k].argmax())
            st.markdown(f"**{labels[run_id]}**  \ngrade **{g} · {GRADE_NAMES[g]}** "
                        f"({viz.percent(float(probs[run_id][k, g]))})")
            st.plotly_chart(viz.probability_figure({labels[run_id]: probs[run_id][k]}, height=220),
                            width="stretch", key=f"p-{run_id}-{k}")
            if show_cam:
                st.image(grad_cam(predictor, k, g), width="stretch", caption=f"Grad-CAM for {GRADE_NAMES[g]}")


if len(images) == 1:
    detail(0)
    st.stop()

table = pd.DataFrame({"image": names, "grade": ensemble.argmax(1),
                      "grade_name": [GRADE_NAMES[g] for g in ensemble.argmax(1)],
                      "p_referable": ensemble[:, 2:].sum(1), "max_spread": (high - low).max(1)})
for g, name in enumerate(GRADE_NAMES):
    table[f"p_{g}_{name.replace(' ', '_').lower()}"] = ensemble[:, g]
for run_id in predictors:
    table[f"grade · {labels[run_id]}"] = probs[run_id].argmax(1)
st.subheader(f"{len(images)} photographs" + (" (ensemble of the chosen models)" if len(predictors) > 1 else ""))
st.dataframe(table, hide_index=True, width="stretch", column_config={
    c: st.column_config.NumberColumn(format="percent") for c in table.columns if c.startswith("p_") or c == "max_spread"})
st.download_button("Download the table (CSV)", table.to_csv(index=False), file_name="retino_grades.csv",
                   mime="text/csv", icon=":material/download:")
k = st.selectbox("Look at one photograph", range(len(images)), format_func=lambda i: names[i])
detail(k)
