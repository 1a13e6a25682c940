"""Duplicate images: a hash of the decoded pixels (exact copies) and a near-copy code of every
image (``nearcopy``), cached by path + size + mtime, and the pairs and label conflicts they reveal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from . import nearcopy
from .problems import Report, first

CACHE_NAME = ".retino-hashes.json"


CACHE_VERSION = 2  # 1: one JSON object written at the end; 2: JSON lines, a chunk at a time, SHA-256 pixel hashes


CACHE_CHUNK = 256  # fingerprints per chunk appended to the cache: at most this many are lost to a crash


NEAR_HASH = f"fundus-grid-{nearcopy.CODE_VERSION}"  # the near-copy code in the cache: another means rehashing


PARALLEL_FROM = 200  # fewer images than this are hashed in this process


def pixel_hash(pixels: np.ndarray | Image.Image) -> str:
    """Exact-copy hash of decoded pixels (the shape included): the same for an image and its array."""
    if isinstance(pixels, Image.Image):  # its bytes as they are: no copy into an array first
        bands = len(pixels.getbands())
        shape = (pixels.height, pixels.width) + ((bands,) if bands > 1 else ())
        data = pixels.tobytes()
    else:
        shape, data = pixels.shape, np.ascontiguousarray(pixels).tobytes()
    # sha256: hardware-accelerated on current CPUs, twice blake2b's speed on a 512 px photo.
    h = hashlib.sha256(repr(tuple(shape)).encode())
    h.update(data)
    return h.hexdigest()[:32]


def fingerprint(path: str) -> tuple[str, str, str]:
    """(pixel hash, near-copy code, '') of an image file, or ('', '', why it cannot be used)."""
    from ..errors import ImageError
    from .images import load_image

    try:
        img = load_image(path)
    except ImageError as err:
        return "", "", str(err)
    return pixel_hash(img), nearcopy.near_code(img), ""


def cache_file(root: Path | None) -> Path:
    """Next to the dataset when its folder is writable, else in the runs folder."""
    from ..runs import default_runs_dir

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


def _header() -> dict:
    return {"version": CACHE_VERSION, "near_hash": NEAR_HASH}


def _read_chunks(path: Path) -> tuple[dict[str, list], int] | None:
    """(entries, how many the file holds counting overwritten ones), or None when the file is
    missing or not this version's (another version's hashes are not comparable: rehash)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    lines = data.split(b"\n")
    try:
        if json.loads(lines[0]) != _header():
            return None
    except ValueError:
        return None
    entries: dict[str, list] = {}
    held = 0
    # The last piece has no newline: a chunk cut short by a crash, or nothing. Skip it.
    for line in lines[1:-1]:
        try:
            chunk = json.loads(line)
        except ValueError:  # a damaged line; the other chunks still count
            continue
        if isinstance(chunk, dict):
            entries.update(chunk)
            held += len(chunk)
    return entries, held


def read_cache(path: Path) -> dict[str, list]:
    """The cache's entries: path -> [size, mtime_ns, pixel hash, near-copy code, error]."""
    found = _read_chunks(path)
    return found[0] if found else {}


