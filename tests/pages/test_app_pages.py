"""Every dashboard page through streamlit.testing's AppTest: no exception, the elements a user
needs, empty states that say what to do, clear errors for bad input."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import APP, open_page, texts, write_four, write_run
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from conftest import fundus_image, jpeg_bytes, png_bytes
from retino_core.training import launch
from retino_core import runs
from retino_core.report import lab

PAGES = ("overview", "train", "live", "results", "classify", "compare")


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list:
    """Queue runs without starting the background trainer; returns the spawn calls."""
    calls: list = []
    monkeypatch.setattr(launch, "spawn_worker", lambda runs_dir=None: calls.append(runs_dir) or 0)
    return calls


@pytest.fixture
def four(runs_dir: Path) -> list[Path]:
    return write_four(runs_dir)


@pytest.fixture
def good_run(runs_dir: Path, usable_run: Path) -> Path:
    """The session's usable run (an easy task learned), copied into this test's runs folder."""
    return Path(shutil.copytree(usable_run, runs_dir / usable_run.name))


@pytest.fixture
def real_run(runs_dir: Path, finished_run: Path) -> Path:
    """The session's really trained run, copied into this test's runs folder."""
    return Path(shutil.copytree(finished_run, runs_dir / finished_run.name))


# ---------------------------------------------------------------- empty registry


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_no_runs(runs_dir: Path, page: str) -> None:
    at = open_page(page)
    assert at.title
    if page == "overview":
        assert "not trained on this dataset yet" in texts(at)
        assert any(b.label.startswith("Train all four") for b in at.button)
    elif page == "train":
        assert "No runs yet" in texts(at)
        assert {b.label for b in at.button} >= {"Start", "Run all four"}
    else:  # nothing to show: the page says what to do instead of drawing an empty chart
        assert at.info and not at.get("plotly_chart")


def test_overview_shows_the_dataset(runs_dir: Path) -> None:
    at = open_page("overview")
    page = texts(at)
    assert "RetinaMNIST" in page and "43.5%" in page  # the majority-class baseline on test
    assert len(at.get("image")[0].value) == 5  # one sample per grade
    assert at.get("plotly_chart") and at.dataframe


def test_overview_rejects_a_folder_without_the_csvs(runs_dir: Path, tmp_path: Path) -> None:
    at = open_page("overview")
    at.text_input[0].set_value(str(tmp_path))
    at.button[0].click().run()
    assert not at.exception
    assert "lacks train_img.csv" in at.error[0].value
    assert at.session_state["data"] == "retinamnist"


def test_overview_switches_to_a_lab_folder(runs_dir: Path, lab_folder: Path) -> None:
    at = open_page("overview")
    at.text_input[0].set_value(str(lab_folder))
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert f"lab folder {lab_folder.name}" in texts(at)


# ---------------------------------------------------------------- with runs


def test_overview_cards_show_the_four_configurations(four, runs_dir: Path) -> None:
    at = open_page("overview")
    assert [m.label for m in at.metric].count("test accuracy") == 4
    assert [m.label for m in at.metric].count("QWK") == 4
    # resnet50 / scratch answers one grade: its card carries the verdict and why.
    assert "no better than guessing" in texts(at) and "collapsed onto one grade" in texts(at)
    badges = [m.value for m in at.markdown if m.value.startswith("verdict:")]
    assert sorted(b.split("[**")[1].split("**]")[0] for b in badges) == [
        "no better than guessing", "usable", "usable", "weak"]  # scratch ResNet18: QWK 0.33
    # The gain over the majority baseline takes the verdict's colour: never green above "no better than guessing".
    from streamlit.proto.Metric_pb2 import Metric

    colours = sorted(Metric.MetricColor.Name(m.proto.color) for m in at.metric if m.label == "test accuracy")
    assert colours == ["GREEN", "GREEN", "ORANGE", "RED"]


@pytest.fixture
def weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache, offline: pretrained runs can start only once their files are in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RETINO_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_train_all_four_queues_only_what_can_train(runs_dir: Path, no_worker: list, weights_cache: Path) -> None:
    at = open_page("overview")
    next(b for b in at.button if b.label.startswith("Train all four")).click().run()
    assert not at.exception
    assert sorted(r.configuration for r in runs.list_runs(runs_dir)) == ["resnet18 / scratch", "resnet50 / scratch"]
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and all(e.startswith("Not queued:") for e in errors)
    assert "resnet50-0676ba61.pth" in errors[1] and str(weights_cache) in errors[1]  # what to put where


def test_overview_trains_all_four(runs_dir: Path, no_worker: list, weights_cache: Path) -> None:
    weights_cache.mkdir(parents=True)
    for name in ("resnet18-f37072fd.pth", "resnet50-0676ba61.pth"):  # present, so nothing is fetched
        (weights_cache / name).write_bytes(b"weights")
    at = open_page("overview")
    at.number_input(key="four_at_once").set_value(2)
    next(b for b in at.button if b.label.startswith("Train all four")).click().run()
    assert not at.exception and not at.error
    assert launch.parallel_setting(runs_dir) == 2 and "Up to 2 train at once" in at.success[0].value
    queued = runs.list_runs(runs_dir)
    assert sorted(r.configuration for r in queued) == sorted(
        ["resnet18 / pretrained", "resnet18 / scratch", "resnet50 / pretrained", "resnet50 / scratch"])
    assert all(r.state == "queued" for r in queued) and no_worker
    assert "queued" in texts(at).lower()  # the cards now say so


def test_a_run_started_on_train_shows_on_live(runs_dir: Path, tiny_npz: Path, no_worker: list) -> None:
    at = open_page("train")
    at.text_input(key="train_data").set_value(str(tiny_npz))
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_size").set_value(32)
    at.run()
    assert runs.list_runs(runs_dir) == []  # a changed field queues nothing: only the buttons do
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception and not at.error
    (run,) = runs.list_runs(runs_dir)
    assert run.state == "queued" and run.config["epochs"] == 1 and run.config["image_size"] == 32
    assert f"Queued {run.run_id}" in at.success[0].value

    at.switch_page("pages/live.py").run()
    assert not at.exception
    assert f"**{run.run_id.split('-', 2)[2]}" in texts(at)  # followed: every queued or running run is shown
    assert "waiting in the queue" in [p.proto.text for p in at.get("progress")][0]
    at.switch_page("pages/train.py").run()  # the fields kept their values through the page switch
    assert at.number_input(key="train_epochs").value == 1 and at.number_input(key="train_size").value == 32
    assert at.text_input(key="train_data").value == str(tiny_npz)


def test_train_rejects_bad_settings(runs_dir: Path, tmp_path: Path, no_worker: list) -> None:
    at = open_page("train")
    at.text_input(key="train_data").set_value(str(tmp_path))  # a folder without the lab CSVs
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception
    assert "lacks train_img.csv" in at.error[0].value
    assert runs.list_runs(runs_dir) == [] and not no_worker


def test_train_stops_resumes_and_deletes(runs_dir: Path, no_worker: list) -> None:
    queued = write_run(runs_dir, state="queued")
    at = open_page("train")
    assert at.dataframe[0].value["name"].tolist() == [f"results?run={queued.name}"]  # a link to its page
    next(b for b in at.button if b.label == "Stop").click().run()
    assert runs.read_status(queued)["state"] == "cancelled"  # it never started: nothing to resume
    assert not any(b.label == "Resume" for b in at.button)
    next(b for b in at.button if b.label == "Start again").click().run()
    assert runs.read_status(queued)["state"] == "queued" and no_worker
    next(b for b in at.button if b.label == "Stop").click().run()

    runs.write_status(queued, "interrupted")
    runs.checkpoint_path(queued, "last").write_bytes(b"")  # resume needs a last checkpoint
    at.run()
    assert not any(b.label == "Start again" for b in at.button)
    next(b for b in at.button if b.label == "Resume").click().run()
    assert runs.read_status(queued)["state"] == "queued"
    next(b for b in at.button if b.label == "Stop").click().run()
    assert runs.read_status(queued)["state"] == "interrupted"  # a queued resume keeps its checkpoint

    at.run()
    assert not any(b.label == "Delete for good" for b in at.button)  # asks first
    next(b for b in at.button if b.label == "Delete").click().run()
    assert queued.name in at.warning[0].value
    next(b for b in at.button if b.label == "Delete for good").click().run()
    assert not at.exception
    assert not queued.exists()
    assert not any(b.label == "Delete for good" for b in at.button)  # the confirmation closed


def test_a_delete_confirmation_never_deletes_another_run(runs_dir: Path, no_worker: list) -> None:
    first, second = write_run(runs_dir, name="first"), write_run(runs_dir, name="second")
    at = open_page("train")
    at.selectbox(key="manage").set_value(first.name).run()
    next(b for b in at.button if b.label == "Delete").click().run()
    at.selectbox(key="manage").set_value(second.name).run()  # picked another before confirming
    assert not any(b.label == "Delete for good" for b in at.button)
    assert first.exists() and second.exists()


def test_the_train_table_has_no_none_and_keeps_whole_errors(runs_dir: Path) -> None:
    failed = write_run(runs_dir, state="failed")
    long_error = "ValueError: " + "the dataset folder moved while training; " * 5
    runs.write_status(failed, "failed", error=long_error)
    write_run(runs_dir, state="queued")
    at = open_page("train")
    table = at.dataframe[0].value
    assert "None" not in table.astype(str).to_string().replace("NaN", "")
    assert long_error.strip() in texts(at)  # the whole message, under the table


def test_live_shows_curves_and_the_majority_baseline(four, runs_dir: Path) -> None:
    at = open_page("live")
    assert len(at.multiselect[0].value) == 4
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # loss per step, accuracy per epoch
    assert "majority-class baseline" in charts[1].proto.spec


def test_live_shows_a_running_run(runs_dir: Path) -> None:
    run = write_run(runs_dir, state="running", epochs=4)  # its pid is this (alive) process
    slot = launch.plan_slots(2, gpus=[], cpus=[0, 1])[1]
    runs.write_status(run, "running", slot=slot.to_dict(), torch_threads=1)
    at = open_page("live")
    assert at.multiselect[0].value == [run.name]
    text = at.get("progress")[0].proto.text
    assert "epoch 2/4" in text and "images/s" in text
    assert "on CPU · slot 2 of 2 · 1 thread" in texts(at)  # which share of the machine it has
    at.switch_page("pages/overview.py").run()
    assert not at.exception and "on CPU · slot 2 of 2 · 1 thread" in texts(at)


def test_results_confusion_matrix_and_gallery(four, runs_dir: Path) -> None:
    at = open_page("results")
    best = next(r for r in runs.list_runs(runs_dir) if r.configuration == "resnet18 / pretrained")
    at.selectbox[0].set_value(best.run_id).run()
    assert {m.label for m in at.metric} >= {"accuracy", "QWK", "referable-DR AUC"}
    assert len(at.get("plotly_chart")) == 1 and at.dataframe  # the matrix; per-grade P/R/F1
    at.selectbox(key="cell_true").set_value(2)
    at.selectbox(key="cell_pred").set_value(2)
    at.run()
    gallery = at.get("image")[-1].captions
    assert gallery and all(" · " in caption for caption in gallery)
    at.toggle[0].set_value(True).run()  # row-normalised
    assert not at.exception


def test_results_warns_about_a_collapsed_model(four, runs_dir: Path) -> None:
    at = open_page("results")
    collapsed = next(r for r in runs.list_runs(runs_dir) if r.configuration == "resnet50 / scratch")
    at.selectbox[0].set_value(collapsed.run_id).run()
    assert at.error[0].value.startswith("**No better than guessing.**")
    assert "collapsed onto one grade" in at.error[0].value and "43.5 %" in at.error[0].value
    good = next(r for r in runs.list_runs(runs_dir) if r.configuration == "resnet18 / pretrained")
    at.selectbox[0].set_value(good.run_id).run()
    assert not at.error and at.success[0].value.startswith("**Usable.**")


def test_results_of_a_real_run(real_run: Path) -> None:
    at = open_page("results")
    assert at.selectbox[0].value == real_run.name
    assert at.get("plotly_chart") and not at.exception


def test_compare_lays_out_the_four(four, runs_dir: Path) -> None:
    at = open_page("compare")
    assert len(at.table) == 2  # accuracy and QWK, 2x2 each
    charts = [c.key for c in at.get("plotly_chart")]
    assert charts == ["acc-resnet18", "acc-resnet50", "confusion-grid", "parcoords"]
    assert "collapsed" in texts(at)
    # The honest number first, with its interval and verdict; the test-chosen epoch only on request.
    accuracy = at.table[0].value
    assert accuracy.loc["from scratch", "ResNet50"].endswith("· no better than guessing")
    assert accuracy.loc["ImageNet pretrained", "ResNet18"].endswith("· usable") and "–" in accuracy.iloc[0, 0]
    assert "resnet50 / scratch is no better than guessing" in at.warning[0].value
    assert "(" in at.table[1].value.iloc[0, 0]  # QWK with its interval
    # Six pairs, each with a paired interval, McNemar and Holm p-values and a sentence.
    pairs = next(d.value for d in at.dataframe if "Holm p" in d.value.columns)
    assert len(pairs) == 6 and {"accuracy A − B", "McNemar p", "Holm p", "recipe differs in"} <= set(pairs.columns)
    p_values = list(pairs["McNemar p"]) + list(pairs["Holm p"])  # as text, never 0
    assert all(p == "< 0.001" or float(p) > 0 for p in p_values) and "< 0.001" in p_values
    sentences = [m.value for m in at.markdown if "on this test set" in m.value]
    assert len(sentences) == 6 and all("McNemar p" in x for x in sentences)
    # The collapsed model against a good one is a real difference; the config diff names arch.
    assert any("ResNet50-scratch" in x and ": a real difference" in x for x in sentences)
    differing = next(d.value for d in at.dataframe if "setting" in d.value.columns)
    assert "arch" in list(differing["setting"]) or "pretrained" in list(differing["setting"])
    assert at.get("download_button")


def test_compare_with_one_configuration_says_what_is_missing(real_run: Path) -> None:
    at = open_page("compare")
    assert "1 of the four configurations" in at.info[0].value
    assert not at.exception


def easy_eye(grade: int = 0, size: int = 28, seed: int = 0) -> bytes:
    """A picture like the usable run's training images (28 px, as they were)."""
    return jpeg_bytes(fundus_image(size, seed=seed, grade=grade, easy=True))


