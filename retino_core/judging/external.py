"""How a run does on photos it was not trained or tested on: ``evaluate RUN --data DATA``.

The photos are answered as every door answers them (``decision.decide``: the run's grading
probabilities, its referral threshold, the photo checks). A refused photo ("not graded") is
counted, never scored; an unreadable file is counted and named. The numbers are those of the
photos that passed the checks, scored on the grade the grader gives (referral first, then the
most probable grade on that side; for a model that is not usable, what it would say):

- accuracy (Wilson interval), QWK (bootstrap over photos), macro AUC and referable-DR AUC
  (bootstrap stratified by grade), as ``stats.CI_METHOD`` says;
- recall per grade, referral sensitivity and specificity at the run's threshold;
- the majority baseline *on that data*: always answering its commonest grade;
- a verdict on that data by the rules of ``trust`` (split name "external").

Results live in the run folder, ``external/<name>.json`` (with the photos' answers in
``external/<name>.csv``): ``save``, ``read_all``. Names are checked like run ids, never taken
as paths. No torch here: numbers only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import runs
from ..config import GRADE_NAMES, NUM_CLASSES, REFERABLE_GRADE
from ..errors import DataError
from . import metrics, stats, trust
from .decision import NOT_GRADED

FOLDER = "external"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` if it can name an evaluation (letters, digits, '.', '_', '-'; 64 at most)."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".json", ".csv")):
        raise DataError(f"evaluation name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (for example clinic-x)")
    return name


def default_name(data: str) -> str:
    """A name from the data's spec: the folder's or the CSV's name, made safe."""
    text = str(data).strip().rstrip("/\\")
    stem = Path(text).stem if Path(text).suffix.lower() in (".csv", ".npz") else Path(text).name
    return check_name(runs.slugify(stem)[:64] or "external")


def paths(run_dir: Path, name: str) -> tuple[Path, Path]:
    """Where evaluation ``name`` of a run lives: its JSON and its per-photo CSV."""
    folder = Path(run_dir) / FOLDER
    return folder / f"{check_name(name)}.json", folder / f"{name}.csv"


def measure(labels, probs, grades, statuses, unreadable: int, temperature: float | None = None,
            threshold: float = 0.5, n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> dict:
    """The numbers of one evaluation from the answered photos' true ``labels``, grading
    ``probs`` (N, 5), the ``grades`` the grader gives and every readable photo's status."""
    statuses = list(statuses)
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64).reshape(-1, NUM_CLASSES)
    grades = np.asarray(grades, np.int64)
    refused = sum(s == NOT_GRADED for s in statuses)
    out: dict = {"n": len(statuses) + unreadable, "n_answered": int(len(labels)), "n_refused": refused,
                 "n_unreadable": unreadable, "threshold": threshold}
    if not len(labels):
        return {**out, "verdict": None}
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, grades), 1)
    right = int(np.trace(confusion))
    commonest = int(np.bincount(labels, minlength=NUM_CLASSES).argmax())
    points = {"acc": right / len(labels), "qwk": _qwk(confusion), "auc": metrics.macro_auc(labels, probs),
              "referable_auc": metrics.referable_auc(labels, probs)}
    cis = stats.confidence_intervals(labels, probs, "external_", n_boot, seed, points=points, pred=grades)
    support = confusion.sum(1)
    refer = grades >= REFERABLE_GRADE
    referable = labels >= REFERABLE_GRADE
    out.update({
        **{f"external_{k}": v for k, v in points.items()}, **cis, "external_confusion": confusion.tolist(),
        "external_recall": [float(confusion[g, g] / support[g]) if support[g] else None for g in range(NUM_CLASSES)],
        "external_support": support.tolist(),
        "external_majority_acc": float(np.mean(labels == commonest)), "majority_grade": commonest,
        "referral_sensitivity": float(refer[referable].mean()) if referable.any() else None,
        "referral_specificity": float((~refer[~referable]).mean()) if (~referable).any() else None,
    })
    verdict = trust.assess({**out, "temperature": temperature}, "external")
    out["verdict"] = verdict
    return out


def _qwk(confusion: np.ndarray) -> float | None:
    value = float(stats.qwk_of(confusion[None].astype(np.float64))[0])
    return value if np.isfinite(value) else None


