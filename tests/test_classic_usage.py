"""The library used the way the book's chapter 5 and 6 scripts use it, on every commit.

Those scripts (run for real by ``test_book.py`` when a checkout of the book is at hand) load
float32 images scaled from uint8, make float64 weights with ``np.random.randn``, use float64 one-hot
rows or uint8 labels, build their networks from the four layer classes in an ordered dict, update
``params`` in place with ``-=`` or an optimizer, and check gradients numerically. The networks here
are written for this test from the public API and compared, step by step, with the same network
written in plain NumPy.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import fastlayers as fl


def _images(n: int, d: int, seed: int) -> np.ndarray:
    """float32 images in [0, 1], as ``load_mnist(normalize=True)`` returns them."""
    raw = np.random.default_rng(seed).integers(0, 256, (n, d), dtype=np.uint8)
    x = raw.astype(np.float32)
    x /= 255.0
    return x


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, 10, n).astype(np.uint8)


def _onehot(labels: np.ndarray) -> np.ndarray:
    rows = np.zeros((labels.size, 10))  # float64, as the book's loader makes them
    rows[np.arange(labels.size), labels] = 1
    return rows


class ClassicNet:
    """A fully connected net assembled like the book's networks, from fastlayers' public classes."""

    def __init__(self, sizes, activation=fl.Relu, std=0.01, decay=0.0, seed=0):
        np.random.seed(seed)  # noqa: NPY002 - the legacy generator, as the classic scripts use it
        self.params = {}
        self.layers = OrderedDict()
        self.decay = decay
        for i in range(1, len(sizes)):
            self.params[f"W{i}"] = std * np.random.randn(sizes[i - 1], sizes[i])  # noqa: NPY002 - float64
            self.params[f"b{i}"] = np.zeros(sizes[i])
            self.layers[f"Affine{i}"] = fl.Affine(self.params[f"W{i}"], self.params[f"b{i}"])
            if i < len(sizes) - 1:
                self.layers[f"Act{i}"] = activation()
        self.last = fl.SoftmaxWithLoss()
        self.n = len(sizes) - 1

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        penalty = sum(0.5 * self.decay * np.sum(self.params[f"W{i}"] ** 2) for i in range(1, self.n + 1))
        return self.last.forward(self.predict(x), t) + penalty

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        for i in range(1, self.n + 1):
            a = self.layers[f"Affine{i}"]
            grads[f"W{i}"] = a.dW + self.decay * a.W
            grads[f"b{i}"] = a.db
        return grads

    def numerical_gradient(self, x, t):
        return {k: fl.numerical_gradient(lambda _: self.loss(x, t), p) for k, p in self.params.items()}


def _numpy_step(params, x, t, n_layers, sigmoid=False, decay=0.0):
    """Loss and gradients of the same net in plain NumPy (the oracle)."""
    hs = [x]
    h = x
    for i in range(1, n_layers + 1):
        a = h.reshape(h.shape[0], -1) @ params[f"W{i}"] + params[f"b{i}"]
        h = a if i == n_layers else (1 / (1 + np.exp(-a)) if sigmoid else np.maximum(a, 0))
        hs.append(h)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    onehot = t if t.ndim == 2 else np.eye(y.shape[1])[t]
    n = x.shape[0]
    loss = -np.sum(onehot * np.log(y)) / n
    loss += sum(0.5 * decay * np.sum(params[f"W{i}"] ** 2) for i in range(1, n_layers + 1))
    g = (y - onehot) / n
    grads = {}
    for i in range(n_layers, 0, -1):
        inp = hs[i - 1]
        grads[f"W{i}"] = inp.T @ g + decay * params[f"W{i}"]
        grads[f"b{i}"] = g.sum(axis=0)
        g = g @ params[f"W{i}"].T
        if i > 1:
            g = g * (hs[i - 1] * (1 - hs[i - 1]) if sigmoid else (hs[i - 1] > 0))
    return loss, grads


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("targets", ["onehot_float64", "labels_uint8"])
def test_chapter5_training_loop(backend, targets):
    """float32 images, float64 weights and targets: computed in float64, as NumPy does; each step's
    loss and gradients equal the plain-NumPy net's, updated with the book's ``params[key] -= lr * g``."""
    x_train, labels = _images(200, 64, seed=1), _labels(200, seed=1)
    t_train = _onehot(labels) if targets == "onehot_float64" else labels
    with fl.use_backend(backend):
        net = ClassicNet([64, 20, 10], seed=3)
        oracle = {k: v.copy() for k, v in net.params.items()}
        rng = np.random.default_rng(5)
        for _ in range(30):
            mask = rng.choice(200, 32)
            xb, tb = x_train[mask], t_train[mask]
            grads = net.gradient(xb, tb)
            loss_o, grads_o = _numpy_step(oracle, xb, tb, 2)
            assert net.last.loss.dtype == np.float64
            assert net.last.loss == pytest.approx(loss_o, rel=1e-12)
            for key in net.params:
                assert grads[key].dtype == np.float64
                np.testing.assert_allclose(grads[key], grads_o[key], rtol=1e-9, atol=1e-14)
                net.params[key] -= 0.1 * grads[key]
                oracle[key] -= 0.1 * grads_o[key]
        assert net.layers["Affine1"].W is net.params["W1"], "the layer sees the in-place updates"
        acc = net.accuracy(x_train, t_train)
        assert isinstance(acc, float) and 0 <= acc <= 1


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_chapter5_gradient_check(backend):
    x, t = _images(3, 30, seed=2), _onehot(_labels(3, seed=2))
    with fl.use_backend(backend):
        net = ClassicNet([30, 8, 10], seed=4)
        numerical = net.numerical_gradient(x, t)
        backprop = net.gradient(x, t)
    for key in numerical:
        assert np.mean(np.abs(backprop[key] - numerical[key])) < 1e-8, key


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("optimizer", [fl.SGD, fl.Momentum, fl.AdaGrad, fl.Adam])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_chapter6_multilayer_with_optimizers(backend, optimizer, activation):
    """Chapter 6's pattern: a deeper net with weight decay, uint8 labels, an optimizer updating
    ``params`` in place; the losses follow the plain-NumPy net's."""
    act = fl.Relu if activation == "relu" else fl.Sigmoid
    x_train, t_train = _images(128, 49, seed=6), _labels(128, seed=6)
    with fl.use_backend(backend):
        net = ClassicNet([49, 16, 16, 10], activation=act, std=np.sqrt(2 / 49), decay=0.1, seed=7)
        opt = optimizer()
        for step in range(10):
            xb, tb = x_train[step * 12 : step * 12 + 12], t_train[step * 12 : step * 12 + 12]
            before = {k: v.copy() for k, v in net.params.items()}
            grads = net.gradient(xb, tb)
            loss_o, grads_o = _numpy_step(before, xb, tb, 3, sigmoid=activation == "sigmoid", decay=0.1)
            assert net.loss(xb, tb) == pytest.approx(loss_o, rel=1e-12)
            for key in grads:
                np.testing.assert_allclose(grads[key], grads_o[key], rtol=1e-9, atol=1e-13)
            opt.update(net.params, grads)
            assert all(p.dtype == np.float64 for p in net.params.values())


def test_library_nets_with_library_data():
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn (the train extra)")
    """The library's own first try: its digits (float32) with its nets (float64 by default)."""
    (x, t), (xt, tt) = fl.datasets.load_digits()
    net = fl.TwoLayerNet(64, 30, 10, seed=0)
    opt = fl.SGD(lr=0.5)
    first = net.loss(x[:100], t[:100])
    for _ in range(10):
        for i in range(0, len(x), 50):
            opt.update(net.params, net.gradient(x[i : i + 50], t[i : i + 50]))
    assert net.loss(x[:100], t[:100]) < first
    assert net.accuracy(xt, tt) > 0.8


import fastlayers.datasets  # noqa: E402  (used as fl.datasets above, the way a user reaches it)
