"""``evaluate RUN --data DATA``: grade every photo of a labelled data set as every door would,
and measure the run there (judging.external). The photos' answers go to
``<run>/external/<name>.csv``, the numbers to ``<run>/external/<name>.json``.

Any data set the project can read (a labels CSV, a lab folder, an ``.npz``, ``retinamnist``):
all its photos, every split. A file that cannot be read gets a row with its error and the
evaluation goes on.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np

from .. import runs
from ..config import NUM_CLASSES
from ..data.sources import open_source
from ..judging import external
from ..judging.decision import GRADED, NOT_GRADED
from .batch import CSV_COLUMNS, Graded, csv_row, decode, default_batch_size, predict_batch
from .predictor import Predictor

COLUMNS = ("file", "split", "label", *CSV_COLUMNS[1:])


def _photos(src) -> list[tuple[str, str, int, object, int]]:
    """(name, split, true grade, split object, index) of every photo of the data, each name once."""
    seen, out = set(), []
    for split_name, split in src.splits.items():
        for i, name in enumerate(split.names):
            if name not in seen:
                seen.add(name)
                out.append((name, split_name, int(split.labels[i]), split, i))
    return out


def grade_all(predictor: Predictor, photos: list, tta: bool | None = None, batch_size: int | None = None,
              progress: bool = True):
    """Yield (photo, Graded) for every photo, a batch at a time."""
    from tqdm import tqdm

    size = batch_size or default_batch_size(predictor.image_size)
    with tqdm(total=len(photos), unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(photos), size):
            chunk = photos[start:start + size]
            decoded = {p[0]: decode(p[0], lambda p=p: p[3].image(p[4])) for p in chunk}
            ok = [(name, img) for name, (img, _) in decoded.items() if img is not None]
            graded = dict(predict_batch(predictor, ok, tta))
            for photo in chunk:
                yield photo, graded.get(photo[0]) or Graded(photo[0], error=decoded[photo[0]][1])
            bar.update(len(chunk))


def evaluate(run: str | os.PathLike, data: str, name: str | None = None, runs_dir: Path | None = None,
             tta: bool | None = None, batch_size: int | None = None, progress: bool = True) -> dict:
    """Grade ``data`` with the run and store the result; returns it (judging.external.measure
    plus where, on what and how fast)."""
    run_dir = runs.resolve_run_dir(run, runs_dir)
    name = external.check_name(name) if name else external.default_name(data)
    src = open_source(data, whole=True)  # a DataError names every problem of the data set
    predictor = Predictor.from_run(run_dir)
    photos = _photos(src)
    started = time.perf_counter()
    rows, labels, probs, grades, statuses = [], [], [], [], []
    refused_by_grade = np.zeros(NUM_CLASSES, np.int64)
    for (file, split_name, label, _, _), done in grade_all(predictor, photos, tta, batch_size, progress):
        row = done.record(predictor.run_id, "")
        rows.append({"split": split_name, "label": label, **csv_row(row)})
        if done.prediction is None:
            continue
        decision = done.prediction.decision
        statuses.append(decision.status)
        if decision.status == NOT_GRADED:
            refused_by_grade[label] += 1
        else:  # answered: graded, or what a model that is not usable says
            labels.append(label)
            probs.append(decision.probabilities)
            grades.append(decision.grade if decision.status == GRADED else decision.would_say_grade)
    seconds = time.perf_counter() - started
    point = predictor.operating_point
    result = external.measure(labels, probs, grades, statuses, len(photos) - len(statuses),
                              runs.read_json(run_dir / "summary.json", {}).get("temperature"),
                              point.threshold if point else 0.5)
    own = _own_data(predictor, src, data, run_dir)
    result.update(run_id=run_dir.name, data=str(data), data_name=src.name, evaluated_at=runs.now_iso(),
                  model_usable=predictor.usable, seconds=round(seconds, 2),
                  photos_per_s=round(len(photos) / seconds, 2) if seconds > 0 else None,
                  refused_by_grade=refused_by_grade.tolist(), own_data=own, warnings=_warnings(predictor, src, own))
    json_path, csv_path = external.save(run_dir, name, result, _csv_bytes(rows))
    return {**result, "name": name, "json": str(json_path), "csv": str(csv_path)}


def _own_data(predictor: Predictor, src, data: str, run_dir: Path) -> bool:
    """Whether ``data`` is the data set the run was trained on."""
    trained = runs.read_json(run_dir / "config.json", {}).get("data", "retinamnist")
    return str(trained).strip().lower() == str(data).strip().lower() or src.name == predictor.trained_on.get("name")


def _warnings(predictor: Predictor, src, own: bool) -> list[str]:
    out = []
    if own:
        out.append(f"These are the photos the run was trained on ({src.name}): its own training, validation and test "
                   "photos, not other photos. An evaluation on other photos says how it does elsewhere.")
    if not predictor.usable:
        out.append("The model is not usable on its own test set: these are what it would say, not grades.")
    return out


def _csv_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
