"""Dataset integrity: one report of every problem, patient ids, duplicate images across splits.

- ``Report``: every problem of every file and split, grouped by kind and counted, with the
  first few examples of each; as text (CLI, errors), markdown (pages) or a dict (``--json``).
- Patient ids: explicit (a CSV column or a regular expression) or recognised from the common
  file-name layouts (``PATIENT_RULES``); what was found is summarised, one example per rule.
- Duplicates: a hash of the decoded pixels (exact copies) and a 256-bit difference hash
  (resized or re-encoded copies) of every image, cached by path + size + mtime.

No torch import; ``data`` is imported inside the functions that decode images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

SHOW_FIRST = 5
CACHE_NAME = ".retino-hashes.json"
CACHE_VERSION = 1
HASH_SIDE = 16  # difference hash of a 17x16 grey thumbnail: 256 bits
NEAR_BITS = 12  # at most this many of the 256 bits differ: a resized or re-encoded copy
PARALLEL_FROM = 200  # fewer images than this are hashed in this process
MIN_PER_GRADE = 5
SHARE_GAP = 0.10  # a grade's share of train and test differing by more than this is worth a look


def first(items: Sequence[object], n: int = SHOW_FIRST) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------- the report


@dataclass
class Problem:
    """One kind of problem in one place: a one-line message, how many, the first examples."""

    kind: str
    where: str
    message: str
    count: int = 1
    examples: list[str] = field(default_factory=list)
    severity: str = "error"  # "error" (the dataset cannot be used) | "warning"


@dataclass
class Report:
    """Every problem found in a dataset, plus what was learnt about it (patients, duplicates)."""

    source: str = ""
    problems: list[Problem] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add(self, kind: str, where: str, message: str, examples: Sequence[object] = (),
            severity: str = "error", count: int | None = None) -> None:
        self.problems.append(Problem(kind, where, message, count if count is not None else max(1, len(examples)),
                                     [str(e) for e in examples[:SHOW_FIRST]], severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def groups(self) -> list[tuple[str, str, list[Problem]]]:
        """(severity, kind, problems) with errors first, kinds in the order they were found."""
        grouped: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in sorted(self.problems, key=lambda p: p.severity != "error"):
            grouped[(p.severity, p.kind)].append(p)
        return [(sev, kind, probs) for (sev, kind), probs in grouped.items()]

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        return f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"

    def lines(self) -> list[str]:
        out = []
        for sev, kind, probs in self.groups():
            out.append(f"{sev}: {kind} ({sum(p.count for p in probs):,}):")
            out.extend(f"  - {p.message}" for p in probs)
        return out

    def text(self) -> str:
        return "\n".join([f"{self.source}: {self.summary()}" if self.source else self.summary(), *self.lines()])

    def markdown(self) -> str:
        out = [f"**{self.summary()}**"]
        for sev, kind, probs in self.groups():
            out.append(f"- **{sev}: {kind}** ({sum(p.count for p in probs):,})")
            out.extend(f"    - {p.message}" for p in probs)
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"source": self.source, "ok": not self.errors, "errors": len(self.errors),
                "warnings": len(self.warnings), **self.info,
                "problems": [asdict(p) for p in self.problems]}


# ---------------------------------------------------------------- patient ids


@dataclass(frozen=True)
class PatientRule:
    name: str
    pattern: str
    prefix: str = ""  # put before group 1 so that ids of different rules never collide

    def match(self, stem: str) -> str | None:
        m = re.search(self.pattern, stem, re.IGNORECASE)
        if not m:
            return None
        if not m.groups():
            return m.group(0)
        g = m.group(1)
        return self.prefix + (str(int(g)) if g.isdigit() else g)


# First match wins: the specific layouts before the generic eye suffix.
PATIENT_RULES = (
    PatientRule("DeepDRiD NNN_l1", r"^(\d+)_[lr]\d+$"),
    PatientRule("EyePACS NNN_left", r"^(\d+)_(?:left|right)$"),
    PatientRule("PatientNNN_L/R", r"(?<![a-z])patient[ _-]?(\d+)(?![0-9])", "patient "),
    PatientRule("name_left / name_R", r"^(.+?)[_-](?:left|right|l|r|od|os)$"),
    PatientRule("APTOS id (one image per patient)", r"^[0-9a-f]{12}$"),
)
BY_IMAGE = "no rule: each image its own patient"


def _stem(name: str) -> str:
    base = os.path.basename(str(name))
    stem, suffix = os.path.splitext(base)
    return stem if suffix.lower() in (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp") else base


def patient_rule(name: str) -> tuple[str, str]:
    """(patient id, rule name) for an image name by the first rule of PATIENT_RULES that matches."""
    stem = _stem(name)
    for rule in PATIENT_RULES:
        pid = rule.match(stem)
        if pid is not None:
            return pid, rule.name
    return stem, BY_IMAGE


def assign_patients(names: Sequence[str], regex: str | None = None,
                    column: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Patient id and the rule that gave it, per name: an explicit column, a regex, or the rules."""
    if column is not None:
        return [str(c).strip() for c in column], ["patient column"] * len(names)
    if regex:
        explicit = PatientRule("--patient-regex", regex, "")
        ids, rules = [], []
        for n in names:
            pid = explicit.match(_stem(n))
            ids.append(pid if pid is not None else _stem(n))
            rules.append(explicit.name if pid is not None else BY_IMAGE)
        return ids, rules
    pairs = [patient_rule(n) for n in names]
    return [p for p, _ in pairs], [r for _, r in pairs]


