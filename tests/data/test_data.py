"""Data sources in their real layouts, and every validation error they raise."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fundus_image, write_lab_folder
from retino_core.errors import DataError
from retino_core.data.splits import DatasetInvalid, SplitDataset
from retino_core.data.layouts import carve_split, load_csv, load_lab_folder, load_retinamnist, read_column
from retino_core.data.sources import open_source
from retino_core.data.patients import patient_of


def test_bundled_retinamnist_has_the_official_split():
    src = open_source("retinamnist")
    assert {k: len(s) for k, s in src.splits.items()} == {"train": 1080, "val": 120, "test": 400}
    assert src.counts()["train"] == [486, 128, 206, 194, 66]
    assert src.counts()["test"] == [174, 46, 92, 68, 20]
    assert src.splits["train"].image(0).size == (28, 28)
    assert not src.val_carved
    assert src.majority_share("test") == pytest.approx(174 / 400)


def test_lab_folder_reads_every_row_and_carves_patient_grouped_val(lab_folder):
    src = load_lab_folder(lab_folder, val_fraction=0.2, seed=1)
    train, val, test = src.splits["train"], src.splits["val"], src.splits["test"]
    assert len(train) + len(val) == 40  # the first line is a row, not a header
    assert len(test) == 12
    assert src.val_carved and len(val) > 0
    assert {patient_of(n) for n in train.names}.isdisjoint({patient_of(n) for n in val.names})
    img, label = SplitDataset(test)[0]
    assert img.mode == "RGB" and label == 0


@pytest.mark.parametrize("subdir,suffix", [(".", ".jpeg"), ("images", ".jpg"), ("data", ".png")])
def test_lab_images_found_in_any_supported_place(tmp_path, subdir, suffix):
    root = write_lab_folder(tmp_path / "lab", n_train=10, n_test=4, subdir=subdir, suffix=suffix)
    src = load_lab_folder(root, val_fraction=0.2)
    assert all(p.suffix == suffix for p in src.splits["test"].paths)


def test_real_lab_csv_conventions(tmp_path):
    """BOM, CRLF and trailing blank lines are tolerated; every line is a row."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbf10_left\r\n10_right\r\n11_left\r\n\r\n\n")
    assert read_column(path) == ["10_left", "10_right", "11_left"]


def test_missing_images_are_named_with_a_count(lab_folder):
    for name in ("3_left", "4_right", "5_left"):
        (lab_folder / "data" / f"{name}.jpeg").unlink()
    with pytest.raises(DataError, match=r"3 of 40 images listed in train_img.csv were not found") as err:
        load_lab_folder(lab_folder)
    assert "3_left" in str(err.value) and "4_right" in str(err.value)


@pytest.mark.parametrize("bad,match", [("7", "not grades 0-4"), ("-1", "not grades 0-4"),
                                       ("two", "not grades 0-4"), ("1.5", "not grades 0-4")])
def test_labels_outside_grades_are_refused(lab_folder, bad, match):
    path = lab_folder / "train_label.csv"
    lines = path.read_text().splitlines()
    lines[6] = bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match) as err:
        load_lab_folder(lab_folder)
    assert "line 7: " in str(err.value)


def test_csv_length_mismatch_is_refused(lab_folder):
    path = lab_folder / "test_label.csv"
    path.write_text("\n".join(path.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DataError, match="test_img.csv has 12 rows but test_label.csv has 10"):
        load_lab_folder(lab_folder)


def test_duplicated_names_and_blank_lines_are_refused(lab_folder):
    path = lab_folder / "train_img.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + [lines[0]] + lines[6:]) + "\n")
    with pytest.raises(DataError, match="listed twice"):
        load_lab_folder(lab_folder)
    path.write_text("\n".join(lines[:5] + [""] + lines[6:]) + "\n")
    with pytest.raises(DataError, match="blank line"):
        load_lab_folder(lab_folder)


def test_folder_without_the_csvs_names_them(tmp_path):
    with pytest.raises(DataError, match="lacks train_img.csv, train_label.csv, test_img.csv, test_label.csv"):
        load_lab_folder(tmp_path)
    with pytest.raises(DataError, match="neither 'retinamnist'"):
        open_source(tmp_path / "nothing-here")


@pytest.mark.parametrize("header,ext", [("image,level", ".jpeg"), ("id_code,diagnosis", ".png")])
def test_generic_csv_kaggle_and_aptos_layouts(tmp_path, header, ext):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = [header]
    for i in range(40):
        name = f"{i // 2}_{'left' if i % 2 else 'right'}"
        fundus_image(40, seed=i, grade=i % 5).save(folder / f"{name}{ext}")
        rows.append(f"{name},{i % 5}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    src = load_csv(csv, folder, val_fraction=0.1, test_fraction=0.2)
    sizes = {k: len(s) for k, s in src.splits.items()}
    assert sum(sizes.values()) == 40 and all(sizes.values())
    patients = [{patient_of(n) for n in s.names} for s in src.splits.values()]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])


