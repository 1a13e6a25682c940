"""Compare: the four configurations side by side, as the lab report lays them out, and the
whole comparison as a downloadable report."""

import streamlit as st

from retino_core.judging import comparison
from retino_core import runs
from retino_core.judging import external, trust

from pages import share_ids, stand_in_picker, stand_ins, stand_ins_from_link, through_the_app, warn_unknown
from retino_core.report import lab
from retino_core.report import figures
from retino_core.report import display

through_the_app(__file__)



def stamp(run: runs.RunInfo | None) -> tuple | None:
    """A finished run as a cache key: its id and when its summary was written."""
    if run is None:
        return None
    try:
        return run.run_id, (run.path / "summary.json").stat().st_mtime_ns
    except OSError:
        return run.run_id, None


# Plotly figures take tens of milliseconds each to build, and every viewer of this page would
# build the same ones: they are built once for all sessions, for as long as the runs' stamps hold.
@st.cache_resource(show_spinner=False, max_entries=16)
def figures_of(stamps: tuple, _four: dict, normalize: bool) -> dict:
    return lab.comparison_figures(_four, normalize)


@st.cache_resource(show_spinner=False, max_entries=16)
def parallel_figure(stamps: tuple, _hyper, metric: str):
    return figures.parallel_coordinates(_hyper, metric)


@st.cache_data(show_spinner="Comparing every pair on the shared test images…", max_entries=16)
def pairs_of(chosen: tuple, _stamp: float = 0.0):
    """The pairwise table of the chosen runs (cached per selection: a bootstrap per pair)."""
    by_id = {r.run_id: r for r in runs.list_runs()}
    return comparison.pairs_frame(comparison.all_pairs({name: by_id.get(run_id) for name, run_id in chosen}))


st.title("Compare")

all_runs = runs.list_runs()
specs = lab.datasets(all_runs)
if not specs:
    st.info("Nothing to compare yet: train the four configurations (Overview → Train all four), "
            "then come back.")
    st.page_link("pages/overview.py", label="Go to Overview", icon=":material/dashboard:")
    st.stop()

current = st.session_state.get("data") or lab.default_data(all_runs)
left, right = st.columns([2, 3])
data = left.selectbox("Dataset", specs, index=specs.index(current) if current in specs else 0,
                      format_func=display.data_label, help="only runs trained on the same data are compared")
# ?runs=A,B,C,D: each named run stands for its configuration; else this session's pick; else the champion.
warn_unknown("runs", [r.run_id for r in all_runs if r.state == "done" and lab.same_data(r, data)])
stand_ins_from_link("compare", "runs", all_runs, data, lambda name: f"compare-stand-in-{name}")
four = lab.champion_four(all_runs, data, stand_ins(data))
chosen = lab.runs_of(four)
pending = lab.not_done(all_runs, data)  # what the configurations without a finished run are doing
with right.expander("Runs compared: each configuration's champion, or your pick"):
    for name in lab.CONFIGURATIONS:
        if four[name] is None:
            st.caption(f"{name}: {pending.get(name, 'not trained on this dataset')}")
        else:
            stand_in_picker(st, all_runs, data, name, key=f"compare-stand-in-{name}")
st.markdown("**Runs compared** · " + " · ".join(
    f"{name}: `{c.run.run_id}` ({c.reason})" for name, c in four.items() if c is not None) if any(four.values())
    else "**Runs compared:** none finished on this dataset yet.")
share_ids("runs", [c.run.run_id for c in four.values() if c is not None], "compare")  # a link opens these

frame = lab.comparison_frame(four, all_runs, data)
recipe = lab.recipe_table(chosen)
trained = frame["test_acc"].notna().sum()
if trained < 4:
    st.info(f"Finished on this dataset: {trained} of the four configurations. The empty cells fill in "
            "as the others finish.")

metric = st.radio("Accuracy in the table", ["test_acc_verdict", "best_test_acc_over_epochs"], horizontal=True,
                  format_func={"test_acc_verdict": "checkpoint chosen on validation, with its 95 % interval and verdict",
                               "best_test_acc_over_epochs": "best test epoch — optimistic, chosen on test "
                                                            "(the lab report's number)"}.get,
                  help="The checkpoint chosen on validation is the honest number. The best epoch on the test "
                       "set flatters a model: it is chosen on the very data it is scored on.")
