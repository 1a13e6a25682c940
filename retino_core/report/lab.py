"""The four configurations (ResNet18 / ResNet50, with / without ImageNet weights) compared,
laid out like the lab report and exported as a zipped Markdown + HTML report.

No streamlit and no torch: everything here is read from run folders.
"""

from __future__ import annotations

import html
import io
import json
import zipfile
from datetime import datetime, timezone

import pandas as pd

from .. import runs
from ..config import ARCHS, GRADE_NAMES, TrainConfig, make_config
from ..judging import champions, comparison, stats, trust
from . import display, figures

# The lab report's 2x2 table: rows with / without pretraining, columns ResNet18 / ResNet50.
FOUR = tuple((arch, pretrained) for pretrained in (True, False) for arch in ARCHS)


ROW_NAMES = {True: "ImageNet pretrained", False: "from scratch"}


COLUMN_NAMES = {"resnet18": "ResNet18", "resnet50": "ResNet50"}


def configuration_name(arch: str, pretrained: bool) -> str:
    """The name RunInfo.configuration gives, e.g. ``resnet50 / pretrained``."""
    return f"{arch} / {'pretrained' if pretrained else 'scratch'}"


CONFIGURATIONS = tuple(configuration_name(a, p) for a, p in FOUR)


def four_configs(preset: str = "cpu", seeds: int = 1, **overrides) -> list[TrainConfig]:
    """One TrainConfig per configuration and seed, identical apart from arch, pretraining and
    seed; ``seeds`` runs of each, seeded ``seed``, ``seed + 1``, ... (``seed`` defaults to 0)."""
    overrides = {k: v for k, v in overrides.items() if k not in ("arch", "pretrained")}
    name = overrides.pop("name", "")
    first = int(overrides.pop("seed", None) or 0)
    out = []
    for seed in range(first, first + max(1, int(seeds))):
        tag = f"-s{seed}" if seeds > 1 else ""
        out += [make_config(preset, arch=a, pretrained=p, seed=seed, **overrides,
                            name=f"{name}-{a}-{'pre' if p else 'scratch'}{tag}" if name or tag else "")
                for a, p in FOUR]
    return out


same_data = champions.same_data


def default_data(all_runs: list[runs.RunInfo]) -> str:
    """The dataset the newest run trained on (what the user works on now), else RetinaMNIST."""
    return str(all_runs[0].config.get("data") or "retinamnist") if all_runs else "retinamnist"


def datasets(all_runs: list[runs.RunInfo], done_only: bool = True) -> list[str]:
    """The data specs that runs were trained on, most used first."""
    specs = [str(r.config.get("data", "retinamnist")) for r in all_runs if not done_only or r.state == "done"]
    return list(pd.Series(specs, dtype=object).value_counts().index) if specs else []


def champion_four(all_runs: list[runs.RunInfo], data: str | None,
                  choices: dict[str, str] | None = None) -> dict[str, champions.Champion | None]:
    """The champion of each configuration on ``data`` (champions.champions), in FOUR order; None
    where the configuration has no finished run. ``choices``: the session's picks, as on Compare."""
    found = champions.champions(all_runs, data, choices)
    return {name: found.get(name) for name in CONFIGURATIONS}


def runs_of(four: dict[str, champions.Champion | None]) -> dict[str, runs.RunInfo | None]:
    """The runs behind a champion_four mapping."""
    return {name: (c.run if c else None) for name, c in four.items()}


def best_test_acc(run: runs.RunInfo) -> float | None:
    """The highest test accuracy over epochs: the lab report's number (chosen on test, so optimistic)."""
    values = [v for v in run.summary.get("test_acc_per_epoch") or [] if v is not None]
    return max(values) if values else None


