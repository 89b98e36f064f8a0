"""The dense nets' plans (``fastlayers.nets._plan``): one compiled call for ``predict``, ``loss`` and
``gradient``, held against the layer-by-layer path on both backends and dtypes, with the nets'
parameters replaced or mutated between calls, results kept by the caller, bad labels, and threads."""

from __future__ import annotations

import threading
import warnings
import weakref

import numpy as np
import pytest

import fastlayers
from fastlayers import Affine, MultiLayerNet, MultiLayerNetExtend, Relu, Sigmoid, TwoLayerNet
from fastlayers.nets import _plan

from .conftest import DTYPES, assert_close

RNG = np.random.default_rng(0)

# (net maker, input width): every dense net a plan serves, odd widths
NETS = {
    "two": (lambda dt: TwoLayerNet(13, 9, 5, weight_init_std=0.5, dtype=dt, seed=1), 13),
    "relu2": (lambda dt: MultiLayerNet(17, [33, 65], 3, dtype=dt, seed=2), 17),
    "sigmoid": (lambda dt: MultiLayerNet(7, [5, 16], 4, activation="sigmoid", dtype=dt, seed=3), 7),
    "softmax_only": (lambda dt: MultiLayerNet(6, [], 5, dtype=dt, seed=4), 6),
    "decay": (lambda dt: MultiLayerNet(9, [11], 3, weight_decay_lambda=0.1, dtype=dt, seed=5), 9),
    "extend_plain": (lambda dt: MultiLayerNetExtend(8, [10, 6], 3, dtype=dt, seed=6), 8),
}


def _batch(width: int, n: int, dtype, classes: int):
    return RNG.standard_normal((n, width)).astype(dtype), RNG.integers(0, classes, n)


@pytest.fixture
def walk(monkeypatch):
    """Inside ``with walk():`` no plan serves a call: the layer-by-layer path."""

    class _Walk:
        def __enter__(self):
            monkeypatch.setattr(_plan, "_call", lambda *a: None)

        def __exit__(self, *exc):
            monkeypatch.undo()

    return _Walk


def _state(net) -> dict:
    """Every public attribute the layers hold after a call, copied."""
    out = {}
    for name, layer in [*net.layers.items(), ("last", net.last_layer)]:
        for attr in ("x", "original_x_shape", "dW", "db", "out", "loss", "y", "t"):
            value = getattr(layer, attr, None)
            if value is not None:
                out[f"{name}.{attr}"] = value.copy() if isinstance(value, np.ndarray) else value
    return out


def _calls(net, x, t) -> dict:
    """predict, loss, gradient and accuracy of ``net`` on ``x``, ``t``, with the layers' attributes
    after predict and after gradient, copied."""
    out = {"predict": net.predict(x).copy()}
    out.update({f"predict:{k}": v for k, v in _state(net).items()})
    out["loss"] = net.loss(x, t)
    out["grads"] = {k: v.copy() for k, v in net.gradient(x, t).items()}
    out.update(_state(net))
    out["accuracy"] = net.accuracy(x, t)
    return out


