"""Data sources -> splits of (image, grade); validation that names every problem.

Sources:
- ``retinamnist``: MedMNIST v2 RetinaMNIST, bundled (official train/val/test split).
- a lab folder: four headerless CSVs (``train_img.csv``, ``train_label.csv``, ``test_img.csv``,
  ``test_label.csv``) and images ``<name>.jpeg|.jpg|.png`` in the folder, ``data/`` or
  ``images/``. Validation is carved from train, both eyes of a patient on the same side.
- a generic CSV: an image column and a grade column (Kaggle ``image,level``, APTOS
  ``id_code,diagnosis``) plus an image folder; train/val/test are carved from it.

This module imports no torch: the app reads counts and sample images without it.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import GRADE_NAMES, NUM_CLASSES
from .integrity import Report, assign_patients, label_warnings, patient_rule, patient_summary, straddling
from .integrity import first as _first

ASSETS = Path(__file__).resolve().parent / "assets"
RETINAMNIST_NPZ = ASSETS / "retinamnist.npz"
SAMPLE_IMAGE = ASSETS / "retina_normal_cc0.jpg"
LAB_FILES = ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGE_SUBDIRS = (".", "data", "images")
IMAGE_COLUMNS = ("image", "id_code", "filename", "file", "path", "name", "img")
GRADE_COLUMNS = ("level", "diagnosis", "grade", "label", "dr_grade")
ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "BMP", "WEBP", "MPO", "GIF"}
# Pillow's own bomb check is 2x89M pixels; a fundus photo is rarely over 20M.
MAX_IMAGE_PIXELS = 64_000_000
MIN_IMAGE_SIDE = 16
# Uploads over this are refused in code; .streamlit/config.toml caps the upload widget too
# (server.maxUploadSize, in MB), and the Classify page should pass bytes to load_image.
MAX_UPLOAD_MB = 20  # the same as server.maxUploadSize in .streamlit/config.toml
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
SHOW_FIRST = 5


class DataError(ValueError):
    """A dataset that cannot be used as given; the message says what and where."""


class ImageError(ValueError):
    """An image that cannot be decoded into an RGB fundus photograph."""


class DatasetInvalid(DataError):
    """A dataset with errors; ``report`` lists every problem of every file and split, and
    ``found`` holds the image files that were found, so their check can be added to it."""

    def __init__(self, report: Report, found: "DataSource | None" = None):
        super().__init__(report.text())
        self.report = report
        self.found = found


def _found(report: Report, kind: str, root: Path, names: dict[str, list[str]],
           paths: dict[str, list[Path | None]]) -> "DataSource":
    """The images that exist, per split, of a dataset that failed (grades unknown: zeros)."""
    splits = {}
    for k in names:
        pairs = [(n, p) for n, p in zip(names[k], paths[k]) if p is not None]
        splits[k] = Split(labels=np.zeros(len(pairs), np.int64), names=[n for n, _ in pairs],
                          paths=[p for _, p in pairs])
    return DataSource(name=report.source, kind=kind, splits=splits, root=root)


# ---------------------------------------------------------------- images


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
    return img.convert("RGB")


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


# ---------------------------------------------------------------- splits


@dataclass
class Split:
    """One split: grades plus either in-memory uint8 images (N,H,W,3) or image paths."""

    labels: np.ndarray
    names: list[str]
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    patients: list[str] | None = None  # one id per image; None: patient_of(name)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=NUM_CLASSES).tolist()

    def image(self, i: int) -> Image.Image:
        """The i-th image as RGB, decoded with the same checks as an upload."""
        if self.images is not None:
            return Image.fromarray(self.images[i])
        assert self.paths is not None
        return load_image(self.paths[i])

    def subset(self, idx: Sequence[int]) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            names=[self.names[i] for i in idx],
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            patients=None if self.patients is None else [self.patients[i] for i in idx],
        )

    def patient_ids(self) -> list[str]:
        return self.patients if self.patients is not None else [patient_of(n) for n in self.names]


@dataclass
class DataSource:
    """A dataset opened and validated: its splits and where they came from."""

    name: str
    kind: str  # "retinamnist" | "lab" | "csv"
    splits: dict[str, Split]
    val_carved: bool = False
    root: Path | None = None
    notes: list[str] = field(default_factory=list)
    report: Report = field(default_factory=Report)  # warnings found on opening (errors raise DatasetInvalid)

    @property
    def has_val(self) -> bool:
        return "val" in self.splits and len(self.splits["val"]) > 0

    def counts(self) -> dict[str, list[int]]:
        return {k: s.counts() for k, s in self.splits.items()}

    def native_size(self) -> list[int] | None:
        """Width and height of the training photos as stored (the median of the first few)."""
        train = self.splits.get("train")
        if train is None or not len(train):
            return None
        if train.images is not None:
            return [int(train.images.shape[2]), int(train.images.shape[1])]
        sizes = []
        for path in (train.paths or [])[:15]:
            try:
                with Image.open(path) as img:  # the header only
                    sizes.append(img.size)
            except (OSError, ValueError):
                continue
        return [int(v) for v in np.median(np.array(sizes), 0)] if sizes else None

    def majority_share(self, split: str = "test") -> float:
        """Accuracy of always predicting the commonest training grade, on ``split``."""
        major = int(np.argmax(self.splits["train"].counts()))
        labels = self.splits[split].labels
        return float(np.mean(labels == major)) if len(labels) else 0.0


class SplitDataset:
    """Map-style dataset over a Split: (transform(image), grade). DataLoader-ready."""

    def __init__(self, split: Split, transform: Callable | None = None):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        img = self.split.image(i)
        return (self.transform(img) if self.transform else img), int(self.split.labels[i])


# ---------------------------------------------------------------- RetinaMNIST


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


# ---------------------------------------------------------------- headerless CSV columns


def _read_lines(path: Path, report: Report) -> list[str]:
    """Every line of a headerless CSV as a row (blank ones kept, so row numbers stay true);
    problems go into ``report``. Tolerant of BOM, CRLF and trailing blank lines."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        report.add("unreadable CSV files", path.name, f"cannot read {path}: {err.strerror or err}")
        return []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.add("unreadable CSV files", path.name,
                   f"{path} is not UTF-8 text (byte {err.start}): is it really a CSV?")
        return []
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        report.add("blank lines", path.name, f"{path.name}: blank line(s) at {_first(blank)} inside the file; "
                   "each line must hold one value", [f"line {i}" for i in blank])
    multi = [i + 1 for i, line in enumerate(lines) if "," in line]
    if multi:
        report.add("lines with more than one value", path.name,
                   f"{path.name}: line(s) {_first(multi)} hold more than one value; the lab CSVs are headerless "
                   "with one value per line (for a CSV with columns pass the file itself)",
                   [f"line {i}" for i in multi])
    if not lines:
        report.add("empty files", path.name, f"{path.name} is empty")
    return lines


