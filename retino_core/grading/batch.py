"""Grade many files: folders and globs expanded, photos decoded in DataLoader workers while the
model grades the previous batch, one CSV row per file streamed as it is graded.

A file that cannot be read gets a row with an ``error`` and the batch goes on: every file
named gets exactly one row. A row is a photo's ``Decision`` (judging.decision) with the file and
model added: ``record`` for JSON, ``csv_row`` for the CSV, the same keys. What holds for the whole
batch (the model's verdict, an untrusted threshold, photos shrunk to thumbnails) is said once by
``Tally``, never on every row. The exported ``predict_onnx.py`` carries the source of
``expand_inputs``, ``record``, ``csv_row``, ``Tally`` and ``ResultsCsv`` (so they use only the
standard library), and both doors write the same CSV.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.images import load_image
from ..errors import ImageError
from ..judging.decision import GRADED, NO_USABLE_MODEL, NOT_GRADED, PROBABILITY_COLUMNS, Decision
from ..judging.photo import THUMBNAIL_FACTOR
from .predictor import Prediction, Predictor

GLOB_CHARS = frozenset("*?[")


# grade, grade_name and refer are empty unless status is "graded"; would_say_* is what the model
# says before the photo checks and the verdict, never a grade.
CSV_COLUMNS = ("file", "status", "grade", "grade_name", "refer", "reasons", "referable_probability", "threshold",
               "threshold_from", *PROBABILITY_COLUMNS, "would_say_grade", "would_say_grade_name", "would_say_refer",
               "in_distribution", "ood_score", "warnings", "error", "model", "model_verdict")


UNREADABLE = "unreadable"  # the status of a file that could not be decoded


WARNING_SEPARATOR = " | "


BATCH_SIZE = 16


class OutputError(ValueError):
    """A results CSV that cannot be written or resumed as asked; the message says why."""


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """``(file, problem)`` for every file the inputs name, in order, each once.

    A file is itself; a folder gives every file below it (sorted, recursively, names starting
    with a dot skipped, as ``ls`` does); a glob pattern gives its matches (``**`` recurses).
    An input that names nothing is kept with its problem, so it too gets a row.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str, problem: str = "") -> None:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            out.append((path, problem))

    for given in map(str, inputs):
        if os.path.isdir(given):
            before = len(out)
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(f for f in files if not f.startswith(".")):
                    add(os.path.join(folder, name))
            if len(out) == before:
                add(given, "the folder holds no files")
        elif os.path.lexists(given) or not GLOB_CHARS & set(given):
            add(given)  # a missing plain path is named by the decoder's "file not found"
        else:
            matches = sorted(p for p in glob.glob(given, recursive=True) if not os.path.isdir(p))
            for path in matches:
                add(path)
            if not matches:
                add(given, "no file matches this pattern")
    return out


def record(file: str, decision: Decision | None = None, *, error: str = "", model: str = "", verdict: str = "") -> dict:
    """One file's row for JSON: its decision's keys (Decision.to_dict), the file, the model and
    its verdict; or, for a file that could not be read, status "unreadable" and the error."""
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(file=file, status=UNREADABLE, reasons=[], warnings=[])
    if decision is not None:
        row.update(decision.to_dict())
    row.update(error=error or None, model=model, model_verdict=verdict)
    return row


def csv_row(row: dict) -> dict:
    """``record`` as a CSV row: None empty, lists joined by WARNING_SEPARATOR."""
    return {k: "" if v is None else WARNING_SEPARATOR.join(v) if isinstance(v, list) else v for k, v in row.items()}