def test_classify_grades_an_upload_with_grad_cam(good_run: Path) -> None:
    at = open_page("classify")
    assert at.multiselect[0].value == [good_run.name]
    at.file_uploader[0].set_value(("eye.jpg", easy_eye(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert any("predicted grade" in m.label for m in at.metric)
    assert "usable" in texts(at)
    # The probabilities, the ensemble bars and a Grad-CAM figure with a colour bar.
    def cam_opacity() -> float:
        (cam,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Grad-CAM" in c.proto.spec]
        heat = cam["data"][1]
        assert heat["type"] == "heatmap" and heat["colorbar"]["title"]["text"] == "Grad-CAM"
        return heat["opacity"]

    assert cam_opacity() == 0.5
    # The title names the grade explained; a 32 px run reads layer1 (layer2 would be 4×4).
    assert "Grad-CAM for 0 · No DR: where this model found evidence for that grade (layer1, 8×8 cells" in texts(at)
    at.slider(key="cam_opacity").set_value(0.8).run()
    assert cam_opacity() == 0.8
    assert "Refer: **no**" in texts(at) and "chosen on validation" in texts(at)


def test_classify_says_a_flat_grad_cam_shows_nothing(good_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retino_core.grading.predictor import Predictor

    monkeypatch.setattr(Predictor, "grad_cam", lambda self, image, target=None, mask=True:
                        np.zeros((image.height, image.width)))  # what a map with no positive evidence gives
    at = open_page("classify")
    at.file_uploader[0].set_value(("eye.jpg", easy_eye(), "image/jpeg")).run()
    assert not at.exception
    assert "Grad-CAM for 0 · No DR: no region stands out for this grade" in texts(at)
    assert not [c for c in at.get("plotly_chart") if "Grad-CAM" in c.proto.spec]  # no colour bar for nothing


def test_classify_refuses_to_grade_with_a_model_that_learned_nothing(real_run: Path) -> None:
    """A 1-epoch run on 16 test images is no better than guessing: a banner, no grade."""
    at = open_page("classify")
    at.file_uploader[0].set_value(("eye.jpg", jpeg_bytes(fundus_image(64)), "image/jpeg")).run()
    assert not at.exception
    assert "None of the chosen models is usable" in at.error[0].value
    assert "no better than guessing" in at.error[0].value
    assert not any("predicted grade" in m.label for m in at.metric)
    assert "would say" in texts(at) and "not a grade" in texts(at)
    assert [e.label for e in at.expander] == ["What the models that are not usable would say (not a grade)"]


def test_classify_leaves_a_model_that_is_not_usable_out_of_the_ensemble(good_run: Path, real_run: Path) -> None:
    at = open_page("classify")
    at.multiselect[0].set_value([good_run.name, real_run.name])
    at.file_uploader[0].set_value(("eye.jpg", easy_eye(), "image/jpeg"))
    at.toggle(key="grad_cam").set_value(False)
    at.run()
    assert not at.exception
    assert "Left out of the ensemble" in at.warning[0].value and real_run.name.split("-")[-1] in at.warning[0].value
    assert any(m.label.startswith(f"{'resnet18 / scratch'}") and "predicted grade" in m.label for m in at.metric)
    # Showing what the other model would say never lets it vote, speak in large type or agree.
    at.toggle(key="include_all").set_value(True).run()
    assert not at.exception
    assert not any(m.label.startswith("Ensemble") for m in at.metric)
    assert len(at.metric) == 1 and not at.success  # one grade (the usable model's), no agreement badge
    assert "would say" in texts(at) and "not a grade" in texts(at)


def test_classify_does_not_grade_what_is_not_a_fundus_photo(good_run: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    strip = Image.new("RGB", (2000, 200), (250, 250, 250))
    at = open_page("classify")
    at.file_uploader[0].set_value([("noise.png", png_bytes(noise), "image/png"),
                                   ("strip.png", png_bytes(strip), "image/png"),
                                   ("eye.jpg", easy_eye(), "image/jpeg")])
    at.toggle(key="grad_cam").set_value(False)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["in_distribution"]) == [False, False, True]
    assert list(table["status"]) == ["not graded", "not graded", "graded"]
    assert table["grade"].isna().tolist() == [True, True, False] and table["refer"].isna().tolist() == [True, True, False]
    assert pd.isna(table["grade_name"][0]) and table["would_say_grade"].notna().all()
    assert "close to square" in table["reasons"][1] and ". " in table["reasons"][0]  # separate sentences
    assert "1 graded, 2 not graded (failed a photo check)" in texts(at)
    at.selectbox[0].set_value(0).run()
    assert at.warning[0].value.startswith("**Not graded.** ")
    assert not any("predicted grade" in m.label for m in at.metric)
    assert "thumbnail" not in texts(at)  # nothing is said about how a photo that is not graded is graded


def test_classify_says_which_upload_is_not_an_image(good_run: Path) -> None:
    at = open_page("classify")
    at.file_uploader[0].set_value([("notes.png", b"not an image at all", "image/png"),
                                   ("eye.png", easy_eye(), "image/png")])
    at.run()
    assert not at.exception
    assert "notes.png" in at.error[0].value and "not a recognised image" in at.error[0].value
    assert any("predicted grade" in m.label for m in at.metric)  # the good one is still graded


def test_classify_several_images_gives_a_table(good_run: Path) -> None:
    at = open_page("classify")
    at.file_uploader[0].set_value([(f"eye{i}.jpg", easy_eye(i, seed=i), "image/jpeg") for i in range(3)])
    at.toggle(key="grad_cam").set_value(False)  # faster
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["image"]) == ["eye0.jpg", "eye1.jpg", "eye2.jpg"]
    assert list(table["grade"]) == [0, 1, 2]  # the easy task: a usable model gets them right
    assert at.get("download_button")


def test_classify_ensembles_several_models(good_run: Path, runs_dir: Path) -> None:
    """Two usable models (the same weights, the twin's probabilities softened by a temperature of 4):
    the ensemble's bars are the mean of theirs, and they agree."""
    import torch

    from retino_core.training.recorder import save_checkpoint

    twin = Path(shutil.copytree(good_run, runs_dir / f"{good_run.name}-twin"))
    ck = torch.load(runs.checkpoint_path(twin), map_location="cpu", weights_only=True)
    ck["temperature"] = 4.0  # the easy run's own is near 0.05: its probabilities are all but 0 and 1
    save_checkpoint(ck, runs.checkpoint_path(twin))
    runs.write_json(twin / "summary.json", {**runs.read_json(twin / "summary.json"), "temperature": 4.0})
    at = open_page("classify")
    at.multiselect[0].set_value([good_run.name, twin.name])
    at.file_uploader[0].set_value(("eye.jpg", easy_eye(1, seed=5), "image/jpeg"))
    at.toggle(key="tta").set_value(True)
    at.toggle(key="grad_cam").set_value(False)
    at.run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert [m.value for m in at.metric if m.label.startswith("Ensemble of 2 models: predicted grade")] == ["1 · Mild"]
    assert "The models agree" in at.success[0].value
    charts = [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")]
    assert len(charts) == 3  # the ensemble's bars and each model's
    def values(x) -> np.ndarray:  # plotly sends numpy arrays base64-encoded
        return np.frombuffer(__import__("base64").b64decode(x["bdata"]), x["dtype"]) if isinstance(x, dict) else np.array(x)

    ensemble, first, second = (values(chart[0]["x"]) for chart in charts)
    assert np.abs(first - second).max() > 0.01  # two different answers ...
    assert np.allclose(ensemble, (first + second) / 2, atol=1e-6)  # ... averaged


def test_classify_table_and_csv_leave_a_refused_photo_ungraded(good_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    kept: list = []

    class Kept(MemoryMediaFileStorage):  # keeps the files a run serves, to read the CSV download
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kept.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Kept)
    disc = Image.new("RGB", (300, 300))
    ImageDraw.Draw(disc).ellipse((10, 10, 290, 290), fill=(220, 110, 40))  # a plain orange disc on black
    at = open_page("classify")
    at.toggle(key="grad_cam").set_value(False)
    at.file_uploader[0].set_value([("disc.png", png_bytes(disc), "image/png"), ("eye.jpg", easy_eye(4, seed=2), "image/jpeg")])
    at.run()
    assert not at.exception
    url = at.get("download_button")[0].proto.url
    csv_text = kept[-1].get_file(url.rsplit("/", 1)[1]).content.decode()
    rows = {r["image"]: r for r in __import__("csv").DictReader(io.StringIO(csv_text))}
    assert rows["disc.png"]["status"] == "not graded" and "no retinal detail" in rows["disc.png"]["reasons"]
    assert rows["disc.png"]["grade"] == rows["disc.png"]["grade_name"] == rows["disc.png"]["refer"] == ""
    assert rows["disc.png"]["would_say_grade"] != ""
    eye = rows["eye.jpg"]
    assert eye["status"] == "graded" and (int(eye["grade"]) >= 2) == (eye["refer"] == "True")
    assert set(rows["eye.jpg"]) >= {"threshold", "threshold_from", "p_no_dr", "would_say_refer"}


def test_live_of_a_real_run(real_run: Path) -> None:
    at = open_page("live")
    assert at.multiselect[0].value == [real_run.name]
    assert len(at.get("plotly_chart")) == 2


@pytest.mark.parametrize("fmt, suffix", [("TIFF", "tif"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_classify_accepts_every_format_the_readme_lists(good_run: Path, fmt: str, suffix: str) -> None:
    buf = io.BytesIO()
    fundus_image(28, seed=4, grade=1, easy=True).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    at = open_page("classify")
    at.toggle(key="grad_cam").set_value(False)
    at.file_uploader[0].set_value((f"eye.{suffix}", buf.getvalue(), f"image/{suffix}")).run()
    assert not at.exception and not at.error
    assert any("predicted grade" in m.label and m.value == "1 · Mild" for m in at.metric)


def test_live_keeps_a_run_that_failed_while_others_train(runs_dir: Path) -> None:
    other = write_run(runs_dir, name="other", state="running")
    doomed = write_run(runs_dir, name="doomed", state="running")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/live.py").run()
    at.multiselect[0].set_value([other.name]).run()  # the user watches one; both are followed
    runs.write_status(doomed, "failed", error="ValueError: synthetic failure")
    at.run()
    assert not at.exception
    page = texts(at)
    assert "doomed" in page and ":red[failed]" in page and "synthetic failure" in page


def test_compare_and_report_say_why_a_configuration_failed(runs_dir: Path) -> None:

    for arch, pretrained in (("resnet18", False), ("resnet50", False), ("resnet18", True)):
        write_run(runs_dir, arch, pretrained)
    failed = write_run(runs_dir, "resnet50", True, state="failed")
    error = ("WeightsError: ImageNet weights for resnet50 are not in the torch cache and could not be "
             "downloaded (offline). Download https://download.pytorch.org/models/resnet50-0676ba61.pth and save it")
    runs.write_status(failed, "failed", error=error)
    at = open_page("compare")
    assert not at.exception
    cell = at.table[0].value.loc["ImageNet pretrained", "ResNet50"]
    assert cell.startswith("failed: WeightsError: ImageNet weights for resnet50") and len(cell) <= 170
    all_runs = runs.list_runs(runs_dir)
    md = zipfile.ZipFile(io.BytesIO(lab.build_report(lab.champion_four(all_runs, "retinamnist"), "retinamnist",
                                                        all_runs=all_runs))).read("report.md").decode()
    assert "resnet50 / pretrained (failed: WeightsError" in md and "Not trained yet" not in md


def test_results_of_a_model_without_mistakes_still_offers_the_card_and_export(good_run: Path) -> None:
    """The default cell of a perfect model's matrix is empty: the page goes on past the gallery."""
    summary = runs.read_json(good_run / "summary.json")
    for split in ("val", "test"):  # the usable run made perfect: every photo on the diagonal
        summary[f"{split}_confusion"] = np.diag(np.sum(summary[f"{split}_confusion"], axis=1)).tolist()
    runs.write_json(good_run / "summary.json", summary)
    preds = runs.read_predictions(good_run)
    preds.assign(pred=preds["label"]).to_csv(good_run / "predictions.csv", index=False)
    at = open_page("results")
    assert "Click another square" in at.info[0].value
    assert "Take this grader out" in [h.value for h in at.subheader]
    assert at.success[0].value.startswith("**Usable.** Test accuracy")  # 'AUC' and 'QWK' keep their case
    assert "macro AUC" in at.success[0].value


def test_train_says_the_datasets_warnings_before_queueing(runs_dir: Path, lab_folder: Path, no_worker: list) -> None:
    at = open_page("train")
    at.text_input(key="train_data").set_value(str(lab_folder))  # 12 test images: every grade has fewer than 5
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception and not at.error
    assert "warning(s)" in at.warning[0].value and "fewer than 5" in at.warning[0].value
    assert len(runs.list_runs(runs_dir)) == 1  # warnings do not stop the run
