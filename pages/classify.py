"""Classify: grade uploaded fundus photographs with one or several trained runs, side by side,
with their ensemble and Grad-CAM. Each photo gets one answer (judging.decision.decide): graded,
not graded (with the reasons) or no usable model; only a graded photo shows a grade."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core import runs
from retino_core.judging import external, operating, trust
from retino_core.judging.decision import NO_USABLE_MODEL, NOT_GRADED, combine, decide
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
def load_predictor(run_dir: str, stamp: tuple):  # noqa: ARG001 - stamp keys the cache
    """One Predictor per run, loaded as predict loads it (Predictor.from_run: the run's verdict,
    operating point and grading probabilities); a newer best.pt or summary.json reloads it."""
    from retino_core.grading.predictor import Predictor

    return Predictor.from_run(run_dir)


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
c = st.columns(3)
use_sample = c[0].checkbox("Bundled sample photo", value=False, help="a CC0 fundus photograph shipped with retino")
tta = c[1].toggle("Test-time augmentation", value=bool(chosen) and all(by_id[i].config.get("tta") for i in chosen),
                  key="tta", help="average the model over flipped copies; on at first when every chosen run "
                  "was evaluated that way")
show_cam = c[2].toggle("Grad-CAM", value=True, key="grad_cam", help="where the model looked for its answer")
c = st.columns(2)
include_all = c[0].toggle("Show what models that are not usable would say", value=False, key="include_all",
                          help="a model whose verdict is weak or no better than guessing never grades and never "
                               "enters the ensemble; on: its answers are shown open, greyed, as what it would say")
opacity = c[1].slider("Grad-CAM opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity", disabled=not show_cam)
for run_id, note in calibration.items():
    if note:
        st.caption(f"{'' if note['helps'] else ':material/info: '}Calibration of {by_id[run_id].configuration} · "
                   f"{display.short_label(by_id[run_id])}: {note['sentence']}"
                   + ("" if note["helps"] else " Every door grades this model with its own, uncalibrated "
                                               "probabilities (Evaluation shows both)."))

images, names, unreadable = [], [], 0
for upload in uploads or []:
    try:
        images.append(load_image(upload.getvalue(), upload.name))
        names.append(upload.name)
    except ImageError as err:
        st.error(f"Skipped: {err}")
        unreadable += 1
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
    run_dir = by_id[run_id].path
    try:
        stamp = tuple(p.stat().st_mtime for p in (runs.checkpoint_path(run_dir), run_dir / "summary.json"))
        predictors[run_id] = load_predictor(str(run_dir), stamp)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError
        st.error(f"{run_id}: {err}")
if not predictors:
    st.stop()

labels = {i: f"{by_id[i].configuration} · {display.short_label(by_id[i])}" for i in predictors}
members = [i for i in predictors if usable[i]]  # the ensemble votes only with usable models
if not members:
    st.error("**None of the chosen models is usable.** What they say below is not a grade: "
             + " ".join(f"{labels[i]} is {trust.label(verdicts[i])}." for i in predictors)
             + " Train a model that beats the majority baseline (the Results page says why these do not).",
             icon=":material/block:")
elif len(members) < len(predictors):
    st.warning("Left out of the ensemble and shown greyed: "
               + "; ".join(f"{labels[i]} ({trust.label(verdicts[i])})" for i in predictors if i not in members) + ".")
for i in predictors:
    if predictors[i].ood_stats is None:
        st.caption(f":material/info: {labels[i]}: not checked against its training photos (its checkpoint predates "
                   "the feature statistics); only the field of view and the retinal detail are checked.")


@st.cache_data(show_spinner=False, max_entries=32)
def operating_point(run_ids: tuple[str, ...], stamp: tuple):  # noqa: ARG001 - stamp keys the cache
    """The referral threshold of one run or of the average of several (operating.of_runs)."""
    from retino_core.judging import operating

    return operating.of_runs([by_id[i].path for i in run_ids])


def point_of(run_ids: list[str]):
    stamp = tuple((runs.checkpoint_path(by_id[i].path).stat().st_mtime) for i in run_ids)
    return operating_point(tuple(run_ids), stamp)


with st.spinner("Grading…"):
    results = {i: p.run(images, tta=tta) for i, p in predictors.items()}
probs = {i: r[0] for i, r in results.items()}
checks = {i: r[1] for i, r in results.items()}
voters = members or list(predictors)  # with no usable model: what the others would say, never a grade
stack = np.stack([probs[i] for i in voters])  # (models, images, grades)
ensemble, low, high = stack.mean(0), stack.min(0), stack.max(0)
point = point_of(voters)
answers = [decide(ensemble[k], combine([checks[i][k] for i in voters]), point, bool(members))
           for k in range(len(images))]
points = {i: point_of([i]) for i in predictors}
own = {i: [decide(probs[i][k], checks[i][k], points[i], usable[i]) for k in range(len(images))]
       for i in predictors}  # each model alone, with its own threshold


def yes_no(refer: bool) -> str:
    return "yes" if refer else "no"


def cam(run_id: str, k: int, grade: int) -> None:
    """Grad-CAM of ``grade`` for one model, or a sentence when the map is flat."""
    from retino_core.judging.photo import field_of_view_mask

    shown = figures.display_image(images[k].copy(), OVERLAY_SIDE)  # small ones up, large ones down
    shown.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    heat, mask = predictors[run_id].grad_cam(shown, target=grade), field_of_view_mask(shown)
    layer, _, grid = predictors[run_id].cam_layer()
    if not figures.cam_stands_out(heat, mask):
        st.caption(f"Grad-CAM for {grade} · {GRADE_NAMES[grade]}: {figures.FLAT_CAM} (the map is nearly flat, so it "
                   "shows nothing about where the model looked).")
        return
    st.plotly_chart(figures.cam_figure(shown, heat, mask, opacity), width="stretch", key=f"cam-{run_id}-{k}",
                    config={"displayModeBar": False})
    st.caption(f"Grad-CAM for {grade} · {GRADE_NAMES[grade]}: where this model found evidence for that grade "
               f"({layer}, {grid[0]}×{grid[1]} cells; outside the field of view left uncoloured)")


measured = {i: external.measured_where(by_id[i].path, by_id[i].summary) for i in predictors}


def model_card(run_id: str, k: int) -> None:
    """One model's own answer for image k; greyed, as what it would say, unless it grades."""
    d = own[run_id][k]
    with st.container(border=True):
        head = f"**{labels[run_id]}** · {display.verdict_badge(verdicts[run_id])}"
        if d.graded:
            st.markdown(f"{head}  \ngrade **{d.grade} · {d.grade_name}** · refer {yes_no(d.refer)} "
                        f"(P(grade ≥ 2) {display.percent(d.referable_probability)})")
        else:
            st.markdown(f":gray[{head}]  \n:gray[would say {d.would_say_grade} · {d.would_say_grade_name}, refer "
                        f"{yes_no(d.would_say_refer)}: not a grade]")
            if not usable[run_id]:
                st.caption(trust.warning(verdicts[run_id]))
        if len(predictors) > 1 or not members:  # a single usable model's bars are the answer's, above
            st.plotly_chart(figures.probability_figure({labels[run_id]: probs[run_id][k]}, height=220,
                                                       colours=None if usable[run_id] else ["#b0b0b0"]),
                            width="stretch", key=f"p-{run_id}-{k}")
        st.caption(f"{predictors[run_id].domain()}; {measured[run_id]}.")
        if show_cam:
            cam(run_id, k, d.would_say_grade)


