"""The dataset layouts retino reads: bundled RetinaMNIST, the lab's four headerless CSVs, and a
labels CSV with a header; validation (and test) carved with patients kept together.

Every problem of every file is collected into one Report; no torch import.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import NUM_CLASSES
from ..errors import DataError
from .images import RETINAMNIST_NPZ
from .patients import assign_patients, patient_of, patient_summary, straddling
from .problems import Report
from .problems import first as _first
from .splits import DatasetInvalid, DataSource, Split, found_images

LAB_FILES = ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv")


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


IMAGE_SUBDIRS = (".", "data", "images")


IMAGE_COLUMNS = ("image", "id_code", "filename", "file", "path", "name", "img")


GRADE_COLUMNS = ("level", "diagnosis", "grade", "label", "dr_grade")


def load_retinamnist(path: str | os.PathLike | None = None) -> DataSource:
    """RetinaMNIST from an npz in MedMNIST's layout (the bundled copy by default)."""
    path = Path(path) if path else RETINAMNIST_NPZ
    if not path.exists():
        raise DataError(f"RetinaMNIST file {path} not found")
    try:
        npz = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable npz file ({err})") from None
    splits = {}
    with npz:
        for split in ("train", "val", "test"):
            key_x, key_y = f"{split}_images", f"{split}_labels"
            if key_x not in npz or key_y not in npz:
                raise DataError(f"{path} lacks {key_x} / {key_y}: not MedMNIST's layout")
            images = npz[key_x]
            labels = npz[key_y].reshape(-1).astype(np.int64)
            if images.ndim == 3:
                images = np.repeat(images[..., None], 3, axis=-1)
            _check_grades(labels, f"{path.name}:{key_y}")
            names = [f"{split}_{i:04d}" for i in range(len(labels))]
            splits[split] = Split(labels=labels, names=names, images=images.astype(np.uint8))
    return DataSource(name="RetinaMNIST", kind="retinamnist", splits=splits, root=path)


