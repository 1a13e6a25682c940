"""The near-copy code on real fundus photos: altered copies are found, different eyes are not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from retino_core.data import nearcopy
from retino_core.data.images import RETINAMNIST_NPZ, SAMPLE_IMAGE, load_image


def reencode(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return load_image(buf.getvalue())


def gamma(img: Image.Image, g: float) -> Image.Image:
    return img.point([min(255, round(255 * (i / 255) ** g)) for i in range(256)] * 3)


@pytest.fixture(scope="module")
def sample() -> Image.Image:
    return load_image(SAMPLE_IMAGE)


ALTERED = {
    "re-encoded at quality 35": lambda im: reencode(im, 35),
    "resized to a quarter (Lanczos)": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    "enlarged 1.7x (nearest)": lambda im: im.resize((im.width * 17 // 10, im.height * 17 // 10),
                                                    Image.Resampling.NEAREST),
    "cropped 9 % off one corner": lambda im: im.crop((0, 0, int(im.width * 0.91), int(im.height * 0.91))),
    "turned 5 degrees": lambda im: im.rotate(5, Image.Resampling.BICUBIC),
    "darker, more contrast, gamma 1.25": lambda im: gamma(ImageEnhance.Contrast(
        ImageEnhance.Brightness(im).enhance(0.75)).enhance(1.25), 1.25),
    "all of them": lambda im: reencode(gamma(ImageEnhance.Brightness(
        im.crop((40, 60, im.width - 50, im.height - 30)).rotate(-3, Image.Resampling.BILINEAR)
        .resize((500, 500))).enhance(1.2), 0.85), 50),
}


@pytest.mark.parametrize("how", list(ALTERED))
def test_an_altered_copy_of_the_sample_is_found(sample, how):
    copy = ALTERED[how](sample)
    assert nearcopy.near_pairs([nearcopy.near_code(sample), nearcopy.near_code(copy)]) == [(0, 1)]


def test_other_fields_of_the_same_eye_and_its_mirror_image_are_not_copies(sample):
    """A narrower field of the same retina (a region crop masked to a disc) is another photo;
    so is the mirror image (it is how the fellow eye looks)."""
    w, h = sample.size
    region = sample.crop((w // 4, h // 5, w // 4 + w // 2, h // 5 + h // 2))
    mask = Image.new("L", region.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, region.width - 1, region.height - 1), fill=255)
    region = Image.composite(region, Image.new("RGB", region.size), mask)
    mirrored = sample.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    codes = [nearcopy.near_code(im) for im in (sample, region, mirrored)]
    assert nearcopy.near_pairs(codes) == []


def test_photos_of_different_patients_are_not_paired():
    """RetinaMNIST's test photos and 400 of its training photos come from different DeepDRiD
    patients: no pair between the two sides. Copies of them are still found."""
    with np.load(RETINAMNIST_NPZ) as npz:
        train, test = npz["train_images"][:400], npz["test_images"]
    photos = [Image.fromarray(a).resize((96, 96), Image.Resampling.BICUBIC) for a in (*train, *test)]
    codes = [nearcopy.near_code(p) for p in photos]
    cross = [(i, j) for i, j in nearcopy.near_pairs(codes) if (i < 400) != (j < 400)]
    assert cross == []
    copies = [nearcopy.near_code(reencode(p.rotate(3, Image.Resampling.BICUBIC), 60)) for p in photos[:50]]
    found = set(nearcopy.near_pairs(codes[:50] + copies))
    assert sum((i, i + 50) in found for i in range(50)) >= 48


def test_what_matches_nothing():
    """An unreadable image's empty code, a damaged code and a featureless image match nothing,
    not even themselves."""
    blank = nearcopy.near_code(Image.new("RGB", (64, 64), (120, 40, 20)))
    black = nearcopy.near_code(Image.new("RGB", (64, 64)))
    assert len(blank) == nearcopy.CODE_HEX
    assert nearcopy.near_pairs(["", "", blank, blank, black, black, "zz" * 256, "12"]) == []


def test_codes_are_the_same_every_time(sample):
    """Cached codes stay valid: the code of a photo does not depend on the run."""
    small = sample.resize((300, 300))
    assert nearcopy.near_code(small) == nearcopy.near_code(small.copy())
    assert nearcopy.simhash(nearcopy.search_vectors(nearcopy.decode([nearcopy.near_code(small)]))).shape == (1, 4)
