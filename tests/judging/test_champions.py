"""The run that answers for each configuration: the rules, pins, the CLI, and what the queue shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app_fixtures import write_run_at as run_at
from retino_core import runs
from retino_core.cli import main
from retino_core.judging import champions, trust
from retino_core.report import lab


def champion(runs_dir: Path, configuration: str = "resnet18 / scratch", data: str = "retinamnist"):
    return champions.champions(runs.list_runs(runs_dir), data).get(configuration)


def test_a_newer_smoke_run_does_not_displace_a_better_usable_run(runs_dir: Path):
    good = run_at(runs_dir, 1, "good", val_loss=0.9)
    for minute in (2, 3):  # two later smoke runs: 2 epochs of 5 steps, no skill
        run_at(runs_dir, minute, f"smoke{minute}", skill=0.0, epochs=2, steps=5, val_loss=1.5)
    found = champion(runs_dir)
    assert found.run.run_id == good.name and found.kind == champions.BEST_USABLE
    assert found.reason == "the only usable run of 3 finished" and not found.pinned
    assert trust.is_usable_verdict(found.verdict)
    # Compare and the report get the same run, and say so truthfully.
    frame = lab.comparison_frame(lab.champion_four(runs.list_runs(runs_dir), "retinamnist"), runs.list_runs(runs_dir))
    row = frame.set_index("configuration").loc["resnet18 / scratch"]
    assert row["run"] == good.name and row["verdict"] == trust.USABLE
    assert not any("None of the trained configurations is usable" in f for f in lab.findings(frame))


def test_the_best_usable_run_by_the_validation_selected_metric_wins_ties_to_the_newer(runs_dir: Path):
    run_at(runs_dir, 1, "older", val_loss=0.80)
    best = run_at(runs_dir, 2, "best", val_loss=0.70)
    run_at(runs_dir, 3, "newest", val_loss=0.75)
    found = champion(runs_dir)
    assert found.run.run_id == best.name and found.metric == "val_loss" and found.value == 0.70
    assert found.reason == "best by validation loss (0.700) of 3 usable runs"
    tie = run_at(runs_dir, 4, "tie", val_loss=0.70)
    assert champion(runs_dir).run.run_id == tie.name
    # Runs that chose their checkpoint on different metrics are ranked by validation QWK.
    config = json.loads((tie / "config.json").read_text())
    runs.write_json(tie / "config.json", {**config, "select_metric": "acc"})
    found = champion(runs_dir)
    assert found.metric == "val_qwk" and "validation QWK" in found.reason


def test_a_cancelled_failed_queued_or_running_run_never_answers(runs_dir: Path):
    only = run_at(runs_dir, 1, "only", skill=0.0)  # finished but no better than guessing
    for minute, state in ((2, "cancelled"), (3, "failed"), (4, "interrupted"), (5, "queued"), (6, "running")):
        run_at(runs_dir, minute, state, state=state)
    found = champion(runs_dir)
    assert found.run.run_id == only.name and found.reason == "only finished run"
    assert found.verdict["verdict"] == trust.GUESSING  # shown with its verdict
    with pytest.raises(runs.RunError, match="is cancelled: only a finished run"):
        champions.pin(next(r.run_id for r in runs.list_runs(runs_dir) if r.state == "cancelled"), runs_dir)
    assert champions.champions(runs.list_runs(runs_dir), "retinamnist").keys() == {"resnet18 / scratch"}


def test_with_no_usable_run_the_best_finished_one_answers_with_its_verdict(runs_dir: Path):
    run_at(runs_dir, 1, "worse", skill=0.0, val_loss=1.4)
    better = run_at(runs_dir, 2, "better", skill=0.0, val_loss=1.2)
    found = champion(runs_dir)
    assert found.run.run_id == better.name and found.kind == champions.BEST_FINISHED
    assert found.reason == "no usable run: best by validation loss (1.200) of 2 finished"


def test_a_pinned_run_wins_and_unpinning_restores_the_rules(runs_dir: Path):
    good = run_at(runs_dir, 1, "good", val_loss=0.9)
    smoke = run_at(runs_dir, 2, "smoke", skill=0.0, val_loss=1.5)
    other = run_at(runs_dir, 3, "other", val_loss=1.0)
    assert champions.pin(smoke.name, runs_dir) == []
    found = champion(runs_dir)
    assert found.run.run_id == smoke.name and found.pinned and found.reason == "pinned"
    assert json.loads((runs_dir / runs.PINS_FILE).read_text())["pinned"] == [smoke.name]
    # One pin per configuration and data set: pinning another replaces it.
    assert champions.pin(other.name, runs_dir) == [smoke.name]
    assert champions.pins(runs_dir) == [other.name] and champion(runs_dir).run.run_id == other.name
    assert champions.unpin(other.name, runs_dir) and not champions.unpin(other.name, runs_dir)
    assert champion(runs_dir).run.run_id == good.name
    # A pinned run that is deleted no longer answers; its pin can still be removed.
    champions.pin(smoke.name, runs_dir)
    runs.delete_run(smoke.name, runs_dir)
    assert champion(runs_dir).run.run_id == good.name and champions.unpin(smoke.name, runs_dir)


def test_a_pin_and_a_session_choice_hold_per_configuration_and_data_set(runs_dir: Path, tiny_npz: Path):
    a = run_at(runs_dir, 1, "a")
    b = run_at(runs_dir, 2, "b", skill=0.0)
    elsewhere = run_at(runs_dir, 3, "elsewhere", data=str(tiny_npz))
    r50 = run_at(runs_dir, 4, "r50", arch="resnet50")
    champions.pin(r50.name, runs_dir)
    champions.pin(elsewhere.name, runs_dir)
    found = champions.champions(runs.list_runs(runs_dir), "retinamnist")
    assert found["resnet18 / scratch"].run.run_id == a.name and found["resnet50 / scratch"].pinned
    assert champion(runs_dir, data=str(tiny_npz)).run.run_id == elsewhere.name
    chosen = champions.champions(runs.list_runs(runs_dir), "retinamnist", {"resnet18 / scratch": b.name,
                                                                           "resnet50 / scratch": "no-such-run"})
    assert chosen["resnet18 / scratch"].run.run_id == b.name and chosen["resnet18 / scratch"].kind == champions.CHOSEN
    assert chosen["resnet50 / scratch"].run.run_id == r50.name  # a choice that is not a candidate is ignored
    assert champions.champion_of(runs.load_run(b), runs.list_runs(runs_dir)).run.run_id == a.name


def test_an_older_queued_run_is_what_the_configuration_is_doing(runs_dir: Path):
    """The newest run was cancelled before it started while an older one waits in the queue."""
    run_at(runs_dir, 1, "waiting", arch="resnet50", state="queued")
    cancelled = run_at(runs_dir, 2, "cancelled", arch="resnet50", state="cancelled")
    runs.write_status(cancelled, "cancelled", error="cancelled before it started")
    now = champions.standing(runs.list_runs(runs_dir), "retinamnist")["resnet50 / scratch"]
    assert now.champion is None and now.activity() == "1 run waiting in the queue"
    assert lab.not_done(runs.list_runs(runs_dir), "retinamnist")["resnet50 / scratch"] == "queued"
    failed = run_at(runs_dir, 3, "failed", arch="resnet50", state="failed")
    runs.write_status(failed, "failed", error="ValueError: synthetic failure\nTraceback ...")
    now = champions.standing(runs.list_runs(runs_dir), "retinamnist")["resnet50 / scratch"]
    assert now.activity() == "1 run waiting in the queue; its newest run failed: ValueError: synthetic failure"


def test_the_champions_pin_and_unpin_commands(runs_dir: Path, capsys):
    good = run_at(runs_dir, 1, "good", val_loss=0.9)
    smoke = run_at(runs_dir, 2, "smoke", skill=0.0, val_loss=1.5)
    queued = run_at(runs_dir, 3, "queued", state="queued")
    assert main(["champions"]) == 0
    out = capsys.readouterr().out
    assert good.name in out and "the only usable run of 2 finished" in out and smoke.name not in out
    assert main(["pin", smoke.name]) == 0
    assert f"{smoke.name} now stands for resnet18 / scratch on retinamnist" in capsys.readouterr().out
    assert main(["champions", "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found == {**found, "run_id": smoke.name, "reason": "pinned", "pinned": True, "kind": "pinned",
                     "configuration": "resnet18 / scratch", "data": "retinamnist",
                     "verdict": "no better than guessing", "finished_runs": 2}
    assert main(["pin", queued.name]) == 2
    assert "is queued: only a finished run" in capsys.readouterr().err
    assert main(["pin", "../escape"]) == 2 and main(["unpin", "no/such"]) == 2
    assert main(["unpin", smoke.name]) == 0 and "no longer pinned" in capsys.readouterr().out
    assert main(["champions", "--data", "elsewhere.npz"]) == 0 and "no finished run yet" in capsys.readouterr().out