left, right = st.columns([3, 2])
left.markdown("**Test accuracy**")
left.table(lab.table_2x2(frame, metric).map(display.percent if metric != "test_acc_verdict" else lambda v: v or "–"))
right.markdown("**Quadratic weighted kappa (test)**")
right.table(lab.table_2x2(frame, "test_qwk_ci_shown").map(lambda v: v or "–"))
baselines = {display.percent(b) for b in frame["test_majority_acc"].dropna()}
if baselines:
    st.caption(f"Majority-class baseline (always the commonest grade): {', '.join(sorted(baselines))} of test images. "
               + lab.VERDICT_RULES)
not_usable = frame[frame["verdict"].notna() & (frame["verdict"] != trust.USABLE)]
if not not_usable.empty:
    kind = "error" if (frame["verdict"].dropna() != trust.USABLE).all() else "warning"
    getattr(st, kind)("**Not to be trusted:** " + "; ".join(
        f"{r['configuration']} is {r['verdict']}" for _, r in not_usable.iterrows()) + ". Reasons below.")
for line in lab.findings(frame, lab.differing(recipe)):
    st.markdown(f"- {line}")
for name, run in chosen.items():
    for result in external.elsewhere(run.path) if run else []:
        st.markdown(f"- :material/public: **{name}**, external: {external.sentence(result)}.")
if len(recipe.columns) > 1:
    with st.expander(f"Settings that differ between the runs compared ({len(lab.differing(recipe))})"):
        st.dataframe(recipe, width="stretch")
        st.caption("Besides architecture and pretraining; epochs and steps per epoch always shown.")

st.subheader("Is the difference real?")
pairs = pairs_of(tuple((name, run.run_id if run else None) for name, run in chosen.items()))
if pairs.empty:
    st.caption("Two finished configurations are needed for a comparison.")
else:
    st.caption(lab.PAIRS_NOTE)
    for sentence in pairs.get("finding", []):
        st.markdown(f"- {sentence}")
    st.dataframe(lab.p_values_as_text(pairs.drop(columns=["finding"])), hide_index=True, width="stretch")

with st.expander("All numbers"):
    st.dataframe(frame.drop(columns=[c for c in frame.columns if c.endswith("_ci")]), hide_index=True,
                 width="stretch", column_config={
        c: st.column_config.NumberColumn(format="percent")
        for c in ("test_acc", "best_test_acc_over_epochs", "test_majority_acc", "test_collapse_share")})

normalize = st.toggle("Confusion matrices row-normalised", value=True)
figs = figures_of(tuple(stamp(run) for run in chosen.values()), chosen, normalize)
columns = st.columns(2)
for i, arch in enumerate(lab.COLUMN_NAMES):
    fig = figs.get(f"accuracy_{arch}")
    if fig is None:
        columns[i].info(f"No finished {lab.COLUMN_NAMES[arch]} run on this dataset.")
    else:
        columns[i].plotly_chart(fig, width="stretch", key=f"acc-{arch}")
if "confusion" in figs:
    st.plotly_chart(figs["confusion"], width="stretch", key="confusion-grid")

st.subheader("Configurations")
done = [r for r in all_runs if r.state == "done"]
if len(done) >= 2:
    ids = [r.run_id for r in done]
    by_id = {r.run_id: r for r in done}
    c = st.columns(2)
    run_a = c[0].selectbox("Run A", ids, index=0, key="diff_a", format_func=lambda i: f"{i} · {by_id[i].configuration}")
    run_b = c[1].selectbox("Run B", ids, index=1, key="diff_b", format_func=lambda i: f"{i} · {by_id[i].configuration}")
    diff = comparison.config_diff(by_id[run_a].config, by_id[run_b].config)
    differing = diff[diff["differs"]].drop(columns=["differs"])
    st.markdown(f"**{len(differing)} setting(s) differ**" if len(differing) else "**The configurations are identical.**")
    if len(differing):
        st.dataframe(differing, hide_index=True, width="stretch")
    with st.expander("Every setting"):
        st.dataframe(diff.drop(columns=["differs"]), hide_index=True, width="stretch")
    metric_pc = st.selectbox("Colour the runs by", ["test_qwk", "test_acc", "test_auc", "test_referable_auc"],
                             key="parcoords_metric")
    hyper = comparison.hyperparameter_frame(done, metric_pc)
    if len(hyper) >= 2:
        st.plotly_chart(parallel_figure(tuple(stamp(r) for r in done), hyper, metric_pc), width="stretch",
                        key="parcoords")
        st.caption("Every finished run by its hyperparameters; drag along an axis to filter.")
else:
    st.caption("Two finished runs are needed for a side-by-side of their configurations.")

st.download_button("Download the comparison report (zip: Markdown, HTML with figures, CSV)",
                   data=lambda: lab.build_report(four, data, normalize, all_runs),
                   file_name="retino_comparison.zip", mime="application/zip", icon=":material/download:",
                   disabled=trained == 0)
