"""Data integrity: patient ids, leakage across splits, every problem at once, the hash cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_lab_folder
from retino_core.cli import main
from retino_core.data.splits import DatasetInvalid
from retino_core.data.layouts import load_csv
from retino_core.data.sources import open_source
from retino_core.data.patients import patient_of
from retino_core.data.patients import assign_patients, patient_rule
from retino_core.data import problems
from retino_core.data import patients
from retino_core.data import integrity
from retino_core.data import duplicates
from retino_core.data.images import RETINAMNIST_NPZ


def noise_image(seed: int, size: int = 48) -> Image.Image:
    """Smooth random blobs, unlike any other seed's: no exact or near copies by accident."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


with np.load(RETINAMNIST_NPZ) as _npz:
    PHOTOS = np.concatenate([_npz[f"{s}_images"] for s in ("train", "val", "test")])


def real_photo(index: int, size: int = 64) -> Image.Image:
    """RetinaMNIST photo ``index`` (a real DeepDRiD fundus photo), upsampled: 0-39 and 1000-1009
    are distinct eyes (no near copies among them)."""
    return Image.fromarray(PHOTOS[index]).resize((size, size), Image.Resampling.BICUBIC)


def write_lab(root: Path, train: list[str], test: list[str]) -> Path:
    """The lab layout with distinct real photos (up to 40 in train, 10 in test); grades 0-4 in turn."""
    (root / "data").mkdir(parents=True)
    for split, names, offset in (("train", train, 0), ("test", test, 1000)):
        for i, name in enumerate(names):
            real_photo(offset + i).save(root / "data" / f"{name}.png")
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(str(i % 5) for i in range(len(names))) + "\n")
    return root


