"""Shared fixtures: tiny data in the real layouts, an isolated runs folder, one finished run."""

from __future__ import annotations

import importlib.util
import io
import os

# The suite shares 2 cores between pytest, trainer subprocesses, the app and a browser; OpenMP
# threads spinning for a core another process holds make each of them many times slower. Set
# before anything imports torch, and inherited by every subprocess a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from retino_core.data import RETINAMNIST_NPZ  # noqa: E402

TINY = dict(image_size=32, batch_size=8, epochs=1, num_workers=0)


def load_bench(name: str):
    """A script of bench/ (not a package) as a module, for tests of its functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fundus_image(size: int = 48, seed: int = 0, grade: int = 0) -> Image.Image:
    """A fundus-like picture: an orange disc on black with a few grade-dependent dark spots."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    m = size // 10
    draw.ellipse((m, m, size - m, size - m), fill=(200 + int(rng.integers(0, 40)), 90, 40))
    for _ in range(grade * 3):
        x, y = rng.integers(size // 4, 3 * size // 4, 2)
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(90, 20, 10))
    return img


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def write_lab_folder(root: Path, n_train: int = 40, n_test: int = 12, subdir: str = "data",
                     suffix: str = ".jpeg") -> Path:
    """The lab layout: four headerless CSVs and <name>.jpeg images in ``subdir``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / subdir).mkdir(exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 10_000)):
        names, labels = [], []
        for i in range(n):
            name = f"{offset + i // 2}_{'left' if i % 2 == 0 else 'right'}"
            grade = i % 5
            fundus_image(48, seed=offset + i, grade=grade).save(root / subdir / f"{name}{suffix}")
            names.append(name)
            labels.append(str(grade))
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(labels) + "\n")
    return root


def write_tiny_npz(path: Path, n_train: int = 48, n_val: int = 16, n_test: int = 16) -> Path:
    """A MedMNIST-layout npz holding the first images of each split of the real RetinaMNIST."""
    with np.load(RETINAMNIST_NPZ) as full:
        arrays = {}
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            arrays[f"{split}_images"] = full[f"{split}_images"][:n]
            arrays[f"{split}_labels"] = full[f"{split}_labels"][:n]
    np.savez(path, **arrays)
    return path


@pytest.fixture
def lab_folder(tmp_path: Path) -> Path:
    return write_lab_folder(tmp_path / "lab")


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runs folder that the library, CLI and app use through RETINO_RUNS_DIR."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("RETINO_RUNS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real, finished training run (ResNet18, one short epoch on real RetinaMNIST images)."""
    from retino_core.config import make_config
    from retino_core.train import prepare_run, run_training

    base = tmp_path_factory.mktemp("session")
    npz = write_tiny_npz(base / "tiny.npz")
    cfg = make_config("cpu", data=str(npz), arch="resnet18", name="fixture", **TINY)
    run_dir = prepare_run(cfg, base / "runs")
    run_training(run_dir, quiet=True)
    return run_dir
