"""Chapter 6 of the classic code: Nesterov and RMSprop against the classic updates written out
here, scalar parameters (the classic two-parameter examples), and MultiLayerNetExtend (structure,
gradient checks with batch normalization, dropout at training time only, weight decay)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastlayers as fl

from .conftest import DTYPES


class ClassicNesterov:
    """The classic code's current Nesterov (after its "Fix Nesterov update function"): the
    parameters move with the velocity as it was, then the velocity is updated."""

    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]


class OldNesterov(ClassicNesterov):
    """The classic code's older Nesterov (velocity first), which fastlayers followed before."""

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]


class ClassicRMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr, self.decay_rate, self.h = lr, decay_rate, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


CASES = [
    (fl.Nesterov, ClassicNesterov, {"lr": 0.05, "momentum": 0.8}),
    (fl.RMSprop, ClassicRMSprop, {"lr": 0.05, "decay_rate": 0.9}),
    (fl.Nesterov, ClassicNesterov, {}),
    (fl.RMSprop, ClassicRMSprop, {}),
]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,classic,kw", CASES)
@pytest.mark.parametrize("size", [(3, 5), (700, 513)])  # serial and parallel kernels
def test_new_optimizers_equal_the_classic_updates(ours, classic, kw, size, dtype, backend):
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal(size).astype(dtype), "b": rng.standard_normal(size[1]).astype(dtype)}
    want = {k: v.copy() for k, v in params.items()}
    a, b = ours(**kw), classic(**kw)
    with fl.use_backend(backend):
        for _ in range(4):
            grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
            a.update(params, grads)
            b.update(want, grads)
    eps = np.finfo(dtype).eps
    for k in params:
        assert params[k].dtype == dtype
        np.testing.assert_allclose(params[k], want[k], rtol=64 * eps, atol=64 * eps)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(3, 5), (700, 513)])  # serial and parallel kernels
def test_nesterov_is_the_current_classic_update_bit_for_bit(size, dtype, backend):
    """The same operations in the same order as the classic code now has them: equal bits on the
    numpy backend; on the numba backend within a few units in the last place (the kernels may fuse a
    multiply and an add into one FMA, ``_numba.FLAGS``); and in both far from the older order
    (velocity first) that fastlayers used to follow."""
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal(size).astype(dtype), "b": rng.standard_normal(size[1]).astype(dtype)}
    want = {k: v.copy() for k, v in params.items()}
    old = {k: v.copy() for k, v in params.items()}
    ours, classic, previous = fl.Nesterov(0.1, 0.9), ClassicNesterov(0.1, 0.9), OldNesterov(0.1, 0.9)
    with fl.use_backend(backend):
        for _ in range(5):
            grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
            ours.update(params, grads)
            classic.update(want, grads)
            previous.update(old, grads)
    eps = np.finfo(dtype).eps
    for k in params:
        v = ours.state[k]["v"].reshape(params[k].shape)
        if backend == "numpy":
            np.testing.assert_array_equal(params[k], want[k])
            np.testing.assert_array_equal(v, classic.v[k])
        else:
            np.testing.assert_allclose(params[k], want[k], rtol=8 * eps, atol=8 * eps)
            np.testing.assert_allclose(v, classic.v[k], rtol=8 * eps, atol=8 * eps)
        assert np.max(np.abs(params[k] - old[k])) > 1e-2  # the older order is a different update