def validate_json(*args: str, capsys) -> tuple[int, dict]:
    code = main(["validate", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- patient ids


@pytest.mark.parametrize("names,patient,rule", [
    (["10_left", "10_right.jpeg"], "10", "EyePACS"),
    (["7_l1", "7_r2", "7_l2"], "7", "DeepDRiD"),
    (["c01_Patient007_R.jpg", "c03_Patient007_L.jpg", "patient7_left"], "patient 7", "PatientNNN"),
    (["scan42_OD", "scan42-os"], "scan42", "name_left"),
])
def test_each_layout_keeps_a_patient_together(names, patient, rule):
    for name in names:
        pid, used = patient_rule(name)
        assert pid == patient and used.startswith(rule), name


def test_aptos_ids_and_unknown_names_are_one_patient_per_image():
    assert patient_rule("000c1434d8d7.png") == ("000c1434d8d7", "APTOS id (one image per patient)")
    assert patient_rule("IMG_1234.jpg")[1] == patients.BY_IMAGE
    assert patient_of("c01_Patient007_R") != patient_of("c01_Patient008_R")
    summary = patients.patient_summary(["a", "b"], ["a", "b"], [patients.BY_IMAGE] * 2)
    assert summary["by_image"] and "split is by image" in patients.describe_patients(summary)[0]


def test_explicit_regex_and_column():
    ids, rules = assign_patients(["eyeA-1", "eyeA-2", "eyeB-1"], regex=r"^eye(\w)-")
    assert ids == ["A", "A", "B"] and set(rules) == {"--patient-regex"}
    ids, rules = assign_patients(["x", "y"], column=[" p1", "p1 "])
    assert ids == ["p1", "p1"] and rules == ["patient column"] * 2


def test_class_prefixed_names_keep_patients_on_one_side(tmp_path):
    """The reported case: a class prefix differs between the two eyes of one patient."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["image,level"]
    for i in range(60):
        grade = (i * 7) % 5
        name = f"c{grade:02d}_Patient{i // 2:03d}_{'LR'[i % 2]}"
        noise_image(i, 24).save(folder / f"{name}.jpg")
        rows.append(f"{name}.jpg,{grade}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    src = load_csv(tmp_path / "labels.csv", folder, val_fraction=0.15, test_fraction=0.2)
    assert src.report.info["patients"]["patients"] == 30
    assert src.report.info["patients"]["with_two_or_more"] == 30
    assert "patients on two sides of a split" not in {p.kind for p in src.report.problems}
    sides = [set(s.patient_ids()) for s in src.splits.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_patient_column_drives_the_carved_splits(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["image,level,patient_id"]
    for i in range(40):
        noise_image(i, 24).save(folder / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{i % 5},P{i % 10}")  # names say nothing; the column does
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    src = open_source(csv, 0.2, patient_column="patient_id")
    sides = [set(s.patient_ids()) for s in src.splits.values()]
    assert sum(len(s) for s in sides) == 10 and not (sides[0] & sides[2])
    assert main(["validate", str(csv), "--patient-column", "patient_id"]) == 0
    out = capsys.readouterr().out
    assert "patients: 10 found, 10 with two or more images" in out
    assert "patient column: 40 images, e.g. img000 -> P0" in out
    assert main(["validate", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "the split is by image, not by patient" in out and "patients kept together" not in out
    assert main(["validate", str(csv), "--patient-column", "subject"]) == 2
    assert "no patient column" in capsys.readouterr().err


def test_patient_regex_on_a_lab_folder_and_a_bad_regex(tmp_path, capsys):
    lab = write_lab(tmp_path / "lab", [f"S{i // 2}x{i % 2}" for i in range(20)], [f"S{100 + i}x0" for i in range(5)])
    code, report = validate_json(str(lab), "--patient-regex", r"^(S\d+)x", capsys=capsys)
    assert code == 0 and report["patients"]["patients"] == 15
    assert report["patients"]["rules"]["--patient-regex"]["example"] == "S0x0 -> S0"
    assert main(["validate", str(lab), "--patient-regex", "(unclosed"]) == 2
    assert "not a regular expression" in capsys.readouterr().err


# ---------------------------------------------------------------- leakage


def test_a_straddling_patient_is_counted_in_the_lab_split(tmp_path, capsys):
    lab = write_lab(tmp_path / "lab", [f"{i // 2}_{'left' if i % 2 else 'right'}" for i in range(20)],
                    ["3_left", "50_left", "50_right", "51_left", "51_right"])  # patient 3 straddles
    code, report = validate_json(str(lab), "--val-fraction", "0.2", capsys=capsys)
    assert code == 0 and report["straddling"] == {"train/test": 1}
    [problem] = [p for p in report["problems"] if p["kind"] == "patients on two sides of a split"]
    assert problem["severity"] == "warning" and problem["examples"] == ["3"]
    assert any("1 patients have one eye in train" in n for n in report["notes"])


def test_duplicates_across_splits_fail_deep_unless_allowed(tmp_path, capsys):
    lab = write_lab(tmp_path / "lab", [f"{i}_left" for i in range(20)], [f"{100 + i}_left" for i in range(5)])
    data = lab / "data"
    (data / "102_left.png").write_bytes((data / "2_left.png").read_bytes())  # an exact copy, same grade
    real_photo(3).resize((96, 96)).save(data / "103_left.jpg", quality=95)  # a resized, re-encoded copy
    (data / "103_left.png").unlink()
    code, report = validate_json(str(lab), "--deep", "--val-fraction", "0", capsys=capsys)
    assert code == 2 and report["images"]["duplicates"]["identical_across_splits"] == 1
    kinds = {p["kind"]: p for p in report["problems"]}
    assert kinds["identical images in two splits"]["severity"] == "error"
    assert "train/2_left = test/102_left" in kinds["identical images in two splits"]["message"]
    assert "train/3_left ~ test/103_left" in kinds["near-identical images in two splits"]["message"]
    assert report["images"]["duplicates"]["near_across_splits"] == 1  # distinct pictures are not near
    assert report["images"]["duplicates"]["label_conflicts"] == 0  # the copies have the same grades
    assert main(["validate", str(lab), "--deep", "--allow-duplicates", "--val-fraction", "0"]) == 0
    assert "train/2_left = test/102_left" in capsys.readouterr().out
    assert main(["validate", str(lab)]) == 0  # the header check does not hash


def test_the_same_photo_under_two_grades_is_a_label_conflict(tmp_path, capsys):
    """Identical or near-identical photos with different grades: an error naming both photos,
    both grades and the split(s), which --allow-duplicates does not silence; identical photos
    with the same grade inside a split stay a warning."""
    lab = write_lab(tmp_path / "lab", [f"{i}_left" for i in range(20)], [f"{100 + i}_left" for i in range(5)])
    data = lab / "data"
    (data / "11_left.png").write_bytes((data / "4_left.png").read_bytes())  # grades 4 and 1, both in train
    (data / "15_left.png").write_bytes((data / "10_left.png").read_bytes())  # grades 0 and 0: a plain copy
    real_photo(6).resize((80, 80)).save(data / "104_left.jpg", quality=90)  # grade 1 ~ train/6_left, grade 1
    real_photo(8).rotate(4).save(data / "103_left.jpg", quality=90)  # grade 3 ~ train/8_left turned, grade 3
    (data / "104_left.png").unlink()
    (data / "103_left.png").unlink()
    labels = (lab / "test_label.csv").read_text().splitlines()
    labels[4] = "2"  # 104_left: graded 2 in test, its near copy 6_left graded 1 in train
    (lab / "test_label.csv").write_text("\n".join(labels) + "\n")
    code, report = validate_json(str(lab), "--deep", "--val-fraction", "0", "--allow-duplicates", capsys=capsys)
    kinds = {p["kind"]: p for p in report["problems"]}
    conflict = kinds["label conflicts"]
    assert code == 2 and conflict["severity"] == "error" and conflict["count"] == 2
    assert "train/4_left (grade 4) = train/11_left (grade 1) (both in train)" in conflict["message"]
    assert "train/6_left (grade 1) ~ test/104_left (grade 2) (in train and test)" in conflict["message"]
    assert kinds["identical images inside a split"]["examples"] == ["train/10_left = train/15_left"]
    assert kinds["identical images inside a split"]["severity"] == "warning"
    assert "8_left" not in conflict["message"]  # a near copy with the same grade is no conflict
    assert report["images"]["duplicates"]["label_conflicts"] == 2
    code, report = validate_json(str(lab), "--deep", "--val-fraction", "0", "--allow-duplicates",
                                 "--allow-label-conflicts", capsys=capsys)
    assert code == 0 and {p["kind"]: p for p in report["problems"]}["label conflicts"]["severity"] == "warning"


# ---------------------------------------------------------------- every problem at once


def test_five_problems_in_one_dataset_reported_at_once(tmp_path, capsys):
    lab = write_lab_folder(tmp_path / "lab", n_train=20, n_test=6)
    labels = (lab / "train_label.csv").read_text().splitlines()
    labels[3], labels[8] = "", "7"  # a blank line and a grade of 7 in the same file
    (lab / "train_label.csv").write_text("\n".join(labels) + "\n")
    test_labels = (lab / "test_label.csv").read_text().splitlines()
    (lab / "test_label.csv").write_text("\n".join(test_labels[:-1]) + "\n")  # one row short
    (lab / "data" / "3_left.jpeg").unlink()  # missing
    (lab / "data" / "4_left.jpeg").write_bytes(b"")  # unreadable, train
    truncated = lab / "data" / "10001_right.jpeg"
    truncated.write_bytes(truncated.read_bytes()[:300])  # truncated, test (found by --deep only)
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    assert code == 2 and not report["ok"]
    kinds = {(p["kind"], p["where"]) for p in report["problems"] if p["severity"] == "error"}
    assert kinds >= {("blank lines", "train_label.csv"), ("labels that are not grades", "train_label.csv"),
                     ("missing images", "train_img.csv"), ("files of different lengths", "test"),
                     ("unreadable images", "train"), ("unreadable images", "test")}
    assert main(["validate", str(lab), "--deep"]) == 2
    err = capsys.readouterr().err
    for text in ("line(s) at 4", "line 9: '7'", "3_left", "test_label.csv has 5", "4_left.jpeg: the file is empty",
                 "10001_right.jpeg: broken or truncated"):
        assert text in err, text
    with pytest.raises(DatasetInvalid) as raised:  # training refuses with the same report
        open_source(lab)
    assert len(raised.value.report.errors) == 4 and "line 9: '7'" in str(raised.value)


def test_json_report_shape(tmp_path, capsys):
    lab = write_lab_folder(tmp_path / "lab", n_train=20, n_test=6)
    code, report = validate_json(str(lab), capsys=capsys)
    assert code == 0
    assert set(report) >= {"source", "ok", "errors", "warnings", "problems", "patients", "images", "counts",
                           "straddling", "notes"}
    assert report["ok"] is True and report["errors"] == 0
    assert report["counts"] == {"train": 16, "val": 4, "test": 6} or sum(report["counts"].values()) == 26
    assert report["images"] == {"checked": "header", "images": 26, "from_cache": 0}
    assert report["patients"]["patients"] == 13 and report["patients"]["by_image"] is False
    for p in report["problems"]:
        assert set(p) == {"kind", "where", "message", "count", "examples", "severity"}
        assert p["severity"] in ("error", "warning") and len(p["examples"]) <= 5
    code, report = validate_json(str(tmp_path / "nowhere.csv"), capsys=capsys)
    assert code == 2 and report["problems"][0]["kind"] == "dataset cannot be opened"


def test_label_warnings():
    report = problems.Report()
    integrity.label_warnings(report, {"train": [50, 50, 0, 3, 0], "test": [10, 40, 5, 1, 0]},
                             ["a", "b", "c", "d", "e"])
    kinds = {(p.kind, p.where): p for p in report.problems}
    assert kinds[("grades in test but not in train", "train/test")].examples == ["c"]
    assert kinds[("grades with fewer than 5 images", "train")].examples == ["d (3)"]
    assert kinds[("grades with fewer than 5 images", "test")].examples == ["d (1)"]
    gaps = kinds[("grade shares that differ between train and test", "train/test")].message
    assert "a 49% of train vs 18% of test" in gaps and "b 49% of train vs 71% of test" in gaps
    assert "c " not in gaps and "d " not in gaps
    assert all(p.severity == "warning" for p in report.problems)


# ---------------------------------------------------------------- the hash cache


def test_cache_reused_and_not_trusted_after_a_change(tmp_path, monkeypatch, capsys):
    lab = write_lab(tmp_path / "lab", [f"{i}_left" for i in range(10)], [f"{100 + i}_left" for i in range(5)])
    calls = []
    real = duplicates.fingerprint
    monkeypatch.setattr(duplicates, "fingerprint", lambda p: calls.append(p) or real(p))
    _, first_run = validate_json(str(lab), "--deep", capsys=capsys)
    assert len(calls) == 15 and first_run["images"]["from_cache"] == 0
    assert (lab / duplicates.CACHE_NAME).is_file()
    calls.clear()
    _, second = validate_json(str(lab), "--deep", capsys=capsys)
    assert calls == [] and second["images"]["from_cache"] == 15
    # Same size, new mtime and new pixels: recomputed, and the duplicate it now is gets found.
    target = lab / "data" / "102_left.png"
    target.write_bytes((lab / "data" / "3_left.png").read_bytes())
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    code, third = validate_json(str(lab), "--deep", capsys=capsys)
    assert [Path(c).name for c in calls] == ["102_left.png"] and third["images"]["from_cache"] == 14
    assert code == 2 and third["images"]["duplicates"]["identical_across_splits"] == 1
    (lab / duplicates.CACHE_NAME).write_text("{not json")  # a damaged cache is ignored, then rewritten
    calls.clear()
    validate_json(str(lab), "--deep", capsys=capsys)
    assert len(calls) == 15 and duplicates.read_cache(lab / duplicates.CACHE_NAME)


def test_cache_goes_to_the_runs_folder_when_the_dataset_is_read_only(tmp_path, runs_dir, monkeypatch):
    monkeypatch.setattr(duplicates.os, "access", lambda path, mode: False)
    path = duplicates.cache_file(tmp_path)
    assert path.parent == runs_dir / ".cache" and path.name.startswith("hashes-")


# ---------------------------------------------------------------- the pages


def test_overview_lists_every_problem_and_the_patients_found(tmp_path, runs_dir):
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parents[2] / "streamlit_app.py"
    bad = write_lab_folder(tmp_path / "bad", n_train=20, n_test=6)
    labels = (bad / "train_label.csv").read_text().splitlines()
    labels[3], labels[8] = "", "7"
    (bad / "train_label.csv").write_text("\n".join(labels) + "\n")
    (bad / "data" / "3_left.jpeg").unlink()
    at = AppTest.from_file(str(app), default_timeout=120).run()
    at.switch_page("pages/overview.py").run()
    at.text_input[0].set_value(str(bad))
    at.button[0].click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert "3 errors" in error and "blank line(s) at 4" in error and "line 9: '7'" in error and "3_left" in error
    good = write_lab(tmp_path / "good", [f"c0{i % 5}_Patient{i // 2:03d}_{'LR'[i % 2]}" for i in range(20)],
                     [f"c00_Patient{100 + i:03d}_L" for i in range(5)])
    at.text_input[0].set_value(str(good))
    at.button[0].click().run()
    assert not at.exception and not at.error
    captions = " ".join(c.value for c in at.caption)
    assert "patients: 15 found, 10 with two or more images" in captions
    assert "c00_Patient000_L -> patient 0" in captions


def test_a_run_keeps_its_patient_column_from_training_to_every_page(tmp_path, runs_dir):
    """The patient rule is part of the run's config: training, Results and the export reopen
    the same splits from it."""
    from retino_core import runs
    from retino_core.config import make_config
    from retino_core.data.sources import source_of

    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["image,level,patient_id"]
    for i in range(40):
        noise_image(i, 24).save(folder / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{i % 5},P{i % 10}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert main(["train", "--data", str(csv), "--patient-column", "patient_id", "--image-size", "32",
                 "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]) == 0
    (run,) = runs.list_runs(runs_dir)
    assert run.config["patient_column"] == "patient_id"
    again = source_of(run.config)
    sides = [set(s.patient_ids()) for s in again.splits.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    by_name = source_of(make_config("cpu", data=str(csv)))  # without the column: one image, one patient
    assert [s.names for s in by_name.splits.values()] != [s.names for s in again.splits.values()]


def test_label_conflicts_are_found_in_a_dataset_with_other_errors(tmp_path, capsys):
    """A missing image does not stop the check of the images that are there, with their grades."""
    lab = write_lab(tmp_path / "lab", [f"{i}_left" for i in range(10)], [f"{100 + i}_left" for i in range(5)])
    (lab / "data" / "7_left.png").write_bytes((lab / "data" / "3_left.png").read_bytes())  # grades 2 and 3
    (lab / "data" / "9_left.png").unlink()
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    kinds = {p["kind"]: p for p in report["problems"]}
    assert code == 2 and "missing images" in kinds
    assert "train/3_left (grade 3) = train/7_left (grade 2) (both in train)" in kinds["label conflicts"]["message"]
