"""Networks: classic interface, gradient checks on both nets and activations, optimizers vs NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import reference
from fastlayers.nets import MultiLayerNet, TwoLayerNet, gradient_check
from fastlayers.optim import SGD, AdaGrad, Adam, Momentum

from .conftest import DTYPES


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 12)), rng.integers(0, 5, 4)


def test_public_names():
    for name in ("TwoLayerNet", "MultiLayerNet", "gradient_check", "SGD", "Momentum", "AdaGrad", "Adam"):
        assert getattr(fastlayers, name) is not None and name in fastlayers.__all__
    assert fastlayers.TwoLayerNet is TwoLayerNet and fastlayers.Adam is Adam


def test_two_layer_net_interface(batch):
    x, t = batch
    net = TwoLayerNet(12, 7, 5, seed=0)
    assert set(net.params) == {"W1", "b1", "W2", "b2"}
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    assert net.lastLayer is net.last_layer
    assert net.layers["Affine1"].W is net.params["W1"]
    assert net.predict(x).shape == (4, 5)
    assert np.isfinite(net.loss(x, t))
    onehot = np.eye(5)[t]
    assert net.accuracy(x, t) == net.accuracy(x, onehot)
    assert set(net.gradient(x, t)) == set(net.params)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradient_check_two_layer(batch, backend):
    x, t = batch
    with fastlayers.use_backend(backend):
        diffs = gradient_check(TwoLayerNet(12, 7, 5, weight_init_std=0.5, seed=1), x, t)
    assert set(diffs) == {"W1", "b1", "W2", "b2"}
    assert max(diffs.values()) < 1e-8


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_gradient_check_multi_layer(batch, activation, decay):
    x, t = batch
    net = MultiLayerNet(12, [9, 6], 5, activation=activation, weight_init_std=activation,
                        weight_decay_lambda=decay, seed=2)  # fmt: skip
    assert list(net.layers) == ["Affine1", "Activation_function1", "Affine2", "Activation_function2", "Affine3"]
    diffs = gradient_check(net, x, t)
    assert len(diffs) == 6 and max(diffs.values()) < 1e-8


def test_multi_layer_init_and_errors():
    net = MultiLayerNet(100, [50], 10, weight_init_std="he", seed=0)
    assert abs(net.params["W1"].std() - np.sqrt(2 / 100)) < 0.01
    net = MultiLayerNet(100, [50], 10, weight_init_std="xavier", seed=0)
    assert abs(net.params["W1"].std() - np.sqrt(1 / 100)) < 0.01
    assert MultiLayerNet(4, [], 3, seed=0).params.keys() == {"W1", "b1"}
    with pytest.raises(ValueError, match="activation must be one of"):
        MultiLayerNet(4, [3], 2, activation="tanh")
    with pytest.raises(ValueError, match="weight_init_std must be"):
        MultiLayerNet(4, [3], 2, weight_init_std="bogus")
    with pytest.raises(ValueError, match="hidden_size_list entries must be a positive integer"):
        MultiLayerNet(4, [0], 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        TwoLayerNet(4, 3, 2, dtype=np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_net_stays_float32(dtype):
    net = TwoLayerNet(6, 4, 3, dtype=dtype, seed=0)
    x = np.ones((2, 6), dtype)
    grads = net.gradient(x, np.array([0, 2]))
    assert net.loss(x, np.array([0, 2])).dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())


OPTIMIZERS = [
    (SGD, {"lr": 0.1}, "sgd", ()),
    (Momentum, {"lr": 0.1, "momentum": 0.9}, "momentum", ("v",)),
    (AdaGrad, {"lr": 0.1}, "adagrad", ("h",)),
    (Adam, {"lr": 0.01}, "adam", ("m", "v")),
]


def _reference_steps(name, params, grads_seq, kw):
    """The classic optimizer, written with the NumPy reference updates, for comparison."""
    state = {k: {s: np.zeros(p.size, p.dtype) for s in ("v", "h", "m", "vv")} for k, p in params.items()}
    for step, grads in enumerate(grads_seq, start=1):
        for k, p in params.items():
            flat, g, st = p.reshape(-1), grads[k].reshape(-1), state[k]
            dt = p.dtype.type
            if name == "sgd":
                reference.sgd(flat, g, dt(kw["lr"]))
            elif name == "momentum":
                reference.momentum(flat, st["v"], g, dt(kw["lr"]), dt(kw["momentum"]))
            elif name == "adagrad":
                reference.adagrad(flat, st["h"], g, dt(kw["lr"]), dt(1e-7))
            else:
                lr_t = kw["lr"] * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
                reference.adam(flat, st["m"], st["vv"], g, dt(lr_t), dt(0.9), dt(0.999), dt(1e-7))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw,name,state", OPTIMIZERS, ids=[o[2] for o in OPTIMIZERS])
@pytest.mark.parametrize("size", [(3, 5), (700, 513)])  # serial and parallel kernels
def test_optimizer_against_reference(dtype, cls, kw, name, state, size):
    rng = np.random.default_rng(3)
    params = {"W": rng.standard_normal(size).astype(dtype), "b": rng.standard_normal(size[1]).astype(dtype)}
    expected = {k: v.copy() for k, v in params.items()}
    grads_seq = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()} for _ in range(3)]
    opt = cls(**kw)
    w_id = id(params["W"])
    for grads in grads_seq:
        opt.update(params, grads)
    assert id(params["W"]) == w_id and params["W"].dtype == dtype  # in place, dtype kept
    _reference_steps(name, expected, grads_seq, kw)
    eps = np.finfo(dtype).eps
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=64 * eps, atol=64 * eps)


def test_optimizer_numpy_backend_and_strided_params():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 8))
    strided = base.copy()[:, ::2]  # not contiguous: updated through a copy written back
    contiguous = np.ascontiguousarray(strided)
    g = rng.standard_normal((6, 4))
    Adam(0.01).update({"W": strided}, {"W": g})
    with fastlayers.use_backend("numpy"):
        Adam(0.01).update({"W": contiguous}, {"W": g})
    np.testing.assert_allclose(strided, contiguous, rtol=1e-14)


def test_optimizer_errors():
    p = {"W": np.zeros((2, 2))}
    with pytest.raises(KeyError, match="grads has no entry 'W'"):
        SGD().update(p, {})
    with pytest.raises(ValueError, match=r"grads\['W'\] has shape \(2,\)"):
        SGD().update(p, {"W": np.zeros(2)})
    with (
        fastlayers.strict_dtypes(),
        pytest.raises(TypeError, match=r"params\['W'\] is float64 but grads\['W'\] is float32"),
    ):
        SGD().update(p, {"W": np.zeros((2, 2), np.float32)})
    with pytest.raises(TypeError, match=r"params\['W'\] must be a float numpy array"):
        SGD().update({"W": np.zeros(2, int)}, {"W": np.zeros(2)})
    with pytest.raises(TypeError, match="tensor that requires grad"):
        SGD().update(p, {"W": _RequiresGrad()})
    with pytest.raises(ValueError, match="lr must be a positive number"):
        SGD(lr=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        Momentum(momentum=1.5)


class _RequiresGrad:
    """Stands in for a torch tensor with ``requires_grad=True``: ``np.asarray`` of it fails."""

    requires_grad = True
    shape = (2, 2)

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("net", ["two", "multi"])
def test_gradient_skips_the_inputs_gradient(net, backend):
    """``gradient`` leaves out the first layer's gradient with respect to the input (nobody uses it):
    the parameter gradients are those of a full backward pass through the layers, and the first
    Affine layer's ``backward`` still returns ``dx`` when called directly."""
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((16, 12)), rng.integers(0, 5, 16)
    with fastlayers.use_backend(backend):
        model = TwoLayerNet(12, 7, 5, seed=1) if net == "two" else MultiLayerNet(12, [7, 6], 5, seed=1)
        grads = {key: g.copy() for key, g in model.gradient(x, t).items()}
        first = model.layers["Affine1"]
        if backend == "numba":
            assert first._dx is None  # never computed
        model.loss(x, t)
        dout = model.last_layer.backward(1)
        for layer in reversed(list(model.layers.values())):
            dout = layer.backward(dout)
        assert dout.shape == x.shape
        full = model._affine_grads()
    for key in grads:
        np.testing.assert_array_equal(grads[key], full[key])
