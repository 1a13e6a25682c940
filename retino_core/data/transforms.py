"""Train / eval transforms and the optional retina preprocessing, shared by every door.

The same ``build_eval_transform`` serves evaluation and Classify, fed the preprocessing
stored in the checkpoint, so an uploaded photo is treated exactly like a test image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from ..config import IMAGENET_MEAN, IMAGENET_STD


def field_of_view_box(img: Image.Image, threshold: int = 12) -> tuple[int, int, int, int]:
    """Bounding box of the bright retina disc (the dark surround excluded)."""
    grey = np.asarray(img.convert("L"))
    mask = grey > threshold
    if mask.sum() < 0.05 * mask.size:  # nearly black image: keep it whole
        return 0, 0, img.width, img.height
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class RetinaPreprocess:
    """``crop``: cut to the field of view and pad square. ``ben_graham``: crop, then
    subtract the local average colour (Graham, Kaggle DR 2015 winner) and grey the rim."""

    def __init__(self, mode: str = "crop"):
        if mode not in ("crop", "ben_graham"):
            raise ValueError(f"unknown preprocess {mode!r}; choose one of: none, crop, ben_graham")
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.crop(field_of_view_box(img))
        side = max(img.size)
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        if self.mode == "crop":
            return square
        arr = np.asarray(square, dtype=np.float32)
        blur = np.asarray(square.filter(ImageFilter.GaussianBlur(radius=max(side / 30, 1))),
                          dtype=np.float32)
        out = np.clip(4 * arr - 4 * blur + 128, 0, 255)
        yy, xx = np.mgrid[:side, :side]
        r = side / 2
        outside = (yy - r + 0.5) ** 2 + (xx - r + 0.5) ** 2 > (0.92 * r) ** 2
        out[outside] = 128
        return Image.fromarray(out.astype(np.uint8))

    def __repr__(self) -> str:
        return f"RetinaPreprocess(mode={self.mode!r})"


def _head(preprocess: str) -> list:
    return [] if preprocess in (None, "none") else [RetinaPreprocess(preprocess)]


def _tail(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(image_size: int, augment: str = "flip", preprocess: str = "none",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Augmentation for training: ``none``, ``flip`` (h/v flips) or ``strong``."""
    steps = _head(preprocess)
    if augment == "strong":
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(30),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02),
        ]
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
        if augment == "flip":
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        elif augment != "none":
            raise ValueError(f"unknown augment {augment!r}; choose one of: none, flip, strong")
    return v2.Compose(steps + _tail(mean, std))


def build_eval_transform(image_size: int, preprocess: str = "none", mean=IMAGENET_MEAN,
                         std=IMAGENET_STD):
    """Deterministic transform for validation, test and Classify."""
    steps = _head(preprocess) + [v2.Resize((image_size, image_size), antialias=True)]
    return v2.Compose(steps + _tail(mean, std))


def tta_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation views of an NCHW batch: identity and the three flips."""
    return [batch, batch.flip(-1), batch.flip(-2), batch.flip(-1).flip(-2)]
