"""predict_onnx.py: a grader that needs only onnxruntime, numpy and Pillow. It carries the
package's own decoding, photo checks, resize, the one decision per photo (judging.decision),
the file walk, the batch tally and the CSV by source, so it answers exactly as the app does.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np
from PIL import Image

from .. import errors
from ..data import images, transforms
from ..data.transforms import RetinaPreprocess
from ..errors import ExportError
from ..judging import decision, detail, photo, trust
from . import batch, predictor


def prepare(img: Image.Image, size: int, crop: str = "none") -> np.ndarray:
    """A decoded RGB photo -> one row of the exported model's input, uint8 (size, size, 3): the
    retina crop first when the run used one, then Pillow's bilinear resize (what torchvision's
    Resize does to a PIL image, antialiased)."""
    if crop != "none":
        img = RetinaPreprocess(crop)(img)
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _carried() -> tuple:
    """What predict_onnx.py carries from the package, by source: decoding with the same checks,
    the retina crop, the field-of-view and retinal-detail checks, the resize, the decision, the
    batch-wide warnings, the file walk, the rows, the tally and the CSV."""
    return (errors.ImageError, images._describe, images._to_rgb, images._decode, images.load_image,
            transforms.field_of_view_box, transforms.RetinaPreprocess, prepare,
            photo.FieldOfView, photo._brightness, photo._radius, photo._corners_and_disc, photo.field_of_view,
            photo.ImageCheck, photo._sentence,
            detail.Detail, detail._ramp, detail._geometry, detail._gauss_matrix, detail._smooth, detail._working_copy,
            detail._measure, detail.check_detail,
            decision.OperatingPoint, decision.Decision, decision.referral_first, decision.decide, decision.check_photo,
            trust.is_usable_verdict, trust.warning, predictor.batch_warnings,
            batch.OutputError, batch.expand_inputs, batch.record, batch.csv_row, batch.Tally, batch.ResultsCsv)


def _constant(value) -> bool:
    if isinstance(value, (tuple, frozenset, set)):
        return all(_constant(v) for v in value)
    if isinstance(value, dict):
        return all(_constant(k) and _constant(v) for k, v in value.items())
    return isinstance(value, (bool, int, float, str, bytes))


def _literal(value) -> str:
    """``repr(value)``, the same in every process: a set's items sorted (a set of strings is
    ordered by their hashes, which change from one process to the next), so the same package
    writes the same predict_onnx.py."""
    if isinstance(value, (set, frozenset)):
        items = ", ".join(_literal(v) for v in sorted(value, key=repr))
        if not items:
            return f"{type(value).__name__}()"
        return f"frozenset({{{items}}})" if isinstance(value, frozenset) else f"{{{items}}}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def carried_source() -> str:
    """The carried objects' source, preceded by the module constants they read."""
    carried = _carried()
    names = {obj.__name__ for obj in carried}
    constants: dict = {}
    sources = []
    for obj in carried:
        source = textwrap.dedent(inspect.getsource(obj))
        module = vars(inspect.getmodule(obj))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and node.id not in names and _constant(module.get(node.id, ...)):
                if constants.setdefault(node.id, module[node.id]) != module[node.id]:
                    raise ExportError(f"{node.id} means two things in the code predict_onnx.py carries")
        sources.append(source)
    lines = [f"{name} = {_literal(value)}" for name, value in sorted(constants.items())]
    return "\n".join(lines) + "\n\n\n" + "\n\n".join(sources)


def standalone_script() -> str:
    """predict_onnx.py: the template below with the carried source in its middle."""
    return _SCRIPT_TEMPLATE.replace("# {carried}\n", carried_source())


