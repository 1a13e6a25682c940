"""The app as a run tracker, through AppTest: the Train page's fields, estimates, search and run
management; links that open a view (?run=ID, ?runs=A,B); Results' log and whole failure reason;
Live's default selection and the queue's ETA; the weights cards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import APP, open_page, texts, write_four, write_run
from retino_core import runs
from retino_core.report import lab
from retino_core.training import launch


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list:
    """Queue runs without starting the background trainer; returns the spawn calls."""
    calls: list = []
    monkeypatch.setattr(launch, "spawn_worker", lambda runs_dir=None: calls.append(runs_dir) or 0)
    return calls


def open_link(page: str, **params: str) -> AppTest:
    """The app opened at /page?key=value, as a link a colleague sent opens it."""
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update(params)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def toasts(at: AppTest) -> list[str]:
    """What the page confirmed (not the notice that it started a worker for waiting runs)."""
    return [t.proto.body for t in at.toast if not t.proto.body.startswith("queue worker")]


def test_stop_and_resume_keep_the_picked_run_and_say_so(runs_dir: Path, no_worker: list) -> None:
    older = write_run(runs_dir, name="older", state="queued")
    newer = write_run(runs_dir, name="newer", state="queued")
    at = open_page("train")
    at.selectbox(key="manage").set_value(older.name).run()
    next(b for b in at.button if b.label == "Stop").click().run()
    assert at.selectbox(key="manage").value == older.name  # not back to the top row
    assert toasts(at) == [f"{older.name} cancelled: it had not started"]
    assert "cancelled by you" in at.selectbox(key="manage").format_func(older.name)
    next(b for b in at.button if b.label == "Start again").click().run()
    assert at.selectbox(key="manage").value == older.name
    assert toasts(at) == [f"{older.name} is queued to train from the start, at the back of the queue"]
    # It joined the back: the table says it waits behind the newer run.
    table = at.dataframe[0].value.set_index("name")
    assert table.loc[f"results?run={newer.name}", "state"] == "queued · 1st in line"
    assert table.loc[f"results?run={older.name}", "state"] == "queued · 2nd in line"
    at.run()
    assert not toasts(at)  # said once, not again on the next redraw


def test_resume_next_in_line_puts_the_run_first(runs_dir: Path, no_worker: list) -> None:
    stopped = write_run(runs_dir, name="stopped", state="interrupted")
    runs.checkpoint_path(stopped, "last").write_bytes(b"")
    waiting = write_run(runs_dir, name="waiting", state="queued")
    at = open_page("train")
    at.selectbox(key="manage").set_value(stopped.name).run()
    at.checkbox(key="manage_next").check().run()
    next(b for b in at.button if b.label == "Resume").click().run()
    assert [r.run_id for r in launch.queue(runs_dir)] == [stopped.name, waiting.name]
    assert toasts(at) == [f"{stopped.name} is queued to resume, next in line"]


def test_the_table_says_what_a_tracker_says_and_the_search_narrows_it(runs_dir: Path) -> None:
    write_four(runs_dir)
    small = write_run(runs_dir, name="small", state="interrupted", epochs=30)
    runs.write_json(small / "config.json", {**runs.read_json(small / "config.json"), "image_size": 32})
    runs.write_notes(small, "", "lab")
    at = open_page("train")
    table = at.dataframe[0].value
    assert list(table.columns[:10]) == ["name", "configuration", "epochs", "image size", "preset", "state",
                                        "progress", "verdict", "test accuracy", "tags"]
    assert "None" not in table.astype(str).to_string()
    row = table.set_index("name").loc[f"results?run={small.name}"]
    assert row["epochs"] == "15/30" and row["progress"] == pytest.approx(0.5) and row["image size"] == 32

    at.text_input(key="runs_where").set_value("image_size=32").run()
    assert list(at.dataframe[0].value["name"]) == [f"results?run={small.name}"]
    assert "1 of 5 runs match" in texts(at)
    at.text_input(key="runs_where").set_value("").run()
    at.multiselect(key="runs_verdicts").set_value(["usable"]).run()
    assert len(at.dataframe[0].value) == 2
    at.multiselect(key="runs_verdicts").set_value([]).run()
    at.multiselect(key="runs_tags").set_value(["lab"]).run()
    assert len(at.dataframe[0].value) == 1
    at.text_input(key="runs_where").set_value("size=32").run()
    assert not at.exception and "unknown setting 'size'" in at.error[0].value


def test_train_estimates_how_long_and_when_the_queue_is_through(runs_dir: Path, no_worker: list) -> None:
    at = open_page("train")
    assert "No estimate yet" in texts(at)
    write_four(runs_dir)  # they trained here: 1,280 images in 50 s an epoch
    write_run(runs_dir, name="waiting", state="queued", epochs=30)
    at = open_page("train")
    page = texts(at)
    assert "**Start**: about" in page and "resnet18 / scratch, 30 epochs at 64 px" in page
    assert "**Run all four** (4 runs, 1 at a time): all done in about" in page
    assert "The queue is through in about" in page
    before = next(c.value for c in at.caption if c.value.startswith("**Start**"))
    at.number_input(key="train_epochs").set_value(3).run()  # the estimate follows the fields
    after = next(c.value for c in at.caption if c.value.startswith("**Start**"))
    assert after != before and "3 epochs" in after
    overview = open_page("overview")  # Train all four says how long the four would take, too
    assert "4 runs of 24 or 30 epochs, 1 at a time: all done in about" in texts(overview)


def test_train_measures_the_machine_when_no_run_has_trained_here(runs_dir: Path) -> None:
    at = open_page("train")
    at.number_input(key="train_size").set_value(32)
    at.number_input(key="train_batch").set_value(4)
    at.run()
    next(b for b in at.button if b.label == "Measure this machine").click().run(timeout=600)
    assert not at.exception and not at.error
    assert "**Start**: about" in texts(at) and "a calibration (the model alone" in texts(at)
    assert not any(b.label == "Measure this machine" for b in at.button)


def test_a_link_opens_results_on_the_run_it_names_with_its_log(runs_dir: Path) -> None:
    write_four(runs_dir)
    failed = write_run(runs_dir, name="broken", state="failed")
    reason = "ImageError: " + "the file scans/0042.jpeg is truncated; " * 6
    runs.write_status(failed, "failed", error=reason)
    (failed / "train.log").write_text("loading data\nepoch 1/3\rstep 5\rstep 9\nTraceback: boom\n")
    newest_done = next(r for r in runs.list_runs(runs_dir) if r.state == "done")
    at = open_link("results", run=failed.name)
    assert at.selectbox[0].value == failed.name
    assert reason.strip() in at.error[0].value  # the whole reason, not its first line
    assert at.code[0].value.endswith(f"/results?run={failed.name}")  # the link, with its copy button
    assert "loading data\nstep 9\nTraceback: boom" in at.code[1].value
    assert any(b.label == "Download train.log" for b in at.get("download_button"))
    at.selectbox[0].set_value(newest_done.run_id).run()  # another run: the URL follows
    assert at.query_params["run"] == newest_done.run_id
    assert at.get("plotly_chart")

    gone = open_link("results", run="20990101-000000-gone")
    assert "20990101-000000-gone" in gone.warning[0].value and gone.selectbox[0].value


def test_links_choose_the_runs_on_live_and_compare(runs_dir: Path) -> None:
    write_four(runs_dir)
    older_r18 = write_run(runs_dir, "resnet18", True, name="older-r18")  # a second resnet18 / pretrained
    every = runs.list_runs(runs_dir)
    other = [r.run_id for r in every if r.configuration == "resnet18 / pretrained" and r.run_id != older_r18.name][0]
    live = open_link("live", runs=f"{older_r18.name},{other}")
    assert live.multiselect[0].value == [older_r18.name, other]
    champion = lab.champion_four(every, "retinamnist")["resnet18 / pretrained"].run.run_id
    other = older_r18.name if champion == other else other
    compare = open_link("compare", runs=other)  # not the champion: the link wins
    picker = "compare-stand-in-resnet18 / pretrained"
    assert compare.selectbox(key=picker).value == other
    assert other in str(compare.query_params["runs"])
    compare.selectbox(key=picker).set_value(champion).run()  # a pick: the link follows
    assert champion in str(compare.query_params["runs"]) and other not in str(compare.query_params["runs"])
    compare.run()
    assert compare.selectbox(key=picker).value == champion  # the link the page wrote is not followed again


def test_live_starts_on_what_trains_and_each_configuration_s_best_never_a_cancelled_run(runs_dir: Path) -> None:
    four = write_four(runs_dir)
    weaker = write_run(runs_dir, "resnet18", True, name="weaker", skill=0.0)  # newer, collapsed
    cancelled = write_run(runs_dir, name="cancelled", state="queued")
    runs.write_status(cancelled, "cancelled", stopped_by="user", error="cancelled by you before it started")
    running = write_run(runs_dir, name="running", state="running", epochs=4)
    at = open_page("live")
    chosen = set(at.multiselect[0].value)
    assert running.name in chosen and four[0].name in chosen and weaker.name not in chosen
    assert cancelled.name not in chosen and len(chosen) == 5
    assert "1 running, 0 waiting: the queue is through in about" in texts(at)


def test_classify_and_evaluation_open_the_runs_a_link_names(runs_dir: Path, usable_run: Path) -> None:
    good = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    twin = Path(shutil.copytree(good, runs_dir / f"{good.name}-twin"))
    at = open_link("classify", runs=twin.name)
    assert at.multiselect[0].value == [twin.name]
    at = open_link("evaluation", run=good.name)
    assert at.selectbox[0].value == good.name and at.query_params["run"] == good.name


def test_pretrained_cards_need_the_weights_file_and_link_to_the_installer(runs_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = open_page("overview")
    page = texts(at)
    assert page.count("needs the ImageNet weights file") == 2 and "not trained on this dataset yet" in page
    links = [p.proto for p in at.get("page_link")]
    assert any(link.label == "Install the weights" and "install=weights" in link.query_string for link in links)
    train = open_link("train", install="weights")
    assert next(e for e in train.expander if e.label.startswith("ImageNet weights")).proto.expanded
