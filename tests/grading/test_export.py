"""Exporting a grader: ONNX and TorchScript round trips against Predictor, preprocessing.json,
the standalone predict_onnx.py in an interpreter that cannot import torch, the model card, and
the Results page's download section."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image, ImageDraw

from conftest import fundus_image, jpeg_bytes
from retino_core.grading import batch
from retino_core.judging import metrics
from retino_core.report import modelcard
from retino_core import runs
from retino_core.cli import main
from retino_core.data.sources import source_of
from retino_core.models.builders import build_model
from retino_core.grading.predictor import Predictor
from retino_core.training.recorder import save_checkpoint
from retino_core.report import display
from retino_core.judging import operating
from retino_core.judging import ood
from retino_core.grading import standalone
from retino_core.grading import export
from retino_core.judging.decision import referral_first

TOLERANCE = 1e-4


def copy_run(run: Path, into: Path) -> Path:
    """A copy of a session run without its last.pt (exports write into the run folder)."""
    return Path(shutil.copytree(run, into / run.name, ignore=shutil.ignore_patterns("last.pt", "export")))


def split_images(run_dir: Path):
    split = source_of(runs.read_json(run_dir / "config.json")).splits["test"]
    return [split.image(i) for i in range(len(split))]


def exported_outputs(fmt: str, folder: Path, images, pre: dict) -> dict[str, np.ndarray]:
    rows = np.stack([standalone.prepare(img, pre["image_size"], pre["crop"]) for img in images])
    return export.load_runner(fmt, folder / pre["model_file"], pre["outputs"])(rows)


@pytest.fixture(scope="module")
def guessing_run(finished_run: Path, tmp_path_factory) -> Path:
    return copy_run(finished_run, tmp_path_factory.mktemp("guessing"))


@pytest.fixture(scope="module")
def onnx_export(guessing_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "grader"
    assert main(["export", str(guessing_run), "--out", str(out), "--verify-images", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def resnet50_run(usable_run: Path, tmp_path_factory) -> Path:
    """The usable run with its network swapped for a ResNet50 (BatchNorm statistics set on random
    pictures), a temperature of 1.5, 2048-dimensional feature statistics and the retina crop."""
    run_dir = copy_run(usable_run, tmp_path_factory.mktemp("r50"))
    path = runs.checkpoint_path(run_dir)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    model = build_model("resnet50")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    tap = ood.FeatureTap(model)
    with torch.no_grad():
        model(torch.randn(40, 3, 32, 32))
    features = tap.take().numpy()
    stats = ood.calibrate(ood.fit(features, np.arange(40) % 5), features[:20])
    ck.update(model=model.state_dict(), arch="resnet50", temperature=1.5, ood=stats)
    ck["preprocessing"]["preprocess"] = "crop"
    save_checkpoint(ck, path)
    config = runs.read_json(run_dir / "config.json")
    runs.write_json(run_dir / "config.json", {**config, "arch": "resnet50", "preprocess": "crop"})
    summary = runs.read_json(run_dir / "summary.json")  # graded with its temperature, as a run it helped
    runs.write_json(run_dir / "summary.json", {**summary, "temperature": 1.5, "grades_calibrated": True})
    return run_dir


# ---------------------------------------------------------------- round trips


def test_onnx_matches_predictor_on_the_test_split(onnx_export: Path, guessing_run: Path) -> None:
    import onnx

    pre = json.loads((onnx_export / export.PREPROCESSING).read_text())
    model = onnx.load(str(onnx_export / "model.onnx"))
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ""] == [("", export.OPSET)]
    graph_input = model.graph.input[0]
    assert graph_input.name == "images" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1:] == [32, 32, 3] and isinstance(dims[0], str)  # any batch size
    assert pre["outputs"] == ["probabilities", "referable_probability", "would_say_refer", "would_say_grade", "ood_score"]

    predictor = Predictor.from_run(guessing_run)
    images = split_images(guessing_run)
    want, checks = predictor.run(images)
    got = exported_outputs("onnx", onnx_export, images, pre)
    assert np.abs(got["probabilities"] - want).max() <= TOLERANCE
    assert np.allclose(got["referable_probability"], want[:, 2:].sum(1), atol=TOLERANCE)
    assert np.allclose(got["ood_score"], [c.ood_score for c in checks], rtol=1e-3)
    threshold = pre["referable"]["threshold"]
    for k, p in enumerate(want):  # the graph's referral-first answer is decision.referral_first's
        assert (bool(got["would_say_refer"][k]), int(got["would_say_grade"][k])) == referral_first(p, threshold)
    assert pre["verified"]["images"] == len(images) and pre["verified"]["on"] == "test-split"
    assert pre["verified"]["max_abs_diff"] <= TOLERANCE and pre["verified"]["passed"]
    assert pre["verified"]["decisions_differ"] == 0
    for n in (1, 5):  # the batch dimension is dynamic
        assert exported_outputs("onnx", onnx_export, images[:n], pre)["probabilities"].shape == (n, 5)


def test_preprocessing_json_says_what_a_user_must_know(onnx_export: Path, guessing_run: Path) -> None:
    pre = json.loads((onnx_export / export.PREPROCESSING).read_text())
    ck = torch.load(runs.checkpoint_path(guessing_run), map_location="cpu", weights_only=True)
    summary = runs.read_json(guessing_run / "summary.json")
    assert pre["image_size"] == 32 and pre["input"]["dtype"] == "uint8" and pre["input"]["layout"] == "NHWC"
    assert pre["mean"] == ck["preprocessing"]["mean"] and pre["std"] == ck["preprocessing"]["std"]
    assert pre["crop"] == "none" and "BILINEAR" in pre["resize"]
    assert pre["fitted_temperature"] == pytest.approx(ck["temperature"]) and pre["flip_averaging"] is True
    # The temperature inside the graph is the one every door grades with (none where it did not help).
    assert pre["calibrated"] is operating.grades_calibrated(guessing_run)
    assert pre["temperature"] == pytest.approx(ck["temperature"] if pre["calibrated"] else 1.0)
    assert pre["grade_names"] == ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]
    assert pre["trust"]["verdict"] == "no better than guessing" == summary["trust"]["verdict"]
    assert pre["trust"]["reasons"] == summary["trust"]["reasons"]
    assert pre["ood"]["threshold"] == pytest.approx(float(ck["ood"]["threshold"]))
    # Validation's choice is the Evaluation page's (predictions.csv, the probabilities the run grades
    # with, 90 % sensitivity), but
    # 16 validation photos cannot support it: the run's operating point says so and the default is in force.
    preds = runs.read_predictions(guessing_run)
    val = preds[preds["split"] == "val"]
    probs = metrics.softmax(val[[f"logit{c}" for c in range(5)]].to_numpy(), pre["temperature"])
    threshold = operating.threshold_for_sensitivity(val["label"].to_numpy(), probs, 0.90)
    referable = pre["referable"]
    assert referable["chosen_threshold"] == pytest.approx(threshold) and referable["chosen_on"] == "val"
    assert referable["reliable"] is False and referable["threshold"] == 0.5 == referable["default_threshold"]
    assert referable["threshold_from"] == "default" and "at least 30 of each" in referable["why"]
    assert referable["says"].startswith("No reliable operating point") and referable == {
        **operating.of_run(guessing_run).to_dict(), **{k: referable[k] for k in ("grades", "rule", "chosen_on",
                                                                                  "default_threshold", "says")}}
    assert set(referable["grades"]) == {2, 3, 4} and pre["decision"]["statuses"] == ["graded", "not graded",
                                                                                      "no usable model"]
    assert {p.name for p in onnx_export.iterdir()} == {"model.onnx", "preprocessing.json", "predict_onnx.py",
                                                       "model_card.md", "model_card.html"}
    assert (onnx_export / "predict_onnx.py").stat().st_mode & 0o111  # runnable


def test_torchscript_matches_predictor(guessing_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ts"
    assert main(["export", str(guessing_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    pre = json.loads((out / export.PREPROCESSING).read_text())
    assert pre["format"] == "torchscript" and not (out / "predict_onnx.py").exists()
    images = split_images(guessing_run)
    want, _ = Predictor.from_run(guessing_run).run(images)
    got = exported_outputs("torchscript", out, images, pre)
    assert np.abs(got["probabilities"] - want).max() <= TOLERANCE


def test_resnet50_with_the_retina_crop_round_trips(resnet50_run: Path, tmp_path: Path) -> None:
    out = export.export_run(resnet50_run, "onnx", tmp_path / "r50", verify_images=0)
    pre = export.read_export(out)
    assert pre["arch"] == "resnet50" and pre["crop"] == "crop" and pre["temperature"] == 1.5
    predictor = Predictor.from_run(resnet50_run)
    # Photos bigger than the training size, off-centre on black, so the crop and the resize both act.
    images = [fundus_image(90, seed=s, grade=s % 5, easy=True).crop((0, 0, 80, 90)) for s in range(6)]
    want, checks = predictor.run(images)
    got = exported_outputs("onnx", out, images, pre)
    assert np.abs(got["probabilities"] - want).max() <= TOLERANCE
    assert np.allclose(got["ood_score"], [c.ood_score for c in checks], rtol=1e-3)
    assert want.std(0).max() > 1e-3  # the comparison is not between constant outputs


def test_export_errors_name_the_problem(guessing_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["export", str(guessing_run), "--format", "tflite"]) == 1
    assert "unknown format 'tflite'; choose one of: onnx, torchscript" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(guessing_run, unfinished, ignore=shutil.ignore_patterns("summary.json", "export"))
    assert main(["export", str(unfinished)]) == 1
    assert "has not finished" in capsys.readouterr().err
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no export can pass: it must say so and not count as one
    assert main(["export", str(guessing_run), "--out", str(tmp_path / "bad")]) == 1
    assert "differs from the app's" in capsys.readouterr().err
    assert export.read_export(tmp_path / "bad") is None


# ---------------------------------------------------------------- the standalone script

# Runs predict_onnx.py with every package it must not need made unimportable: an import of
# any of them, direct or through another package, fails the run instead of passing silently.
RUNNER = """
import importlib.abc, json, runpy, sys
BLOCKED = {"torch", "torchvision", "retino_core", "pandas", "sklearn", "scipy", "streamlit", "tqdm", "captum"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("predict_onnx.py must not need " + name)
sys.meta_path.insert(0, Block())
script, sys.argv = sys.argv[1], sys.argv[1:]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("imported:" + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)), file=sys.stderr)
sys.exit(code)
"""


def run_standalone(folder: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    runner = cwd / "runner.py"
    runner.write_text(RUNNER)
    # -I: no PYTHONPATH, no user site, not even the current folder on sys.path, so retino_core
    # (importable from the project root) is out of reach too; only the venv's packages remain.
    return subprocess.run([sys.executable, "-I", str(runner), str(folder / "predict_onnx.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    fundus_image(28, seed=1, grade=2).save(root / "a.png")
    (root / "b.jpeg").write_bytes(jpeg_bytes(fundus_image(120, seed=2, grade=3)))
    fundus_image(64, seed=3, grade=1).convert("RGBA").save(root / "nested" / "alpha.png")
    fundus_image(28, seed=4, grade=0).convert("L").save(root / "nested" / "deeper" / "grey.bmp")
    (root / "nested" / "broken.jpg").write_bytes(jpeg_bytes(fundus_image(120, seed=5))[:250])
    (root / "readme.md").write_text("# not a photo\n")
    (root / "heic.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    return root


def test_predict_onnx_needs_neither_torch_nor_retino(onnx_export: Path, guessing_run: Path, mixed_folder: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "grades.csv"
    proc = run_standalone(onnx_export, [str(mixed_folder), str(tmp_path / "missing.png"), "--out", str(out)], tmp_path)
    assert proc.returncode == 1, proc.stderr  # 1: some files could not be read, all are in the CSV
    assert proc.stderr.strip().splitlines()[-1] == "imported:[]"
    assert "warning: This model is no better than guessing" in proc.stderr
    with open(out, newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    files = [f for f, _ in batch.expand_inputs([mixed_folder, tmp_path / "missing.png"])]
    assert sorted(rows) == sorted(files) and len(files) == 8
    errors = {Path(f).name: r["error"] for f, r in rows.items() if r["error"]}
    assert set(errors) == {"broken.jpg", "readme.md", "heic.heic", "missing.png"}
    assert "HEIC" in errors["heic.heic"] and "file not found" in errors["missing.png"]
    # The same numbers and answers as the app's predictor on the same files (decoding, resize and checks included).
    predictor = Predictor.from_run(guessing_run)
    good = [f for f, r in rows.items() if not r["error"]]
    for pred in predictor.predict_files(good):
        row = rows[pred.name]
        got = [float(row[c]) for c in batch.PROBABILITY_COLUMNS]
        assert np.abs(np.array(got) - pred.probabilities).max() <= TOLERANCE
        assert row["status"] == pred.decision.status != "graded"  # a model no better than guessing never grades
        assert row["grade"] == row["refer"] == "" and row["would_say_grade"] == str(pred.decision.would_say_grade)
        assert row["in_distribution"] == str(pred.check.in_distribution)
        assert float(row["ood_score"]) == pytest.approx(pred.check.ood_score, rel=1e-3)
        assert row["model_verdict"] == "no better than guessing"

    # --resume: nothing graded twice; JSON lines without --out.
    again = run_standalone(onnx_export, [str(mixed_folder), "--out", str(out), "--resume"], tmp_path)
    assert again.returncode == 0
    assert "0 graded, 0 not graded (failed a photo check), 0 could not be read, 7 already in" in again.stderr
    lines = run_standalone(onnx_export, [str(mixed_folder / "a.png")], tmp_path)
    assert lines.returncode == 0
    row = json.loads(lines.stdout)
    assert row["grade"] is None and row["error"] is None
    assert row["would_say_grade"] == int(rows[str(mixed_folder / "a.png")]["would_say_grade"])


def test_predict_onnx_names_nothing_it_does_not_define(tmp_path: Path) -> None:
    """Every global a function of the generated script reads is defined in it (a NameError would
    otherwise wait for the one photo that takes that path)."""
    import builtins
    import runpy
    import symtable

    source = standalone.standalone_script()
    path = tmp_path / "predict_onnx.py"
    path.write_text(source)
    defined = set(runpy.run_path(str(path), run_name="predict_onnx")) | set(dir(builtins))

    def free_globals(table) -> set[str]:
        names = {s.get_name() for s in table.get_symbols() if s.is_referenced() and
                 (s.is_global() or (table.get_type() == "module" and not s.is_assigned() and not s.is_imported()))}
        return names.union(*(free_globals(child) for child in table.get_children()))

    assert free_globals(symtable.symtable(source, str(path), "exec")) <= defined


def test_predict_onnx_of_a_usable_model_does_not_warn(resnet50_run: Path, tmp_path: Path) -> None:
    out = export.export_run(resnet50_run, "onnx", tmp_path / "r50", verify_images=8)
    fundus_image(28, seed=1, grade=2, easy=True).save(tmp_path / "eye.png")
    proc = run_standalone(out, [str(tmp_path / "eye.png")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and json.loads(proc.stdout)["model_verdict"] == "usable"


def test_every_door_gives_a_refused_photo_no_grade(usable_run: Path, tmp_path: Path, capsys) -> None:
    """predict --json, predict --out and predict_onnx.py (JSON lines and CSV) give the same answers:
    a photo like the training ones graded, with a grade and referral that agree; a plain disc and
    a strip not graded, with null / empty grade, grade name and referral, and the reasons."""
    run_dir = copy_run(usable_run, tmp_path)
    folder = export.export_run(run_dir, "onnx", tmp_path / "grader", verify_images=8)
    photos = tmp_path / "photos"
    photos.mkdir()
    fundus_image(28, seed=7, grade=3, easy=True).save(photos / "eye.png")
    disc = Image.new("RGB", (300, 300))
    ImageDraw.Draw(disc).ellipse((10, 10, 290, 290), fill=(220, 110, 40))  # the plain orange disc
    disc.save(photos / "disc.png")
    Image.new("RGB", (2000, 200), (200, 100, 50)).save(photos / "strip.png")
    files = sorted(str(p) for p in photos.iterdir())

    assert main(["predict", *files, "--run", str(run_dir), "--json"]) == 0
    app = {row["file"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["predict", *files, "--run", str(run_dir), "--out", str(tmp_path / "app.csv"), "--quiet"]) == 0
    proc = run_standalone(folder, files, tmp_path)
    assert proc.returncode == 0, proc.stderr
    standalone_json = {row["file"]: row for row in map(json.loads, proc.stdout.splitlines())}
    proc = run_standalone(folder, [*files, "--out", str(tmp_path / "onnx.csv")], tmp_path)
    assert proc.returncode == 0 and "1 graded, 2 not graded (failed a photo check), 0 could not be read" in proc.stderr
    for path in ("app.csv", "onnx.csv"):
        with open(tmp_path / path, newline="") as fh:
            rows = {r["file"]: r for r in csv.DictReader(fh)}
        for file in files:
            for answers in (app, standalone_json):
                want = answers[file]
                assert rows[file]["status"] == want["status"]
                assert rows[file]["grade"] == ("" if want["grade"] is None else str(want["grade"]))
                assert rows[file]["refer"] == ("" if want["refer"] is None else str(want["refer"]))
    eye, plain, strip = (app[str(photos / n)] for n in ("eye.png", "disc.png", "strip.png"))
    assert eye["status"] == "graded" and (eye["grade"] >= 2) == eye["refer"] and eye["grade_name"]
    for refused in (plain, strip):
        assert refused["status"] == "not graded" and refused["reasons"]
        assert refused["grade"] is None and refused["grade_name"] is None and refused["refer"] is None
        assert (refused["would_say_grade"] >= 2) == refused["would_say_refer"]
    assert any("no retinal detail" in r for r in plain["reasons"]) and "2000×200" in strip["reasons"][0]
    for file in files:  # the app's answer and the exported grader's are one
        a, b = app[file], standalone_json[file]
        assert {k: a[k] for k in ("status", "grade", "refer", "reasons", "would_say_grade")} == \
               {k: b[k] for k in ("status", "grade", "refer", "reasons", "would_say_grade")}


# ---------------------------------------------------------------- the model card

SECTIONS = ("Intended use", "Not intended use", "Data", "Recipe", "Test results",
            "Referable DR (grade ≥ 2): operating point", "How it answers", "Calibration", "How far to trust it", "Limitations")


def test_model_card_sections_and_numbers(guessing_run: Path) -> None:
    summary = runs.read_json(guessing_run / "summary.json")
    card = modelcard.build(guessing_run)
    md, page = modelcard.to_markdown(card), modelcard.to_html(card)
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == list(SECTIONS)
    assert page.count("<h2>") == len(SECTIONS)
    # Not usable: said in the first words under the title, in both forms.
    assert md.splitlines()[2].startswith("> **Not fit for use: this model is no better than guessing.**")
    assert page.index('class="notice error"') < page.index("<h2>")
    assert all(reason in md for reason in summary["trust"]["reasons"])
    for label in ("source", "images", "resolution", "split", "patients"):
        assert f"| {label} |" in md
    assert "train 48, validation 16, test 16" in md and "photos of 28×28 px, shown to the model at 32×32 px" in md
    # Numbers: those of summary.json, formatted once.
    assert f"| accuracy | {display.percent(summary['test_acc'])} | {display.percent(summary['test_acc_ci'][0])} to " \
           f"{display.percent(summary['test_acc_ci'][1])} |" in md
    for key in ("auc", "qwk", "referable_auc"):
        lo, hi = summary[f"test_{key}_ci"]
        assert f"| {display.number(summary[f'test_{key}'])} | {display.number(lo)} to {display.number(hi)} |" in md
    assert f"| {display.percent(summary['test_majority_acc'])} |" in md
    for g, recall in enumerate(summary["test_recall"]):
        if summary["test_support"][g]:
            assert f"| {summary['test_support'][g]} | {display.number(recall, 2)} |" in md
    for split in ("val", "test"):
        assert f"| {display.number(summary[f'{split}_ece'], 4)} | {display.number(summary[f'{split}_ece_calibrated'], 4)} | " \
               f"{display.number(summary[f'{split}_loss'], 4)} |" in md
    point = modelcard.referable_point(guessing_run)
    assert "**No reliable operating point**: the validation split has" in md and "≥ **0.50**" in md
    assert f"validation alone would have chosen {point['chosen_threshold']:.3f}" in md
    assert "| photo | true grade | P(grade ≥ 2) | answer |" in md and "no usable model; would say" in md
    assert f"| this model, test | {display.percent(point['test']['sensitivity'])} (" in md
    for ref in operating.REFERENCE_POINTS:
        assert f"| {ref.label} | {display.percent(ref.sensitivity)} | {display.percent(ref.specificity)} |" in md
    for words in ("**Resolution.**", "**One data source.**", "**No external validation.**"):
        assert words in md
    assert card.facts["test_acc"] == summary["test_acc"] and card.facts["verdict"] == summary["trust"]["verdict"]


def test_model_card_of_a_usable_run_and_of_an_export(usable_run: Path, onnx_export: Path, guessing_run: Path) -> None:
    md = modelcard.to_markdown(modelcard.build(usable_run))
    assert md.splitlines()[2].startswith("> **Usable** on its test set.") and "Not fit for use" not in md
    exported = (onnx_export / "model_card.md").read_text()
    assert exported.splitlines()[2].startswith("> **Not fit for use")
    assert "## This export" in exported and "`predict_onnx.py`" in exported
    assert (guessing_run / "model_card.md").is_file() and (guessing_run / "model_card.html").is_file()


def test_model_card_of_a_run_without_logits(runs_dir: Path) -> None:
    from app_fixtures import write_run

    run_dir = write_run(runs_dir, skill=0, logits=False)  # an older predictions.csv: probabilities, no logits
    md = modelcard.to_markdown(modelcard.build(run_dir))
    # Log-probabilities stand in for the logits: every temperature scales both to the same probabilities.
    point = modelcard.referable_point(run_dir)
    assert "val" in point and "test" in point  # chosen on the log-probabilities of both splits
    assert (f"≥ **{point['threshold']:.3f}**" if point["reliable"] else point["why"]) in md
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == list(SECTIONS)


# ---------------------------------------------------------------- the Results page


def test_results_page_offers_the_card_and_the_export(runs_dir: Path, finished_run: Path) -> None:
    from app_fixtures import open_page

    run_dir = copy_run(finished_run, runs_dir)
    at = open_page("results")
    downloads = [b.proto.label for b in at.get("download_button")]
    assert downloads == ["Model card (Markdown)", "Model card (HTML)"]
    assert any(s.value == "Take this grader out" for s in at.subheader)
    next(b for b in at.button if b.label == "Export as onnx").click().run()
    assert not at.exception and not any("export failed" in e.value for e in at.error)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[-1] == f"Download {run_dir.name}-onnx.zip"
    assert export.read_export(export.default_folder(run_dir, "onnx"))["trust"]["verdict"] == "no better than guessing"
    assert any("Checked on 16 test-split images" in c.value for c in at.caption)


def test_export_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    from conftest import load_bench

    bench = load_bench("export_bench")
    assert bench.main(["--archs", "resnet18", "--sizes", "32", "--photos", "3", "--photo-size", "48",
                       "--rounds", "1", "--repeats", "1", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "export.json").read_text())
    assert [(r["arch"], r["size"], r["tta"]) for r in results] == [("resnet18", 32, True)]
    assert all(v["images_per_s"] > 0 and v["single_ms"] > 0 for v in results[0]["median"].values())
    assert "| resnet18 | 32 px | on | 2 |" in (tmp_path / "export.md").read_text()