def save(run_dir: Path, name: str, result: dict, answers_csv: bytes) -> tuple[Path, Path]:
    """Write evaluation ``name``: the photos' answers (CSV bytes), then its numbers (JSON)."""
    json_path, csv_path = paths(run_dir, name)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(csv_path, answers_csv)
    runs.write_json(json_path, {**result, "name": name})
    return json_path, csv_path


def read_all(run_dir: Path) -> list[dict]:
    """Every evaluation stored in the run folder, the newest first (files that are not ours skipped)."""
    folder = Path(run_dir) / FOLDER
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        result = runs.read_json(path, None)
        if isinstance(result, dict) and "n" in result and _NAME_RE.match(path.stem):
            found.append({**result, "name": path.stem})
    return sorted(found, key=lambda r: str(r.get("evaluated_at", "")), reverse=True)


def elsewhere(run_dir: Path) -> list[dict]:
    """The run's evaluations on photos other than its own data set's."""
    return [r for r in read_all(run_dir) if not r.get("own_data")]


def measured_where(run_dir: Path, summary: dict) -> str:
    """Where the run was measured, in one sentence, for its verdict line: its own test photos,
    then any evaluation elsewhere ("not measured on other cameras" when there is none)."""
    t = summary.get("trained_on") or {}
    own = f"measured on {summary.get('data_name') or t.get('name') or 'its own data set'}'s test photos"
    found = elsewhere(run_dir)
    if not found:
        return f"{own}; not measured on other cameras (python -m retino_core evaluate RUN --data DATA)"
    return f"{own}, and {'; '.join(sentence(r) for r in found)}"


def sentence(result: dict) -> str:
    """'on 486 photos of clinic-x: no better than guessing (accuracy 45.1 %, 95 % CI …; always
    No DR 46.7 %); 13 not graded, 2 unreadable'."""
    data = result.get("data_name") or result.get("name", "?")
    head = f"on {result.get('n_answered', 0):,} photos of {data}"
    verdict = result.get("verdict")
    if not verdict:
        return f"{head}: not judged (no photo passed the checks)" + _counts(result)
    acc, ci = result.get("external_acc"), result.get("external_acc_ci") or [None, None]
    baseline = result.get("external_majority_acc")
    numbers = (f"accuracy {_pct(acc)} (95 % CI {_pct(ci[0])} to {_pct(ci[1])}) vs {_pct(baseline)} for always "
               f"{GRADE_NAMES[result.get('majority_grade', 0)]}")
    return f"{head}: {trust.label(verdict)} ({numbers})" + _counts(result)


def detail_lines(result: dict) -> list[str]:
    """The numbers behind the sentence, a line each, for a terminal and the model card."""
    if not result.get("verdict"):
        return []
    out = []
    for key, label in (("qwk", "QWK"), ("auc", "macro AUC"), ("referable_auc", "referable-DR AUC")):
        value, ci = result.get(f"external_{key}"), result.get(f"external_{key}_ci")
        out.append(f"{label} {_num(value)}" + (f" (95 % CI {_num(ci[0])} to {_num(ci[1])})" if ci else ""))
    recall = result.get("external_recall") or []
    support = result.get("external_support") or []
    out.append("recall per grade: " + ", ".join(
        f"{GRADE_NAMES[g]} {_pct(r)} of {support[g]}" if r is not None else f"{GRADE_NAMES[g]} – (none)"
        for g, r in enumerate(recall)))
    out.append(f"referral at P(grade ≥ 2) ≥ {result.get('threshold', 0.5):.3f}: sensitivity "
               f"{_pct(result.get('referral_sensitivity'))}, specificity {_pct(result.get('referral_specificity'))}")
    refused = result.get("refused_by_grade")
    if refused and any(refused):
        out.append("not graded, by true grade: " + ", ".join(f"{GRADE_NAMES[g]} {n}" for g, n in enumerate(refused)))
    out += [f"- {r}" for r in result["verdict"].get("reasons", [])]
    return out


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _counts(result: dict) -> str:
    parts = [f"{result[k]:,} {w}" for k, w in (("n_refused", "not graded"), ("n_unreadable", "unreadable"))
             if result.get(k)]
    return ("; " + ", ".join(parts)) if parts else ""


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"
