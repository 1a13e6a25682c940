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
        st.session_state.return_params = st.query_params.to_dict()  # a link's ?run=... comes back too
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


# ---------------------------------------------------------------- values that outlive a page switch
KEPT = "kept_values"


def keep(defaults: dict) -> None:
    """Give each widget key its value from earlier in this session, else its default, before the
    widget is drawn: Streamlit forgets the value of a widget that a page switch did not draw,
    but not a plain session value. Draw the widgets without ``value`` / ``index``, then call
    ``remember``."""
    kept = st.session_state.setdefault(KEPT, {})
    for key, default in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = kept.get(key, default)


def remember(keys) -> None:
    """Copy the widgets' current values where a page switch does not forget them."""
    kept = st.session_state.setdefault(KEPT, {})
    kept.update({k: st.session_state[k] for k in keys if k in st.session_state})


# ---------------------------------------------------------------- the selection in the URL


def url_ids(param: str) -> list[str]:
    """The run ids a link names: ``?run=ID`` or ``?runs=A,B`` (text only: looked up, never a path)."""
    return [i.strip() for i in str(st.query_params.get(param, "")).split(",") if i.strip()]


def choose_runs(key: str, param: str, known: list[str], default, many: bool = False, warn: bool = True) -> None:
    """Set the selection widget ``key`` before it is drawn: the runs a link names (``?param=``)
    first, then what the user chose earlier in this session, then ``default`` (the champion).
    Draw the widget with this key, no default and ``on_change=user_chose, args=(key,)``, then
    call ``share_runs``. ``warn``: say which ids of the link are not in ``known``."""
    raw = str(st.query_params.get(param, ""))
    found = [i for i in url_ids(param) if i in known]
    if warn:
        warn_unknown(param, known)
    if found and raw != st.session_state.get(f"{key}__url"):  # a link followed
        st.session_state[key] = found if many else found[0]
        return
    kept = st.session_state.get(key, st.session_state.get(KEPT, {}).get(key))
    valid = [i for i in (kept or []) if i in known] if many else (kept if kept in known else None)
    chose = st.session_state.get(KEPT, {}).get(f"{key}__chosen")
    st.session_state[key] = valid if chose and (valid or many) else default


def warn_unknown(param: str, known: list[str]) -> None:
    missing = [i for i in url_ids(param) if i not in known]
    if missing:
        st.warning(f"The link names {', '.join(missing)}, which is not among the runs shown here "
                   "(deleted, not finished yet, or from another machine).")


def user_chose(key: str) -> None:
    """on_change of a selection widget: from now on this session's choice beats the default."""
    st.session_state.setdefault(KEPT, {})[f"{key}__chosen"] = True


def share_runs(param: str, *keys: str) -> None:
    """Write the selection of the widgets ``keys`` into the URL (``?param=ID[,ID]``), so a link
    opens this view."""
    ids = []
    for key in keys:
        value = st.session_state.get(key)
        ids += value if isinstance(value, list) else [value] if value else []
        remember([key])
    share_ids(param, ids, *keys)


def share_ids(param: str, ids: list[str], *keys: str) -> None:
    """Write ``ids`` into the URL as ``?param=A,B``; ``keys`` remember it was written (not followed)."""
    text = ",".join(str(i) for i in ids)
    if str(st.query_params.get(param, "")) != text:
        if text:
            st.query_params[param] = text
        else:
            st.query_params.pop(param, None)
    for key in keys:
        st.session_state[f"{key}__url"] = text


# ---------------------------------------------------------------- the run that stands for a configuration

STAND_INS = "stand_ins"  # session state: {data: {configuration: run id}}, this session's picks


def stand_ins(data: str) -> dict[str, str]:
    """This session's picks of the run that stands for each configuration on ``data`` (made on
    Compare or Overview); every page passes them to champions.champions."""
    return st.session_state.setdefault(STAND_INS, {}).setdefault(str(data), {})


def stand_ins_from_link(key: str, param: str, all_runs: list, data: str, key_of) -> None:
    """A link's ``?param=A,B,C,D``: each named finished run on ``data`` stands for its configuration
    for this session (it beats the champion, and the session's earlier pick), once per link (``key``
    as given to ``share_ids``); ``key_of(configuration)`` is that configuration's picker, redrawn."""
    from retino_core.judging import champions

    raw = str(st.query_params.get(param, ""))
    if not raw or raw == st.session_state.get(f"{key}__url"):
        return
    finished = {r.run_id: r for r in all_runs if champions.is_finished(r) and champions.same_data(r, data)}
    for run_id in url_ids(param):
        if run_id in finished:
            stand_ins(data)[finished[run_id].configuration] = run_id
            st.session_state.pop(key_of(finished[run_id].configuration), None)
    st.session_state[f"{key}__url"] = raw


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
        right.button("Show that run", key=f"{select_key}-to-champion", on_click=show_run,
                     args=(select_key, who.run.run_id))


def show_run(select_key: str, run_id: str) -> None:
    """A button's callback: the page's run select shows ``run_id``, as if the user picked it."""
    st.session_state[select_key] = run_id
    user_chose(select_key)
