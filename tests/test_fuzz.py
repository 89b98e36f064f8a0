"""Runs the fuzzers (tests/_fuzz_public_api.py, tests/_fuzz_stateful.py) in subprocesses, so a crash fails the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two fuzzers in subprocesses: about 40 s

ROOT = Path(__file__).resolve().parents[1]


def test_fuzz_public_api_in_subprocess():
    env = dict(os.environ, FUZZ_EXAMPLES=os.environ.get("FUZZ_EXAMPLES", "300"))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "tests/_fuzz_public_api.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
    assert "4 passed" in res.stdout


def test_stateful_fuzz_in_subprocess():
    """Layers driven through random call sequences and attribute changes on both backends
    (tests/_fuzz_stateful.py); a crash of the child (negative exit code) fails here."""
    env = dict(os.environ, STATEFUL_EXAMPLES=os.environ.get("STATEFUL_EXAMPLES", "300"))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "tests/_fuzz_stateful.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-8000:]}\n{res.stderr[-3000:]}"
    assert "1 passed" in res.stdout
