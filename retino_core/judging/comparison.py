"""Runs against runs: intervals, paired tests on one test set, seeds, configuration diffs.

Read from run folders only (summary.json, predictions.csv, config.json); no torch.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from .. import runs
from ..config import TrainConfig
from . import stats

# Fields that name or date a run rather than change what it trains.
IDENTITY_FIELDS = ("name", "created", "seed")


# What two runs' recipes are compared on: every setting but these, which name or date a run or
# are the configuration itself (the thing a comparison of configurations is about).
NOT_RECIPE = ("name", "created", "arch", "pretrained")


# The settings that most often explain a gap come first in a list of differences.
RECIPE_ORDER = ("epochs", "max_steps_per_epoch", "image_size", "batch_size", "lr", "preset", "loss", "sampler",
                "seed", "data", "patient_column", "patient_regex", "weights")


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


class ComparisonError(ValueError):
    """Two runs that cannot be compared (different test sets, no predictions)."""


@dataclass
class TestSet:
    names: list[str]
    labels: np.ndarray
    probs: np.ndarray  # (N, 5) as the run's metrics were computed (flip-averaged when it used TTA)


def test_set(run: runs.RunInfo) -> TestSet:
    """A run's test images, grades and probabilities from its predictions.csv."""
    frame = runs.read_predictions(run.path)
    if frame is None:
        raise ComparisonError(f"run {run.run_id} has no predictions.csv (it has not finished)")
    test = frame[frame["split"] == "test"].sort_values("index")
    if test.empty:
        raise ComparisonError(f"run {run.run_id} has no test predictions")
    probs = test[[f"p{c}" for c in range(5)]].to_numpy(dtype=np.float64)
    return TestSet(test["name"].astype(str).tolist(), test["label"].to_numpy(dtype=np.int64), probs)


def check_same_test_set(a: runs.RunInfo, b: runs.RunInfo, ta: TestSet, tb: TestSet) -> None:
    """Refuse, naming the difference, two runs not scored on the same images and grades."""
    if ta.names != tb.names:
        only_a = sorted(set(ta.names) - set(tb.names))
        detail = (f"{len(only_a)} of {a.run_id}'s {len(ta.names)} test images are not among {b.run_id}'s "
                  f"{len(tb.names)}" if only_a else f"they hold {len(ta.names)} and {len(tb.names)} images in a different order")
        raise ComparisonError(f"runs {a.run_id} and {b.run_id} were tested on different test sets ({detail}): "
                              "a paired comparison needs the same images; train both on the same data")
    if not np.array_equal(ta.labels, tb.labels):
        raise ComparisonError(f"runs {a.run_id} and {b.run_id} list the same test images with different grades")


