"""One report of every problem in a dataset: grouped by kind, counted, the first few examples
of each; as text (CLI, errors), markdown (pages) or a dict (``--json``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

SHOW_FIRST = 5


def first(items: Sequence[object], n: int = SHOW_FIRST) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


@dataclass
class Problem:
    """One kind of problem in one place: a one-line message, how many, the first examples."""

    kind: str
    where: str
    message: str
    count: int = 1
    examples: list[str] = field(default_factory=list)
    severity: str = "error"  # "error" (the dataset cannot be used) | "warning"


@dataclass
class Report:
    """Every problem found in a dataset, plus what was learnt about it (patients, duplicates)."""

    source: str = ""
    problems: list[Problem] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add(self, kind: str, where: str, message: str, examples: Sequence[object] = (),
            severity: str = "error", count: int | None = None) -> None:
        self.problems.append(Problem(kind, where, message, count if count is not None else max(1, len(examples)),
                                     [str(e) for e in examples[:SHOW_FIRST]], severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def groups(self) -> list[tuple[str, str, list[Problem]]]:
        """(severity, kind, problems) with errors first, kinds in the order they were found."""
        grouped: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in sorted(self.problems, key=lambda p: p.severity != "error"):
            grouped[(p.severity, p.kind)].append(p)
        return [(sev, kind, probs) for (sev, kind), probs in grouped.items()]

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        return f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"

    def lines(self) -> list[str]:
        out = []
        for sev, kind, probs in self.groups():
            out.append(f"{sev}: {kind} ({sum(p.count for p in probs):,}):")
            out.extend(f"  - {p.message}" for p in probs)
        return out

    def text(self) -> str:
        return "\n".join([f"{self.source}: {self.summary()}" if self.source else self.summary(), *self.lines()])

    def markdown(self) -> str:
        out = [f"**{self.summary()}**"]
        for sev, kind, probs in self.groups():
            out.append(f"- **{sev}: {kind}** ({sum(p.count for p in probs):,})")
            out.extend(f"    - {p.message}" for p in probs)
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"source": self.source, "ok": not self.errors, "errors": len(self.errors),
                "warnings": len(self.warnings), **self.info,
                "problems": [asdict(p) for p in self.problems]}
