"""The run that answers for each configuration: its champion.

A configuration (architecture x pretraining) trained on one data set usually has several runs:
smoke runs, seeds, recipes tried and abandoned. Every door that shows "the" configuration
(Overview, Classify's defaults, Compare, Evaluation, the zipped report, the ``champions``
command) asks ``champions`` and shows the same run, with why. In order of preference:

1. the run the user pinned (``pin``; at most one per configuration and data set);
2. else the best finished *usable* run by the validation-selected metric (ties go to the newer);
3. else the best finished run, shown with its verdict.

Never a cancelled, failed, interrupted, queued or running run, and never simply the newest.
"Validation-selected metric" is the ``select_metric`` the candidates chose their checkpoint by
(validation loss, accuracy, QWK or macro AUC); when they chose by different ones they are ranked
by validation QWK. A run without validation numbers ranks last.

API::

    champions(all_runs, data, choices=None) -> {configuration: Champion}
    Champion(run, reason, pinned, kind, metric, value, finished, usable)
    champion_of(run, all_runs) -> Champion | None    # of the run's own configuration and data
    finished_runs(all_runs, data, configuration) -> [RunInfo]   # the candidates, newest first
    standing(all_runs, data) -> {configuration: Standing}   # the champion and what else is going on
    pins(runs_dir) / pin(run_id, runs_dir) / unpin(run_id, runs_dir)

The pins live in the runs folder (runs.PINS_FILE). No torch, no streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import runs
from . import trust

PINNED, BEST_USABLE, BEST_FINISHED, ONLY_FINISHED, CHOSEN = (
    "pinned", "best usable", "best finished", "only finished", "chosen")


# select_metric -> (summary key, higher is better, words)
RANK_METRICS = {"loss": ("val_loss", False, "loss"), "acc": ("val_acc", True, "accuracy"),
                "qwk": ("val_qwk", True, "QWK"), "auc": ("val_auc", True, "macro AUC")}


FALLBACK_METRIC = "qwk"  # when the candidates were selected on different metrics


class ChampionError(runs.RunError):
    """A run that cannot be pinned (unknown, or not finished)."""


@dataclass(frozen=True)
class Champion:
    """The run that stands for a configuration on a data set, and why."""

    run: runs.RunInfo
    reason: str  # in words: 'pinned', 'best by validation loss (0.912) of 3 usable runs', 'only finished run'
    pinned: bool = False
    kind: str = ONLY_FINISHED  # PINNED, BEST_USABLE, BEST_FINISHED, ONLY_FINISHED or CHOSEN
    metric: str | None = None  # the summary key ranked on, e.g. 'val_loss'
    value: float | None = None
    finished: int = 1  # finished runs of the configuration on this data set
    usable: int = 0  # of which usable

    @property
    def configuration(self) -> str:
        return self.run.configuration

    @property
    def verdict(self) -> dict | None:
        return trust.of_summary(self.run.summary)

    def to_dict(self) -> dict:
        """For ``champions --json`` and other tools."""
        return {"configuration": self.configuration, "data": data_of(self.run), "run_id": self.run.run_id,
                "reason": self.reason, "kind": self.kind, "pinned": self.pinned, "metric": self.metric,
                "value": self.value, "finished_runs": self.finished, "usable_runs": self.usable,
                "verdict": trust.label(self.verdict)}


def data_of(run: runs.RunInfo) -> str:
    """The data set a run trained on, as its config names it (no trailing slash)."""
    return str(run.config.get("data") or "retinamnist").strip().rstrip("/")


def same_data(run: runs.RunInfo, data: str | None) -> bool:
    """Whether ``run`` trained on ``data`` (None matches every run)."""
    return data is None or data_of(run) == str(data).strip().rstrip("/")


def is_finished(run: runs.RunInfo) -> bool:
    """Done, with test results: the only runs that can stand for a configuration."""
    return run.state == "done" and bool(run.summary)


def pins(runs_dir: Path | None = None) -> list[str]:
    """The ids of the pinned runs."""
    return runs.read_pins(runs_dir)


def pin(run_id: str, runs_dir: Path | None = None) -> list[str]:
    """Pin a finished run to stand for its configuration on its data set; returns the ids of the
    runs it replaces (the configuration's earlier pin)."""
    run = runs.load_run(runs.resolve_run_dir(run_id, runs_dir))
    if not is_finished(run):
        raise ChampionError(f"run {run.run_id} is {run.state}: only a finished run with test results can stand "
                            "for its configuration")
    base = run.path.parent
    others = {r.run_id for r in runs.list_runs(base)
              if r.run_id != run.run_id and r.configuration == run.configuration and same_data(r, data_of(run))}
    replaced: list[str] = []

    def change(pinned: list[str]) -> list[str]:
        replaced.extend(i for i in pinned if i in others)
        return [i for i in pinned if i not in others] + [run.run_id]

    runs.update_pins(change, base)
    return replaced


def unpin(run_id: str, runs_dir: Path | None = None) -> bool:
    """Unpin a run (its configuration's champion is chosen by the rules again); False when it was
    not pinned. A deleted run's id can be unpinned too."""
    try:
        path = runs.resolve_run_dir(run_id, runs_dir)
        run_id, base = path.name, path.parent
    except runs.RunError:
        run_id, base = runs.check_run_id(str(run_id)), Path(runs_dir or runs.default_runs_dir())
    was = run_id in runs.read_pins(base)
    if was:
        runs.update_pins(lambda pinned: [i for i in pinned if i != run_id], base)
    return was


def _ranking(candidates: list[runs.RunInfo]) -> tuple[str, bool, str]:
    """The summary key to rank ``candidates`` by, whether higher is better, and its words."""
    chosen = {str(r.config.get("select_metric") or "loss") for r in candidates}
    metric = chosen.pop() if len(chosen) == 1 and next(iter(chosen)) in RANK_METRICS else FALLBACK_METRIC
    return RANK_METRICS[metric]


def _value(run: runs.RunInfo, key: str) -> float | None:
    value = run.summary.get(key)
    return float(value) if isinstance(value, (int, float)) and value == value else None


def _best(candidates: list[runs.RunInfo]) -> tuple[runs.RunInfo, str, float | None, str]:
    """The best of ``candidates`` by their validation-selected metric, ties to the newer; with the
    key, its value and the metric's words."""
    key, higher, words = _ranking(candidates)

    def rank(r: runs.RunInfo) -> tuple:
        value = _value(r, key)
        return (value is not None, (value if higher else -value) if value is not None else 0.0, r.created, r.run_id)

    best = max(candidates, key=rank)
    return best, key, _value(best, key), words


def _elect(finished: list[runs.RunInfo], pinned: set[str], chosen: str | None) -> Champion:
    """One configuration's champion among its finished runs (newest first)."""
    usable = [r for r in finished if trust.is_usable_verdict(trust.of_summary(r.summary))]
    counts = {"finished": len(finished), "usable": len(usable)}
    by_id = {r.run_id: r for r in finished}
    if chosen in by_id:
        return Champion(by_id[chosen], "chosen for this session", chosen in pinned, CHOSEN, **counts)
    for run in finished:  # newest first: a hand-edited file with two pins of one configuration
        if run.run_id in pinned:
            return Champion(run, "pinned", True, PINNED, **counts)
    if len(finished) == 1:
        return Champion(finished[0], "only finished run", False, ONLY_FINISHED, **counts)
    run, key, value, words = _best(usable or finished)
    shown = f"validation {words} ({value:.3f})" if value is not None else f"validation {words} (none recorded: newest)"
    if len(usable) == 1:
        reason = f"the only usable run of {len(finished)} finished"
    elif usable:
        reason = f"best by {shown} of {len(usable)} usable runs"
    else:
        reason = f"no usable run: best by {shown} of {len(finished)} finished"
    return Champion(run, reason, False, BEST_USABLE if usable else BEST_FINISHED, key, value, **counts)


def finished_runs(all_runs: list[runs.RunInfo], data: str | None, configuration: str) -> list[runs.RunInfo]:
    """The finished runs of ``configuration`` on ``data``, newest first: the candidates."""
    found = [r for r in all_runs if is_finished(r) and same_data(r, data) and r.configuration == configuration]
    return sorted(found, key=lambda r: (r.created, r.run_id), reverse=True)


def champions(all_runs: list[runs.RunInfo], data: str | None,
              choices: dict[str, str] | None = None) -> dict[str, Champion]:
    """The champion of each configuration that has a finished run on ``data`` (None: every data
    set together). ``choices`` ({configuration: run id}) override the rules for one session, as
    Compare's picker does; a choice that is not a finished run of that configuration is ignored."""
    pinned = set()
    for base in {r.path.parent for r in all_runs}:
        pinned.update(runs.read_pins(base))
    groups: dict[str, list[runs.RunInfo]] = {}
    for run in sorted(all_runs, key=lambda r: (r.created, r.run_id), reverse=True):
        if is_finished(run) and same_data(run, data):
            groups.setdefault(run.configuration, []).append(run)
    return {name: _elect(group, pinned, (choices or {}).get(name)) for name, group in groups.items()}


def champion_of(run: runs.RunInfo, all_runs: list[runs.RunInfo]) -> Champion | None:
    """The champion of ``run``'s configuration on the data set ``run`` trained on."""
    return champions(all_runs, data_of(run)).get(run.configuration)


@dataclass
class Standing:
    """Where a configuration stands on a data set: its champion and what its other runs do."""

    configuration: str
    champion: Champion | None = None
    running: list[runs.RunInfo] = field(default_factory=list)  # newest first
    queued: list[runs.RunInfo] = field(default_factory=list)
    failed: runs.RunInfo | None = None  # the newest run, when it failed or was interrupted

    def activity(self) -> str:
        """What the configuration is doing, in words ('' when nothing but its champion)."""
        parts = []
        if self.running:
            parts.append(f"{len(self.running)} run{'s' * (len(self.running) > 1)} training")
        if self.queued:
            parts.append(f"{len(self.queued)} run{'s' * (len(self.queued) > 1)} waiting in the queue")
        if self.failed is not None:
            error = str(self.failed.status.get("error") or "").strip().splitlines()
            first = error[0] if len(error[0] if error else "") <= 120 else error[0][:119] + "…"
            parts.append(f"its newest run {self.failed.state}" + (f": {first}" if error else ""))
        return "; ".join(parts)


def standing(all_runs: list[runs.RunInfo], data: str | None) -> dict[str, Standing]:
    """Each configuration with any run on ``data``: its champion, its running and queued runs,
    and its newest run when that one failed or was interrupted. A cancelled run says nothing."""
    chosen = champions(all_runs, data)
    out: dict[str, Standing] = {}
    for run in sorted(all_runs, key=lambda r: (r.created, r.run_id), reverse=True):
        if not same_data(run, data):
            continue
        first = run.configuration not in out
        now = out.setdefault(run.configuration, Standing(run.configuration, chosen.get(run.configuration)))
        if run.state == "running":
            now.running.append(run)
        elif run.state == "queued":
            now.queued.append(run)
        elif first and run.state in ("failed", "interrupted"):
            now.failed = run
    return out