def test_generic_csv_without_a_grade_column(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image,quality\na,1\n")
    with pytest.raises(DataError, match="no grade column"):
        load_csv(csv, tmp_path)


def test_npz_in_wrong_layout(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match="not MedMNIST's layout"):
        load_retinamnist(path)


def test_carve_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(5), 20)
    names = [f"{i}_left" for i in range(100)]
    keep, val = carve_split(labels, names, 0.2, seed=3)
    assert len(val) == 20 and np.bincount(labels[val], minlength=5).tolist() == [4] * 5
    assert np.array_equal(val, carve_split(labels, names, 0.2, seed=3)[1])


def test_labels_csv_problems_name_the_line_an_editor_shows(tmp_path):
    """Header counted as line 1; blank lines (and spreadsheets' rows of empty values) are reported
    with their own line numbers and do not shift the numbers of the rows after them."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(13):
        fundus_image(40, seed=i, grade=i % 5).save(folder / f"{i}_left.png")
    lines = ["image,level"] + [f"{i}_left,{i % 5}" for i in range(12)]  # line k + 2 holds image k
    lines[4] = "3_left,7"  # a bad grade on line 5
    lines.insert(3, "")  # line 4 blank: the bad grade moves to line 6
    lines.insert(8, ",")  # line 9: a row of empty values
    lines.insert(10, '"12_left",2,extra')  # line 11: one value too many
    lines.append("5_left,0")  # listed twice: lines 8 and 17
    lines.append("99_left,1")  # line 18: no such image
    path = tmp_path / "labels.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8-sig"))  # trailing blank: no problem
    with pytest.raises(DatasetInvalid) as raised:
        load_csv(path, folder)
    found = {p.kind: p for p in raised.value.report.problems}
    assert "line 6: '7'" in found["labels that are not grades"].message
    assert found["blank lines"].severity == "warning" and found["blank lines"].examples == ["line 4", "line 9"]
    assert found["rows with more values than the header"].examples == ["line 11"]
    assert found["names listed twice"].examples == ["5_left (lines 8, 17)"]
    assert found["missing images"].examples == ["99_left (line 18)"]
    assert len(raised.value.report.errors) == 4


def test_headerless_and_headered_blank_lines_alike(tmp_path, lab_folder):
    """The lab's headerless CSVs: a blank line is an error (the two files would fall out of step),
    with its line number; a bad grade below it keeps its own line number."""
    path = lab_folder / "train_label.csv"
    values = path.read_text().splitlines()
    values[2], values[6] = "", "9"
    path.write_text("\n".join(values) + "\n")
    with pytest.raises(DatasetInvalid) as raised:
        load_lab_folder(lab_folder)
    found = {p.kind: p for p in raised.value.report.problems}
    assert found["blank lines"].severity == "error" and found["blank lines"].examples == ["line 3"]
    assert "line 7: '9'" in found["labels that are not grades"].message
    # A quoted name over two lines: the rows after it keep their editor line numbers.
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        fundus_image(40, seed=i, grade=i % 5).save(folder / f"{i}_left.png")
    rows = ["image,level", '"0_left",0', '"a\nb",1'] + [f"{i}_left,{i % 5}" for i in range(2, 10)]
    rows[5] = "4_left,x"  # line 7: the quoted name spans lines 3 and 4
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetInvalid) as raised:
        load_csv(tmp_path / "labels.csv", folder)
    assert "line 7: 'x'" in str(raised.value) and "a\nb (line 3)" in str(raised.value)