class CacheWriter:
    """Appends fingerprints to the cache file in chunks as they are computed, so an interrupted
    ``--deep`` resumes where it stopped. The file is JSON lines: a header with the version, then
    one object of entries per chunk, each appended in one write and flushed to disk; a chunk cut
    short by a crash is skipped on reading. Started afresh (atomically) when missing or of
    another version; compacted when overwritten entries outnumber the live ones."""

    def __init__(self, path: Path, chunk: int | None = None):
        self.path, self.chunk, self.pending = Path(path), chunk or CACHE_CHUNK, {}
        found = _read_chunks(self.path)
        self.entries, self.held = found if found else ({}, 0)
        self.ok = self._start(fresh=found is None)

    def _start(self, fresh: bool) -> bool:
        from ..runs import atomic_write

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fresh:
                atomic_write(self.path, (json.dumps(_header()) + "\n").encode())
            elif not self.path.read_bytes().endswith(b"\n"):
                with open(self.path, "ab") as fh:  # end a cut chunk, so the next starts on its own line
                    fh.write(b"\n")
            return True
        except OSError as err:  # a read-only place: the check still stands, only slower next time
            print(f"note: hash cache not written to {self.path}: {err.strerror or err}", file=sys.stderr)
            return False

    def add(self, path: str, entry: list) -> None:
        self.pending[path] = entry
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        chunk, self.pending = self.pending, {}
        self.entries.update(chunk)
        if not self.ok:
            return
        try:
            with open(self.path, "ab") as fh:
                fh.write((json.dumps(chunk, separators=(",", ":")) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            self.held += len(chunk)
        except OSError as err:
            self.ok = False
            print(f"note: hash cache not written to {self.path}: {err.strerror or err}", file=sys.stderr)

    def close(self) -> None:
        """Write what is pending; rewrite the file compacted when mostly overwritten entries."""
        from ..runs import atomic_write

        self.flush()
        if self.ok and self.held > 2 * len(self.entries) + self.chunk:
            items = list(self.entries.items())
            body = [json.dumps(_header())] + [json.dumps(dict(items[i:i + self.chunk]), separators=(",", ":"))
                                              for i in range(0, len(items), self.chunk)]
            try:
                atomic_write(self.path, ("\n".join(body) + "\n").encode())
            except OSError:
                pass  # the uncompacted file still holds every entry


def hash_files(paths: Sequence[Path], cache: Path | None, workers: int | None = None,
               progress: bool = False) -> tuple[list[tuple[str, str, str]], int]:
    """Fingerprint every file, reusing cached entries whose size and mtime still match; new ones
    go into the cache as they come.

    Returns the fingerprints (in order) and how many came from the cache.
    """
    writer = CacheWriter(cache) if cache else None
    entries = writer.entries if writer else {}
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
    from tqdm import tqdm

    bar = tqdm(total=len(paths), initial=reused, unit="img", desc="decoding and hashing",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    results = _fingerprints([str(paths[i]) for i in todo], workers)
    try:
        for i, fp in zip(todo, results):
            out[i] = fp
            if writer and keys[i] is not None:
                writer.add(str(paths[i]), [*keys[i], *fp])
            bar.update()
    finally:  # what was hashed before an interruption is kept
        results.close()  # stops the worker processes now, not when garbage is collected
        bar.close()
        if writer:
            writer.close()
    return out, reused  # type: ignore[return-value]


def _fingerprints(paths: list[str], workers: int | None) -> Iterator[tuple[str, str, str]]:
    """fingerprint of each path, in order: in worker processes when there are many."""
    workers = workers or os.cpu_count() or 1
    if workers < 2 or len(paths) < PARALLEL_FROM:
        yield from map(fingerprint, paths)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        yield from pool.map(fingerprint, paths, chunksize=32)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Photo(NamedTuple):
    """One decoded image of the dataset, as the duplicate check sees it."""

    split: str
    name: str
    grade: int  # -1: unknown (its CSV row is broken), compared with nothing
    pixels: str  # pixel_hash
    code: str  # near-copy code


def _where(a: Photo, b: Photo) -> str:
    return f"in {a.split} and {b.split}" if a.split != b.split else f"both in {a.split}"


def _graded(x: Photo) -> str:
    return f"{x.split}/{x.name} (grade {x.grade})"


def _conflict(a: Sequence[Photo], b: Sequence[Photo]) -> tuple[Photo, Photo] | None:
    """A member of ``a`` and one of ``b`` with different known grades, if any."""
    for x in a:
        for y in b:
            if x.grade >= 0 and y.grade >= 0 and x.grade != y.grade:
                return x, y
    return None


def find_duplicates(items: Sequence[Photo], near=None) -> dict[str, list[str]]:
    """Label conflicts, exact copies and near copies, as texts by kind.

    A label conflict (the same or a near-identical photo under different grades) is listed
    as such, not again as a copy inside a split; copies across splits are listed as
    leakage whatever their grades."""
    near = near or nearcopy.near_pairs
    by_hash: dict[str, list[Photo]] = defaultdict(list)
    for x in items:
        by_hash[x.pixels].append(x)
    found: dict[str, list[str]] = {k: [] for k in ("conflicts", "cross", "inside", "near_cross", "near_inside")}
    for members in by_hash.values():
        if len(members) < 2:
            continue
        pair = _conflict(members, members)
        if pair:
            found["conflicts"].append(f"{_graded(pair[0])} = {_graded(pair[1])} ({_where(*pair)})")
        text = " = ".join(f"{x.split}/{x.name}" for x in members[:4])
        if len({x.split for x in members}) > 1:
            found["cross"].append(text)
        elif not pair:
            found["inside"].append(text)
    # Near copies: one representative per exact hash, so an exact copy is not also counted as near.
    groups = list(by_hash.values())
    for a, b in near([g[0].code for g in groups]):
        x, y = groups[a][0], groups[b][0]
        pair = _conflict(groups[a], groups[b])
        if pair:
            found["conflicts"].append(f"{_graded(pair[0])} ~ {_graded(pair[1])} ({_where(*pair)})")
        if x.split != y.split:
            found["near_cross"].append(f"{x.split}/{x.name} ~ {y.split}/{y.name}")
        elif not pair:
            found["near_inside"].append(f"{x.split}/{x.name} ~ {y.split}/{y.name}")
    return found


def report_duplicates(report: Report, items: Sequence[Photo], allow_cross: bool = False,
                      allow_conflicts: bool = False, near=None) -> dict:
    """Label conflicts, exact and near-duplicate images inside and across splits, into ``report``.

    Label conflicts are errors unless ``allow_conflicts``; exact copies across splits are
    errors (test images the model trained on) unless ``allow_cross``; the rest are warnings.
    """
    found = find_duplicates(items, near)
    conflicts, cross, inside = found["conflicts"], found["cross"], found["inside"]
    near_cross, near_inside = found["near_cross"], found["near_inside"]
    if conflicts:
        report.add("label conflicts", "grades",
                   f"{len(conflicts):,} photo(s) appear under two names with different grades (= identical, "
                   f"~ a near copy): {first(conflicts, 3)}; which grade is right?",
                   conflicts, "warning" if allow_conflicts else "error")
    if cross:
        report.add("identical images in two splits", "splits",
                   f"{len(cross):,} image(s) appear in more than one split (test leakage): {first(cross, 3)}",
                   cross, "warning" if allow_cross else "error")
    if near_cross:
        report.add("near-identical images in two splits", "splits",
                   f"{len(near_cross):,} pair(s) across splits look like copies of one photo (resized, re-encoded, "
                   f"cropped, turned or brightened) or retakes of the same eye: {first(near_cross, 3)}",
                   near_cross, "warning")
    if inside:
        report.add("identical images inside a split", "splits",
                   f"{len(inside):,} image(s) are listed more than once under different names: {first(inside, 3)}",
                   inside, "warning")
    if near_inside:
        report.add("near-identical images inside a split", "splits",
                   f"{len(near_inside):,} pair(s) look like copies of one photo or retakes of the same eye: "
                   f"{first(near_inside, 3)}",
                   near_inside, "warning")
    return {"label_conflicts": len(conflicts), "identical_across_splits": len(cross),
            "near_across_splits": len(near_cross), "identical_inside_splits": len(inside),
            "near_inside_splits": len(near_inside)}