def one_line(text: str | None, limit: int = 160) -> str:
    """The first line of an error, cut to ``limit`` characters."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[:limit - 1] + "…"


def not_done(all_runs: list[runs.RunInfo], data: str | None) -> dict[str, str]:
    """Per configuration with no finished run on ``data``: what it is doing ('running', 'queued',
    'failed: <reason>') or 'not trained yet'."""
    now = champions.standing(all_runs, data)
    out = {}
    for name in CONFIGURATIONS:
        found = now.get(name)
        if found is not None and found.champion is not None:
            continue
        if found is None:
            out[name] = "not trained yet"
        elif found.running or found.queued:
            out[name] = "running" if found.running else "queued"
        elif found.failed is not None:
            reason = one_line(found.failed.status.get("error"))
            out[name] = f"{found.failed.state}: {reason}" if reason else found.failed.state
        else:
            out[name] = "not trained yet"
    return out


def comparison_frame(four: dict[str, champions.Champion | None], all_runs: list[runs.RunInfo] | None = None,
                     data: str | None = None) -> pd.DataFrame:
    """One row per configuration (champion_four's champions) with the run that stands for it and
    why, the headline numbers, their 95 % intervals, the verdict, the recipe's epochs and steps
    and, where the recipe ran with several seeds (in ``all_runs``), mean and SD over seeds.
    A configuration without a finished run says why ('failed: <reason>', 'queued', ...)."""
    pending = not_done(all_runs, data) if all_runs is not None else {}
    rows = []
    for (arch, pretrained), (name, champion) in zip(FOUR, four.items()):
        run = champion.run if champion else None
        s, c = (run.summary, run.config) if run else ({}, {})
        verdict = trust.of_summary(s) if run else None
        ci = comparison.intervals(run) if run else {}
        spread = comparison.seed_spread(run, all_runs or [run]) if run else {}
        rows.append({
            "configuration": name, "model": COLUMN_NAMES[arch], "pretraining": ROW_NAMES[pretrained],
            "run": run.run_id if run else None, "chosen_because": champion.reason if champion else None,
            "test_acc": s.get("test_acc"), "best_test_acc_over_epochs": best_test_acc(run) if run else None,
            "test_qwk": s.get("test_qwk"), "test_auc": s.get("test_auc"),
            "test_referable_auc": s.get("test_referable_auc"), "test_macro_f1": s.get("test_macro_f1"),
            "test_majority_acc": s.get("test_majority_acc"), "test_collapsed": s.get("test_collapsed"),
            "test_collapse_share": s.get("test_collapse_share"),
            "test_collapse_grade": s.get("test_collapse_grade"), "best_epoch": s.get("best_epoch"),
            "epochs": c.get("epochs"), "max_steps_per_epoch": c.get("max_steps_per_epoch", 0) if run else None,
            "train_seconds": s.get("train_seconds"),
            "verdict": verdict["verdict"] if verdict else None,
            "verdict_reasons": " ".join(verdict["reasons"]) if verdict else None,
            **{f"test_{m}_ci": ci.get(f"test_{m}_ci") for m in stats.CI_METRICS},
            "ci_method": ci.get("test_ci_method"),
            "status": "done" if run else pending.get(name, "not trained yet"),
            "seeds": spread.get("seeds"),
            **{k: spread.get(k) for k in ("test_acc_mean", "test_acc_sd", "test_qwk_mean", "test_qwk_sd")},
        })
    frame = pd.DataFrame(rows)
    frame["test_acc_verdict"] = [_acc_with_verdict(r) for _, r in frame.iterrows()]
    frame["test_qwk_ci_shown"] = [_with_interval(r, "qwk", display.number) for _, r in frame.iterrows()]
    frame["stands_for"] = [f"{r['run']} ({r['chosen_because']})" if r["run"] else r["status"] for _, r in frame.iterrows()]
    return frame


def recipe_table(four: dict[str, runs.RunInfo | None]) -> pd.DataFrame:
    """Every setting in which the compared runs differ besides architecture and pretraining (one
    row each, a column per configuration); epochs and steps per epoch always. Empty without runs."""
    done = {name: run for name, run in four.items() if run is not None}
    if not done:
        return pd.DataFrame()
    settings = comparison.settings_that_differ(list(done.values()))
    settings = list(dict.fromkeys(["epochs", "max_steps_per_epoch", *settings]))
    table = pd.DataFrame({name: ["–" if (v := comparison.setting_of(run, k)) is None else str(v) for k in settings]
                          for name, run in done.items()}, index=settings)
    table.index.name = "setting"
    return table


def _interval_text(ci, fmt) -> str:
    return f" ({fmt(ci[0])}–{fmt(ci[1])})" if isinstance(ci, (list, tuple)) else ""


def _seeds_text(row: pd.Series, metric: str, fmt) -> str:
    """'; 3 seeds: 54.6 % ± 1.2': the spread over seeds, where the recipe ran with several."""
    seeds, mean, sd = row.get("seeds"), row.get(f"test_{metric}_mean"), row.get(f"test_{metric}_sd")
    if not seeds or seeds < 2 or mean is None or pd.isna(mean):
        return ""
    sd_text = f"{100 * sd:.1f} pts" if metric == "acc" else f"{sd:.3f}"
    return f"; {int(seeds)} seeds: {fmt(mean)} ± {sd_text}"


def _acc_with_verdict(row: pd.Series) -> str | None:
    """'55.3 % (50.4 %–60.1 %) · usable': the honest accuracy, its 95 % interval, the verdict
    and, with several seeds, their mean ± SD."""
    if row["test_acc"] is None or pd.isna(row["test_acc"]):
        return row["status"] if row["status"] != "done" else None
    return (f"{display.percent(row['test_acc'])}{_interval_text(row['test_acc_ci'], display.percent)} · "
            f"{row['verdict'] or 'not judged'}{_seeds_text(row, 'acc', display.percent)}")


def _with_interval(row: pd.Series, metric: str, fmt) -> str | None:
    value = row[f"test_{metric}"]
    if value is None or pd.isna(value):
        return None
    return f"{fmt(value)}{_interval_text(row[f'test_{metric}_ci'], fmt)}{_seeds_text(row, metric, fmt)}"


def table_2x2(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The lab report's layout of one metric: rows pretraining, columns architecture."""
    table = frame.pivot(index="pretraining", columns="model", values=metric)
    table = table.reindex(index=list(ROW_NAMES.values()), columns=list(COLUMN_NAMES.values()))
    table.index.name, table.columns.name = None, None
    return table


def findings(frame: pd.DataFrame, differing: list[str] | tuple = ()) -> list[str]:
    """Plain sentences about what the numbers show: each verdict that is not usable, the winner,
    and, where the compared runs' recipes differ (``differing``: recipe_table's settings that
    differ), that a gap may come from the recipe."""
    out = []
    done = frame.dropna(subset=["test_acc"])
    if done.empty:
        return ["No configuration has finished yet."]
    if len(done) > 1 and differing:
        out.append(f"The runs compared differ in their recipe as well as their configuration ({', '.join(differing)}): "
                   "a gap between configurations may come from the recipe, not the architecture or the pretraining "
                   "(see the settings that differ).")
    old = done[done["ci_method"].fillna("") == comparison.OLDER_METHOD] if "ci_method" in done else done.iloc[:0]
    if not old.empty:
        out.append(f"The QWK and AUC intervals of {', '.join(old['configuration'])} come from {comparison.OLDER_METHOD}.")
    for _, row in done.iterrows():
        if row["verdict"] and row["verdict"] != trust.USABLE:
            out.append(f"{row['configuration']} is {row['verdict']}: {row['verdict_reasons']}")
    usable = done[done["verdict"] == trust.USABLE]
    if usable.empty:
        out.append("None of the trained configurations is usable on this data: no grade from them should be "
                   "taken as an answer.")
    else:
        best = usable.sort_values(["test_qwk", "test_acc"], ascending=False, na_position="last").iloc[0]
        out.append(f"Best agreement with the graders among usable models: {best['configuration']} "
                   f"(QWK {display.number(best['test_qwk'])}, accuracy {display.percent(best['test_acc'])} against "
                   f"{display.percent(best['test_majority_acc'])} for always the commonest grade).")
    missing = frame[frame["test_acc"].isna()]
    if not missing.empty:
        out.append("Without a finished run on this data: " + "; ".join(
            f"{r['configuration']} ({r['status']})" for _, r in missing.iterrows()) + ".")
    return out


VERDICT_RULES = ("Verdicts: usable, weak, or no better than guessing, from the accuracy against that baseline "
                 "(exact binomial test), macro AUC, quadratic weighted kappa, collapse onto one grade and "
                 "calibration; the reasons are under Findings.")


def _baselines(frame: pd.DataFrame) -> str:
    values = sorted({display.percent(b) for b in frame["test_majority_acc"].dropna()})
    return ", ".join(values) if values else "–"


def _fmt_cell(value, metric: str) -> str:
    if isinstance(value, (list, tuple)):  # an interval
        return "–".join(_fmt_cell(v, metric.removesuffix("_ci")) for v in value)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if metric in P_COLUMNS:
        return _p_cell(value)
    if metric in ("best_epoch", "epochs", "seeds", "max_steps_per_epoch"):
        return str(int(value))
    if "_acc" in metric or metric.endswith("_share"):
        return display.percent(value)
    if metric == "train_seconds":
        return display.duration(value)
    if isinstance(value, float):
        return display.number(value)
    return str(value)


def markdown_table(frame: pd.DataFrame, metrics: dict[str, str] | None = None, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table; ``metrics`` maps column -> metric name for formatting."""
    cols = list(frame.columns)
    head = ([""] if index else []) + [str(c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        cells = [_fmt_cell(row[c], (metrics or {}).get(c, str(c))) for c in cols]
        lines.append("| " + " | ".join(([str(idx)] if index else []) + cells) + " |")
    return "\n".join(lines)


def epoch_frame(run: runs.RunInfo) -> pd.DataFrame:
    """A run's per-epoch numbers (no confusion matrices) as a table."""
    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in runs.epoch_rows(run.path)]
    return pd.DataFrame(rows)


def comparison_figures(four: dict[str, runs.RunInfo | None], normalize: bool = True) -> dict:
    """The comparison figures: accuracy curves per architecture and the four confusion matrices."""
    done = {name: run for name, run in four.items() if run is not None}
    out = {}
    for arch in ARCHS:
        curves = {name.split(" / ")[1]: runs.epoch_rows(run.path) for name, run in done.items() if run.arch == arch}
        if curves:
            baselines = {k: done[configuration_name(arch, k == "pretrained")].summary.get("test_majority_acc")
                         for k in curves}
            out[f"accuracy_{arch}"] = figures.accuracy_figure(
                curves, baselines, splits=("train", "test"), title=f"{COLUMN_NAMES[arch]}: accuracy per epoch")
    matrices = {name: (run.summary.get("test_confusion") if run else None) for name, run in four.items()}
    if any(m is not None for m in matrices.values()):
        out["confusion"] = figures.confusion_grid(
            matrices, normalize, title="Test confusion matrices (one colour scale)")
    return out


PAIRS_NOTE = ("Paired over the same test images: the accuracy difference with Tango's 95 % score interval, the "
              "QWK and AUC differences with 95 % paired-bootstrap intervals (over images; for the AUCs, within each "
              "grade), McNemar's exact test for accuracy, p-values Holm-adjusted over the pairs. 'Recipe differs in' "
              "names every setting besides architecture and pretraining in which the two runs differ.")


INTERVALS_NOTE = ("95 % intervals: Wilson's score interval for accuracy (it keeps its width for a model that always "
                  "gives one answer), a bootstrap over the test images (1,000 resamples) for QWK.")


def differing(table: pd.DataFrame) -> list[str]:
    """The settings of a recipe_table whose values are not all the same."""
    return [k for k, row in table.iterrows() if any(v != row.iloc[0] for v in row)] if len(table.columns) > 1 else []


def _p_cell(value) -> str:
    text = stats.p_text(value)
    return text[2:] if text.startswith("= ") else text


P_COLUMNS = ("McNemar p", "Holm p")


def p_values_as_text(pairs: pd.DataFrame) -> pd.DataFrame:
    """comparison.pairs_frame with its p-values written as text: '0.21', '< 0.001', never 0."""
    return pairs.assign(**{c: pairs[c].map(_p_cell) for c in P_COLUMNS if c in pairs})


def _table_html(df: pd.DataFrame, metric: str | None = None, index: bool = True) -> str:
    shown = df.copy()
    for col in shown.columns:
        shown[col] = shown[col].map(lambda v, name=metric or str(col): _fmt_cell(v, name))
    return shown.to_html(index=index, border=0, classes="t", escape=True)


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, datetime.now().timetuple()[:6])
            info.external_attr = 0o644 << 16  # readable once unzipped (writestr's default is 0600)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return buf.getvalue()


