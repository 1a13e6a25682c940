"""predict_onnx.py: a grader that needs only onnxruntime, numpy and Pillow. It carries the
package's own decoding, checks, resize, file walk and CSV by source, so it answers exactly
as the app does.
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
from ..judging import photo
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
    the retina crop, the field-of-view check, the resize, the file walk and the CSV."""
    return (errors.ImageError, images._describe, images._to_rgb, images._decode, images.load_image,
            transforms.field_of_view_box, transforms.RetinaPreprocess, prepare,
            photo.FieldOfView, photo._brightness, photo._radius, photo._corners_and_disc, photo.field_of_view,
            batch.OutputError, batch.expand_inputs, batch.result_row, batch.ResultsCsv)


def _constant(value) -> bool:
    if isinstance(value, (tuple, frozenset, set)):
        return all(_constant(v) for v in value)
    return isinstance(value, (bool, int, float, str, bytes))


def carried_source() -> str:
    """The carried objects' source, preceded by the module constants they read."""
    carried = _carried()
    names = {obj.__name__ for obj in carried}
    constants = {"NOT_LIKE_TRAINING": photo.NOT_LIKE_TRAINING, "THUMBNAIL_FACTOR": predictor.THUMBNAIL_FACTOR}
    sources = []
    for obj in carried:
        source = textwrap.dedent(inspect.getsource(obj))
        module = vars(inspect.getmodule(obj))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and node.id not in names and _constant(module.get(node.id, ...)):
                if constants.setdefault(node.id, module[node.id]) != module[node.id]:
                    raise ExportError(f"{node.id} means two things in the code predict_onnx.py carries")
        sources.append(source)
    lines = [f"{name} = {value!r}" for name, value in sorted(constants.items())]
    return "\n".join(lines) + "\n\n\n" + "\n\n".join(sources)


def standalone_script() -> str:
    """predict_onnx.py: the template below with the carried source in its middle."""
    return _SCRIPT_TEMPLATE.replace("# {carried}\n", carried_source())


_SCRIPT_TEMPLATE = '''#!/usr/bin/env python3
"""Grade fundus photographs with an exported retino diabetic-retinopathy grader.

Needs only onnxruntime, numpy and Pillow (pip install onnxruntime numpy pillow) and the
model.onnx and preprocessing.json beside this file:

    python predict_onnx.py photo.jpg photos/ "scans/**/*.png" --out grades.csv [--resume]

Files, folders (every file below them) and glob patterns; one row per file, with the five
probabilities, the grade, P(referable DR) and whether it passes the threshold chosen on
validation, the image checks and warnings, or the error that kept a file from being graded.
Without --out the rows are printed as JSON lines. A model that is not usable says so first.

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
from dataclasses import dataclass
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


def check(img, score, pre) -> tuple:
    """Whether the photo is like the training ones (its field of view; the distance of its
    features, when the model gives one), and the warnings to show with its grade."""
    notes, fov = [], field_of_view(img)
    if not fov.ok:
        notes.append(f"{NOT_LIKE_TRAINING}: {fov.reason}.")
    threshold = (pre.get("ood") or {}).get("threshold")
    near = None if score is None or threshold is None else score <= threshold
    if near is False:
        notes.append(f"{NOT_LIKE_TRAINING}: its features lie far from every grade the model learned "
                     f"(distance {score:.0f}; 99 % of validation photos are under {threshold:.0f}).")
    size, (w, h) = pre["image_size"], img.size
    if min(w, h) >= THUMBNAIL_FACTOR * size:
        notes.append(f"This {w}x{h} photo is graded as a {size}x{size} thumbnail: detail finer than "
                     f"about {max(w, h) // size} px is lost to the model.")
    return (False if not fov.ok or near is False else near), notes


def grade_files(session, pre, items) -> list:
    """One result row per (file, problem) of ``items``; a file that cannot be read gets its error."""
    rows, decoded = {}, []
    common = {"model": pre["run"], "verdict": pre["trust"]["verdict"]}
    for path, problem in items:
        try:
            if problem:
                raise ImageError(f"{path}: {problem}")
            decoded.append((path, load_image(path)))
        except ImageError as err:
            rows[path] = result_row(path, error=str(err), **common)
        except Exception as err:  # one odd file must not end the batch
            rows[path] = result_row(path, error=f"{path}: cannot be read ({type(err).__name__}: {err})", **common)
    if decoded:
        batch = np.stack([prepare(img, pre["image_size"], pre["crop"]) for _, img in decoded])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {pre["input"]["name"]: batch})))
        threshold = (pre.get("referable") or {}).get("threshold")
        for k, (path, img) in enumerate(decoded):
            score = float(out["ood_score"][k]) if "ood_score" in out else None
            ok, notes = check(img, score, pre)
            rows[path] = result_row(path, out["probabilities"][k], threshold=threshold, in_distribution=ok,
                                    ood_score=score, warnings=notes, **common)
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
    verdict = pre["trust"]
    if verdict["verdict"] != "usable":
        print(f"warning: this model is {verdict['verdict']}: " + " ".join(verdict.get("reasons") or []),
              file=sys.stderr)
    items = expand_inputs(args.inputs)
    try:
        out = ResultsCsv(args.out, pre["run"], args.resume, args.overwrite) if args.out else None
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [item for item in items if out is None or not out.is_done(item[0])]
    failed, tty = 0, sys.stderr.isatty()
    try:
        for start in range(0, len(todo), args.batch_size):
            rows = grade_files(session, pre, todo[start:start + args.batch_size])
            failed += sum(1 for row in rows if row["error"])
            if out is None:
                for row in rows:
                    print(json.dumps({k: None if v == "" else v for k, v in row.items()}))
                continue
            out.write(rows)
            if tty:
                print(f"\\rgraded {min(start + args.batch_size, len(todo))} of {len(todo)}", end="", file=sys.stderr)
    finally:
        if out is not None:
            out.close()
    if out is not None:
        print(f"{chr(10) if tty else ''}{len(todo) - failed} graded, {failed} could not be read, "
              f"{len(items) - len(todo)} already in {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
'''
