"""Train: start a run or all four, and stop, resume or delete runs. Runs train in their own
processes, one at a time; this page only writes requests and reads run folders."""

from pathlib import Path

import pandas as pd
import streamlit as st

from retino_core.training import cluster, launch
from retino_core import runs
from retino_core.judging import trust
from retino_core.models import weights
from retino_core.config import ARCHS, AUGMENTS, IMAGENET_WEIGHT_URLS, PRESETS, ConfigError, make_config
from retino_core.errors import DataError
from retino_core.data.splits import DatasetInvalid
from retino_core.data.sources import source_of
from retino_core.errors import ClusterError, WeightsError

from pages import at_once_now, runs_at_once, set_runs_at_once, through_the_app
from retino_core.report import lab
from retino_core.report import display

through_the_app(__file__)


@st.cache_resource(show_spinner="Checking the dataset…", max_entries=4)
def load_source(spec: str, val_fraction: float, seed: int, patient_column: str = "", patient_regex: str = ""):
    return source_of({"data": spec, "val_fraction": val_fraction, "seed": seed,
                      "patient_column": patient_column, "patient_regex": patient_regex})


st.title("Train")

# The preset sits outside the form so that choosing one refills the fields below.
preset = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("cpu"),
                      help="cpu: RetinaMNIST on a laptop in minutes; fast: a GPU recipe; "
                           "lab: the lab report's recipe, unchanged (and its collapse)")
d = PRESETS[preset]
with st.form("train"):
    data = st.text_input("Dataset", value=st.session_state.get("data") or lab.default_data(runs.list_runs()),
                         help="`retinamnist` (bundled), a lab folder with the four CSVs, or a labels .csv")
    left, right = st.columns(2)
    arch = left.radio("Architecture", ARCHS, horizontal=True, format_func=lab.COLUMN_NAMES.get)
    pretrained = right.toggle("Start from ImageNet weights", help="needs the weights in the torch cache or internet")
    c = st.columns(5)
    epochs = c[0].number_input("Epochs", 1, 500, d["epochs"], key=f"epochs-{preset}")
    batch_size = c[1].number_input("Batch size", 1, 1024, d["batch_size"], key=f"batch-{preset}")
    lr = c[2].number_input("Learning rate", 1e-6, 1.0, d["lr"], format="%.5f", step=1e-4, key=f"lr-{preset}")
    image_size = c[3].number_input("Image size (px)", 16, 1024, d["image_size"], step=16, key=f"size-{preset}")
    augment = c[4].selectbox("Augmentation", AUGMENTS, index=AUGMENTS.index(d["augment"]), key=f"aug-{preset}")
    with st.expander("More"):
        c = st.columns(3)
        max_steps = c[0].number_input("Max steps per epoch (0 = all)", 0, 100_000, 0,
                                      help="cap an epoch for a quick smoke run")
        seed = c[1].number_input("Seed", 0, 2**31 - 1, 0)
        name = c[2].text_input("Run name (optional)")
        weights_file = st.text_input("Start from a weights file (optional)",
                                     help="a state dict or a retino checkpoint on this machine (--weights); "
                                          "an ImageNet head is dropped")
        n_seeds = c[0].number_input("Seeds for Run all four", 1, 10, 1,
                                    help="train each configuration with this many seeds (Seed, Seed + 1, ...): "
                                         "Compare then shows their mean ± SD")
        patient_column = c[1].text_input("Patient column (optional)",
                                         help="the labels CSV's column naming each image's patient")
        patient_regex = c[2].text_input("Patient regex (optional)",
                                        help="a regular expression whose first group is the patient id in a file name")
        at_once = runs_at_once(c[0], "train_at_once")
    left, right = st.columns([1, 4])
    start = left.form_submit_button("Start", type="primary", icon=":material/play_arrow:")
    four = right.form_submit_button("Run all four", icon=":material/grid_view:",
                                    help="ResNet18 and ResNet50, with and without ImageNet weights, these settings")