def patient_summary(names: Sequence[str], ids: Sequence[str], rules: Sequence[str]) -> dict:
    """How many patients, how many with two or more images, and one example per rule used."""
    per_patient = Counter(ids)
    used: dict[str, dict] = {}
    for n, pid, rule in zip(names, ids, rules):
        entry = used.setdefault(rule, {"images": 0, "example": f"{n} -> {pid}"})
        entry["images"] += 1
    return {"patients": len(per_patient), "with_two_or_more": sum(c >= 2 for c in per_patient.values()),
            "rules": used, "by_image": set(rules) <= {BY_IMAGE, PATIENT_RULES[-1].name}}


def describe_patients(summary: dict) -> list[str]:
    """The summary in words, for the CLI and the pages."""
    if not summary:
        return []
    if summary["by_image"]:
        head = ("patients: no patient id recognised in the image names, so the split is by image, not by patient "
                "(give --patient-column or --patient-regex if the names hold one)")
    else:
        head = (f"patients: {summary['patients']:,} found, {summary['with_two_or_more']:,} with two or more images; "
                "a carved split keeps each patient on one side")
    rules = [f"  {rule}: {e['images']:,} images, e.g. {e['example']}" for rule, e in summary["rules"].items()]
    return [head, *rules]


def straddling(groups: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Patients found on two sides, per pair of splits ('train/test': [ids])."""
    sets = {k: set(v) for k, v in groups.items()}
    keys = list(sets)
    out = {}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            both = sorted(sets[a] & sets[b])
            if both:
                out[f"{a}/{b}"] = both
    return out


# ---------------------------------------------------------------- labels


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


# ---------------------------------------------------------------- image hashes


def dhash(img: Image.Image, side: int = HASH_SIDE) -> str:
    """Difference hash: is each pixel of a (side+1) x side grey thumbnail brighter than its left neighbour."""
    grey = np.asarray(img.convert("L").resize((side + 1, side), Image.Resampling.BOX), dtype=np.int16)
    return np.packbits(grey[:, 1:] > grey[:, :-1]).tobytes().hex()


def pixel_hash(arr: np.ndarray) -> str:
    """Exact-copy hash of decoded pixels (the shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def fingerprint(path: str) -> tuple[str, str, str]:
    """(pixel hash, difference hash, '') of an image file, or ('', '', why it cannot be used)."""
    from .data import ImageError, load_image

    try:
        img = load_image(path)
    except ImageError as err:
        return "", "", str(err)
    return pixel_hash(np.asarray(img)), dhash(img), ""


def cache_file(root: Path | None) -> Path:
    """Next to the dataset when its folder is writable, else in the runs folder."""
    from .runs import default_runs_dir

    folder = None if root is None else (root if root.is_dir() else root.parent)
    if folder is not None and os.access(folder, os.W_OK):
        return folder / (CACHE_NAME if root.is_dir() else f".retino-hashes-{root.stem}.json")
    key = hashlib.blake2b(str(root).encode(), digest_size=8).hexdigest()
    return default_runs_dir() / ".cache" / f"hashes-{key}.json"


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def read_cache(path: Path) -> dict[str, list]:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(body, dict) or body.get("version") != CACHE_VERSION or not isinstance(body.get("entries"), dict):
        return {}
    return body["entries"]


def hash_files(paths: Sequence[Path], cache: Path | None, workers: int | None = None,
               progress: bool = False) -> tuple[list[tuple[str, str, str]], int]:
    """Fingerprint every file, reusing cached entries whose size and mtime still match.

    Returns the fingerprints (in order) and how many came from the cache.
    """
    from .runs import write_json

    entries = read_cache(cache) if cache else {}
    keys = [_stat_key(p) for p in paths]
    out: list[tuple[str, str, str] | None] = [None] * len(paths)
    todo = []
    for i, (p, key) in enumerate(zip(paths, keys)):
        hit = entries.get(str(p))
        if key is not None and hit and hit[:2] == key:
            out[i] = tuple(hit[2:5])
        else:
            todo.append(i)
    reused = len(paths) - len(todo)
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm

    with tqdm(total=len(paths), initial=reused, unit="img", desc="decoding and hashing",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        todo_paths = [str(paths[i]) for i in todo]
        if workers > 1 and len(todo) >= PARALLEL_FROM:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results: Iterable = pool.map(fingerprint, todo_paths, chunksize=32)
                for i, fp in zip(todo, results):
                    out[i] = fp
                    bar.update()
        else:
            for i, p in zip(todo, todo_paths):
                out[i] = fingerprint(p)
                bar.update()
    if cache and todo:
        fresh = {str(p): [*key, *fp] for p, key, fp in zip(paths, keys, out) if key is not None}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, {"version": CACHE_VERSION, "entries": {**entries, **fresh}})
        except OSError as err:  # a read-only place: the check still stands, only slower next time
            print(f"note: hash cache not written to {cache}: {err.strerror or err}", file=sys.stderr)
    return out, reused  # type: ignore[return-value]


def _hash_matrix(hexes: Sequence[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint64).reshape(len(hexes), -1)


def near_pairs(hexes: Sequence[str], max_bits: int = NEAR_BITS, chunk: int = 64) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose difference hashes differ in at most ``max_bits`` bits."""
    if len(hexes) < 2:
        return []
    m = _hash_matrix(hexes)
    pairs = []
    for start in range(0, len(m), chunk):
        # The first 64 bits differ in no more bits than all 256: a cheap filter before the full count.
        close = np.bitwise_count(m[start:start + chunk, :1] ^ m[None, start:, 0]) <= max_bits
        ii, jj = np.nonzero(close)
        keep = jj > ii  # the upper triangle only: not a pair with itself, each pair once
        ii, jj = ii[keep] + start, jj[keep] + start
        dist = np.bitwise_count(m[ii] ^ m[jj]).sum(-1)
        pairs += [(int(i), int(j)) for i, j, d in zip(ii, jj, dist) if d <= max_bits]
    return pairs


def report_duplicates(report: Report, items: Sequence[tuple[str, str, str, str]],
                      allow_cross: bool = False) -> dict:
    """Exact and near-duplicate images inside and across splits, from (split, name, pixel hash, dhash).

    Exact copies across splits are errors (test images the model trained on) unless
    ``allow_cross``; the rest are warnings.
    """
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, (_, _, h, _) in enumerate(items):
        by_hash[h].append(i)
    cross, inside = [], []
    for members in by_hash.values():
        if len(members) < 2:
            continue
        text = " = ".join(f"{items[i][0]}/{items[i][1]}" for i in members[:4])
        (cross if len({items[i][0] for i in members}) > 1 else inside).append(text)
    # Near copies: one representative per exact hash, so an exact copy is not also counted as near.
    reps = [members[0] for members in by_hash.values()]
    near_cross, near_inside = [], []
    for a, b in near_pairs([items[i][3] for i in reps]):
        i, j = reps[a], reps[b]
        text = f"{items[i][0]}/{items[i][1]} ~ {items[j][0]}/{items[j][1]}"
        (near_cross if items[i][0] != items[j][0] else near_inside).append(text)
    if cross:
        report.add("identical images in two splits", "splits",
                   f"{len(cross):,} image(s) appear in more than one split (test leakage): {first(cross, 3)}",
                   cross, "warning" if allow_cross else "error")
    if near_cross:
        report.add("near-identical images in two splits", "splits",
                   f"{len(near_cross):,} pair(s) look like resized or re-encoded copies across splits: "
                   f"{first(near_cross, 3)}", near_cross, "warning")
    if inside:
        report.add("identical images inside a split", "splits",
                   f"{len(inside):,} image(s) are listed more than once under different names: {first(inside, 3)}",
                   inside, "warning")
    if near_inside:
        report.add("near-identical images inside a split", "splits",
                   f"{len(near_inside):,} pair(s) look like copies of each other: {first(near_inside, 3)}",
                   near_inside, "warning")
    return {"identical_across_splits": len(cross), "near_across_splits": len(near_cross),
            "identical_inside_splits": len(inside), "near_inside_splits": len(near_inside)}


def check_source_images(source, report: Report, deep: bool = False, allow_duplicates: bool = False,
                        workers: int | None = None, progress: bool = False, use_cache: bool = True) -> None:
    """Check every image of every split into ``report``: headers, or (``deep``) full decodes and duplicates."""
    from .data import ImageError, check_image

    entries = [(name, i, split) for name, split in source.splits.items() for i in range(len(split))]
    paths = [split.paths[i] for _, i, split in entries if split.paths is not None]
    in_memory = len(paths) < len(entries)
    reused = 0
    if in_memory:
        fps = [("", "", "")] * len(entries)
        if deep:
            fps = [(pixel_hash(split.images[i]), dhash(split.image(i)), "") for _, i, split in entries]
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
        items = [(name, split.names[i], fp[0], fp[1]) for (name, i, split), fp in zip(entries, fps) if not fp[2]]
        info["duplicates"] = report_duplicates(report, items, allow_duplicates)
    report.info["images"] = info