_SCRIPT_TEMPLATE = '''#!/usr/bin/env python3
"""Grade fundus photographs with an exported retino diabetic-retinopathy grader.

Needs only onnxruntime, numpy and Pillow (pip install onnxruntime numpy pillow) and the
model.onnx and preprocessing.json beside this file:

    python predict_onnx.py photo.jpg photos/ "scans/**/*.png" --out grades.csv [--resume]

Files, folders (every file below them) and glob patterns; one row per file: its status (graded,
not graded, no usable model, unreadable), the grade and referral of a graded photo (referral
first: P(referable DR) against the run's threshold, then the most probable grade on that side),
the reasons a photo is not graded, the five probabilities, what the model would say (not a
grade), or the error that kept a file from being read. Without --out the rows are printed as
JSON lines. What holds for the whole batch (a model that is not usable, a threshold that
validation could not support) is said once, first; the counts come last.

Written by `python -m retino_core export`: the part between the lines is copied from retino,
so a photo is decoded, checked and resized exactly as the app does it.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageFilter, UnidentifiedImageError

# ---------------------------------------------------------------- copied from retino

# {carried}

# ---------------------------------------------------------------- this script


def load(folder: Path):
    """preprocessing.json and an onnxruntime session of the model it names."""
    pre = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
    return pre, ort.InferenceSession(str(folder / pre["model_file"]), providers=["CPUExecutionProvider"])


def grade_files(session, pre, items, tally=None) -> list:
    """One row (``record``) per (file, problem) of ``items``; a file that cannot be read gets its
    error. Each photo is checked and decided by the package's own ``check_photo`` and ``decide``."""
    rows, decoded = {}, []
    common = {"model": pre["run"], "verdict": pre["trust"]["verdict"]}
    for path, problem in items:
        try:
            if problem:
                raise ImageError(f"{path}: {problem}")
            decoded.append((path, load_image(path)))
        except ImageError as err:
            rows[path] = record(path, error=str(err), **common)
        except Exception as err:  # one odd file must not end the batch
            rows[path] = record(path, error=f"{path}: cannot be read ({type(err).__name__}: {err})", **common)
    sizes = {}
    if decoded:
        batch = np.stack([prepare(img, pre["image_size"], pre["crop"]) for _, img in decoded])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {pre["input"]["name"]: batch})))
        point = OperatingPoint.from_dict(pre["referable"])
        usable = is_usable_verdict(pre["trust"])
        threshold = (pre.get("ood") or {}).get("threshold")
        for k, (path, img) in enumerate(decoded):
            score = float(out["ood_score"][k]) if "ood_score" in out else None
            answer = decide(out["probabilities"][k], check_photo(img, score, threshold), point, usable)
            rows[path], sizes[path] = record(path, answer, **common), img.size
    if tally is not None:
        for path, _ in items:
            tally.add(rows[path], sizes.get(path))
    return [rows[path] for path, _ in items]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Grade fundus photographs with an exported retino grader.")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", help="write a CSV, one row per file (default: JSON lines on stdout)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out and grade the rest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parent,
                        help="the export folder (default: this script's)")
    args = parser.parse_args(argv)
    pre, session = load(args.model_dir)
    for line in batch_warnings(pre["trust"], OperatingPoint.from_dict(pre["referable"]), bool(pre.get("ood"))):
        print(f"warning: {line}", file=sys.stderr)
    items = expand_inputs(args.inputs)
    try:
        out = ResultsCsv(args.out, pre["run"], args.resume, args.overwrite) if args.out else None
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [item for item in items if out is None or not out.is_done(item[0])]
    tally, tty = Tally(pre["image_size"], skipped=len(items) - len(todo)), sys.stderr.isatty()
    try:
        for start in range(0, len(todo), args.batch_size):
            rows = grade_files(session, pre, todo[start:start + args.batch_size], tally)
            if out is None:
                for row in rows:
                    print(json.dumps(row), flush=True)
                continue
            out.write([csv_row(row) for row in rows])
            if tty:
                print(f"\\rgraded {min(start + args.batch_size, len(todo))} of {len(todo)}", end="", file=sys.stderr)
    finally:
        if out is not None:
            out.close()
    if out is not None and tty:
        print(file=sys.stderr)
    for line in tally.lines(args.out or ""):
        print(line, file=sys.stderr)
    return tally.exit_code


if __name__ == "__main__":
    sys.exit(main())
'''
