"""Two drop-in contracts of the softmax cross-entropy loss, on both backends and through the layer
and the functional API.

1. Integer labels in non-native byte order (``np.array(labels).astype(">i8")`` on a little-endian
   machine), of any integer dtype, as (N,) labels or an (N, 1) column, give exactly what the same
   labels in native order give: the loss, ``y``, and the gradient (fused on the numba backend or
   computed afresh). Before the fix, ``SoftmaxWithLoss.backward`` handed such labels to the compiled
   label comparison, which Numba cannot type.
2. Integer one-hot targets with float32 scores: the gradient is float64 (NumPy's ``(y - t) / N``),
   and its values are those of the difference taken in float64 from the float32 ``y``, within float64
   rounding, not a float32 difference widened afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F
from fastlayers._kernels import loss as kernels
from fastlayers.functional._checks import compute_dtype

from .conftest import assert_close

BACKENDS = ("numba", "numpy")
N, C = 7, 5
LABELS = np.array([0, 4, 2, 1, 3, 4, 0])
#: the integer dtypes of the labels, taken in the byte order that is not the machine's
LABEL_DTYPES = [np.int64, np.int32, np.uint16, np.int8, np.uint64]
SHAPES = [(N,), (N, 1)]
#: exact comparisons: same backend, same arithmetic
EXACT = {"rtol": 0.0, "atol": 0.0}
#: float64 rounding: the gradient against the float64 expression it must equal
F64_ROUNDING = {"rtol": 1e-15, "atol": 1e-17}


def _swapped(dtype) -> np.dtype:
    """``dtype`` in the byte order that is not the machine's (big-endian on x86 and ARM)."""
    dt = np.dtype(dtype)
    return dt if dt.itemsize == 1 else dt.newbyteorder("S")


def _scores(dtype=np.float64, n=N, c=C, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, c)) * 3).astype(dtype)


def _labels(dtype, shape, swap=True) -> np.ndarray:
    t = LABELS.astype(_swapped(dtype) if swap else dtype).reshape(shape)
    if swap and np.dtype(dtype).itemsize > 1:
        assert not t.dtype.isnative
    return t


def _layer_run(x, t) -> list:
    """loss, y, the gradient for dout = 1 (fused on numba) and for dout = 2 (computed afresh)."""
    layer = fl.SoftmaxWithLoss()
    loss = layer.forward(x, t)
    y = layer.y.copy()
    dx1 = layer.backward().copy()
    dx2 = layer.backward(2.0).copy()
    assert layer.t is t  # kept by reference, as the classic code does
    return [loss, y, dx1, dx2]


def _assert_same(actual: list, desired: list) -> None:
    for a, d in zip(actual, desired, strict=True):
        a, d = np.asarray(a), np.asarray(d)
        assert a.dtype == d.dtype and a.shape == d.shape, (a.dtype, d.dtype, a.shape, d.shape)
        np.testing.assert_allclose(a, d, **EXACT)


# --------------------------------------------------------------------------------------------
# defect 1: non-native integer labels
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xdtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ldtype", LABEL_DTYPES)
def test_non_native_labels_layer_equal_native(backend, xdtype, shape, ldtype):
    x = _scores(xdtype)
    with fl.use_backend(backend):
        got = _layer_run(x, _labels(ldtype, shape))
        want = _layer_run(x, _labels(np.int64, shape, swap=False))
    _assert_same(got, want)
    assert got[0].dtype == xdtype and got[2].dtype == xdtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ldtype", [np.int64, np.int32, np.uint16])
def test_non_native_labels_literal_big_endian(backend, shape, ldtype):
    """The labels spelled as a user would: ``astype('>i8')`` and so on, whatever the machine."""
    x = _scores(np.float32)
    t = LABELS.astype(np.dtype(ldtype).newbyteorder(">")).reshape(shape)
    with fl.use_backend(backend):
        got = _layer_run(x, t)
        want = _layer_run(x, LABELS.reshape(shape))
    _assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ldtype", LABEL_DTYPES)