def compare_runs(a: runs.RunInfo, b: runs.RunInfo, n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> dict:
    """A minus B on their shared test set: paired intervals, McNemar's exact test, the settings in
    which their recipes differ (``recipe_differences``), their names and the sentence."""
    ta, tb = test_set(a), test_set(b)
    check_same_test_set(a, b, ta, tb)
    result = stats.paired_comparison(ta.labels, ta.probs, tb.probs, n_boot, seed)
    name_a, name_b = names(a, b)
    result.update(run_a=a.run_id, run_b=b.run_id, name_a=name_a, name_b=name_b,
                  recipe_differences=recipe_differences(a, b))
    result["sentence"] = finding(a, b, result)
    return result


def label(run: runs.RunInfo) -> str:
    """ResNet50-pretrained, as a sentence names a run."""
    return f"{run.arch.replace('resnet', 'ResNet')}-{'pretrained' if run.pretrained else 'scratch'}"


def names(a: runs.RunInfo, b: runs.RunInfo) -> tuple[str, str]:
    """How a sentence names two runs: by configuration (ResNet18-scratch), or, for two runs of
    one configuration, by run name, or by run id where the names do not tell them apart."""
    if label(a) != label(b):
        return label(a), label(b)
    by_name = (str(a.config.get("name") or a.run_id), str(b.config.get("name") or b.run_id))
    return by_name if by_name[0] != by_name[1] else (a.run_id, b.run_id)


def recipe_differences(a: runs.RunInfo, b: runs.RunInfo) -> list[dict]:
    """Every setting in which two runs differ besides architecture and pretraining, the likeliest
    culprits first: ``[{"setting": "epochs", "a": 6, "b": 2}, ...]``. A setting an older run
    lacks counts as its default."""
    return [{"setting": k, "a": setting_of(a, k), "b": setting_of(b, k)} for k in settings_that_differ([a, b])]


def setting_of(run: runs.RunInfo, key: str):
    """One setting of a run's recipe, its default where an older run's config lacks it."""
    return run.config.get(key, _DEFAULTS.get(key))


def settings_that_differ(group: list[runs.RunInfo]) -> list[str]:
    """The settings, besides architecture and pretraining, that are not the same in every run of ``group``."""
    keys = {k for r in group for k in r.config} | set(_DEFAULTS)
    found = [k for k in keys if k not in NOT_RECIPE and any(setting_of(r, k) != setting_of(group[0], k) for r in group)]
    return sorted(found, key=lambda k: (RECIPE_ORDER.index(k) if k in RECIPE_ORDER else len(RECIPE_ORDER), k))


def _recipe_words(run: runs.RunInfo, settings: list[str]) -> str:
    """'2 epochs of 5 steps, lr 0.001': how one run sets the settings that differ."""
    words = []
    if "epochs" in settings or "max_steps_per_epoch" in settings:
        epochs, steps = int(setting_of(run, "epochs") or 0), int(setting_of(run, "max_steps_per_epoch") or 0)
        words.append(f"{epochs} epoch{'s' * (epochs != 1)}" + (f" of {steps} steps" if steps else ""))
    for k in settings:
        if k not in ("epochs", "max_steps_per_epoch"):
            value = setting_of(run, k)
            shown = os.path.basename(str(value).rstrip("/")) if k in ("data", "weights") and value else value
            words.append(f"{k.replace('_', ' ')} {shown if shown not in (None, '') else '–'}")
    return ", ".join(words)


def recipe_note(a: runs.RunInfo, b: runs.RunInfo, diffs: list[dict] | None = None) -> str:
    """A sentence naming how two runs' recipes differ, or '' when only the configuration does:
    'ResNet18-scratch (6 epochs) vs ResNet50-scratch (2 epochs of 5 steps): the gap may come from
    the recipe, not the architecture.'"""
    diffs = recipe_differences(a, b) if diffs is None else diffs
    if not diffs:
        return ""
    settings = [d["setting"] for d in diffs]
    name_a, name_b = names(a, b)
    head = f"{name_a} ({_recipe_words(a, settings)}) vs {name_b} ({_recipe_words(b, settings)})"
    what = [w for w, differs in (("architecture", a.arch != b.arch), ("pretraining", a.pretrained != b.pretrained))
            if differs]
    if settings == ["seed"]:
        return f"{head}: otherwise the same recipe; part of any gap may be the seed's doing."
    if not what:
        return f"{head}: runs of one configuration, so any gap comes from the recipe (or chance)."
    return f"{head}: the gap may come from the recipe, not the {' or the '.join(what)}."


def finding(a: runs.RunInfo, b: runs.RunInfo, result: dict, p_accuracy: float | None = None) -> str:
    """The verdict sentence of a comparison, followed by how the recipes differ."""
    text = stats.verdict_sentence(*names(a, b), result, p_accuracy)
    note = recipe_note(a, b, result.get("recipe_differences"))
    return f"{text} {note}" if note else text


def all_pairs(chosen: dict[str, runs.RunInfo | None], n_boot: int = stats.N_BOOT) -> list[dict]:
    """Every pair of the chosen runs: the comparison, Holm-adjusted McNemar p over the pairs
    that could be compared, and a sentence; a pair on different test sets says why not.

    Each run is resampled once (the same counts for every run on one test set) and paired
    from that, not once per pair.
    """
    done = [(name, run) for name, run in chosen.items() if run is not None]
    found: dict[str, TestSet | ComparisonError] = {}
    for _, run in done:
        try:
            found[run.run_id] = test_set(run)
        except ComparisonError as err:
            found[run.run_id] = err
    counts: dict[tuple, stats.Resamples] = {}
    resampled: dict[str, dict] = {}

    def resampled_of(run: runs.RunInfo) -> dict:
        if run.run_id not in resampled:
            t = found[run.run_id]
            key = tuple(t.names)
            if key not in counts:
                counts[key] = stats.Resamples.draw(t.labels, n_boot, stats.SEED)
            resampled[run.run_id] = stats.resample(t.labels, t.probs, counts[key])
        return resampled[run.run_id]

    out = []
    for (name_a, a), (name_b, b) in itertools.combinations(done, 2):
        row = {"a": name_a, "b": name_b, "run_a": a.run_id, "run_b": b.run_id}
        try:
            for run in (a, b):
                if isinstance(found[run.run_id], ComparisonError):
                    raise found[run.run_id]
            check_same_test_set(a, b, found[a.run_id], found[b.run_id])
            row["result"] = stats.paired_from(resampled_of(a), resampled_of(b))
            row["result"]["recipe_differences"] = recipe_differences(a, b)
        except ComparisonError as err:
            row["refused"] = str(err)
        out.append(row)
    compared = [r for r in out if "result" in r]
    adjusted = stats.holm([r["result"]["mcnemar"]["p"] for r in compared])
    for row, p in zip(compared, adjusted):
        row["p_holm"] = p
        row["sentence"] = finding(chosen[row["a"]], chosen[row["b"]], row["result"], p)
    return out


def pairs_frame(pairs: list[dict]) -> pd.DataFrame:
    """One row per pair for a table: differences with intervals, p-values, the sentence."""
    rows = []
    for p in pairs:
        if "refused" in p:
            rows.append({"A": p["a"], "B": p["b"], "finding": p["refused"]})
            continue
        m = p["result"]["metrics"]
        differs = ", ".join(d["setting"] for d in p["result"].get("recipe_differences") or []) or "nothing"
        rows.append({"A": p["a"], "B": p["b"],
                     "accuracy A − B": _diff(m["acc"], 100, " pts"), "QWK A − B": _diff(m["qwk"]),
                     "macro AUC A − B": _diff(m["auc"]),
                     "McNemar p": p["result"]["mcnemar"]["p"], "Holm p": p["p_holm"],
                     "recipe differs in": differs, "finding": p["sentence"]})
    return pd.DataFrame(rows)


def _diff(m: dict, scale: float = 1.0, unit: str = "") -> str:
    if m["ci"] is None:
        return "–"
    digits = 1 if scale == 100 else 3
    return (f"{stats.signed(m['diff'], scale, digits)}{unit} ({stats.signed(m['ci'][0], scale, digits)} to "
            f"{stats.signed(m['ci'][1], scale, digits)})")


# Intervals computed again for runs stored with another method, per predictions.csv version.
_recomputed: dict[tuple, dict] = {}


OLDER_METHOD = "an older method (bootstrap stratified by grade), which can be too narrow; retrain to update"


def intervals(run: runs.RunInfo) -> dict:
    """The run's 95 % intervals (``test_acc_ci`` ..., ``test_ci_method``) by stats.CI_METHOD: as
    stored in summary.json, or, for a run stored with another method or none, computed now from
    its predictions.csv (and kept for this process). A run without predictions keeps its stored
    intervals, marked OLDER_METHOD, but its accuracy interval is always Wilson's."""
    s = run.summary
    stored = {k: v for k, v in s.items() if k.startswith("test_") and (k.endswith("_ci") or k.startswith("test_ci_"))}
    if s.get("test_ci_method") == stats.CI_METHOD:
        return stored
    path = run.path / "predictions.csv"
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = None
    if key in _recomputed:
        return _recomputed[key]
    try:
        found = test_set(run)
    except ComparisonError:
        if not s.get("test_confusion"):
            return stored
        confusion = np.asarray(s["test_confusion"])
        acc = {"test_acc_ci": list(stats.wilson_interval(int(np.trace(confusion)), int(confusion.sum())))}
        return {**stored, **acc, "test_ci_method": OLDER_METHOD} if stored else acc
    points = {m: s.get(f"test_{m}") for m in stats.CI_METRICS}
    result = stats.confidence_intervals(found.labels, found.probs, "test_", seed=int(run.config.get("seed", 0)),
                                        points=points)
    if len(_recomputed) > 256:
        _recomputed.clear()
    _recomputed[key] = result
    return result


def recipe(config: dict) -> dict:
    """A configuration without the fields that only name, date or seed a run."""
    return {k: v for k, v in config.items() if k not in IDENTITY_FIELDS}


def replicates(run: runs.RunInfo, all_runs: list[runs.RunInfo]) -> list[runs.RunInfo]:
    """Finished runs with ``run``'s recipe and data (any seed), ``run`` first; one per seed."""
    same = [r for r in all_runs if r.state == "done" and r.summary and recipe(r.config) == recipe(run.config)]
    by_seed: dict = {run.config.get("seed"): run}
    for r in same:  # newest first: the newest run of each seed
        by_seed.setdefault(r.config.get("seed"), r)
    return list(by_seed.values())


def seed_spread(run: runs.RunInfo, all_runs: list[runs.RunInfo],
                metrics: tuple[str, ...] = ("test_acc", "test_qwk", "test_auc")) -> dict:
    """Mean and sample standard deviation of each metric over the run's seeds (n >= 1)."""
    group = replicates(run, all_runs)
    out: dict = {"seeds": len(group), "seed_values": [r.config.get("seed") for r in group]}
    for m in metrics:
        values = np.array([r.summary.get(m) for r in group if r.summary.get(m) is not None], dtype=float)
        out[f"{m}_mean"] = float(values.mean()) if len(values) else None
        out[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
    return out


def config_diff(a: dict, b: dict) -> pd.DataFrame:
    """Two configurations side by side: the fields that differ first, then the rest."""
    keys = sorted(set(a) | set(b))
    rows = [{"setting": k, "A": _show(a.get(k, "–")), "B": _show(b.get(k, "–")), "differs": a.get(k) != b.get(k)}
            for k in keys if k != "created"]
    frame = pd.DataFrame(rows, columns=["setting", "A", "B", "differs"])
    return frame.sort_values(["differs", "setting"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _show(value) -> str:
    return "–" if value is None else str(value)


# Config fields that name or date a run: never an axis of its own.
NOT_SETTINGS = ("name", "created")


def hyperparameter_frame(all_runs: list[runs.RunInfo], metric: str = "test_qwk") -> pd.DataFrame:
    """One row per finished run: every setting that differs among these runs, and ``metric``
    (for parallel coordinates). A setting a run lacks (older config.json) reads as None."""
    done = [r for r in all_runs if r.state == "done" and r.summary.get(metric) is not None]
    keys = list(dict.fromkeys(k for r in done for k in r.config if k not in NOT_SETTINGS))
    differing = [k for k in keys if len({repr(r.config.get(k)) for r in done}) > 1]
    return pd.DataFrame([{"run": r.run_id, **{k: r.config.get(k) for k in differing}, metric: r.summary.get(metric)}
                         for r in done], columns=["run", *differing, metric])
