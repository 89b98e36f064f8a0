"""Backend switching: use_backend as call and context manager, get_backend, FASTLAYERS_BACKEND."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

import fastlayers


def test_use_backend_call_and_context():
    assert fastlayers.get_backend() == "numba"
    with fastlayers.use_backend("numpy"):
        assert fastlayers.get_backend() == "numpy"
        with fastlayers.use_backend("numba"):
            assert fastlayers.get_backend() == "numba"
        assert fastlayers.get_backend() == "numpy"
    assert fastlayers.get_backend() == "numba"
    fastlayers.use_backend("NumPy")
    try:
        assert fastlayers.get_backend() == "numpy"
    finally:
        fastlayers.use_backend("numba")


def test_numpy_backend_runs_reference(monkeypatch):
    calls = []
    original = fastlayers.reference.relu_forward
    monkeypatch.setattr(fastlayers.reference, "relu_forward", lambda x: calls.append(1) or original(x))
    with fastlayers.use_backend("numpy"):
        fastlayers.relu(np.ones(3))
    fastlayers.relu(np.ones(3))
    assert calls == [1]


def _run(env_value):
    env = dict(os.environ, FASTLAYERS_BACKEND=env_value)
    code = "import fastlayers; print(fastlayers.get_backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable():
    assert _run("numpy").stdout.strip() == "numpy"
    bad = _run("cuda")
    assert bad.returncode != 0 and "FASTLAYERS_BACKEND must be one of" in bad.stderr