def read_column(path: Path) -> list[str]:
    """One value per line, every line a row (no header), tolerant of BOM, CRLF, trailing blanks."""
    report = Report()
    lines = _read_lines(Path(path), report)
    if report.errors:
        raise DatasetInvalid(report)
    return lines


def _grades(values: Sequence[object], where: str, report: Report, skip_blank: bool = False) -> np.ndarray:
    """Grades as int64 0..4, -1 where bad (``skip_blank``: blank rows are another check's problem)."""
    out = np.full(len(values), -1, dtype=np.int64)
    bad: list[str] = []
    for i, v in enumerate(values):
        s = str(v).strip()
        # ASCII digits only, and few of them: int() of a 5000-digit string raises ValueError.
        if re.fullmatch(r"[+-]?[0-9]{1,9}", s) and 0 <= int(s) < NUM_CLASSES:
            out[i] = int(s)
        elif s or not skip_blank:
            bad.append(f"row {i + 1}: {s[:20]!r}")
    if bad:
        report.add("labels that are not grades", where, f"{where}: {len(bad)} label(s) are not grades "
                   f"0-{NUM_CLASSES - 1} (integers): {_first(bad)}", bad)
    return out


def parse_grades(values: Sequence[object], where: str) -> np.ndarray:
    """Grades as int64 0..4; every bad value is reported with its row number."""
    report = Report()
    out = _grades(values, where, report)
    if report.errors:
        raise DatasetInvalid(report)
    return out


