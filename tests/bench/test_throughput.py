"""The throughput benchmark through ``python -m retino_core bench``, tiny, on the CPU: it writes
its JPEGs with worker processes, measures every loop and writes its tables (timings are never
asserted)."""

from __future__ import annotations

import json

from retino_core.cli import main
from retino_core.data.images import load_image


def test_bench_through_the_cli_writes_jpegs_in_processes_and_every_table(tmp_path):
    out = tmp_path / "out"
    # 80 images: enough for the JPEG writers to run in processes, which once failed to unpickle
    # their function when the script was run through the CLI.
    code = main(["bench", "--device", "cpu", "--image-size", "32", "--steps", "2", "--archs", "resnet18",
                 "--batch-size", "16", "--warmup", "1", "--repeats", "1", "--epochs", "2",
                 "--train-images", "64", "--test-images", "16", "--workers", "0", "--threads", "1",
                 "--workdir", str(tmp_path), "--out", str(out)])
    assert code == 0
    res = json.loads((out / "throughput.json").read_text())
    assert res["generated"]["processes"] >= 2 and not res["errors"]
    r = res["archs"]["resnet18"]
    for key in ("lab@8", "trainer_lab@8", "trainer@8", "model@8", "lab@16", "trainer_lab@16", "trainer@16", "model@16"):
        assert r["steady"][key]["train_img_s"] > 0, key
    assert r["steady"]["lab@8"]["eval_img_s"] > 0
    # Where a step's time goes: every part measured, and they add up to the step.
    p = r["steady"]["trainer@8"]["profile_ms"]
    assert p["forward"] > 0 and p["backward"] > 0 and p["optimizer"] > 0 and p["average"] > 0  # cpu preset: EMA
    assert abs(sum(p[k] for k in ("data", "forward", "backward", "optimizer", "average", "rest")) - p["step"]) < 1e-6
    e = r["end_to_end"]
    assert len(e["epochs"]) == 2 and e["images"] == {"train": 58, "val": 6, "test": 16}
    assert e["steady_epoch"]["checkpoint_main_s"] > 0 and e["steady_epoch"]["writer_s"] > 0
    assert e["ood_s"] > 0 and e["bootstrap_s"] > 0 and e["sync_write_s"] > 0 and e["last_pt_mb"] > 100
    assert r["sweep"]["trainer_minutes"] > 0 and r["sweep"]["lab_hours"] > 0
    assert res["sweep"]["complete"] is False  # one arch of two: no claim about the whole sweep
    report = (out / "throughput.md").read_text()
    for heading in ("## Steady state", "## Where a batch-8 step goes", "## End to end", "## The lab's four"):
        assert heading in report
    assert "| resnet18 | 16 |" in report and "load average" in report
    assert str(tmp_path) not in json.dumps({k: v for k, v in res.items() if k != "command"})
    # The generated photos are real JPEGs in the lab layout.
    some = next((tmp_path / "fundus32" / "data").glob("*.jpeg"))
    assert load_image(some).size == (32, 32)
