"""Out-of-distribution checks: the field of view, the Mahalanobis detector, what the Predictor
says about made-up images, old checkpoints, and Grad-CAM's layer and mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import fundus_image
from retino_core.data.images import RETINAMNIST_NPZ, SAMPLE_IMAGE, load_image
from retino_core.models.builders import build_model, grad_cam_layer
from retino_core.grading.predictor import Predictor
from retino_core.data.transforms import build_eval_transform
from retino_core.judging import photo
from retino_core.judging import ood


def made_up_images(rng: np.random.Generator) -> dict[str, Image.Image]:
    noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 128, dtype=np.uint8)
    gradient = Image.fromarray(np.stack([np.tile(ramp, (128, 1))] * 3, -1))
    board = Image.fromarray((((np.indices((128, 128)) // 16).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    text = Image.new("RGB", (160, 120), (255, 255, 255))
    ImageDraw.Draw(text).text((10, 50), "not a retina", fill=(0, 0, 0))
    sample = load_image(SAMPLE_IMAGE)
    w, h = sample.size
    cropped = sample.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))  # the disc's middle, no dark corners
    return {"noise": noise, "gradient": gradient, "checkerboard": board, "text": text,
            "strip": Image.new("RGB", (2000, 200), (180, 90, 40)), "cropped fundus": cropped,
            "black": Image.new("RGB", (64, 64))}


def test_field_of_view_passes_real_fundus_photos():
    with np.load(RETINAMNIST_NPZ) as npz:
        test = npz["test_images"]
    passed = [photo.field_of_view(Image.fromarray(x)).ok for x in test]
    assert np.mean(passed) >= 0.99, f"{len(test) - sum(passed)} of {len(test)} RetinaMNIST test photos failed"
    assert photo.field_of_view(load_image(SAMPLE_IMAGE)).ok
    assert photo.field_of_view(fundus_image(96)).ok


@pytest.mark.parametrize("name", ["noise", "gradient", "checkerboard", "text", "strip", "cropped fundus", "black"])
def test_field_of_view_refuses_what_is_not_a_fundus_photo(name):
    check = photo.field_of_view(made_up_images(np.random.default_rng(0))[name])
    assert not check.ok and check.reason


def test_field_of_view_mask_covers_the_disc_not_the_corners():
    mask = photo.field_of_view_mask(fundus_image(100))
    assert mask[50, 50] and not mask[2, 2] and not mask[97, 97]
    assert 0.6 < mask.mean() < 0.8  # the photo's disc, 98.5 % of the frame wide: pi / 4 * 0.97 = 76 %


def test_mahalanobis_scores_near_points_low_and_far_points_high():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 16))
    labels = np.repeat(np.arange(3), 100)
    features = centres[labels] + rng.normal(0, 1, (300, 16))
    stats = ood.fit(features, labels)
    assert stats["means"].shape == (3, 16) and stats["precision"].shape == (16, 16)
    val = centres[np.arange(200) % 3] + rng.normal(0, 1, (200, 16))
    stats = ood.calibrate(stats, val)
    inside = ood.scores(centres[[0, 1, 2]] + rng.normal(0, 1, (3, 16)), stats)
    outside = ood.scores(rng.normal(0, 5, (50, 16)) + 30, stats)
    assert (inside <= float(stats["threshold"])).all() and (outside > float(stats["threshold"])).all()
    assert np.mean(ood.scores(val, stats) > float(stats["threshold"])) <= 0.011


def test_the_checkpoint_carries_the_detector_and_flags_made_up_images(usable_run: Path):
    ck = torch.load(usable_run / "checkpoints" / "best.pt", weights_only=True)
    assert set(ck["ood"]) >= {"means", "precision", "threshold"} and isinstance(ck["ood"]["precision"], torch.Tensor)
    assert ck["trained_on"]["native_size"] == [28, 28]
    predictor = Predictor.from_run(usable_run)
    # Fresh pictures of the training kind: the threshold is validation's 99th percentile of 60
    # images, so a few false alarms are expected, not many.
    fundus = [fundus_image(28, seed=50_000 + i, grade=i % 5, easy=True) for i in range(40)]
    made_up = list(made_up_images(np.random.default_rng(1)).values())
    preds = predictor.predict(fundus + made_up)
    assert np.mean([p.check.in_distribution for p in preds[:40]]) >= 0.9
    assert np.mean([p.decision.grade == i % 5 for i, p in enumerate(preds[:40])]) >= 0.9
    assert not any(p.check.in_distribution for p in preds[40:])
    assert all(p.decision.status == "not graded" and p.decision.grade is None for p in preds[40:])
    out = preds[40].to_dict()
    assert out["in_distribution"] is False and out["ood_score"] > preds[40].check.ood_threshold
    assert any(r.startswith(photo.FAR_FROM_TRAINING) for r in out["reasons"]) and out["grade"] is None


def test_a_large_upload_is_said_to_be_graded_as_a_thumbnail(usable_run: Path):
    predictor = Predictor.from_run(usable_run)
    note = predictor.thumbnail_note((512, 512))
    assert "graded as a 32×32 thumbnail" in note and "28×28 px" in note
    assert predictor.thumbnail_note((64, 64)) is None


def test_an_old_checkpoint_without_statistics_loads_and_says_not_checked(usable_run: Path, tmp_path: Path):
    old = Path(shutil.copytree(usable_run, tmp_path / usable_run.name))
    path = old / "checkpoints" / "best.pt"
    ck = torch.load(path, weights_only=True)
    del ck["ood"], ck["trained_on"]
    torch.save(ck, path)
    predictor = Predictor.from_run(old)
    fundus, noise = predictor.predict([fundus_image(28, easy=True), made_up_images(np.random.default_rng(2))["noise"]])
    assert fundus.check.in_distribution is None and fundus.to_dict()["ood_score"] is None
    assert fundus.decision.status == "graded"  # the checks it can run pass
    assert any("Not checked against the training photos" in w for w in predictor.batch_warnings())
    assert noise.check.in_distribution is False and noise.decision.grade is None  # the field of view is still checked
    assert "learned from its training photos" in predictor.domain()
    # A bare checkpoint, without its run folder, has no verdict: nothing it says is a grade.
    (bare,) = Predictor.from_checkpoint(path).predict([fundus_image(28, easy=True)])
    assert bare.decision.status == "no usable model" and bare.decision.grade is None


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size, layer", [(28, "layer1"), (64, "layer2"), (128, "layer3"), (224, "layer4")])
def test_grad_cam_reads_a_layer_of_at_least_7_by_7_cells(arch, size, layer):
    name, _, grid = grad_cam_layer(build_model(arch), size)
    assert name == layer and min(grid) >= 7


def test_grad_cam_at_64_px_has_8_by_8_cells_and_is_masked_outside_the_field_of_view(usable_run: Path):
    predictor = Predictor.from_run(usable_run)
    # The same weights, shown 64 px images (a ResNet takes any size).
    predictor.pre = {**predictor.pre, "image_size": 64}
    predictor.transform = build_eval_transform(64, "none", predictor.pre["mean"], predictor.pre["std"])
    assert predictor.cam_layer()[2] == (8, 8)
    image = fundus_image(128, grade=2, easy=True)
    heat = predictor.grad_cam(image, target=2)
    assert heat.shape == (128, 128) and heat.max() == pytest.approx(1.0)
    assert heat[:6, :6].max() == 0 and heat[-6:, -6:].max() == 0  # the black corners


def test_the_ood_benchmark_runs_on_a_finished_run(usable_run: Path, tmp_path: Path):
    from conftest import load_bench

    bench = load_bench("ood")
    assert len(bench.KINDS) == 11
    rng = np.random.default_rng(0)
    with np.load(RETINAMNIST_NPZ) as npz:
        test_images = npz["test_images"][:10]
    for kind in bench.KINDS:  # every kind makes an image the field-of-view check can read
        assert bench.made_up(kind, rng, test_images).size[0] >= 50
    bench.main(["--run", str(usable_run), "--per-kind", "3", "--near-misses", "2", "--out", str(tmp_path)])
    result = __import__("json").loads((tmp_path / "ood.json").read_text())
    assert result["made_up_images"] == 33 and result["test_images"] == 60
    assert result["per_kind"]["strip"]["fov"] == 1.0
    assert set(result["at_5pct_false_alarms"]) == {"field of view alone", "Mahalanobis alone",
                                                   "all three (as shipped: any one refuses)"}
    near = result["near_misses"]
    assert set(near["kinds"]) == set(load_bench("near_miss").NEAR_MISSES) and near["kinds"]["plain disc"]["n"] == 2
    assert near["real"]["bundled sample photo, 70 upload variants"]["n"] == 70
    assert near["real"]["bundled sample photo, 70 upload variants"]["detail"] == 0.0  # a real photo is never flat
    text = (tmp_path / "ood.md").read_text()
    assert "true-positive rate" in text and "| **the four pooled** |" in text


def test_tpr_at_five_percent_false_alarms_by_hand():
    from conftest import load_bench

    bench = load_bench("ood")
    test = np.arange(100, dtype=float)  # 5 % false alarms allowed: flag scores above 94
    tpr, fa = bench._tpr_at(test, np.array([50.0, 94.0, 95.0, 200.0]))
    assert fa == pytest.approx(0.05) and tpr == pytest.approx(0.5)
