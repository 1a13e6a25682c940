"""Shared fixtures: tiny data in the real layouts, an isolated runs folder, one finished run."""

from __future__ import annotations

import importlib.util
import io
import os
import time
from functools import lru_cache

# The suite shares 2 cores between pytest, trainer subprocesses, the app and a browser; OpenMP
# threads spinning for a core another process holds make each of them many times slower. Set
# before anything imports torch, and inherited by every subprocess a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from retino_core.data.images import RETINAMNIST_NPZ, SAMPLE_IMAGE, load_image  # noqa: E402

TINY = dict(image_size=32, batch_size=8, epochs=1, num_workers=0)


def wait_until(pred, timeout: float = 300.0) -> bool:
    """Poll ``pred`` every quarter second until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.25)
    return False


def load_bench(name: str):
    """A script of bench/ (not a package) as a module, for tests of its functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Disc colours that make the grade plain to see: a tiny model learns them in a few epochs.
EASY_COLOURS = ((230, 120, 40), (200, 60, 60), (150, 150, 40), (120, 80, 160), (60, 140, 160))


@lru_cache(maxsize=None)
def _sample(side: int) -> Image.Image:
    """The bundled CC0 fundus photograph at ``side`` px (at most its own 1,411)."""
    img = load_image(SAMPLE_IMAGE)
    return img if side >= img.width else img.resize((side, side), Image.LANCZOS)


def fundus_image(size: int = 48, seed: int = 0, grade: int = 0, easy: bool = False) -> Image.Image:
    """A fundus photograph made from the bundled one: turned and mirrored by ``seed``, recoloured
    orange (``easy``: a colour per grade) with grade * 3 small dark lesions, shown at ``size`` px.
    Its vessels and optic disc are a real photo's, so it passes the retinal-detail check at any
    size, as a real photo does; a plain disc would not."""
    rng = np.random.default_rng(seed)
    base = _sample(next(s for s in (128, 512, 4096) if s >= 2 * size)).rotate(float(rng.uniform(0, 360)), Image.BILINEAR)
    if rng.random() < 0.5:
        base = base.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(base, np.float32)
    lum = arr.mean(-1, keepdims=True) / float(arr.mean(-1)[arr.max(-1) > 30].mean())
    fill = np.array(EASY_COLOURS[grade] if easy else (200 + int(rng.integers(0, 40)), 90, 40), np.float32)
    img = Image.fromarray(np.clip(lum * (fill + (rng.integers(-15, 16, 3) if easy else 0)), 0, 255).astype(np.uint8))
    draw, side = ImageDraw.Draw(img), img.width
    for _ in range(grade * 3):
        x, y = (int(v) for v in rng.integers(side // 4, 3 * side // 4, 2))
        r = max(1, side // 100)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(0.55 * c) for c in img.getpixel((x, y))))
    return img.resize((size, size), Image.LANCZOS)


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
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
            img = fundus_image(48, seed=offset + i, grade=grade)
            # Vessels where this eye has them: no two pictures of the folder are copies of each other
            # (validate --deep reports copies across splits as leakage).
            rng = np.random.default_rng(offset + i)
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x0, y0, x1, y1 = (int(v) for v in rng.integers(10, 38, 4))
                draw.line((x0, y0, x1, y1), fill=(120, 30, 20), width=2)
            img.save(root / subdir / f"{name}{suffix}")
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


def write_easy_npz(path: Path, counts: tuple[int, int, int] = (200, 100, 60)) -> Path:
    """A MedMNIST-layout npz of 28 px ``easy`` fundus pictures, grades 0-4 in turn: a model
    that trains for seconds is right on them, so it is 'usable' by the trust rules. Validation
    holds 60 referable and 40 other photos: enough to trust its referral threshold."""
    arrays = {}
    for split, n, offset in zip(("train", "val", "test"), counts, (0, 10_000, 20_000)):
        labels = np.arange(n) % 5
        arrays[f"{split}_images"] = np.stack([np.asarray(fundus_image(28, seed=offset + i, grade=int(g), easy=True))
                                              for i, g in enumerate(labels)])
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


def train_easy_run(runs_dir: Path, data: Path | None = None) -> Path:
    """A real training run on write_easy_npz's pictures (about 15 s on one core)."""
    from retino_core.config import make_config
    from retino_core.training.lifecycle import prepare_run, run_training

    data = data or write_easy_npz(Path(runs_dir).parent / "easy.npz")
    cfg = make_config("cpu", data=str(data), arch="resnet18", name="easy", image_size=32, batch_size=16,
                      epochs=3, num_workers=0)
    run_dir = prepare_run(cfg, runs_dir)
    run_training(run_dir, quiet=True)
    return run_dir


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
    from retino_core.training.lifecycle import prepare_run, run_training

    base = tmp_path_factory.mktemp("session")
    npz = write_tiny_npz(base / "tiny.npz")
    cfg = make_config("cpu", data=str(npz), arch="resnet18", name="fixture", **TINY)
    run_dir = prepare_run(cfg, base / "runs")
    run_training(run_dir, quiet=True)
    return run_dir


@pytest.fixture(scope="session")
def usable_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run that learned its (easy) task: its verdict is 'usable'."""
    base = tmp_path_factory.mktemp("usable")
    return train_easy_run(base / "runs")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on a free loopback port for the
    whole session; the client side is configured as the CLI configures it."""
    from mlflowserver import QUIET, MlflowServer

    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()
