"""Classify: grade uploaded fundus photographs with one or several trained runs, side by side,
with their ensemble and Grad-CAM; a grade is shown only where it can be trusted."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core import runs
from retino_core.judging import operating, trust
from retino_core.config import GRADE_NAMES
from retino_core.data.images import SAMPLE_IMAGE, load_image
from retino_core.errors import ImageError

from pages import choose_runs, share_runs, stand_ins, through_the_app, user_chose
from retino_core.report import lab
from retino_core.report import figures
from retino_core.report import display

through_the_app(__file__)

OVERLAY_SIDE = 320  # Grad-CAM is drawn on a copy this wide; the model sees the original
UPLOAD_TYPES = ["jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "gif"]


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def load_predictor(checkpoint: str, mtime: float, run_id: str):
    """One Predictor per checkpoint file and modification time (a newer best.pt reloads)."""
    from retino_core.grading.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, run_id)


@st.cache_data(show_spinner=False, max_entries=32)
def calibration_of(run_dir: str, temperature: float | None) -> dict | None:
    """Whether the run's temperature improved its test probabilities (read from predictions.csv)."""
    return operating.calibration_check(run_dir, temperature)


st.title("Classify")

all_runs = runs.list_runs()
finished = [r for r in all_runs if r.state == "done" and runs.checkpoint_path(r.path).exists()]
if not finished:
    st.info("No trained model yet: train one (or all four) first, then grade photographs here.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

by_id = {r.run_id: r for r in finished}
verdicts = {i: trust.of_summary(r.summary) for i, r in by_id.items()}
usable = {i: trust.is_usable_verdict(v) for i, v in verdicts.items()}
data = st.session_state.get("data") or lab.default_data(all_runs)
if not any(lab.champion_four(finished, data).values()):  # no model on the dataset in use: the newest model's
    data = lab.default_data(finished)
standing = {name: c for name, c in lab.champion_four(all_runs, data, stand_ins(data)).items() if c is not None}
# ?runs=A,B opens these models; else this session's choice; else the run standing for each configuration.
choose_runs("classify_models", "runs", list(by_id), [c.run.run_id for c in standing.values() if c.run.run_id in by_id],
            many=True)
chosen = st.multiselect(
    "Models", list(by_id), key="classify_models", on_change=user_chose, args=("classify_models",),
    format_func=lambda i: f"{by_id[i].configuration} · {display.short_label(by_id[i])} · {trust.label(verdicts[i])}",
    help="by default the run that stands for each configuration on the dataset in use (its champion: the pinned "
         "run, else the best usable one by the validation-selected metric); only usable models enter the "
         "ensemble unless you include the others below")
share_runs("runs", "classify_models")
st.caption(f"Standing for each configuration on {display.data_label(data)}: " + "; ".join(
    f"{name}: {display.short_label(c.run)} ({c.reason})" for name, c in standing.items())
    + ". Add or remove models above; Compare and Overview offer another run for a configuration.")
calibration = {i: calibration_of(str(by_id[i].path), by_id[i].summary.get("temperature")) for i in chosen}
uploads = st.file_uploader("Fundus photographs (JPEG, PNG, TIFF, WebP, BMP or GIF)", type=UPLOAD_TYPES,
                           accept_multiple_files=True)
c = st.columns(4)
use_sample = c[0].checkbox("Bundled sample photo", value=False, help="a CC0 fundus photograph shipped with retino")
calibrated = c[1].toggle("Calibrated probabilities", key="calibrated",
                         value=bool(chosen) and all(x and x["helps"] for x in calibration.values()),
                         help="logits divided by the temperature fitted on the validation split; on at first "
                              "only when that improved every chosen model's test probabilities")
tta = c[2].toggle("Test-time augmentation", value=bool(chosen) and all(by_id[i].config.get("tta") for i in chosen),
                  key="tta", help="average the model over flipped copies; on at first when every chosen run "
                  "was evaluated that way")
show_cam = c[3].toggle("Grad-CAM", value=True, key="grad_cam", help="where the model looked for its answer")
c = st.columns(2)
include_all = c[0].toggle("Ensemble includes models that are not usable", value=False, key="include_all",
                          help="off: a model whose verdict is weak or no better than guessing is shown greyed "
                               "and left out of the ensemble")
opacity = c[1].slider("Grad-CAM opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity", disabled=not show_cam)
for run_id, note in calibration.items():
    if note:
        st.caption(f"{'' if note['helps'] else ':material/info: '}Calibration of {by_id[run_id].configuration} · "
                   f"{display.short_label(by_id[run_id])}: {note['sentence']}"
                   + ("" if note["helps"] else " Calibrated probabilities are off at first."))

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

labels = {i: f"{by_id[i].configuration} · {display.short_label(by_id[i])}" for i in predictors}
members = [i for i in predictors if usable[i] or include_all]
if not any(usable[i] for i in predictors):
    st.error("**None of the chosen models is usable.** What they say below is not a grade: "
             + " ".join(f"{labels[i]} is {trust.label(verdicts[i])}." for i in predictors)
             + " Train a model that beats the majority baseline (the Results page says why these do not).",
             icon=":material/block:")
elif len(members) < len(predictors):
    st.warning("Left out of the ensemble and shown greyed: "
               + "; ".join(f"{labels[i]} ({trust.label(verdicts[i])})" for i in predictors if i not in members) + ".")

with st.spinner("Grading…"):
    results = {i: p.run(images, tta=tta, calibrated=calibrated) for i, p in predictors.items()}
probs = {i: r[0] for i, r in results.items()}
checks = {i: r[1] for i, r in results.items()}
answering = members or list(predictors)  # with no usable model, the others are shown, greyed
stack = np.stack([probs[i] for i in answering])  # (models, images, grades)
ensemble, low, high = stack.mean(0), stack.min(0), stack.max(0)
first = next(iter(predictors))


judges = [i for i in predictors if usable[i]] or list(predictors)  # whose feature check counts


def out_of_distribution(k: int) -> list[str]:
    """Why image k is not like the training photos (empty when it is)."""
    reasons = []
    for i in judges:
        reasons += [w for w in checks[i][k].warnings if w.startswith("This does not look") and w not in reasons]
    return reasons


def other_warnings(k: int) -> list[str]:
    return [w for w in checks[first][k].warnings if not w.startswith("This does not look")]


def cam(run_id: str, k: int, grade: int) -> None:
    from retino_core.judging.photo import field_of_view_mask

    shown = figures.display_image(images[k].copy(), OVERLAY_SIDE)  # small ones up, large ones down
    shown.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    heat = predictors[run_id].grad_cam(shown, target=grade)
    st.plotly_chart(figures.cam_figure(shown, heat, field_of_view_mask(shown), opacity),
                    width="stretch", key=f"cam-{run_id}-{k}", config={"displayModeBar": False})
    layer, _, grid = predictors[run_id].cam_layer()
    st.caption(f"Grad-CAM for {GRADE_NAMES[grade]} ({layer}, {grid[0]}×{grid[1]} cells; "
               "outside the field of view left uncoloured)")


def model_card(run_id: str, k: int) -> None:
    """One model's answer for image k; greyed with its verdict when it is not usable."""
    g = int(probs[run_id][k].argmax())
    verdict = verdicts[run_id]
    with st.container(border=True):
        if usable[run_id]:
            st.markdown(f"**{labels[run_id]}** · {display.verdict_badge(verdict)}  \ngrade **{g} · {GRADE_NAMES[g]}** "
                        f"({display.percent(float(probs[run_id][k, g]))})")
        else:
            st.markdown(f":gray[**{labels[run_id]}**] · {display.verdict_badge(verdict)}  \n"
                        f":gray[would say {g} · {GRADE_NAMES[g]} ({display.percent(float(probs[run_id][k, g]))})]")
            st.caption(trust.warning(verdict))
        if len(predictors) > 1 or not members:  # a single usable model's bars are the answer's, above
            st.plotly_chart(figures.probability_figure({labels[run_id]: probs[run_id][k]}, height=220,
                                                   colours=None if usable[run_id] else ["#b0b0b0"]),
                            width="stretch", key=f"p-{run_id}-{k}")
        st.caption(predictors[run_id].domain())
        if show_cam:
            cam(run_id, k, g)


def detail(k: int) -> None:
    """One image: the (ensemble) answer where it can be trusted, then every model's."""
    grade = int(ensemble[k].argmax())
    single = len(answering) == 1
    photo, answer = st.columns([1, 2])
    photo.image(figures.display_image(images[k], OVERLAY_SIDE), caption=names[k], width=OVERLAY_SIDE)
    foreign = out_of_distribution(k)
    with answer:
        title = labels[answering[0]] if single else f"Ensemble of {len(answering)} models"
        if foreign:
            st.warning("**" + foreign[0].split(":")[0] + ".** Not graded: "
                       + " ".join(r.split(": ", 1)[1] for r in foreign), icon=":material/help:")
        elif not members:
            st.markdown(f":gray[Not a grade: models that are not usable would say {grade} · {GRADE_NAMES[grade]}.]")
        else:
            st.metric(f"{title}: predicted grade", f"{grade} · {GRADE_NAMES[grade]}")
            st.caption(f"P(referable DR, grade ≥ 2) = {display.percent(float(ensemble[k, 2:].sum()))}"
                       + (" · bars show the lowest to highest probability among the models" if not single else ""))
        for line in other_warnings(k):
            st.caption(f":material/info: {line}")
        if not single and members and not foreign:
            votes = [int(probs[i][k].argmax()) for i in answering]
            spread = display.percent(float((high[k] - low[k]).max()))
            if len(set(votes)) == 1:
                st.success(f"The models agree. Largest spread of a probability between them: {spread}.")
            else:
                st.warning("The models disagree: " + "; ".join(
                    f"{labels[i]} says {GRADE_NAMES[v]}" for i, v in zip(answering, votes))
                    + f". Largest spread of a probability between them: {spread}.")
        if members and not foreign:
            st.plotly_chart(figures.probability_figure({"ensemble" if not single else "probability": ensemble[k]},
                                                   None if single else (low[k], high[k])),
                            width="stretch", key=f"ens-{k}")
    with st.expander("What the models would say anyway (not a grade)", expanded=False) if (foreign or not members) \
            else st.container():
        for column, run_id in zip(st.columns(len(predictors)), predictors):
            with column:
                model_card(run_id, k)


if len(images) == 1:
    detail(0)
    st.stop()


def status(k: int) -> str:
    if out_of_distribution(k):
        return "not graded: unlike the training photos"
    return "graded" if members else "not graded: no usable model"


table = pd.DataFrame({"image": names, "status": [status(k) for k in range(len(images))],
                      "grade": ensemble.argmax(1), "grade_name": [GRADE_NAMES[g] for g in ensemble.argmax(1)],
                      "p_referable": ensemble[:, 2:].sum(1), "max_spread": (high - low).max(1),
                      "in_distribution": [not out_of_distribution(k) for k in range(len(images))],
                      "warnings": [" ".join(out_of_distribution(k) + other_warnings(k)) for k in range(len(images))]})
for g, name in enumerate(GRADE_NAMES):
    table[f"p_{g}_{name.replace(' ', '_').lower()}"] = ensemble[:, g]
for run_id in predictors:
    table[f"grade · {labels[run_id]}"] = probs[run_id].argmax(1)
st.subheader(f"{len(images)} photographs" + (f" (ensemble of {len(answering)} models)" if len(answering) > 1 else ""))
st.dataframe(table, hide_index=True, width="stretch", column_config={
    c: st.column_config.NumberColumn(format="percent") for c in table.columns if c.startswith("p_") or c == "max_spread"})
st.download_button("Download the table (CSV)", table.to_csv(index=False), file_name="retino_grades.csv",
                   mime="text/csv", icon=":material/download:")
k = st.selectbox("Look at one photograph", range(len(images)), format_func=lambda i: f"{names[i]} · {status(i)}")
detail(k)