def _sections(four: dict[str, champions.Champion | None], data: str | None, all_runs) -> list[tuple]:
    """The report's parts, in order: ('h2', text), ('p', text), ('ul', items), ('table', frame, metric, index)."""
    frame = comparison_frame(four, all_runs, data)
    chosen = runs_of(four)
    acc, best, qwk, who = (table_2x2(frame, m) for m in ("test_acc_verdict", "best_test_acc_over_epochs",
                                                       "test_qwk_ci_shown", "stands_for"))
    detail_cols = ["configuration", "run", "chosen_because", "verdict", "test_acc", "test_acc_ci",
                   "best_test_acc_over_epochs", "test_majority_acc", "test_qwk", "test_qwk_ci", "test_auc", "test_auc_ci",
                   "test_referable_auc", "test_referable_auc_ci", "test_macro_f1", "test_collapsed", "seeds",
                   "best_epoch", "epochs", "max_steps_per_epoch", "train_seconds"]
    recipe = recipe_table(chosen)
    pairs = comparison.pairs_frame(comparison.all_pairs(chosen))
    return [
        ("h2", "The run that stands for each configuration, and why"), ("table", who, None, True),
        ("p", "Each configuration is represented by its champion: the run the user pinned, else the best finished "
              "usable run by the validation-selected metric, else the best finished run (never simply the newest)."),
        ("h2", "Test accuracy of the checkpoint chosen on validation, its 95 % interval and how far to trust it"),
        ("table", acc, None, True),
        ("p", f"Always answering the commonest grade scores {_baselines(frame)} on these test images. "
              f"{VERDICT_RULES} {INTERVALS_NOTE}"),
        ("h2", "Quadratic weighted kappa (test), with its 95 % interval"), ("table", qwk, None, True),
        ("h2", "Settings that differ between the runs compared"),
        ("table", recipe, None, True) if not recipe.empty else ("p", "No finished run."),
        ("h2", "Is the difference real?"), ("p", PAIRS_NOTE),
        ("table", pairs, None, False) if not pairs.empty else ("p", "Fewer than two configurations have finished."),
        ("h2", "Findings"), ("ul", findings(frame, differing(recipe))),
        ("h2", "Best test accuracy over epochs (the lab report's number; chosen on test, so optimistic)"),
        ("table", best, "test_acc", True),
        ("h2", "All numbers"), ("table", frame[detail_cols], None, False),
    ], frame


