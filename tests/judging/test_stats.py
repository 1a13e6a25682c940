"""Intervals, paired tests and run comparisons against hand-worked cases and known truths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from app_fixtures import write_run
from retino_core.judging import comparison
from retino_core import runs
from retino_core.judging import stats
from retino_core.cli import main
from retino_core.report import lab  # noqa: E402


def predictions_with_accuracy(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose argmax is right with probability ``accuracy``."""
    y = rng.integers(0, 5, n)
    right = rng.random(n) < accuracy
    pred = np.where(right, y, (y + rng.integers(1, 5, n)) % 5)
    probs = np.full((n, 5), 0.1)
    probs[np.arange(n), pred] = 0.6
    return y, probs


# RetinaMNIST's test grades: 174 / 46 / 92 / 68 / 20 of 400.
SHARES = np.array([174, 46, 92, 68, 20]) / 400


def draw_test_set(rng: np.random.Generator, n: int, constant_share: float, skill: float):
    """A test set drawn afresh from the population: grades with RetinaMNIST's shares; a model that
    answers No DR for ``constant_share`` of the photos and is otherwise right with chance ``skill``."""
    y = rng.choice(5, n, p=SHARES)
    answer = np.where(rng.random(n) < skill, y, rng.integers(0, 5, n))
    pred = np.where(rng.random(n) < constant_share, 0, answer)
    return y, pred


def true_accuracy(constant_share: float, skill: float) -> float:
    right_when_guessing = skill + (1 - skill) * 0.2
    return constant_share * SHARES[0] + (1 - constant_share) * right_when_guessing


@pytest.mark.parametrize("constant_share, skill", [(0.97, 0.0), (0.0, 0.6), (0.5, 0.8)])
def test_accuracy_intervals_cover_the_truth_95_percent_of_the_time(constant_share, skill):
    """Coverage over 1,000 fresh test sets of 400 photos, a near-constant model included: the
    interval of one run's accuracy (the one confidence_intervals stores) lands at 95 % +- 3."""
    rng = np.random.default_rng(0)
    truth = true_accuracy(constant_share, skill)
    covered = 0
    for _ in range(1000):
        y, pred = draw_test_set(rng, 400, constant_share, skill)
        lo, hi = stats.wilson_interval(int(np.sum(pred == y)), len(y))
        covered += lo <= truth <= hi
    assert 0.92 <= covered / 1000 <= 0.98, covered
    probs = np.eye(5)[pred] * 0.8 + 0.04
    assert stats.confidence_intervals(y, probs, n_boot=50)["test_acc_ci"] == [lo, hi]


def test_paired_accuracy_differences_cover_the_truth_95_percent_of_the_time():
    """A near-constant run against a real one, 400 fresh test sets of 400 photos, through
    paired_comparison: the interval of the accuracy difference lands at 95 % +- 3."""
    rng = np.random.default_rng(1)
    truth = true_accuracy(0.97, 0.0) - true_accuracy(0.0, 0.6)
    covered = 0
    for _ in range(400):
        y = rng.choice(5, 400, p=SHARES)
        pred_a = np.where(rng.random(400) < 0.97, 0, rng.integers(0, 5, 400))
        pred_b = np.where(rng.random(400) < 0.6, y, rng.integers(0, 5, 400))
        found = stats.paired_comparison(y, np.eye(5)[pred_a], np.eye(5)[pred_b], n_boot=50, which=("acc",))
        lo, hi = found["metrics"]["acc"]["ci"]
        covered += lo <= truth <= hi
    assert 0.92 <= covered / 400 <= 0.98, covered


