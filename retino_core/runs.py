"""The run folder: the only module that knows the ``artifacts/runs/<run_id>/`` layout.

A run folder is the whole truth about a training run. The trainer writes it, the app and the
CLI read it. This module imports no torch, so pages that list runs load fast.

Layout::

    <runs_dir>/<run_id>/
        config.json      resolved TrainConfig as a plain dict
        status.json      {"state", "pid", "heartbeat", "error", ...}
        metrics.jsonl    append-only rows: {"kind": "step" | "epoch", ...}
        summary.json     final test metrics of the checkpoint chosen on validation
        notes.json       the user's notes and tags ({"notes": str, "tags": [str]}), optional
        job.json         the SLURM or submitit job that trains it, for runs a sweep sent to one
        predictions.csv  per validation and test image: label, prediction, probabilities, logits
        train.log        the trainer's output (stdout and stderr), written when the queue starts it
        model_card.md, model_card.html   written by ``export`` (and the Results page's card)
        export/<format>/ an exported grader (``python -m retino_core export``)
        external/<name>.json, .csv   an evaluation on other photos (judging/external.py)
        checkpoints/best.pt, checkpoints/last.pt

Beside the run folders, ``<runs_dir>/.champions.json`` lists the runs the user pinned to stand
for their configuration (``{"pinned": [run ids]}``; judging/champions.py decides the rest).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
ENDED_STATES = ("done", "failed", "interrupted", "cancelled")
ACTIVE_STATES = ("queued", "running")
# A running trainer refreshes its heartbeat every few seconds; one silent this long is gone.
HEARTBEAT_TIMEOUT_S = 60.0
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(ValueError):
    """A run id, name or folder that cannot be used."""


def default_runs_dir() -> Path:
    """``$RETINO_RUNS_DIR`` or ``artifacts/runs`` in the project."""
    env = os.environ.get("RETINO_RUNS_DIR")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "artifacts" / "runs"


def slugify(name: str) -> str:
    """Turn a free-form run name into a safe folder-name fragment (may be empty)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-._")
    return slug[:60]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a plain folder name, else raise RunError naming it."""
    # fullmatch, not match: '$' would let a trailing newline through.
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise RunError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators, no '..')"
        )
    return run_id


def run_path(run_id: str, runs_dir: Path | None = None) -> Path:
    """The folder of ``run_id`` inside ``runs_dir``; never a path outside it."""
    base = Path(runs_dir or default_runs_dir()).resolve()
    path = (base / check_run_id(run_id)).resolve()
    if path.parent != base:
        raise RunError(f"run id {run_id!r} escapes the runs folder {base}")
    return path


def resolve_run_dir(ref: str | os.PathLike, runs_dir: Path | None = None) -> Path:
    """A run given as a folder path or as a run id in ``runs_dir``; it must exist."""
    candidate = Path(ref)
    if candidate.is_dir() and (candidate / "config.json").exists():
        return candidate.resolve()
    path = run_path(str(ref), runs_dir)
    if not (path / "config.json").exists():
        raise RunError(f"no run {str(ref)!r}: {path} has no config.json")
    return path


def create_run_dir(name: str = "", runs_dir: Path | None = None) -> Path:
    """Make a new, uniquely named run folder (``<UTC time>-<name>[-n]``) atomically."""
    base = Path(runs_dir or default_runs_dir())
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = slugify(name)
    stem = f"{stamp}-{slug}" if slug else stamp
    for n in range(1000):
        run_id = stem if n == 0 else f"{stem}-{n}"
        path = base / run_id
        try:
            path.mkdir()  # atomic: two processes never get the same id
        except FileExistsError:
            continue
        (path / "checkpoints").mkdir()
        return path
    raise RunError(f"could not find a free run id for {stem!r} in {base}")


# ---------------------------------------------------------------- atomic files


def atomic_write(path: Path, write: bytes | Callable[[BinaryIO], Any]) -> None:
    """The bytes, or what ``write(file)`` writes (a writer that streams, like ``torch.save``), into
    a temp file in the same folder, synced, then ``os.replace``d onto ``path``: readers never see half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(write) if isinstance(write, bytes) else write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file; ``default`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
        return default


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines; one ``write`` call so a line is never split by a reader."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


@dataclass
class _Tail:
    inode: int
    size: int
    mtime_ns: int
    offset: int  # bytes parsed so far: up to the end of the last complete line
    rows: list


# One incremental reader per file for the whole process: every page, session and tab that
# polls a run's metrics.jsonl shares it, and a poll reads only the bytes appended since.
_tails: dict[str, _Tail] = {}
_tails_lock = threading.Lock()


def _parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Rows of the complete lines in ``data`` and the bytes they span; a partial last line waits."""
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            continue  # a damaged line; the rest of the file still counts
        if isinstance(row, dict):
            rows.append(row)
    return rows, end


def _stat_or_forget(path: Path, cache: dict, lock: threading.Lock) -> os.stat_result | None:
    """The file's stat, or None (its entry dropped from ``cache``) when it cannot be read."""
    try:
        return os.stat(path)
    except OSError:
        with lock:
            cache.pop(str(path), None)
        return None


def read_jsonl(path: Path) -> list[dict]:
    """All complete rows of a JSONL file; a partial or corrupt line is skipped.

    Cached per file: unchanged (size and mtime), it costs one stat; grown, only the new
    bytes are read; replaced (another inode) or shrunk, it is read again from the start.
    """
    key = str(path)
    st = _stat_or_forget(path, _tails, _tails_lock)
    if st is None:
        return []
    with _tails_lock:
        tail = _tails.get(key)
        if tail and (tail.inode, tail.size, tail.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
            return list(tail.rows)
        if not tail or tail.inode != st.st_ino or st.st_size < tail.offset:
            tail = _Tail(st.st_ino, 0, 0, 0, [])
        try:
            with open(path, "rb") as fh:
                fh.seek(tail.offset)
                data = fh.read()
        except FileNotFoundError:
            _tails.pop(key, None)
            return []
        rows, used = _parse_lines(data)
        tail.rows.extend(rows)
        tail.offset += used
        tail.size, tail.mtime_ns = tail.offset + (len(data) - used), st.st_mtime_ns
        _tails[key] = tail
        return list(tail.rows)


# The small JSON files of the run folders (config, status, summary, notes), parsed once per
# change for the whole process: every page, session and tab that lists runs, most of them every
# 2 s, shares one parse, and an unchanged file costs a stat. A file is read again when it was
# replaced (an atomic write gives it another inode), changed size or mtime, or JSON_RECHECK_S
# after it was read: the bound on staleness should two writes land in one tick of the clock.
JSON_RECHECK_S = 10.0
_json_files: dict[str, tuple[tuple[int, int, int], float, Any]] = {}
_json_lock = threading.Lock()


def _read_json_shared(path: Path) -> dict:
    """A run folder's JSON object file, read through the shared cache ({} when missing or not an
    object); the caller gets its own copy of the top level."""
    key = str(path)
    st = _stat_or_forget(path, _json_files, _json_lock)
    if st is None:
        return {}
    stamp, now = (st.st_ino, st.st_size, st.st_mtime_ns), time.monotonic()
    with _json_lock:
        cached = _json_files.get(key)
    if cached and cached[0] == stamp and now - cached[1] < JSON_RECHECK_S:
        value = cached[2]
    else:
        value = read_json(path, {})
        value = value if isinstance(value, dict) else {}
        with _json_lock:
            _json_files[key] = (stamp, now, value)
    return dict(value)


def _forget(run_dir: Path) -> None:
    """Drop a removed run folder's files from the shared caches."""
    prefix = str(run_dir) + os.sep
    with _json_lock:
        for key in [k for k in _json_files if k.startswith(prefix)]:
            del _json_files[key]
    with _tails_lock:
        for key in [k for k in _tails if k.startswith(prefix)]:
            del _tails[key]


# ---------------------------------------------------------------- status


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists (and is not a zombie)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def write_status(run_dir: Path, state: str, **fields: Any) -> dict:
    """Replace status.json with ``state`` plus fields, keeping earlier keys not overridden."""
    if state not in STATES:
        raise RunError(f"unknown state {state!r}; choose one of: {', '.join(STATES)}")
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    status.update(fields)
    status["state"] = state
    status["updated"] = now_iso()
    status["updated_ts"] = time.time()
    write_json(path, status)
    return status


def read_status(run_dir: Path) -> dict:
    """status.json with the state corrected for dead trainers.

    A run that says ``running`` but whose pid is gone, or whose heartbeat is older than
    HEARTBEAT_TIMEOUT_S, was killed: it reads as ``interrupted`` with ``stale: True``.
    """
    status = _read_json_shared(Path(run_dir) / "status.json")
    status.setdefault("state", "queued" if (Path(run_dir) / "config.json").exists() else "failed")
    if status["state"] == "running":
        beat = float(status.get("heartbeat_ts") or status.get("updated_ts") or 0)
        same_host = status.get("host") in (None, os.uname().nodename)
        dead = same_host and not pid_alive(status.get("pid"))
        if dead or time.time() - beat > HEARTBEAT_TIMEOUT_S:
            status["state"] = "interrupted"
            status["stale"] = True
            # not setdefault: a running trainer's status holds "error": null
            status["error"] = status.get("error") or "the trainer stopped without saying why (killed?)"
    return status


# ---------------------------------------------------------------- listing


@dataclass
class RunInfo:
    """What a list of runs needs to show about one run, read without torch."""

    run_id: str
    path: Path
    config: dict
    status: dict
    summary: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)  # notes.json

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    @property
    def arch(self) -> str:
        return self.config.get("arch", "?")

    @property
    def pretrained(self) -> bool:
        return bool(self.config.get("pretrained"))

    @property
    def configuration(self) -> str:
        """One of the four lab configurations, e.g. ``resnet18 / pretrained``."""
        return f"{self.arch} / {'pretrained' if self.pretrained else 'scratch'}"

    @property
    def created(self) -> str:
        return self.status.get("created") or self.config.get("created") or ""

    @property
    def notes(self) -> str:
        return str(self.annotations.get("notes") or "")

    @property
    def tags(self) -> list[str]:
        return [str(t) for t in self.annotations.get("tags") or []]


def load_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    return RunInfo(
        run_id=run_dir.name,
        path=run_dir,
        config=_read_json_shared(run_dir / "config.json"),
        status=read_status(run_dir),
        summary=_read_json_shared(run_dir / "summary.json"),
        annotations=_read_json_shared(run_dir / "notes.json"),
    )


def list_runs(runs_dir: Path | None = None) -> list[RunInfo]:
    """All run folders, newest first."""
    base = Path(runs_dir or default_runs_dir())
    if not base.is_dir():
        return []
    runs = [load_run(p) for p in base.iterdir() if p.is_dir() and (p / "config.json").exists()]
    runs.sort(key=lambda r: (r.created, r.run_id), reverse=True)
    return runs


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def epoch_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]


def step_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("kind") == "step"]


def read_predictions(run_dir: Path):
    """predictions.csv as a DataFrame (split, index, name, label, pred, p0..p4, ...); None if absent."""
    import pandas as pd

    try:
        return pd.read_csv(Path(run_dir) / "predictions.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    if which not in ("best", "last"):
        raise RunError(f"unknown checkpoint {which!r}; choose one of: best, last")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


@contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on the file ``path`` (created if missing) while the block runs; yields
    False at once instead of waiting when ``blocking`` is off and another process holds it."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


PINS_FILE, PINS_LOCK = ".champions.json", ".champions.lock"


def read_pins(runs_dir: Path | None = None) -> list[str]:
    """The ids of the runs the user pinned to stand for their configuration (see PINS_FILE)."""
    body = _read_json_shared(Path(runs_dir or default_runs_dir()) / PINS_FILE)
    return [i for i in body.get("pinned") or [] if isinstance(i, str)]


def update_pins(change: Callable[[list[str]], list[str]], runs_dir: Path | None = None) -> list[str]:
    """Replace the pinned run ids by ``change(pinned)``, under a lock and atomically; returns them."""
    base = Path(runs_dir or default_runs_dir())
    base.mkdir(parents=True, exist_ok=True)
    with locked(base / PINS_LOCK):
        body = read_json(base / PINS_FILE, {})
        current = [i for i in (body.get("pinned") if isinstance(body, dict) else None) or [] if isinstance(i, str)]
        pinned = list(dict.fromkeys(change(current)))
        write_json(base / PINS_FILE, {"pinned": pinned, "updated": now_iso()})
    return pinned


MAX_NOTES_CHARS, MAX_TAGS, MAX_TAG_CHARS = 10_000, 20, 40


def parse_tags(text: str) -> list[str]:
    """Tags from a comma-separated string: trimmed, lower-cased, unique, in order."""
    tags = []
    for raw in str(text).split(","):
        tag = re.sub(r"\s+", " ", raw.strip().lower())
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def write_notes(run_dir: Path, notes: str = "", tags: list[str] | str = ()) -> dict:
    """Store a run's notes and tags in notes.json (atomically); returns what was written."""
    tags = parse_tags(tags) if isinstance(tags, str) else parse_tags(",".join(tags))
    if len(notes) > MAX_NOTES_CHARS:
        raise RunError(f"notes are {len(notes):,} characters; keep them under {MAX_NOTES_CHARS:,}")
    too_long = [t for t in tags if len(t) > MAX_TAG_CHARS]
    if len(tags) > MAX_TAGS or too_long:
        raise RunError(f"at most {MAX_TAGS} tags of at most {MAX_TAG_CHARS} characters each"
                       + (f"; too long: {too_long[0]!r}" if too_long else f"; got {len(tags)}"))
    body = {"notes": notes, "tags": tags, "updated": now_iso()}
    write_json(Path(run_dir) / "notes.json", body)
    return body


def delete_run(run_id: str, runs_dir: Path | None = None) -> None:
    """Remove a run folder; refuses one whose trainer is still alive."""
    path = run_path(run_id, runs_dir)
    if not path.is_dir():
        raise RunError(f"no run {run_id!r} in {path.parent}")
    status = read_status(path)
    if status["state"] == "running":
        raise RunError(f"run {run_id!r} is still running (pid {status.get('pid')}); stop it first")
    shutil.rmtree(path)
    _forget(path)
