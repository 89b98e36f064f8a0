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


OPTIMIZERS = [fl.SGD, fl.Momentum, fl.Nesterov, fl.AdaGrad, fl.RMSprop, fl.Adam]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda c: c.__name__)
def test_float32_gradients_update_float64_parameters_as_their_float64_copies(optimizer, backend):
    """The policy's float32 gradients of float64 parameters: the kernels read them as they are (no
    float64 copy; below) and the parameters follow an update from ``g.astype(float64)``, over three
    steps, for contiguous gradients, strided views and a gradient in another byte order (to the
    last bits but for a multiply-add the compiler may contract in one signature and not the other)."""
    rng = np.random.default_rng(1)
    shapes = {"W": (301, 7), "b": (7,), "big": (300_007,)}
    start = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    grads[1]["W"] = np.asfortranarray(grads[1]["W"])
    grads[2]["b"] = grads[2]["b"].astype(">f4")
    mixed, wide = ({k: v.copy() for k, v in start.items()} for _ in range(2))
    opt_mixed, opt_wide = optimizer(), optimizer()
    with fl.use_backend(backend):
        for g in grads:
            opt_mixed.update(mixed, g)
            opt_wide.update(wide, {k: v.astype(np.float64) for k, v in g.items()})
    for key in shapes:
        assert mixed[key].dtype == np.float64
        np.testing.assert_allclose(mixed[key], wide[key], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda c: c.__name__)
def test_float32_gradients_of_float64_parameters_are_not_copied(optimizer):
    """An update of a float64 parameter from a float32 gradient allocates no float64 copy of the
    gradient (``tracemalloc`` sees NumPy's allocations; the state was made by a first update)."""
    import tracemalloc

    p, g = np.zeros(300_007), np.ones(300_007, np.float32)
    opt = optimizer()
    opt.update({"p": p}, {"p": g})
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        opt.update({"p": p}, {"p": g})
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < g.nbytes // 4, peak  # a float64 copy would be 2 * g.nbytes


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
