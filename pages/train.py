"""Train: start a run or all four, and stop, resume or delete runs. Runs train in their own
processes, first come, first served; this page only writes requests and reads run folders."""

import subprocess
from pathlib import Path

import pandas as pd
import streamlit as st

from retino_core.training import cluster, launch
from retino_core import runs
from retino_core.models import weights
from retino_core.config import ARCHS, AUGMENTS, IMAGENET_WEIGHT_URLS, PRESETS, ConfigError, make_config
from retino_core.errors import DataError
from retino_core.data.splits import DatasetInvalid
from retino_core.data.sources import source_of
from retino_core.errors import ClusterError, WeightsError

from pages import at_once_now, keep, remember, runs_at_once, set_runs_at_once, through_the_app
from retino_core.report import lab
from retino_core.report import display
from retino_core.report import eta
from retino_core.report import runs_table

through_the_app(__file__)


@st.cache_resource(show_spinner="Checking the dataset…", max_entries=4)
def load_source(spec: str, val_fraction: float, seed: int, patient_column: str = "", patient_regex: str = ""):
    return source_of({"data": spec, "val_fraction": val_fraction, "seed": seed,
                      "patient_column": patient_column, "patient_regex": patient_regex})


def source_for(cfg):
    return load_source(cfg.data, cfg.val_fraction, cfg.seed, cfg.patient_column, cfg.patient_regex)


# The preset's fields, refilled when another preset is chosen.
PRESET_FIELDS = {"train_epochs": "epochs", "train_batch": "batch_size", "train_lr": "lr", "train_size": "image_size",
                 "train_augment": "augment"}
OTHER_FIELDS = {"train_arch": ARCHS[0], "train_pretrained": False, "train_max_steps": 0, "train_seed": 0,
                "train_name": "", "train_weights_file": "", "train_seeds": 1, "train_patient_column": "",
                "train_patient_regex": ""}


def refill() -> None:
    """A newly chosen preset fills in its epochs, batch size, learning rate, image size and augmentation."""
    st.session_state.update({key: PRESETS[st.session_state.train_preset][field] for key, field in PRESET_FIELDS.items()})


st.title("Train")
all_runs = runs.list_runs()

# Every field keeps its value when the user visits another page and comes back. Only the
# buttons queue a run: there is no form, so Enter in a field applies the value and nothing else.
data_now = st.session_state.get("data") or lab.default_data(all_runs)
if st.session_state.get("train_data_from") != data_now:  # the Overview chose another dataset
    st.session_state.update(train_data_from=data_now, train_data=data_now)
keep({"train_preset": "cpu", "train_data": data_now, **{k: PRESETS["cpu"][f] for k, f in PRESET_FIELDS.items()},
      **OTHER_FIELDS})
st.selectbox("Preset", list(PRESETS), key="train_preset", on_change=refill,
             help="cpu: RetinaMNIST on a laptop in minutes; fast: a GPU recipe; "
                  "lab: the lab report's recipe, unchanged (and its collapse)")
st.text_input("Dataset", key="train_data",
              help="`retinamnist` (bundled), a lab folder with the four CSVs, or a labels .csv")
left, right = st.columns(2)
left.radio("Architecture", ARCHS, horizontal=True, format_func=lab.COLUMN_NAMES.get, key="train_arch")
right.toggle("Start from ImageNet weights", key="train_pretrained",
             help="needs the weights file in the torch cache (installed below) or a network")
c = st.columns(5)
c[0].number_input("Epochs", 1, 500, key="train_epochs")
c[1].number_input("Batch size", 1, 1024, key="train_batch")
c[2].number_input("Learning rate", 1e-6, 1.0, format="%.5f", step=1e-4, key="train_lr")
c[3].number_input("Image size (px)", 16, 1024, step=16, key="train_size")
c[4].selectbox("Augmentation", AUGMENTS, key="train_augment")
with st.expander("More"):
    c = st.columns(3)
    c[0].number_input("Max steps per epoch (0 = all)", 0, 100_000, key="train_max_steps",
                      help="cap an epoch for a quick smoke run")
    c[1].number_input("Seed", 0, 2**31 - 1, key="train_seed")
    c[2].text_input("Run name (optional)", key="train_name")
    st.text_input("Start from a weights file (optional)", key="train_weights_file",
                  help="a state dict or a retino checkpoint on this machine (--weights); an ImageNet head is dropped")
    c[0].number_input("Seeds for Run all four", 1, 10, key="train_seeds",
                      help="train each configuration with this many seeds (Seed, Seed + 1, ...): "
                           "Compare then shows their mean ± SD")
    c[1].text_input("Patient column (optional)", key="train_patient_column",
                    help="the labels CSV's column naming each image's patient")
    c[2].text_input("Patient regex (optional)", key="train_patient_regex",
                    help="a regular expression whose first group is the patient id in a file name")
    at_once = runs_at_once(c[0], "train_at_once")
