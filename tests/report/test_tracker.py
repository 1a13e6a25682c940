"""The run list as a tracker: progress from epochs and steps done, states in words, search (the
Train table and `runs --where`), duration estimates and the queue's ETA, train.log's tail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app_fixtures import write_run, write_four
from retino_core import runs
from retino_core.cli import main
from retino_core.report import display, eta, runs_table
from retino_core.training import calibrate, launch


def test_progress_counts_the_epochs_an_ended_run_finished(runs_dir: Path) -> None:
    stopped = runs.load_run(write_run(runs_dir, state="interrupted", epochs=30, steps=20))  # 15 epochs done
    progress = display.run_progress(stopped)
    assert progress.fraction == pytest.approx(0.5) and progress.text == "15/30 epochs done"


def test_progress_of_a_resumed_run_is_its_epochs_plus_the_steps_of_the_one_it_is_in(runs_dir: Path) -> None:
    run_dir = write_run(runs_dir, state="running", epochs=6, epochs_done=1, steps=10)
    runs.append_jsonl(run_dir / "metrics.jsonl", [
        {"kind": "resume", "epoch": 1, "time": time.time()},
        *({"kind": "step", "epoch": 2, "step": k, "steps": 10, "train_loss": 1.0, "images_per_s": 100.0,
           "time": time.time()} for k in range(1, 6))])
    progress = display.run_progress(runs.load_run(run_dir))
    assert progress.fraction == pytest.approx((1 + 5 / 10) / 6)  # epoch 2, step 5 of 10: a quarter
    assert progress.text.startswith("epoch 2/6 · step 5/10")


def test_states_in_words(runs_dir: Path) -> None:
    run = write_run(runs_dir, state="interrupted")
    runs.write_status(run, "interrupted", stopped_by="user", error="stopped by you")
    assert display.state_text(runs.load_run(run)) == "stopped by you"
    queued = runs.load_run(write_run(runs_dir, state="queued"))
    assert display.state_text(queued, 2) == "queued · 2nd in line"
    assert [display.ordinal(n) for n in (1, 3, 11, 12, 21, 102)] == ["1st", "3rd", "11th", "12th", "21st", "102nd"]


@pytest.fixture
def registry(runs_dir: Path) -> dict[str, Path]:
    write_four(runs_dir)
    small = write_run(runs_dir, name="small", epochs=2)
    runs.write_json(small / "config.json", {**runs.read_json(small / "config.json"), "image_size": 32})
    runs.write_notes(small, "tried a smaller size", "lab, quick")
    tagged = write_run(runs_dir, name="tagged", state="failed")
    runs.write_notes(tagged, "", "lab")
    return {"small": small, "tagged": tagged}


def test_search_by_setting_tag_state_verdict_and_text(registry: dict[str, Path], runs_dir: Path) -> None:
    every = runs.list_runs(runs_dir)

    def ids(**kw) -> set[str]:
        return {r.run_id for r in runs_table.search(every, runs_table.make_query(every, **kw))}

    assert ids(where=["image_size=32"]) == {registry["small"].name}
    assert ids(where=["image_size=64"], tags=["lab"]) == {registry["tagged"].name}
    assert ids(where=["image_size<64", "epochs>=2"]) == {registry["small"].name}
    assert ids(where=["pretrained=true"]) == {r.run_id for r in every if r.pretrained}
    assert ids(where=["lr=2e-3"]) == {r.run_id for r in every}  # 0.002 written another way
    assert ids(states=["failed"]) == {registry["tagged"].name}
    assert ids(verdicts=["no better than guessing"]) == {r.run_id for r in every if r.configuration == "resnet50 / scratch"}
    assert ids(text="smaller") == {registry["small"].name}  # in its notes
    assert ids(configurations=["resnet18 / pretrained"], where=["test_acc>0.5"]) != set()
    for bad, says in ((dict(where=["imagesize=64"]), "unknown setting 'imagesize'"),
                      (dict(where=["lr<fast"]), "needs a number"), (dict(where=["image_size"]), "KEY=VALUE"),
                      (dict(states=["stopped"]), "choose one of: queued"), (dict(verdicts=["good"]), "usable")):
        with pytest.raises(runs_table.SearchError, match=says):
            runs_table.make_query(every, **bad)


def test_runs_where_and_tag_on_the_command_line(registry: dict[str, Path], capsys) -> None:
    assert main(["runs", "--where", "image_size=64", "--tag", "lab"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:-1]] == [registry["tagged"].name] and out[-1] == "1 of 6 run(s) match"
    assert main(["runs", "--where", "image_size=32", "--json"]) == 0
    assert "small" in capsys.readouterr().out
    assert main(["runs", "--where", "size=32"]) == 2
    assert "unknown setting 'size'" in capsys.readouterr().err


def test_the_table_has_the_tracker_columns_and_no_none(registry: dict[str, Path], runs_dir: Path) -> None:
    every = runs.list_runs(runs_dir)
    rows = runs_table.table_rows(every, launch.queue(all_runs=every))
    assert list(rows[0])[:10] == ["name", "configuration", "epochs", "image size", "preset", "state", "progress",
                                  "verdict", "test accuracy", "tags"]
    assert not any(v is None or v == "None" for row in rows for v in row.values())
    done = next(r for r in rows if r["name"] == registry["small"].name)
    assert done["epochs"] == "2/2" and done["image size"] == 32 and done["progress"] == 1.0
    assert done["test accuracy"].count("%") == 1 and "–" in done["test accuracy"]  # with its 95 % interval


def speed_run(runs_dir: Path, arch: str, size: int, images_per_s: float) -> None:
    run = write_run(runs_dir, arch, epochs=1, steps=10)
    rows = runs.read_metrics(run)
    for row in rows:
        if row["kind"] == "epoch":
            row.update(train_images=int(images_per_s * 10), train_seconds=10.0, val_n=100, test_n=100, eval_seconds=1.0)
    runs.atomic_write(run / "metrics.jsonl", b"")
    runs.append_jsonl(run / "metrics.jsonl", rows)
    runs.write_json(run / "config.json", {**runs.read_json(run / "config.json"), "image_size": size})


def test_an_estimate_scales_the_speed_measured_here(runs_dir: Path) -> None:
    speed_run(runs_dir, "resnet18", 64, 200.0)
    speeds = eta.measured_speeds(runs.list_runs(runs_dir))
    config = {"arch": "resnet18", "image_size": 64, "batch_size": 50, "epochs": 10, "max_steps_per_epoch": 0}
    at_64 = eta.estimate(config, 1000, 200, speeds)
    # 10 epochs of 1,000 images at 200/s and 200 images at 200/s, then the final pass over 1,200 images
    assert at_64.seconds == pytest.approx(10 * (5 + 1) + 6) and "measured by run" in at_64.basis
    at_128 = eta.estimate({**config, "image_size": 128}, 1000, 200, speeds)
    assert at_128.seconds == pytest.approx(4 * at_64.seconds) and "scaled from" in at_128.basis
    capped = eta.estimate({**config, "max_steps_per_epoch": 2}, 1000, 200, speeds)  # 100 images an epoch
    assert capped.seconds == pytest.approx(10 * (0.5 + 1) + 6)
    resnet50 = eta.estimate({**config, "arch": "resnet50"}, 1000, 200, speeds)
    assert resnet50.seconds == pytest.approx(eta.ARCH_COST["resnet50"] * at_64.seconds)
    assert eta.estimate(config, 1000, 200, []) is None


def test_the_queue_is_served_in_order_on_its_slots() -> None:
    jobs = [eta.Job("running", 30.0, running=True), eta.Job("a", 100.0), eta.Job("b", 10.0), eta.Job("c", None)]
    one = eta.schedule(jobs, 1)
    assert one.finishes == {"running": 30.0, "a": 130.0, "b": 140.0, "c": 140.0} and one.unknown == ("c",)
    two = eta.schedule(jobs, 2)
    assert two.finishes["a"] == 100.0 and two.finishes["b"] == 40.0 and two.seconds == 100.0
    wide = eta.schedule([eta.Job("a", 50.0), eta.Job("big", 20.0, slots=2), eta.Job("b", 5.0)], 2)
    assert wide.finishes["big"] == 70.0 and wide.finishes["b"] == 75.0  # first come, first served


def test_the_log_tail_keeps_a_progress_bar_s_last_state(runs_dir: Path) -> None:
    run = runs.load_run(write_run(runs_dir, state="failed"))
    assert display.log_tail(run) == ""  # trained outside the queue: no train.log
    launch.log_path(run.path).write_bytes(b"start\n\rep 1: 10%\rep 1: 50%\rep 1: 100%\n\x1b[Kdone\n")
    assert display.log_tail(run) == "start\nep 1: 100%\ndone"


def test_a_calibration_stands_in_until_a_run_has_trained_here(runs_dir: Path, capsys) -> None:
    assert main(["calibrate", "--arch", "resnet18", "--image-size", "32", "--batch-size", "4"]) == 0
    assert "training images/s" in capsys.readouterr().out
    (found,) = calibrate.recorded()
    assert found["image_size"] == 32 and found["train_images_per_s"] > 0 and found["eval_images_per_s"] > 0
    config = {"arch": "resnet18", "image_size": 32, "batch_size": 4, "epochs": 2}
    from_calibration = eta.estimate(config, 100, 20, eta.measured_speeds([]))
    assert from_calibration.seconds > 0 and "a calibration" in from_calibration.basis
    speed_run(runs_dir, "resnet18", 32, 200.0)  # a real run of the same kind comes first
    assert "measured by run" in eta.estimate(config, 100, 20, eta.measured_speeds(runs.list_runs(runs_dir))).basis
    (runs_dir / calibrate.SPEED_FILE).write_text("{not json")
    assert calibrate.recorded() == []  # a damaged file counts as none