def test_a_constant_model_on_400_images_gets_an_accuracy_interval_of_real_width():
    """Always No DR on RetinaMNIST's 400 test photos: 43.5 %, and an interval as wide as the
    binomial's, not 43.5 % to 43.5 % (what a bootstrap stratified by grade gave)."""
    y = np.repeat(np.arange(5), [174, 46, 92, 68, 20])
    probs = np.tile(np.float32([0.6, 0.1, 0.1, 0.1, 0.1]), (400, 1))
    ci = stats.confidence_intervals(y, probs)
    lo, hi = ci["test_acc_ci"]
    assert lo < 0.435 < hi and hi - lo > 0.09, (lo, hi)
    assert ci["test_ci_method"] == stats.CI_METHOD
    assert stats.bootstrap_counts(y, 200, stratify=False)[:, y == 0].sum(1).std() > 5  # grade counts vary
    # Every stored point lies inside its interval, to the last bit (float32 gave 0.4350000023841858).
    point = stats.resampled_metrics(y, probs, stats.Resamples.whole(400))
    assert point["acc"][0] == 0.435
    for m in ("qwk", "auc", "referable_auc"):
        if ci[f"test_{m}_ci"] is not None:
            assert ci[f"test_{m}_ci"][0] <= point[m][0] <= ci[f"test_{m}_ci"][1]
    # Two runs that agree on every photo: a difference interval of about +-1 point, not +0.0 to +0.0.
    same = stats.paired_comparison(y, probs, probs, n_boot=100)["metrics"]["acc"]["ci"]
    assert same[0] < -0.009 and same[1] > 0.009


def test_stored_points_always_lie_inside_their_intervals():
    rng = np.random.default_rng(7)
    y, probs = predictions_with_accuracy(rng, 120, 0.5)
    stored = {"auc": 0.123, "qwk": 0.999}  # as if another library had rounded them differently
    ci = stats.confidence_intervals(y, probs, n_boot=100, points=stored)
    assert ci["test_auc_ci"][0] <= 0.123 and ci["test_qwk_ci"][1] >= 0.999
    assert stats.hold([0.4350000023841858, 0.4350000023841858], 0.435) == [0.435, 0.4350000023841858]


def test_intervals_bracket_the_point_estimate_and_shrink_with_more_images():
    rng = np.random.default_rng(1)
    small, large = (predictions_with_accuracy(rng, n, 0.6) for n in (100, 2000))
    ci_small = stats.confidence_intervals(*small)
    ci_large = stats.confidence_intervals(*large)
    for m in stats.CI_METRICS:
        assert ci_small[f"test_{m}_ci"][0] < ci_small[f"test_{m}_ci"][1]
        width = lambda ci: ci[f"test_{m}_ci"][1] - ci[f"test_{m}_ci"][0]  # noqa: E731
        assert width(ci_large) < width(ci_small)
    acc = float(np.mean(large[1].argmax(1) == large[0]))
    assert ci_large["test_acc_ci"][0] < acc < ci_large["test_acc_ci"][1]
    assert ci_large["test_ci_resamples"] == stats.N_BOOT >= 1000


def test_the_stratified_bootstrap_keeps_every_grades_count_and_both_are_seeded():
    y = np.array([0] * 50 + [1] * 7 + [4] * 3)
    w = stats.bootstrap_counts(y, 100, seed=3, stratify=True)
    assert (w.sum(1) == 60).all() and (w[:, y == 4].sum(1) == 3).all()
    assert np.array_equal(w, stats.bootstrap_counts(y, 100, seed=3, stratify=True))
    plain = stats.bootstrap_counts(y, 100, seed=3)
    assert (plain.sum(1) == 60).all() and len(set(plain[:, y == 4].sum(1))) > 1  # over images: counts vary
    assert np.array_equal(plain, stats.bootstrap_counts(y, 100, seed=3))


def test_weighted_auc_equals_sklearn_on_repeated_images_with_ties():
    rng = np.random.default_rng(2)
    scores = np.round(rng.random(40), 1)  # many ties
    positive = rng.random(40) < 0.4
    counts = rng.integers(0, 4, (3, 40)).astype(np.float32)
    found = stats.weighted_auc(scores, positive, counts)
    for row, value in zip(counts.astype(int), found):
        expected = roc_auc_score(np.repeat(positive, row), np.repeat(scores, row))
        assert value == pytest.approx(expected)


