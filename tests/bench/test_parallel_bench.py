"""bench/parallel.py's pieces that need no training: the four configurations or their stand-ins,
and the table it prints."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.models as tvm
from conftest import load_bench

from retino_core.models.builders import weights_cache_file

parallel = load_bench("parallel")


def _args(*extra: str):
    return parallel.get_args_parser().parse_args(["--epochs", "2", "--extra", "batch_size=8", "compile=false", *extra])


def test_without_imagenet_files_each_pretrained_run_is_a_second_scratch_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    configs, real = parallel.configurations(_args())
    assert not real
    assert [(c["arch"], c["pretrained"], c["seed"]) for c in configs] == [
        ("resnet18", False, 0), ("resnet18", False, 1), ("resnet50", False, 0), ("resnet50", False, 1)]
    assert all(c["epochs"] == 2 and c["batch_size"] == 8 and c["compile"] is False for c in configs)
    assert configs[1]["name"] == "resnet18-pre-standin"


def test_with_imagenet_files_the_real_four(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for arch, builder in (("resnet18", tvm.resnet18), ("resnet50", tvm.resnet50)):
        weights_cache_file(arch).parent.mkdir(parents=True, exist_ok=True)
        torch.save(builder(num_classes=1000).state_dict(), weights_cache_file(arch))
    configs, real = parallel.configurations(_args())
    assert real and [(c["arch"], c["pretrained"]) for c in configs] == [
        ("resnet18", False), ("resnet18", True), ("resnet50", False), ("resnet50", True)]


def test_the_table_compares_each_slot_count_with_serial():
    def result(n, wall, seconds):
        return {"parallel": n, "wall_s": wall, "load_before": 0.1, "load_after": 1.9, "all_done": True,
                "runs": [{"run": f"r{i}", "state": "done", "slot": "CPU", "threads": None, "seconds": s,
                          "images_per_s": 100.0, "test_acc": 0.5} for i, s in enumerate(seconds)]}

    text = parallel.markdown([result(1, 100.0, [10, 20, 30, 40]), result(2, 80.0, [20, 40, 50, 60])], _args(), False)
    assert "| 1 | 100 | - | 2.50× |" in text  # serial wall over its slowest run (40 s)
    assert "| 2 | 80 | 1.25× | 2.00× |" in text
    assert "second from-scratch run" in text and Path(parallel.__file__).name == "parallel.py"
