"""Overview: the dataset in use, where each of the four configurations stands, train all four."""

import numpy as np
import pandas as pd
import streamlit as st

from retino_core.training import launch
from retino_core import runs
from retino_core.judging import champions
from retino_core.models import weights
from retino_core.config import GRADE_NAMES, PRESETS, ConfigError
from retino_core.errors import DataError, ImageError
from retino_core.data.splits import DatasetInvalid
from retino_core.data.sources import open_source
from retino_core.data.patients import describe_patients

from pages import at_once_now, runs_at_once, set_runs_at_once, stand_in_picker, stand_ins, through_the_app
from retino_core.report import lab
from retino_core.report import figures
from retino_core.report import display
from retino_core.report import eta

through_the_app(__file__)


@st.cache_resource(show_spinner="Reading the dataset…", max_entries=4)
def load_source(spec: str):
    return open_source(spec)


st.title("retino: diabetic-retinopathy grading")
st.caption("ResNet18 and ResNet50, with and without ImageNet pretraining. Train them on the Train page, "
           "watch them on Live, read them on Results, compare them on Compare, check their screening "
           "numbers on Evaluation.")

# ---------------------------------------------------------------- the dataset

st.subheader("Dataset")
data = st.session_state.setdefault("data", lab.default_data(runs.list_runs()))
with st.form("dataset", border=False):
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    spec = left.text_input(
        "Dataset in use", value=data,
        help="`retinamnist` for the bundled RetinaMNIST (1,600 images), or the path of a lab folder "
             "(train_img.csv, train_label.csv, test_img.csv, test_label.csv and the images), "
             "or of a labels .csv with an image and a grade column.")
    if right.form_submit_button("Use this dataset", width="stretch"):
        spec = spec.strip() or "retinamnist"
        try:
            load_source(spec)
        except DatasetInvalid as err:
            st.error(f"Cannot use this dataset: {err.report.markdown()}")
        except DataError as err:
            st.error(f"Cannot use this dataset: {err}")
        else:
            st.session_state.data = data = spec


def show_dataset(source) -> None:
    counts = source.counts()
    st.markdown(f"**{source.name}** · " + " · ".join(f"{split} {sum(c):,}" for split, c in counts.items())
                + f" images · always answering the commonest grade scores **{display.percent(source.majority_share())}** on test")
    for note in source.notes:
        st.caption(note)
    for line in describe_patients(source.report.info.get("patients", {})):
        st.caption(line.strip())
    if source.report.warnings:
        with st.expander(f"{len(source.report.warnings)} warning(s) about this dataset"):
            st.markdown(source.report.markdown())
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.counts_figure(counts), width="stretch")
    right.dataframe(pd.DataFrame(counts, index=GRADE_NAMES).T, width="stretch")
    train = source.splits["train"]
    first = {grade: int(np.argmax(train.labels == grade)) for grade in range(len(GRADE_NAMES))
             if (train.labels == grade).any()}
    st.caption("One training image of each grade")
    st.image([figures.display_image(train.image(i)) for i in first.values()],
             caption=[f"{g} {GRADE_NAMES[g]}" for g in first], width=112)


try:
    show_dataset(load_source(data))
except DatasetInvalid as err:
    st.error(f"The dataset in use cannot be read: {err.report.markdown()}\n\nPoint to another one above.")
except (DataError, ImageError) as err:
    st.error(f"The dataset in use cannot be read: {err}. Point to another one above.")

# ---------------------------------------------------------------- the four configurations

st.subheader("The four configurations")


def activity(state) -> None:
    """What a configuration's other runs are doing: a training run's progress, the queue, a failure."""
    if state.running:
        run = state.running[0]
        progress = display.run_progress(run, runs.step_rows(run.path))
        st.progress(progress.fraction, text=f"training: {progress.text}")
        st.caption(display.slot_text(run))
    rest = "; ".join(w for w in state.activity().split("; ") if w and "training" not in w)
    if rest:
        st.caption(f":orange[{rest}]" if state.failed is not None else rest)
    error = str(state.failed.status.get("error") or "") if state.failed is not None else ""
    if len(error) > 120:
        with st.expander("Whole message"):
            st.caption(error)


def numbers(champion) -> None:
    """The champion's headline numbers, its verdict, and which run it is and why."""
    s = champion.run.summary
    verdict = champion.verdict
    acc, base = s.get("test_acc"), s.get("test_majority_acc")
    delta = None if acc is None or base is None else 100 * (acc - base)
    st.metric("test accuracy", display.percent(acc), delta=None if delta is None else f"{delta:+.1f} pts vs majority",
              delta_color=display.verdict_colour(verdict),
              help=f"majority-class baseline {display.percent(base)}: always answering the commonest grade")
    st.metric("QWK", display.number(s.get("test_qwk")),
              help="quadratic weighted kappa: agreement with the graders, 0 = chance, 1 = perfect")
    st.caption(f"referable-DR AUC {display.number(s.get('test_referable_auc'))} · "
               f"trained {display.duration(s.get('train_seconds'))}")
    st.markdown(f"verdict: {display.verdict_badge(verdict)}")
    if verdict and verdict["reasons"]:
        st.caption(verdict["reasons"][0])
    st.caption(f"stands for it: {display.short_label(champion.run)} ({champion.reason})")


