"""Is this a fundus photograph at all? Checks that need no model, run on every graded image.

**Field of view**: a fundus photograph is a bright disc on a dark background, about as wide
as it is tall. Noise, text, charts, scenes, strips and photos with the disc cropped away
fail it. Cheap: it reads a 64 x 64 copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """What is known about one graded image beyond its probabilities."""

    size: tuple[int, int]
    field_of_view: FieldOfView
    ood_score: float | None = None
    ood_threshold: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def features_ok(self) -> bool | None:
        if self.ood_score is None or self.ood_threshold is None:
            return None
        return self.ood_score <= self.ood_threshold

    @property
    def in_distribution(self) -> bool | None:
        """False when either check fails; None when only the field of view could be checked."""
        if not self.field_of_view.ok or self.features_ok is False:
            return False
        return self.features_ok

    def to_dict(self) -> dict:
        return {"in_distribution": self.in_distribution, "ood_score": self.ood_score,
                "ood_threshold": self.ood_threshold, "field_of_view": self.field_of_view.ok,
                "size": list(self.size), "warnings": list(self.warnings)}


NOT_LIKE_TRAINING = "This does not look like the photos the model was trained on"
