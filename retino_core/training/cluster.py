"""Sweeps as jobs: a SLURM job array through submitit, or the same jobs through submitit's local
executor. No torch import (the app and ``runs`` use this); submitit is imported when needed.

Each task trains one prepared run folder (``TrainJob``), as ``train --run-dir`` does, so the
run folder on the shared filesystem stays the whole truth. Its ``job.json`` names the job that
trains it (backend, job id, submitit's folder and logs, the resources asked for): ``runs`` and
the app add the job's state to the run's, and stop and resume go through the job's backend.

- ``slurm``: one ``sbatch`` job array (``--array=0-N%P``); states from ``sacct``; stop is
  submitit's ``SlurmJob.cancel`` (``scancel``). SLURM's signal before the time limit (or a
  preemption) requeues the task, which then resumes from the run's last checkpoint.
- ``submitit-local``: submitit's local executor, one controller process per run, whose pid is
  the job id. submitit would start every job at once; a detached helper submits at most
  ``array_parallelism`` at a time instead, and the jobs outlive the terminal of the sweep.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import runs
from ..errors import ClusterError
from . import launch

BACKENDS = ("local", "submitit-local", "slurm")
JOB_BACKENDS = ("submitit-local", "slurm")
JOB_FILE = "job.json"  # in a run folder (the layout in runs.py): the job that trains the run
JOBS_DIR = ".submitit"  # in the runs folder: submitit's pickles and logs, a folder per job
JOB_NAME = "retino"
# Without a limit submitit's local controller kills a task after 2 minutes, SLURM after 5.
DEFAULT_TIME_MIN = {"slurm": 24 * 60, "submitit-local": 30 * 24 * 60}
# sacct states of a job that will not run (again); PREEMPTED and REQUEUED jobs come back.
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT")
SACCT_EVERY_S = 15.0  # one sacct call for all jobs at most this often per process
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:=+@%/-]+$")  # what may go into an #SBATCH line


@dataclass(frozen=True)
class JobSpec:
    """What each job asks for: the backend, and for SLURM the partition, GPUs, time, array
    throttle, CPUs, memory, setup lines and any other ``#SBATCH`` option."""

    backend: str
    partition: str | None = None
    gpus_per_node: int | None = None  # None: 1 on SLURM; on this machine, 1 when it has a GPU
    time_min: int | None = None
    array_parallelism: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    setup: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)  # more #SBATCH options: {"account": "lab", "qos": "normal"}

    def checked(self) -> "JobSpec":
        """The spec, or ClusterError naming the first value a batch script cannot take."""
        if self.backend not in JOB_BACKENDS:
            raise ClusterError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        for name in ("gpus_per_node", "time_min", "array_parallelism", "cpus_per_task"):
            value, least = getattr(self, name), 0 if name == "gpus_per_node" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ClusterError(f"--{name.replace('_min', '').replace('_', '-')} must be a whole number "
                                   f"of at least {least}, got {value!r}")
        texts = {"--partition": self.partition, "--mem": self.mem,
                 **{f"--slurm-option {k}": f"{k}={v}" for k, v in self.options.items()}}
        for flag, text in texts.items():
            if text is not None and not _PLAIN.fullmatch(str(text)):
                raise ClusterError(f"{flag} {text!r}: use letters, digits and _.,:=+@%/- only")
        if any("\n" in line or "\r" in line for line in self.setup):
            raise ClusterError("a --setup line must be one line")
        return self

    @property
    def time(self) -> int:
        return self.time_min or DEFAULT_TIME_MIN[self.backend]

    def gpus(self, visible: list[str]) -> int:
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return 1 if self.backend == "slurm" or visible else 0

    def to_dict(self) -> dict:
        return {**asdict(self), "setup": list(self.setup)}

    @classmethod
    def from_dict(cls, d: dict) -> "JobSpec":
        return cls(**{**d, "setup": tuple(d.get("setup") or ()), "options": dict(d.get("options") or {})})

    def slurm_parameters(self, count: int) -> dict:
        """submitit's SlurmExecutor parameters for ``count`` runs (an array when more than one)."""
        params = dict(job_name=JOB_NAME, time=self.time, gpus_per_node=self.gpus([]),
                      # the job starts where the code is, so that it imports retino_core
                      additional_parameters={"chdir": str(runs.PROJECT_ROOT), **self.options},
                      setup=list(self.setup))
        if count > 1:
            params["array_parallelism"] = self.array_parallelism or count
        for key, value in (("partition", self.partition), ("cpus_per_task", self.cpus_per_task), ("mem", self.mem)):
            if value is not None:
                params[key] = value
        return params


