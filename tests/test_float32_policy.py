"""The opt-in float32 compute policy: float64 operands computed and returned in float32, on purpose
unlike NumPy's rule; parameters keep their dtype."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F
from fastlayers.nets import TwoLayerNet
from fastlayers.optim import SGD, Adam

rng = np.random.default_rng(0)
X = rng.standard_normal((37, 11))
DOUT = rng.standard_normal((37, 11))
W, B = rng.standard_normal((11, 5)), rng.standard_normal(5)
T = rng.integers(0, 11, 37)

CALLS = {
    "relu_forward": lambda x: F.relu_forward(x),
    "relu_backward": lambda x: F.relu_backward(DOUT if x.dtype == np.float64 else DOUT.astype(x.dtype), x),
    "sigmoid_forward": lambda x: F.sigmoid_forward(x),
    "sigmoid_backward": lambda x: F.sigmoid_backward(x, F.sigmoid_forward(x)),
    "affine_forward": lambda x: F.affine_forward(x, W.astype(x.dtype), B.astype(x.dtype)),
    "affine_backward": lambda x: F.affine_backward(x[:, :5], x, W.astype(x.dtype)),
    "softmax": lambda x: F.softmax(x),
    "loss": lambda x: F.softmax_cross_entropy_forward(x, T),
    "loss_backward": lambda x: F.softmax_cross_entropy_backward(F.softmax(x), T),
    "cross_entropy_error": lambda x: F.cross_entropy_error(F.softmax(x), T),
}


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_float64_is_computed_as_float32(name, backend):
    """Under the policy a float64 call gives exactly what the same call on float32 copies gives."""
    call = CALLS[name]
    with fl.use_backend(backend):
        want = _flat(call(X.astype(np.float32)))
        with fl.float32_compute():
            got = _flat(call(X))
        outside = _flat(call(X))
    for g, w, o in zip(got, want, outside, strict=True):
        assert np.asarray(g).dtype == np.float32
        np.testing.assert_array_equal(g, w)
        assert np.asarray(o).dtype == np.float64  # the policy ended with the block


def test_layers_and_nets_under_the_policy_keep_parameters_float64():
    net = TwoLayerNet(11, 7, 11, dtype=np.float64, seed=0)
    opt = SGD(0.1)
    with fl.float32_compute():
        grads = net.gradient(X, T)
        assert all(g.dtype == np.float32 for g in grads.values())
        assert net.predict(X).dtype == np.float32
        opt.update(net.params, grads)
        Adam().update(net.params, grads)
    assert all(p.dtype == np.float64 for p in net.params.values())
    assert np.isfinite(net.loss(X, T))


def test_policy_is_per_thread_and_restored():
    seen = {}

    def other():
        seen["other"] = fl.Relu().forward(X).dtype

    with fl.float32_compute():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        inner = fl.Relu().forward(X).dtype
        with fl.float32_compute(False):
            off = fl.Relu().forward(X).dtype
    assert (inner, off, seen["other"]) == (np.float32, np.float64, np.float64)
    fl.set_float32_compute(True)
    try:
        assert fl.sigmoid(X).dtype == np.float32
    finally:
        fl.set_float32_compute(False)
    assert fl.sigmoid(X).dtype == np.float64


def test_policy_from_environment():
    code = "import numpy as np, fastlayers as fl; print(fl.Relu().forward(np.ones(3)).dtype)"
    res = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, FASTLAYERS_FLOAT32="1"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.stdout.strip() == "float32", res.stderr
    bad = subprocess.run(
        [sys.executable, "-c", "import fastlayers"], env=dict(os.environ, FASTLAYERS_FLOAT32="yes please"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "FASTLAYERS_FLOAT32 must be 0 or 1" in bad.stderr