if start or four:
    settings = dict(data=data.strip() or "retinamnist", epochs=int(epochs), batch_size=int(batch_size),
                    lr=float(lr), image_size=int(image_size), augment=augment,
                    max_steps_per_epoch=int(max_steps), seed=int(seed), name=name.strip(),
                    weights=weights_file.strip() or None, patient_column=patient_column.strip(),
                    patient_regex=patient_regex.strip())
    try:
        configs = (lab.four_configs(preset, seeds=int(n_seeds), **settings) if four
                   else [make_config(preset, arch=arch, pretrained=pretrained, **settings)])
        first = configs[0]  # the dataset fails here, with every problem listed, not in the queue
        checked = load_source(first.data, first.val_fraction, first.seed, first.patient_column, first.patient_regex)
        if checked.report.warnings:  # they do not stop a run, but are said before it is queued
            st.warning(f"The dataset has {len(checked.report.warnings)} warning(s): {checked.report.markdown()}")
        if settings["weights"] and not Path(settings["weights"]).expanduser().is_file():
            raise ConfigError(f"weights file {settings['weights']} not found")
        # Runs that need ImageNet weights nobody can fetch would fail minutes later in the queue.
        refused = weights.refused_pretrained(configs)
        for cfg, reason in refused:
            st.error(f"Not queued: {lab.configuration_name(cfg.arch, cfg.pretrained)} (seed {cfg.seed}): {reason}.")
        how = set_runs_at_once(at_once)
        queued = [launch.enqueue(cfg.to_dict()) for cfg in configs if cfg not in [c for c, _ in refused]]
    except DatasetInvalid as err:  # every problem of the dataset at once, as `validate` lists them
        st.error(f"Not started: {err.report.markdown()}")
    except (ConfigError, DataError, runs.RunError) as err:
        st.error(f"Not started: {err}")
    else:
        for run_dir, created in queued:
            st.success(f"Queued {run_dir.name}" if created else f"{run_dir.name} is already queued or running "
                       "with these exact settings")
        if len(queued) > 1:
            st.caption(how)
        st.page_link("pages/live.py", label="Watch on the Live page", icon=":material/monitoring:")

with st.expander("ImageNet weights (for pretrained runs)"):
    st.caption(f"Pretrained runs start from torchvision's ImageNet weights in the torch cache, {weights.cache_dir()}, "
               "downloaded there when the machine is online. Offline, install the files here.")
    for a in ARCHS:
        found = weights.cached_file(a)
        st.markdown(f"- **{a}**: " + (f":green[in the cache] ({found.stat().st_size / 1e6:.0f} MB)" if found.is_file()
                                      else f":orange[not in the cache]: `{found.name}` from {IMAGENET_WEIGHT_URLS[a]}"))
    upload = st.file_uploader("Weights file (.pth)", type=["pth"], max_upload_size=250, key="weights_upload")
    path = st.text_input("…or its path on this machine", key="weights_path")
    if st.button("Check and install", disabled=not (upload or path.strip()), icon=":material/download_done:"):
        try:
            with st.spinner("Checking the file's hash, loading it safely, matching a ResNet…"):
                got, target = (weights.install(upload.getvalue(), upload.name) if upload
                               else weights.install_from(path.strip()))
        except WeightsError as err:
            st.error(f"Not installed: {err}")
        else:
            st.success(f"Installed the ImageNet weights of {got} as {target}.")

# ---------------------------------------------------------------- the runs