remember(["train_preset", "train_data", *PRESET_FIELDS, *OTHER_FIELDS])

s = st.session_state
settings = dict(data=s.train_data.strip() or "retinamnist", epochs=int(s.train_epochs), batch_size=int(s.train_batch),
                lr=float(s.train_lr), image_size=int(s.train_size), augment=s.train_augment,
                max_steps_per_epoch=int(s.train_max_steps), seed=int(s.train_seed), name=s.train_name.strip(),
                weights=s.train_weights_file.strip() or None, patient_column=s.train_patient_column.strip(),
                patient_regex=s.train_patient_regex.strip())


def planned(four: bool) -> list:
    """The configs the buttons would queue (ConfigError for a bad setting)."""
    if four:
        return lab.four_configs(s.train_preset, seeds=int(s.train_seeds), **settings)
    return [make_config(s.train_preset, arch=s.train_arch, pretrained=s.train_pretrained, **settings)]


def sizes_of(config: dict):
    """(training, validation + test) images of a config's data: from a finished run on it, else
    the dataset itself (only the form's own dataset is opened, and only once a speed is known)."""
    found = eta.sizes_from_runs(runs.list_runs(), config)
    if found is None and str(config.get("data")) == settings["data"]:
        try:
            source = load_source(config["data"], config.get("val_fraction", 0.1), config.get("seed", 0),
                                 config.get("patient_column", ""), config.get("patient_regex", ""))
        except (DataError, OSError, ValueError):
            return None
        counts = {split: len(part) for split, part in source.splits.items()}
        found = counts.get("train", 0), sum(n for split, n in counts.items() if split != "train")
    return found


def estimate_lines(speeds: list) -> list[str]:
    """How long Start and Run all four would take, and when the queue would be through."""
    try:
        one, four = planned(False)[0], planned(True)
    except (ConfigError, DataError) as err:
        return [f"No estimate: {err}"]
    sizes = sizes_of(one.to_dict())
    if sizes is None:
        return ["No estimate: the dataset cannot be opened to count its images."]
    found = eta.estimate(one.to_dict(), *sizes, speeds, at_once)
    if found is None:
        return []
    now = eta.current_jobs(all_runs, speeds, sizes_of, at_once_now())
    alone = eta.behind_queue([one.to_dict()], sizes, speeds, at_once, now).finishes["new-0"]
    with_four = eta.behind_queue([c.to_dict() for c in four], sizes, speeds, at_once, now).seconds
    return [f"**Start**: about **{display.duration(found.seconds)}** of training "
            f"({lab.configuration_name(one.arch, one.pretrained)}, {one.epochs} epochs at {one.image_size} px; "
            f"{found.basis})." + (f" Behind the queue, done in about {display.duration(alone)}." if now else ""),
            f"**Run all four** ({len(four)} runs, {at_once} at a time): all done in about "
            f"**{display.duration(with_four)}**" + (" including the queue." if now else ".")]


speeds = eta.measured_speeds(all_runs)
if speeds:
    for line in estimate_lines(speeds):
        st.caption(line)
else:
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.caption("No estimate yet: no run has trained on this machine, so its speed is unknown. The first epoch "
                 "of the first run measures it, or measure it now: a few training steps of this model, alone.")
    if right.button("Measure this machine", icon=":material/speed:", help="about half a minute on an idle machine"):
        # In its own process, as training is: the app never trains (or times training) itself.
        with st.spinner("Timing a few training steps of the model…"):
            try:
                done = subprocess.run(launch.python_cmd(
                    "calibrate", "--arch", s.train_arch, "--preset", s.train_preset, "--image-size",
                    str(int(s.train_size)), "--batch-size", str(int(s.train_batch)), "--runs-dir",
                    str(runs.default_runs_dir())), capture_output=True, text=True, timeout=600, cwd=runs.PROJECT_ROOT)
                why = "" if done.returncode == 0 else ((done.stderr or done.stdout).strip().splitlines() or ["?"])[-1]
            except (OSError, subprocess.TimeoutExpired) as err:
                why = str(err)
        if not why:
            st.rerun()
        st.error(f"The measurement failed: {why}")
left, right = st.columns([1, 4])
start = left.button("Start", type="primary", icon=":material/play_arrow:")
four = right.button("Run all four", icon=":material/grid_view:",
                    help="ResNet18 and ResNet50, with and without ImageNet weights, these settings")

