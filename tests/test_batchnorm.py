"""BatchNormalization: the classic formulas (against the book's step-by-step backward written out
here), both backends, float32 and float64, 2-D and 4-D input, running statistics, gradient checks,
thread-count independence, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F

from .conftest import DTYPES, assert_close

BACKENDS = ["numba", "numpy"]
SHAPES = [(1, 5), (7, 3), (100, 100), (64, 1000), (5, 3, 4, 6)]


def _classic(x, gamma, beta, dout, momentum=0.9):
    """The classic layer's arithmetic, step by step (float64)."""
    n = x.shape[0]
    x = x.reshape(n, -1).astype(np.float64)
    dout = dout.reshape(n, -1).astype(np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + 10e-7)
    xn = xc / std
    out = gamma * xn + beta
    dbeta = dout.sum(axis=0)
    dgamma = np.sum(xn * dout, axis=0)
    dxn = gamma * dout
    dxc = dxn / std
    dstd = -np.sum((dxn * xc) / (std * std), axis=0)
    dvar = 0.5 * dstd / std
    dxc += (2.0 / n) * xc * dvar
    dmu = np.sum(dxc, axis=0)
    dx = dxc - dmu / n
    return out, dx, dgamma, dbeta, (1 - momentum) * mu, (1 - momentum) * var, xn, std


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_equals_the_classic_arithmetic(shape, dtype, backend):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    d = int(np.prod(shape[1:]))
    gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    with fl.use_backend(backend):
        layer = fl.BatchNormalization(gamma, beta)
        out = layer.forward(x)
        dx = layer.backward(dout)
    want = _classic(x, gamma.astype(np.float64), beta.astype(np.float64), dout)
    n = shape[0]
    assert out.shape == x.shape and dx.shape == x.shape and out.dtype == dtype
    got = (out.reshape(n, -1), dx.reshape(n, -1), layer.dgamma, layer.dbeta, layer.running_mean,
           layer.running_var, layer.xn, layer.std)  # fmt: skip
    # the backward subtracts nearly equal terms: relative to the largest gradient, N roundings
    for g, w in zip(got, want, strict=True):
        assert_close(g, w.astype(dtype), "sum", n=4 * n)
    assert layer.input_shape == shape and layer.batch_size == n
    assert_close(layer.xc, (layer.xn * layer.std), "exact")


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_and_test_mode(backend):
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((8, 4)), rng.standard_normal((8, 4)) + 2
    with fl.use_backend(backend):
        layer = fl.BatchNormalization(np.ones(4), np.zeros(4), momentum=0.8)
        assert layer.running_mean is None
        layer.forward(x1)
        first = layer.running_mean
        layer.forward(x2)
        assert layer.running_mean is not first  # new arrays, as the classic update rebinds them
        np.testing.assert_allclose(layer.running_mean, 0.8 * 0.2 * x1.mean(0) + 0.2 * x2.mean(0), rtol=1e-12)
        np.testing.assert_allclose(layer.running_var, 0.8 * 0.2 * x1.var(0) + 0.2 * x2.var(0), rtol=1e-12)
        test_out = layer.forward(x1, train_flg=False)
        xn_after = layer.xn
        assert layer.forward(x1, train_flg=0).shape == x1.shape
    want = (x1 - layer.running_mean) / np.sqrt(layer.running_var + 1e-6)
    np.testing.assert_allclose(test_out, want, rtol=1e-12, atol=1e-12)
    assert xn_after.shape == (8, 4)  # test mode leaves the training state alone


def test_given_running_statistics_and_dtypes():
    x = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    layer = fl.BatchNormalization(np.ones(3, np.float32), np.zeros(3, np.float32), running_mean=np.ones(3),
                                  running_var=np.full(3, 4.0))  # fmt: skip
    out = layer.forward(x, train_flg=False)
    assert out.dtype == np.float32  # computed in NumPy's dtype for x, gamma, beta
    np.testing.assert_allclose(out, (x - 1) / np.sqrt(4 + 1e-6), rtol=1e-6)
    layer.forward(x)
    assert layer.running_mean.dtype == np.float32
    # the book's float64 gamma with float32 images: float64
    assert fl.BatchNormalization(np.ones(3), np.zeros(3)).forward(x).dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_check(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 2, 3))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    w = rng.standard_normal((5, 2, 3))
    with fl.use_backend(backend):
        layer = fl.BatchNormalization(gamma, beta)

        def f(_):
            return float((layer.forward(x) * w).sum())

        f(None)
        dx = layer.backward(w)
        dgamma, dbeta = layer.dgamma.copy(), layer.dbeta.copy()
        for value, grad in ((x, dx), (gamma, dgamma), (beta, dbeta)):
            np.testing.assert_allclose(grad, fl.numerical_gradient(f, value), atol=1e-6, rtol=1e-5)


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 1030)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    g, b = rng.standard_normal(1030).astype(np.float32), rng.standard_normal(1030).astype(np.float32)

    def run():
        layer = fl.BatchNormalization(g, b)
        return layer.forward(x), layer.backward(dout), layer.dgamma, layer.running_var

    many = run()
    fl.set_num_threads(1)
    try:
        one = run()
    finally:
        fl.set_num_threads(fl._kernels._threads.num_threads_limit())
    for a, c in zip(many, one, strict=True):
        np.testing.assert_array_equal(a, c)


