"""The retinal-detail check: none of the project's real photos refused, the near-miss kinds of
bench/near_miss.py refused (plain, shaded, blurred and noise discs), each with its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import fundus_image, load_bench
from retino_core.data.images import RETINAMNIST_NPZ, SAMPLE_IMAGE, load_image
from retino_core.judging import detail
from retino_core.judging.decision import check_photo


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_every_retinamnist_photo_passes() -> None:
    with np.load(RETINAMNIST_NPZ) as npz:
        photos = np.concatenate([npz[f"{s}_images"] for s in ("train", "val", "test")])
    refused = [k for k, x in enumerate(photos) if not detail.check_detail(Image.fromarray(x)).ok]
    assert len(photos) == 1600 and refused == []


@pytest.mark.parametrize("side", [1411, 512, 224, 96, 48, 32, 28])
def test_the_bundled_sample_passes_at_every_size_and_jpeg_quality(side: int) -> None:
    sample = load_image(SAMPLE_IMAGE)
    img = sample if side == sample.width else sample.resize((side, side), Image.LANCZOS)
    for shown in (img, jpeg(img, 75), jpeg(img, 20), img.rotate(90)):
        found = detail.check_detail(shown)
        assert found.ok and found.kind == "ok", (side, found.failed)


def test_the_test_suites_fundus_pictures_pass() -> None:
    assert all(detail.check_detail(fundus_image(size, seed, grade, easy)).ok
               for size in (28, 40, 64, 120) for seed in range(3) for grade in (0, 4) for easy in (False, True))


def near_misses(kind: str, n: int, seed: int, min_side: int = 0) -> list[Image.Image]:
    bench = load_bench("near_miss")
    rng = np.random.default_rng(seed)
    with np.load(RETINAMNIST_NPZ) as npz:
        pool = npz["val_images"]
    out, make = [], bench.NEAR_MISSES[kind]
    while len(out) < n:
        img = make(rng, pool, load_image(SAMPLE_IMAGE).resize((512, 512), Image.LANCZOS))
        if min(img.size) >= min_side:
            out.append(img)
    return out


@pytest.mark.parametrize("kind", ["plain disc", "smoothly shaded disc", "heavily blurred fundus (3-5 % of the disc)",
                                  "disc of noise"])
def test_near_misses_are_refused_from_48_px_up(kind: str) -> None:
    images = near_misses(kind, 16, seed=3, min_side=48)
    checks = [check_photo(img) for img in images]
    refused = [c for c in checks if c.reasons]
    assert len(refused) >= 15, [(img.size, c.detail and c.detail.failed) for img, c in zip(images, checks)]
    for c in refused:  # each reason is a sentence of its own
        assert all(r[0].isupper() and r.endswith(".") for r in c.reasons)


def test_plain_discs_are_refused_at_every_size() -> None:
    images = near_misses("plain disc", 24, seed=4)
    assert any(min(img.size) <= 32 for img in images)
    assert all(check_photo(img).reasons for img in images)
    plain = Image.new("RGB", (300, 300))
    plain.paste((220, 110, 40), mask=Image.fromarray((np.hypot(*np.mgrid[-150:150, -150:150]) < 140).astype(np.uint8) * 255))
    assert check_photo(plain).reasons == [detail.DETAIL_REASONS["flat"]]  # the plain orange disc


def test_a_disc_of_noise_is_called_noise() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:256, :256]
    disc = (np.hypot(x - 128, y - 128) < 120)[..., None]
    noise = Image.fromarray((rng.normal((200, 90, 40), 40, (256, 256, 3)) * disc).clip(0, 255).astype(np.uint8))
    found = detail.check_detail(noise)
    assert not found.ok and found.kind == "noise" and found.reason.startswith("It looks like noise")


def test_the_blur_is_scipys_gaussian_filter() -> None:
    """The check carries its own Gaussian (predict_onnx.py has no scipy): it must be scipy's."""
    rng = np.random.default_rng(1)
    y, m = rng.random((37, 52)), (rng.random((37, 52)) > 0.3).astype(np.float64)
    for sigma in detail.SIGMAS:
        want = ndimage.gaussian_filter(y * m, sigma, mode="constant", truncate=detail.GAUSS_TRUNCATE) / np.maximum(
            ndimage.gaussian_filter(m, sigma, mode="constant", truncate=detail.GAUSS_TRUNCATE), 1e-6)
        assert np.allclose(detail._smooth(y, m, sigma, {}), want, atol=1e-9)
