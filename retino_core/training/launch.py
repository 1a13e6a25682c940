"""Start, queue, stop and resume trainer subprocesses. No torch import: the app uses this.

Every run is trained by ``python -m retino_core train --run-dir DIR`` in its own process
(through ``torch.distributed.run`` when its config asks for several processes). Queued runs
are drained by a worker (``python -m retino_core worker``) that holds an exclusive lock on the
runs folder and trains up to one run per **slot** at a time:

- with GPUs, one slot per visible GPU by default; each run sees only its own GPU
  (``CUDA_VISIBLE_DEVICES``) and its share of the cores;
- on a CPU-only machine one slot by default (the run gets every core). ``parallel`` N gives N
  slots, each with its own cores (CPU affinity) and ``cores / N`` threads, set explicitly so
  runs do not fight over OpenMP threads;
- a run with ``processes`` k (torchrun) takes k slots and starts when k are free; the queue
  is first come, first served, so a large run is never overtaken for ever by small ones.
  A run's place is the time it was (last) queued: a resumed or restarted run joins the back,
  unless it is asked to go next.

The number of slots is a setting of the runs folder (``set_parallel``), read by the worker
every time it looks for work, so the app and the CLI agree. Each running run's slot is in its
status.json. ``enqueue`` always spawns a worker: it either drains the queue or waits on the
lock and then finds the queue already empty, so no run is left behind and none trains twice.
Workers run in their own session, so they outlive the app; the trainers outlive a killed
worker, and the next worker adopts them (their slots stay busy until they end).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import runs

WORKER_LOCK = ".worker.lock"


ENQUEUE_LOCK = ".enqueue.lock"


WORKER_LOG = ".worker.log"


POOL_FILE = ".pool.json"


MAX_PARALLEL = 64


POLL_S = 0.5  # how often a busy worker looks whether one of its trainers ended


SCAN_S = 2.0  # how often it looks for queued runs while a slot is free


# Settings that do not change what a run computes; two runs differing only here are duplicates.
_NOT_IDENTITY = ("name", "created", "num_workers")


# What a queued run must not carry over from an earlier start.
_NOT_STARTED = dict(pid=None, launcher_pid=None, launch=None, slot=None)


def _base(runs_dir: Path | None) -> Path:
    base = Path(runs_dir or runs.default_runs_dir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return base


_locked = runs.locked


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_IDENTITY}


def python_cmd(*args: str) -> list[str]:
    """The argument list that runs the CLI with this interpreter (never through a shell)."""
    return [sys.executable, "-m", "retino_core", *args]


def enqueue(config: dict, runs_dir: Path | None = None, dedupe: bool = True,
            start_worker: bool = True, backend: str = "local") -> tuple[Path, bool]:
    """Queue a run of ``config`` (a TrainConfig dict); returns (run folder, created).

    With ``dedupe`` an identical configuration already queued or running is returned instead
    of a second copy, so two users pressing "run all four" at once train each one once. A run
    for another ``backend`` (a SLURM or submitit job: ``cluster``) is never the worker's.
    """
    from ..config import TrainConfig  # validates before anything is written

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
        runs.write_status(run_dir, "queued", created=runs.now_iso(), pid=None, queued_ts=time.time(),
                          **({} if backend == "local" else {"backend": backend}))
    if start_worker and backend == "local":
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


def queue(runs_dir: Path | None = None, all_runs: list[runs.RunInfo] | None = None) -> list[runs.RunInfo]:
    """The queued runs in the order they start: first come (last queued), first served."""
    listed = runs.list_runs(runs_dir) if all_runs is None else all_runs
    return sorted((r for r in listed if r.state == "queued"), key=queued_at)


def queued_at(run: runs.RunInfo) -> tuple[float, str, str]:
    """A run's place in the queue: when it was last queued (0 for runs queued before that was kept)."""
    return float(run.status.get("queued_ts") or 0.0), run.created, run.run_id


def next_queued(runs_dir: Path) -> runs.RunInfo | None:
    """The queued run that waited longest (or was asked to go next) of those this machine's
    worker trains (not one a SLURM or submitit job does)."""
    return next((r for r in queue(runs_dir) if r.status.get("backend") is None), None)


