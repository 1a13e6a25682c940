"""Nobody let in: no unpickling of files we did not write, no run name that escapes the runs
folder or reaches a shell, no shell anywhere, the app local by default, uploads capped."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from badinput import HOSTILE_NAMES
from retino_core.training import launch
from retino_core import runs
from retino_core.cli import main
from retino_core.config import make_config
from retino_core.errors import CheckpointError, WeightsError
from retino_core.models.builders import build_model, imagenet_state_dict, load_local_weights, weights_cache_file
from retino_core.grading.predictor import Predictor
from retino_core.data import images

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "retino_core").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "streamlit_app.py"])


# ---------------------------------------------------------------- malicious pickles


class _Payload:
    """Unpickling this creates ``marker``: proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-looking file whose unpickling would touch ``marker``."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "arch": "resnet18", "preprocessing": {}}, path)
    return path, marker


def test_predictor_refuses_a_malicious_checkpoint(evil) -> None:
    path, marker = evil
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        Predictor.from_checkpoint(path)
    assert not marker.exists()


def test_local_weights_refuse_a_malicious_file(evil) -> None:
    path, marker = evil
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        load_local_weights(build_model("resnet18"), path)
    with pytest.raises(WeightsError):
        build_model("resnet18", weights=path)
    assert not marker.exists()


def test_imagenet_cache_file_is_not_trusted_to_run_code(evil, tmp_path: Path, monkeypatch) -> None:
    path, marker = evil
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = weights_cache_file("resnet18")
    target.parent.mkdir(parents=True)
    shutil.copy(path, target)
    with pytest.raises(WeightsError, match="could not be loaded"):
        imagenet_state_dict("resnet18")
    assert not marker.exists()


def test_cli_predict_and_resume_refuse_a_planted_checkpoint(evil, finished_run: Path, runs_dir: Path,
                                                           capsys) -> None:
    path, marker = evil
    run_dir = Path(shutil.copytree(finished_run, runs_dir / finished_run.name))
    shutil.copy(path, run_dir / "checkpoints" / "best.pt")
    shutil.copy(path, run_dir / "checkpoints" / "last.pt")
    assert main(["predict", str(images.SAMPLE_IMAGE), "--run", run_dir.name]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err
    runs.write_status(run_dir, "interrupted")
    assert main(["train", "--resume", run_dir.name, "--quiet"]) != 0
    assert runs.read_status(run_dir)["state"] == "failed"
    assert not marker.exists()


def test_classify_page_refuses_a_planted_checkpoint(evil, finished_run: Path, runs_dir: Path) -> None:
    path, marker = evil
    run_dir = Path(shutil.copytree(finished_run, runs_dir / finished_run.name))
    shutil.copy(path, run_dir / "checkpoints" / "best.pt")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    at.switch_page("pages/classify.py").run()
    at.checkbox[0].set_value(True).run()  # grade the bundled sample photo
    assert not at.exception
    assert any("not a loadable checkpoint" in e.value for e in at.error)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_primitives(finished_run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        ck = torch.load(finished_run / "checkpoints" / name, weights_only=True)
        assert isinstance(ck["model"], dict) and ck["arch"] == "resnet18"


# ---------------------------------------------------------------- hostile run names and ids


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_run_id_is_refused_everywhere(name: str, runs_dir: Path) -> None:
    outside = runs_dir.parent / "escape"
    outside.mkdir(exist_ok=True)
    for call in (runs.check_run_id, runs.run_path,
                 lambda i: launch.stop(i, runs_dir), lambda i: launch.resume(i, runs_dir, start_worker=False),
                 lambda i: runs.delete_run(i, runs_dir)):
        with pytest.raises(runs.RunError):
            call(name)
    assert outside.is_dir()  # delete_run did not reach it


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_run_name_stays_inside_the_runs_folder(name: str, runs_dir: Path) -> None:
    run_dir = runs.create_run_dir(name, runs_dir)
    assert run_dir.parent == runs_dir
    runs.check_run_id(run_dir.name)
    queued, created = launch.enqueue(make_config("cpu", name=name).to_dict(), runs_dir, start_worker=False)
    assert created and queued.parent == runs_dir.resolve()
    runs.check_run_id(queued.name)


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse: "-rf" looks like an option
        return exit.code


def test_hostile_names_through_the_cli(runs_dir: Path, tiny_npz: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name in HOSTILE_NAMES:
        if "\x00" in name or not name:
            continue  # no NUL in an argument; an empty --resume means "the --run-dir given"
        assert _exit_code(["predict", str(images.SAMPLE_IMAGE), "--run", name]) == 2
        assert _exit_code(["train", "--resume", name, "--quiet"]) == 2
        assert "error:" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_npz), "--name", "x; touch PWNED $(touch PWNED2)", "--quiet",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--num-workers", "0",
                 "--max-steps-per-epoch", "1"]) == 0
    [run] = runs.list_runs(runs_dir)
    assert run.path.parent == runs_dir and run.state == "done"
    assert not list(tmp_path.rglob("PWNED*")) and not list(ROOT.glob("PWNED*"))


