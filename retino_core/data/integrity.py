"""Dataset integrity: label sanity and the check of every image of every split into one Report.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from . import nearcopy
from .duplicates import Photo, cache_file, hash_files, pixel_hash, report_duplicates
from .problems import Report, first

MIN_PER_GRADE = 5


SHARE_GAP = 0.10  # a grade's share of train and test differing by more than this is worth a look


def label_warnings(report: Report, counts: dict[str, list[int]], grade_names: Sequence[str]) -> None:
    """Grades in test that train lacks, rare grades, grade shares that differ between train and test."""
    train, test = counts.get("train"), counts.get("test")
    if train and test:
        absent = [grade_names[g] for g, (a, b) in enumerate(zip(train, test)) if b and not a]
        if absent:
            report.add("grades in test but not in train", "train/test",
                       f"test holds grade(s) train lacks: {', '.join(absent)}; the model never sees them",
                       absent, "warning")
        n_train, n_test = sum(train), sum(test)
        gaps = [f"{grade_names[g]} {a / n_train:.0%} of train vs {b / n_test:.0%} of test"
                for g, (a, b) in enumerate(zip(train, test))
                if n_train and n_test and abs(a / n_train - b / n_test) > SHARE_GAP]
        if gaps:
            report.add("grade shares that differ between train and test", "train/test",
                       f"grade shares differ by over {SHARE_GAP:.0%}: {first(gaps)}", gaps, "warning")
    for split, c in counts.items():
        rare = [f"{grade_names[g]} ({n})" for g, n in enumerate(c) if 0 < n < MIN_PER_GRADE]
        if rare:
            report.add(f"grades with fewer than {MIN_PER_GRADE} images", split,
                       f"{split}: {first(rare)}: too few to learn or measure", rare, "warning")


def check_source_images(source, report: Report, deep: bool = False, allow_duplicates: bool = False,
                        workers: int | None = None, progress: bool = False, use_cache: bool = True,
                        allow_conflicts: bool = False) -> None:
    """Check every image of every split into ``report``: headers, or (``deep``) full decodes,
    duplicates and label conflicts."""
    from ..errors import ImageError
    from .images import check_image

    entries = [(name, i, split) for name, split in source.splits.items() for i in range(len(split))]
    paths = [split.paths[i] for _, i, split in entries if split.paths is not None]
    in_memory = len(paths) < len(entries)
    reused = 0
    if in_memory:
        fps = [("", "", "")] * len(entries)
        if deep:
            fps = [(pixel_hash(split.images[i]), nearcopy.near_code(split.image(i)), "") for _, i, split in entries]
    elif deep:
        cache = cache_file(Path(source.root)) if use_cache and source.root else None
        fps, reused = hash_files(paths, cache, workers, progress)
    else:
        fps = []
        for p in paths:
            try:
                check_image(p)
                fps.append(("", "", ""))
            except ImageError as err:
                fps.append(("", "", str(err)))
    bad: dict[str, list[str]] = defaultdict(list)
    for (name, _, _), (_, _, err) in zip(entries, fps):
        if err:
            bad[name].append(err)
    for name, errs in bad.items():
        total = len(source.splits[name])
        report.add("unreadable images", name,
                   f"{len(errs):,} of {total:,} images in the {name} split cannot be used: {first(errs)}", errs)
    info = {"checked": "decoded" if deep else "header", "images": len(entries), "from_cache": reused}
    if deep:
        items = [Photo(name, split.names[i], int(split.labels[i]), fp[0], fp[1])
                 for (name, i, split), fp in zip(entries, fps) if not fp[2]]
        info["duplicates"] = report_duplicates(report, items, allow_duplicates, allow_conflicts)
    report.info["images"] = info
