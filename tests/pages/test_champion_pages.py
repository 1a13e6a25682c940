"""The run that stands for each configuration, on every page (AppTest): the same run, the same
reason, one click to another; a pin reaches every page; a pick on Compare stays for the session.
And the calibration note on Evaluation and Classify."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from app_fixtures import open_page, texts, write_run_at as run_at
from test_app_pages import easy_eye
from retino_core import runs
from retino_core.judging import champions, operating
from retino_core.report import display, lab

R18 = "resnet18 / scratch"


@pytest.fixture
def smoke_after_good(runs_dir: Path) -> dict[str, Path]:
    """A usable ResNet18 run, then two smoke runs and a cancelled one of the same configuration;
    a usable ResNet50 run; for ResNet50-pretrained an older run queued and a newer one cancelled."""
    made = {"good": run_at(runs_dir, 1, "good", val_loss=0.9)}
    for minute in (2, 3):
        made[f"smoke{minute}"] = run_at(runs_dir, minute, f"smoke{minute}", skill=0.0, epochs=2, steps=5, val_loss=1.5)
    run_at(runs_dir, 4, "cancelled", state="cancelled")
    made["r50"] = run_at(runs_dir, 5, "r50", arch="resnet50", epochs=2, steps=5, val_loss=1.0)
    queued = run_at(runs_dir, 6, "waiting", arch="resnet50", state="queued")
    runs.write_json(queued / "config.json", {**json.loads((queued / "config.json").read_text()), "pretrained": True})
    gone = run_at(runs_dir, 7, "gone", arch="resnet50", state="cancelled")
    runs.write_json(gone / "config.json", {**json.loads((gone / "config.json").read_text()), "pretrained": True})
    runs.write_status(gone, "cancelled", error="cancelled before it started")
    return made


def card(at, configuration: str) -> str:
    """The texts of one Overview card (a column headed by the configuration's name)."""
    for column in at.columns:
        if f"**{configuration}**" in [m.value for m in column.markdown]:
            return "\n".join([m.value for m in column.markdown] + [c.value for c in column.caption]
                             + [f"{m.label} {m.value}" for m in column.metric])
    raise AssertionError(f"no card for {configuration}")


def stands_for(at_or_runs_dir, run_dir: Path, reason: str) -> None:
    page = texts(at_or_runs_dir)
    assert f"stands for it: {display.short_label(runs.load_run(run_dir))} ({reason})" in page or \
        f"This run stands for {R18} on RetinaMNIST (bundled): {reason}." in page or \
        f"{R18}: `{run_dir.name}` ({reason})" in page, page


def test_the_run_that_stands_for_a_configuration_is_the_same_on_every_page(smoke_after_good, runs_dir: Path):
    good, smoke = smoke_after_good["good"], smoke_after_good["smoke3"]
    reason = "the only usable run of 3 finished"
    overview = open_page("overview")
    stands_for(overview, good, reason)
    assert "usable" in card(overview, R18) and "cancelled" not in card(overview, "resnet50 / pretrained")
    assert "1 run waiting in the queue" in card(overview, "resnet50 / pretrained")
    compare = open_page("compare")
    stands_for(compare, good, reason)
    assert compare.table[0].value.loc["from scratch", "ResNet18"].endswith("· usable")
    assert "None of the trained configurations is usable" not in texts(compare)
    assert any("(6 epochs) vs" in m.value and "(2 epochs of 5 steps)" in m.value and "not the architecture" in m.value
               for m in compare.markdown)
    evaluation = open_page("evaluation")
    assert not evaluation.exception and evaluation.selectbox(key="eval_run").value == good.name
    stands_for(evaluation, good, reason)
    report = zipfile.ZipFile(io.BytesIO(lab.build_report(lab.champion_four(runs.list_runs(runs_dir), "retinamnist"),
                                                         "retinamnist", all_runs=runs.list_runs(runs_dir))))
    md = report.read("report.md").decode()
    assert f"{good.name} ({reason})" in md and "| max_steps_per_epoch | 0 | 5 |" in md
    # Results: a smoke run says which run stands for its configuration, one click shows that one.
    results = open_page("results")
    results.selectbox(key="results_run").set_value(smoke.name).run()
    assert f"This run does not stand for {R18} on RetinaMNIST (bundled): `{good.name}` does ({reason})." in texts(results)
    results.button(key="results_run-to-champion").click().run()
    assert results.selectbox(key="results_run").value == good.name
    stands_for(results, good, reason)


def test_a_pin_made_on_results_reaches_every_page(smoke_after_good, runs_dir: Path):
    smoke = smoke_after_good["smoke2"]
    results = open_page("results")
    results.selectbox(key="results_run").set_value(smoke.name).run()
    results.button(key=f"pin-{smoke.name}").click().run()
    assert not results.exception and champions.pins(runs_dir) == [smoke.name]
    stands_for(results, smoke, "pinned")
    assert results.button(key=f"pin-{smoke.name}").label == "Unpin"
    for page in ("overview", "compare", "evaluation"):
        at = open_page(page)
        stands_for(at, smoke, "pinned")
    assert open_page("evaluation").selectbox(key="eval_run").value == smoke.name
    results.button(key=f"pin-{smoke.name}").click().run()
    assert champions.pins(runs_dir) == []


def test_a_run_picked_on_compare_stays_for_the_session(smoke_after_good, runs_dir: Path):
    smoke = smoke_after_good["smoke3"]
    at = open_page("compare")
    at.selectbox(key=f"compare-stand-in-{R18}").set_value(smoke.name).run()
    assert f"{R18}: `{smoke.name}` (chosen for this session)" in texts(at)
    assert at.table[0].value.loc["from scratch", "ResNet18"].endswith("· no better than guessing")
    at.switch_page("pages/overview.py").run()
    assert f"stands for it: {display.short_label(runs.load_run(smoke))} (chosen for this session)" in texts(at)
    at.switch_page("pages/compare.py").run()
    assert at.selectbox(key=f"compare-stand-in-{R18}").value == smoke.name
    at.selectbox(key=f"compare-stand-in-{R18}").set_value(smoke_after_good["good"].name).run()  # back to the champion
    assert f"{R18}: `{smoke_after_good['good'].name}` (the only usable run of 3 finished)" in texts(at)


@pytest.fixture
def good_and_newer_smoke(runs_dir: Path, usable_run: Path) -> tuple[Path, Path]:
    """The session's usable run and, trained later, a copy that learned nothing (collapsed)."""
    good = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    smoke = Path(shutil.copytree(usable_run, runs_dir / f"{usable_run.name}-smoke"))
    config = json.loads((smoke / "config.json").read_text())
    runs.write_json(smoke / "config.json", {**config, "name": "smoke", "created": "2099-01-01T00:00:00+00:00"})
    summary = json.loads((smoke / "summary.json").read_text())
    n = int(sum(map(sum, summary["test_confusion"])))
    collapsed = [[n // 5 if j == 0 else 0 for j in range(5)] for _ in range(5)]
    runs.write_json(smoke / "summary.json", {**summary, "test_confusion": collapsed, "trust": None, "val_loss": 0.0})
    return good, smoke


def test_classify_starts_from_the_champion_and_says_why(good_and_newer_smoke) -> None:
    good, smoke = good_and_newer_smoke
    at = open_page("classify")
    assert at.multiselect[0].value == [good.name]  # not the newer smoke run
    assert f"{R18}: {display.short_label(runs.load_run(good))} (the only usable run of 2 finished)" in texts(at)
    note = operating.calibration_check(good, runs.load_run(good).summary.get("temperature"))
    n_val = len(runs.read_predictions(good).query("split == 'val'"))
    assert note["sentence"] in texts(at) and f"fitted on {n_val} validation images" in note["sentence"]
    # Classify grades as every door does: calibrated only where the temperature helped on test.
    assert ("Every door grades this model with its own, uncalibrated" in texts(at)) is (not note["helps"])


def test_a_temperature_that_does_not_help_is_said_and_off_by_default(runs_dir: Path, usable_run: Path) -> None:
    run = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    summary = json.loads((run / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if k not in ("grades_calibrated", "operating_point")}
    runs.write_json(run / "summary.json", {**summary, "temperature": 8.0})  # far too soft, judged afresh
    classify = open_page("classify")
    classify.file_uploader[0].set_value(("eye.jpg", easy_eye(), "image/jpeg"))
    classify.toggle(key="grad_cam").set_value(False)
    classify.run()
    assert "does not improve the test NLL and ECE" in texts(classify)
    assert "Every door grades this model with its own, uncalibrated probabilities" in texts(classify)
    assert not operating.grades_calibrated(run)  # so predict, batch grading and the export do too
    # Classify grades with the same probabilities as predict: the model's own, not at T = 8.
    from retino_core.data.images import load_image
    from retino_core.grading.predictor import Predictor

    eyes = [easy_eye(1), easy_eye(3)]  # two photos: Classify's table
    classify.file_uploader[0].set_value([(f"eye{k}.jpg", e, "image/jpeg") for k, e in enumerate(eyes)])
    classify.run()
    want = Predictor.from_run(run).predict([load_image(e, "eye.jpg") for e in eyes])
    shown = classify.dataframe[0].value["referable_probability"].tolist()
    assert shown == pytest.approx([p.decision.referable_probability for p in want], abs=1e-4)
    evaluation = open_page("evaluation")
    assert evaluation.toggle(key=f"eval_calibrated_{run.name}").value is False
    assert any("does not improve the test NLL and ECE" in w.value for w in evaluation.warning)
