"""The GPU data path, run on the CPU: decode, resize, augmentation, loaders and a full fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, fundus_image, jpeg_bytes
from retino_core import runs
from retino_core.config import make_config
from retino_core.data.images import SAMPLE_IMAGE, load_image
from retino_core.errors import ImageError
from retino_core.data.splits import Split
from retino_core.data.sources import open_source
from retino_core.data.gpu import (DeviceCache, EncodedImages, FileBatches, GpuTransform, build_device_loaders,
                                   color_jitter, decode_batch, random_affine, random_flips)
from retino_core.data import gpu
from retino_core.training.lifecycle import prepare_run, run_training
from retino_core.data.transforms import build_eval_transform

CPU = torch.device("cpu")


def test_eval_path_matches_the_cpu_eval_transform():
    data = SAMPLE_IMAGE.read_bytes()
    x = decode_batch([data], [None], ["sample"], 64, CPU)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.uint8
    ours = GpuTransform(64)(x)[0]
    ref = build_eval_transform(64)(load_image(SAMPLE_IMAGE))
    # One grey level is 1/255/std ~ 0.017 after normalisation.
    assert (ours - ref).abs().max() < 0.05


def test_affine_is_the_identity_with_nothing_to_do_and_flips_are_flips():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    same = random_affine(x, scale=(1, 1), ratio=(1, 1), degrees=0, flips=False)
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_flips(x)
    for a, b in zip(flipped, x):
        assert any(torch.equal(a, v) for v in (b, b.flip(-1), b.flip(-2), b.flip(-1).flip(-2)))


def test_color_jitter_without_range_is_the_identity_and_hue_keeps_greys():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(color_jitter(x, 0, 0, 0, 0), x, atol=1e-5)
    grey = torch.rand(3, 1, 8, 8).expand(3, 3, 8, 8).contiguous()
    assert torch.allclose(color_jitter(grey, 0, 0, 0, 0.4), grey, atol=1e-5)
    out = color_jitter(x)
    assert out.min() >= 0 and out.max() <= 1


def test_strong_augmentation_draws_per_image_and_follows_the_seed():
    img = torch.from_numpy(np.array(fundus_image(40))).permute(2, 0, 1)
    batch = img.expand(4, 3, 40, 40).contiguous()
    tf = GpuTransform(32, "strong")
    torch.manual_seed(1)
    a = tf(batch)
    torch.manual_seed(1)
    b = tf(batch)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # the same picture, different draws


def test_decode_batch_takes_jpegs_of_any_size_and_raw_pixels():
    raw = np.asarray(fundus_image(20, seed=3))
    payloads = [jpeg_bytes(fundus_image(48)), jpeg_bytes(fundus_image(30, seed=2)), raw.tobytes()]
    x = decode_batch(payloads, [None, None, raw.shape[:2]], ["a", "b", "c"], 24, CPU)
    assert x.shape == (3, 3, 24, 24) and x.dtype == torch.uint8
    expect = gpu.resize(torch.from_numpy(raw.copy()).permute(2, 0, 1), 24)
    assert torch.equal(x[2], expect)


def test_a_broken_or_missing_file_is_an_error_naming_it(tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff" + b"not a jpeg at all" * 20)
    missing = tmp_path / "missing.jpeg"
    split = Split(labels=np.array([0, 1]), names=["broken", "missing"], paths=[broken, missing])
    ds = EncodedImages(split, 32)
    payload, shape, label, name = ds[0]
    with pytest.raises(ImageError, match="broken.jpeg"):
        decode_batch([payload], [shape], [name], 32, CPU)
    with pytest.raises(ImageError, match="missing.jpeg.*not found"):
        ds[1]


def test_png_files_and_preprocessing_are_done_by_the_workers(tmp_path):
    png = tmp_path / "a.png"
    fundus_image(40).save(png)
    jpg = tmp_path / "b.jpeg"
    fundus_image(40, seed=1).save(jpg)
    split = Split(labels=np.array([0, 1]), names=["a", "b"], paths=[png, jpg])
    payload, shape, _, _ = EncodedImages(split, 32)[0]
    assert shape == (40, 40) and len(payload) == 40 * 40 * 3
    assert EncodedImages(split, 32)[1][1] is None  # a JPEG goes to the device as it is
    payload, shape, _, _ = EncodedImages(split, 32, preprocess="crop")[1]
    assert shape == (32, 32)


def test_loaders_cover_every_split_in_order(lab_folder, tiny_npz):
    cfg = make_config("cpu", augment="flip", **TINY)
    for data, kind in ((lab_folder, FileBatches), (tiny_npz, DeviceCache)):
        source = open_source(data, 0.1, 0)
        loaders = build_device_loaders(cfg, source, CPU, None, cfg.batch_size, workers=0)
        assert set(loaders) == set(source.splits)
        assert all(isinstance(loader.batches, kind) for loader in loaders.values())
        train = list(loaders["train"])
        assert len(train) == len(loaders["train"]) == len(source.splits["train"]) // cfg.batch_size
        assert all(x.shape == (cfg.batch_size, 3, 32, 32) for x, _ in train)
        for name in ("val", "test"):
            ys = torch.cat([y for _, y in loaders[name]]).numpy()
            assert np.array_equal(ys, source.splits[name].labels)


@pytest.mark.parametrize("data", ["lab_folder", "tiny_npz"])
def test_fit_trains_through_the_gpu_path(data, request, runs_dir, monkeypatch):
    monkeypatch.setattr(gpu, "wanted", lambda cfg, device: bool(cfg.gpu_data))
    path = request.getfixturevalue(data)
    cfg = make_config("cpu", data=str(path), gpu_data=True, augment="strong", max_steps_per_epoch=3, **TINY)
    run_dir = prepare_run(cfg, runs_dir)
    summary = run_training(run_dir, quiet=True)
    source = open_source(path, cfg.val_fraction, cfg.seed)
    assert runs.read_status(run_dir)["state"] == "done"
    assert 0 <= summary["test_acc"] <= 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["train_images"] == 3 * cfg.batch_size
    import pandas as pd

    pred = pd.read_csv(run_dir / "predictions.csv")
    assert (pred["split"] == "test").sum() == len(source.splits["test"])
    assert np.array_equal(pred[pred["split"] == "test"]["label"].to_numpy(), source.splits["test"].labels)