class TrainJob:
    """What each task runs: train one prepared run folder, resuming from its last checkpoint
    when it has one (a resubmitted or requeued run). Picklable by reference."""

    def __call__(self, run_dir: str) -> dict:
        from .lifecycle import run_training

        path = Path(run_dir)
        state = runs.read_status(path)["state"]
        if state in ("done", "cancelled"):  # finished before a requeue, or stopped before its turn
            return {"state": state}
        resume = runs.checkpoint_path(path, "last").exists()
        if not resume and (path / "metrics.jsonl").exists():
            runs.atomic_write(path / "metrics.jsonl", b"")  # rows of an epoch nothing saved
        summary = run_training(path, resume=resume, quiet=True)
        return {k: summary.get(k) for k in ("test_acc", "test_qwk", "test_auc", "best_epoch")}

    def checkpoint(self, run_dir: str):
        """Called by submitit before a time limit or a preemption: requeue the same task, which
        resumes from the last checkpoint (the epoch in progress is trained again)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run_dir)


def read_job(run_dir: Path) -> dict:
    """The run's job.json (backend, job id, submitit's folder, ...); {} for runs no job trains."""
    found = runs.read_json(Path(run_dir) / JOB_FILE, {})
    return found if isinstance(found, dict) else {}


def write_job(run_dir: Path, record: dict) -> None:
    """Replace the run's job.json with ``record``."""
    runs.write_json(Path(run_dir) / JOB_FILE, record)


def _jobs_folder(runs_dir: Path) -> Path:
    return Path(runs_dir) / JOBS_DIR / "%j"


def _record(job, spec: JobSpec, runs_dir: Path, earlier: list | None = None) -> dict:
    """job.json: enough to find the job again from any process, and to submit the run again."""
    record = {"backend": spec.backend, "job_id": str(job.job_id), "folder": str(_jobs_folder(runs_dir)),
              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "submitted": runs.now_iso(),
              "spec": spec.to_dict(), "earlier": list(earlier or [])}
    if spec.backend == "submitit-local":
        record["started_ticks"] = _start_ticks(int(job.job_id))
    return record


def submit(run_dirs: list[Path], spec: JobSpec, runs_dir: Path, gpus: list[str] = ()) -> list[dict]:
    """Submit one job per prepared run folder; returns their job records (also in job.json).

    On SLURM the runs go as one job array. Through the local executor a detached helper
    submits them ``array_parallelism`` at a time; this returns once the first are submitted.
    """
    spec = spec.checked()
    run_dirs = [Path(d) for d in run_dirs]
    if spec.backend == "slurm":
        return _submit_slurm(run_dirs, spec, Path(runs_dir))
    return _submit_local(run_dirs, spec, Path(runs_dir), list(gpus))


def resubmit(run_dir: Path, gpus: list[str] = ()) -> dict:
    """Submit a run again through the backend and with the resources of its last job (resume)."""
    record = read_job(run_dir)
    spec = JobSpec.from_dict(record["spec"]).checked()
    earlier = list(record.get("earlier") or []) + ([record["job_id"]] if record.get("job_id") else [])
    write_job(run_dir, {"backend": spec.backend, "spec": spec.to_dict(), "earlier": earlier})
    if spec.backend == "slurm":
        return _submit_slurm([Path(run_dir)], spec, Path(run_dir).parent, earlier)[0]
    return _submit_local([Path(run_dir)], spec, Path(run_dir).parent, list(gpus), {str(run_dir): earlier})[0]


