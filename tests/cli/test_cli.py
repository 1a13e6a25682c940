"""The CLI in-process: train, sweep, predict, runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from retino_core import runs
from retino_core.cli import main
from retino_core.data.images import SAMPLE_IMAGE
from retino_core.models.builders import weights_cache_file

TINY_ARGS = ["--image-size", "32", "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "2", "--quiet"]


def test_train_prints_the_run_folder_last(tiny_npz, runs_dir, capsys):
    assert main(["train", "--data", str(tiny_npz), "--arch", "resnet18", "--name", "cli", *TINY_ARGS]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    run_dir = Path(last)
    assert run_dir.parent == runs_dir and run_dir.name.endswith("-cli")
    assert json.loads((run_dir / "summary.json").read_text())["test_acc"] is not None
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_size"] == 32 and config["preset"] == "cpu" and config["data"] == str(tiny_npz)


@pytest.mark.parametrize("recipe, summary_check, reason", [
    # A learning rate that blows the weighted loss up: every test image gets one grade.
    (["--loss", "weighted_ce", "--lr", "0.05"], lambda s: s["test_collapsed"], "collapsed onto one grade"),
    # One that moves nothing: scores under always answering the commonest grade.
    (["--lr", "1e-9", "--ema", "0"], lambda s: s["test_acc"] < s["test_majority_acc"], "is not above always answering"),
], ids=["collapsed", "below-baseline"])
def test_a_model_that_learned_nothing_says_so_at_every_door(tiny_npz, runs_dir, capsys, recipe, summary_check, reason):
    argv = ["train", "--data", str(tiny_npz), "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--quiet"]
    assert main(argv + recipe) == 0
    out, err = capsys.readouterr()
    run_dir = Path(out.strip().splitlines()[-1])  # stdout's last line is still the run folder
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary_check(summary)
    assert summary["trust"]["verdict"] == "no better than guessing" and any(reason in r for r in summary["trust"]["reasons"])
    assert err.strip().splitlines()[-1].startswith("verdict: no better than guessing (test accuracy")
    assert reason in err

    assert main(["runs"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(run_dir.name))
    assert row.endswith("no better than guessing")
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["trust"]["verdict"] == "no better than guessing"

    assert main(["predict", str(SAMPLE_IMAGE), "--run", run_dir.name, "--json"]) == 0
    out, err = capsys.readouterr()
    answer = json.loads(out.strip())
    assert answer["model_verdict"] == "no better than guessing"
    assert answer["status"] in ("no usable model", "not graded")  # never a grade
    assert answer["grade"] is None and answer["grade_name"] is None and answer["refer"] is None
    assert isinstance(answer["would_say_grade"], int) and answer["warnings"] == []  # the verdict is said once, below
    assert err.count("warning: This model is no better than guessing") == 1 and reason in err
    assert isinstance(answer["ood_score"], float) and isinstance(answer["in_distribution"], bool)
    assert main(["predict", str(SAMPLE_IMAGE), "--run", run_dir.name]) == 0
    out, err = capsys.readouterr()
    assert "warning: This model is no better than guessing" in err and "not graded" in out and "\tgrade " not in out


def test_predict_json_of_a_usable_model_on_photos_like_and_unlike_its_training(usable_run, tmp_path, capsys):
    from PIL import Image

    from conftest import fundus_image

    eye, strip = tmp_path / "eye.png", tmp_path / "strip.png"
    fundus_image(28, seed=7, grade=3, easy=True).save(eye)
    Image.new("RGB", (2000, 200), (200, 100, 50)).save(strip)
    assert main(["predict", str(eye), str(strip), "--run", str(usable_run), "--json"]) == 0
    out, err = capsys.readouterr()
    good, bad = (json.loads(line) for line in out.strip().splitlines())
    assert good["model_verdict"] == "usable" and good["status"] == "graded" and good["in_distribution"] is True
    assert (good["grade"], good["grade_name"], good["refer"]) == (3, "Severe", True) and good["reasons"] == []
    assert good["threshold_from"] == "validation" and "warning" not in err
    assert bad["status"] == "not graded" and bad["in_distribution"] is False and "2000×200" in " ".join(bad["reasons"])
    assert bad["grade"] is None and bad["refer"] is None and bad["would_say_grade"] in range(5)
    assert err.strip().splitlines()[-1] == "1 graded, 1 not graded (failed a photo check), 0 could not be read"
    assert main(["predict", str(strip), "--run", str(usable_run)]) == 0
    out = capsys.readouterr().out
    assert "not graded (failed a photo check); the model would say" in out and "  reason: It is a 2000×200" in out


def test_train_with_bad_data_makes_no_run(tmp_path, runs_dir, capsys):
    assert main(["train", "--data", str(tmp_path), *TINY_ARGS]) == 2
    assert "lacks train_img.csv" in capsys.readouterr().err
    assert list(runs_dir.iterdir()) == []


def test_lab_folder_trains(lab_folder, runs_dir, capsys):
    assert main(["train", "--data", str(lab_folder), "--val-fraction", "0.2", *TINY_ARGS]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selected_on"] == "val" and summary["test_n"] == 12


def _fake_imagenet_cache(torch_home: Path) -> None:
    for arch, builder in (("resnet18", tvm.resnet18), ("resnet50", tvm.resnet50)):
        target = weights_cache_file(arch)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(builder(num_classes=1000).state_dict(), target)


def test_sweep_trains_the_four_configurations(tiny_npz, runs_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _fake_imagenet_cache(tmp_path / "torch")
    assert main(["sweep", "--data", str(tiny_npz), "--image-size", "32", "--batch-size", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]) == 0
    infos = runs.list_runs(runs_dir)
    assert sorted(r.configuration for r in infos) == [
        "resnet18 / pretrained", "resnet18 / scratch", "resnet50 / pretrained", "resnet50 / scratch"]
    assert all(r.state == "done" for r in infos)
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert table.count("done") == 4 and "resnet50 / pretrained" in table


def test_sweep_queues_each_configuration_with_several_seeds(tiny_npz, runs_dir, monkeypatch, capsys):
    from retino_core.training import launch

    monkeypatch.setattr(launch, "spawn_worker", lambda runs_dir=None: 0)  # queue only
    assert main(["sweep", "--data", str(tiny_npz), "--archs", "resnet18", "--seeds", "3", "--seed", "5",
                 "--queue"]) == 0
    infos = runs.list_runs(runs_dir)
    assert sorted((r.configuration, r.config["seed"]) for r in infos) == [
        (c, s) for c in ("resnet18 / pretrained", "resnet18 / scratch") for s in (5, 6, 7)]
    assert all(r.state == "queued" for r in infos)
    assert main(["sweep", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


def test_predict_text_and_json(finished_run, capsys, tmp_path):
    assert main(["predict", str(SAMPLE_IMAGE), "--run", str(finished_run)]) == 0
    assert "would say" in capsys.readouterr().out  # a model no better than guessing gives no grade
    assert main(["predict", str(SAMPLE_IMAGE), "--run", str(finished_run), "--json", "--tta"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["grade"] is None and out["would_say_grade_name"] in ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
    assert sum(out[c] for c in ("p_no_dr", "p_mild", "p_moderate", "p_severe", "p_proliferative")) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(SAMPLE_IMAGE), "--run", str(finished_run), "--json", "--no-tta"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["file"] == str(SAMPLE_IMAGE)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(bad), "--run", str(finished_run)]) == 1
    assert "not a recognised image" in capsys.readouterr().err


def test_predict_unknown_run(capsys, runs_dir):
    assert main(["predict", str(SAMPLE_IMAGE), "--run", "no-such-run"]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_bad_choices_name_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--arch", "resnet34"])
    assert "resnet18" in capsys.readouterr().err


def test_grad_cam_from_two_threads_at_once(finished_run):
    """The app shares one Predictor between sessions: concurrent explanations stay correct."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from retino_core.data.images import load_image
    from retino_core.grading.predictor import Predictor

    predictor = Predictor.from_run(finished_run)
    image = load_image(SAMPLE_IMAGE).resize((64, 64))
    targets = [0, 1, 2, 3, 4] * 3
    alone = {t: predictor.grad_cam(image, target=t) for t in range(5)}
    with ThreadPoolExecutor(5) as pool:
        maps = list(pool.map(lambda t: predictor.grad_cam(image, target=t), targets))
    for t, heat in zip(targets, maps):
        assert np.allclose(heat, alone[t], atol=1e-5), t
