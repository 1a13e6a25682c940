"""Live: loss per step and accuracy per epoch of the selected runs, read from their folders
every 2 s while something trains (an st.fragment that polls; no loops), and when the queue will
be through. ``?runs=A,B`` opens these runs; by default the running runs and each configuration's
champion (the run that stands for it)."""

import streamlit as st

from retino_core import runs
from retino_core.training import launch

from pages import at_once_now, choose_runs, share_runs, stand_ins, through_the_app, user_chose
from retino_core.report import eta
from retino_core.report import lab
from retino_core.report import figures
from retino_core.report import display

through_the_app(__file__)

st.title("Live")

all_runs = runs.list_runs()
if not all_runs:
    st.info("Nothing to watch yet: start a run on the Train page, or train all four from the Overview.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()


def standing_runs(all_runs: list) -> list[str]:
    """The run that stands for each configuration (its champion, or this session's pick) on the
    dataset in use, else on the dataset of the newest finished run."""
    data = st.session_state.get("data") or lab.default_data(all_runs)
    four = lab.champion_four(all_runs, data, stand_ins(data))
    if not any(four.values()):
        data = lab.default_data([r for r in all_runs if r.state == "done"])
        four = lab.champion_four(all_runs, data, stand_ins(data))
    return [c.run.run_id for c in four.values() if c is not None]


by_id = {r.run_id: r for r in all_runs}
active = [r.run_id for r in all_runs if r.state in runs.ACTIVE_STATES]
# What trains now, and what each configuration has to show for itself; never a cancelled run.
default = [r.run_id for r in all_runs if r.state == "running"] + standing_runs(all_runs)
# Grouped by configuration (a configuration's seeds sit together), newest first within each.
options = sorted(by_id, key=lambda i: by_id[i].configuration)
choose_runs("live_runs", "runs", options, default, many=True)
selected = st.multiselect("Runs", options, key="live_runs", on_change=user_chose, args=("live_runs",),
                          format_func=lambda i: f"{by_id[i].configuration} · {display.short_label(by_id[i])}")
share_runs("runs", "live_runs")
c = st.columns([2, 2, 1])
follow = c[0].toggle("Also show every queued or running run", value=True)
smoothing = c[1].slider("Loss smoothing", 0.0, 0.99, 0.6, 0.01, key="live_smoothing",
                        help="an exponential moving average of the training loss, as TensorBoard draws it; "
                             "the raw line stays faint behind")
log_scale = c[2].toggle("Log scale", value=False, key="live_log")


# A trainer writes a row every 2 s: polling faster only redraws the same charts. Slow polling
# while nothing trains; a change in that restarts the page at the other speed.
@st.fragment(run_every=2.0 if active else 5.0)
def live_view() -> None:
    current = runs.list_runs()
    now_active = [r.run_id for r in current if r.state in runs.ACTIVE_STATES]
    if bool(now_active) != bool(active):
        st.rerun()
    # A followed run stays on the page when it ends (done, failed or cancelled), while others train.
    followed = st.session_state.setdefault("live_followed", [])
    followed += [i for i in now_active if i not in followed]
    ids = list(dict.fromkeys(selected + (followed if follow else [])))
    # A followed run that was cancelled before it started has nothing to show.
    shown = [r for r in current if r.run_id in ids and (r.run_id in selected or r.state != "cancelled")]
    if not shown:
        st.info("Pick one or more runs above.")
        return

    steps = {display.short_label(r): runs.step_rows(r.path) for r in shown}
    epochs = {display.short_label(r): runs.epoch_rows(r.path) for r in shown}
    queue_caption(current)
    for run in shown:
        label = display.short_label(run)
        progress = display.run_progress(run, steps[label])
        with st.container(border=True):
            head, bar = st.columns([3, 4], vertical_alignment="center")
            where = display.slot_text(run)
            head.markdown(f"**{label}** · {run.configuration} · :{_COLOUR.get(run.state, 'gray')}[{display.state_text(run)}]"
                          + (f" · {where}" if where else ""))
            bar.progress(progress.fraction, text=progress.text)
            if run.state in ("failed", "interrupted", "cancelled") and run.status.get("error"):
                st.caption(run.status["error"])

    if not any(steps.values()):
        if any(r.state in runs.ACTIVE_STATES for r in shown):
            st.info("No numbers yet: a run writes its first training loss a couple of seconds after it starts.")
        else:
            st.info("These runs wrote no numbers: they ended before their first step "
                    + "; ".join(f"({display.short_label(r)}: {r.state}{', ' + r.status['error'] if r.status.get('error') else ''})"
                                for r in shown) + ".")
        return
    st.plotly_chart(figures.loss_figure(steps, epochs, title="Loss (training per step, evaluation per epoch)",
                                    smoothing=smoothing, log_scale=log_scale),
                    width="stretch", key="live_loss")
    baselines = {display.short_label(r): (r.summary or r.status.get("progress") or {}).get("test_majority_acc")
                 for r in shown}
    if any(epochs.values()):
        st.plotly_chart(figures.accuracy_figure(epochs, baselines, title="Accuracy per epoch (train, val, test)"),
                        width="stretch", key="live_acc")
    else:
        st.caption("Accuracy appears when the first epoch ends. Majority-class baseline (test): "
                   + ", ".join(f"{k} {display.percent(v)}" for k, v in baselines.items() if v is not None))


def queue_caption(current: list) -> None:
    """How long until every queued and running run is done (estimated from this machine's speeds)."""
    waiting = launch.queue(all_runs=current)
    running = [r for r in current if r.state == "running"]
    if not (waiting or running):
        return
    total = eta.schedule(eta.current_jobs(current, eta.measured_speeds(current),
                                          lambda c: eta.sizes_from_runs(current, c), at_once_now()), at_once_now())
    if total.seconds is not None and len(total.unknown) < len(total.finishes):
        st.caption(f"{len(running)} running, {len(waiting)} waiting: the queue is through in about "
                   f"**{display.duration(total.seconds)}**"
                   + (f" (not counting {len(total.unknown)} run(s) with no estimate yet)" if total.unknown else "") + ".")


_COLOUR = {"running": "blue", "queued": "gray", "done": "green", "failed": "red", "interrupted": "orange",
           "cancelled": "gray"}

live_view()