def _markdown(parts: list[tuple]) -> str:
    out = []
    for kind, *body in parts:
        if kind == "table":
            table, metric, index = body
            out.append(markdown_table(table, {c: metric for c in table} if metric else None, index=index))
        elif kind == "ul":
            out.append("\n".join(f"- {n}" for n in body[0]))
        else:
            out.append(f"## {body[0]}" if kind == "h2" else body[0])
    return "\n\n".join(out)


def _html(parts: list[tuple]) -> str:
    out = []
    for kind, *body in parts:
        if kind == "table":
            out.append(_table_html(body[0], body[1], body[2]))
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in body[0]) + "</ul>")
        else:
            out.append(f"<{kind}>{html.escape(body[0])}</{kind}>")
    return "\n".join(out)


def build_report(four: dict[str, champions.Champion | None], data: str | None = None,
                 normalize: bool = True, all_runs: list[runs.RunInfo] | None = None) -> bytes:
    """A zip: report.md (tables), report.html (tables and interactive figures), per-run CSV/JSON.
    ``four``: champion_four's champions (or the session's picks)."""
    parts, frame = _sections(four, data, all_runs)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Diabetic-retinopathy grading: four configurations on {display.data_label(data or '')}"
    md = "\n\n".join([
        f"# {title}", f"Generated {stamp}. Grades: " + ", ".join(f"{i} {n}" for i, n in enumerate(GRADE_NAMES)) + ".",
        _markdown(parts), "Interactive figures: open report.html. Per-epoch numbers: runs/<run>/epochs.csv.",
    ]) + "\n"
    figs = comparison_figures(runs_of(four), normalize)
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs.values())]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table.t{{border-collapse:collapse;margin:0.5em 0 1.5em}} .t td,.t th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body><h1>{html.escape(title)}</h1><p>Generated {stamp}.</p>
{_html(parts)}
<h2>Figures</h2>{''.join(charts) or '<p>No finished runs.</p>'}
</body></html>"""

    files = {"report.md": md, "report.html": page, "comparison.csv": frame.to_csv(index=False)}
    for run in (r for r in runs_of(four).values() if r is not None):
        files[f"runs/{run.run_id}/config.json"] = json.dumps(run.config, indent=2, sort_keys=True)
        files[f"runs/{run.run_id}/summary.json"] = json.dumps(run.summary, indent=2, sort_keys=True)
        files[f"runs/{run.run_id}/epochs.csv"] = epoch_frame(run).to_csv(index=False)
    return _zip(files)
