"""A run's exported grader on disk, read without torch: where it goes, whether a checked one is
there, and its files as a zip. ``export`` writes it; the Results page only reads it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from .. import runs

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}


PREPROCESSING = "preprocessing.json"


def default_folder(run_dir: Path, fmt: str) -> Path:
    """Where a run's export in ``fmt`` goes unless told otherwise: ``<run>/export/<fmt>``."""
    return Path(run_dir) / "export" / fmt


def read_export(folder: Path) -> dict | None:
    """preprocessing.json of a finished, checked export in ``folder``; None when there is none."""
    pre = runs.read_json(Path(folder) / PREPROCESSING)
    if not isinstance(pre, dict) or not (pre.get("verified") or {}).get("passed") \
            or not (Path(folder) / pre.get("model_file", "?")).is_file():
        return None
    return pre


def zip_folder(folder: Path) -> bytes:
    """The files of an export folder as a zip (for a download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                zf.write(path, f"{Path(folder).name}/{path.name}")
    return buf.getvalue()
