"""The list of runs as a tracker shows it, and search over it: one code path for the Train
page's table and ``python -m retino_core runs``.

Search is by free text, tag, configuration, state, verdict and any setting or summary number:
``image_size=64``, ``lr<0.01``, ``augment!=strong``, ``test_acc>=0.5``. No torch.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field, fields

from .. import runs
from ..config import TrainConfig
from ..judging import trust
from . import display

OPERATORS = {"<=": operator.le, ">=": operator.ge, "!=": operator.ne, "=": operator.eq, "<": operator.lt,
             ">": operator.gt}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
SETTINGS = tuple(f.name for f in fields(TrainConfig))
VERDICTS = (*trust.VERDICTS, "not judged")


class SearchError(ValueError):
    """A search term that cannot be understood (it names the valid forms or choices)."""


@dataclass(frozen=True)
class Condition:
    """``key op value`` over a run's setting (config.json) or summary number (summary.json)."""

    key: str
    op: str
    value: str

    def holds(self, run: runs.RunInfo) -> bool:
        found = run.config[self.key] if self.key in run.config else run.summary.get(self.key)
        if self.op in ("=", "!="):
            return _same(found, self.value) == (self.op == "=")
        a, b = _number(found), _number(self.value)
        return a is not None and b is not None and OPERATORS[self.op](a, b)


def parse_condition(text: str, summary_keys: set[str] = frozenset()) -> Condition:
    """``image_size=64`` -> Condition; a key that is neither a setting nor a summary number is refused."""
    m = _CONDITION.match(str(text))
    if not m:
        raise SearchError(f"cannot read {text!r} as a condition: write KEY=VALUE, KEY!=VALUE, KEY<VALUE, "
                          "KEY<=VALUE, KEY>VALUE or KEY>=VALUE, e.g. image_size=64")
    key, op, value = m.group(1), "=" if m.group(2) == "==" else m.group(2), m.group(3)
    if key not in SETTINGS and key not in summary_keys:
        raise SearchError(f"unknown setting {key!r} in {text!r}; choose a setting ({', '.join(SETTINGS)}) "
                          "or a number of summary.json such as test_acc")
    if op not in ("=", "!=") and _number(value) is None:
        raise SearchError(f"{text!r} compares with {op}, which needs a number, not {value!r}")
    return Condition(key, op, value)


def _number(x) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null", "")


def _same(found, wanted: str) -> bool:
    """A stored value against the text a user typed: 64 = "64", 0.001 = "1e-3", True = "true"."""
    text = wanted.strip().lower()
    if found is None:
        return text in _NONE
    if isinstance(found, bool):
        return text in (_TRUE if found else _FALSE)
    if _number(found) is not None and _number(text) is not None:
        return math.isclose(float(found), float(text), rel_tol=1e-9)
    return str(found).strip().lower().rstrip("/") == text.rstrip("/")


@dataclass(frozen=True)
class Query:
    """What to keep: every part given must hold (tags: each one; the lists: any of their items)."""

    text: str = ""
    tags: tuple[str, ...] = ()
    configurations: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    where: tuple[Condition, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not (self.text.strip() or self.tags or self.configurations or self.states or self.verdicts
                    or self.where)


def make_query(all_runs: list[runs.RunInfo], text: str = "", tags=(), configurations=(), states=(), verdicts=(),
               where=()) -> Query:
    """A Query from what a user typed; bad states, verdicts or conditions raise SearchError."""
    bad = [s for s in states if s not in runs.STATES]
    if bad:
        raise SearchError(f"unknown state {bad[0]!r}; choose one of: {', '.join(runs.STATES)}")
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise SearchError(f"unknown verdict {bad[0]!r}; choose one of: {', '.join(VERDICTS)}")
    summary_keys = {k for r in all_runs for k, v in r.summary.items() if _number(v) is not None}
    return Query(text=text or "", tags=tuple(runs.parse_tags(",".join(tags))), configurations=tuple(configurations),
                 states=tuple(states), verdicts=tuple(verdicts),
                 where=tuple(parse_condition(w, summary_keys) for w in where if str(w).strip()))


def verdict_of(run: runs.RunInfo) -> str:
    return trust.label(trust.of_summary(run.summary) if run.summary else None)


def _words(run: runs.RunInfo) -> str:
    """Everything free-text search looks through."""
    return " ".join([run.run_id, str(run.config.get("name") or ""), run.configuration, display.state_text(run),
                     run.state, verdict_of(run), " ".join(run.tags), run.notes, str(run.config.get("data") or ""),
                     str(run.config.get("preset") or ""), str(run.status.get("error") or "")]).lower()


def matches(run: runs.RunInfo, query: Query) -> bool:
    if query.states and run.state not in query.states:
        return False
    if query.configurations and run.configuration not in query.configurations:
        return False
    if query.tags and not set(query.tags) <= set(run.tags):
        return False
    if query.verdicts and verdict_of(run) not in query.verdicts:
        return False
    if any(not c.holds(run) for c in query.where):
        return False
    words = _words(run) if query.text.strip() else ""
    return all(term in words for term in query.text.lower().split())


def search(all_runs: list[runs.RunInfo], query: Query) -> list[runs.RunInfo]:
    """The runs that match ``query``, in the order given."""
    return [r for r in all_runs if matches(r, query)]


def accuracy_text(run: runs.RunInfo) -> str:
    """The validation-selected checkpoint's test accuracy with its 95 % interval, or ""."""
    acc = run.summary.get("test_acc")
    if acc is None:
        return ""
    ci = run.summary.get("test_acc_ci")
    if not ci:  # a run from before stored intervals: the verdict's (Wilson) interval
        ci = ((trust.of_summary(run.summary) or {}).get("checks") or {}).get("acc_ci")
    return display.percent(acc) + (f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else "")


def table_rows(all_runs: list[runs.RunInfo], queue: list[runs.RunInfo] | None = None) -> list[dict]:
    """One row per run: name, configuration, epochs, image size, preset, state (in words),
    progress (0-1), verdict, test accuracy with its interval, tags, and what it is doing now.
    No cell is None: a missing number is "" (text) or 0 (progress)."""
    place = {r.run_id: i + 1 for i, r in enumerate(queue or [])}
    rows = []
    for run in all_runs:
        progress = display.run_progress(run)
        doing = progress.text if run.state in runs.ACTIVE_STATES else str(run.status.get("error") or "")
        rows.append({"name": run.run_id, "configuration": run.configuration,
                     "epochs": f"{progress.epochs_done if run.state != 'done' else progress.epochs}/{progress.epochs}",
                     "image size": int(run.config.get("image_size") or 0), "preset": str(run.config.get("preset") or ""),
                     "state": display.state_text(run, place.get(run.run_id)), "progress": float(progress.fraction),
                     "verdict": verdict_of(run) if run.summary else "",
                     "test accuracy": accuracy_text(run), "tags": ", ".join(run.tags),
                     "data": display.data_label(run.config.get("data") or ""), "where": display.slot_text(run),
                     "status": doing})
    return rows