# ---------------------------------------------------------------- SLURM


def _slurm_available() -> None:
    missing = [cmd for cmd in ("sbatch", "srun", "sacct", "scancel") if shutil.which(cmd) is None]
    if missing:
        raise ClusterError(f"SLURM is not available on this machine: {', '.join(missing)} not found on PATH. "
                           "Run the sweep on the cluster's login node, or on this machine with "
                           "--backend submitit-local")


def sbatch_script(spec: JobSpec, count: int, runs_dir: Path) -> str:
    """The batch script submitit submits for ``count`` runs with ``spec`` (no cluster needed)."""
    from submitit.slurm.slurm import _make_sbatch_string  # pure: the text sbatch gets

    folder = _jobs_folder(runs_dir)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, map_count=count if count > 1 else None,
                               **spec.checked().slurm_parameters(count))


def _submit_slurm(run_dirs: list[Path], spec: JobSpec, runs_dir: Path, earlier: list | None = None) -> list[dict]:
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    _slurm_available()
    executor = submitit.SlurmExecutor(folder=_jobs_folder(runs_dir))
    try:
        executor.update_parameters(**spec.slurm_parameters(len(run_dirs)))
    except ValueError as err:
        raise ClusterError(f"submitit refused the SLURM parameters: {err}") from None
    try:
        jobs = executor.map_array(TrainJob(), [str(d) for d in run_dirs])
    except (FailedJobError, FailedSubmissionError, OSError, subprocess.SubprocessError) as err:
        text = " | ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())[-600:]
        raise ClusterError(f"sbatch refused the job: {text or type(err).__name__}") from None
    records = [_record(job, spec, runs_dir, earlier) for job in jobs]
    for run_dir, record in zip(run_dirs, records):
        write_job(run_dir, record)
    return records


_slurm_seen: dict = {"jobs": {}, "checked": float("-inf")}


def _slurm_state(record: dict) -> tuple[str, str]:
    """(sacct state, nodes) of a SLURM job; one sacct call for every job at most every SACCT_EVERY_S."""
    import submitit

    key = (record["folder"], record["job_id"])
    fresh = key not in _slurm_seen["jobs"]
    job = _slurm_seen["jobs"].setdefault(key, submitit.SlurmJob(record["folder"], record["job_id"]))
    if fresh or time.monotonic() - _slurm_seen["checked"] > SACCT_EVERY_S:
        job.watcher.update()
        _slurm_seen["checked"] = time.monotonic()
    info = job.watcher.get_info(record["job_id"], mode="cache")
    state = (info.get("State") or "UNKNOWN").split()[0]  # "CANCELLED by 1234"
    return state, info.get("NodeList") or ""


# ---------------------------------------------------------------- submitit's local executor


