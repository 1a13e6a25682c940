"""Every entry of the bad-input corpus through every door it can come in by.

Doors: an upload's bytes (what the Classify page calls), a dataset's image file (header check
and full decode), the Classify page itself, ``python -m retino_core predict`` (in-process and
as a real subprocess), dataset validation (``validate``, ``train``, the trainer) and run names.
A refused entry must give a clear error naming the file, never a traceback; a "convert" entry
is a valid picture that must come out RGB and be graded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from badinput import CONVERTED, CSV_CASES, IMAGE_CASES, REFUSED, ImageCase, image_ids
from conftest import TINY, write_lab_folder
from retino_core import runs
from retino_core.cli import main
from retino_core.config import make_config
from retino_core.data.images import MAX_UPLOAD_BYTES, check_image, load_image
from retino_core.errors import DataError, ImageError
from retino_core.data.sources import open_source
from retino_core.grading.predictor import Predictor
from retino_core.training.lifecycle import prepare_run, run_training

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "streamlit_app.py"


def assert_clean(text: str) -> None:
    """What a user reads: no Python traceback, no source lines."""
    assert "Traceback" not in text and 'File "' not in text, text


def write_case(folder: Path, case: ImageCase, stem: str = "eye") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}{case.suffix}"
    path.write_bytes(case.make())
    return path


@pytest.fixture(scope="module")
def predictor(finished_run: Path) -> Predictor:
    return Predictor.from_run(finished_run)


# ---------------------------------------------------------------- door: an upload's bytes


@pytest.mark.parametrize("case", REFUSED, ids=image_ids(REFUSED))
def test_upload_bytes_refused_with_a_reason(case: ImageCase) -> None:
    with pytest.raises(ImageError) as err:
        load_image(case.make(), f"upload{case.suffix}")
    message = str(err.value)
    assert message.startswith(f"upload{case.suffix}: ")
    assert case.match.lower() in message.lower()
    assert_clean(message)


@pytest.mark.parametrize("case", CONVERTED, ids=image_ids(CONVERTED))
def test_upload_bytes_converted_and_graded(case: ImageCase, predictor: Predictor) -> None:
    img = load_image(case.make(), f"upload{case.suffix}")
    assert img.mode == "RGB" and min(img.size) >= 16
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.max() > 100  # the orange disc survived the conversion
    [pred] = predictor.predict([img])
    assert 0 <= pred.decision.would_say_grade <= 4 and abs(sum(pred.probabilities) - 1) < 1e-4
    assert pred.decision.grade is None  # the session's run is no better than guessing: never a grade


def test_sixteen_bit_png_keeps_its_brightness() -> None:
    case = next(c for c in CONVERTED if c.name == "16-bit greyscale PNG")
    grey = next(c for c in CONVERTED if c.name == "greyscale JPEG")
    a = np.asarray(load_image(case.make()), dtype=float).mean()
    b = np.asarray(load_image(grey.make()), dtype=float).mean()
    assert abs(a - b) < 10  # scaled from 16 to 8 bits, not clipped to white or black


def test_upload_over_the_cap_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"over the upload limit of \d+ MB"):
        load_image(b"\xff\xd8" + b"\0" * MAX_UPLOAD_BYTES, "huge.jpg")


# ---------------------------------------------------------------- door: a dataset's image file


@pytest.mark.parametrize("case", IMAGE_CASES, ids=image_ids(IMAGE_CASES))
def test_dataset_file_checked_and_decoded(case: ImageCase, tmp_path: Path) -> None:
    path = write_case(tmp_path, case)
    if case.expect == "convert":
        check_image(path)
        check_image(path, deep=True)
        assert load_image(path).mode == "RGB"
        return
    with pytest.raises(ImageError) as err:
        check_image(path, deep=True)
    assert str(path) in str(err.value) and case.match.lower() in str(err.value).lower()
    if case.name != "truncated JPEG":  # the header of a truncated file is intact
        with pytest.raises(ImageError):
            check_image(path)


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p.mkdir() or p], ids=["missing", "folder"])
def test_dataset_path_that_is_no_file(tmp_path: Path, make) -> None:
    path = make(tmp_path / "eye.jpg")
    with pytest.raises(ImageError, match="eye.jpg: (file not found|is a folder)"):
        load_image(path)


# ---------------------------------------------------------------- door: the CLI predict


@pytest.mark.parametrize("case", IMAGE_CASES, ids=image_ids(IMAGE_CASES))
def test_cli_predict_in_process(case: ImageCase, finished_run: Path, tmp_path: Path, capsys) -> None:
    path = write_case(tmp_path, case)
    code = main(["predict", str(path), "--run", str(finished_run), "--json"])
    out, err = capsys.readouterr()
    assert_clean(out + err)
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["file"] == str(path)
    if case.expect == "refuse":
        assert code == 1 and case.match.lower() in row["error"].lower() and row["status"] == "unreadable"
    else:
        assert code == 0 and row["would_say_grade"] in range(5) and row["error"] is None


def test_cli_predict_subprocess_grades_the_good_and_names_the_bad(finished_run: Path, tmp_path: Path) -> None:
    paths = [write_case(tmp_path, c, f"case{i:02d}") for i, c in enumerate(IMAGE_CASES)]
    proc = subprocess.run([sys.executable, "-m", "retino_core", "predict", *map(str, paths),
                           "--run", str(finished_run), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert_clean(proc.stdout + proc.stderr)
    assert proc.returncode == 1  # some images were refused
    rows = {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert len(rows) == len(IMAGE_CASES)
    for case, path in zip(IMAGE_CASES, paths):
        row = rows[str(path)]
        assert (row["error"] is not None) == (case.expect == "refuse"), (case.name, row)


# ---------------------------------------------------------------- door: the Classify page


def test_classify_page_names_every_refused_upload_and_grades_the_rest(runs_dir: Path, finished_run: Path) -> None:
    shutil.copytree(finished_run, runs_dir / finished_run.name)
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    at.switch_page("pages/classify.py").run()
    # The widget only offers .jpg/.jpeg/.png; a user can still rename any file to that.
    uploads = [(f"case{i:02d}{c.suffix if c.suffix in ('.jpg', '.png') else '.jpg'}", c.make(), "image/jpeg")
               for i, c in enumerate(IMAGE_CASES)]
    at.toggle(key="grad_cam").set_value(False)
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    for e in errors:
        assert_clean(e)
    table = at.dataframe[0].value
    for (name, _, _), case in zip(uploads, IMAGE_CASES):
        named = [e for e in errors if name in e]
        if case.expect == "refuse":
            assert len(named) == 1 and case.match.lower() in named[0].lower(), (case.name, errors)
        else:
            assert not named and name in list(table["image"]), case.name
    assert len(table) == len(CONVERTED)


# ---------------------------------------------------------------- door: dataset validation


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return write_lab_folder(tmp_path / "lab", n_train=20, n_test=6)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=image_ids(IMAGE_CASES))
def test_validate_names_the_bad_image_in_a_lab_folder(case: ImageCase, lab: Path, capsys) -> None:
    target = lab / "data" / "3_left.jpeg"  # the lab layout only indexes .jpeg/.jpg/.png
    target.write_bytes(case.make())
    quick = main(["validate", str(lab)])
    deep = main(["validate", str(lab), "--deep"])
    out, err = capsys.readouterr()
    assert_clean(out + err)
    if case.expect == "convert":
        assert (quick, deep) == (0, 0)
    else:
        assert deep == 2 and "3_left.jpeg" in err
        assert quick == (0 if case.name == "truncated JPEG" else 2)


def test_training_on_converted_images_works(lab: Path, runs_dir: Path) -> None:
    names = (lab / "train_img.csv").read_text().split()
    for name, case in zip(names, CONVERTED):
        (lab / "data" / f"{name}.jpeg").write_bytes(case.make())
    cfg = make_config("cpu", data=str(lab), val_fraction=0.2, **TINY, max_steps_per_epoch=1)
    run_dir = prepare_run(cfg)
    run_training(run_dir, quiet=True)
    assert runs.read_status(run_dir)["state"] == "done"


def test_training_on_a_broken_image_fails_naming_it(lab: Path, runs_dir: Path) -> None:
    (lab / "data" / "7_right.jpeg").write_bytes(b"")
    cfg = make_config("cpu", data=str(lab), val_fraction=0.2, **TINY)
    run_dir = prepare_run(cfg)
    with pytest.raises(DataError, match="7_right.jpeg: the file is empty"):
        run_training(run_dir, quiet=True)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "7_right.jpeg" in status["error"]
    assert_clean(status["error"])


def test_truncated_image_found_while_training_fails_naming_it(lab: Path, runs_dir: Path) -> None:
    """The header check passes a truncated file; the decode in a DataLoader worker does not."""
    truncated = next(c for c in REFUSED if c.name == "truncated JPEG")
    (lab / "data" / "10000_left.jpeg").write_bytes(truncated.make())  # first test image
    cfg = make_config("cpu", data=str(lab), val_fraction=0.2, **{**TINY, "num_workers": 1},
                      max_steps_per_epoch=1)
    run_dir = prepare_run(cfg)
    with pytest.raises(ImageError, match="10000_left.jpeg: broken or truncated"):
        run_training(run_dir, quiet=True)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "10000_left.jpeg" in status["error"]
    assert_clean(status["error"])  # not the worker's traceback


def _lab_csvs(lab: Path) -> tuple[list[str], list[str]]:
    return ((lab / "train_img.csv").read_text().split(), (lab / "train_label.csv").read_text().split())


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.name for c in CSV_CASES])
def test_csv_case_through_open_source(case, lab: Path) -> None:
    for name, data in case.files(*_lab_csvs(lab)).items():
        (lab / name).write_bytes(data)
    if case.expect == "accept":
        src = open_source(str(lab), 0.2)
        assert len(src.splits["train"]) + len(src.splits["val"]) == 20
        return
    with pytest.raises(DataError) as err:
        open_source(str(lab), 0.2)
    assert case.match in str(err.value)
    assert_clean(str(err.value))


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.name for c in CSV_CASES])
def test_csv_case_through_cli_train_and_validate(case, lab: Path, runs_dir: Path, capsys) -> None:
    for name, data in case.files(*_lab_csvs(lab)).items():
        (lab / name).write_bytes(data)
    validated = main(["validate", str(lab), "--val-fraction", "0.2"])
    out, err = capsys.readouterr()
    assert_clean(out + err)
    if case.expect == "accept":
        assert validated == 0
        return
    assert validated == 2 and case.match in err
    # train refuses before a run folder exists
    assert main(["train", "--data", str(lab), "--quiet", "--epochs", "1"]) == 2
    assert case.match in capsys.readouterr().err
    assert not any(runs_dir.iterdir())


def test_csv_cases_through_the_train_page(tmp_path: Path, runs_dir: Path, monkeypatch) -> None:
    """The Train form checks the dataset before queueing; a bad one is named, nothing is queued."""
    from retino_core.training import launch

    monkeypatch.setattr(launch, "spawn_worker", lambda runs_dir=None: 0)
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    at.switch_page("pages/train.py").run()
    for i, case in enumerate(CSV_CASES):
        lab = write_lab_folder(tmp_path / f"lab{i}", n_train=20, n_test=6)
        for name, data in case.files(*_lab_csvs(lab)).items():
            (lab / name).write_bytes(data)
        next(t for t in at.text_input if t.label == "Dataset").set_value(str(lab))
        next(b for b in at.button if b.label == "Start").click().run()
        assert not at.exception, case.name
        if case.expect == "accept":
            assert any(str(m.value).startswith("Queued") for m in at.success), case.name
        else:
            [error] = [e.value for e in at.error]
            assert error.startswith("Not started: ") and case.match in error, (case.name, error)
            assert_clean(error)
    queued = runs.list_runs(runs_dir)
    assert len(queued) == sum(c.expect == "accept" for c in CSV_CASES)


def test_labels_csv_with_bad_rows(tmp_path: Path) -> None:
    """The other dataset layout (image,level with a header) goes through the same checks."""
    lab = write_lab_folder(tmp_path / "lab", n_train=20, n_test=0, subdir="train_images")
    names = (lab / "train_img.csv").read_text().split()
    rows = ["image,level"] + [f"{n},{i % 5}" for i, n in enumerate(names)]
    rows[4] = f"{names[3]},4.5"
    path = lab / "labels.csv"
    path.write_bytes(("\r\n".join(rows) + "\r\n\r\n").encode("utf-8-sig"))
    with pytest.raises(DataError, match="line 5: '4.5'"):
        open_source(str(path))


# ---------------------------------------------------------------- count for the report


def test_corpus_is_as_described() -> None:
    assert len(IMAGE_CASES) == len(REFUSED) + len(CONVERTED)
    assert {c.name for c in REFUSED} >= {"empty file", "truncated JPEG", "text file named .jpg",
                                         "1x1 image", "HEIC photo"}
    assert {c.name for c in CONVERTED} >= {"PNG with alpha", "greyscale JPEG", "16-bit greyscale PNG",
                                           "CMYK JPEG", "TIFF"}
