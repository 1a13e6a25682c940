"""Sweeps as jobs: a real submitit-local sweep of two tiny runs (trained, stopped through submitit,
killed, resumed), and the SLURM path through submitit's real SlurmExecutor with stand-in
sbatch / srun / sacct / scancel commands on PATH (no cluster)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from conftest import TINY, wait_until
from retino_core import runs
from retino_core.cli import main
from retino_core.models.weights import cached_file
from retino_core.report import display
from retino_core.training import cluster, launch

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--image-size", str(TINY["image_size"]), "--batch-size", str(TINY["batch_size"]), "--num-workers", "0"]


def assert_clean(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


def state(run_dir: Path) -> str:
    return runs.read_status(run_dir)["state"]


def test_a_submitit_local_sweep_trains_stops_and_resumes(tiny_npz, runs_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the pretrained run's ImageNet file
    cached_file("resnet18").parent.mkdir(parents=True)
    torch.save(tvm.resnet18(num_classes=1000).state_dict(), cached_file("resnet18"))
    assert main(["sweep", "--backend", "submitit-local", "--data", str(tiny_npz), "--archs", "resnet18",
                 "--epochs", "3", "--max-steps-per-epoch", "2", *TINY_ARGS, "--array-parallelism", "1"]) == 0
    out = capsys.readouterr()
    a, b = (Path(line) for line in out.out.split())
    assert f"{a.name}: submitit-local job {cluster.read_job(a)['job_id']}" in out.err
    # One at a time: the second waits for a free place, and the queue's worker leaves both alone.
    assert cluster.job_status(runs.load_run(b))["state"] == "WAITING" and state(b) == "queued"
    assert display.slot_text(runs.load_run(b)) == "submitit-local: waiting for its turn in the sweep"
    assert launch.next_queued(runs_dir) is None

    # Stopped through submitit once it has a checkpoint: it ends interrupted, and the next one starts.
    assert wait_until(lambda: runs.checkpoint_path(a, "last").exists(), 300)
    first_job = cluster.read_job(a)["job_id"]
    assert cluster.stop(a.name) == "interrupted"
    said = runs.read_status(a)["error"]  # the trainer's words for submitit's SIGTERM, or launch.stop's
    assert ("signal SIGTERM" in said or "stopped by you" in said) and cluster.job_status(runs.load_run(a))["ended"]
    # A killed job (SIGKILL, as a node dies): the run shows as interrupted.
    assert wait_until(lambda: runs.checkpoint_path(b, "last").exists() and state(b) == "running", 300)
    os.kill(runs.read_status(b)["pid"], signal.SIGKILL)
    # (the trainer's death is seen at once; its job's controller ends a moment later)
    assert wait_until(lambda: state(b) == "interrupted" and cluster.job_status(runs.load_run(b))["ended"], 60)
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert table.count("interrupted") == 2 and f"submitit-local job {cluster.read_job(b)['job_id']} · ended" in table

    for run_dir in (a, b):  # resumed as new jobs of the same backend
        assert main(["resume", run_dir.name]) == 0
    assert "queued to resume from its last checkpoint (job" in capsys.readouterr().out
    assert cluster.read_job(a)["earlier"] == [first_job] and cluster.read_job(a)["job_id"] != first_job
    assert wait_until(lambda: state(a) == state(b) == "done", 400), (runs.read_status(a), runs.read_status(b))
    for run_dir in (a, b):
        assert [r["epoch"] for r in runs.epoch_rows(run_dir)] == [1, 2, 3]  # each epoch once
        assert (run_dir / "summary.json").exists() and runs.read_status(run_dir)["resumed"] is True
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.count(" done ") == 2


def fake_slurm(folder: Path, sacct: str = "", sbatch_fails: str = "") -> Path:
    """sbatch (keeps each script, answers with job ids 4242, 4243, ...), srun, sacct (prints
    the file sacct.txt) and scancel (records its arguments), all on their own in ``folder``:
    the tests put only this folder on PATH, so no real cluster is ever reached."""
    folder.mkdir(parents=True, exist_ok=True)
    cp, cat = shutil.which("cp"), shutil.which("cat")
    sbatch = (f"echo '{sbatch_fails}' >&2; exit 1" if sbatch_fails else
              f'n=0; for f in {folder}/script-*.sh; do [ -e "$f" ] && n=$((n + 1)); done; '
              f'{cp} "$1" {folder}/script-$n.sh; echo "Submitted batch job $((4242 + n))"')
    (folder / "sacct.txt").write_text(sacct)
    for name, body in (("sbatch", sbatch), ("srun", "exit 0"), ("sacct", f"{cat} {folder}/sacct.txt"),
                       ("scancel", f'echo "$@" >> {folder}/scancel.txt')):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


SLURM_ARGS = ["--backend", "slurm", "--partition", "gpu", "--gpus-per-node", "1", "--time", "90",
              "--array-parallelism", "2", "--cpus-per-task", "8", "--mem", "32G", "--setup", "module load cuda",
              "--slurm-option", "account=lab"]


def test_slurm_batch_script_states_stop_and_resume(tiny_npz, runs_dir, tmp_path, monkeypatch, capsys) -> None:
    bin_dir = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bin_dir))  # these commands and nothing else: never a real cluster
    assert main(["sweep", "--data", str(tiny_npz), *SLURM_ARGS]) == 0
    made = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(made) == 4
    script = (bin_dir / "script-0.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --array=0-3%2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G",
                 "#SBATCH --account=lab", f"#SBATCH --chdir={ROOT}", "#SBATCH --signal=USR2@90", "module load cuda"):
        assert line in script.splitlines(), (line, script)
    assert "srun --unbuffered" in script and f"{sys.executable} -u -m submitit.core._submit" in script
    assert script == (runs_dir / ".submitit" / "4242" / "4242_submission.sh").read_text()
    assert main(["sweep", "--data", str(tiny_npz), *SLURM_ARGS, "--dry-run"]) == 0
    assert capsys.readouterr().out == script  # what --dry-run shows is what sbatch gets
    assert [cluster.read_job(d)["job_id"] for d in made] == [f"4242_{i}" for i in range(4)]
    assert all(runs.read_status(d)["backend"] == "slurm" for d in made) and launch.next_queued(runs_dir) is None

    (bin_dir / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|RUNNING|gpu-node-3\n4242_1|PENDING|None\n"
                                       "4242_2|CANCELLED by 1000|None\n4242_3|PENDING|None\n")
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "SLURM job 4242_0 · RUNNING on gpu-node-3" in table and "SLURM job 4242_1 · PENDING" in table
    assert state(made[2]) == "cancelled"  # a job cancelled outside retino: its run says so
    assert main(["stop", made[1].name]) == 0
    assert capsys.readouterr().out.strip() == f"{made[1].name}: cancelled"
    assert (bin_dir / "scancel.txt").read_text().split() == ["4242_1"]

    # An interrupted run resumes as a new job with the same resources (one run: no array).
    runs.write_status(made[0], "interrupted", error="the node went away")
    runs.checkpoint_path(made[0], "last").write_bytes(b"checkpoint")
    assert main(["resume", made[0].name]) == 0
    job = cluster.read_job(made[0])
    assert (job["job_id"], job["earlier"], state(made[0])) == ("4243", ["4242_0"], "queued")
    again = (bin_dir / "script-1.sh").read_text()
    assert "#SBATCH --partition=gpu" in again and "#SBATCH --time=90" in again and "--array" not in again
    assert cluster.TrainJob().checkpoint(str(made[0])).args == (str(made[0]),)  # requeued as it was


def test_no_slurm_here_and_a_refusing_sbatch_leave_nothing_behind(tiny_npz, runs_dir, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["sweep", "--data", str(tiny_npz), *SLURM_ARGS]) == 2
    err = capsys.readouterr().err
    assert "SLURM is not available on this machine: sbatch, srun, sacct, scancel not found on PATH" in err
    assert_clean(err)
    assert not any(runs_dir.iterdir()) or not runs.list_runs(runs_dir)

    monkeypatch.setenv("PATH", str(fake_slurm(tmp_path / "bin", sbatch_fails="sbatch: error: invalid partition "
                                                                             "specified: gpu")))
    assert main(["sweep", "--data", str(tiny_npz), *SLURM_ARGS]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused the job" in err and "invalid partition specified: gpu" in err
    assert_clean(err)
    assert not runs.list_runs(runs_dir)

    for args, says in ((["--partition", "gpu\n#SBATCH --qos=top"], "--partition"),
                       (["--time", "0"], "--time must be a whole number of at least 1"),
                       (["--slurm-option", "account"], "KEY=VALUE")):
        assert main(["sweep", "--data", str(tiny_npz), "--backend", "slurm", *args]) == 2
        assert says in capsys.readouterr().err
    assert main(["sweep", "--data", str(tiny_npz), "--partition", "gpu"]) == 2
    assert "--partition goes with --backend slurm or submitit-local" in capsys.readouterr().err
    assert main(["sweep", "--data", str(tiny_npz), "--backend", "slurm", "--parallel", "2"]) == 2
    assert "--queue and --parallel are for --backend local" in capsys.readouterr().err
    assert not runs.list_runs(runs_dir)


@pytest.mark.parametrize("missing", ["scancel"])
def test_stopping_a_slurm_run_without_slurm_says_so(tiny_npz, runs_dir, tmp_path, monkeypatch, capsys, missing) -> None:
    bin_dir = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert main(["sweep", "--data", str(tiny_npz), "--archs", "resnet18", "--backend", "slurm"]) == 0
    run_dir = Path(capsys.readouterr().out.split()[0])
    (bin_dir / missing).unlink()
    assert main(["stop", run_dir.name]) == 2
    err = capsys.readouterr().err
    assert "SLURM is not available on this machine: scancel not found on PATH" in err and state(run_dir) == "queued"
    assert_clean(err)


def test_the_train_page_shows_the_job_and_stops_and_resumes_through_it(runs_dir, tmp_path, monkeypatch) -> None:
    from app_fixtures import open_page, write_run

    bin_dir = fake_slurm(tmp_path / "bin", sacct="JobID|State|NodeList\n4242|RUNNING|gpu-node-3\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    run_dir = write_run(runs_dir, state="queued")
    spec = cluster.JobSpec("slurm", partition="gpu", time_min=60)
    runs.write_status(run_dir, "queued", backend="slurm")
    cluster.submit([run_dir], spec, runs_dir)
    runs.write_status(run_dir, "running", pid=1, host="gpu-node-3", heartbeat_ts=9e12)  # the trainer on its node
    at = open_page("train")
    table = at.dataframe[0].value
    assert table.loc[table["name"] == f"results?run={run_dir.name}", "where"].tolist() == \
        ["SLURM job 4242 · RUNNING on gpu-node-3"]
    next(b for b in at.button if b.label == "Stop").click().run()
    assert (bin_dir / "scancel.txt").read_text().split() == ["4242"]
    assert not at.exception and state(run_dir) == "interrupted"  # no trainer here to say so: the page did
    runs.checkpoint_path(run_dir, "last").write_bytes(b"checkpoint")
    at.run()
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception and state(run_dir) == "queued"
    assert (cluster.read_job(run_dir)["job_id"], cluster.read_job(run_dir)["earlier"]) == ("4243", ["4242"])
    assert "#SBATCH --partition=gpu" in (bin_dir / "script-1.sh").read_text()
