"""Splits and data sources: what a dataset is once opened (grades, names, images or paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..config import GRADE_NAMES, NUM_CLASSES
from ..errors import DataError
from .images import load_image
from .patients import patient_of
from .problems import Report


class DatasetInvalid(DataError):
    """A dataset with errors; ``report`` lists every problem of every file and split, and
    ``found`` holds the image files that were found, so their check can be added to it."""

    def __init__(self, report: Report, found: "DataSource | None" = None):
        super().__init__(report.text())
        self.report = report
        self.found = found


def found_images(report: Report, kind: str, root: Path, names: dict[str, list[str]],
                 paths: dict[str, list[Path | None]],
                 labels: dict[str, np.ndarray] | None = None) -> "DataSource":
    """The images that exist, per split, of a dataset that failed; their grades where ``labels``
    gives them row for row, else -1 (unknown: no duplicate check compares it)."""
    splits = {}
    for k in names:
        grades = np.full(len(names[k]), -1, np.int64)
        if labels is not None and k in labels and len(labels[k]) == len(names[k]):
            grades = np.asarray(labels[k], np.int64)
        kept = [i for i, p in enumerate(paths[k]) if p is not None]
        splits[k] = Split(labels=grades[kept], names=[names[k][i] for i in kept],
                          paths=[paths[k][i] for i in kept])
    return DataSource(name=report.source, kind=kind, splits=splits, root=root)


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


def grade_name(grade: int) -> str:
    return GRADE_NAMES[int(grade)]
