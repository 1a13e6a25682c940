"""The evaluate-next-to-predict benchmark end to end at a tiny size."""

from __future__ import annotations

import json

from conftest import load_bench

bench = load_bench("evaluate_bench")


def test_both_paths_grade_every_photo_and_the_table_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert bench.main(["--archs", "resnet18", "--size", "32", "--photos", "5", "--photo-size", "96",
                       "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads((out / "evaluate.json").read_text())[0]
    assert result["arch"] == "resnet18" and set(result["median"]) == {"predict", "evaluate"}
    assert all(rate > 0 for rate in result["median"].values())
    md = (out / "evaluate.md").read_text()
    assert "| resnet18 | 32 px | 5 × 96 px JPEG |" in md and "evaluate / predict" in capsys.readouterr().out
