"""Near-misses for the retinal-detail check (bench/ood.py): pictures that pass for a fundus photo
at a glance (a lit, fundus-coloured disc on black in a camera's frame: square, 4:3 or 3:2, the
disc 85-100 % of the short side or cut at top and bottom) but hold no retinal detail; and the
project's real photos shown the ways a user might upload them, which must pass.

Short sides 28-1024 px; 60 % of the near-misses are JPEG-encoded at quality 30-95. Colours come
from real RetinaMNIST thumbnails or are drawn orange / red / brown; blurred photos are the
bundled sample photo (turned, mirrored, recoloured) or a RetinaMNIST photo, blurred by 3-5 % of
the disc's diameter.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

SIDES = (28, 32, 48, 64, 96, 128, 224, 256, 384, 512, 768, 1024)  # the frame's short side
SIZE_BANDS = ((0, 40, "28-32 px"), (40, 100, "48-96 px"), (100, 10**9, "128-1024 px"))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _u8(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def _frame(rng: np.random.Generator) -> tuple[int, int, float, float, float]:
    """(w, h, cx, cy, diameter) of a fundus camera-like frame."""
    short = int(rng.choice(SIDES))
    aspect = float(rng.choice([1.0, 1.0, 1.0, 4 / 3, 3 / 2]))
    w, h = int(round(short * aspect)), short
    if rng.random() < 0.2 and aspect > 1:
        d = h * rng.uniform(1.05, 1.2)  # a disc wider than the frame is tall: cut at top and bottom
    else:
        d = min(w, h) * rng.uniform(0.85, 1.0)
    return w, h, w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h, d


def _colour(rng: np.random.Generator, real: np.ndarray) -> np.ndarray:
    """A fundus colour: a real thumbnail's mean disc colour, jittered, or a drawn orange / red / brown."""
    if rng.random() < 0.5:
        x = real[int(rng.integers(0, len(real)))].astype(np.float64)
        lit = x.max(-1) > 40
        c = x[lit].mean(0) if lit.any() else np.array([200.0, 90, 40])
        return np.clip(c * rng.uniform(0.85, 1.15, 3), 0, 255)
    r = rng.uniform(140, 255)
    g = r * rng.uniform(0.25, 0.65)
    return np.array([r, g, g * rng.uniform(0.2, 0.8)])


def _grid(w: int, h: int, cx: float, cy: float, d: float):
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / (d / 2), xx, yy


def _disc(w: int, h: int, cx: float, cy: float, d: float) -> np.ndarray:
    """An anti-aliased disc mask (about 1 px soft edge)."""
    r, _, _ = _grid(w, h, cx, cy, d)
    return np.clip((1 - r) * d / 2 + 0.5, 0, 1)


def _finish(arr: np.ndarray, rng: np.random.Generator) -> Image.Image:
    img = _u8(arr)
    return jpeg(img, int(rng.integers(30, 96))) if rng.random() < 0.6 else img


def _shading(rng: np.random.Generator, w: int, h: int, cx: float, cy: float, d: float) -> np.ndarray:
    """A smooth brightness field: 1-3 of radial fall-off, a linear ramp, vignetting, broad glows."""
    r, xx, yy = _grid(w, h, cx, cy, d)
    f = np.ones_like(r)
    for k in rng.choice(["radial", "linear", "vignette", "glow"], size=int(rng.integers(1, 4)), replace=False):
        if k == "radial":  # a bright centre fading
            f = f * (1 - rng.uniform(0.3, 0.9) * np.clip(r, 0, 1) ** rng.uniform(0.7, 3))
        elif k == "linear":
            t = rng.uniform(0, 2 * np.pi)
            f = f * (1 + rng.uniform(0.2, 0.6) * ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / (d / 2))
        elif k == "vignette":
            f = f * np.cos(np.clip(r, 0, 1) * rng.uniform(0.6, 1.2)) ** 4
        else:  # smooth blobs like an optic disc or a macula: sigma 5-15 % of the diameter
            for _ in range(int(rng.integers(1, 4))):
                gx, gy = cx + rng.uniform(-0.35, 0.35) * d, cy + rng.uniform(-0.35, 0.35) * d
                s = rng.uniform(0.05, 0.15) * d
                f = f * (1 + rng.uniform(-0.5, 0.8) * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * s * s)))
    return np.clip(f, 0.05, 2.0)


def plain_disc(rng: np.random.Generator, real: np.ndarray, sample: Image.Image) -> Image.Image:
    """A uniform fundus-coloured disc; 30 % with faint sensor noise (0.5-3 grey levels)."""
    w, h, cx, cy, d = _frame(rng)
    arr = _disc(w, h, cx, cy, d)[..., None] * _colour(rng, real)
    if rng.random() < 0.3:
        arr = arr + rng.normal(0, rng.uniform(0.5, 3), (h, w, 1)) * (arr.max(-1, keepdims=True) > 0)
    return _finish(arr, rng)


def shaded_disc(rng: np.random.Generator, real: np.ndarray, sample: Image.Image) -> Image.Image:
    """A fundus-coloured disc under a smooth brightness field."""
    w, h, cx, cy, d = _frame(rng)
    f = _disc(w, h, cx, cy, d) * _shading(rng, w, h, cx, cy, d)
    return _finish(f[..., None] * _colour(rng, real), rng)


