"""Gradient checks by central differences for every layer and for a small two-layer stack."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import AddLayer, Affine, MulLayer, Relu, Sigmoid, SoftmaxWithLoss, numerical_gradient

BACKENDS = ["numba", "numpy"]


def check(fn, x, analytic, tol=1e-7):
    num = numerical_gradient(fn, x)
    np.testing.assert_allclose(analytic, num, atol=tol, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer_cls", [Relu, Sigmoid])
def test_activation_gradients(backend, layer_cls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the ReLU kink
    w = rng.standard_normal((4, 7))
    with fastlayers.use_backend(backend):
        layer = layer_cls()
        layer.forward(x)
        dx = layer.backward(w)
        check(lambda _: float((layer_cls().forward(x) * w).sum()), x, dx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_gradients(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 5))
    W = rng.standard_normal((10, 4))
    b = rng.standard_normal(4)
    w = rng.standard_normal((3, 4))
    with fastlayers.use_backend(backend):
        layer = Affine(W, b)

        def f(_):
            return float((layer.forward(x) * w).sum())

        f(None)
        dx = layer.backward(w)
        dW, db = layer.dW.copy(), layer.db.copy()
        check(f, x, dx)
        check(f, W, dW)
        check(f, b, db)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", ["labels", "onehot", "probs"])
def test_softmax_with_loss_gradient(backend, target):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6))
    labels = rng.integers(0, 6, 5)
    if target == "labels":
        t = labels
    elif target == "onehot":
        t = np.eye(6)[labels]
    else:
        t = rng.random((5, 6))
        t /= t.sum(axis=1, keepdims=True)
    with fastlayers.use_backend(backend):
        layer = SoftmaxWithLoss()
        layer.forward(x, t)
        check(lambda _: float(SoftmaxWithLoss().forward(x, t)), x, layer.backward(1.0))
        np.testing.assert_allclose(layer.backward(0.5), 0.5 * layer.backward(1.0))


def test_mul_add_gradients():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    w = rng.standard_normal((3, 4))
    mul, add = MulLayer(), AddLayer()

    def f(_):
        return float((add.forward(mul.forward(x, y), y) * w).sum())

    f(None)
    da, db_add = add.backward(w)
    dx, dy = mul.backward(da)
    check(f, x, dx)
    check(f, y, dy + db_add)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [Relu, Sigmoid])
def test_two_layer_stack(backend, activation):
    """Affine -> activation -> Affine -> SoftmaxWithLoss, all parameters checked."""
    rng = np.random.default_rng(4)
    params = {
        "W1": 0.5 * rng.standard_normal((8, 6)),
        "b1": 0.1 * rng.standard_normal(6),
        "W2": 0.5 * rng.standard_normal((6, 3)),
        "b2": 0.1 * rng.standard_normal(3),
    }
    x = rng.standard_normal((5, 8))
    t = rng.integers(0, 3, 5)
    with fastlayers.use_backend(backend):
        layers = [Affine(params["W1"], params["b1"]), activation(), Affine(params["W2"], params["b2"])]
        last = SoftmaxWithLoss()

        def loss(_):
            h = x
            for layer in layers:
                h = layer.forward(h)
            return float(last.forward(h, t))

        loss(None)
        d = last.backward(1)
        for layer in reversed(layers):
            d = layer.backward(d)
        grads = {"W1": layers[0].dW, "b1": layers[0].db, "W2": layers[2].dW, "b2": layers[2].db}
        grads = {k: v.copy() for k, v in grads.items()}
        for name, p in params.items():
            num = numerical_gradient(loss, p)
            diff = np.abs(num - grads[name]).mean()
            assert diff < 1e-8, (name, diff)


def test_numerical_gradient_restores_and_handles_any_shape():
    x = np.arange(24.0).reshape(2, 3, 4)
    before = x.copy()
    g = numerical_gradient(lambda a: float((a**2).sum()), x)
    np.testing.assert_allclose(g, 2 * before, rtol=1e-6)
    np.testing.assert_array_equal(x, before)

    def boom(a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        numerical_gradient(boom, x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(TypeError, match="x must be a float"):
        numerical_gradient(lambda a: 0.0, np.arange(3))