def test_non_native_labels_functional_equal_native(backend, shape, ldtype):
    x = _scores(np.float32)
    t, native = _labels(ldtype, shape), _labels(np.int64, shape, swap=False)
    with fl.use_backend(backend):
        results = []
        for labels in (t, native):
            loss, y = F.softmax_cross_entropy_forward(x, labels)
            results.append(
                [
                    loss,
                    y,
                    F.softmax_cross_entropy_backward(y, labels),
                    F.softmax_cross_entropy_backward(y, labels, np.float64(0.5)),
                    F.cross_entropy_error(y, labels),
                ]
            )
    _assert_same(*results)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_native_labels_match_the_reference(backend):
    """Not only equal to native labels: equal to the classic NumPy expressions."""
    x = _scores(np.float64)
    t = _labels(np.int32, (N,))
    layer = fl.SoftmaxWithLoss()
    with fl.use_backend(backend):
        loss = layer.forward(x, t)
        dx = layer.backward()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    want_dx = y.copy()
    want_dx[np.arange(N), LABELS] -= 1
    assert_close(loss, -np.mean(np.log(y[np.arange(N), LABELS])), "sum", N)
    assert_close(dx, want_dx / N, "row", C)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_native_labels_strided(backend):
    x = _scores(np.float64)
    base = np.zeros(2 * N, _swapped(np.int64))
    base[::2] = LABELS
    with fl.use_backend(backend):
        got = _layer_run(x, base[::2])
        want = _layer_run(x, LABELS.copy())
    _assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_native_scalar_label_for_one_row(backend):
    y = np.array([0.1, 0.7, 0.2])
    with fl.use_backend(backend):
        got = F.cross_entropy_error(y, np.array(1, _swapped(np.int64)))
        want = F.cross_entropy_error(y, 1)
    assert got == want and got.dtype == want.dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_non_native_labels_changed_before_backward(backend, shape):
    """The layer keeps ``t`` by reference: labels rewritten in place between forward and backward
    are the ones backward uses, in either byte order (the fused gradient is then not handed over)."""
    x = _scores(np.float32)
    t = _labels(np.int64, shape)
    new = LABELS[::-1].copy()
    with fl.use_backend(backend):
        layer = fl.SoftmaxWithLoss()
        layer.forward(x, t)
        t[...] = new.reshape(shape)
        got = layer.backward()
        want = F.softmax_cross_entropy_backward(layer.y, new)
    _assert_same([got], [want])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_non_native_labels_out_of_range(backend, shape):
    x = _scores(np.float64)
    bad = LABELS.copy()
    bad[2] = C
    t = bad.astype(_swapped(np.int32)).reshape(shape)
    with fl.use_backend(backend):
        with pytest.raises(ValueError, match=rf"t holds labels outside \[0, {C}\): min 0, max {C}"):
            fl.SoftmaxWithLoss().forward(x, t)
        with pytest.raises(ValueError, match=r"t holds labels outside"):
            F.softmax_cross_entropy_forward(x, t)
        with pytest.raises(ValueError, match=r"t holds labels outside"):
            F.softmax_cross_entropy_backward(np.full((N, C), 1 / C), t)
        layer = fl.SoftmaxWithLoss()
        good = LABELS.astype(_swapped(np.int32)).reshape(shape)
        layer.forward(x, good)
        good[...] = t  # refilled out of range before backward: checked again there
        with pytest.raises(ValueError, match=r"t holds labels outside"):
            layer.backward()


def test_non_native_labels_fused_gradient_handed_over():
    """On the numba backend the gradient computed in forward is what backward() returns, also for
    non-native labels (the labels are compared through a native copy)."""
    x = _scores(np.float32)
    layer = fl.SoftmaxWithLoss()
    layer.forward(x, _labels(np.int64, (N,)))
    fused = layer._dx
    assert fused is not None
    assert layer.backward() is fused


def test_labels_in_range_takes_non_native_labels():
    """The private copy is made and range-checked whatever the byte order of the caller's labels."""
    t = LABELS.astype(_swapped(np.int64))
    labels = F.loss._labels_in_range(t, C, "t")
    assert labels.dtype == np.int64 and labels.dtype.isnative
    assert not np.may_share_memory(labels, t)
    np.testing.assert_array_equal(labels, LABELS)
    assert kernels.labels_equal(labels, LABELS)


