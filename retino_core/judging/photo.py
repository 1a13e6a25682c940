"""Is this a fundus photograph at all? Checks that need no model, run on every graded image.

**Field of view**: a fundus photograph is a bright disc on a dark background, about as wide
as it is tall. Noise, text, charts, scenes, strips and photos with the disc cropped away
fail it. Cheap: it reads a 64 x 64 copy. (The retinal detail inside the disc is judged by
``judging.detail``; ``ImageCheck`` holds both and the feature distance, and says why a photo
is not graded.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

FOV_SIDE = 64


MAX_ASPECT = 2.0  # fundus cameras give 1:1 to 3:2 frames; a 10:1 strip is no photo of an eye


# Brightness is each pixel's brightest channel, 0..1. The corners of a fundus photo are camera
# black; RetinaMNIST's and EyePACS's stay under 0.05, glare and JPEG noise allowed for here.
FOV_DARK_OUTSIDE = 0.20


FOV_MIN_CONTRAST = 0.05  # the disc must be brighter than the corners by this much


FOV_MIN_COVERAGE = 0.60  # share of the inscribed disc that is lit


@dataclass
class FieldOfView:
    ok: bool
    reason: str = ""
    outside: float = 0.0  # mean brightness outside the inscribed ellipse (the corners)
    disc: float = 0.0  # mean brightness inside it
    coverage: float = 0.0  # share of the ellipse brighter than the corners


def _brightness(img: Image.Image, side: int) -> np.ndarray:
    small = img.convert("RGB").resize((side, side), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).max(-1) / 255.0


def _radius(side: int) -> np.ndarray:
    """Normalised distance from the centre: 1 on the ellipse inscribed in the frame."""
    c = (np.arange(side) + 0.5) / side * 2 - 1
    return np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)


def _corners_and_disc(img: Image.Image) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A FOV_SIDE copy's brightness, its radius map, and the mean brightness outside the
    inscribed ellipse (the corners) and inside its middle (the disc)."""
    lum = _brightness(img, FOV_SIDE)
    r = _radius(FOV_SIDE)
    return lum, r, float(lum[r > 1.05].mean()), float(lum[r < 0.8].mean())


def field_of_view(img: Image.Image) -> FieldOfView:
    """Whether ``img`` looks like a fundus photograph: a lit disc, dark corners, near square."""
    w, h = img.size
    aspect = max(w, h) / max(min(w, h), 1)
    if aspect > MAX_ASPECT:
        return FieldOfView(False, f"it is a {w}×{h} image ({aspect:.1f}:1); a fundus photograph is close to square")
    lum, r, outside, disc = _corners_and_disc(img)
    lit = lum[r < 0.95] > outside + 0.5 * max(disc - outside, FOV_MIN_CONTRAST)
    coverage = float(lit.mean())
    found = FieldOfView(True, "", outside, disc, coverage)
    if outside > FOV_DARK_OUTSIDE:
        found.ok, found.reason = False, (f"its corners are not dark (brightness {outside:.2f}, a fundus photo's are "
                                         f"under {FOV_DARK_OUTSIDE:.2f}): no round field of view on a black background")
    elif disc < outside + FOV_MIN_CONTRAST:
        found.ok, found.reason = False, "there is no lit disc in the middle: the image is dark all over"
    elif coverage < FOV_MIN_COVERAGE:
        found.ok, found.reason = False, (f"only {coverage:.0%} of the central disc is lit (a fundus photo fills "
                                         "it): it looks like something small on a dark background")
    return found


def field_of_view_mask(img: Image.Image) -> np.ndarray:
    """Boolean (H, W) mask of the lit field of view, at the image's size (Grad-CAM is cut to it)."""
    w, h = img.size
    lum = np.asarray(img.convert("RGB"), dtype=np.float32).max(-1) / 255.0
    _, _, outside, disc = _corners_and_disc(img)
    threshold = outside + 0.25 * max(disc - outside, FOV_MIN_CONTRAST)
    mask = Image.fromarray(((lum > threshold) * 255).astype(np.uint8))
    # A median filter closes the dark vessels and lesions inside the disc; they are in view.
    from PIL import ImageFilter

    size = max(3, (min(w, h) // 40) | 1)
    return np.asarray(mask.filter(ImageFilter.MedianFilter(min(size, 9)))) > 127


@dataclass
class ImageCheck:
    """What is known about one photo beyond its probabilities: its field of view, its retinal
    detail (``judging.detail.Detail``; None when not measured) and its feature distance."""

    size: tuple[int, int]
    field_of_view: FieldOfView
    detail: object | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None

    @property
    def features_ok(self) -> bool | None:
        if self.ood_score is None or self.ood_threshold is None:
            return None
        return self.ood_score <= self.ood_threshold

    @property
    def detail_ok(self) -> bool | None:
        return None if self.detail is None else bool(self.detail.ok)

    @property
    def in_distribution(self) -> bool | None:
        """False when any check fails; None when the features could not be checked."""
        if not self.field_of_view.ok or self.detail_ok is False or self.features_ok is False:
            return False
        return self.features_ok

    @property
    def reasons(self) -> list[str]:
        """Why the photo is not graded, one sentence per failed check; empty when it passes."""
        out = []
        if not self.field_of_view.ok:
            out.append(_sentence(self.field_of_view.reason))
        if self.detail_ok is False:
            out.append(self.detail.reason)
        if self.features_ok is False:
            out.append(f"{FAR_FROM_TRAINING} (distance {self.ood_score:.0f}, while 99 % of validation photos are "
                       f"under {self.ood_threshold:.0f}): another camera, resolution or population than the "
                       "training photos.")
        return out


def _sentence(text: str) -> str:
    """``text`` as a sentence of its own: capital first letter, full stop at the end."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


FAR_FROM_TRAINING = "Its features lie far from every grade the model learned"


# A photo this many times the model's input size (on its short side) is said to be shrunk.
THUMBNAIL_FACTOR = 4


def thumbnail_note(size: tuple[int, int], image_size: int, learned: str = "") -> str | None:
    """What is lost when a photo of ``size`` is shown to the model at ``image_size``; None when
    the photo is less than THUMBNAIL_FACTOR times that on its short side."""
    w, h = size
    if min(w, h) < THUMBNAIL_FACTOR * image_size:
        return None
    return (f"This {w}×{h} photo is graded as a {image_size}×{image_size} thumbnail: detail finer than about "
            f"{max(w, h) // image_size} px of it is lost to the model" + (f", which {learned}." if learned else "."))
