"""Batch grading: folders and globs, one CSV row per file whatever the file, --resume, workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fundus_image, jpeg_bytes
from retino_core.grading import batch
from retino_core.cli import main
from retino_core.grading.predictor import Predictor


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def photo_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Good, broken, non-image, empty, hidden and nested files; returns the folder and, per file
    that must get a row, 'ok' or the words its error must contain."""
    root = tmp_path / "photos"
    (root / "clinic" / "day2").mkdir(parents=True)
    (root / ".thumbs").mkdir()
    fundus_image(28, seed=1, grade=2, easy=True).save(root / "a.png")
    (root / "b.jpg").write_bytes(jpeg_bytes(fundus_image(96, seed=2, grade=0, easy=True)))
    fundus_image(40, seed=3, grade=4, easy=True).save(root / "clinic" / "c.png")
    fundus_image(28, seed=4, grade=1, easy=True).save(root / "clinic" / "day2" / "d.tiff")
    Image.new("RGB", (2000, 200), (200, 100, 50)).save(root / "clinic" / "strip.png")
    (root / "clinic" / "broken.jpg").write_bytes(jpeg_bytes(fundus_image(96, seed=5))[:300])
    (root / "notes.txt").write_text("not a photo")
    (root / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    fundus_image(28, seed=6).save(root / ".thumbs" / "hidden.png")
    expected = {"a.png": "ok", "b.jpg": "ok", "clinic/c.png": "ok", "clinic/day2/d.tiff": "ok",
                "clinic/strip.png": "ok", "clinic/broken.jpg": "broken or truncated",
                "notes.txt": "not a recognised image", "empty.png": "empty"}
    return root, {str(root / k): v for k, v in expected.items()}


def test_expand_inputs_files_folders_globs_in_order_once(photo_folder) -> None:
    root, expected = photo_folder
    items = batch.expand_inputs([root / "a.png", root, f"{root}/**/*.png", root / "missing.jpg", f"{root}/*.heic"])
    files = [f for f, _ in items]
    assert files[0] == str(root / "a.png") and files.count(str(root / "a.png")) == 1  # named twice, listed once
    assert set(expected) <= set(files)
    assert not any("/." in f for f in files)  # dot-names in a folder are skipped
    problems = dict(items)
    assert problems[str(root / "missing.jpg")] == ""  # the decoder names it: "file not found"
    assert problems[f"{root}/*.heic"] == "no file matches this pattern"
    assert batch.expand_inputs([f"{root}/**/*.png"]) == [(str(root / p), "") for p in
                                                         ("a.png", "clinic/c.png", "clinic/strip.png", "empty.png")]
    (root / "void").mkdir()
    assert batch.expand_inputs([root / "void"]) == [(str(root / "void"), "the folder holds no files")]


def test_every_file_gets_a_row_and_the_rows_match_single_predictions(usable_run, photo_folder, tmp_path,
                                                                       capsys) -> None:
    root, expected = photo_folder
    out = tmp_path / "grades.csv"
    missing = tmp_path / "gone.jpg"
    code = main(["predict", str(root), str(missing), "--run", str(usable_run), "--out", str(out),
                 "--batch-size", "3", "--workers", "1"])
    assert code == 1  # some files could not be read: the exit status says so, the CSV holds everything
    err = capsys.readouterr().err
    assert "100%" in err and "photo" in err  # the progress bar
    rows = read_rows(out)
    assert [r["file"] for r in rows] == [f for f, _ in batch.expand_inputs([root, missing])]
    assert tuple(rows[0]) == batch.CSV_COLUMNS
    statuses = [r["status"] for r in rows]
    assert err.strip().splitlines()[-1] == (f"{statuses.count('graded')} graded, {statuses.count('not graded')} not graded "
                                            f"(failed a photo check), 4 could not be read, 0 already in {out}")
    by_file = {r["file"]: r for r in rows}
    assert set(by_file) == set(expected) | {str(missing)}
    assert "file not found" in by_file[str(missing)]["error"] and by_file[str(missing)]["status"] == "unreadable"
    predictor = Predictor.from_run(usable_run)
    for file, want in expected.items():
        row = by_file[file]
        assert row["model"] == usable_run.name and row["model_verdict"] == "usable"
        if want != "ok":
            assert want in row["error"] and file in row["error"] and row["grade"] == "" and row["p_no_dr"] == ""
            continue
        assert row["error"] == ""
        [pred] = predictor.predict_files([file])
        probs = [float(row[c]) for c in batch.PROBABILITY_COLUMNS]
        assert np.allclose(probs, pred.probabilities, atol=2e-6)
        d = pred.decision
        assert row["status"] == d.status and row["grade"] == ("" if d.grade is None else str(d.grade))
        assert row["refer"] == ("" if d.refer is None else str(d.refer)) and row["grade_name"] == (d.grade_name or "")
        assert row["would_say_grade"] == str(d.would_say_grade) and row["reasons"] == " | ".join(d.reasons)
        assert float(row["referable_probability"]) == pytest.approx(sum(pred.probabilities[2:]), abs=2e-6)
        assert row["in_distribution"] == str(pred.check.in_distribution)
        assert float(row["ood_score"]) == pytest.approx(pred.check.ood_score, abs=0.01)
        assert row["threshold_from"] == "validation" and float(row["threshold"]) == pytest.approx(d.threshold, abs=1e-6)
        assert "thumbnail" not in row["warnings"]  # said once for the batch, if at all
    strip = by_file[str(root / "clinic" / "strip.png")]
    assert strip["status"] == "not graded" and strip["grade"] == strip["refer"] == strip["grade_name"] == ""
    assert strip["in_distribution"] == "False" and "2000×200" in strip["reasons"] and strip["would_say_grade"] != ""
    assert by_file[str(root / "a.png")]["grade"] == "2" and by_file[str(root / "a.png")]["refer"] == "True"


def test_resume_grades_only_what_is_missing(usable_run, photo_folder, tmp_path, capsys) -> None:
    root, expected = photo_folder
    out = tmp_path / "grades.csv"
    assert main(["predict", str(root / "a.png"), str(root / "b.jpg"), str(root / "notes.txt"), "--run", str(usable_run),
                 "--out", str(out), "--quiet"]) == 1
    first = read_rows(out)
    assert len(first) == 3
    # A run killed while writing a row leaves half a line: that file is graded again.
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(f"{root / 'clinic' / 'c.png'},4,Prolif")
    capsys.readouterr()
    assert main(["predict", str(root), "--run", str(usable_run), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err  # an existing CSV is never overwritten unasked
    assert main(["predict", str(root), "--run", str(usable_run), "--out", str(out), "--resume"]) == 1
    assert "3 already in" in capsys.readouterr().err
    rows = read_rows(out)
    assert rows[:3] == first
    assert sorted(r["file"] for r in rows) == sorted(expected)  # one row per file, none twice, none lost
    c_row = next(r for r in rows if r["file"].endswith("c.png"))
    assert max(batch.PROBABILITY_COLUMNS, key=lambda col: float(c_row[col])) == "p_proliferative"
    assert main(["predict", str(root), "--run", str(usable_run), "--out", str(out), "--resume", "--quiet"]) == 0
    assert len(read_rows(out)) == len(expected)  # nothing left to do: nothing added

    # Resuming with another model, or a CSV that is not one of these, is refused with the reason.
    other = tmp_path / "other.csv"
    other.write_text(out.read_text().replace(usable_run.name, "another-run"))
    assert main(["predict", str(root), "--run", str(usable_run), "--out", str(other), "--resume"]) == 2
    assert "graded by model another-run" in capsys.readouterr().err
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,score\nx,1\n")
    assert main(["predict", str(root), "--run", str(usable_run), "--out", str(foreign), "--resume"]) == 2
    assert "not a results CSV" in capsys.readouterr().err
    assert main(["predict", str(root), "--run", str(usable_run), "--resume"]) == 2  # --resume needs --out


def test_folder_to_json_lines_and_text(finished_run, photo_folder, capsys) -> None:
    root, expected = photo_folder
    assert main(["predict", str(root), "--run", str(finished_run), "--json", "--batch-size", "4"]) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["file"] for line in lines) == sorted(expected)
    good = [line for line in lines if line["error"] is None]
    assert len(good) == 5 and all(line["model_verdict"] == "no better than guessing" for line in good)
    assert all(line["grade"] is None and line["refer"] is None and line["status"] != "graded" for line in good)
    assert err.count("warning: This model is no better than guessing") == 1  # once, not on every photo
    assert not any(w.startswith("This model") for line in good for w in line["warnings"])
    assert main(["predict", str(root / "clinic"), "--run", str(finished_run)]) == 1
    out, err = capsys.readouterr()
    assert "warning: This model is no better than guessing" in err and "broken or truncated" in err
    assert len(out.strip().splitlines()) >= 3 and "not graded" in out and "\tgrade " not in out


class FailsOnStrips:
    """A Predictor stand-in whose batch call fails when a 10:1 strip is in it."""

    def __init__(self, predictor: Predictor):
        self.inner = predictor

    def predict(self, images, names, tta=None):
        if any(img.width > 5 * img.height for img in images):
            raise RuntimeError("this batch cannot be stacked")
        return self.inner.predict(images, names, tta)


def test_a_batch_that_fails_is_graded_one_by_one(finished_run, photo_folder) -> None:
    root, _ = photo_folder
    items = batch.expand_inputs([root / "clinic"])
    done = list(batch.grade(FailsOnStrips(Predictor.from_run(finished_run)), items, batch_size=8, workers=0))
    assert [d.file for d in done] == [f for f, _ in items]
    errors = {d.file: d.error for d in done if d.prediction is None}
    assert "could not be graded (RuntimeError: this batch cannot be stacked)" in errors[str(root / "clinic" / "strip.png")]
    assert sum(d.prediction is not None for d in done) == 2  # c.png and d.tiff still graded


def test_decoders_and_model_threads_share_the_cores(finished_run, photo_folder) -> None:
    import os

    import torch

    root, _ = photo_folder
    items = batch.expand_inputs([root])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = {torch.get_num_threads() for _ in batch.grade(Predictor.from_run(finished_run), items, batch_size=2,
                                                            workers=1)}
        assert seen == {max(1, os.cpu_count() - 1)}  # one core decodes, the model has the rest
        assert torch.get_num_threads() == 3  # given back afterwards
        assert {torch.get_num_threads() for _ in batch.grade(Predictor.from_run(finished_run), items[:2],
                                                             batch_size=2, workers=1)} == {3}  # no decoder: all
    finally:
        torch.set_num_threads(before)
