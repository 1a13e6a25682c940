"""The app as a user starts it: ``streamlit run streamlit_app.py`` on a free localhost port,
with the project's .streamlit/config.toml (no file watcher) as ``make run`` has it.

Shared by the browser test and the benchmarks that drive a real server (bench/pages_bench.py,
bench/soak.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(runs_dir: Path, log, timeout: float = 120.0, extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start the app over ``runs_dir`` (output to the open file ``log``); wait until it answers.

    Returns (process, url). Raises RuntimeError, with the process group killed, if it never does.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         *(extra or [])],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RETINO_RUNS_DIR": str(runs_dir)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_app(proc)
    raise RuntimeError(f"streamlit did not start within {timeout:.0f} s (exit code {proc.poll()})")


def stop_app(proc: subprocess.Popen) -> None:
    """SIGTERM the app's process group, SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