def test_data_path_with_shell_metacharacters_is_only_a_path(runs_dir: Path, tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "$(touch PWNED)"]) == 2
    assert main(["train", "--data", "; touch PWNED", "--quiet"]) == 2
    assert "neither 'retinamnist'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("PWNED*"))


def test_worker_starts_trainers_with_argument_lists(runs_dir: Path, monkeypatch) -> None:
    calls = []

    class FakeProc:
        pid = 4242
        returncode = 0

        def poll(self):  # the trainer ends at once
            runs.write_status(queued, "done")
            return 0

    def fake_popen(args, **kwargs):
        calls.append((args, kwargs))
        return FakeProc()

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    queued, _ = launch.enqueue(make_config("cpu", name="$(touch PWNED); rm -rf ~").to_dict(), runs_dir)
    launch.worker(runs_dir)
    assert len(calls) == 2  # the worker, then the trainer
    for args, kwargs in calls:
        assert isinstance(args, list) and not kwargs.get("shell")
        assert args[:3] == [sys.executable, "-m", "retino_core"]
    assert calls[1][0][3:] == ["train", "--run-dir", str(queued)]


# ---------------------------------------------------------------- the code itself


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_shell_anywhere() -> None:
    found = []
    for path in SOURCES:
        for node, func in _calls(path):
            shell = any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                        for k in node.keywords)
            if shell or func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                                 "eval", "exec"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, found


def test_nothing_unpickles_without_weights_only() -> None:
    found = []
    for path in SOURCES:
        for node, func in _calls(path):
            kwargs = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load"):
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
            if func.endswith("get_state_dict") and "weights_only" not in kwargs:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
            if func in ("pickle.load", "pickle.loads", "pd.read_pickle", "pandas.read_pickle", "joblib.load"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
            allow = kwargs.get("allow_pickle")
            if func.endswith("np.load") and isinstance(allow, ast.Constant) and allow.value:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, found


def test_no_streamlit_in_the_library() -> None:
    for path in (ROOT / "retino_core").rglob("*.py"):
        assert "import streamlit" not in path.read_text(), path


# ---------------------------------------------------------------- the app's exposure and uploads


def test_app_listens_on_localhost_with_xsrf_on() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] in ("127.0.0.1", "localhost")
    assert server.get("enableXsrfProtection", True) is True
    assert server.get("enableCORS", True) is True


def test_upload_cap_is_the_same_in_config_and_code() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == images.MAX_UPLOAD_MB
    assert images.MAX_UPLOAD_BYTES == images.MAX_UPLOAD_MB * 1024 * 1024
    # The Classify page hands the uploaded bytes to load_image, which checks the cap again.
    calls = [ast.unparse(n) for n, f in _calls(ROOT / "pages" / "classify.py") if f == "load_image"]
    assert any("getvalue()" in c for c in calls), calls


def test_classify_page_refuses_an_upload_over_the_cap(finished_run: Path, runs_dir: Path) -> None:
    shutil.copytree(finished_run, runs_dir / finished_run.name)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    at.switch_page("pages/classify.py").run()
    at.file_uploader[0].set_value(("huge.jpg", b"\xff\xd8\xff" + b"\0" * images.MAX_UPLOAD_BYTES, "image/jpeg"))
    at.run()
    assert not at.exception
    assert any("huge.jpg" in e.value and "upload limit" in e.value for e in at.error)