def test_defaults_and_errors():
    assert (fl.Nesterov().lr, fl.Nesterov().momentum) == (0.01, 0.9)
    assert (fl.RMSprop().lr, fl.RMSprop().decay_rate) == (0.01, 0.99)
    with pytest.raises(ValueError, match=r"decay_rate must be in \[0, 1\)"):
        fl.RMSprop(decay_rate=1.0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        fl.Nesterov(lr=-1)


@pytest.mark.parametrize("opt", [fl.SGD(0.1), fl.Momentum(0.1), fl.Nesterov(0.1), fl.AdaGrad(0.5), fl.RMSprop(0.1),
                                 fl.Adam(0.3)])  # fmt: skip
def test_scalar_parameters_as_in_the_classic_examples(opt):
    """ch06/optimizer_compare_naive.py keeps two Python floats in ``params``: each step replaces them."""
    params = {"x": -7.0, "y": np.float64(2.0)}
    for _ in range(30):
        grads = {"x": params["x"] / 10.0, "y": 2.0 * params["y"]}
        opt.update(params, grads)
    assert np.isscalar(params["x"]) and abs(params["x"]) < 7 and abs(params["y"]) < 2


def _classic_scalar_run(name: str, lr: float) -> list[tuple[float, float]]:
    """The classic optimizers' operations, written out here in NumPy on two float parameters (the
    chapter 6 two-parameter example), with the optimizers' default hyper-parameters."""
    p, hist = {"x": -7.0, "y": 2.0}, []
    state = {k: {"v": np.zeros_like(p[k]), "h": np.zeros_like(p[k]), "m": np.zeros_like(p[k])} for k in p}
    for it in range(1, 31):
        g = {"x": p["x"] / 10.0, "y": 2.0 * p["y"]}
        if name == "Adam":
            lr_t = lr * np.sqrt(1.0 - 0.999**it) / (1.0 - 0.9**it)
        for k in p:
            s = state[k]
            if name == "SGD":
                p[k] -= lr * g[k]
            elif name == "Momentum":
                s["v"] = 0.9 * s["v"] - lr * g[k]
                p[k] += s["v"]
            elif name == "Nesterov":
                p[k] += 0.9 * 0.9 * s["v"]
                p[k] -= (1 + 0.9) * lr * g[k]
                s["v"] *= 0.9
                s["v"] -= lr * g[k]
            elif name == "AdaGrad":
                s["h"] += g[k] * g[k]
                p[k] -= lr * g[k] / (np.sqrt(s["h"]) + 1e-7)
            elif name == "RMSprop":
                s["h"] *= 0.99
                s["h"] += (1 - 0.99) * g[k] * g[k]
                p[k] -= lr * g[k] / (np.sqrt(s["h"]) + 1e-7)
            else:
                s["m"] += (1 - 0.9) * (g[k] - s["m"])
                s["v"] += (1 - 0.999) * (g[k] ** 2 - s["v"])
                p[k] -= lr_t * s["m"] / (np.sqrt(s["v"]) + 1e-7)
        hist.append((float(p["x"]), float(p["y"])))
    return hist


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_scalar_parameters_follow_the_classic_operations_bit_for_bit(name, backend):
    """Scalars are updated by the NumPy twin on both backends: the same operations, so the same bits
    (a compiled kernel may contract a multiply and an add into one rounding)."""
    lr = {"SGD": 0.95, "Momentum": 0.1, "Nesterov": 0.1, "AdaGrad": 1.5, "RMSprop": 0.1, "Adam": 0.3}[name]
    opt, params, hist = getattr(fl, name)(lr=lr), {"x": -7.0, "y": 2.0}, []
    with fl.use_backend(backend):
        for _ in range(30):
            opt.update(params, {"x": params["x"] / 10.0, "y": 2.0 * params["y"]})
            assert type(params["x"]) is np.float64 and type(params["y"]) is np.float64
            hist.append((float(params["x"]), float(params["y"])))
    assert hist == _classic_scalar_run(name, lr)


def test_extend_structure_like_the_classic_net():
    net = fl.MultiLayerNetExtend(784, [100, 50], 10, use_dropout=True, dropout_ration=0.2, use_batchnorm=True, seed=0)
    assert list(net.layers) == ["Affine1", "BatchNorm1", "Activation_function1", "Dropout1", "Affine2", "BatchNorm2",
                                "Activation_function2", "Dropout2", "Affine3"]  # fmt: skip
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3", "gamma1", "beta1", "gamma2", "beta2"]
    assert net.layers["Dropout1"].dropout_ratio == 0.2
    assert net.layers["BatchNorm2"].gamma is net.params["gamma2"]
    plain = fl.MultiLayerNetExtend(5, [4], 3, seed=0)
    assert list(plain.layers) == ["Affine1", "Activation_function1", "Affine2"]
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\)"):
        fl.MultiLayerNetExtend(5, [4], 3, use_dropout=True, dropout_ration=1.0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_extend_gradient_check_with_batchnorm_and_decay(backend, activation):
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((6, 8)), rng.integers(0, 4, 6)
    with fl.use_backend(backend):
        net = fl.MultiLayerNetExtend(8, [7, 5], 4, activation=activation, weight_init_std=activation,
                                     weight_decay_lambda=0.1, use_batchnorm=True, seed=2)  # fmt: skip
        grads = {k: v.copy() for k, v in net.gradient(x, t).items()}
        numeric = net.numerical_gradient(x, t)
    for key in numeric:
        assert np.abs(grads[key] - numeric[key]).mean() < 1e-7, key


def test_extend_modes_and_accuracy():
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((20, 8)), rng.integers(0, 3, 20)
    net = fl.MultiLayerNetExtend(8, [16], 3, use_dropout=True, use_batchnorm=True, seed=0)
    np.testing.assert_array_equal(net.predict(x), net.predict(x))  # test mode: no dropout, running stats
    np.random.seed(0)  # noqa: NPY002 - the classic global generator
    first = net.predict(x, train_flg=True)
    assert not np.array_equal(first, net.predict(x, train_flg=True))  # new masks, new batch stats
    assert net.loss(x, t) == net.loss(x, t)
    assert 0.0 <= net.accuracy(x, t) <= 1.0
    assert net.accuracy(x, np.eye(3)[t]) == net.accuracy(x, t)
    opt, before = fl.Adam(0.01), net.loss(x, t)
    for _ in range(100):
        opt.update(net.params, net.gradient(x, t))
    assert net.loss(x, t) < before and net.accuracy(x, t) > 0.8


OPTIMIZERS = [
    (fl.SGD, {"lr": 0.1}),
    (fl.Momentum, {"lr": 0.1}),
    (fl.Nesterov, {"lr": 0.1}),
    (fl.AdaGrad, {"lr": 0.1}),
    (fl.RMSprop, {"lr": 0.1}),
    (fl.Adam, {"lr": 0.1}),
]


def _net_params(rng, dtype, sizes=(784, 100, 100, 10)):
    """A net's parameters (W1, b1, ...), with one array above the kernels' parallel threshold."""
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False), 1):
        params[f"W{i}"] = (0.1 * rng.standard_normal((a, b))).astype(dtype)
        params[f"b{i}"] = (0.1 * rng.standard_normal(b)).astype(dtype)
    params["big"] = rng.standard_normal(300_007).astype(dtype)
    return params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cls", "kw"), OPTIMIZERS)