def test_functions_equal_the_layer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 7))
    g, b = rng.standard_normal(7), rng.standard_normal(7)
    res = F.batch_norm_train(x, g, b)
    layer = fl.BatchNormalization(g, b)
    np.testing.assert_array_equal(res.out, layer.forward(x))
    dx, dgamma, dbeta = F.batch_norm_backward(np.ones_like(x), res.xn, g, res.std)
    np.testing.assert_array_equal(dx, layer.backward(np.ones_like(x)))
    np.testing.assert_array_equal(F.batch_norm_test(x, g, b, res.running_mean, res.running_var),
                                  layer.forward(x, train_flg=False))  # fmt: skip


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: fl.BatchNormalization(np.ones(5), np.zeros(5)).forward(np.ones((2, 3, 2, 2))), ValueError,
         r"gamma has shape \(5,\) but x of shape \(2, 3, 2, 2\) needs C\*H\*W = 12 values per feature"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(4)).forward(np.ones((2, 3))), ValueError,
         r"beta has shape \(4,\) but x of shape \(2, 3\) needs 3 values"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3), running_mean=np.zeros(4), running_var=np.ones(3))
         .forward(np.ones((2, 3))), ValueError, r"running_mean has shape \(4,\)"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3)).backward(np.ones((2, 3))), ValueError,
         "before a training forward"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ones(3)), ValueError, "at least 2-D"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ones((0, 3))), ValueError, "empty batch"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3), momentum=1.5), ValueError, r"momentum must be"),
        (lambda: fl.BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ones((2, 3), complex)), TypeError,
         "x has dtype complex128"),
    ],
)  # fmt: skip
def test_bad_input(call, exc, match):
    for backend in BACKENDS:
        with fl.use_backend(backend), pytest.raises(exc, match=match):
            call()


def test_backward_checks_what_changed_since_forward():
    layer = fl.BatchNormalization(np.ones(3), np.zeros(3))
    layer.forward(np.random.default_rng(0).standard_normal((4, 3)))
    with pytest.raises(ValueError, match=r"dout has shape \(5, 3\) but the training forward's batch"):
        layer.backward(np.ones((5, 3)))
    layer.gamma = np.ones(4)
    with pytest.raises(ValueError, match=r"gamma has shape \(4,\)"):
        layer.backward(np.ones((4, 3)))
    layer.gamma = np.ones(3)
    layer.std = np.ones(2)
    with pytest.raises(ValueError, match=r"std has shape \(2,\)"):
        layer.backward(np.ones((4, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 100), (100, 100), (128, 300)])
def test_common_path_equals_the_general_one(shape, dtype):
    """The layer's common call (plain (N, D) arrays of one dtype) gives what the general path gives
    for the same operands (a (1, D) gamma and a 4-D input take the general path), and never writes
    into a result the caller holds."""
    rng = np.random.default_rng(11)
    d = shape[1]
    x, dout = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    gamma, beta = (1 + 0.1 * rng.standard_normal(d)).astype(dtype), (0.1 * rng.standard_normal(d)).astype(dtype)
    fast, general = fl.BatchNormalization(gamma, beta), fl.BatchNormalization(gamma.reshape(1, d), beta)
    for step in range(3):
        a, b = fast.forward(x + step), general.forward(x + step)
        np.testing.assert_array_equal(a, b)
        held = a.copy()
        da, db = fast.backward(dout), general.backward(dout)
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(fast.dgamma, general.dgamma)
        np.testing.assert_array_equal(fast.running_var, general.running_var)
        fast.forward(2 * x, train_flg=True)
        general.forward(2 * x, train_flg=True)
        np.testing.assert_array_equal(a, held)
        np.testing.assert_array_equal(fast.forward(x, False), general.forward(x, False))
    assert fast.running_mean.dtype == dtype and fast.input_shape == shape
    fast.gamma = np.ones(d + 1, dtype)  # replaced with the wrong size: the general path reports it
    with pytest.raises(ValueError, match="gamma"):
        fast.forward(x)
