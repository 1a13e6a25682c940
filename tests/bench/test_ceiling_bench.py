"""The AUC-ceiling benchmark end to end at a tiny size: two real training runs that keep their
per-epoch logits, then the report that picks epochs on validation and averages runs."""

from __future__ import annotations

import json

from conftest import load_bench

ceiling = load_bench("ceiling")

TINY = ["epochs=2", "max_steps_per_epoch=2", "batch_size=16", "image_size=32"]


def test_two_variants_and_their_report(tmp_path):
    runs_dir, out = tmp_path / "records", tmp_path / "out"
    assert ceiling.main(["run", "--dir", str(runs_dir), "base", *TINY]) == 0
    assert ceiling.main(["run", "--dir", str(runs_dir), "mixed", *TINY, "mixup=0.2", "rot=180", "stem=small"]) == 0
    rec = json.loads((runs_dir / "mixed.json").read_text())
    assert (rec["mixup"], rec["rot"], rec["stem"]) == (0.2, 180, "small")
    first, last = rec["epochs"]
    assert set(first) == {"epoch", "ema_val_plain", "ema_test_plain"}  # TTA views from the second half on
    assert {"ema_test_tta", "ema_test_d8"} <= set(last)
    assert len(last["ema_test_d8"]) == len(rec["y_test"]) == 400

    assert ceiling.main(["report", "--dir", str(runs_dir), "--out", str(out)]) == 0
    md = (out / "ceiling.md").read_text()
    assert "| base | epochs=2, batch_size=16, image_size=32, max_steps_per_epoch=2 | 0 | 2 |" in md
    assert "mixup=0.2, rot=180, stem=small" in md
    result = json.loads((out / "ceiling.json").read_text())
    assert [e["runs"] for e in result["ensembles"]] == [["base", "mixed"]]
    for row in result["runs"]:
        assert 0 <= row["acc"] <= 1 and 0 <= row["auc"] <= 1 and row["oracle_auc"] >= row["auc"] - 1e-9


def test_overrides_are_typed_and_checked():
    assert ceiling.parse_overrides(["epochs=3", "mixup=0.4", "stem=small"]) == {"epochs": 3, "mixup": 0.4, "stem": "small"}
    try:
        ceiling.parse_overrides(["epochs"])
    except SystemExit as err:
        assert "KEY=VALUE" in str(err)
    else:
        raise AssertionError("a bare key must be refused")