def test_mcnemar_exact_by_hand():
    # 1 image only A gets right, 9 only B: p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024.
    right_a = np.array([True] * 20 + [True] + [False] * 9)
    right_b = np.array([True] * 20 + [False] + [True] * 9)
    found = stats.mcnemar_exact(right_a, right_b)
    assert (found["only_a_right"], found["only_b_right"]) == (1, 9)
    assert found["p"] == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(right_a, right_a)["p"] == 1.0


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_of_a_run_against_itself_and_a_clearly_better_one():
    rng = np.random.default_rng(4)
    y, probs = predictions_with_accuracy(rng, 400, 0.5)
    same = stats.paired_comparison(y, probs, probs)
    assert same["metrics"]["acc"]["diff"] == 0 and same["metrics"]["acc"]["ci"] == pytest.approx([-0.0095, 0.0095],
                                                                                                  abs=1e-4)
    assert same["mcnemar"]["p"] == 1.0
    assert stats.verdict_sentence("A", "B", same) == (
        "A and B are equally accurate: they get exactly the same of the 400 test images right (95 % CI -1.0 to "
        "+1.0: on other photos like these they could still differ that much).")
    better = probs.copy()
    wrong = np.flatnonzero(probs.argmax(1) != y)[:60]  # B gets 60 more images right
    better[wrong] = 0.1
    better[wrong, y[wrong]] = 0.6
    found = stats.paired_comparison(y, probs, better)
    acc = found["metrics"]["acc"]
    assert acc["diff"] == pytest.approx(-0.15) and acc["ci"][1] < 0
    assert found["mcnemar"] == {"only_a_right": 0, "only_b_right": 60, "p": pytest.approx(2 * 0.5 ** 60)}
    sentence = stats.verdict_sentence("ResNet18", "ResNet50", found)
    assert sentence.startswith("ResNet50 is more accurate than ResNet18 by 15.0 points, 95 % CI +")
    assert ": a real difference on this test set (McNemar p < 0.001)" in sentence
    # No resample crosses zero: the bootstrap p-value is its bound, never 0.
    acc = found["metrics"]["acc"]
    assert acc["p_bootstrap"] == 2 / 1000 and acc["p_bootstrap_bound"] == "<" and acc["p_bootstrap_resamples"] == 1000


def test_runs_on_different_test_sets_are_refused(runs_dir: Path, tiny_npz: Path, capsys):
    a = write_run(runs_dir, "resnet18", data="retinamnist", seed=1)
    b = write_run(runs_dir, "resnet50", data=str(tiny_npz), seed=2)
    with pytest.raises(comparison.ComparisonError, match="different test sets"):
        comparison.compare_runs(runs.load_run(a), runs.load_run(b))
    assert main(["compare", a.name, b.name]) == 2
    assert "different test sets" in capsys.readouterr().err