if start or four:
    try:
        configs = planned(four)
        first = configs[0]  # the dataset fails here, with every problem listed, not in the queue
        checked = source_for(first)
        if checked.report.warnings:  # they do not stop a run, but are said before it is queued
            st.warning(f"The dataset has {len(checked.report.warnings)} warning(s): {checked.report.markdown()}")
        if settings["weights"] and not Path(settings["weights"]).expanduser().is_file():
            raise ConfigError(f"weights file {settings['weights']} not found")
        # Runs that need ImageNet weights nobody can fetch would fail minutes later in the queue.
        refused = weights.refused_pretrained(configs)
        for cfg, reason in refused:
            st.error(f"Not queued: {lab.configuration_name(cfg.arch, cfg.pretrained)} (seed {cfg.seed}): {reason}.")
        st.session_state.open_weights = bool(refused)  # the installer below opens
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
        st.page_link("pages/live.py", label="Watch on the Live page", icon=":material/monitoring:",
                     query_params={"runs": ",".join(d.name for d, _ in queued)} if queued else None)

with st.expander("ImageNet weights (for pretrained runs)",
                 expanded=st.query_params.get("install") == "weights" or st.session_state.get("open_weights", False)):
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

SEARCH_KEYS = {"runs_text": "", "runs_tags": [], "runs_configurations": [], "runs_states": [], "runs_verdicts": [],
               "runs_where": ""}


def search_box(all_runs: list) -> list:
    """Filters over the run list: text, tags, configuration, state, verdict and settings."""
    keep(SEARCH_KEYS)
    with st.expander("Search runs", expanded=any(st.session_state[k] for k in SEARCH_KEYS)):
        c = st.columns([2, 1, 1])
        c[0].text_input("Text", key="runs_text", placeholder="words in the id, name, tags, notes, data or error")
        c[1].multiselect("Tags (all of)", sorted({t for r in all_runs for t in r.tags}), key="runs_tags")
        c[2].multiselect("Configuration", lab.CONFIGURATIONS, key="runs_configurations")
        c = st.columns([1, 1, 2])
        c[0].multiselect("State", runs.STATES, key="runs_states")
        c[1].multiselect("Verdict", runs_table.VERDICTS, key="runs_verdicts")
        c[2].text_input("Settings", key="runs_where", placeholder="image_size=64, lr<0.01, augment!=strong",
                        help="any setting of config.json or number of summary.json: KEY=VALUE, KEY!=VALUE, "
                             "KEY<VALUE, KEY>=VALUE..., separated by commas (the CLI: runs --where image_size=64)")
    remember(SEARCH_KEYS)
    s = st.session_state
    try:
        query = runs_table.make_query(all_runs, s.runs_text, s.runs_tags, s.runs_configurations, s.runs_states,
                                      s.runs_verdicts, s.runs_where.split(","))
    except runs_table.SearchError as err:
        st.error(f"Search: {err}")
        return all_runs
    shown = runs_table.search(all_runs, query)
    if not query.empty:
        st.caption(f"{len(shown)} of {len(all_runs)} runs match the search.")
    return shown


@st.fragment(run_every=2)
def run_table() -> None:
    st.subheader("Runs")
    all_runs = [cluster.reconcile(r) for r in runs.list_runs()]  # a SLURM or submitit job that ended says so
    if not all_runs:
        st.info("No runs yet: fill in the fields above and press **Start**, or **Run all four**.")
        return
    waiting = launch.queue(all_runs=all_runs)
    shown = search_box(all_runs)
    rows = runs_table.table_rows(shown, waiting)
    for row in rows:  # the name opens the run's page
        row["name"] = f"results?run={row['name']}"
    st.dataframe(pd.DataFrame(rows, columns=list(rows[0]) if rows else ["name"]), hide_index=True, width="stretch",
                 column_config={
        "name": st.column_config.LinkColumn("name", display_text=r"run=(.*)$", help="open the run on Results"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent",
                                                    help="epochs and steps done of the epochs asked for"),
        "test accuracy": st.column_config.TextColumn("test accuracy (95 % CI)", help="of the checkpoint chosen "
                                                     "on validation, with its 95 % interval"),
        "status": st.column_config.TextColumn("status", width="large", help="the whole message is below the table "
                                              "for the run picked to manage"),
    })
    ended_badly = [r for r in shown if r.state in ("failed", "interrupted", "cancelled") and r.status.get("error")]
    if ended_badly:
        with st.expander(f"Messages of the {len(ended_badly)} run(s) that did not finish", expanded=False):
            for r in ended_badly:
                st.markdown(f"**{r.run_id}** · {display.state_text(r)}")
                st.caption(r.status["error"])
    if waiting:
        total = eta.schedule(eta.current_jobs(all_runs, eta.measured_speeds(all_runs), sizes_of, at_once_now()),
                             at_once_now())
        st.caption(f"{len(waiting)} run(s) waiting; {at_once_now()} train(s) at once, first come, first served. "
                   + queue_sentence(total))
        # A queue that nothing drains (the machine restarted, say) gets its worker back.
        if launch.ensure_worker():
            st.toast("queue worker started for the waiting runs")
    manage(all_runs, waiting)