@st.fragment(run_every=2)
def run_table() -> None:
    st.subheader("Runs")
    all_runs = [cluster.reconcile(r) for r in runs.list_runs()]  # a SLURM or submitit job that ended says so
    if not all_runs:
        st.info("No runs yet: fill in the form above and press **Start**, or **Run all four**.")
        return
    rows = []
    for run in all_runs:
        steps = runs.step_rows(run.path) if run.state == "running" else []
        progress = display.run_progress(run, steps)
        acc = run.summary.get("test_acc")
        verdict = trust.of_summary(run.summary) if run.summary else None
        rows.append({"run": run.run_id, "configuration": run.configuration, "state": run.state,
                     "progress": progress.fraction, "test_acc": None if acc is None else 100 * acc,
                     "test_qwk": run.summary.get("test_qwk"), "verdict": trust.label(verdict) if verdict else "",
                     "data": display.data_label(run.config.get("data") or ""), "where": display.slot_text(run),
                     "status": progress.text if run.state in runs.ACTIVE_STATES else (run.status.get("error") or "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "test_acc": st.column_config.NumberColumn("test acc", format="%.1f%%"),
        "test_qwk": st.column_config.NumberColumn("test QWK", format="%.3f"),
        "status": st.column_config.TextColumn("status", width="large", help="the whole message is below the table "
                                              "for the run picked to manage"),
    })
    ended_badly = [r for r in all_runs if r.state in ("failed", "interrupted", "cancelled") and r.status.get("error")]
    if ended_badly:
        with st.expander(f"Messages of the {len(ended_badly)} run(s) that did not finish", expanded=False):
            for r in ended_badly:
                st.markdown(f"**{r.run_id}** · {r.state}")
                st.caption(r.status["error"])
    queued = [r for r in all_runs if r.state == "queued"]
    if queued:
        st.caption(f"{len(queued)} run(s) waiting; {at_once_now()} train(s) at once. The next starts by itself "
                   "when a slot is free.")
        # A queue that nothing drains (the machine restarted, say) gets its worker back.
        if launch.ensure_worker():
            st.toast("queue worker started for the waiting runs")

    manage(all_runs)


def manage(all_runs: list) -> None:
    """Stop, resume, start again or delete the run picked."""
    by_id = {r.run_id: r for r in all_runs}
    left, b1, b2, b3 = st.columns([4, 1, 1, 1], vertical_alignment="bottom")
    run_id = left.selectbox("Run to manage", list(by_id), key="manage",
                            format_func=lambda i: f"{i} · {by_id[i].state}")
    run = by_id[run_id]
    b1.button("Stop", disabled=run.state not in runs.ACTIVE_STATES, width="stretch", on_click=act,
              args=("stop", run_id), help="a queued run is cancelled; a running one ends as interrupted, its last "
                                          "checkpoint kept for Resume")
    if launch.can_start_again(run):
        b2.button("Start again", width="stretch", on_click=act, args=("start_again", run_id),
                  help="it saved no checkpoint: train it from the start with the same settings")
    else:
        b2.button("Resume", disabled=not launch.can_resume(run), width="stretch", on_click=act,
                  args=("resume", run_id), help="continue from the last checkpoint")
    # The confirmation belongs to the run it was asked for: it closes when that run is gone or
    # another is picked, and never offers to delete a different one.
    b3.button("Delete", disabled=run.state == "running", width="stretch", key="ask_delete",
              on_click=lambda: st.session_state.update(confirm_delete=run_id))
    if st.session_state.get("confirm_delete") == run_id and run.state != "running":
        with st.container(border=True):
            st.warning(f"Delete **{run_id}** ({run.configuration}, {run.state}) with its checkpoints and metrics?")
            c = st.columns([1, 1, 4])
            c[0].button("Delete for good", type="primary", on_click=act, args=("delete", run_id))
            c[1].button("Keep it", on_click=lambda: st.session_state.pop("confirm_delete", None))
    if run.status.get("error"):
        st.caption(f"{run_id}: {run.status['error']}")
    for kind, message in st.session_state.pop("train_messages", []):
        getattr(st, kind)(message)


def act(action: str, run_id: str) -> None:
    """Stop, resume, start again or delete a run (a button callback: the table redrawn after it is current)."""
    st.session_state.pop("confirm_delete", None)
    try:
        # A run a SLURM or submitit job trains goes through that job's backend.
        if action == "stop":
            result = f"{run_id} is now {cluster.stop(run_id)}"
        elif action == "resume":
            cluster.resume(run_id)
            result = f"{run_id} is queued to resume from its last checkpoint"
        elif action == "start_again":
            cluster.start_again(run_id)
            result = f"{run_id} is queued to train from the start"
        else:
            runs.delete_run(run_id)
            st.toast(f"Deleted {run_id}", icon=":material/delete:")  # stays up while the table redraws
            return
    except (runs.RunError, ClusterError) as err:
        st.session_state.train_messages = [("error", str(err))]
    else:
        st.session_state.train_messages = [("success", result)]


run_table()
