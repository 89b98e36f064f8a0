"""The dtype rule (NumPy's) and array-likes, for every entry point: layers, functions, optimizers.

Each entry point is compared with the plain NumPy expression of the classic code for the same
operands: same dtype (float16 -> float32 and integer-only -> float64 being the two documented
departures) and the same values within the tolerance of the dtype computed in.
"""

from __future__ import annotations

import array
import itertools

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import datasets
from fastlayers import functional as F

from .conftest import assert_close

RNG = np.random.default_rng(7)
N, D, M = 5, 4, 3
DTYPES = [np.float16, np.float32, np.float64, np.int64, np.uint8]
FLOATS = [np.float32, np.float64]


def _expected(dt) -> np.dtype:
    dt = np.dtype(dt)
    if dt.kind != "f":
        return np.dtype(np.float64)
    return np.dtype(np.float32) if dt.itemsize < 4 else dt


def _data(shape, dtype, positive=False):
    v = RNG.standard_normal(shape) * 2
    if positive:
        v = np.abs(v) + 0.1
    if np.dtype(dtype).kind in "iu":
        v = np.abs(v) * 3
    return v.astype(dtype)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# entry point -> (operand shapes, our call, the classic NumPy expression)
CASES = {
    "relu": (
        [(N, D)],
        lambda x: F.relu_forward(x),
        lambda x: np.maximum(x, 0),
    ),
    "relu_layer": (
        [(N, D)],
        lambda x: fl.Relu().forward(x),
        lambda x: np.maximum(x, 0),
    ),
    "sigmoid": (
        [(N, D)],
        lambda x: fl.Sigmoid().forward(x),
        lambda x: 1 / (1 + np.exp(-x)),
    ),
    "relu_backward": (
        [(N, D), (N, D)],
        lambda dout, y: F.relu_backward(dout, y),
        lambda dout, y: np.where(y > 0, dout, 0),
    ),
    "sigmoid_backward": (
        [(N, D), (N, D)],
        lambda dout, y: F.sigmoid_backward(dout, y),
        lambda dout, y: dout * (1.0 - y) * y,
    ),
    "affine": (
        [(N, D), (D, M), (M,)],
        lambda x, W, b: fl.Affine(W, b).forward(x),
        lambda x, W, b: np.dot(x, W) + b,
    ),
    "affine_functional": (
        [(N, D), (D, M), (M,)],
        lambda x, W, b: F.affine_forward(x, W, b),
        lambda x, W, b: np.dot(x, W) + b,
    ),
    "affine_backward": (
        [(N, M), (N, D), (D, M)],
        lambda dout, x, W: F.affine_backward(dout, x, W),
        lambda dout, x, W: (np.dot(dout, W.T), np.dot(x.T, dout), np.sum(dout, axis=0)),
    ),
    "softmax": (
        [(N, M)],
        lambda x: F.softmax(x),
        _softmax,
    ),
    "loss_rows": (
        [(N, M), (N, M)],
        lambda x, t: fl.SoftmaxWithLoss().forward(x, t),
        # the classic loss turns one-hot rows into labels: the loss has the dtype of softmax(x)
        lambda x, t: -np.sum(np.log(_softmax(x)[np.arange(N), t.argmax(axis=1)])) / N,
    ),
    "loss_rows_backward": (
        [(N, M), (N, M)],
        lambda x, t: _loss_backward(x, t),
        lambda x, t: (_softmax(x) - t) / N,
    ),
}


def _loss_backward(x, t):
    layer = fl.SoftmaxWithLoss()
    layer.forward(x, t)
    return layer.backward()


def _onehot(dtype):
    rows = np.zeros((N, M))
    rows[np.arange(N), RNG.integers(0, M, N)] = 1
    return rows.astype(dtype)


def _combos(n_operands: int):
    if n_operands == 1:
        return [(d,) for d in DTYPES]
    # every pair of float dtypes and each float dtype with each integer one, in every position
    combos = set(itertools.product(FLOATS + [np.float16], repeat=n_operands))
    combos |= {tuple(np.int64 if i == k else f for i in range(n_operands)) for f in FLOATS for k in range(n_operands)}
    return sorted(combos, key=str)


def _params():
    for name, (shapes, _, _) in CASES.items():
        for combo in _combos(len(shapes)):
            if name.startswith("loss") and np.dtype(combo[0]).kind != "f":
                continue  # integer scores: the classic softmax of ints is float64 too, covered by softmax
            yield pytest.param(name, combo, id=f"{name}-{'-'.join(np.dtype(d).name for d in combo)}")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("name,dtypes", list(_params()))
