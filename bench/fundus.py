"""Fundus-like JPEGs in the lab's folder layout, for the benchmarks (bench/throughput.py,
bench/gpu_check.py).

A module of its own, imported by name (``bench.fundus``), so the processes that write the
images can find ``_write_jpeg`` however the benchmark was started (``python -m retino_core
bench`` or ``python bench/throughput.py``).
"""

from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def fundus_array(seed: int, size: int, grade: int) -> np.ndarray:
    """An RGB uint8 fundus-like photo: an orange disc with shading, texture, vessels, lesions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    base = np.array([185, 85, 30], np.float32) + rng.normal(0, 12, 3).astype(np.float32)
    img = base * (1 - 0.35 * r[..., None] ** 2)
    low = Image.fromarray(rng.normal(128, 30, (8, 8, 3)).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR)
    img += (np.asarray(low, np.float32) - 128) * 0.3
    img += rng.normal(0, 5, (size, size, 3)).astype(np.float32)  # sensor noise: realistic JPEG sizes
    img *= (r < 0.94)[..., None]
    pic = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    disc = (size * (0.62 + rng.uniform(-0.04, 0.04)), size * 0.5)
    width = max(1, size // 160)
    for _ in range(10):  # vessels leaving the optic disc
        a = rng.uniform(0, 2 * np.pi)
        pts = [disc]
        for step in range(1, 8):
            a += rng.normal(0, 0.25)
            pts.append((pts[-1][0] + np.cos(a) * size / 14, pts[-1][1] + np.sin(a) * size / 14))
        draw.line(pts, fill=(110, 25, 15), width=width)
    d = size / 14
    draw.ellipse((disc[0] - d, disc[1] - d, disc[0] + d, disc[1] + d), fill=(235, 190, 110))
    for _ in range(grade * 6):  # haemorrhages and exudates grow with the grade
        x, y = rng.uniform(0.25, 0.75, 2) * size
        s = rng.uniform(0.004, 0.012) * size
        colour = (90, 15, 10) if rng.random() < 0.6 else (240, 220, 120)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=colour)
    return np.asarray(pic)


def _write_jpeg(job: tuple) -> None:
    path, seed, size, grade = job
    Image.fromarray(fundus_array(seed, size, grade)).save(path, "JPEG", quality=90)


def writer_processes(n_images: int) -> int:
    """Processes that write ``n_images``: one per 32 images, at least 2 from 64 on, at most 16."""
    if n_images < 64:
        return 1
    return max(2, min(n_images // 32, os.cpu_count() or 1, 16))


def make_lab_folder(root: Path, n_train: int, n_test: int, size: int) -> Path:
    """The lab layout (four headerless CSVs, images in data/) with fundus-like JPEGs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    jobs = []
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1_000_000)):
        names, grades = [], []
        for i in range(n):
            name, grade = f"{offset + i // 2}_{'left' if i % 2 == 0 else 'right'}", i % 5
            names.append(name)
            grades.append(str(grade))
            jobs.append((root / "data" / f"{name}.jpeg", offset + i, size, grade))
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(grades) + "\n")
    procs = writer_processes(len(jobs))
    if procs > 1:
        with Pool(procs) as pool:
            pool.map(_write_jpeg, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_jpeg(job)
    return root
