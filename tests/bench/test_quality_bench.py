"""The quality benchmark's ablation summary: means over seeds, differences to the preset of the
same seed, and how many seeds a change raised a metric in (numbers from hand-made rows)."""

from __future__ import annotations

from conftest import load_bench

quality = load_bench("quality")


def row(config: str, seed: int, acc: float, auc: float) -> dict:
    return {"config": config, "seed": seed, "test_acc": acc, "test_auc": auc, "test_qwk": 0.5,
            "test_referable_auc": 0.8, "test_recall": [0.9, 0.1, 0.5, 0.4, 0.2 + seed / 10]}


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_ablation_summary_compares_each_seed_with_its_own_preset():
    rows = [row("(the preset)", 0, 0.50, 0.70), row("(the preset)", 1, 0.60, 0.74),
            row("ema off", 0, 0.54, 0.69), row("ema off", 1, 0.58, 0.73)]
    lines = quality.ablation_summary(rows)
    preset, change = cells(lines[2]), cells(lines[3])
    assert preset[:4] == ["(the preset)", "2", "0.550", "0.720"]
    # ACC: +0.04 at seed 0, -0.02 at seed 1 -> mean +0.010, raised in 1 of 2; AUC lower in both.
    assert change[2] == "0.560 (+0.010, 1/2)"
    assert change[3] == "0.710 (-0.010, 0/2)"
    assert change[-1] == "0.25"  # grade-4 recall: (0.2 + 0.3) / 2
    assert len(cells(lines[0])) == len(cells(lines[1])) == len(change)


def test_ablation_table_shows_threads_beside_seconds():
    r = row("loss focal", 0, 0.5, 0.7) | {"val_acc": 0.6, "best_epoch": 12, "seconds": 201.4, "threads": 1}
    (line,) = quality.ablation_table([r])[2:]
    assert cells(line)[-1] == "201 (1)"
    assert "0.90/0.10/0.50/0.40/0.20" in line