def _check_grades(labels: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataError(f"{where}: grades outside 0-4 at rows {_first((bad + 1).tolist())}")


def _check_unique(names: Sequence[str], where: str, report: Report) -> None:
    seen: set[str] = set()
    dups = []
    for n in names:
        if n and n in seen:
            dups.append(n)
        seen.add(n)
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
                    report: Report) -> list[Path | None]:
    paths = [index.get(n) or index.get(os.path.splitext(n)[0]) if n else None for n in names]
    missing = [n for n, p in zip(names, paths) if p is None and n]
    if missing:
        report.add("missing images", where,
                   f"{len(missing):,} of {len(names):,} images listed in {where} were not found in "
                   f"{root} (looked for <name>.jpeg/.jpg/.png in {', '.join(IMAGE_SUBDIRS)}): "
                   f"{_first(missing)}", missing)
    return paths


def patient_of(name: str) -> str:
    """The patient an image belongs to, by the file-name layouts of integrity.PATIENT_RULES
    (``10_left`` -> ``10``, ``c01_Patient007_R`` -> ``patient 7``); else the name itself."""
    return patient_rule(name)[0]


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


# ---------------------------------------------------------------- lab layout


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
        all_names[split], all_paths[split] = names, paths
        if not report.errors:
            splits[split] = Split(labels=labels, names=list(names), paths=paths)
    if report.errors:
        raise DatasetInvalid(report, _found(report, "lab", root, all_names, all_paths))
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


# ---------------------------------------------------------------- generic CSV


def _pick_column(columns: Sequence[str], wanted: Sequence[str], what: str, path: Path) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    raise DataError(
        f"{path.name} has no {what} column; found {list(columns)}, expected one of: {', '.join(wanted)}"
    )


def load_csv(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
             val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
             patient_column: str | None = None, patient_regex: str | None = None) -> DataSource:
    """A labels CSV with a header (image + grade columns, optionally a patient column) and its images."""
    import pandas as pd

    path = Path(path).expanduser().resolve()
    try:
        df = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skip_blank_lines=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path} as a CSV: {err}") from None
    img_col = _pick_column(df.columns, IMAGE_COLUMNS, "image", path)
    grade_col = _pick_column(df.columns, GRADE_COLUMNS, "grade", path)
    column = None
    if patient_column:
        col = _pick_column(df.columns, [patient_column], "patient", path)
        column = df[col].fillna("").tolist()
    report = Report(source=f"CSV {path.name}")
    names = [str(n).strip() for n in df[img_col].fillna("").tolist()]
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        report.add("rows without an image name", path.name,
                   f"{path.name}: row(s) {_first(blank)} have no {img_col}", [f"row {i}" for i in blank])
    labels = _grades(df[grade_col].fillna("").tolist(), f"{path.name}:{grade_col}", report)
    _check_unique(names, path.name, report)
    if column is not None:
        empty = [f"row {i + 1}" for i, c in enumerate(column) if not str(c).strip()]
        if empty:
            report.add("rows without a patient id", path.name,
                       f"{path.name}: {len(empty)} row(s) have no {patient_column}: {_first(empty)}", empty)
    if image_dir is None:
        candidates = [path.parent / d for d in ("train_images", "train", "images", "data", ".")]
        image_dir = next((c for c in candidates if c.is_dir() and any(
            e.suffix.lower() in IMAGE_SUFFIXES for e in c.iterdir())), path.parent)
    image_dir = Path(image_dir).resolve()
    paths = _resolve_images(names, index_images(image_dir, (".",)), path.name, image_dir, report)
    if report.errors:
        raise DatasetInvalid(report, _found(report, "csv", path, {"all": names}, {"all": paths}))
    patients, rules = assign_patients(names, patient_regex, column)
    report.info["patients"] = patient_summary(names, patients, rules)
    full = Split(labels=labels, names=names, paths=paths, patients=patients)
    rest, test = carve_split(labels, names, test_fraction, seed, patients)
    src = DataSource(name=report.source, kind="csv", root=path, report=report,
                     splits={"train": full.subset(rest), "test": full.subset(test)})
    return _with_val(src, val_fraction, seed)