def _start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks after boot): a pid plus this names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _controller_alive(record: dict) -> bool:
    """The local job's controller (the job id is its pid) is alive and the one submitted."""
    try:
        pid = int(record.get("job_id") or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    same = record.get("started_ticks") in (None, _start_ticks(pid))
    return same and b"submitit.local._local" in cmdline and runs.pid_alive(pid)


def _submit_local(run_dirs: list[Path], spec: JobSpec, runs_dir: Path, gpus: list[str],
                  earlier: dict | None = None, wait_s: float = 60.0) -> list[dict]:
    if spec.gpus_per_node and len(gpus) < spec.gpus_per_node:
        raise ClusterError(f"--gpus-per-node {spec.gpus_per_node}: this machine shows {len(gpus)} GPU(s)")
    jobs_root = Path(runs_dir) / JOBS_DIR
    jobs_root.mkdir(parents=True, exist_ok=True)
    plan = jobs_root / f"plan-{time.time_ns()}.json"
    runs.write_json(plan, {"runs": [str(d) for d in run_dirs], "spec": spec.to_dict(), "gpus": list(gpus),
                           "runs_dir": str(runs_dir), "earlier": earlier or {}})
    log = plan.with_suffix(".log")
    with open(log, "ab") as out:
        # Its own session and no terminal: Ctrl-C in the sweep's terminal never reaches the jobs,
        # and a caller reading this process's output is not held open by them.
        helper = subprocess.Popen([sys.executable, "-m", "retino_core.training.cluster", str(plan)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=runs.PROJECT_ROOT, start_new_session=True)
    first = run_dirs[:spec.array_parallelism or len(run_dirs)]
    deadline = time.monotonic() + wait_s
    while not all(read_job(d).get("job_id") for d in first):
        if helper.poll() is not None:
            raise ClusterError(f"submitit's local executor did not start the jobs: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the jobs were not submitted within {wait_s:.0f} s: {_tail(log)}")
        time.sleep(0.1)
    return [read_job(d) for d in run_dirs]


def _local_executor(runs_dir: Path, spec: JobSpec, gpus: list[str]):
    import submitit

    executor = submitit.LocalExecutor(folder=_jobs_folder(runs_dir))
    params = dict(timeout_min=spec.time, gpus_per_node=len(gpus))
    if gpus and all(g.isdigit() for g in gpus):
        params["visible_gpus"] = tuple(int(g) for g in gpus)
    executor.update_parameters(**params)
    return executor


def helper(plan_path: Path) -> int:
    """The detached submitter of a local sweep: at most ``array_parallelism`` jobs at once, each
    with GPUs of its own when it asks for them; a run stopped before its turn is skipped."""
    plan = json.loads(Path(plan_path).read_text())
    spec, runs_dir = JobSpec.from_dict(plan["spec"]), Path(plan["runs_dir"])
    todo, free = [Path(p) for p in plan["runs"]], list(plan["gpus"])
    limit, per = spec.array_parallelism or len(todo), spec.gpus(plan["gpus"])
    active: list = []
    while todo:
        for record, taken in [a for a in active if not _controller_alive(a[0])]:
            active.remove((record, taken))
            free += taken
        while todo and len(active) < limit:
            run_dir = todo.pop(0)
            if runs.read_status(run_dir)["state"] != "queued":
                continue
            taken, free = free[:per], free[per:]
            job = _local_executor(runs_dir, spec, taken).submit(TrainJob(), str(run_dir))
            record = {**_record(job, spec, runs_dir, plan["earlier"].get(str(run_dir))), "gpus": taken}
            write_job(run_dir, record)
            active.append((record, taken))
            print(f"{run_dir.name}: job {job.job_id}", flush=True)
        time.sleep(1.0)
    return 0


def _stop_local(record: dict, status: dict, timeout: float) -> None:
    """SIGTERM to the controller, which passes it on to the trainer (submitit's own cancel is a
    SIGINT followed by a SIGKILL one second later: too soon for a checkpoint); SIGKILL after
    ``timeout``."""
    pid = int(record["job_id"])
    if not _controller_alive(record):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _controller_alive(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _controller_alive(record):
        trainer = status.get("pid")
        if trainer and status.get("host") in (None, os.uname().nodename) and runs.pid_alive(trainer):
            os.kill(trainer, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- states, stop


def job_status(run: runs.RunInfo) -> dict | None:
    """The job that trains ``run``: backend, job id, state, whether it ended, and a label for
    the app and ``runs``; None for a run no job trains."""
    backend = run.status.get("backend")
    if backend not in JOB_BACKENDS:
        return None
    record = read_job(run.path)
    job_id = record.get("job_id")
    if not job_id:
        return {"backend": backend, "job_id": None, "state": "WAITING", "ended": False,
                "label": f"{backend}: waiting for its turn in the sweep"}
    if backend == "slurm":
        try:
            state, nodes = _slurm_state(record)
        except Exception:  # noqa: BLE001 - no sacct here (the app on another machine, say)
            state, nodes = "UNKNOWN", ""
        ended = state in SLURM_ENDED
        label = f"SLURM job {job_id} · {state}" + (f" on {nodes}" if nodes and state == "RUNNING" else "")
    else:
        ended = not _controller_alive(record)
        state = "ENDED" if ended else "RUNNING"
        label = f"submitit-local job {job_id} · {state.lower()}"
    return {"backend": backend, "job_id": job_id, "state": state, "ended": ended, "label": label,
            "stderr": record.get("stderr")}


def reconcile(run: runs.RunInfo) -> runs.RunInfo:
    """A queued or running run whose job ended without the trainer saying so (cancelled while
    pending, killed, failed before training) is recorded as cancelled or interrupted or failed."""
    job = job_status(run) if run.state in runs.ACTIVE_STATES else None
    if not job or not job["ended"]:
        return run
    fresh = runs.read_status(run.path)  # the trainer may have had the last word meanwhile
    if fresh["state"] not in runs.ACTIVE_STATES:
        return runs.load_run(run.path)
    started = fresh["state"] == "running" or fresh.get("resume")
    state = "interrupted" if started else "cancelled" if job["state"] == "CANCELLED" else "failed"
    runs.write_status(run.path, state, pid=None,
                      error=f"{job['label']}: the job ended before the run did; see {job.get('stderr')}: "
                            f"{_tail(Path(job.get('stderr') or '-'))}")
    return runs.load_run(run.path)


def _cancel(run_dir: Path, status: dict, timeout: float) -> None:
    """Cancel the job that trains the run, through its backend."""
    record = read_job(run_dir)
    if not record.get("job_id"):
        return  # not submitted yet: the helper skips a run that is no longer queued
    if record["backend"] == "slurm":
        import submitit

        _slurm_available()
        try:
            submitit.SlurmJob(record["folder"], record["job_id"]).cancel(check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            raise ClusterError(f"scancel {record['job_id']} failed: {err}") from None
    else:
        _stop_local(record, status, timeout)


# ---------------------------------------------------------------- stop, resume, start again: any run


def stop(run_id: str, runs_dir: Path | None = None, timeout: float = 15.0) -> str:
    """Stop a run (``launch.stop``); one that a job trains has that job cancelled first."""
    path = runs.run_path(run_id, runs_dir)
    run = reconcile(runs.load_run(path))  # a job that has ended already needs no cancelling
    if run.state in runs.ACTIVE_STATES and run.status.get("backend") in JOB_BACKENDS:
        _cancel(path, run.status, timeout)
    return launch.stop(run_id, runs_dir, timeout)


def resume(run_id: str, runs_dir: Path | None = None, first: bool = False) -> Path:
    """Continue a run from its last checkpoint: in the worker's queue (``first``: next to start),
    or as a new job of the backend and with the resources of the job that trained it."""
    return _again(launch.resume, run_id, runs_dir, first)


def start_again(run_id: str, runs_dir: Path | None = None, first: bool = False) -> Path:
    """Train a run that saved no checkpoint from the start, where it trained before."""
    return _again(launch.start_again, run_id, runs_dir, first)


def _again(queue, run_id: str, runs_dir: Path | None, first: bool = False) -> Path:
    path = runs.run_path(run_id, runs_dir)
    before = runs.read_status(path)
    if before.get("backend") not in JOB_BACKENDS:
        return queue(run_id, runs_dir, first=first)
    queue(run_id, runs_dir, start_worker=False)  # checks it may, and marks it queued
    try:
        resubmit(path, launch.visible_gpus())
    except Exception as err:
        runs.write_status(path, before["state"], resume=False, error=f"not submitted again: {err}")
        raise
    return path


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:]) or "no output"
    except OSError:
        return "no output"


if __name__ == "__main__":
    # Through the package, so that the jobs pickle TrainJob by reference, not as __main__'s.
    from retino_core.training.cluster import helper as _run_helper

    sys.exit(_run_helper(Path(sys.argv[1])))