def cards(run_ids: list[str], k: int) -> None:
    for column, run_id in zip(st.columns(len(run_ids)), run_ids):
        with column:
            model_card(run_id, k)


def answer(k: int) -> None:
    """The one answer for image k: a grade and referral when graded, the reasons when not."""
    d = answers[k]
    single = len(voters) == 1
    title = labels[voters[0]] if single else f"Ensemble of {len(voters)} models"
    if d.status == NOT_GRADED:
        st.warning("**Not graded.** " + " ".join(d.reasons), icon=":material/help:")
        return
    if d.status == NO_USABLE_MODEL:
        st.markdown(f":gray[Not a grade: no chosen model is usable. They would say {d.would_say_grade} · "
                    f"{d.would_say_grade_name}.]")
        return
    st.metric(f"{title}: predicted grade", f"{d.grade} · {d.grade_name}")
    st.markdown(f"Refer: **{yes_no(d.refer)}** · P(referable DR, grade ≥ 2) = {display.percent(d.referable_probability)} "
                f"against the threshold {d.threshold:.2f}" + (" chosen on validation" if point.reliable else ""))
    if not point.reliable:
        st.caption(f":material/warning: {point.sentence()}")
    for line in list(d.warnings) + [predictors[voters[0]].thumbnail_note(images[k].size) or ""]:
        if line:
            st.caption(f":material/info: {line}")
    if not single:
        votes = [own[i][k].grade for i in members]
        spread = display.percent(float((high[k] - low[k]).max()))
        if len(set(votes)) == 1:
            st.success(f"The models agree. Largest spread of a probability between them: {spread}.")
        else:
            st.warning("The models disagree: " + "; ".join(f"{labels[i]} says {GRADE_NAMES[v]}" for i, v in
                                                           zip(members, votes))
                       + f". Largest spread of a probability between them: {spread}.")
    if not single:
        st.caption("bars show the lowest to highest probability among the models")
    st.plotly_chart(figures.probability_figure({"ensemble" if not single else "probability": ensemble[k]},
                                               None if single else (low[k], high[k])), width="stretch", key=f"ens-{k}")


