"""evaluate RUN --data DATA: a labelled data set from elsewhere graded as every door grades it,
refused and unreadable photos counted, never scored, and the result kept in the run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import fundus_image, jpeg_bytes
from retino_core import runs
from retino_core.cli import main
from retino_core.grading.predictor import Predictor
from retino_core.judging import external, trust
from retino_core.judging.decision import GRADED, NOT_GRADED


def plain_disc(side: int = 96) -> Image.Image:
    """An orange disc on black with no retinal detail: refused by every door."""
    img = Image.new("RGB", (side, side))
    ImageDraw.Draw(img).ellipse((4, 4, side - 4, side - 4), fill=(200, 90, 40))
    return img


@pytest.fixture
def clinic(tmp_path: Path) -> Path:
    """A labels CSV of 40 photos 'from another camera' (96 px, grades in turn), one plain disc
    (refused) and one file that is not an image (unreadable)."""
    root = tmp_path / "clinic-x"
    (root / "images").mkdir(parents=True)
    rows = [("image", "level")]
    for i in range(40):
        name = f"p{i:03d}_{'left' if i % 2 else 'right'}.jpg"
        (root / "images" / name).write_bytes(jpeg_bytes(fundus_image(96, seed=500 + i, grade=i % 5, easy=True)))
        rows.append((name, str(i % 5)))
    (root / "images" / "disc_left.jpg").write_bytes(jpeg_bytes(plain_disc()))
    rows.append(("disc_left.jpg", "4"))
    (root / "images" / "broken_right.jpg").write_bytes(b"this is not a JPEG")
    rows.append(("broken_right.jpg", "0"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "labels.csv"


def test_evaluate_grades_a_labelled_folder_as_predict_does(usable_run: Path, runs_dir: Path, clinic: Path,
                                                           capsys) -> None:
    import shutil

    run = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    code = main(["evaluate", run.name, "--data", str(clinic), "--name", "clinic-x", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1  # a file could not be read; the evaluation went on
    with open(run / "external" / "clinic-x.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    refused_rows = [r for r in rows.values() if r["status"] == NOT_GRADED]
    assert (result["n"], result["n_unreadable"], result["n_refused"]) == (42, 1, len(refused_rows))
    assert result["n_answered"] == 41 - len(refused_rows) and result["refused_by_grade"][4] >= 1
    assert sum(result["refused_by_grade"]) == len(refused_rows)
    # The photos' answers: one row per file, the same decision predict gives, with the true grade.
    assert len(rows) == 42 and rows["broken_right.jpg"]["error"] and rows["broken_right.jpg"]["status"] == "unreadable"
    refused = rows["disc_left.jpg"]
    assert refused["status"] == NOT_GRADED and refused["grade"] == refused["refer"] == "" and refused["reasons"]
    predictor = Predictor.from_run(run)
    name = next(n for n, r in rows.items() if r["status"] == GRADED)
    want = predictor.predict([Image.open(clinic.parent / "images" / name).convert("RGB")], [name])[0].decision
    assert rows[name]["status"] == want.status == GRADED and int(rows[name]["grade"]) == want.grade
    assert float(rows[name]["referable_probability"]) == pytest.approx(want.referable_probability, abs=1e-5)
    # The numbers: of the answered photos, on the grades given, with intervals that hold them.
    graded = [r for r in rows.values() if r["status"] == GRADED]
    right = sum(int(r["grade"]) == int(r["label"]) for r in graded)
    assert len(graded) == result["n_answered"] and result["external_acc"] == pytest.approx(right / len(graded))
    for key in ("acc", "qwk", "auc", "referable_auc"):
        lo, hi = result[f"external_{key}_ci"]
        assert lo <= result[f"external_{key}"] <= hi
    assert result["external_acc_ci"][1] - result["external_acc_ci"][0] > 0.02  # Wilson's, on 40 photos
    counts = np.bincount([int(r["label"]) for r in graded], minlength=5)
    assert result["external_majority_acc"] == pytest.approx(counts.max() / len(graded))
    assert len(result["external_recall"]) == 5 and result["verdict"]["split"] == "external"
    assert result["verdict"]["verdict"] in trust.VERDICTS
    # Stored in the run folder and read back for Results, Compare and the model card.
    stored = external.read_all(run)
    assert [s["name"] for s in stored] == ["clinic-x"] and stored[0]["data_name"] == "CSV labels.csv"
    assert external.sentence(stored[0]).startswith(f"on {len(graded)} photos of CSV labels.csv: ")
    assert f"{len(refused_rows)} not graded, 1 unreadable" in external.sentence(stored[0])


def test_evaluate_in_words_and_its_bad_input(usable_run: Path, runs_dir: Path, clinic: Path, capsys) -> None:
    import shutil

    run = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    assert main(["evaluate", run.name, "--data", str(clinic), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{run.name} on ") and " photos of CSV labels.csv: " in out and "recall per grade: No DR" in out
    assert (run / "external" / "labels.json").is_file()  # named after the CSV by default
    for bad in ("../escape", "a/b", ".hidden", "x" * 65):
        assert main(["evaluate", run.name, "--data", str(clinic), "--name", bad]) == 2
        assert "is not valid" in capsys.readouterr().err
    assert main(["evaluate", run.name, "--data", str(clinic.parent / "missing.csv")]) == 2
    assert "error: data" in capsys.readouterr().err
    assert main(["evaluate", "no-such-run", "--data", str(clinic)]) == 2
    assert not (runs_dir.parent / "escape.json").exists() and sorted(p.name for p in (run / "external").iterdir()) \
        == ["labels.csv", "labels.json"]


def test_evaluate_on_its_own_training_data_says_so(usable_run: Path, runs_dir: Path, capsys) -> None:
    import shutil

    run = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    data = runs.read_json(run / "config.json")["data"]
    assert main(["evaluate", run.name, "--data", data, "--name", "own", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "These are the photos the run was trained on" in err
    stored = external.read_all(run)[0]
    assert stored["n"] == stored["n_answered"] + stored["n_refused"] == 360 and stored["n_unreadable"] == 0


def test_measure_scores_the_grades_given_not_the_most_probable() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 12)
    probs = np.full((60, 5), 0.05)
    probs[np.arange(60), labels] = 0.8
    given = labels.copy()
    given[:6] = (labels[:6] + 1) % 5  # the referral rule moved six answers
    result = external.measure(labels, probs, given, [GRADED] * 60 + [NOT_GRADED] * 3, unreadable=2)
    assert result["external_acc"] == pytest.approx(54 / 60)
    assert (result["n"], result["n_refused"], result["n_answered"]) == (65, 3, 60)
    assert result["external_auc"] == pytest.approx(1.0)  # the probabilities still rank perfectly
    assert external.measure([], [], [], [NOT_GRADED], 0)["verdict"] is None


def test_results_classify_compare_and_the_card_show_where_the_run_was_measured(usable_run: Path, runs_dir: Path,
                                                                             clinic: Path) -> None:
    import shutil

    from app_fixtures import open_page, texts
    from retino_core.report import modelcard

    run = Path(shutil.copytree(usable_run, runs_dir / usable_run.name))
    classify = open_page("classify")
    classify.file_uploader[0].set_value(("eye.jpg", jpeg_bytes(fundus_image(28, grade=2, easy=True)), "image/jpeg"))
    classify.toggle(key="grad_cam").set_value(False)
    classify.run()
    assert "s test photos; not measured on other cameras" in texts(classify)
    assert "No external validation" in modelcard.to_markdown(modelcard.build(run))

    assert main(["evaluate", run.name, "--data", str(clinic), "--name", "clinic-x", "--quiet"]) == 1
    said = external.sentence(external.read_all(run)[0])
    results = open_page("results")
    assert not results.exception
    assert any(e.label == f"External: {said}" for e in results.expander)
    assert "not measured on other cameras" not in texts(results) and said in texts(results)
    classify.run()
    assert said in texts(classify) and "not measured on other cameras" not in texts(classify)
    compare = open_page("compare")
    assert not compare.exception and f"external: {said}" in texts(compare)
    card = modelcard.to_markdown(modelcard.build(run))
    assert "**External evaluation**" in card and said in card and "No external validation" not in card