def blurred_fundus(rng: np.random.Generator, real: np.ndarray, sample: Image.Image) -> Image.Image:
    """The sample photo (turned, mirrored, recoloured) or a RetinaMNIST photo enlarged to 512 px,
    blurred by 3-5 % of the disc's diameter (30 % with 0.5-2 levels of sensor noise), shown at a
    short side of 28-1024 px (some 4:3 or 3:2 with black sides)."""
    if rng.random() < 0.5:
        src = sample.rotate(float(rng.uniform(0, 360)), Image.BILINEAR)
        if rng.random() < 0.5:
            src = src.transpose(Image.FLIP_LEFT_RIGHT)
        src, d = _u8(np.asarray(src, np.float64) * rng.uniform(0.75, 1.15, 3)), 0.985 * src.size[0]
    else:
        src, d = Image.fromarray(real[int(rng.integers(0, len(real)))]).resize((512, 512), Image.BICUBIC), 0.95 * 512
    src = src.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.05) * d))
    if rng.random() < 0.3:
        arr = np.asarray(src, np.float64)
        src = _u8(arr + rng.normal(0, rng.uniform(0.5, 2), arr.shape[:2] + (1,)))
    short = int(rng.choice(SIDES))
    img = src.resize((short, short), Image.LANCZOS)
    aspect = float(rng.choice([1.0, 1.0, 1.0, 4 / 3, 3 / 2]))
    if aspect > 1:
        canvas = Image.new("RGB", (int(round(short * aspect)), short))
        canvas.paste(img, ((canvas.size[0] - short) // 2, 0))
        img = canvas
    return jpeg(img, int(rng.integers(30, 96))) if rng.random() < 0.6 else img


def noise_disc(rng: np.random.Generator, real: np.ndarray, sample: Image.Image) -> Image.Image:
    """Noise in a disc on black: uniform, Gaussian (std 5-60 around a fundus colour) or smoothed
    'blobs' (sigma 0.5-4 % of the diameter); grey (40 %) or coloured; half of them shaded too."""
    w, h, cx, cy, d = _frame(rng)
    c = _colour(rng, real)
    mode = str(rng.choice(["uniform", "gaussian", "blobs"]))
    shape = (h, w, 1) if rng.random() < 0.4 else (h, w, 3)
    if mode == "uniform":
        x = rng.uniform(0, 255, shape) * np.ones((1, 1, 3)) if rng.random() < 0.5 else \
            c + rng.uniform(-1, 1, shape) * rng.uniform(15, 80)
    elif mode == "gaussian":
        x = c + rng.normal(0, 1, shape) * rng.uniform(5, 60)
    else:
        s = max(0.7, rng.uniform(0.005, 0.04) * d)
        n = rng.normal(0, 1, shape)
        n = np.stack([gaussian_filter(n[..., k], s, mode="wrap") for k in range(n.shape[-1])], -1)
        x = c + n / (n.std() + 1e-9) * rng.uniform(5, 40)
    if rng.random() < 0.5:
        x = x * _shading(rng, w, h, cx, cy, d)[..., None]
    return _finish(np.clip(x, 0, 255) * _disc(w, h, cx, cy, d)[..., None], rng)


NEAR_MISSES = {"plain disc": plain_disc, "smoothly shaded disc": shaded_disc,
               "heavily blurred fundus (3-5 % of the disc)": blurred_fundus, "disc of noise": noise_disc}


def sample_variants(sample: Image.Image) -> list[Image.Image]:
    """The bundled sample photo as it might be uploaded (all must pass): 28-1,411 px, each also
    as JPEG quality 10 / 20 / 40 / 75; turned 90 / 180 / 270; the disc cut at top and bottom; a
    4:3 frame; exposure x0.35 / 0.6 / 1.2; gamma 0.6 / 1.6; three colour casts; half contrast."""
    out = []
    for side in (1411, 1024, 768, 512, 384, 224, 128, 64, 48, 32, 28):
        im = sample if side == sample.width else sample.resize((side, side), Image.LANCZOS)
        out += [im] + [jpeg(im, q) for q in (10, 20, 40, 75)]
    out += [sample.rotate(a) for a in (90, 180, 270)]
    out.append(sample.crop((0, 120, sample.width, sample.height - 120)))
    canvas = Image.new("RGB", (sample.width * 4 // 3, sample.height))
    canvas.paste(sample, ((canvas.width - sample.width) // 2, 0))
    out.append(canvas)
    arr = np.asarray(sample, np.float64)
    lit = arr.max(-1, keepdims=True) > 30
    flat = np.where(lit, 0.5 * arr + 0.5 * arr[lit[..., 0]].mean(0), arr)  # half the contrast, same mean
    out += [_u8(arr * f) for f in (0.35, 0.6, 1.2)] + [_u8(255 * (arr / 255) ** g) for g in (0.6, 1.6)]
    out += [_u8(arr * np.array(c)) for c in ((1.0, 0.7, 0.6), (0.8, 1.1, 1.2), (1.1, 0.9, 0.5))]
    return out + [_u8(flat), _u8(flat).resize((512, 512), Image.LANCZOS)]


def enlarged(test_images: np.ndarray, side: int) -> list[Image.Image]:
    """RetinaMNIST test photos enlarged (bicubic) to ``side`` px."""
    return [Image.fromarray(x).resize((side, side), Image.BICUBIC) for x in test_images]


def band(img: Image.Image) -> str:
    """The size band of a picture's short side (SIZE_BANDS)."""
    return next(name for lo, hi, name in SIZE_BANDS if lo <= min(img.size) < hi)