def test_compare_command_on_two_runs_of_one_test_set(runs_dir: Path, capsys):
    a = write_run(runs_dir, "resnet18", skill=2.0, seed=1)
    b = write_run(runs_dir, "resnet50", skill=0.0, seed=2)  # collapsed onto grade 0
    assert main(["compare", a.name, b.name, "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact test" in out and "ResNet18-scratch is more accurate than ResNet50-scratch" in out
    assert main(["compare", a.name, b.name, "--json", "--resamples", "300"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["resamples"] == 300 and found["metrics"]["acc"]["diff"] > 0 and found["mcnemar"]["p"] < 0.05
    assert found["recipe_differences"] == [] and found["name_a"] == "ResNet18-scratch"
    for m in found["metrics"].values():  # never a p of 0: the bound, with the resamples it rests on
        assert m["p_bootstrap"] > 0 and m["p_bootstrap_resamples"] == 300 and m["p_bootstrap_bound"] in ("<", "=")


def test_config_diff_lists_what_differs_first():
    a = {"arch": "resnet18", "lr": 0.002, "epochs": 30, "created": "x"}
    b = {"arch": "resnet18", "lr": 0.001, "epochs": 30, "name": "b"}
    diff = comparison.config_diff(a, b)
    assert list(diff["setting"][:2]) == ["lr", "name"] and list(diff["differs"]) == [True, True, False, False]
    assert "created" not in list(diff["setting"])


def test_seed_spread_over_runs_of_one_recipe(runs_dir: Path):
    from retino_core.config import make_config

    dirs = [write_run(runs_dir, "resnet18", seed=k, skill=1.0 + k) for k in range(3)]
    for k, d in enumerate(dirs):  # the same recipe, three seeds
        cfg = {**make_config("cpu", arch="resnet18", epochs=3).to_dict(), "seed": k}
        runs.write_json(d / "config.json", cfg)
    infos = runs.list_runs(runs_dir)
    spread = comparison.seed_spread(infos[0], infos)
    accs = [runs.load_run(d).summary["test_acc"] for d in dirs]
    assert spread["seeds"] == 3 and spread["test_acc_mean"] == pytest.approx(np.mean(accs))
    assert spread["test_acc_sd"] == pytest.approx(np.std(accs, ddof=1))


def test_notes_and_tags_round_trip(runs_dir: Path, capsys):
    run_dir = write_run(runs_dir)
    runs.write_notes(run_dir, "lr too high?\nsecond line", "Baseline, lab , baseline")
    info = runs.load_run(run_dir)
    assert info.notes == "lr too high?\nsecond line" and info.tags == ["baseline", "lab"]
    assert main(["note", run_dir.name, "--tags", "keep"]) == 0
    assert runs.load_run(run_dir).tags == ["keep"] and runs.load_run(run_dir).notes.startswith("lr too high")
    capsys.readouterr()
    assert main(["runs"]) == 0 and capsys.readouterr().out.splitlines()[1].endswith("keep")
    with pytest.raises(runs.RunError, match="under 10,000"):
        runs.write_notes(run_dir, "x" * 10_001)


def test_old_runs_get_intervals_from_their_predictions(runs_dir: Path):
    run_dir = write_run(runs_dir)
    summary = runs.read_json(run_dir / "summary.json")  # as written before intervals were stored
    runs.write_json(run_dir / "summary.json", {k: v for k, v in summary.items() if "_ci" not in k})
    run = runs.load_run(run_dir)
    assert "test_acc_ci" not in run.summary
    found = comparison.intervals(run)
    assert found["test_acc_ci"][0] < run.summary["test_acc"] < found["test_acc_ci"][1]


def test_four_configurations_with_seeds_and_their_spread_in_the_2x2_table(runs_dir: Path):

    configs = lab.four_configs("cpu", seeds=3, data="retinamnist", epochs=3)
    assert len(configs) == 12 and sorted({c.seed for c in configs}) == [0, 1, 2]
    assert configs[0].name.endswith("-s0") and lab.four_configs("cpu")[0].name == ""
    for cfg in configs[:4] + configs[4:8]:  # two seeds of each configuration, trained (as fixtures)
        run_dir = write_run(runs_dir, cfg.arch, cfg.pretrained, seed=cfg.seed * 10 + int(cfg.pretrained),
                            skill=1.5)
        runs.write_json(run_dir / "config.json", {**cfg.to_dict(), "created": runs.now_iso()})
    all_runs = runs.list_runs(runs_dir)
    frame = lab.comparison_frame(lab.champion_four(all_runs, "retinamnist"), all_runs)
    assert list(frame["seeds"]) == [2, 2, 2, 2]
    assert all("; 2 seeds: " in cell and " ± " in cell for cell in frame["test_acc_verdict"])
    assert all("; 2 seeds: " in cell for cell in frame["test_qwk_ci_shown"])


def test_all_pairs_resamples_each_run_once_and_agrees_with_compare_runs(runs_dir: Path, tiny_npz: Path):
    dirs = [write_run(runs_dir, "resnet18", skill=s, seed=k) for k, s in enumerate((2.0, 1.0, 0.0))]
    dirs.append(write_run(runs_dir, "resnet50", data=str(tiny_npz), seed=9))  # another test set
    chosen = {f"r{k}": runs.load_run(d) for k, d in enumerate(dirs)}
    pairs = comparison.all_pairs(chosen, n_boot=400)
    assert len(pairs) == 6 and sum("refused" in p for p in pairs) == 3
    first = next(p for p in pairs if (p["a"], p["b"]) == ("r0", "r1"))
    alone = comparison.compare_runs(chosen["r0"], chosen["r1"], n_boot=400)
    assert first["result"]["metrics"]["acc"]["ci"] == pytest.approx(alone["metrics"]["acc"]["ci"])
    assert first["p_holm"] >= first["result"]["mcnemar"]["p"]


def test_mcnemar_p_is_scipys_exact_binomial_test():
    from scipy.stats import binomtest

    for k, n in ((0, 1), (3, 10), (5, 10), (0, 30), (12, 40), (200, 450), (7, 7), (40, 2000)):
        assert stats._sign_test_p(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-12, abs=1e-300)


def test_recipe_differences_are_named_in_compare_and_its_sentence(runs_dir: Path, capsys):
    """ResNet18 with 6 full epochs against ResNet50 with 2 epochs of 5 steps: the gap is not the architecture's."""
    a = write_run(runs_dir, "resnet18", skill=2.0, seed=1, epochs=6)
    b = write_run(runs_dir, "resnet50", skill=1.0, seed=2, epochs=2)
    config = json.loads((b / "config.json").read_text())
    runs.write_json(b / "config.json", {**config, "max_steps_per_epoch": 5, "lr": 0.001})
    assert main(["compare", a.name, b.name, "--json", "--resamples", "200"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["recipe_differences"] == [{"setting": "epochs", "a": 6, "b": 2},
                                           {"setting": "max_steps_per_epoch", "a": 0, "b": 5},
                                           {"setting": "lr", "a": 0.002, "b": 0.001}]
    assert ("ResNet18-scratch (6 epochs, lr 0.002) vs ResNet50-scratch (2 epochs of 5 steps, lr 0.001): the gap may "
            "come from the recipe, not the architecture.") in found["sentence"]
    assert main(["compare", a.name, b.name, "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "recipe differs: max_steps_per_epoch" in out and "not the architecture" in out
    # The report's table lists every setting that differs, steps per epoch included.
    chosen = {"resnet18 / scratch": runs.load_run(a), "resnet50 / scratch": runs.load_run(b)}
    table = lab.recipe_table(chosen)
    assert list(table.index) == ["epochs", "max_steps_per_epoch", "lr"] and lab.differing(table) == list(table.index)
    pairs = comparison.all_pairs(chosen, n_boot=200)
    assert comparison.pairs_frame(pairs)["recipe differs in"][0] == "epochs, max_steps_per_epoch, lr"


def test_two_runs_of_one_configuration_are_named_by_run(runs_dir: Path):
    a = write_run(runs_dir, "resnet18", skill=2.0, seed=1, name="long")
    b = write_run(runs_dir, "resnet18", skill=0.5, seed=2, name="smoke")
    ra, rb = runs.load_run(a), runs.load_run(b)
    assert comparison.names(ra, rb) == ("long", "smoke")
    found = comparison.compare_runs(ra, rb, n_boot=200)
    assert found["sentence"].startswith("long is more accurate than smoke by ")
    assert "ResNet18-scratch is more accurate than ResNet18-scratch" not in found["sentence"]
    runs.write_json(b / "config.json", {**rb.config, "name": "long"})  # the same name: the run ids
    assert comparison.names(ra, runs.load_run(b)) == (a.name, b.name)
    runs.write_json(b / "config.json", {**rb.config, "name": "long", "seed": 1})
    note = comparison.recipe_note(ra, runs.load_run(b))
    assert note == f"{a.name} (seed 0) vs {b.name} (seed 1): otherwise the same recipe; part of any gap may be the seed's doing."


def test_intervals_stored_by_an_older_method_are_computed_again(runs_dir: Path):
    """A run trained before stores [0.435, 0.435] from the stratified bootstrap: read again, Wilson's."""
    run_dir = write_run(runs_dir, skill=0.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if k != "test_ci_method"}  # written before methods were named
    runs.write_json(run_dir / "summary.json", {**summary, "test_acc_ci": [0.4350000023841858, 0.4350000023841858],
                                               "test_qwk_ci": [0.0, 0.0], "test_ci_resamples": 1000})
    found = comparison.intervals(runs.load_run(run_dir))
    assert found["test_ci_method"] == stats.CI_METHOD
    assert found["test_acc_ci"][1] - found["test_acc_ci"][0] > 0.05
    (run_dir / "predictions.csv").unlink()  # without predictions: the stored ones, marked, and Wilson's accuracy
    found = comparison.intervals(runs.load_run(run_dir))
    assert found["test_ci_method"] == comparison.OLDER_METHOD and found["test_qwk_ci"] == [0.0, 0.0]
    assert found["test_acc_ci"][1] - found["test_acc_ci"][0] > 0.05