class Tally:
    """A batch's counts by outcome and what holds for all of it, said once at the end. Exit
    status: 1 when any file could not be read, else 0 (a photo not graded is an answer)."""

    def __init__(self, image_size: int, skipped: int = 0):
        self.image_size = image_size
        self.counts = dict.fromkeys((GRADED, NOT_GRADED, NO_USABLE_MODEL, UNREADABLE), 0)
        self.skipped, self.thumbnails = skipped, 0

    def add(self, row: dict, size: tuple[int, int] | None = None) -> None:
        self.counts[row["status"]] += 1
        if size is not None and row["status"] == GRADED and min(size) >= THUMBNAIL_FACTOR * self.image_size:
            self.thumbnails += 1

    def lines(self, out: str = "") -> list[str]:
        """The summary line, then the batch-wide notes."""
        c = self.counts
        parts = [f"{c[GRADED]} graded", f"{c[NOT_GRADED]} not graded (failed a photo check)"]
        if c[NO_USABLE_MODEL]:
            parts.append(f"{c[NO_USABLE_MODEL]} not graded (no usable model)")
        parts.append(f"{c[UNREADABLE]} could not be read")
        if out:
            parts.append(f"{self.skipped} already in {out}")
        lines = [", ".join(parts)]
        if self.thumbnails:
            lines.append(f"{self.thumbnails} of the graded photos are at least {THUMBNAIL_FACTOR}× the model's input "
                         f"on their short side: it sees them as {self.image_size}×{self.image_size} thumbnails, so "
                         "their finer detail is lost to it.")
        return lines

    @property
    def exit_code(self) -> int:
        return 1 if self.counts[UNREADABLE] else 0