@st.fragment(run_every=2)
def configuration_cards() -> None:
    all_runs = runs.list_runs()
    now = champions.standing(all_runs, data)
    shown = lab.champion_four(all_runs, data, stand_ins(data))
    for column, name in zip(st.columns(4), lab.CONFIGURATIONS):
        with column.container(border=True):
            st.markdown(f"**{name}**")
            if name not in now:
                needs_weights(name)
                continue
            activity(now[name])
            if shown[name] is None:
                if not now[name].activity():
                    st.caption("no finished run on this dataset yet")
                continue
            numbers(shown[name])
            if now[name].champion and now[name].champion.finished > 1:
                with st.popover("Another run", icon=":material/swap_horiz:"):
                    stand_in_picker(st, all_runs, data, name, key=f"overview-stand-in-{name}")


def four_estimate(configs: list, at_once: int) -> None:
    """How long the four would take here, from the speeds past runs measured on this machine."""
    all_runs = runs.list_runs()
    speeds = eta.measured_speeds(all_runs)
    sizes = eta.sizes_from_runs(all_runs, configs[0].to_dict())
    if sizes is None and speeds:
        try:
            counts = {split: len(part) for split, part in load_source(data).splits.items()}
        except (DataError, ImageError):
            return
        sizes = counts.get("train", 0), sum(n for split, n in counts.items() if split != "train")
    if not speeds or sizes is None:
        return
    queued = eta.current_jobs(all_runs, speeds, lambda c: eta.sizes_from_runs(all_runs, c), at_once_now())
    total = eta.behind_queue([c.to_dict() for c in configs], sizes, speeds, at_once, queued)
    epochs = sorted({c.epochs for c in configs})
    st.caption(f"{len(configs)} runs of {' or '.join(map(str, epochs))} epochs, {at_once} at a time: all done in "
               f"about **{display.duration(total.seconds)}**" + (" including the queue" if queued else "")
               + " (from the speeds measured by earlier runs on this machine).")


def needs_weights(name: str) -> None:
    """An empty card: a pretrained configuration whose ImageNet weights file is missing says so,
    with a link to the installer; the others wait for a first run."""
    arch, pretrained = next((a, p) for a, p in lab.FOUR if lab.configuration_name(a, p) == name)
    if pretrained and not weights.cached_file(arch).is_file():
        st.caption(f"needs the ImageNet weights file ({weights.file_name(arch)}), which is not on this machine "
                   "yet; online it downloads by itself")
        st.page_link("pages/train.py", label="Install the weights", icon=":material/download:",
                     query_params={"install": "weights"})
    else:
        st.caption("not trained on this dataset yet")


configuration_cards()

# Plain widgets, not a form: Enter in a field queues nothing, and the estimate follows the fields.
left, middle, slots, right = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
preset = left.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("cpu"), key="four_preset",
                        help="cpu: RetinaMNIST on a laptop in minutes; fast: a GPU recipe; "
                             "lab: the lab report's recipe, unchanged")
n_seeds = middle.number_input("Seeds", 1, 10, 1, key="four_seeds", help="train each configuration this many times "
                              "(seeds 0, 1, ...): Compare shows the mean ± SD over seeds next to each run's interval")
at_once = runs_at_once(slots, "four_at_once")
clicked = right.button("Train all four on this dataset", type="primary", icon=":material/play_arrow:")
four_estimate(lab.four_configs(preset, seeds=int(n_seeds), data=data), at_once)
if clicked:
    try:
        configs = lab.four_configs(preset, seeds=int(n_seeds), data=data)
        # Pretrained runs that could not get their ImageNet weights would fail minutes later in the queue.
        refused = weights.refused_pretrained(configs)
        for cfg, reason in refused:
            st.error(f"Not queued: {lab.configuration_name(cfg.arch, cfg.pretrained)} (seed {cfg.seed}): {reason}.")
        if refused:
            st.page_link("pages/train.py", label="Install the ImageNet weights", icon=":material/download:",
                         query_params={"install": "weights"})
        how = set_runs_at_once(at_once)
        queued = [launch.enqueue(cfg.to_dict()) for cfg in configs if cfg not in [c for c, _ in refused]]
    except (ConfigError, DataError, runs.RunError) as err:
        st.error(f"Could not queue the runs: {err}")
    else:
        new = sum(created for _, created in queued)
        if queued:
            st.success(f"Queued {new} run(s)" + (f"; {len(queued) - new} identical run(s) were already queued or "
                                                  "running" if new < len(queued) else "") + f". {how}")
            st.page_link("pages/live.py", label="Watch them on the Live page", icon=":material/monitoring:")