def _read_text(path: Path, report: Report) -> str | None:
    """A CSV file's text (BOM dropped), or None with the reason in ``report``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        report.add("unreadable CSV files", path.name, f"cannot read {path}: {err.strerror or err}")
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.add("unreadable CSV files", path.name,
                   f"{path} is not UTF-8 text (byte {err.start}): is it really a CSV?")
        return None


def _editor_lines(text: str) -> list[str]:
    """The lines an editor shows: split at LF, CRLF or CR only (line endings kept), so that line
    numbers in messages are the ones the user sees."""
    return io.StringIO(text, newline="").readlines()


def _report_blank(report: Report, where: str, blank: Sequence[int], severity: str, why: str) -> None:
    if blank:
        report.add("blank lines", where, f"{where}: blank line(s) at {_first(blank)} inside the file; {why}",
                   [f"line {i}" for i in blank], severity)


def _read_lines(path: Path, report: Report) -> list[str]:
    """Every line of a headerless CSV as a row (blank ones kept, so row i is line i + 1);
    problems go into ``report``. Tolerant of BOM, CRLF and trailing blank lines."""
    text = _read_text(path, report)
    if text is None:
        return []
    lines = [line.strip() for line in _editor_lines(text)]
    while lines and not lines[-1]:
        lines.pop()
    _report_blank(report, path.name, [i + 1 for i, line in enumerate(lines) if not line], "error",
                  "each line must hold one value")
    multi = [i + 1 for i, line in enumerate(lines) if "," in line]
    if multi:
        report.add("lines with more than one value", path.name,
                   f"{path.name}: line(s) {_first(multi)} hold more than one value; the lab CSVs are headerless "
                   "with one value per line (for a CSV with columns pass the file itself)",
                   [f"line {i}" for i in multi])
    if not lines:
        report.add("empty files", path.name, f"{path.name} is empty")
    return lines


def read_table(path: Path, report: Report) -> tuple[list[str], list[list[str]], list[int]]:
    """A CSV with a header: (header, rows, the editor line each row starts on).

    Blank lines (and rows of empty values, as spreadsheets save them) are left out and reported
    as a warning with their line numbers, unless they trail the last row; a row with more values
    than the header is an error. Raises DataError when the file cannot be parsed at all.
    """
    text = _read_text(path, report)
    if text is None:
        return [], [], []
    reader = csv.reader(_editor_lines(text))
    rows: list[tuple[int, list[str]]] = []
    blank: list[int] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if any(v.strip() for v in row):
                rows.append((start, row))
            else:
                blank.append(start)
    except csv.Error as err:
        raise DataError(f"cannot read {path} as a CSV: line {reader.line_num}: {err}") from None
    if not rows:
        report.add("empty files", path.name, f"{path.name} holds no header and no rows")
        return [], [], []
    (_, header), body = rows[0], rows[1:]
    last = body[-1][0] if body else rows[0][0]
    _report_blank(report, path.name, [i for i in blank if i < last], "warning", "skipped")
    long = [line for line, row in body if len(row) > len(header)]
    if long:
        report.add("rows with more values than the header", path.name,
                   f"{path.name}: line(s) {_first(long)} hold more values than the {len(header)} columns of the "
                   "header (a comma inside a name needs quotes)", [f"line {i}" for i in long])
    return header, [row + [""] * (len(header) - len(row)) for _, row in body], [line for line, _ in body]


def read_column(path: Path) -> list[str]:
    """One value per line, every line a row (no header), tolerant of BOM, CRLF, trailing blanks."""
    report = Report()
    lines = _read_lines(Path(path), report)
    if report.errors:
        raise DatasetInvalid(report)
    return lines


def _grades(values: Sequence[object], where: str, report: Report, skip_blank: bool = False,
            lines: Sequence[int] | None = None) -> np.ndarray:
    """Grades as int64 0..4, -1 where bad (``skip_blank``: blank rows are another check's problem).

    ``lines``: the file line of each value (default: value i on line i + 1, a headerless file)."""
    out = np.full(len(values), -1, dtype=np.int64)
    bad: list[str] = []
    for i, v in enumerate(values):
        s = str(v).strip()
        # ASCII digits only, and few of them: int() of a 5000-digit string raises ValueError.
        if re.fullmatch(r"[+-]?[0-9]{1,9}", s) and 0 <= int(s) < NUM_CLASSES:
            out[i] = int(s)
        elif s or not skip_blank:
            bad.append(f"line {lines[i] if lines is not None else i + 1}: {s[:20]!r}")
    if bad:
        report.add("labels that are not grades", where, f"{where}: {len(bad)} label(s) are not grades "
                   f"0-{NUM_CLASSES - 1} (integers): {_first(bad)}", bad)
    return out


def parse_grades(values: Sequence[object], where: str) -> np.ndarray:
    """Grades as int64 0..4; every bad value is reported with its line number (value i: line i + 1)."""
    report = Report()
    out = _grades(values, where, report)
    if report.errors:
        raise DatasetInvalid(report)
    return out


def _check_grades(labels: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataError(f"{where}: grades outside 0-4 at rows {_first((bad + 1).tolist())}")


def _check_unique(names: Sequence[str], where: str, report: Report, lines: Sequence[int] | None = None) -> None:
    """Names listed more than once, each with the lines it is on."""
    on: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n:
            on.setdefault(n, []).append(lines[i] if lines is not None else i + 1)
    dups = [f"{n} (lines {', '.join(map(str, at))})" for n, at in on.items() if len(at) > 1]
    if dups:
        report.add("names listed twice", where, f"{where}: {len(dups)} image name(s) listed twice: {_first(dups)}",
                   dups)


def index_images(root: Path, subdirs: Sequence[str] = IMAGE_SUBDIRS) -> dict[str, Path]:
    """Map image name (file stem) -> path over root and its image subfolders, one scan each."""
    index: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for sub in subdirs:
        folder = root / sub
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                stem, suffix = os.path.splitext(entry.name)
                suffix = suffix.lower()
                if suffix not in rank or not entry.is_file():
                    continue
                old = index.get(stem)
                if old is None or rank[suffix] < rank[old.suffix.lower()]:
                    index[stem] = Path(entry.path)
    return index


def _resolve_images(names: Sequence[str], index: dict[str, Path], where: str, root: Path,
                    report: Report, lines: Sequence[int] | None = None) -> list[Path | None]:
    paths = [index.get(n) or index.get(os.path.splitext(n)[0]) if n else None for n in names]
    missing = [f"{n} (line {lines[i] if lines is not None else i + 1})"
               for i, (n, p) in enumerate(zip(names, paths)) if p is None and n]
    if missing:
        report.add("missing images", where,
                   f"{len(missing):,} of {len(names):,} images listed in {where} were not found in "
                   f"{root} (looked for <name>.jpeg/.jpg/.png in {', '.join(IMAGE_SUBDIRS)}): "
                   f"{_first(missing)}", missing)
    return paths


def carve_split(labels: np.ndarray, names: Sequence[str], fraction: float, seed: int,
                groups: Sequence[str] | None = None):
    """Stratified, patient-grouped split -> (keep_idx, carved_idx) with ~fraction carved.

    ``groups``: one patient id per image (default: patient_of each name)."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array(list(groups) if groups is not None else [patient_of(n) for n in names])
    n_groups = len(set(groups.tolist()))
    # sklearn needs some grade with at least n_splits members; tiny datasets get coarser folds.
    largest_grade = int(np.bincount(labels).max()) if len(labels) else 0
    n_splits = min(max(2, round(1 / fraction)), n_groups, largest_grade)
    if n_splits < 2:
        raise DataError(f"cannot carve a validation split from {len(labels)} image(s) of one patient")
    with warnings.catch_warnings():
        # sklearn warns when a grade has fewer members than folds; the split is still valid.
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        keep, carved = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(keep), np.sort(carved)


def load_lab_folder(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
                    patient_regex: str | None = None) -> DataSource:
    """The lab's four headerless CSVs and their images; validation carved from train.

    Every problem of every file is collected; any error raises DatasetInvalid with all of them.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    missing = [f for f in LAB_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"{root} lacks {', '.join(missing)}: a lab dataset folder holds "
            f"{', '.join(LAB_FILES)} and the images"
        )
    report = Report(source=f"lab folder {root.name}")
    index = index_images(root)
    splits: dict[str, Split] = {}
    all_names: dict[str, list[str]] = {}
    all_paths: dict[str, list[Path | None]] = {}
    all_labels: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        names = _read_lines(root / f"{split}_img.csv", report)
        raw_labels = _read_lines(root / f"{split}_label.csv", report)
        if names and raw_labels and len(names) != len(raw_labels):
            report.add("files of different lengths", split,
                       f"{split}_img.csv has {len(names):,} rows but {split}_label.csv has "
                       f"{len(raw_labels):,}: they must list the same images in the same order")
        labels = _grades(raw_labels, f"{split}_label.csv", report, skip_blank=True)
        _check_unique(names, f"{split}_img.csv", report)
        paths = _resolve_images(names, index, f"{split}_img.csv", root, report)
        all_names[split], all_paths[split], all_labels[split] = names, paths, labels
        if not report.errors:
            splits[split] = Split(labels=labels, names=list(names), paths=paths)
    if report.errors:
        raise DatasetInvalid(report, found_images(report, "lab", root, all_names, all_paths, all_labels))
    names = splits["train"].names + splits["test"].names
    ids, rules = assign_patients(names, patient_regex)
    splits["train"].patients, splits["test"].patients = ids[:len(splits["train"])], ids[len(splits["train"]):]
    report.info["patients"] = patient_summary(names, ids, rules)
    src = DataSource(name=report.source, kind="lab", splits=splits, root=root, report=report)
    leaked = straddling({k: s.patient_ids() for k, s in splits.items()}).get("train/test", [])
    if leaked:
        src.notes.append(
            f"{len(leaked):,} patients have one eye in train and the other in test "
            "(the lab's split); test accuracy may be optimistic"
        )
    return _with_val(src, val_fraction, seed)


def _with_val(src: DataSource, val_fraction: float, seed: int) -> DataSource:
    if val_fraction <= 0:
        return src
    train = src.splits["train"]
    keep, carved = carve_split(train.labels, train.names, val_fraction, seed, train.patient_ids())
    src.splits = {"train": train.subset(keep), "val": train.subset(carved), "test": src.splits["test"]}
    src.val_carved = True
    return src


def _pick_column(columns: Sequence[str], wanted: Sequence[str], what: str, path: Path) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    raise DataError(
        f"{path.name} has no {what} column; found {list(columns)}, expected one of: {', '.join(wanted)}"
    )


def _csv_columns(path: Path, report: Report, patient_column: str | None):
    """(names, grade values, patient ids or None, the line of each row, the grade column) of a
    labels CSV; every problem of its rows into ``report``, each with its line number."""
    header, rows, lines = read_table(path, report)
    if not header:
        raise DatasetInvalid(report)
    img_col = _pick_column(header, IMAGE_COLUMNS, "image", path)
    grade_col = _pick_column(header, GRADE_COLUMNS, "grade", path)
    column = None
    if patient_column:
        col = header.index(_pick_column(header, [patient_column], "patient", path))
        column = [row[col].strip() for row in rows]
    names = [row[header.index(img_col)].strip() for row in rows]
    blank = [line for line, n in zip(lines, names) if not n]
    if blank:
        report.add("rows without an image name", path.name,
                   f"{path.name}: line(s) {_first(blank)} have no {img_col}", [f"line {i}" for i in blank])
    grades = [row[header.index(grade_col)] for row in rows]
    if column is not None:
        empty = [f"line {line}" for line, c in zip(lines, column) if not c]
        if empty:
            report.add("rows without a patient id", path.name,
                       f"{path.name}: {len(empty)} row(s) have no {patient_column}: {_first(empty)}", empty)
    return names, grades, column, lines, grade_col


def load_csv(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
             val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
             patient_column: str | None = None, patient_regex: str | None = None) -> DataSource:
    """A labels CSV with a header (image + grade columns, optionally a patient column) and its images.

    Every problem names the line an editor shows it on (the header is line 1)."""
    path = Path(path).expanduser().resolve()
    report = Report(source=f"CSV {path.name}")
    names, grades, column, lines, grade_col = _csv_columns(path, report, patient_column)
    labels = _grades(grades, f"{path.name}:{grade_col}", report, lines=lines)
    _check_unique(names, path.name, report, lines)
    if image_dir is None:
        candidates = [path.parent / d for d in ("train_images", "train", "images", "data", ".")]
        image_dir = next((c for c in candidates if c.is_dir() and any(
            e.suffix.lower() in IMAGE_SUFFIXES for e in c.iterdir())), path.parent)
    image_dir = Path(image_dir).resolve()
    paths = _resolve_images(names, index_images(image_dir, (".",)), path.name, image_dir, report, lines)
    if report.errors:
        raise DatasetInvalid(report, found_images(report, "csv", path, {"all": names}, {"all": paths},
                                                  {"all": labels}))
    patients, rules = assign_patients(names, patient_regex, column)
    report.info["patients"] = patient_summary(names, patients, rules)
    full = Split(labels=labels, names=names, paths=paths, patients=patients)
    if test_fraction <= 0:  # every photo measured, none trained on (evaluate)
        return DataSource(name=report.source, kind="csv", root=path, report=report, splits={"test": full})
    rest, test = carve_split(labels, names, test_fraction, seed, patients)
    src = DataSource(name=report.source, kind="csv", root=path, report=report,
                     splits={"train": full.subset(rest), "test": full.subset(test)})
    return _with_val(src, val_fraction, seed)
