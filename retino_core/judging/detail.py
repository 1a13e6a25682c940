"""Is there retinal detail inside the field of view? A model-free check, numpy and Pillow only.

A plain orange disc on black passes the field-of-view check and may land near the training
photos in feature space. Every fundus photograph holds fine structure inside its disc (vessels,
the optic-disc rim, choroidal texture, lesions); this check refuses discs without it: plain and
smoothly shaded discs, photos too blurred to grade, and discs of noise.

How it measures
---------------
1. Geometry: the lit disc's centre and diameter D from a 64 px copy, as the field-of-view check
   reads it. Without a dark surround (a crop inside the disc, a white-cornered thumbnail), the
   disc inscribed in the frame.
2. Working size: the photo is area-averaged so that the disc is W = min(D, W_CAP = 48) px across;
   a smaller photo is measured as it is, never enlarged. A 28 px RetinaMNIST photo is measured
   at its own pixels, a 1,400 px photo at 48 px across the disc.
3. Bands: luminance smoothed with Gaussians of 1, 2, 4 and 8 working pixels, by a normalised
   convolution that reads only lit pixels inside 0.88 of the radius (neither the black surround
   nor the rim leaks in). Band k is the difference of consecutive levels; its RMS over the core
   (lit, inside 0.8 of the radius) over the core's mean luminance is its contrast E0..E3.
4. Statistics: E0 (fine contrast), whiteness E0/E1, rise E1/E2, sharpness E0/E2, the colour
   share (the first colour axis's share of the fine bands' variance) and the kurtosis of the
   two finest bands in local contrast.

The rule: any failing test refuses; the first in this order gives the reason. Two thresholds
move with W, linearly from W = 30 (RetinaMNIST's size, set on its 1,600 photos) to W = 44 (set
on the bundled sample photo and blurred copies of it).

=========  ============================================================  ======================
flat       E0 < 0.014 at W <= 30, falling to 0.006 at W >= 44             no fine detail at all
blurred    E0/E2 < 0.18 at W <= 30, rising to 0.50 at W >= 44;            fine detail much weaker
           or E0/E1 < 0.44                                                than mid-scale detail
noise      E0/E1 > 3.5; or colour share < 0.45; or (W >= 40) kurtosis     fine detail without the
           < 4.0; or E1/E2 > 1.2 (W < 40), > 1.5 (W >= 40)                structure of vessels
=========  ============================================================  ======================

Measuring at min(D, 48) means a photo must be about as sharp as its size allows, up to 48 px
across the disc: for a large photo the boundary is a Gaussian blur of about 2 % of D. A small
photo enlarged (a 28 px thumbnail shown at 224 px) has the spectrum of a photo blurred by about
3 % of its disc and is refused as too blurred; its reason says to upload the original. Below
about 40 px across the disc, a heavy blur or a smooth glow looks much like RetinaMNIST's own
photos, and only part of them are refused there (README, "Photos with no retinal detail").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .photo import _corners_and_disc

DETAIL_W_CAP = 48  # the disc is measured at min(its size, this) pixels across
R_MASK = 0.88  # smoothing reads lit pixels inside this share of the radius (no rim, no surround)
R_CORE = 0.80  # contrasts are measured inside this share (a blurred or vignetted rim stays out)
SIGMAS = (1.0, 2.0, 4.0, 8.0)  # working-pixel Gaussian scales between the bands E0 | E1 | E2 | E3
GAUSS_TRUNCATE = 3.0  # kernel radius in sigmas
MIN_CORE_PIXELS = 20  # fewer measured pixels: "unmeasured" and passed (the field of view refuses those)
LUMA = (0.299, 0.587, 0.114)

# Thresholds and the photos they were set on (README, "Photos with no retinal detail").
FLAT_MIN_SMALL = 0.014  # E0 up to W = 30: RetinaMNIST's lowest of 1,600 is 0.0163; a plain disc ~0
FLAT_MIN_LARGE = 0.006  # E0 from W = 44: a floor only (the contrast-free sharpness test does the rest)
WHITE_MIN = 0.44  # E0/E1 under it: the finest band missing; RetinaMNIST's lowest 0.498, the sample >= 1.08
WHITE_MAX = 3.5  # E0/E1 over it: white noise (4-5); RetinaMNIST's highest 3.25 after JPEG q50
COLOUR_SHARE_MIN = 0.45  # independent colour noise 0.33-0.45; RetinaMNIST's lowest 0.505, the sample >= 0.72
GAUSS_MIN_W = 40  # below this the kurtosis of a few hundred pixels is too unsteady (thumbnails 1.9-63)
GAUSS_MAX_KURTOSIS = 4.0  # Gaussian noise ~3 (95 % <= 3.6); the sample photo >= 5.2 (vessels)
RISE_MAX = 1.2  # E1/E2 where W < GAUSS_MIN_W: noise blobs 1.3-2; RetinaMNIST's highest 0.94
RISE_MAX_LARGE = 1.5  # E1/E2 from GAUSS_MIN_W on: JPEG ringing on a plain disc 1.9-2.3; the sample <= 0.80
SHARP_MIN_SMALL, SHARP_W_SMALL = 0.18, 30.0  # E0/E2 up to 30 px across: thumbnails' lowest 0.214
SHARP_MIN_LARGE, SHARP_W_LARGE = 0.50, 44.0  # from 44 px: the sample >= 0.85; blur of 3-5 % of D <= 0.37

DETAIL_REASONS = {
    "flat": "There is no retinal detail inside the field of view: it looks like a plain or smoothly shaded "
            "disc, or a photo far too blurred to grade.",
    "blurred": "It is too blurred to grade: the disc holds much less fine detail than a sharp fundus photo of "
               "this size (if it is a small photo enlarged, grade the original file).",
    "noise": "It looks like noise, not a retina: the fine detail inside the disc has no structure (no vessels).",
}


@dataclass
class Detail:
    """What the retinal-detail check measured, and its verdict."""

    ok: bool
    kind: str  # "ok", "flat", "blurred", "noise", or "unmeasured" (too few pixels: passed)
    reason: str  # one sentence for the user; "" when ok
    disc_px: float  # the disc's diameter in the photo's pixels
    work_px: float  # the diameter at which it was measured: min(disc_px, DETAIL_W_CAP)
    contrast: tuple = ()  # E0..E3
    sharpness: float = float("nan")  # E0 / E2
    whiteness: float = float("nan")  # E0 / E1
    rise: float = float("nan")  # E1 / E2
    colour_share: float = float("nan")
    kurtosis: float = float("nan")
    failed: list = field(default_factory=list)  # every test that failed, not only the first

    def to_dict(self) -> dict:
        return asdict(self)


def _ramp(work_px: float, small: float, large: float) -> float:
    """``small`` up to W = SHARP_W_SMALL, ``large`` from SHARP_W_LARGE on, linear between."""
    t = min(max((work_px - SHARP_W_SMALL) / (SHARP_W_LARGE - SHARP_W_SMALL), 0.0), 1.0)
    return float(small + t * (large - small))


def _geometry(img: Image.Image) -> tuple[float, float, float, float | None]:
    """(cx, cy, diameter, brightness threshold or None) of the lit disc, in ``img``'s pixels."""
    w, h = img.size
    lum, _, outside, inside = _corners_and_disc(img)
    if inside - outside < 0.05:  # no dark surround: the disc inscribed in the frame
        return w / 2, h / 2, float(min(w, h)), None
    thr = outside + 0.25 * (inside - outside)
    lit = lum > thr
    side = lum.shape[0]
    cols, rows = np.flatnonzero(lit.mean(0) > 0.1), np.flatnonzero(lit.mean(1) > 0.1)
    if len(cols) == 0 or len(rows) == 0:
        return w / 2, h / 2, float(min(w, h)), None
    x0, x1 = cols[0] / side * w, (cols[-1] + 1) / side * w
    y0, y1 = rows[0] / side * h, (rows[-1] + 1) / side * h
    # The widest extent: a disc cut at the top and bottom of the frame keeps its width.
    return (x0 + x1) / 2, (y0 + y1) / 2, float(max(x1 - x0, y1 - y0)), thr


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian blur with zeros beyond the edges (scipy.ndimage's
    gaussian_filter with mode="constant", truncate=GAUSS_TRUNCATE, as a matrix product)."""
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def _smooth(y: np.ndarray, m: np.ndarray, sigma: float, cache: dict) -> np.ndarray:
    """Gaussian blur of ``y`` reading only where ``m`` is 1 (a normalised convolution)."""
    if sigma not in cache:
        rows, cols = _gauss_matrix(y.shape[0], sigma), _gauss_matrix(y.shape[1], sigma)
        cache[sigma] = (rows, cols, np.maximum(rows @ m @ cols.T, 1e-6))
    rows, cols, weight = cache[sigma]
    return (rows @ (y * m) @ cols.T) / weight


def _working_copy(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The photo at its working size (RGB in 0..1), the radius of each pixel in disc radii, which
    pixels are lit, the disc's diameter in the photo's pixels and at the working size."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    k = max(1, min(img.size) // 128)  # one integer box reduction serves the geometry and the copy
    base = img.reduce(k) if k > 1 else img
    cx, cy, d, thr = _geometry(base)
    w, h = base.size
    s = min(1.0, DETAIL_W_CAP / max(d, 1.0))
    work = base.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX) if s < 1 else base
    nw, nh = work.size
    a = np.asarray(work, np.float64) / 255.0
    yy, xx = np.mgrid[:nh, :nw]
    r = np.hypot((xx + 0.5) * (w / nw) - cx, (yy + 0.5) * (h / nh) - cy) / (d / 2)
    lit = a.max(-1) > thr if thr is not None else np.ones(r.shape, bool)
    return a, r, lit, d * img.size[0] / w, d * s


def _measure(a: np.ndarray, r: np.ndarray, lit: np.ndarray) -> dict:
    """Band contrasts and their statistics over the core of the disc (see the module's doc)."""
    core = lit & (r < R_CORE)
    m = (lit & (r < R_MASK)).astype(np.float64)
    cache: dict = {}
    y = a @ np.asarray(LUMA)
    mean = max(float(y[core].mean()), 1e-3)
    levels = [y] + [_smooth(y, m, sigma, cache) for sigma in SIGMAS]
    bands = [levels[k] - levels[k + 1] for k in range(len(SIGMAS))]
    e = [float(np.sqrt(np.mean(b[core] ** 2))) / mean for b in bands]
    local = np.maximum(levels[-1], 1e-3)  # the two finest bands in local (Weber) contrast
    kurtosis = min(float(np.mean((b / local)[core] ** 4) / max(np.mean((b / local)[core] ** 2) ** 2, 1e-9))
                   for b in bands[:2])
    fine = a - np.stack([_smooth(a[..., c], m, SIGMAS[1], cache) for c in range(3)], -1)  # bands 0 + 1, RGB
    eig = np.linalg.eigvalsh(np.cov(fine[core].T))
    share = float(eig[-1] / eig.sum()) if eig.sum() > 1e-9 else 1.0
    tiny = 1e-9
    return {"contrast": tuple(round(v, 5) for v in e), "sharpness": e[0] / max(e[2], tiny),
            "whiteness": e[0] / max(e[1], tiny), "rise": e[1] / max(e[2], tiny), "colour_share": share,
            "kurtosis": kurtosis}


def check_detail(img: Image.Image) -> Detail:
    """Measure the retinal detail inside ``img``'s field of view and judge it (the module's doc)."""
    a, r, lit, disc_px, work_px = _working_copy(img)
    found = Detail(True, "unmeasured", "", disc_px, work_px)
    if int((lit & (r < R_CORE)).sum()) < MIN_CORE_PIXELS:
        return found
    for key, value in _measure(a, r, lit).items():
        setattr(found, key, value)
    e0 = found.contrast[0]
    # The order sets the reason given: flat, then blurred, then noise, so that a shaded disc or
    # a blurred photo whose faint residue looks like noise is called what it is.
    tests = [("flat", "flat", e0 < _ramp(work_px, FLAT_MIN_SMALL, FLAT_MIN_LARGE)),
             ("blurred", "blurred", found.sharpness < _ramp(work_px, SHARP_MIN_SMALL, SHARP_MIN_LARGE)),
             ("blurred", "unsharp", found.whiteness < WHITE_MIN),
             ("noise", "white", found.whiteness > WHITE_MAX),
             ("noise", "colour", found.colour_share < COLOUR_SHARE_MIN),
             ("noise", "gaussian", work_px >= GAUSS_MIN_W and found.kurtosis < GAUSS_MAX_KURTOSIS),
             ("noise", "rising", found.rise > (RISE_MAX if work_px < GAUSS_MIN_W else RISE_MAX_LARGE))]
    found.failed = [name for _, name, bad in tests if bad]
    found.kind = next((kind for kind, _, bad in tests if bad), "ok")
    found.ok = found.kind == "ok"
    found.reason = DETAIL_REASONS.get(found.kind, "")
    return found
