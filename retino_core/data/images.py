"""Decoding one image file or upload into an RGB photo, with every refusal named.

No torch import: the pages decode uploads and samples with it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, ImageError
from .problems import first as _first

ASSETS = Path(__file__).resolve().parents[1] / "assets"


RETINAMNIST_NPZ = ASSETS / "retinamnist.npz"


SAMPLE_IMAGE = ASSETS / "retina_normal_cc0.jpg"


ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "BMP", "WEBP", "MPO", "GIF"}


# Pillow's own bomb check is 2x89M pixels; a fundus photo is rarely over 20M.
MAX_IMAGE_PIXELS = 64_000_000


MIN_IMAGE_SIDE = 16


# Uploads over this are refused in code; .streamlit/config.toml caps the upload widget too
# (server.maxUploadSize, in MB), and the Classify page should pass bytes to load_image.
MAX_UPLOAD_MB = 20  # the same as server.maxUploadSize in .streamlit/config.toml


MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024


def _describe(source: str | os.PathLike | bytes, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray)):
        return "uploaded image"
    return str(source)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited on black (the fundus background)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if img.mode == "F":
            scale = 255.0 / hi if hi > 0 else 1.0
        else:  # 16-bit: keep 8-bit data as it is, scale the full 16-bit range down
            scale = 255.0 / 65535.0 if hi > 255 else 1.0
        arr8 = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # a decoded RGB photo needs no copy


def load_image(source: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """Decode a file path or bytes into an RGB image, or raise ImageError saying why.

    Refuses empty, truncated and non-image files, formats other than ALLOWED_FORMATS,
    decompression bombs (over MAX_IMAGE_PIXELS), images under MIN_IMAGE_SIDE pixels and
    uploaded bytes over MAX_UPLOAD_BYTES.
    """
    label = _describe(source, name)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageError(
                f"{label}: {len(data) / 2**20:.1f} MB is over the upload limit of "
                f"{MAX_UPLOAD_MB} MB; a fundus photograph is rarely over 10 MB"
            )
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{label}: file not found") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a folder, not an image file") from None
        except OSError as err:
            raise ImageError(f"{label}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise ImageError(f"{label}: the file is empty (0 bytes)")
    return _decode(io.BytesIO(data), label)


def check_image(path: str | os.PathLike, deep: bool = False) -> None:
    """Raise ImageError if ``path`` is not a usable image.

    The quick check reads only the header (format, size, bombs), which is what a scan of
    tens of thousands of files can afford; ``deep`` decodes every pixel (finds truncation).
    """
    if deep:
        load_image(path)
        return
    label = str(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageError(f"{label}: the file is empty (0 bytes)")
            _decode(fh, label, load=False)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except OSError as err:
        raise ImageError(f"{label}: cannot be read ({err.strerror or err})") from None


def check_images(paths: Sequence[str | os.PathLike], where: str, deep: bool = False) -> None:
    """Check every image in ``paths``; one DataError names the bad ones (first few + count)."""
    bad = []
    for p in paths:
        try:
            check_image(p, deep)
        except ImageError as err:
            bad.append(str(err))
    if bad:
        raise DataError(
            f"{len(bad):,} of {len(paths):,} images in {where} cannot be used: {_first(bad)}"
        )


def _decode(fh, label: str, load: bool = True) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise ImageError(
                    f"{label}: {fmt} images are not supported; "
                    "use JPEG or PNG (TIFF, BMP and WebP are converted too)"
                )
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{label}: {w}x{h} pixels is over the limit of {MAX_IMAGE_PIXELS:,} pixels "
                    "(a decompression bomb or a needlessly huge image); resize it first"
                )
            if min(w, h) < MIN_IMAGE_SIDE:
                raise ImageError(
                    f"{label}: {w}x{h} pixels is too small; a fundus photograph needs at least "
                    f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
                )
            if not load:
                return img
            img.load()
            return _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        fh.seek(4)
        if fh.read(8)[:4] == b"ftyp":  # ISO-BMFF: HEIC/HEIF/AVIF, as phones save photos
            raise ImageError(
                f"{label}: HEIC/HEIF/AVIF photos are not supported; export or convert it to JPEG"
            ) from None
        raise ImageError(
            f"{label}: not a recognised image file (expected JPEG, PNG, TIFF, WebP, BMP or GIF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{label}: broken or truncated image ({err})") from None
