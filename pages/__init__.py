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