def _queued_ts(base: Path, first: bool) -> float:
    """Now (the back of the queue), or just before every waiting run (``first``: next to start)."""
    return min([queued_at(r)[0] for r in queue(base)] + [time.time()]) - 1.0 if first else time.time()


@dataclass(frozen=True)
class Slot:
    """One share of the machine a worker gives a run: GPUs, CPU cores, a thread count.

    ``threads`` 0 and no ``cpus`` mean "the whole machine" (one slot, nothing restricted).
    A run taking several slots gets them merged (``Slot.merge``): their GPUs and cores, and
    each of its processes one slot's threads.
    """

    indexes: tuple[int, ...]
    of: int
    gpus: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()
    threads: int = 0

    @property
    def label(self) -> str:
        where = f"GPU {','.join(self.gpus)}" if self.gpus else "CPU"
        if self.of == 1:
            return where
        which = ",".join(str(i + 1) for i in self.indexes)
        threads = f" · {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return f"{where} · slot {which} of {self.of}{threads}"

    def to_dict(self) -> dict:
        return {"indexes": list(self.indexes), "of": self.of, "gpus": list(self.gpus),
                "cpus": list(self.cpus), "threads": self.threads, "label": self.label}

    @classmethod
    def merge(cls, slots: list["Slot"]) -> "Slot":
        return cls(tuple(i for s in slots for i in s.indexes), slots[0].of,
                   tuple(dict.fromkeys(g for s in slots for g in s.gpus)),
                   tuple(sorted({c for s in slots for c in s.cpus})), slots[0].threads)

    def env(self, launch: str) -> dict[str, str]:
        """The trainer's environment: its GPUs, its thread count, its slot (for status.json)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RETINO_LAUNCH": launch,
               "RETINO_SLOT": json.dumps(self.to_dict())}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.threads:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(self.threads)
        return env


def visible_gpus() -> list[str]:
    """The GPUs runs may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for item in (x.strip() for x in listed.split(",")):
            if not item or item.startswith("-"):  # CUDA stops at the first invalid entry
                break
            gpus.append(item)
        return gpus
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def plan_slots(parallel: int | None = None, gpus: list[str] | None = None,
               cpus: list[int] | None = None) -> list[Slot]:
    """The worker's slots: ``parallel`` of them, or one per GPU (one on a CPU-only machine).

    Each slot gets ``len(cpus) // n`` cores of its own and as many threads; with more slots
    than cores every slot shares all of them with one thread. Slots outnumbering GPUs share
    the GPUs round-robin.
    """
    gpus = visible_gpus() if gpus is None else list(gpus)
    cpus = usable_cpus() if cpus is None else list(cpus)
    n = check_parallel(parallel) if parallel is not None else max(1, len(gpus))
    if n == 1:
        return [Slot((0,), 1, tuple(gpus[:1]))]
    per = len(cpus) // n
    return [Slot((i,), n, (gpus[i % len(gpus)],) if gpus else (),
                 tuple(cpus[i * per:(i + 1) * per]) if per else tuple(cpus), max(1, per))
            for i in range(n)]


def check_parallel(parallel: int) -> int:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_PARALLEL:
        raise runs.RunError(f"the number of runs at once must be a whole number from 1 to {MAX_PARALLEL}, got {parallel!r}")
    return parallel


def set_parallel(parallel: int | None, runs_dir: Path | None = None) -> None:
    """How many runs the worker of ``runs_dir`` trains at once; None: one per GPU (or 1)."""
    base = _base(runs_dir)
    if parallel is None:
        (base / POOL_FILE).unlink(missing_ok=True)
        return
    runs.write_json(base / POOL_FILE, {"parallel": check_parallel(parallel)})


def parallel_setting(runs_dir: Path | None = None) -> int | None:
    """The runs folder's number of slots, or None for the default (a bad file counts as unset)."""
    value = (runs.read_json(_base(runs_dir) / POOL_FILE, {}) or {}).get("parallel")
    try:
        return check_parallel(value)
    except runs.RunError:
        return None


def processes_of(config: dict) -> int:
    """How many processes (and so slots) a run takes: its config's ``processes``, at least 1."""
    try:
        return max(1, int(config.get("processes") or 1))
    except (TypeError, ValueError):
        return 1


