"""Start, queue, stop and resume trainer subprocesses. No torch import: the app uses this.

Every run is trained by ``python -m retino_core train --run-dir DIR`` in its own process.
Queued runs are drained by a worker (``python -m retino_core worker``) that holds an
exclusive lock on the runs folder, so one run trains at a time on the machine's device and
the others start by themselves. ``enqueue`` always spawns a worker: it either drains the
queue or waits on the lock and then finds the queue already empty, so no run is left behind
and none trains twice. Workers run in their own session, so they outlive the app.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import runs

WORKER_LOCK = ".worker.lock"
ENQUEUE_LOCK = ".enqueue.lock"
WORKER_LOG = ".worker.log"
# Settings that do not change what a run computes; two runs differing only here are duplicates.
_NOT_IDENTITY = ("name", "created", "num_workers")


def _base(runs_dir: Path | None) -> Path:
    base = Path(runs_dir or runs.default_runs_dir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
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


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_IDENTITY}


def python_cmd(*args: str) -> list[str]:
    """The argument list that runs the CLI with this interpreter (never through a shell)."""
    return [sys.executable, "-m", "retino_core", *args]


def enqueue(config: dict, runs_dir: Path | None = None, dedupe: bool = True,
            start_worker: bool = True) -> tuple[Path, bool]:
    """Queue a run of ``config`` (a TrainConfig dict); returns (run folder, created).

    With ``dedupe`` an identical configuration already queued or running is returned instead
    of a second copy, so two users pressing "run all four" at once train each one once.
    """
    from .config import TrainConfig  # validates before anything is written

    cfg = TrainConfig.from_dict(config).validate()
    base = _base(runs_dir)
    with _locked(base / ENQUEUE_LOCK):
        if dedupe:
            want = _identity(cfg.to_dict())
            for run in runs.list_runs(base):
                if run.state in runs.ACTIVE_STATES and _identity(run.config) == want:
                    return run.path, False
        name = cfg.name or f"{cfg.arch}-{'pre' if cfg.pretrained else 'scratch'}"
        run_dir = runs.create_run_dir(name, base)
        runs.write_json(run_dir / "config.json", {**cfg.to_dict(), "created": runs.now_iso()})
        runs.write_status(run_dir, "queued", created=runs.now_iso(), pid=None)
    if start_worker:
        spawn_worker(base)
    return run_dir, True


def spawn_worker(runs_dir: Path | None = None) -> int:
    """Start a detached worker process for ``runs_dir``; returns its pid."""
    base = _base(runs_dir)
    with open(base / WORKER_LOG, "ab") as log:
        proc = subprocess.Popen(
            python_cmd("worker", "--runs-dir", str(base)),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=runs.PROJECT_ROOT, start_new_session=True,  # survives the app and its reruns
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid


def worker_active(runs_dir: Path | None = None) -> bool:
    """True while some worker holds the queue lock (training, or about to)."""
    with _locked(_base(runs_dir) / WORKER_LOCK, blocking=False) as got:
        return not got


def ensure_worker(runs_dir: Path | None = None) -> bool:
    """Start a worker when runs are queued and none is active (after a reboot, say)."""
    base = _base(runs_dir)
    if next_queued(base) is None or worker_active(base):
        return False
    spawn_worker(base)
    return True


def next_queued(runs_dir: Path) -> runs.RunInfo | None:
    """The oldest queued run."""
    queued = [r for r in runs.list_runs(runs_dir) if r.state == "queued"]
    return min(queued, key=lambda r: (r.created, r.run_id)) if queued else None


def worker(runs_dir: Path | None = None, poll: bool = False) -> int:
    """Drain the queue one run at a time; returns how many runs it started."""
    base = _base(runs_dir)
    started = 0
    with _locked(base / WORKER_LOCK):
        while True:
            run = next_queued(base)
            if run is None:
                if poll:
                    time.sleep(1.0)
                    continue
                return started
            resume = bool(run.status.get("resume"))
            args = ["train", "--run-dir", str(run.path)] + (["--resume"] if resume else [])
            with open(run.path / "train.log", "ab") as log:
                proc = subprocess.Popen(python_cmd(*args), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, cwd=runs.PROJECT_ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            runs.write_status(run.path, "running", pid=proc.pid, heartbeat_ts=time.time(),
                              host=os.uname().nodename, resume=False)
            started += 1
            code = proc.wait()
            status = runs.read_json(run.path / "status.json", {}) or {}
            # Only this trainer's own record counts: the run may already be queued again (resume).
            if status.get("state") in runs.ACTIVE_STATES and status.get("pid") == proc.pid:
                # The trainer died before it could say so (killed, crashed at import, ...).
                state = "interrupted" if code in (-signal.SIGKILL, -signal.SIGTERM) else "failed"
                runs.write_status(run.path, state, pid=None,
                                  error=f"trainer exited with code {code}; see train.log: {_tail(run.path / 'train.log')}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def stop(run_id: str, runs_dir: Path | None = None, timeout: float = 15.0) -> str:
    """Stop a run: a queued one is cancelled, a running one gets SIGTERM (then SIGKILL)."""
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    status = runs.read_status(path)
    if status["state"] == "queued":
        # A queued resume keeps its checkpoint and can resume again; a fresh run has nothing.
        if status.get("resume"):
            runs.write_status(path, "interrupted", resume=False, error="stopped while queued to resume")
            return "interrupted"
        runs.write_status(path, "cancelled", error="cancelled before it started")
        return "cancelled"
    if status["state"] != "running":
        return status["state"]
    pid = int(status.get("pid") or 0)
    if pid and runs.pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while runs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if runs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    for _ in range(50):  # the worker or the trainer itself records the end state
        state = runs.read_status(path)["state"]
        if state != "running":
            return state
        time.sleep(0.1)
    runs.write_status(path, "interrupted", error="stopped by the user")
    return "interrupted"


def resume(run_id: str, runs_dir: Path | None = None, start_worker: bool = True) -> Path:
    """Queue an interrupted or failed run to continue from its last checkpoint."""
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    state = runs.read_status(path)["state"]
    if state not in ("interrupted", "failed"):
        raise runs.RunError(f"run {run_id!r} is {state}; only interrupted or failed runs resume")
    if not runs.checkpoint_path(path, "last").exists():
        raise runs.RunError(f"run {run_id!r} has no last checkpoint yet; start it again instead")
    runs.write_status(path, "queued", resume=True, error=None, pid=None)
    if start_worker:
        spawn_worker(base)
    return path


def can_resume(run: runs.RunInfo) -> bool:
    """An interrupted or failed run with a last checkpoint to continue from."""
    return run.state in ("interrupted", "failed") and runs.checkpoint_path(run.path, "last").exists()


def can_start_again(run: runs.RunInfo) -> bool:
    """A run that ended before it saved anything to continue from (cancelled, say)."""
    return run.state in ("cancelled", "interrupted", "failed") and not runs.checkpoint_path(run.path, "last").exists()


def start_again(run_id: str, runs_dir: Path | None = None, start_worker: bool = True) -> Path:
    """Queue a run that has no checkpoint to train from the start, with its config unchanged."""
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    run = runs.load_run(path)
    if not can_start_again(run):
        raise runs.RunError(f"run {run_id!r} is {run.state}" + ("; resume it instead" if can_resume(run) else ""))
    runs.atomic_write_bytes(path / "metrics.jsonl", b"")
    runs.write_status(path, "queued", resume=False, error=None, pid=None, progress={})
    if start_worker:
        spawn_worker(base)
    return path