class ResultsCsv:
    """The results CSV, written as rows come and flushed after each batch.

    An existing file is refused unless ``resume`` (keep its rows, grade only files without
    one; a partial last line left by a killed run is cut off and that file graded again) or
    ``overwrite``. Resuming needs the same columns and the same model.
    """

    def __init__(self, path: str | os.PathLike, model: str = "", resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.done: set[str] = set()
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise OutputError(f"{self.path} already exists: pass --resume to continue it or --overwrite to replace it")
        if exists and resume:
            self._read_done(model)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a" if exists and resume else "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, CSV_COLUMNS, lineterminator="\n")
        if not (exists and resume):
            self._writer.writeheader()
            self._fh.flush()

    def _read_done(self, model: str) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a run killed mid-row: drop the partial row
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
        with open(self.path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
                raise OutputError(f"{self.path} is not a results CSV of this grader (its columns are "
                                  f"{', '.join(reader.fieldnames or ['none'])}); choose another --out")
            for row in reader:
                if model and row["model"] and row["model"] != model:
                    raise OutputError(f"{self.path} was graded by model {row['model']}, not {model}; "
                                      "resume it with that model or choose another --out")
                self.done.add(os.path.normpath(row["file"]))

    def is_done(self, file: str) -> bool:
        return os.path.normpath(file) in self.done

    def write(self, rows: Sequence[dict]) -> None:
        self._writer.writerows(rows)
        self._fh.flush()  # a reader, or a --resume after a kill, sees every finished batch

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultsCsv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Graded:
    """One file's outcome: a Prediction (its decision and checks) or the error that stopped it."""

    file: str
    prediction: Prediction | None = None
    error: str = ""

    def record(self, model: str = "", verdict: str = "") -> dict:
        """Its row (``record``)."""
        pred = self.prediction
        return record(self.file, None if pred is None else pred.decision, error=self.error, model=model, verdict=verdict)


def decode(name: str, load) -> tuple[Image.Image | None, str]:
    """``load()``'s photo, or None and why it cannot be read (an ImageError's own words, else the
    exception named): one odd file must not end a batch of thousands."""
    try:
        return load(), ""
    except ImageError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001
        return None, f"{name}: cannot be read ({type(err).__name__}: {err})"


def _decode(item: tuple[str, str]):
    """In a worker: the photo as a uint8 (H, W, 3) tensor (shared memory, not a pickle), or why not."""
    path, problem = item
    if problem:
        return path, None, f"{path}: {problem}"
    img, error = decode(path, lambda: load_image(path))
    return path, None if img is None else torch.from_numpy(np.array(img)), error


class _Files:
    """Map-style dataset over the batch's files, decoded by ``_decode``."""

    def __init__(self, items: Sequence[tuple[str, str]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return _decode(self.items[i])


def _as_list(batch: list) -> list:
    return batch


def default_workers() -> int:
    """Decoding processes: a quarter of the cores, at most 4, none on 2 cores. There the
    model's two threads keep both busy and a decoder only takes one from them (idle cores:
    ResNet50 at 512 px 4.2 photos/s without one, 2.4 with; bench/results/export.md)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 4)


def default_batch_size(image_size: int) -> int:
    """Photos per forward pass: 16, fewer from 256 px up, where a batch's activations leave the
    cache (ResNet50 at 512 px: about 5 photos/s in fours, 4 in sixteens)."""
    return max(1, min(BATCH_SIZE, 2**20 // (image_size * image_size)))


def grade(predictor: Predictor, items: Sequence[tuple[str, str]], tta: bool | None = None,
          batch_size: int | None = None, workers: int | None = None) -> Iterator[Graded]:
    """Grade ``items`` (from expand_inputs) in order, ``batch_size`` photos per forward pass,
    decoded in ``workers`` DataLoader processes while the model runs on the other cores."""
    workers = default_workers() if workers is None else workers
    batch_size = batch_size or default_batch_size(predictor.image_size)
    if len(items) <= batch_size:
        workers = 0  # starting a process costs more than decoding one batch
    loader = DataLoader(_Files(items), batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
    threads = torch.get_num_threads()
    if workers:
        # Decoders plus model threads no more than the cores: an OpenMP thread that waits for a
        # core a decoder holds stalls every layer (on 2 busy cores, 2 threads ran 4x slower than 1).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    try:
        for batch in loader:
            ok = [(path, Image.fromarray(pixels.numpy())) for path, pixels, _ in batch if pixels is not None]
            graded = dict(predict_batch(predictor, ok, tta))
            for path, _, error in batch:
                yield graded.get(path) or Graded(path, error=error)
    finally:
        torch.set_num_threads(threads)


def predict_batch(predictor: Predictor, ok: list, tta: bool | None) -> Iterator[tuple[str, Graded]]:
    """Grade a batch at once; should that fail, each photo alone, so only the one at fault gets the error."""
    if not ok:
        return
    try:
        preds = predictor.predict([img for _, img in ok], [path for path, _ in ok], tta)
    except Exception:  # noqa: BLE001 - retried one by one below, which names the file at fault
        preds = None
    if preds is not None:
        yield from ((path, Graded(path, pred)) for (path, _), pred in zip(ok, preds))
        return
    for path, img in ok:
        try:
            yield path, Graded(path, predictor.predict([img], [path], tta)[0])
        except Exception as err:  # noqa: BLE001
            yield path, Graded(path, error=f"{path}: could not be graded ({type(err).__name__}: {err})")


def grade_to_csv(predictor: Predictor, items: Sequence[tuple[str, str]], out: ResultsCsv, verdict: str = "",
                 tta: bool | None = None, batch_size: int | None = None, workers: int | None = None,
                 progress: bool = True) -> Tally:
    """Grade the ``items`` that ``out`` has no row for, a row each, written a batch at a time
    under a progress bar; returns the Tally of what was done."""
    todo = [item for item in items if not out.is_done(item[0])]
    tally = Tally(predictor.image_size, skipped=len(items) - len(todo))
    rows: list[dict] = []
    with tqdm(total=len(todo), unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for done in grade(predictor, todo, tta, batch_size, workers):
            row = done.record(predictor.run_id, verdict)
            tally.add(row, None if done.prediction is None else done.prediction.check.size)
            rows.append(csv_row(row))
            if len(rows) >= (batch_size or BATCH_SIZE):
                out.write(rows)
                rows = []
            bar.update()
        out.write(rows)
    return tally
