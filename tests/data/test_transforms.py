"""Train / eval transforms and the retina preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from conftest import fundus_image
from retino_core.data.transforms import RetinaPreprocess, build_eval_transform, build_train_transform, field_of_view_box


def test_eval_transform_is_deterministic_and_normalised():
    img = fundus_image(60, seed=1)
    tf = build_eval_transform(32)
    a, b = tf(img), tf(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.min() < -1.0  # the black surround, normalised with ImageNet statistics


def test_train_transforms_augment():
    img = fundus_image(60, seed=2, grade=4)
    for augment in ("none", "flip", "strong"):
        out = build_train_transform(40, augment)(img)
        assert out.shape == (3, 40, 40)
    torch.manual_seed(0)
    outs = [build_train_transform(40, "strong")(img) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_field_of_view_crop_cuts_the_black_border():
    img = Image.new("RGB", (100, 60), (0, 0, 0))
    img.paste((200, 100, 50), (30, 10, 70, 50))
    assert field_of_view_box(img) == (30, 10, 70, 50)
    out = RetinaPreprocess("crop")(img)
    assert out.size == (40, 40)


def test_ben_graham_centres_colour_and_greys_the_rim():
    out = np.asarray(RetinaPreprocess("ben_graham")(fundus_image(64, seed=3, grade=3)))
    assert out[0, 0].tolist() == [128, 128, 128]
    centre = out[24:40, 24:40].reshape(-1, 3).mean(0)
    assert np.all(np.abs(centre - 128) < 40)
    tensor = build_eval_transform(32, "ben_graham")(fundus_image(64))
    assert tensor.shape == (3, 32, 32)