def queue_sentence(total) -> str:
    if total.seconds is None:
        return ""
    known = len(total.finishes) - len(total.unknown)
    return (f"The queue is through in about **{display.duration(total.seconds)}**"
            + (f" (not counting {len(total.unknown)} run(s) with no estimate)" if total.unknown and known else "") + ".")


def manage(all_runs: list, waiting: list) -> None:
    """Stop, resume, start again or delete the run picked; the pick stays through every action."""
    for text, icon in st.session_state.pop("train_toasts", []):
        st.toast(text, icon=icon)
    by_id = {r.run_id: r for r in all_runs}
    keep({"manage": all_runs[0].run_id})
    if st.session_state.manage not in by_id:  # deleted: the next newest
        st.session_state.manage = all_runs[0].run_id
    left, b1, b2, b3 = st.columns([4, 1, 1, 1], vertical_alignment="bottom")
    run_id = left.selectbox("Run to manage", list(by_id), key="manage",
                            format_func=lambda i: f"{i} · {display.state_text(by_id[i])}")
    remember(["manage"])
    run = by_id[run_id]
    b1.button("Stop", disabled=run.state not in runs.ACTIVE_STATES, width="stretch", on_click=act,
              args=("stop", run_id), help="a queued run is cancelled; a running one is stopped, its last "
                                          "checkpoint kept for Resume")
    again = launch.can_start_again(run)
    b2.button("Start again" if again else "Resume", width="stretch", on_click=act,
              args=("start_again" if again else "resume", run_id), disabled=not (again or launch.can_resume(run)),
              help="it saved no checkpoint: train it from the start with the same settings" if again
              else "continue from the last checkpoint; it joins the back of the queue")
    # The confirmation belongs to the run it was asked for: it closes when that run is gone or
    # another is picked, and never offers to delete a different one.
    b3.button("Delete", disabled=run.state == "running", width="stretch", key="ask_delete",
              on_click=lambda: st.session_state.update(confirm_delete=run_id))
    if waiting and (again or launch.can_resume(run)):
        st.checkbox("Next in line: start it before the runs already waiting", key="manage_next",
                    help=f"otherwise it waits behind the {len(waiting)} run(s) queued before it")
    if st.session_state.get("confirm_delete") == run_id and run.state != "running":
        with st.container(border=True):
            st.warning(f"Delete **{run_id}** ({run.configuration}, {display.state_text(run)}) with its checkpoints "
                       "and metrics?")
            c = st.columns([1, 1, 4])
            c[0].button("Delete for good", type="primary", on_click=act, args=("delete", run_id))
            c[1].button("Keep it", on_click=lambda: st.session_state.pop("confirm_delete", None))
    if run.state in ("failed", "interrupted", "cancelled") and run.status.get("error"):
        st.caption(f"{run_id}: {run.status['error']}")


def act(action: str, run_id: str) -> None:
    """Stop, resume, start again or delete a run (a button callback). It only records what to
    say: a toast drawn by a callback of a fragment's button would land outside the fragment."""
    st.session_state.pop("confirm_delete", None)
    first = bool(st.session_state.get("manage_next"))
    st.session_state.manage_next = False
    try:
        # A run a SLURM or submitit job trains goes through that job's backend.
        if action == "stop":
            said = {"cancelled": "cancelled: it had not started", "interrupted": "stopped; Resume continues it"}
            state = cluster.stop(run_id)
            toast = (f"{run_id} {said.get(state, 'is ' + state)}", ":material/stop_circle:")
        elif action in ("resume", "start_again"):
            (cluster.resume if action == "resume" else cluster.start_again)(run_id, first=first)
            how = "next in line" if first else "at the back of the queue"
            toast = (f"{run_id} is queued {'to resume' if action == 'resume' else 'to train from the start'}, "
                     f"{how}", ":material/play_arrow:")
        else:
            runs.delete_run(run_id)
            toast = (f"Deleted {run_id}", ":material/delete:")
    except (runs.RunError, ClusterError) as err:
        toast = (f"{run_id}: {err}", ":material/error:")
    st.session_state.train_toasts = [toast]


run_table()
