"""A corpus of bad inputs, made at test time: images, headerless CSVs, run names.

Every image entry says what must come out of it: ``"refuse"`` (a clear ImageError naming the
file and the reason) or ``"convert"`` (a valid picture in another mode or format that must be
turned into RGB and graded). Nothing here is a shipped binary; each entry is a function.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from conftest import fundus_image, jpeg_bytes


@dataclass(frozen=True)
class ImageCase:
    name: str
    suffix: str  # the file name's extension in the corpus (may lie about the content)
    make: Callable[[], bytes]
    expect: str  # "refuse" | "convert"
    match: str = ""  # a phrase the refusal must contain


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _fundus(size: int = 64) -> Image.Image:
    return fundus_image(size, seed=3, grade=2)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds a few bytes of data: a bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg_bytes(_fundus(32)))
    i = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(_fundus(256), quality=95)
    return data[: len(data) // 2]


def _cmyk_jpeg() -> bytes:
    return _save(_fundus().convert("CMYK"), "JPEG")


def _png16() -> bytes:
    arr = (np.asarray(_fundus().convert("L"), dtype=np.uint16) * 257)
    return _save(Image.fromarray(arr), "PNG")  # mode I;16


def _rgba_png() -> bytes:
    img = _fundus().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return _save(img, "PNG")


def _palette_png_transparent() -> bytes:
    img = _fundus().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=img.getpixel((0, 0)))  # the black corner


def _heic_like() -> bytes:
    # An ISO-BMFF 'ftyp' box of brand heic, as an iPhone photo starts; Pillow has no decoder.
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 200


def _ppm() -> bytes:
    return _save(_fundus(), "PPM")


def _gif_animated() -> bytes:
    frames = [_fundus(), fundus_image(64, seed=4, grade=1)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _rgb_jpeg() -> bytes:
    return jpeg_bytes(_fundus())


IMAGE_CASES: list[ImageCase] = [
    ImageCase("empty file", ".jpg", lambda: b"", "refuse", "empty"),
    ImageCase("truncated JPEG", ".jpg", _truncated_jpeg, "refuse", "truncated"),
    ImageCase("text file named .jpg", ".jpg", lambda: b"patient,grade\n10_left,2\n", "refuse",
              "not a recognised image"),
    ImageCase("random bytes named .png", ".png", lambda: bytes(np.random.default_rng(0).integers(
        0, 256, 4096, dtype=np.uint8)), "refuse", "not a recognised image"),
    ImageCase("PNG signature then garbage", ".png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
              "refuse", ""),
    ImageCase("1x1 image", ".png", lambda: _save(Image.new("RGB", (1, 1), (200, 90, 40)), "PNG"),
              "refuse", "too small"),
    ImageCase("decompression bomb PNG 40000x40000", ".png", lambda: png_header_only(40_000, 40_000),
              "refuse", "bomb"),
    ImageCase("oversized PNG 9000x9000 (over our limit, under Pillow's)", ".png",
              lambda: png_header_only(9_000, 9_000), "refuse", "over the limit"),
    ImageCase("decompression bomb JPEG 60000x60000", ".jpg", lambda: jpeg_with_size(60_000, 60_000),
              "refuse", "bomb"),
    ImageCase("HEIC photo", ".heic", _heic_like, "refuse", "HEIC"),
    ImageCase("PPM (a format Pillow reads, not allowed)", ".ppm", _ppm, "refuse", "not supported"),
    ImageCase("PNG with alpha", ".png", _rgba_png, "convert"),
    ImageCase("palette PNG with transparency", ".png", _palette_png_transparent, "convert"),
    ImageCase("greyscale JPEG", ".jpg", lambda: jpeg_bytes(_fundus().convert("L")), "convert"),
    ImageCase("16-bit greyscale PNG", ".png", _png16, "convert"),
    ImageCase("CMYK JPEG", ".jpg", _cmyk_jpeg, "convert"),
    ImageCase("TIFF", ".tif", lambda: _save(_fundus(), "TIFF"), "convert"),
    ImageCase("WebP", ".webp", lambda: _save(_fundus(), "WEBP"), "convert"),
    ImageCase("BMP", ".bmp", lambda: _save(_fundus(), "BMP"), "convert"),
    ImageCase("animated GIF (first frame)", ".gif", _gif_animated, "convert"),
    ImageCase("PNG named .jpg", ".jpg", lambda: _save(_fundus(), "PNG"), "convert"),
    ImageCase("plain RGB JPEG (control)", ".jpg", _rgb_jpeg, "convert"),
]
REFUSED = [c for c in IMAGE_CASES if c.expect == "refuse"]
CONVERTED = [c for c in IMAGE_CASES if c.expect == "convert"]


def image_ids(cases: list[ImageCase]) -> list[str]:
    return [c.name for c in cases]


# ---------------------------------------------------------------- headerless CSVs


@dataclass(frozen=True)
class CsvCase:
    """A change to a valid lab folder and what must come of it."""

    name: str
    files: Callable[[list[str], list[str]], dict[str, bytes]]  # (names, labels) -> train CSVs
    expect: str  # "refuse" | "accept"
    match: str = ""


def _lines(values: list[str], sep: str = "\n") -> bytes:
    return (sep.join(values) + sep).encode()


def _with(values: list[str], i: int, value: str) -> list[str]:
    out = list(values)
    out[i] = value
    return out


CSV_CASES: list[CsvCase] = [
    CsvCase("image file missing", lambda n, l: {"train_img.csv": _lines(_with(n, 3, "999_left"))},
            "refuse", "999_left"),
    CsvCase("label 5", lambda n, l: {"train_label.csv": _lines(_with(l, 4, "5"))}, "refuse", "line 5"),
    CsvCase("label -1", lambda n, l: {"train_label.csv": _lines(_with(l, 4, "-1"))}, "refuse", "line 5"),
    CsvCase("label 2.0", lambda n, l: {"train_label.csv": _lines(_with(l, 4, "2.0"))}, "refuse", "line 5"),
    CsvCase("label 'moderate'", lambda n, l: {"train_label.csv": _lines(_with(l, 4, "moderate"))},
            "refuse", "line 5"),
    CsvCase("label with 5000 digits", lambda n, l: {"train_label.csv": _lines(_with(l, 4, "1" * 5000))},
            "refuse", "line 5"),
    CsvCase("header line 'label'", lambda n, l: {"train_label.csv": _lines(["label"] + l[1:])},
            "refuse", "line 1"),
    CsvCase("labels one row short", lambda n, l: {"train_label.csv": _lines(l[:-1])},
            "refuse", "must list the same images"),
    CsvCase("names one row longer", lambda n, l: {"train_img.csv": _lines(n + ["77_left"])},
            "refuse", "must list the same images"),
    CsvCase("duplicated name", lambda n, l: {"train_img.csv": _lines(_with(n, 5, n[2]))},
            "refuse", "listed twice"),
    CsvCase("blank line inside", lambda n, l: {"train_label.csv": _lines(l[:3] + [""] + l[4:])},
            "refuse", "blank line"),
    CsvCase("two columns", lambda n, l: {"train_img.csv": _lines([f"{a},{b}" for a, b in zip(n, l)])},
            "refuse", "more than one value"),
    CsvCase("empty label file", lambda n, l: {"train_label.csv": b""}, "refuse", "empty"),
    CsvCase("not UTF-8", lambda n, l: {"train_img.csv": b"\xff\xfe\x00\x01" * 10}, "refuse", "UTF-8"),
    CsvCase("UTF-8 BOM", lambda n, l: {"train_img.csv": b"\xef\xbb\xbf" + _lines(n),
                                       "train_label.csv": b"\xef\xbb\xbf" + _lines(l)}, "accept"),
    CsvCase("CRLF line endings", lambda n, l: {"train_img.csv": _lines(n, "\r\n"),
                                               "train_label.csv": _lines(l, "\r\n")}, "accept"),
    CsvCase("trailing blank lines", lambda n, l: {"train_img.csv": _lines(n) + b"\n\n \n",
                                                  "train_label.csv": _lines(l) + b"\r\n\r\n"}, "accept"),
    CsvCase("no final newline", lambda n, l: {"train_label.csv": "\n".join(l).encode()}, "accept"),
]


# ---------------------------------------------------------------- run names and ids

HOSTILE_NAMES = [
    "../escape",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "..",
    ".",
    "",
    "$(touch PWNED)",
    "`touch PWNED`",
    "x; touch PWNED",
    "x && touch PWNED",
    "x | tee PWNED",
    "name\nwith newline",
    "trailing-newline\n",
    "nul\x00byte",
    "~root",
    "-rf",
    "C:\\Windows\\system32",
    "%2e%2e%2fescape",
    "..\\..\\escape",
]