def detail(k: int) -> None:
    """One image: its answer, then each model's own; what is not a grade folded away."""
    photo, right = st.columns([1, 2])
    photo.image(figures.display_image(images[k], OVERLAY_SIDE), caption=names[k], width=OVERLAY_SIDE)
    with right:
        answer(k)
    others = [i for i in predictors if i not in members]
    if answers[k].graded:
        cards(members, k)
    elif members:
        with st.expander("What the models would say (not a grade)", expanded=include_all):
            cards(members, k)
    if others:
        with st.expander("What the models that are not usable would say (not a grade)", expanded=include_all):
            cards(others, k)


if len(images) == 1:
    detail(0)
    st.stop()


def table_of_answers() -> pd.DataFrame:
    """One row per photo: the answer's keys (as predict's CSV), the spread, each model's own grade."""
    rows = []
    for k, d in enumerate(answers):
        row = {"image": names[k], **d.to_dict(), "max_spread": float((high[k] - low[k]).max())}
        row.update(reasons=" ".join(d.reasons), warnings=" ".join(d.warnings))
        row.update({f"grade · {labels[i]}": own[i][k].grade for i in members})
        if include_all:
            row.update({f"would say · {labels[i]}": own[i][k].would_say_grade for i in predictors if i not in members})
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in [c for c in table.columns if c == "grade" or c.startswith("grade · ")]:
        table[column] = table[column].astype("Int64")  # empty where not graded, never 2.0
    return table


from retino_core.grading.batch import UNREADABLE, Tally  # noqa: E402 - torch, loaded by the models above anyway

table = table_of_answers()
tally = Tally(predictors[voters[0]].image_size)
for k, d in enumerate(answers):
    tally.add(d.to_dict(), images[k].size)
for _ in range(unreadable):
    tally.add({"status": UNREADABLE})
st.subheader(f"{len(images)} photographs" + (f" (ensemble of {len(voters)} models)" if len(voters) > 1 else ""))
st.caption(". ".join(tally.lines()[:1]) + ". " + ("" if point.reliable else point.sentence() + " ")
           + " ".join(tally.lines()[1:]))
st.dataframe(table, hide_index=True, width="stretch", column_config={
    c: st.column_config.NumberColumn(format="percent") for c in table.columns
    if c.startswith("p_") or c in ("max_spread", "referable_probability")})
st.download_button("Download the table (CSV)", table.to_csv(index=False), file_name="retino_grades.csv",
                   mime="text/csv", icon=":material/download:")
k = st.selectbox("Look at one photograph", range(len(images)), format_func=lambda i: f"{names[i]} · {answers[i].status}")
detail(k)
