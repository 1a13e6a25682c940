"""The hash cache of ``validate --deep`` grows as it goes: an interrupted check resumes where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retino_core.cli import main
from retino_core.cli.common import EXIT_INTERRUPTED
from retino_core.data import duplicates
from test_integrity import validate_json, write_lab

ROOT = Path(__file__).resolve().parents[2]


FINGERPRINT = duplicates.fingerprint


@pytest.fixture
def lab(tmp_path):
    """15 distinct photos in the lab layout."""
    return write_lab(tmp_path / "lab", [f"{i}_left" for i in range(10)], [f"{100 + i}_left" for i in range(5)])


def counting(monkeypatch, stop_after: int | None = None) -> list[str]:
    """Record every file fingerprinted; with ``stop_after``, press Ctrl-C at the next one."""
    calls: list[str] = []
    real = FINGERPRINT

    def fp(path):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path)

    monkeypatch.setattr(duplicates, "fingerprint", fp)
    return calls


def test_ctrl_c_keeps_what_was_hashed_and_the_rerun_hashes_only_the_rest(lab, monkeypatch, capsys):
    monkeypatch.setattr(duplicates, "CACHE_CHUNK", 4)
    done = counting(monkeypatch, stop_after=9)
    assert main(["validate", str(lab), "--deep", "--quiet"]) == EXIT_INTERRUPTED
    assert "interrupted: the hashes made so far are kept" in capsys.readouterr().err
    assert len(duplicates.read_cache(lab / duplicates.CACHE_NAME)) == 9  # the part chunk too
    rest = counting(monkeypatch)
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    assert code == 0 and report["images"]["from_cache"] == 9
    assert sorted(rest) == sorted(set(map(str, (lab / "data").iterdir())) - set(done))
    assert len(duplicates.read_cache(lab / duplicates.CACHE_NAME)) == 15


KILLED = """
import os, sys
from retino_core.cli import main
from retino_core.data import duplicates
duplicates.CACHE_CHUNK = 4
real, seen = duplicates.fingerprint, []
def fp(path):
    if len(seen) == 10:
        os._exit(9)  # killed: no finally, no atexit
    seen.append(path)
    return real(path)
duplicates.fingerprint = fp
main(["validate", sys.argv[1], "--deep", "--quiet"])
"""


def test_a_killed_check_keeps_every_whole_chunk(lab, monkeypatch, capsys):
    """A real process dies after 10 files: the two whole chunks of 4 are on disk, the rest is hashed again."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(lab)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 9, proc.stderr.decode()
    cache = lab / duplicates.CACHE_NAME
    assert len(duplicates.read_cache(cache)) == 8
    # A chunk cut short by a crash is skipped, and the next chunk still starts on a line of its own.
    cache.write_bytes(cache.read_bytes() + b'{"half a chunk": [1, ')
    calls = counting(monkeypatch)
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    assert code == 0 and len(calls) == 7 and report["images"]["from_cache"] == 8
    calls.clear()
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    assert calls == [] and report["images"]["from_cache"] == 15


def test_a_cache_of_another_version_is_rehashed_not_misread(lab, monkeypatch, capsys):
    """The version-1 cache (one JSON object of difference hashes) matches size and mtime but is
    not read: every file is hashed again and the file rewritten in the new format."""
    files = sorted((lab / "data").iterdir())
    old = {str(p): [p.stat().st_size, p.stat().st_mtime_ns, "0" * 32, "0" * 64, ""] for p in files}
    cache = lab / duplicates.CACHE_NAME
    cache.write_text(json.dumps({"version": 1, "entries": old}, indent=2))  # every file a copy of every other
    calls = counting(monkeypatch)
    code, report = validate_json(str(lab), "--deep", capsys=capsys)
    assert code == 0 and len(calls) == 15 and report["images"]["from_cache"] == 0
    assert json.loads(cache.read_text().splitlines()[0])["version"] == duplicates.CACHE_VERSION
    assert all(e[2] != "0" * 32 for e in duplicates.read_cache(cache).values())


def test_the_cache_is_compacted_when_mostly_overwritten(lab, monkeypatch, capsys):
    monkeypatch.setattr(duplicates, "CACHE_CHUNK", 2)
    validate_json(str(lab), "--deep", capsys=capsys)
    cache = lab / duplicates.CACHE_NAME
    for round_ in range(3):  # every file touched: all hashed again, appended as new chunks
        for p in (lab / "data").iterdir():
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
        validate_json(str(lab), "--deep", capsys=capsys)
    held = sum(len(json.loads(line)) for line in cache.read_text().splitlines()[1:])
    assert held <= 2 * 15 + 2 and len(duplicates.read_cache(cache)) == 15
