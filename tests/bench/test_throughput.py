"""The throughput benchmark through ``python -m retino_core bench``, tiny, on the CPU: it writes
its JPEGs with worker processes, measures every loop and writes its tables (timings are never
asserted)."""

from __future__ import annotations

import json

import pytest

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
    for heading in ("## Summary (the README's table)", "## Steady state", "## Where a batch-8 step goes",
                    "## End to end", "## The lab's four"):
        assert heading in report
    assert "| resnet18 | 16 |" in report and "load average" in report
    assert f"| {res['cpus']}-core CPU, 1 thread | resnet18 | 32 |" in report  # the README's row
    assert str(tmp_path) not in json.dumps({k: v for k, v in res.items() if k != "command"})
    # The generated photos are real JPEGs in the lab layout.
    some = next((tmp_path / "fundus32" / "data").glob("*.jpeg"))
    assert load_image(some).size == (32, 32)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "argument --batch-size: 0 is too small: at least 1"),
    (["--steps", "many"], "argument --steps: 'many' is not a whole number"),
    (["--image-size", "16"], "argument --image-size: 16 is too small: at least 32"),
])
def test_bad_options_are_named_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--device", "cpu", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_data_folder_that_is_not_one_is_an_error_without_a_traceback(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data ") and "lab folder" in err and "Traceback" not in err
