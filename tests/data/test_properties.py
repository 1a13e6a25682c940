"""Property-based tests of the two doors every byte of user data goes through: the headerless
CSV reader (``read_column`` / ``parse_grades``) and the image decoder (``load_image``).
Random input must give a clean error of the documented type or a valid result, never a crash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from badinput import CONVERTED
from retino_core.errors import DataError, ImageError
from retino_core.data.images import load_image
from retino_core.data.layouts import parse_grades, read_column

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- read_column


@FAST
@given(raw=st.binary(max_size=2000))
@example(raw=b"\xef\xbb\xbf")
@example(raw=b"\r\n\r\n")
@example(raw=b"a\x85b\n")
def test_read_column_on_random_bytes(raw: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("col") / "train_img.csv"
    path.write_bytes(raw)
    try:
        values = read_column(path)
    except DataError as err:
        assert "train_img.csv" in str(err)
        return
    assert values and all(v and v == v.strip() and "," not in v for v in values)


NAME = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-."),
               min_size=1, max_size=20)


@FAST
@given(names=st.lists(NAME, min_size=1, max_size=50), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), trailing=st.integers(0, 3), final=st.booleans())
def test_read_column_round_trips_what_real_csvs_look_like(names, bom, newline, trailing, final,
                                                          tmp_path_factory) -> None:
    text = newline.join(names) + (newline if final else "") + newline * trailing
    path = tmp_path_factory.mktemp("col") / "names.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    assert read_column(path) == names


# ---------------------------------------------------------------- parse_grades


@FAST
@given(values=st.lists(st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12),
                                 st.floats(allow_nan=True), st.none()), max_size=30))
@example(values=["1" * 5000])
@example(values=["٣"])  # an Arabic-Indic digit three: not a grade in a CSV
@example(values=[" 2 ", "+3", "04"])
def test_parse_grades_on_anything(values) -> None:
    try:
        grades = parse_grades(values, "labels.csv")
    except DataError as err:
        assert "labels.csv" in str(err) and "line " in str(err)
        return
    assert grades.dtype == np.int64 and len(grades) == len(values)
    assert ((grades >= 0) & (grades <= 4)).all()
    assert [int(str(v).strip()) for v in values] == grades.tolist()


@FAST
@given(grades=st.lists(st.integers(0, 4), min_size=1, max_size=50), bad=st.integers(0, 49),
       value=st.sampled_from(["5", "-1", "2.0", "moderate", "", "1e0", "0x1", "١"]))
def test_one_bad_grade_is_reported_with_its_row(grades, bad, value) -> None:
    bad %= len(grades)
    values = [str(g) for g in grades]
    values[bad] = value
    with pytest.raises(DataError, match=rf"line {bad + 1}: "):
        parse_grades(values, "train_label.csv")


# ---------------------------------------------------------------- load_image


def _check_decoded(data: bytes) -> None:
    try:
        img = load_image(data, "upload.jpg")
    except ImageError as err:
        assert str(err).startswith("upload.jpg: ")
        return
    assert isinstance(img, Image.Image) and img.mode == "RGB" and min(img.size) >= 16
    np.asarray(img)  # the pixels are really there


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=4096))
def test_load_image_on_random_bytes(data: bytes) -> None:
    _check_decoded(data)


SEEDS = [c.make() for c in CONVERTED]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it skips
@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(range(len(SEEDS))),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.sampled_from("sdi")),
                      min_size=1, max_size=8),
       cut=st.floats(0.05, 1.0))
def test_load_image_on_damaged_valid_images(seed: int, edits, cut: float) -> None:
    """Valid JPEG/PNG/TIFF/WebP/BMP/GIF bytes with a few bytes changed, dropped or inserted."""
    data = bytearray(SEEDS[seed][: max(1, int(len(SEEDS[seed]) * cut))])
    for where, byte, op in edits:
        i = int(where * len(data))
        if op == "s" and data:
            data[min(i, len(data) - 1)] = byte
        elif op == "d":
            del data[i:i + 1 + byte % 16]
        else:
            data[i:i] = bytes([byte]) * (1 + byte % 4)
    _check_decoded(bytes(data))


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]),
       fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "WEBP", "BMP", "GIF"]),
       w=st.integers(1, 80), h=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_load_image_on_every_mode_pillow_can_save(mode, fmt, w, h, seed) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format
    data = buf.getvalue()
    if min(w, h) >= 16:
        out = load_image(data)  # a valid image at a usable size must always convert
        assert out.mode == "RGB" and out.size == (w, h)
    else:
        with pytest.raises(ImageError, match="too small"):
            load_image(data)