def test_grouped_updates_equal_the_numpy_backend_step_by_step(cls, kw, dtype):
    """The common update (arrays in groups per kernel call, its plan kept between calls) gives the
    NumPy backend's results at every step, also after a parameter is replaced, the state is
    replaced, the dict changes order, or a gradient is the parameter itself."""
    rng = np.random.default_rng(7)
    params = _net_params(rng, dtype)
    ref_params = {k: v.copy() for k, v in params.items()}
    ours, ref = cls(**kw), cls(**kw)
    for step in range(8):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        if step == 3:  # a parameter replaced by a new array
            params["W2"] = params["W2"].copy()
        if step == 4 and ours.state:  # the state replaced through the public attribute
            ours.state = {k: {n: a.copy() for n, a in st.items()} for k, st in ours.state.items()}
            ref.state = {k: {n: a.copy() for n, a in st.items()} for k, st in ref.state.items()}
        if step == 5:  # another order of the same keys
            params = dict(reversed(params.items()))
            ref_params = dict(reversed(ref_params.items()))
        if step == 6:
            grads["b1"] = params["b1"]
        ours.update(params, grads)
        ref_grads = {k: (ref_params[k] if g is params[k] else g).copy() for k, g in grads.items()}  # g read first
        with fl.use_backend("numpy"):
            ref.update(ref_params, ref_grads)
        for k in params:
            np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Adam"])
def test_an_optimizer_with_a_plan_pickles_and_copies(name):
    """After common updates (a plan with compiled entry points), the optimizer pickles and deep-copies
    (a Dask task ships it; ``copy.deepcopy`` of a trainer copies it) without its plan, and the copy
    goes on exactly as the original does."""
    import copy
    import pickle

    rng = np.random.default_rng(2)
    params = _net_params(rng, np.float32, sizes=(6, 5, 3))
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    opt = getattr(fl, name)()
    opt.update(params, grads)
    assert opt._plan is not None
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone._plan is None
        mine = {k: v.copy() for k, v in params.items()}
        theirs = {k: v.copy() for k, v in params.items()}
        original = copy.deepcopy(opt)
        original.update(mine, grads)
        clone.update(theirs, grads)
        for key in params:
            np.testing.assert_array_equal(mine[key], theirs[key])


def test_grouped_update_checks_every_call():
    """What the plan keeps is checked again at each call: a read-only parameter, a gradient of
    another shape or dtype, a missing gradient, a parameter whose dtype was changed in place."""
    rng = np.random.default_rng(8)
    params = _net_params(rng, np.float64, sizes=(6, 5, 3))
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt = fl.Momentum(lr=0.1)
    opt.update(params, grads)
    params["W1"].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.update(params, grads)
    params["W1"].flags.writeable = True
    with pytest.raises(ValueError, match="shape"):
        opt.update(params, {**grads, "b2": np.ones(4)})
    with pytest.raises(KeyError):
        opt.update(params, {k: g for k, g in grads.items() if k != "W2"})
    before = {k: v.copy() for k, v in params.items()}
    opt.update(params, {**grads, "b1": np.ones(5, np.float32)})  # the general path: p's dtype kept
    assert all(params[k].dtype == np.float64 for k in params)
    assert not np.array_equal(params["b1"], before["b1"])
    v = opt.state["b1"]["v"]
    v.resize(2, refcheck=False)  # the state array shrunk in place, past NumPy's own check
    opt.update(params, grads)  # a new plan, and a new state of b1's length
    assert opt.state["b1"]["v"].shape == (5,)
    b2 = params["b2"]
    with warnings.catch_warnings():  # NumPy 2.5 deprecates this; the plan must still see it while it works
        warnings.simplefilter("ignore", DeprecationWarning)
        b2.dtype = np.float32  # in place: 3 float64 become 6 float32
    opt.update(params, {**grads, "b2": np.ones(6, np.float32)})  # the general path again, no stale plan
    assert b2.dtype == np.float32 and opt.state["b2"]["v"].shape == (6,)