# --------------------------------------------------------------------------------------------
# defect 2: integer one-hot targets with float32 scores
# --------------------------------------------------------------------------------------------
def _onehot(n, c, dtype, seed=1) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, c, n)
    return np.eye(c, dtype=dtype)[labels]


#: the small case, and one above the parallel threshold of the gradient kernels
SIZES = [(N, C), (520, 512)]
assert 520 * 512 >= kernels.MEMORY_BOUND_MIN


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, c", SIZES)
@pytest.mark.parametrize("tdtype", [int, np.int32, _swapped(np.int64)])
def test_integer_onehot_float32_scores_layer(backend, n, c, tdtype):
    x = _scores(np.float32, n, c)
    t = _onehot(n, c, tdtype)
    with fl.use_backend(backend):
        layer = fl.SoftmaxWithLoss()
        layer.forward(x, t)
        dx = layer.backward()
    y = layer.y
    assert y.dtype == np.float32
    assert dx.dtype == np.float64 == ((y - t) / n).dtype
    np.testing.assert_allclose(dx, (y.astype(np.float64) - t) / n, **F64_ROUNDING)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, c", SIZES)
@pytest.mark.parametrize("dout", [1, 2.0, np.float64(0.5)])
def test_integer_onehot_float32_scores_functional(backend, n, c, dout):
    y = F.softmax(_scores(np.float32, n, c))
    t = _onehot(n, c, np.int64)
    with fl.use_backend(backend):
        dx = F.softmax_cross_entropy_backward(y, t, dout)
    assert dx.dtype == np.float64
    np.testing.assert_allclose(dx, float(dout) * (y.astype(np.float64) - t) / n, **F64_ROUNDING)


@pytest.mark.parametrize("n, c", SIZES)
def test_integer_onehot_backends_agree(n, c):
    x = _scores(np.float32, n, c)
    t = _onehot(n, c, np.int64)
    y = F.softmax(x)
    grads = []
    for backend in BACKENDS:
        with fl.use_backend(backend):
            grads.append(F.softmax_cross_entropy_backward(y, t))
    assert grads[0].dtype == grads[1].dtype == np.float64
    np.testing.assert_allclose(grads[0], grads[1], **F64_ROUNDING)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_targets_stay_float32(backend):
    """Float32 scores with float32 one-hot rows (or labels) keep the float32 result."""
    x = _scores(np.float32)
    for t in (_onehot(N, C, np.float32), LABELS):
        with fl.use_backend(backend):
            layer = fl.SoftmaxWithLoss()
            layer.forward(x, t)
            dx = layer.backward()
        assert dx.dtype == np.float32
        onehot = t if t.ndim == 2 else np.eye(C, dtype=np.float32)[t]
        assert_close(dx, (layer.y - onehot) / np.float32(N), "row", C)


def test_dtype_rule_counts_integer_targets_not_labels():
    """NumPy's result_type: integer target rows widen float32 as NumPy does (int64 and int32 to
    float64, int8/uint8/bool not); labels never enter the rule."""
    y = np.zeros((N, C), np.float32)
    assert compute_dtype(y=y, t=np.zeros((N, C), np.int64), dout=1) == np.float64
    assert compute_dtype(y=y, t=np.zeros((N, C), np.int32), dout=1) == np.float64
    assert compute_dtype(y=y, t=np.zeros((N, C), _swapped(np.int64)), dout=1) == np.float64
    assert compute_dtype(y=y, t=np.zeros((N, C), np.uint8), dout=1) == np.float32
    assert compute_dtype(y=y, dout=1) == np.float32
    yy = F.softmax(_scores(np.float32))
    assert F.softmax_cross_entropy_backward(yy, LABELS).dtype == np.float32
    assert F.softmax_cross_entropy_backward(yy, _labels(np.int64, (N,))).dtype == np.float32
    assert F.softmax_cross_entropy_backward(yy, _onehot(N, C, np.uint8)).dtype == np.float32
