"""Runs the fuzzers (tests/_fuzz_public_api.py, tests/_fuzz_stateful.py) in subprocesses, so a crash fails the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two fuzzers in subprocesses: about 40 s

ROOT = Path(__file__).resolve().parents[1]


def _run_fuzzer(module: str, examples_variable: str, passed: str) -> None:
    """Run ``tests/<module>`` under pytest in a child process (a crash is a failure here, not a dead
    test run), with ``examples_variable`` (default 300 examples) passed on."""
    env = dict(os.environ, **{examples_variable: os.environ.get(examples_variable, "300")})
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", f"tests/{module}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-8000:]}\n{res.stderr[-3000:]}"
    assert passed in res.stdout


def test_fuzz_public_api_in_subprocess():
    """Every public function and layer on random inputs: equal to the reference or the same error."""
    _run_fuzzer("_fuzz_public_api.py", "FUZZ_EXAMPLES", "4 passed")


def test_stateful_fuzz_in_subprocess():
    """Layers driven through random call sequences and attribute changes on both backends
    (tests/_fuzz_stateful.py); a crash of the child (negative exit code) fails here."""
    _run_fuzzer("_fuzz_stateful.py", "STATEFUL_EXAMPLES", "1 passed")