def trainer_cmd(run_dir: Path, resume: bool = False, processes: int = 1) -> list[str]:
    """The command that trains a prepared run folder: plain, or under torchrun for k processes."""
    args = ["train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    if processes <= 1:
        return python_cmd(*args)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "retino_core", *args]


@dataclass
class _Job:
    """A trainer the worker watches: its own child, or one adopted from a killed worker."""

    run_dir: Path
    slots: tuple[int, ...]
    launch: str
    pid: int
    proc: subprocess.Popen | None = None

    def ended(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return not runs.pid_alive(self.pid)


def _launch(run: runs.RunInfo, slots: list[Slot]) -> _Job:
    slot = Slot.merge(slots)
    launch = uuid.uuid4().hex[:12]
    cmd = trainer_cmd(run.path, bool(run.status.get("resume")), processes_of(run.config))
    with open(log_path(run.path), "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=runs.PROJECT_ROOT, env=slot.env(launch))
    runs.write_status(run.path, "running", pid=proc.pid, launcher_pid=proc.pid, launch=launch,
                      slot=slot.to_dict(), heartbeat_ts=time.time(), host=os.uname().nodename, resume=False)
    return _Job(run.path, slot.indexes, launch, proc.pid, proc)


def _adopt(base: Path) -> list[_Job]:
    """Trainers a killed worker started that are still training: their slots stay busy."""
    jobs = []
    for run in runs.list_runs(base):
        status = run.status
        if run.state == "running" and status.get("launch") and status.get("slot") \
                and status.get("host") in (None, os.uname().nodename):
            pid = int(status.get("launcher_pid") or status.get("pid") or 0)
            if runs.pid_alive(pid):
                jobs.append(_Job(run.path, tuple(status["slot"].get("indexes") or ()), status["launch"], pid))
    return jobs


def _finish(job: _Job) -> None:
    """Record a trainer that died without saying so (killed, crashed at import, ...)."""
    status = runs.read_json(job.run_dir / "status.json", {}) or {}
    # Only this launch's own record counts: the run may already be queued again (resume).
    if status.get("state") not in runs.ACTIVE_STATES or status.get("launch") != job.launch:
        return
    if job.proc is None:
        state, why = "interrupted", "the trainer ended while no worker watched it"
    else:
        code = job.proc.returncode
        state = "interrupted" if code in (-signal.SIGKILL, -signal.SIGTERM) else "failed"
        why = f"trainer exited with code {code}"
    runs.write_status(job.run_dir, state, pid=None, error=f"{why}; see train.log: {_tail(log_path(job.run_dir))}")


def worker(runs_dir: Path | None = None, poll: bool = False, parallel: int | None = None,
           on_end: Callable[[Path], None] | None = None) -> int:
    """Drain the queue, one run per free slot; returns how many runs it started.

    ``parallel`` first sets the runs folder's number of slots. ``on_end`` is called with
    each run folder whose trainer this worker saw end. Returns when nothing is queued and
    none of its trainers is left (with ``poll``, never).
    """
    base = _base(runs_dir)
    started = 0
    with _locked(base / WORKER_LOCK):
        if parallel is not None:
            set_parallel(parallel, base)
        gpus = visible_gpus()
        jobs = _adopt(base)
        last_scan = 0.0
        while True:
            ended = [j for j in jobs if j.ended()]
            for job in ended:
                jobs.remove(job)
                _finish(job)
                if on_end is not None:
                    on_end(job.run_dir)
            plan = plan_slots(parallel_setting(base), gpus)
            busy = {i for job in jobs for i in job.slots}
            free = [s for s in plan if s.indexes[0] not in busy]
            # Reading every run folder costs the trainers CPU: only when a slot is free, and
            # then at most every SCAN_S unless a run just ended or nothing trains.
            if free and (ended or not jobs or time.monotonic() - last_scan >= SCAN_S):
                last_scan = time.monotonic()
                run = next_queued(base)
                while run is not None:
                    need = min(processes_of(run.config), len(plan))
                    if len(free) < need:
                        break  # first come, first served: wait for enough slots
                    try:
                        jobs.append(_launch(run, free[:need]))
                    except OSError as err:  # no interpreter, no room for train.log, ...
                        runs.write_status(run.path, "failed", pid=None, error=f"could not start the trainer: {err}")
                    else:
                        free = free[need:]
                        started += 1
                    run = next_queued(base)
                if not jobs and run is None and not poll:
                    return started
            time.sleep(POLL_S if jobs else 1.0)


def log_path(run_dir: Path) -> Path:
    """The trainer's output (stdout and stderr), written to the run folder when the queue starts it."""
    return Path(run_dir) / "train.log"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def stop(run_id: str, runs_dir: Path | None = None, timeout: float = 15.0) -> str:
    """Stop a run: a queued one is cancelled, a running one gets SIGTERM (then SIGKILL).

    A run that a SLURM or submitit job trains (``cluster.stop`` cancels that job first) is
    only waited for here: its trainer may be on another machine, and records its own end.
    """
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    status = runs.read_status(path)
    on_job = bool(status.get("backend"))
    if status["state"] == "queued":
        # A queued resume keeps its checkpoint and can resume again; a fresh run has nothing.
        if status.get("resume"):
            runs.write_status(path, "interrupted", resume=False, stopped_by="user",
                              error="stopped by you while it waited to resume; Resume continues from the last checkpoint")
            return "interrupted"
        runs.write_status(path, "cancelled", stopped_by="user", error="cancelled by you before it started")
        return "cancelled"
    if status["state"] != "running":
        return status["state"]
    # The launcher: the trainer itself, or torchrun, which passes the signal to every process.
    pid = 0 if on_job else int(status.get("launcher_pid") or status.get("pid") or 0)
    if pid and runs.pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while runs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if runs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    state = "running"
    for _ in range(int(10 * timeout) if on_job else 50):  # the worker or the trainer itself records the end state
        state = runs.read_status(path)["state"]
        if state != "running":
            break
        time.sleep(0.1)
    if state in ("running", "interrupted"):  # said in the user's words, not the signal's
        runs.write_status(path, "interrupted", stopped_by="user",
                          error="stopped by you; Resume continues from the last checkpoint")
        return "interrupted"
    return state


def resume(run_id: str, runs_dir: Path | None = None, start_worker: bool = True, first: bool = False) -> Path:
    """Queue an interrupted or failed run to continue from its last checkpoint, at the back of
    the queue (``first``: next to start)."""
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    state = runs.read_status(path)["state"]
    if state not in ("interrupted", "failed"):
        raise runs.RunError(f"run {run_id!r} is {state}; only interrupted or failed runs resume")
    if not runs.checkpoint_path(path, "last").exists():
        raise runs.RunError(f"run {run_id!r} has no last checkpoint yet; start it again instead")
    runs.write_status(path, "queued", resume=True, error=None, stopped_by=None,
                      queued_ts=_queued_ts(base, first), **_NOT_STARTED)
    if start_worker:
        spawn_worker(base)
    return path


def can_resume(run: runs.RunInfo) -> bool:
    """An interrupted or failed run with a last checkpoint to continue from."""
    return run.state in ("interrupted", "failed") and runs.checkpoint_path(run.path, "last").exists()


def can_start_again(run: runs.RunInfo) -> bool:
    """A run that ended before it saved anything to continue from (cancelled, say)."""
    return run.state in ("cancelled", "interrupted", "failed") and not runs.checkpoint_path(run.path, "last").exists()


def start_again(run_id: str, runs_dir: Path | None = None, start_worker: bool = True, first: bool = False) -> Path:
    """Queue a run that has no checkpoint to train from the start, with its config unchanged
    (at the back of the queue, or next with ``first``)."""
    base = _base(runs_dir)
    path = runs.run_path(run_id, base)
    run = runs.load_run(path)
    if not can_start_again(run):
        raise runs.RunError(f"run {run_id!r} is {run.state}" + ("; resume it instead" if can_resume(run) else ""))
    runs.atomic_write(path / "metrics.jsonl", b"")
    runs.write_status(path, "queued", resume=False, error=None, progress={}, stopped_by=None,
                      queued_ts=_queued_ts(base, first), **_NOT_STARTED)
    if start_worker:
        spawn_worker(base)
    return path
