"""Figures as PNG files, drawn with Pillow (no browser, no plotly image export): for places
that show an image and nothing interactive, such as an MLflow run's artifacts."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import GRADE_NAMES, NUM_CLASSES
from .figures import row_shares


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def confusion_png(matrix, title: str = "", cell: int = 84) -> bytes:
    """A confusion matrix (rows: true grade, columns: predicted) as a PNG: each cell's count and
    share of its row, shaded by that share, the diagonal outlined."""
    m = np.asarray(matrix, dtype=int).reshape(NUM_CLASSES, NUM_CLASSES)
    shares = row_shares(m)
    left, top = 150, 70 if title else 40
    width, height = left + NUM_CLASSES * cell + 20, top + NUM_CLASSES * cell + 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    small, big = _font(13), _font(16)
    if title:
        draw.text((10, 10), title, fill="#222222", font=big)
    for j, name in enumerate(GRADE_NAMES):  # predicted grade along the top
        draw.text((left + j * cell + cell / 2, top - 8), f"{j} {name}", fill="#444444", font=small, anchor="md")
    for i, name in enumerate(GRADE_NAMES):
        draw.text((left - 10, top + i * cell + cell / 2), f"{i} {name} ({m[i].sum()})", fill="#444444", font=small,
                  anchor="rm")
        for j in range(NUM_CLASSES):
            share = float(shares[i, j]) if np.isfinite(shares[i, j]) else 0.0
            shade = tuple(int(255 - share * (255 - c)) for c in (31, 90, 160))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=shade, outline="#d62728" if i == j else "#dddddd", width=3 if i == j else 1)
            ink = "white" if share > 0.55 else "#222222"
            centre = (box[0] + cell / 2, box[1] + cell / 2)
            draw.text((centre[0], centre[1] - 9), f"{m[i, j]}", fill=ink, font=big, anchor="mm")
            draw.text((centre[0], centre[1] + 11), f"{share:.0%}", fill=ink, font=small, anchor="mm")
    draw.text((left + NUM_CLASSES * cell / 2, top + NUM_CLASSES * cell + 16), "predicted grade (columns); "
              "true grade (rows, with their images); shade and % = share of the row", fill="#444444", font=small, anchor="mt")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
