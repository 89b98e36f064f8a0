"""The compiled path equals the NumPy reference path, for every function, forward and backward.

Each case calls the public functional API twice, once per backend; the ``"numpy"`` backend runs
:mod:`fastlayers.reference`. Cases cover float32 and float64, shapes from 1x1 to thousands (odd and
prime sizes), C, Fortran and strided layouts, labels and one-hot targets, and N-D inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastlayers
from fastlayers import functional as F

from .conftest import DTYPES, LAYOUTS, assert_close, layout

SHAPES_2D = [(1, 1), (1, 7), (7, 1), (3, 5), (100, 50), (100, 10), (37, 1031), (257, 263), (2, 70001), (4099, 3)]
SHAPES_ND = [(5,), (2, 3, 4), (3, 1, 5, 7), (16, 3, 32, 33)]


def both(fn, *args, **kwargs):
    """(numba result, numpy result) of the same call."""
    fast = fn(*args, **kwargs)
    with fastlayers.use_backend("numpy"):
        ref = fn(*args, **kwargs)
    return fast, ref


def onehot(labels, c, dtype):
    t = np.zeros((labels.size, c), dtype)
    t[np.arange(labels.size), labels] = 1
    return t


def data(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D + SHAPES_ND)
@pytest.mark.parametrize("lay", LAYOUTS)
def test_elementwise(dtype, shape, lay):
    x = layout(data(shape, dtype), lay)
    dout = layout(data(shape, dtype, seed=1), lay)
    fwd, ref = both(F.relu_forward, x)
    assert_close(fwd, ref, "exact")
    assert_close(*both(F.relu_backward, dout, fwd), "exact")
    sfwd, sref = both(F.sigmoid_forward, x)
    assert_close(sfwd, sref, "ulp")
    assert_close(*both(F.sigmoid_backward, dout, sfwd), "ulp")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D + [(13,), (1,)])
@pytest.mark.parametrize("lay", LAYOUTS)
def test_softmax(dtype, shape, lay):
    x = layout(data(shape, dtype, scale=10.0), lay)
    assert_close(*both(F.softmax, x), "row", n=shape[-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("target", ["labels", "onehot", "probs"])
def test_softmax_cross_entropy(dtype, shape, lay, target):
    n, c = shape
    x = layout(data(shape, dtype, scale=5.0), lay)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, c, n)
    if target == "labels":
        t = labels
    elif target == "onehot":
        t = layout(onehot(labels, c, dtype), lay)
    else:
        p = rng.random(shape).astype(dtype)
        t = layout(p / p.sum(axis=1, keepdims=True), lay)
    (loss, y), (rloss, ry) = both(F.softmax_cross_entropy_forward, x, t)
    assert_close(loss, rloss, "sum", n=n + c)
    assert_close(y, ry, "row", n=c)
    for dout in (1.0, 0.37):
        assert_close(*both(F.softmax_cross_entropy_backward, y, t, dout), "row", n=c)
    yp = F.softmax(x)
    assert_close(*both(F.cross_entropy_error, yp, t), "sum", n=n + c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "xshape,m",
    [((1, 1), 1), ((100, 784), 50), ((100, 50), 10), ((7, 3, 5, 5), 11), ((257, 129), 263), ((3, 1000), 1030)],
)
@pytest.mark.parametrize("lay", LAYOUTS)
def test_affine(dtype, xshape, m, lay):
    x = layout(data(xshape, dtype), lay)
    d = int(np.prod(xshape[1:]))
    W = layout(data((d, m), dtype, seed=3), lay)
    b = data((m,), dtype, seed=4)
    out, ref = both(F.affine_forward, x, W, b)
    assert_close(out, ref, "sum", n=d)
    dout = layout(data((xshape[0], m), dtype, seed=5), lay)
    fast, ref = both(F.affine_backward, dout, x, W)
    for got, want, n in zip(fast, ref, (m, xshape[0], xshape[0]), strict=True):
        assert_close(got, want, "sum", n=n)
    dx, _, db = F.affine_backward(dout, x, W)
    assert dx.shape == x.shape and db.shape == (m,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    """NaN, +-inf, huge and subnormal values behave as in the reference."""
    info = np.finfo(dtype)
    vals = np.array(
        [
            np.nan,
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            info.max,
            -info.max,
            info.tiny,
            -info.smallest_subnormal,
            1e4,
            -1e4,
            30.0,
            -30.0,
            88.0,
            -88.0,
            700.0,
            -700.0,
            745.0,
            -746.0,
        ],
        dtype=dtype,
    )
    x = np.tile(vals, (3, 1))
    assert_close(*both(F.relu_forward, x), "exact")
    assert_close(*both(F.sigmoid_forward, x), "ulp")
    assert_close(*both(F.softmax, x), "row", n=vals.size)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=40),
        elements={"allow_nan": True, "allow_infinity": True},
    )
)
def test_elementwise_property(x):
    fwd, ref = both(F.relu_forward, x)
    assert_close(fwd, ref, "exact")
    assert_close(*both(F.relu_backward, x, fwd), "exact")
    assert_close(*both(F.sigmoid_forward, x), "ulp")


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(DTYPES),
    st.integers(1, 60),
    st.integers(1, 60),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_softmax_loss_property(dtype, n, c, seed, labels):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * rng.uniform(0.1, 50)).astype(dtype)
    lab = rng.integers(0, c, n)
    t = lab if labels else onehot(lab, c, dtype)
    (loss, y), (rloss, ry) = both(F.softmax_cross_entropy_forward, x, t)
    assert_close(loss, rloss, "sum", n=n + c)
    assert_close(y, ry, "row", n=c)
    assert_close(*both(F.softmax_cross_entropy_backward, y, t, 2.0), "row", n=c)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(1, 50), st.integers(1, 50), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_affine_property(dtype, n, d, m, seed):
    x, W, b = data((n, d), dtype, seed), data((d, m), dtype, seed + 1), data((m,), dtype, seed + 2)
    assert_close(*both(F.affine_forward, x, W, b), "sum", n=d)
    dout = data((n, m), dtype, seed + 3)
    fast, ref = both(F.affine_backward, dout, x, W)
    for got, want in zip(fast, ref, strict=True):
        assert_close(got, want, "sum", n=max(n, m))


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers(dtype):
    """``out=`` gives the same values as allocation, in place and into strided buffers."""
    x = data((64, 33), dtype)
    expected = F.sigmoid_forward(x)
    buf = np.empty_like(x)
    assert F.sigmoid_forward(x, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    strided = np.empty((128, 33), dtype)[::2]
    F.sigmoid_forward(x, out=strided)
    np.testing.assert_array_equal(strided, expected)
    inplace = x.copy()
    F.relu_forward(inplace, out=inplace)
    np.testing.assert_array_equal(inplace, F.relu_forward(x))
    overlap = np.concatenate([x.ravel(), np.zeros(1, dtype)])
    src = overlap[:-1].reshape(x.shape)
    dst = overlap[1:].reshape(x.shape)
    F.relu_forward(src, out=dst)
    np.testing.assert_array_equal(dst, F.relu_forward(x))
    y = F.softmax(x)
    sbuf = np.empty_like(x)
    assert F.softmax(x, out=sbuf) is sbuf
    np.testing.assert_array_equal(sbuf, y)
    W, b = data((33, 5), dtype), data((5,), dtype)
    o = np.empty((64, 5), dtype)
    assert F.affine_forward(x, W, b, out=o) is o
    np.testing.assert_array_equal(o, F.affine_forward(x, W, b))
    dout = data((64, 5), dtype)
    bufs = (np.empty_like(x), np.empty_like(W), np.empty_like(b))
    res = F.affine_backward(dout, x, W, *bufs)
    for r, buf_, want in zip(res, bufs, F.affine_backward(dout, x, W), strict=True):
        assert r is buf_
        np.testing.assert_array_equal(r, want)
    t = np.arange(64) % 33
    g = np.empty_like(x)
    assert F.softmax_cross_entropy_backward(y, t, out=g) is g
    np.testing.assert_array_equal(g, F.softmax_cross_entropy_backward(y, t))


def twin_args(name, dtype, rng):
    """Arguments for one kernel: inputs of a size that takes several blocks or rows, then outputs."""
    flat = rng.standard_normal(100_003).astype(dtype)
    rows = rng.standard_normal((301, 257)).astype(dtype)
    labels = rng.integers(0, 257, 301)
    table = {
        "relu_forward": (flat, np.empty_like(flat)),
        "sigmoid_forward": (flat, np.empty_like(flat)),
        "relu_backward": (flat, flat[::-1].copy(), np.empty_like(flat)),
        "sigmoid_backward": (flat, flat[::-1].copy(), np.empty_like(flat)),
        "bias_add": (rows, rows[0].copy()),
        "bias_grad": (rows, np.empty(257, dtype)),
        "softmax": (rows, np.empty_like(rows)),
        "softmax_xent_labels": (
            rows,
            labels,
            np.empty_like(rows),
            np.empty(301, dtype),
            True,
            np.empty_like(rows),
            dtype(0.5),
        ),
        "softmax_xent_probs": (
            rows,
            np.abs(rows),
            np.empty_like(rows),
            np.empty(301, dtype),
            True,
            np.empty_like(rows),
            dtype(0.5),
        ),
        "xent_grad_labels": (np.abs(rows), labels, dtype(0.5), np.empty_like(rows)),
    }
    return table[name]


@pytest.mark.parametrize(
    "name",
    [
        "relu_forward",
        "relu_backward",
        "sigmoid_forward",
        "sigmoid_backward",
        "bias_add",
        "bias_grad",
        "softmax",
        "softmax_xent_labels",
        "softmax_xent_probs",
        "xent_grad_labels",
    ],
)
def test_serial_and_parallel_twins_agree(name):
    """The serial twin (small inputs) and the parallel twin give bit-identical results."""
    from fastlayers._kernels import affine, elementwise
    from fastlayers._kernels import loss as softmax

    kernel = next(getattr(m, name) for m in (elementwise, affine, softmax) if hasattr(m, name))
    for dtype in DTYPES:
        args = twin_args(kernel.name, dtype, np.random.default_rng(7))
        args2 = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
        kernel.serial(*args)
        kernel.parallel(*args2)
        for a, b in zip(args, args2, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1000), (301, 257)])
def test_loss_kernel_gradient_equals_gradient_kernel(dtype, kind, shape):
    """The gradient the loss kernels write in their forward pass is bit-identical to what the
    gradient kernels compute from y, and asking for it changes neither y nor the loss."""
    from fastlayers._kernels import loss as softmax

    rng = np.random.default_rng(3)
    n, c = shape
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    t = rng.integers(0, c, n) if kind == "labels" else rng.dirichlet(np.ones(c), n).astype(dtype)
    loss_kernel = softmax.softmax_xent_labels if kind == "labels" else softmax.softmax_xent_probs
    grad_kernel = softmax.xent_grad_labels if kind == "labels" else softmax.xent_grad_probs
    scale = dtype(dtype(1) / dtype(n))
    for twin in ("serial", "parallel"):
        y, losses, g = np.empty_like(x), np.empty(n, dtype), np.empty_like(x)
        total = getattr(loss_kernel, twin)(x, t, y, losses, True, g, scale)
        y0, losses0 = np.empty_like(x), np.empty(n, dtype)
        total0 = getattr(loss_kernel, twin)(x, t, y0, losses0, False, np.empty((0, c), dtype), scale)
        want = np.empty_like(x)
        getattr(grad_kernel, twin)(y, t, scale, want)
        np.testing.assert_array_equal(g, want)
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(losses, losses0)
        assert total == total0