def test_dtype_rule_is_numpys(name, dtypes, backend):
    shapes, ours, classic = CASES[name]
    operands = []
    for shape, dt in zip(shapes, dtypes, strict=True):
        if name.startswith("loss") and len(operands) == 1:
            operands.append(_onehot(dt))
        else:
            operands.append(_data(shape, dt, positive=name.startswith("sigmoid_b")))
    integers_only = all(np.dtype(d).kind != "f" for d in dtypes)
    with np.errstate(all="ignore"):
        want = classic(*operands)
        # values: NumPy rounds some intermediate steps in the narrower dtype (``1.0 - y`` of a float32 y
        # before multiplying by float64), so compare at the precision of the narrowest float operand,
        # and integer-only calls with the expression computed in float64
        floats = [np.dtype(d) for d in dtypes if np.dtype(d).kind == "f"]
        tol_dtype = min(floats, key=lambda d: d.itemsize) if floats else np.dtype(np.float64)
        if integers_only:
            want_values = classic(*[o.astype(np.float64) for o in operands])
        else:
            want_values = want
    with fl.use_backend(backend):
        got = ours(*operands)
    want = want if isinstance(want, tuple) else (want,)
    want_values = want_values if isinstance(want_values, tuple) else (want_values,)
    got = got if isinstance(got, tuple) else (got,)
    for g, w, wv in zip(got, want, want_values, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        expected = np.dtype(np.float64) if integers_only else _expected(w.dtype)
        assert g.dtype == expected, (name, dtypes, g.dtype, w.dtype)
        if tol_dtype == np.float16:
            np.testing.assert_allclose(g, np.asarray(wv, np.float64), rtol=4e-3, atol=4e-3)
            continue
        kind = "row" if name.startswith(("softmax", "loss")) else "sum" if "affine" in name else "ulp"
        assert_close(g.astype(tol_dtype), np.asarray(wv).astype(tol_dtype), kind, n=max(N, D))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_book_mix_float32_images_float64_weights(backend):
    """The book's chapter 5 mix: float32 images, float64 weights and one-hot targets: all float64."""
    x = RNG.random((N, D)).astype(np.float32)
    W1, b1 = 0.01 * RNG.standard_normal((D, 6)), np.zeros(6)
    W2, b2 = 0.01 * RNG.standard_normal((6, M)), np.zeros(M)
    t = _onehot(np.float64)
    with fl.use_backend(backend):
        a1, r, a2, last = fl.Affine(W1, b1), fl.Relu(), fl.Affine(W2, b2), fl.SoftmaxWithLoss()
        loss = last.forward(a2.forward(r.forward(a1.forward(x))), t)
        dx = a1.backward(r.backward(a2.backward(last.backward(1))))
    assert loss.dtype == np.float64 and dx.dtype == np.float64 and a1.dW.dtype == np.float64
    assert a1.x.dtype == np.float64, "the layer keeps x as it computed with it, converted once"
    assert a2.x is r.out, "without a conversion, x is the caller's array, as in the classic code"
    h = np.maximum(x @ W1 + b1, 0)
    y = _softmax(h @ W2 + b2)
    assert loss == pytest.approx(-np.sum(t * np.log(y)) / N, rel=1e-12)
    g = (y - t) / N
    dh = (g @ W2.T) * (h > 0)
    np.testing.assert_allclose(a1.dW, x.T.astype(np.float64) @ dh, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(dx, dh @ W1.T, rtol=1e-10, atol=1e-15)


def test_float32_stays_float32_end_to_end():
    x = RNG.random((N, D)).astype(np.float32)
    W, b = RNG.standard_normal((D, M)).astype(np.float32), np.zeros(M, np.float32)
    layer, last = fl.Affine(W, b), fl.SoftmaxWithLoss()
    loss = last.forward(layer.forward(x), np.arange(N) % M)
    dx = layer.backward(last.backward())
    assert {loss.dtype, dx.dtype, layer.dW.dtype, layer.db.dtype, last.y.dtype} == {np.dtype(np.float32)}


def test_dout_scalar_follows_nep50():
    y = _softmax(RNG.standard_normal((N, M))).astype(np.float32)
    t = np.arange(N) % M
    assert F.softmax_cross_entropy_backward(y, t, 2.0).dtype == np.float32  # a Python float is weak
    assert F.softmax_cross_entropy_backward(y, t, 2).dtype == np.float32
    assert F.softmax_cross_entropy_backward(y, t, np.float64(2.0)).dtype == np.float64  # a NumPy scalar counts
    assert F.softmax_cross_entropy_backward(y, t, np.float32(2.0)).dtype == np.float32
    layer = fl.SoftmaxWithLoss()
    layer.forward(y, t)
    assert layer.backward(np.float64(1.0)).dtype == np.float64
    layer.forward(y, t)
    assert layer.backward(1).dtype == np.float32


def test_optimizer_writes_in_the_parameters_dtype():
    p32 = np.ones(4, np.float32)
    g64 = np.full(4, 0.5)
    want = p32.copy()
    want -= 0.1 * g64  # NumPy's in-place rule: computed, then cast into the float32 parameter
    fl.SGD(lr=0.1).update({"W": p32}, {"W": g64})
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, want, rtol=1e-7)
    p16 = np.ones(3, np.float16)
    fl.Momentum(lr=0.1).update({"W": p16}, {"W": np.ones(3)})
    assert p16.dtype == np.float16 and np.all(p16 == np.float16(0.9))


def test_nets_agree_with_the_data():
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn (the train extra)")
    (x, t), _ = datasets.load_digits()
    (x1, t1), _ = datasets.load_digits(one_hot_label=True)
    assert x.dtype == np.float32
    for dtype, data_t in itertools.product([np.float32, np.float64], [t[:20], t1[:20]]):
        net = fl.TwoLayerNet(64, 10, 10, dtype=dtype, seed=0)
        loss = net.loss(x[:20], data_t)
        grads = net.gradient(x[:20], data_t)
        assert loss.dtype == dtype and grads["W1"].dtype == dtype
        assert 0 <= net.accuracy(x[:20], data_t) <= 1
    multi = fl.MultiLayerNet(64, [8], 10, weight_decay_lambda=0.1, seed=0)
    assert multi.loss(x[:20], t[:20]).dtype == np.float64  # float64 weights (the book's default) win
    assert multi.gradient(x[:20], t[:20])["W1"].dtype == np.float64


# --------------------------------------------------------------------------------------------
# array-likes: each gives what np.asarray gives for it
# --------------------------------------------------------------------------------------------
class _ArrayLike:
    """An object with ``__array__`` only (what a CPU torch tensor offers NumPy)."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class _RequiresGrad(_ArrayLike):
    requires_grad = True

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")


def _forms(a: np.ndarray, tmp_path) -> dict:
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=a.dtype, shape=a.shape)
    mm[...] = a
    ro = a.copy()
    ro.setflags(write=False)
    forms = {
        "list": a.tolist(),
        "tuple": tuple(map(tuple, a.tolist())) if a.ndim == 2 else tuple(a.tolist()),
        "array_like": _ArrayLike(a),
        "memmap": mm,
        "read_only": ro,
        "big_endian": a.astype(a.dtype.newbyteorder(">")),
        "masked": np.ma.masked_array(a, mask=False),
        "F_order": np.asfortranarray(a),
    }
    if a.ndim == 2:
        forms["matrix"] = np.asmatrix(a)
    if a.ndim == 1:
        forms["array.array"] = array.array("d" if a.dtype == np.float64 else "f", a.tolist())
    return forms


def _calls():
    x = RNG.standard_normal((N, D)).astype(np.float32)
    W, b = RNG.standard_normal((D, M)).astype(np.float32), np.zeros(M, np.float32)
    t = RNG.integers(0, D, N)
    return {
        "relu": (x, lambda a: F.relu_forward(a)),
        "relu_layer": (x, lambda a: fl.Relu().forward(a)),
        "sigmoid_layer": (x, lambda a: fl.Sigmoid().forward(a)),
        "relu_backward": (x, lambda a: F.relu_backward(a, x)),
        "affine_layer": (x, lambda a: fl.Affine(W, b).forward(a)),
        "affine_functional": (x, lambda a: F.affine_forward(a, W, b)),
        "affine_backward": (x, lambda a: F.affine_backward(np.ones((N, M), np.float32), a, W)),
        "softmax": (x, lambda a: F.softmax(a)),
        "loss_layer": (x, lambda a: fl.SoftmaxWithLoss().forward(a, t)),
        "loss_functional": (x, lambda a: F.softmax_cross_entropy_forward(a, t)),
        "cross_entropy": (np.abs(x) + 0.1, lambda a: F.cross_entropy_error(a, t)),
        "bias_1d": (b + 1, lambda a: fl.Affine(W, np.zeros(M, np.float32)).forward(x) + 0 * F.relu_forward(a)),
    }


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("call", list(_calls()))
def test_array_likes_give_what_asarray_gives(call, backend, tmp_path):
    a, fn = _calls()[call]
    with fl.use_backend(backend):
        for form, value in _forms(a, tmp_path).items():
            plain = np.asarray(value.data if isinstance(value, np.ma.MaskedArray) else value)
            want = fn(plain.astype(plain.dtype.newbyteorder("=")))
            got = fn(value)
            pairs = zip(
                got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,), strict=True
            )
            for g, w in pairs:
                assert type(g) is type(w), (call, form, type(g), type(w))  # plain ndarrays, NumPy scalars
                assert np.asarray(g).dtype == np.asarray(w).dtype, (call, form)
                np.testing.assert_array_equal(g, w, err_msg=f"{call} {form}")
    lst = fn(a.tolist())  # a list of Python floats is float64 to NumPy, and so is what it enters
    if call == "affine_backward":
        assert [r.dtype for r in lst] == [np.float32, np.float64, np.float32]  # dx, dW = x.T @ dout, db
    elif call != "bias_1d":
        assert all(np.asarray(r).dtype == np.float64 for r in (lst if isinstance(lst, tuple) else (lst,)))


def test_torch_tensor_requiring_grad_gets_a_clear_error():
    with pytest.raises(TypeError, match=r"x is a tensor that requires grad; pass x.detach\(\)"):
        fl.Relu().forward(_RequiresGrad(np.ones(3)))
    with pytest.raises(TypeError, match=r"x is a tensor that requires grad"):
        fl.Affine(np.ones((2, 2)), np.zeros(2)).forward(_RequiresGrad(np.ones((2, 2))))
    with pytest.raises(TypeError, match=r"t is a tensor that requires grad"):
        fl.SoftmaxWithLoss().forward(np.ones((2, 2)), _RequiresGrad(np.ones((2, 2))))


def test_masked_array_with_masked_entries_is_refused():
    a = np.ma.masked_array(np.ones((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match=r"x is a masked array with masked entries"):
        F.relu_forward(a)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_big_endian_equals_native(backend):
    x = RNG.standard_normal((N, M))
    t = np.arange(N) % M
    with fl.use_backend(backend):
        for dt in (">f4", ">f8"):
            big = x.astype(dt)
            native = big.astype(np.dtype(dt).newbyteorder("="))
            assert np.array_equal(fl.Sigmoid().forward(big), fl.Sigmoid().forward(native))
            assert fl.SoftmaxWithLoss().forward(big, t.astype(">i8")) == fl.SoftmaxWithLoss().forward(native, t)
            assert fl.Affine(np.ones((M, 2)), np.zeros(2)).forward(big).dtype == np.float64


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("labels_dtype", [np.uint8, np.int32, np.int64])
def test_label_column_works_like_labels(backend, labels_dtype):
    x = RNG.standard_normal((N, M))
    t = (np.arange(N) % M).astype(labels_dtype)
    with fl.use_backend(backend):
        a, b = fl.SoftmaxWithLoss(), fl.SoftmaxWithLoss()
        assert a.forward(x, t.reshape(N, 1)) == b.forward(x, t)
        np.testing.assert_array_equal(a.backward(), b.backward())
        assert F.cross_entropy_error(_softmax(x), t.reshape(N, 1)) == F.cross_entropy_error(_softmax(x), t)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_real_torch_tensors(backend):
    """CPU tensors go through ``__array__`` like any array-like (PyTorch is optional: skipped without)."""
    torch = pytest.importorskip("torch")
    x = torch.linspace(-2, 2, 12, dtype=torch.float32).reshape(4, 3)
    W, b = np.ones((3, 2), np.float32), np.zeros(2, np.float32)
    with fl.use_backend(backend):
        h = fl.Relu().forward(x)
        assert h.dtype == np.float32 and type(h) is np.ndarray
        assert fl.Affine(W, b).forward(fl.Relu().forward(x)).dtype == np.float32  # as np.asarray(x) @ W + b
        assert fl.Affine(np.ones((3, 2)), np.zeros(2)).forward(x).dtype == np.float64
        loss = fl.SoftmaxWithLoss().forward(x, torch.tensor([0, 1, 2, 0]))
        assert loss.dtype == np.float32
        with pytest.raises(TypeError, match=r"x is a tensor that requires grad; pass x.detach\(\)"):
            fl.Sigmoid().forward(x.clone().requires_grad_(True))
