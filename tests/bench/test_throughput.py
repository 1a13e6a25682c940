"""The throughput benchmark's CPU smoke mode runs end to end (timings are never asserted)."""

from __future__ import annotations

import json

from retino_core.cli import main
from retino_core.data.images import load_image


def test_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "out"
    code = main(["bench", "--device", "cpu", "--image-size", "64", "--steps", "2", "--archs", "resnet18",
                 "--batch-size", "4", "--workers", "0", "--threads", "1", "--workdir", str(tmp_path),
                 "--out", str(out)])
    assert code == 0
    res = json.loads((out / "throughput.json").read_text())
    r = res["archs"]["resnet18"]
    for part in ("lab", "trainer", "model"):
        assert r[part]["train_img_s"] > 0
    assert r["b_over_a"] > 0 and r["b_over_c"] > 0 and r["trainer_sweep_min"] > 0
    assert res["sweep"]["complete"] is False  # one arch of two: no claim about the whole sweep
    assert "| resnet18 |" in (out / "throughput.md").read_text()
    # The generated photos are real JPEGs in the lab layout.
    some = next((tmp_path / "fundus64" / "data").glob("*.jpeg"))
    assert load_image(some).size == (64, 64)
