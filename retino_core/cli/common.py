"""What every command shares: exit codes and the verdict line printed after a run."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import runs

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def print_verdict(run_dir: Path) -> None:
    """How far the run can be trusted, on stderr after the run folder (stdout's last line)."""
    from ..judging import trust

    verdict = trust.of_summary(runs.read_json(Path(run_dir) / "summary.json", {}))
    print("\n".join(trust.lines(verdict)), file=sys.stderr, flush=True)


def fmt(x, digits=4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and x is not None else "-"
