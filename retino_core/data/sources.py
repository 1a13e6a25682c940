"""The entry point to data: a spec ('retinamnist', an .npz, a lab folder, a labels .csv) -> a
validated DataSource, and the DataSource a run trained on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import GRADE_NAMES
from ..errors import DataError
from .integrity import label_warnings
from .layouts import load_csv, load_lab_folder, load_retinamnist
from .patients import straddling
from .problems import first as _first
from .splits import DataSource


def open_source(spec: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0, *,
                patient_column: str | None = None, patient_regex: str | None = None,
                whole: bool = False) -> DataSource:
    """``retinamnist``, an ``.npz``, a lab folder or a labels ``.csv`` -> validated DataSource.
    ``whole``: nothing carved out of it (a labels CSV is one "test" split): every photo to measure.

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
        src = load_lab_folder(path, 0.0 if whole else val_fraction, seed, patient_regex)
    elif path.suffix.lower() == ".csv" and path.is_file():
        src = load_csv(path, val_fraction=val_fraction, test_fraction=0.0 if whole else 0.2, seed=seed,
                       patient_column=patient_column, patient_regex=patient_regex)
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
        if src.kind == "csv" and "train" in src.splits:
            kept = "split by image: no patient id recognised" if report.info["patients"]["by_image"] \
                else "patients kept together"
            src.notes.append(f"test split carved from {src.root.name} ({len(src.splits['test'])} images, {kept})")
    label_warnings(report, src.counts(), GRADE_NAMES)


def source_of(config) -> DataSource:
    """The DataSource a run trained on, from its TrainConfig or config.json dict: the same
    data, validation carve, seed and patient rule, so its splits are the same images."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return open_source(get("data", "retinamnist") or "retinamnist", get("val_fraction", 0.1), get("seed", 0),
                       patient_column=get("patient_column", "") or None, patient_regex=get("patient_regex", "") or None)