# ---------------------------------------------------------------- entry point


def open_source(spec: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0, *,
                patient_column: str | None = None, patient_regex: str | None = None) -> DataSource:
    """``retinamnist``, an ``.npz``, a lab folder or a labels ``.csv`` -> validated DataSource.

    Raises DatasetInvalid (a DataError) listing every problem at once; warnings (patients on two
    sides, rare grades, ...) are in ``source.report``, the patients found in ``report.info``.
    """
    if patient_regex:
        try:
            re.compile(patient_regex)
        except re.error as err:
            raise DataError(f"--patient-regex {patient_regex!r} is not a regular expression: {err}") from None
    text = str(spec).strip()
    path = Path(text).expanduser()
    if text.lower() in ("retinamnist", "") or path.suffix.lower() == ".npz":
        src = load_retinamnist(path if text.lower() not in ("retinamnist", "") else None)
    elif path.is_dir():
        if patient_column:
            raise DataError("--patient-column needs a labels .csv with a header; the lab layout's CSVs have "
                            "one column each (use --patient-regex)")
        src = load_lab_folder(path, val_fraction, seed, patient_regex)
    elif path.suffix.lower() == ".csv" and path.is_file():
        src = load_csv(path, val_fraction=val_fraction, seed=seed, patient_column=patient_column,
                       patient_regex=patient_regex)
    else:
        raise DataError(
            f"data {text!r} is neither 'retinamnist', an .npz file, a lab folder "
            "(with train_img.csv, train_label.csv, test_img.csv, test_label.csv) nor a labels .csv"
        )
    _review(src)
    return src


def _review(src: DataSource) -> None:
    """Patients found and where they sit, and label sanity, into the source's report."""
    report = src.report
    report.source = src.name
    if src.kind != "retinamnist":  # MedMNIST names are made up: no patient ids to find
        crossing = straddling({k: s.patient_ids() for k, s in src.splits.items()})
        report.info["straddling"] = {pair: len(ids) for pair, ids in crossing.items()}
        for pair, ids in crossing.items():
            report.add("patients on two sides of a split", pair,
                       f"{len(ids):,} patient(s) have images in both {pair.replace('/', ' and ')}: {_first(ids)}",
                       ids, "warning")
        if src.kind == "csv":
            kept = "split by image: no patient id recognised" if report.info["patients"]["by_image"] \
                else "patients kept together"
            src.notes.append(f"test split carved from {src.root.name} ({len(src.splits['test'])} images, {kept})")
    label_warnings(report, src.counts(), GRADE_NAMES)


def grade_name(grade: int) -> str:
    return GRADE_NAMES[int(grade)]


def source_of(config) -> DataSource:
    """The DataSource a run trained on, from its TrainConfig or config.json dict: the same
    data, validation carve, seed and patient rule, so its splits are the same images."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return open_source(get("data", "retinamnist") or "retinamnist", get("val_fraction", 0.1), get("seed", 0),
                       patient_column=get("patient_column", "") or None, patient_regex=get("patient_regex", "") or None)