def _compare(a, b, dtype, n=64):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray) and a[key].dtype.kind == "f":
            assert_close(a[key], b[key], "sum", n=n)
        elif isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        elif isinstance(a[key], np.floating):
            assert_close(np.asarray(a[key]), np.asarray(b[key]), "sum", n=n)
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("n", [1, 7, 32])
def test_plan_equals_the_layer_walk(name, dtype, backend, n, walk):
    """predict, loss, gradient and accuracy by the plan and by the layer walk: the same results and
    the same layer attributes, up to the order of the additions inside the products."""
    make, width = NETS[name]
    x, t = _batch(width, n, dtype, 3)
    with fastlayers.use_backend(backend):
        got_net, want_net = make(dtype), make(dtype)
        got = _calls(got_net, x, t)
        with walk():
            want = _calls(want_net, x, t)
    grads_got, grads_want = got.pop("grads"), want.pop("grads")
    _compare(got, want, dtype)
    _compare(grads_got, grads_want, dtype)
    if backend == "numba":
        assert any(isinstance(p, _plan.DensePlan) for p in got_net._plans.values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_main_job_net_is_planned_and_its_softmax_is_bit_identical(dtype, walk):
    """The main job's net: served by a plan; the loss layer's softmax, loss and gradient from the
    same scores give the same bits as the plan's."""
    x, t = _batch(64, 32, dtype, 10)
    net, ref = TwoLayerNet(64, 50, 10, dtype=dtype, seed=0), TwoLayerNet(64, 50, 10, dtype=dtype, seed=0)
    grads = net.gradient(x, t)
    assert isinstance(net._plans[(x.shape, np.dtype(dtype))], _plan.DensePlan)
    with walk():
        want = ref.gradient(x, t)
    _compare({k: v.copy() for k, v in grads.items()}, {k: v.copy() for k, v in want.items()}, dtype)
    layer = fastlayers.SoftmaxWithLoss()
    loss = layer.forward(net.layers["Affine2"]._out.copy(), t)
    assert loss == net.last_layer.loss
    np.testing.assert_array_equal(net.last_layer.y, layer.y)
    np.testing.assert_array_equal(net.last_layer.backward(1), layer.backward(1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_replaced_or_mutated_between_calls_are_seen(dtype, walk):
    x, t = _batch(13, 7, dtype, 5)
    make = NETS["two"][0]
    net, ref = make(dtype), make(dtype)
    net.gradient(x, t)
    for change in (
        lambda n: n.params["W1"].__imul__(dtype(0.5)),  # in place, as the optimizers do
        lambda n: setattr(n.layers["Affine1"], "W", n.layers["Affine1"].W * dtype(2)),  # a new array
        lambda n: setattr(n.layers["Affine2"], "b", np.ones(5, dtype)),
        lambda n: setattr(n.layers["Affine1"], "W", np.asfortranarray(n.layers["Affine1"].W)),  # the walk
        lambda n: setattr(n.layers["Affine1"], "W", np.ascontiguousarray(n.layers["Affine1"].W)),
    ):
        change(net)
        change(ref)
        got = {k: v.copy() for k, v in net.gradient(x, t).items()}
        with walk():
            want = {k: v.copy() for k, v in ref.gradient(x, t).items()}
        _compare(got, want, dtype)
        assert_close(net.predict(x).copy(), ref.predict(x), "sum", n=64)


def test_bad_weights_and_labels_get_the_layers_errors():
    net = TwoLayerNet(13, 9, 5, seed=0)
    x, t = _batch(13, 4, np.float64, 5)
    net.gradient(x, t)
    bad = t.copy()
    bad[2] = 5
    with pytest.raises(ValueError, match="label"):
        net.gradient(x, bad)
    with pytest.raises(ValueError, match="label"):
        net.loss(x, -bad)
    net.layers["Affine2"].W = np.zeros((8, 5))
    with pytest.raises(ValueError, match="shape"):
        net.predict(x)
    rows = TwoLayerNet(13, 9, 5, seed=0)
    rows.gradient(x, t)
    rows.layers["Affine1"].W = rows.layers["Affine1"].W[:-1].copy()  # fewer rows than x has columns
    for call in (lambda: rows.predict(x), lambda: rows.loss(x, t), lambda: rows.gradient(x, t)):
        with pytest.raises(ValueError, match="shape"):
            call()
    net.layers["Affine2"].W = np.zeros((9, 5), np.float32)  # another dtype: NumPy's rule, by the walk
    assert net.predict(x).dtype == np.float64


def test_kept_results_are_never_overwritten():
    """What a call returned (or left in a layer's attribute) and the caller kept is not written by
    the next call; what nobody kept is reused."""
    net = TwoLayerNet(13, 9, 5, seed=0)
    x1, t1 = _batch(13, 6, np.float64, 5)
    x2, t2 = _batch(13, 6, np.float64, 5)
    g1 = net.gradient(x1, t1)
    copies = {k: v.copy() for k, v in g1.items()}
    h1, y1, s1 = net.layers["Relu1"].out, net.last_layer.y, net.predict(x1)
    h1c, y1c, s1c = h1.copy(), y1.copy(), s1.copy()
    net.gradient(x2, t2)
    net.predict(x2)
    for key, value in g1.items():
        np.testing.assert_array_equal(value, copies[key])
    np.testing.assert_array_equal(h1, h1c)
    np.testing.assert_array_equal(y1, y1c)
    np.testing.assert_array_equal(s1, s1c)
    assert not net.last_layer.y.flags.writeable
    # nobody keeps the gradients, the hidden output or the scores: the next call writes the same memory
    first = {k: id(v) for k, v in net.gradient(x1, t1).items()}
    first["hidden"], first["scores"] = id(net.layers["Relu1"].out), id(net.layers["Affine2"]._out)
    first["y"] = id(net.last_layer.y.base)
    after = {k: id(v) for k, v in net.gradient(x2, t2).items()}
    after["hidden"], after["scores"] = id(net.layers["Relu1"].out), id(net.layers["Affine2"]._out)
    after["y"] = id(net.last_layer.y.base)
    assert first == after
    hidden = id(net.layers["Relu1"].out)
    net.predict(x1)
    assert id(net.layers["Relu1"].out) == hidden


@pytest.mark.parametrize("change", ["resize", "reshape", "read-only", "retype"])
@pytest.mark.parametrize("where", ["Affine1.dW", "Affine2.db", "Relu1.out", "scores", "y.base"])
def test_buffers_changed_in_place_through_a_layer_are_not_written(where, change, walk):
    """A buffer the plan published (a layer's ``dW``, ``db``, ``Relu.out``, the scores ``predict``
    returned) that the caller resized (``refcheck=False``), reshaped or made read-only in place, and
    then let go of, is never handed to a kernel again: the plan makes a new one, the answers equal
    the walk's, and the old array is left as the caller made it (a resized one would otherwise be
    written out of bounds)."""
    net = TwoLayerNet(13, 9, 5, seed=0)
    twin = TwoLayerNet(13, 9, 5, seed=0)
    x, t = _batch(13, 6, np.float64, 5)
    net.gradient(x, t)
    net.predict(x)

    def published():
        if where == "scores":
            return net.layers["Affine2"]._out
        if where == "y.base":  # the softmax, published as a read-only view of the plan's buffer
            return net.last_layer.y.base
        name, attr = where.split(".")
        return getattr(net.layers[name], attr)

    def change_it(a):
        if change == "resize":
            a.resize((3,), refcheck=False)
            a[...] = 7.0
        elif change == "reshape":
            _set_in_place(a, "shape", (a.size,) if a.ndim == 2 else (a.size, 1))
        elif change == "retype":  # the same item size: the entry point would write floats as integers
            _set_in_place(a, "dtype", np.dtype(np.int64))
        else:
            a.flags.writeable = False
        return weakref.ref(a), a.copy()

    old, before = change_it(published())
    assert old() is not None  # still held by the layer, nowhere else
    grads = net.gradient(x, t)
    scores = net.predict(x)
    with walk():
        want = twin.gradient(x, t)
        want_scores = twin.predict(x)
    for key, value in want.items():
        assert grads[key].shape == value.shape
        np.testing.assert_array_equal(grads[key], value)
    np.testing.assert_array_equal(scores, want_scores)
    assert published() is not old()
    if old() is not None:
        np.testing.assert_array_equal(old(), before)


def _set_in_place(a: np.ndarray, name: str, value) -> None:
    """``a.<name> = value`` (``shape`` or ``dtype``) in place, as a caller may still do: NumPy 2.5
    deprecates both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        setattr(a, name, value)


@pytest.mark.parametrize("where", ["Affine1.dW", "Relu1.out", "scores", "y.base"])
def test_buffers_reshaped_in_place_to_as_many_dimensions_are_replaced(where, walk):
    """A published 2-D buffer given its axes' lengths swapped in place keeps its number of
    dimensions, which is all that Python checks before the call: the kernel refuses it, the plan
    replaces it and calls again, and the answers equal the walk's."""
    net = TwoLayerNet(13, 9, 5, seed=0)
    twin = TwoLayerNet(13, 9, 5, seed=0)
    x, t = _batch(13, 6, np.float64, 5)
    net.gradient(x, t)
    net.predict(x)
    layer = {"scores": ("Affine2", "_out"), "Affine1.dW": ("Affine1", "dW"), "Relu1.out": ("Relu1", "out")}
    a = net.last_layer.y.base if where == "y.base" else getattr(net.layers[layer[where][0]], layer[where][1])
    _set_in_place(a, "shape", a.shape[::-1])
    old, before = weakref.ref(a), a.copy()
    del a  # held by the layer alone: the plan's reference counts let it through, the kernel does not
    _planned_and_walked(net, twin, x, t, walk)
    plan = net._hot  # served by the plan, not the walk: the layers hold its buffers
    assert net.layers["Relu1"].out is plan.outs[0] and net.layers["Affine1"].dW is plan.dWs[0]
    if old() is not None:
        np.testing.assert_array_equal(old(), before)  # never written again
    # what the plan published has the layers' shapes (a kernel that wrote the swapped buffer as if
    # it had the plan's shape would have left it published as it was)
    assert net.layers["Relu1"].out.shape == (6, 9) and net.layers["Affine2"]._out.shape == (6, 5)
    assert net.layers["Affine1"].dW.shape == (13, 9) and net.last_layer.y.base.shape == (6, 5)


def _planned_and_walked(net, twin, x, t, walk):
    """predict, gradient, predict: ``net``'s answers equal the walk's of ``twin``."""
    for call in ("predict", "gradient", "predict"):
        if call == "predict":
            got = net.predict(x)
            with walk():
                want = twin.predict(x)
            np.testing.assert_array_equal(got, want)
        else:
            got = net.gradient(x, t)
            with walk():
                want = twin.gradient(x, t)
            for key, value in want.items():
                np.testing.assert_array_equal(got[key], value)


def test_labels_that_are_a_view_of_the_softmax_buffer_are_not_written_through(walk):
    """Labels made a view of the plan's softmax buffer (reached through ``last_layer.y.base``) would
    change as the kernel writes the softmax: the plan sees the buffer held and writes a new one."""
    net = TwoLayerNet(13, 9, 5, seed=0)
    twin = TwoLayerNet(13, 9, 5, seed=0)
    x, t0 = _batch(13, 6, np.float64, 5)
    net.gradient(x, t0)
    t = net.last_layer.y.base.reshape(-1).view(np.int64)[: t0.shape[0]]
    t[:] = t0
    got = net.gradient(x, t)
    with walk():
        want = twin.gradient(x, t0)
    np.testing.assert_array_equal(t, t0)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)
    assert net.last_layer.y.base is not t.base.base


@pytest.mark.parametrize("mode", ["predict", "loss", "gradient"])
def test_an_empty_batch_gets_the_walks_error(mode, walk):
    """A 0-row batch (a slice, strides kept) never reaches a kernel: the walk answers as it would."""
    net = MultiLayerNet(13, [1], 1, seed=0)
    x, t = _batch(13, 4, np.float64, 1)
    net.gradient(x, t)

    def call(n):
        return n.predict(x[:0]) if mode == "predict" else getattr(n, mode)(x[:0], t[:0])

    with walk():
        try:
            want = call(net)
        except ValueError as e:
            want = e
    if isinstance(want, ValueError):
        with pytest.raises(ValueError, match=str(want)[:20]):
            call(net)
    else:
        np.testing.assert_array_equal(np.asarray(call(net)), np.asarray(want))


def test_layers_replaced_in_the_net_are_seen(walk):
    x, t = _batch(13, 5, np.float64, 5)
    make = NETS["two"][0]
    net, ref = make(np.float64), make(np.float64)
    net.gradient(x, t)
    for n in (net, ref):
        n.layers["Relu1"] = Sigmoid()
    got = net.loss(x, t)
    with walk():
        want = ref.loss(x, t)
    assert_close(np.asarray(got), np.asarray(want), "sum", n=64)
    for n in (net, ref):
        n.layers["Extra"] = Relu()  # no longer Affine/activation pairs: the walk
    np.testing.assert_array_equal(net.predict(x), ref.predict(x))


def test_backward_after_a_planned_gradient_runs_on_what_the_plan_left(walk):
    x, t = _batch(13, 5, np.float64, 5)
    net = NETS["two"][0](np.float64)
    net.gradient(x, t)
    dout = net.last_layer.backward(1)
    dh = net.layers["Affine2"].backward(dout)
    dx = net.layers["Affine1"].backward(net.layers["Relu1"].backward(dh))
    assert dx.shape == x.shape
    assert_close(net.layers["Affine1"].dW.copy(), net.gradient(x, t)["W1"].copy(), "sum", n=64)


def test_unusual_inputs_take_the_walk(walk):
    """One-hot targets, int32 labels, a Fortran-ordered or read-only batch, float32 rows with a
    float64 net, images: the same results as the walk."""
    net = NETS["two"][0](np.float64)
    x, t = _batch(13, 6, np.float64, 5)
    onehot = np.eye(5)[t]
    ro = x.copy()
    ro.flags.writeable = False
    cases = [(x, onehot), (x, t.astype(np.int32)), (np.asfortranarray(x), t), (ro, t), (x.astype(np.float32), t)]
    for xi, ti in cases:
        got = net.loss(xi, ti)
        with walk():
            want = net.loss(xi, ti)
        assert_close(np.asarray(got), np.asarray(want), "sum", n=64)
    images = NETS["two"][0](np.float64)
    images.layers["Affine1"].W = images.layers["Affine1"].W[:12].copy()
    xi = RNG.standard_normal((3, 1, 3, 4))
    got = images.predict(xi).copy()
    with walk():
        assert_close(got, images.predict(xi), "sum", n=64)
    assert images.layers["Affine1"].original_x_shape == xi.shape


def test_threads_sharing_one_net_get_right_answers():
    net = TwoLayerNet(64, 50, 10, dtype=np.float32, seed=0)
    xs = [_batch(64, 8, np.float32, 10)[0] for _ in range(4)]
    want = [np.maximum(x @ net.params["W1"] + net.params["b1"], 0) @ net.params["W2"] + net.params["b2"] for x in xs]
    errors = []

    def work(i):
        for _ in range(300):
            got = net.predict(xs[i])
            if not np.allclose(got, want[i], rtol=1e-4, atol=1e-5):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_an_affine_subclass_or_a_custom_layer_is_not_planned():
    class MyAffine(Affine):
        pass

    net = TwoLayerNet(13, 9, 5, seed=0)
    net.layers["Affine1"] = MyAffine(net.params["W1"], net.params["b1"])
    x, _ = _batch(13, 3, np.float64, 5)
    net.predict(x)
    assert not any(isinstance(p, _plan.DensePlan) for p in net._plans.values())
