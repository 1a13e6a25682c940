"""The dashboard's pages, run by st.navigation in streamlit_app.py, and the one step they share.

Streamlit runs neither this file nor anything else here as a page of its own: st.navigation
lists the pages, and its legacy mode (below) skips ``__init__.py``.
"""

from pathlib import Path

import streamlit as st

from retino_core.training import launch


def through_the_app(page_file: str) -> None:
    """Send a page that was opened before streamlit_app.py ran through the app, then back.

    Until some session has called st.navigation, Streamlit runs a deep link such as /live
    straight from pages/ (its legacy mode), without the app's page config and navigation.
    """
    if not st.session_state.get("app"):
        st.session_state.return_to = f"pages/{Path(page_file).name}"
        st.switch_page("streamlit_app.py")


@st.cache_data(ttl=300, show_spinner=False)
def _gpus() -> list[str]:
    return launch.visible_gpus()


def runs_at_once(where, key: str) -> int:
    """The "Runs at once" input: how many slots the queue's worker trains in."""
    gpus = _gpus()
    cores = len(launch.usable_cpus())
    machine = (f"{len(gpus)} GPU(s) here: by default one run per GPU, each seeing only its own." if gpus else
               f"No GPU here, {cores} cores: by default one run at a time with every core; N at once get "
               f"{max(1, cores // 2)} or fewer cores each (cores / N threads), which rarely finishes sooner.")
    return int(where.number_input("Runs at once", 1, launch.MAX_PARALLEL, at_once_now(), key=key, help=machine))


def at_once_now() -> int:
    """How many runs the worker trains at once: the runs folder's setting, or one per GPU (or 1)."""
    return launch.parallel_setting() or max(1, len(_gpus()))


def set_runs_at_once(n: int) -> str:
    """Store the number of slots for the worker; the sentence that says how the queue trains."""
    launch.set_parallel(n)
    return "They train one at a time." if n == 1 else f"Up to {n} train at once, each in its own slot."


# ---------------------------------------------------------------- the run that stands for a configuration

STAND_INS = "stand_ins"  # session state: {data: {configuration: run id}}, this session's picks


def stand_ins(data: str) -> dict[str, str]:
    """This session's picks of the run that stands for each configuration on ``data`` (made on
    Compare or Overview); every page passes them to champions.champions."""
    return st.session_state.setdefault(STAND_INS, {}).setdefault(str(data), {})


def stand_in_picker(where, all_runs: list, data: str, configuration: str, key: str) -> None:
    """One click to another run: a select of the configuration's finished runs on ``data``, its
    champion first and marked with why; a pick stays for the session, on every page."""
    from retino_core.judging import champions, trust

    rules = champions.champions(all_runs, data).get(configuration)
    options = champions.finished_runs(all_runs, data, configuration)
    if rules is None or not options:
        return
    ids = [rules.run.run_id] + [r.run_id for r in options if r.run_id != rules.run.run_id]
    by_id = {r.run_id: r for r in options}
    picks = stand_ins(data)
    current = picks.get(configuration) if picks.get(configuration) in ids else ids[0]

    def keep() -> None:
        picked = st.session_state[key]
        if picked == rules.run.run_id:
            picks.pop(configuration, None)
        else:
            picks[configuration] = picked

    where.selectbox(f"Run standing for {configuration}", ids, index=ids.index(current), key=key, on_change=keep,
                    format_func=lambda i: f"{i} · {trust.label(trust.of_summary(by_id[i].summary))}"
                    + (f" · champion: {rules.reason}" if i == rules.run.run_id else ""),
                    help="the champion: the pinned run, else the best finished usable run by the validation-"
                         "selected metric, else the best finished run. Another pick holds for this session, on "
                         "every page; pin a run on Results to make it the champion.")


def stands_line(run, all_runs: list, select_key: str) -> None:
    """Say whether ``run`` stands for its configuration on its dataset and why; if it does not, name
    the run that does, with one click to show that one instead (it sets the page's run select)."""
    from retino_core.judging import champions
    from retino_core.report import display

    data = champions.data_of(run)
    who = champions.champions(all_runs, data, stand_ins(data)).get(run.configuration)
    where = f"{run.configuration} on {display.data_label(data)}"
    if who is None:
        st.caption(f"No finished run stands for {where} yet.")
    elif who.run.run_id == run.run_id:
        st.caption(f":material/star: This run stands for {where}: {who.reason}.")
    else:
        left, right = st.columns([4, 1], vertical_alignment="center")
        left.caption(f"This run does not stand for {where}: `{who.run.run_id}` does ({who.reason}).")
        right.button("Show that run", key=f"{select_key}-to-champion", on_click=st.session_state.update,
                     kwargs={select_key: who.run.run_id})
