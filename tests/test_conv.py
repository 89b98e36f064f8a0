"""Convolution, Pooling, im2col/col2im: against the reference path and against independent loops,
on both backends, float32 and float64, odd shapes, strides 1-3, padding 0-2, non-square filters,
C, Fortran and strided layouts; gradient checks; the classic layouts of the on-demand attributes;
results that do not depend on the thread count; what a caller may change between calls."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F
from fastlayers import reference as R
from fastlayers.functional import conv as C

from .conftest import DTYPES, LAYOUTS, assert_close, layout

#: (N, C, H, W, FN, FH, FW, stride, pad)
CONV = [
    (1, 1, 5, 5, 1, 5, 5, 1, 0),
    (2, 3, 9, 8, 4, 3, 2, 1, 0),
    (1, 3, 11, 9, 5, 3, 3, 2, 1),
    (3, 1, 7, 10, 2, 2, 3, 3, 2),
    (2, 3, 6, 7, 3, 1, 1, 1, 2),
    (3, 2, 13, 12, 6, 3, 3, 1, 1),
    # the input gradient on the rows tile (few channels, rows W + FW - 1 of whole vectors): in
    # both dtypes (32), in float64 only (16)
    (2, 1, 9, 28, 3, 5, 5, 1, 0),
    (2, 3, 7, 30, 2, 3, 3, 1, 1),
    (1, 2, 6, 14, 3, 3, 3, 1, 0),
]
#: (N, C, H, W, pool_h, pool_w, stride, pad)
POOL = [
    (2, 3, 8, 8, 2, 2, 2, 0),
    (2, 3, 9, 7, 2, 2, 2, 0),
    (1, 3, 11, 9, 3, 2, 1, 1),
    (3, 1, 7, 10, 3, 3, 2, 2),
    (2, 3, 16, 17, 2, 2, 2, 0),  # the 2x2 pooling's vectorized rows (8 outputs), a column left over
    (1, 2, 19, 40, 2, 2, 2, 0),  # and a row left over
]
BACKENDS = ["numba", "numpy"]


def _conv_loops(x, W, b, stride, pad):
    """The convolution as its definition, one output element at a time (float64)."""
    n, c, h, w = x.shape
    fn, _, fh, fw = W.shape
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + w] = x
    out = np.empty((n, fn, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + fh, j * stride : j * stride + fw]
            out[:, :, i, j] = np.tensordot(patch, W.astype(np.float64), axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def _data(spec, dtype, seed=0):
    n, c, h, w, fn, fh, fw, stride, pad = spec
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = rng.standard_normal((fn, c, fh, fw)).astype(dtype)
    b = rng.standard_normal(fn).astype(dtype)
    return x, W, b, stride, pad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", CONV, ids=str)
def test_convolution_layer_equals_the_definition(spec, dtype, backend):
    x, W, b, stride, pad = _data(spec, dtype)
    with fl.use_backend(backend):
        layer = fl.Convolution(W, b, stride, pad)
        out = layer.forward(x)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        dx = layer.backward(dout)
    k = W[0].size
    assert out.flags.c_contiguous and out.dtype == dtype
    assert_close(out, _conv_loops(x, W, b, stride, pad).astype(dtype), "sum", n=k)
    rdx, rdW, rdb = R.conv_backward(dout.astype(np.float64), x.astype(np.float64), W.astype(np.float64), stride, pad)
    assert_close(dx, rdx.astype(dtype), "sum", n=k)
    assert_close(layer.dW, rdW.astype(dtype), "sum", n=out.size // W.shape[0])
    assert_close(layer.db, rdb.astype(dtype), "sum", n=out.size // W.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_convolution_any_layout(dtype, kind):
    x, W, b, stride, pad = _data(CONV[2], dtype)
    want = fl.Convolution(W, b, stride, pad).forward(x)
    layer = fl.Convolution(layout(W, kind), layout(b, kind), stride, pad)
    got = layer.forward(layout(x, kind))
    np.testing.assert_array_equal(got, want)
    dout = np.ones_like(want)
    layer.backward(layout(dout, kind))
    ref = fl.Convolution(W, b, stride, pad)
    ref.forward(x)
    np.testing.assert_array_equal(layer.backward(dout), ref.backward(dout))
    np.testing.assert_array_equal(layer.dW, ref.dW)


def test_convolution_follows_numpys_dtype_rule():
    x, W, b, stride, pad = _data(CONV[1], np.float64)
    assert fl.Convolution(W.astype(np.float32), b.astype(np.float32)).forward(x.astype(np.float32)).dtype == np.float32
    # the book's mix: float32 images, float64 filters
    mixed = fl.Convolution(W, b).forward(x.astype(np.float32))
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(mixed, fl.Convolution(W, b).forward(x.astype(np.float32).astype(np.float64)))
    assert fl.Convolution(W, b).forward((x * 10).astype(np.uint8)).dtype == np.float64
    assert F.conv_forward(x.tolist(), W, b).dtype == np.float64
    half = F.conv_forward(x.astype(np.float16), W.astype(np.float16), b.astype(np.float16))
    assert half.dtype == np.float32  # float16 computed and returned as float32, the library's rule
    ints = F.conv_backward(np.ones_like(mixed), (x * 10).astype(np.int8), W)
    assert all(g.dtype == np.float64 for g in ints)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", CONV[1:4], ids=str)
def test_convolution_gradients(spec, backend):
    x, W, b, stride, pad = _data(spec, np.float64, seed=3)
    layer = fl.Convolution(W, b, stride, pad)
    with fl.use_backend(backend):
        weights = np.random.default_rng(4).standard_normal(layer.forward(x).shape)

        def f(_):
            return float((layer.forward(x) * weights).sum())

        f(None)
        dx = layer.backward(weights)
        dW, db = layer.dW.copy(), layer.db.copy()
        for value, grad in ((x, dx), (W, dW), (b, db)):
            np.testing.assert_allclose(grad, fl.numerical_gradient(f, value), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", CONV, ids=str)
def test_functional_conv_equals_reference(spec, dtype):
    x, W, b, stride, pad = _data(spec, dtype)
    out = F.conv_forward(x, W, b, stride, pad)
    with fl.use_backend("numpy"):
        want = F.conv_forward(x, W, b, stride, pad)
        dout = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
        want_grads = F.conv_backward(dout, x, W, stride, pad)
    assert_close(out, want, "sum", n=W[0].size)
    for got, expected in zip(F.conv_backward(dout, x, W, stride, pad), want_grads, strict=True):
        assert_close(got, expected, "sum", n=out.size)
    buf = np.empty_like(out)
    assert F.conv_forward(x, W, b, stride, pad, out=buf) is buf
    np.testing.assert_array_equal(buf, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", CONV, ids=str)
def test_im2col_and_col2im_are_the_classic_ones(spec, backend):
    x, W, _, stride, pad = _data(spec, np.float64)
    fh, fw = W.shape[2:]
    with fl.use_backend(backend):
        col = fl.im2col(x, fh, fw, stride, pad)
        back = fl.col2im(col, x.shape, fh, fw, stride, pad)
    # independent: the classic rows (n, oh, ow) and columns (c, ky, kx), element by element
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    want = np.array(
        [xp[i, :, y * stride : y * stride + fh, z * stride : z * stride + fw].ravel()
         for i in range(n) for y in range(oh) for z in range(ow)]
    )  # fmt: skip
    np.testing.assert_array_equal(col, want)
    # col2im is the adjoint of im2col: <im2col(x), v> == <x, col2im(v)>
    v = np.random.default_rng(5).standard_normal(col.shape)
    with fl.use_backend(backend):
        adj = fl.col2im(v, x.shape, fh, fw, stride, pad)
    np.testing.assert_allclose(np.sum(col * v), np.sum(x * adj), rtol=1e-12)
    assert back.shape == x.shape
    assert fl.im2col(x.astype(np.float32), fh, fw, stride, pad).dtype == np.float32


def test_convolution_classic_attributes():
    x, W, b, stride, pad = _data(CONV[2], np.float64)
    layer = fl.Convolution(W, b, stride, pad)
    assert layer.col is None
    layer.forward(x)
    np.testing.assert_array_equal(layer.col, fl.im2col(x, *W.shape[2:], stride, pad))
    assert layer.col_W.shape == (W[0].size, W.shape[0])
    assert np.shares_memory(layer.col_W, W)
    assert layer.x is x and layer.stride == stride and layer.pad == pad


def _pool_loops(x, ph, pw, stride, pad):
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - ph) // stride + 1, (w + 2 * pad - pw) // stride + 1
    xp = np.full((n, c, h + 2 * pad, w + 2 * pad), -np.inf)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = xp[:, :, i * stride : i * stride + ph, j * stride : j * stride + pw].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", POOL, ids=str)
def test_pooling_equals_the_definition(spec, dtype, backend):
    n, c, h, w, ph, pw, stride, pad = spec
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(dtype)
    with fl.use_backend(backend):
        layer = fl.Pooling(ph, pw, stride, pad)
        out = layer.forward(x)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        dx = layer.backward(dout)
    np.testing.assert_array_equal(out, _pool_loops(x, ph, pw, stride, pad).astype(dtype))
    # each dout value lands on the maximum of its window
    want = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    arg = layer.arg_max.reshape(n, out.shape[2], out.shape[3], c)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            ky, kx = np.divmod(arg[:, i, j, :], pw)
            for nn in range(n):
                for cc in range(c):
                    want[nn, cc, i * stride + ky[nn, cc], j * stride + kx[nn, cc]] += dout[nn, cc, i, j]
    assert_close(dx, want[:, :, pad : pad + h, pad : pad + w].astype(dtype), "sum", n=ph * pw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", POOL, ids=str)
def test_pooling_gradient_check(spec, backend):
    n, c, h, w, ph, pw, stride, pad = spec
    x = np.random.default_rng(7).permutation(n * c * h * w).reshape(n, c, h, w) / 10.0  # no ties
    with fl.use_backend(backend):
        layer = fl.Pooling(ph, pw, stride, pad)
        weights = np.random.default_rng(8).standard_normal(layer.forward(x).shape)

        def f(_):
            return float((layer.forward(x) * weights).sum())

        f(None)
        dx = layer.backward(weights)
        np.testing.assert_allclose(dx, fl.numerical_gradient(f, x), atol=1e-6, rtol=1e-5)


def test_pooling_arg_max_is_the_classic_layout():
    """Without padding, ``arg_max`` equals the classic ``np.argmax`` over the classic column matrix."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 6))
    layer = fl.Pooling(2, 2, 2)
    layer.forward(x)
    classic = np.argmax(fl.im2col(x, 2, 2, 2, 0).reshape(-1, 4), axis=1)
    np.testing.assert_array_equal(layer.arg_max, classic)
    assert layer.arg_max.dtype == np.int64


def test_pooling_nan_and_ties():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 0] = np.nan  # the NaN wins its window
    x[0, 0, :, 2:] = 5.0  # a tie: the first maximum
    layer = fl.Pooling(2, 2, 2)
    out = layer.forward(x)
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 5.0
    np.testing.assert_array_equal(layer.arg_max, [2, 0])
    with fl.use_backend("numpy"):
        ref = fl.Pooling(2, 2, 2)
        np.testing.assert_array_equal(ref.forward(x), out)
        np.testing.assert_array_equal(ref.arg_max, layer.arg_max)


def test_pooling_pads_with_minus_infinity_and_sizes_with_the_pad():
    x = -np.ones((1, 1, 3, 3))
    out = fl.Pooling(2, 2, 2, pad=1).forward(x)
    assert out.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(out, -1.0)  # padding never wins, even against negative values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [37, 30], ids=["flat tiles", "rows tile"])  # the input gradient's tile
def test_results_do_not_depend_on_the_thread_count(dtype, w):
    x, W, b, stride, pad = _data((5, 3, 40, w, 4, 3, 3, 1, 1), dtype)
    dout = np.random.default_rng(3).standard_normal((5, 4, 40, w)).astype(dtype)

    def run():
        conv, pool = fl.Convolution(W, b, stride, pad), fl.Pooling(2, 2, 2)
        y = pool.forward(conv.forward(x))
        dx = conv.backward(pool.backward(np.ones_like(y)))
        conv.forward(x)
        conv.backward(dout)
        return y, dx, conv.dW, conv.db

    many = run()
    fl.set_num_threads(1)
    try:
        one = run()
    finally:
        fl.set_num_threads(fl._kernels._threads.num_threads_limit())
    for a, c in zip(many, one, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_input_gradient_to_few_channels_runs_on_the_rows_tile(dtype, monkeypatch):
    """SimpleConvNet's first layer, its input gradient asked (the book's own net asks it): the
    gradient to one channel runs on the rows tile, and equals the flat tiles' within the sums'
    rounding (the terms add in another order)."""
    # SimpleConvNet's 28x28, or where its input gradient's rows of 28 are no 2 or 4 vectors (AVX2's
    # float64: 7), 16x16
    w = 28 if C.rows_serve(1, 5, 28, np.dtype(dtype).itemsize) else 16
    x, W, b, stride, pad = _data((4, 1, w, w, 30, 5, 5, 1, 0), dtype)
    dout = np.random.default_rng(2).standard_normal((4, 30, w - 4, w - 4)).astype(dtype)
    kernels = []
    launch = C.launch
    monkeypatch.setattr(C, "launch", lambda kernel, *args: kernels.append(kernel.name) or launch(kernel, *args))
    layer = fl.Convolution(W, b, stride, pad)
    layer.forward(x)
    rows = layer.backward(dout)
    assert kernels[-1] == "conv_direct_rows"
    monkeypatch.setattr(C, "ROWS_MAX_CHANNELS", 0)
    layer.forward(x)
    flat = layer.backward(dout)
    assert kernels[-1] == "conv_direct"
    assert_close(rows, flat, "sum", n=W[0].size * W.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_lanes_tasks_of_several_images_keep_the_bits(dtype, monkeypatch):
    """However many images a task of the channel-lanes kernel takes (its tiles then run across
    images: ``lanes_group``), the forward, its fused pooling and every gradient are the same bits,
    on the parallel twin (7 images: the last group is shorter). Float64 takes 32 input channels,
    so that its input gradient runs on the lanes too; float32, 8 (short without the JIT)."""
    from fastlayers import _kernels

    c = 32 if dtype == np.float64 else 8
    x, W, b, stride, pad = _data((7, c, 7, 7, 64, 3, 3, 1, 1), dtype)
    geo = C.geometry(x.shape, W.shape, stride, pad)
    assert C.lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, x.itemsize)
    assert (dtype == np.float64) == C.lanes_serve(geo.c, geo.h, geo.w, geo.wp, x.itemsize)  # the input gradient
    assert 7 * geo.fn * geo.oh * geo.ow * geo.k >= _kernels.lazy("conv").conv_direct_lanes.parallel_min
    dout = np.random.default_rng(2).standard_normal((7, 64, 7, 7)).astype(dtype)
    runs = []
    for group in (1, 2, 5):
        monkeypatch.setattr(C, "lanes_group", lambda *a, g=group: g)
        layer = fl.Convolution(W, b, stride, pad)
        got = [layer.forward(x).copy()]
        got += [layer.backward(dout).copy(), layer.dW.copy(), layer.db.copy()]
        pool = fl.Pooling(2, 2, 2)
        got += [fl.layers.conv.conv_relu_pool_forward(layer, fl.Relu(), pool, x).copy(), pool.arg_max.copy()]
        runs.append(got)
    for run in runs[1:]:
        for first, other in zip(runs[0], run, strict=True):
            np.testing.assert_array_equal(first, other)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec",
    [
        (5, 32, 8, 8, 64, 3, 3, 1, 1),  # DeepConvNet's fifth layer: forward on the lanes, not its input gradient
        (4, 64, 8, 8, 64, 3, 3, 1, 1),  # its sixth: both
        (3, 32, 7, 7, 64, 3, 3, 1, 1),  # the performance issue's 7x7
        (2, 8, 3, 3, 64, 3, 3, 1, 1),  # a 3x3 plane (one pooled pixel)
        (2, 4, 5, 5, 100, 3, 3, 1, 1),  # channels past a block (float32: 2 blocks of 64)
    ],
)
def test_small_planes_run_on_the_channel_lanes_with_the_direct_kernels_bits(spec, dtype, monkeypatch):
    """Small planes with many output channels take the channel-lanes kernel where it computes far
    fewer terms than the direct kernel's padded rows (``lanes_serve``), forward and input gradient;
    the outputs and all gradients equal the direct kernel's bit for bit (the same FMAs in the same
    order), with and without a 2x2 pooling fused into the forward."""
    x, W, b, stride, pad = _data(spec, dtype)
    kernels = []
    launch = C.launch
    monkeypatch.setattr(C, "launch", lambda kernel, *args: kernels.append(kernel.name) or launch(kernel, *args))
    geo = C.geometry(x.shape, W.shape, stride, pad)
    wd = geo.ow + 2 * (geo.fw - 1 - pad)  # the input gradient's rows, as _direct_backward's

    def served():
        return C.lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, x.itemsize), C.lanes_serve(
            geo.c, geo.h, geo.w, wd, x.itemsize
        )

    fwd, dx = served()
    if not (fwd or dx):  # not chosen in this register configuration (AVX2's float64 blocks of 8 channels
        # on the 5x5 plane): the lanes taken all the same, for their bits
        monkeypatch.setattr(C, "LANES_MAX_RATIO", {4: 2.0, 8: 2.0})
        fwd, dx = served()
    assert fwd or dx

    def run():
        layer = fl.Convolution(W, b, stride, pad)
        out = layer.forward(x).copy()
        dout = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
        got = [out, layer.backward(dout).copy(), layer.dW.copy(), layer.db.copy()]
        relu, pool = fl.Relu(), fl.Pooling(2, 2, 2)
        pooled = fl.layers.conv.conv_relu_pool_forward(layer, relu, pool, x)
        return [*got, pooled.copy(), pool.arg_max.copy()]

    kernels.clear()
    lanes = run()
    assert kernels.count("conv_direct_lanes") == 2 * fwd + dx
    monkeypatch.setattr(C, "LANES_MAX_RATIO", {4: 0.0, 8: 0.0})
    kernels.clear()
    direct = run()
    assert "conv_direct_lanes" not in kernels
    for a, c in zip(lanes, direct, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec",
    [
        (3, 8, 7, 7, 64, 3, 3, 1, 1),  # DeepConvNet's last layers' planes, 64 filters
        (2, 4, 5, 5, 100, 3, 3, 1, 1),  # filters past a block (float32: 2 blocks of 64)
        (3, 5, 14, 14, 32, 3, 3, 1, 2),  # a 16x16 output (DeepConvNet's fourth layer)
        (2, 6, 3, 3, 64, 3, 3, 1, 1),  # a 3x3 plane
        (2, 3, 9, 9, 40, 3, 3, 1, 0),  # unpadded
    ],
)
def test_small_planes_take_the_filter_gradient_with_filters_in_the_lanes(spec, dtype, monkeypatch):
    """Small planes with many filters take the filter gradient whose lanes are filters
    (``conv_dw_lanes``) where ``dw_lanes_serve`` says so: its dW is the reference's (within the sum's
    tolerance), the same bits on one thread as on all, NaN exactly where the reference's is NaN (it
    visits only the output's pixels), and dx and db are those of the direct filter gradient's pass;
    elsewhere the direct filter gradient runs."""
    x, W, b, stride, pad = _data(spec, dtype)
    geo = C.geometry(x.shape, W.shape, stride, pad)
    serves = C.dw_lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, x.itemsize)
    # 64 or 100 filters on planes of 3x3 to 7x7: in both dtypes and register configurations; a 16x16
    # plane (more pixels than DW_LANES_MAX_PIXELS): in none; 40 filters on an unpadded 7x7 plane: not
    # in blocks of 64 filters (AVX-512, float32) or 32 (float64), which would compute too many terms
    assert serves == (spec[4] in (64, 100)) or spec[4] == 40 and 40 % C._lanes_block(x.itemsize)[0] == 0
    kernels = []
    launch = C.launch
    monkeypatch.setattr(C, "launch", lambda kernel, *args: kernels.append(kernel.name) or launch(kernel, *args))
    dout = np.random.default_rng(2).standard_normal((geo.n, geo.fn, geo.oh, geo.ow)).astype(dtype)

    def run(x):
        layer = fl.Convolution(W, b, stride, pad)
        layer.forward(x)
        return [layer.backward(dout).copy(), layer.dW.copy(), layer.db.copy()]

    kernels.clear()
    lanes = run(x)
    assert kernels.count("conv_dw_lanes") == serves and kernels.count("conv_dw_direct") == (not serves)
    _, rdW, _ = R.conv_backward(dout, x, W, stride, pad)
    assert_close(lanes[1], rdW.astype(dtype), "sum", n=geo.n * geo.oh * geo.ow)
    fl.set_num_threads(1)
    try:
        one = run(x)
    finally:
        fl.set_num_threads(fl._kernels._threads.num_threads_limit())
    for a, c in zip(lanes, one, strict=True):
        np.testing.assert_array_equal(a, c)
    monkeypatch.setattr(C, "DW_LANES_MAX_RATIO", 0.0)
    kernels.clear()
    direct = run(x)
    assert "conv_dw_lanes" not in kernels
    np.testing.assert_array_equal(lanes[0], direct[0])
    np.testing.assert_array_equal(lanes[2], direct[2])
    assert_close(lanes[1], direct[1], "sum", n=geo.n * geo.oh * geo.ow)
    monkeypatch.setattr(C, "DW_LANES_MAX_RATIO", 0.9)
    if not serves:  # the direct kernel's padded columns multiply zeros by the next columns' inputs
        return
    bad = x.copy()
    bad[0, 1, 1, 2] = np.nan
    bad[-1, -1, -1, -1] = np.inf
    _, rdW, _ = R.conv_backward(dout, bad, W, stride, pad)
    np.testing.assert_array_equal(np.isnan(run(bad)[1]), np.isnan(rdW))


def test_backward_uses_the_filters_as_they_are_then_and_checks_their_shape():
    x, W, b, stride, pad = _data(CONV[1], np.float64)
    layer = fl.Convolution(W.copy(), b, stride, pad)
    out = layer.forward(x)
    layer.W *= 2  # an optimizer's in-place update: seen by backward, as in the classic code
    dx = layer.backward(np.ones_like(out))
    want_dx = R.conv_backward(np.ones_like(out), x, 2 * W, stride, pad)[0]
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    layer.W = np.zeros((W.shape[0] + 1, *W.shape[1:]))
    with pytest.raises(ValueError, match=r"W has shape \(5, 3, 3, 2\) but forward ran with filters of shape"):
        layer.backward(np.ones_like(out))
    with pytest.raises(ValueError, match="Convolution.backward called before forward"):
        fl.Convolution(W, b).backward(np.ones_like(out))
    layer.W = W
    with pytest.raises(ValueError, match="dout has shape"):
        layer.backward(np.ones((1, 2, 3, 4)))


def test_refilling_arg_max_changes_nothing():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    layer = fl.Pooling(2, 2, 2)
    out = layer.forward(x)
    want = layer.backward(np.ones_like(out)).copy()
    layer.arg_max[...] = 10**9  # a fresh array: the layer's own indices stay as they were
    np.testing.assert_array_equal(layer.backward(np.ones_like(out)), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(16, 17), (9, 7)], ids=str)
def test_pooling_backward_kernel_adds_nothing_for_an_index_outside_the_window(hw, dtype):
    """The backward kernel's contract, on the 2x2 pooling's vectorized rows (8 outputs and more) and
    on the general loop: an index outside the window adds nothing (the layer never hands one in:
    its indices are private, and the functional form checks them), a -0.0 gradient lands as +0.0
    (as added to a zeroed plane), every position no window covers is 0."""
    from fastlayers._kernels import lazy

    conv = lazy("conv")
    rng = np.random.default_rng(3)
    h, w = hw
    oh, ow = h // 2, w // 2
    dout = rng.standard_normal((2, 3, oh, ow)).astype(dtype)
    dout[0, 0, 0, :3] = -0.0
    arg = rng.integers(0, 7, (2, 3, oh, ow)).astype(np.uint8)
    arg[0, 0, 0, :3] = [0, 3, 5]
    want = np.zeros((2, 3, h, w), dtype)
    for n, c, y, x in np.ndindex(*arg.shape):
        a = int(arg[n, c, y, x])
        if a < 4:
            want[n, c, 2 * y + a // 2, 2 * x + a % 2] += dout[n, c, y, x]
    for twin in (conv.maxpool_backward.serial, conv.maxpool_backward.parallel):
        dx = np.full((2, 3, h, w), np.nan, dtype)
        twin(dout, arg, 2, 2, 2, 0, dx)
        np.testing.assert_array_equal(dx, want)
        np.testing.assert_array_equal(np.signbit(dx), np.signbit(want))  # -0.0 is not 0.0 here
        assert not np.signbit(dx[0, 0, :2, :6]).any()


def test_max_pool_functions_check_the_indices():
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    out, arg = F.max_pool_forward(x, 2, 2, 2)
    dx = F.max_pool_backward(np.ones_like(out), arg, x.shape, 2, 2, 2)
    assert dx.sum() == out.size
    with pytest.raises(ValueError, match=r"arg holds indices outside \[0, 4\): min 0, max 9"):
        F.max_pool_backward(np.ones_like(out), np.full(arg.shape, 9) * (np.arange(arg.size) % 2).reshape(arg.shape),
                            x.shape, 2, 2, 2)  # fmt: skip
    with pytest.raises(TypeError, match="arg must hold integers"):
        F.max_pool_backward(np.ones_like(out), arg.astype(float), x.shape, 2, 2, 2)


def test_forward_run_checks_the_pooled_outputs_before_the_kernel():
    """The pooled output and indices handed to the direct kernel are checked first (the kernel
    writes them without bounds checks): shape, dtype, layout, and a call that the pass can pool."""
    rng = np.random.default_rng(0)
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 9, 7), (4, 3, 3, 3), (4,)))
    geo = C.geometry(x.shape, W.shape, 1, 1)
    good = (np.empty((2, 4, 4, 3), np.float32), np.empty((2, 4, 4, 3), np.uint8))
    C.forward_run(x, W, b, geo, None, True, C.Workspace(), good)
    for bad in (
        (np.empty((2, 4, 4, 4), np.float32), good[1]),
        (good[0], np.empty((2, 4, 5, 3), np.uint8)),
        (good[0].astype(np.float64), good[1]),
        (good[0], good[1].astype(np.int64)),
        (np.empty((2, 4, 3, 4), np.float32).transpose(0, 1, 3, 2), good[1]),
        (good[0], np.empty((2, 4, 3, 4), np.uint8).transpose(0, 1, 3, 2)),
    ):
        with pytest.raises(ValueError, match=r"pool: the pooled output and indices must be \(2, 4, 4, 3\)"):
            C.forward_run(x, W, b, geo, None, True, C.Workspace(), bad)
    strided = C.geometry(x.shape, W.shape, 2, 1)  # im2col: the pooling cannot run in its pass
    with pytest.raises(ValueError, match=r"pool: the pooled output and indices must be \(2, 4, 2, 2\)"):
        pooled = (np.empty((2, 4, 2, 2), np.float32), np.empty((2, 4, 2, 2), np.uint8))
        C.forward_run(x, W, b, strided, None, True, C.Workspace(), pooled)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: fl.Convolution(np.ones((2, 1, 5, 5)), np.ones(2)).forward(np.ones((1, 1, 4, 4))), ValueError,
         r"the 5x5 filter is larger than the padded input: x of shape \(1, 1, 4, 4\) with pad=0 is 4x4"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), stride=0), ValueError, "stride must be >= 1, got 0"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), stride=-1), ValueError, "stride must be >= 1"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), pad=-1), ValueError, "pad must be >= 0, got -1"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), stride=1.5), TypeError, "stride must be an integer"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), pad="1"), TypeError, "pad must be an integer"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), stride=True), TypeError,
         "stride must be an integer"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)).forward(np.ones((1, 5, 5))), ValueError,
         r"x must be 4-D \(N, C, H, W\), got 3-D with shape \(1, 5, 5\)"),
        (lambda: fl.Convolution(np.ones((2, 3, 3, 3)), np.ones(2)).forward(np.ones((1, 1, 5, 5))), ValueError,
         r"x has 1 channels \(shape \(1, 1, 5, 5\)\) but W expects 3 \(shape \(2, 3, 3, 3\)\)"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(3)).forward(np.ones((1, 1, 5, 5))), ValueError,
         r"b must have shape \(2,\) to match W of shape \(2, 1, 3, 3\), got \(3,\)"),
        (lambda: fl.Convolution(np.ones((2, 3, 3)), np.ones(2)).forward(np.ones((1, 1, 5, 5))), ValueError,
         r"W must be 4-D \(FN, C, FH, FW\)"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)).forward(np.ones((0, 1, 5, 5))), ValueError,
         "empty batch"),
        (lambda: fl.Convolution([[1.0]], np.ones(2)), TypeError, "W and b must be numpy arrays"),
        (lambda: fl.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)).forward(np.ones((1, 1, 5, 5), complex)), TypeError,
         "x has dtype complex128"),
        (lambda: fl.Pooling(2, 2, 2).forward(np.ones((1, 1, 1, 5))), ValueError, "the 2x2 pooling window is larger"),
        (lambda: fl.Pooling(2, 2, 0), ValueError, "stride must be >= 1"),
        (lambda: fl.Pooling(0, 2), ValueError, "pool_h must be >= 1"),
        (lambda: fl.Pooling(2, 2, 2, pad=2).forward(np.ones((1, 1, 6, 6))), ValueError,
         "pad must be smaller than the 2x2 window, got pad=2"),
        (lambda: fl.Pooling(2, 2).forward(np.ones((6, 6))), ValueError, "x must be 4-D"),
        (lambda: fl.Pooling(2, 2).backward(np.ones((1, 1, 3, 3))), ValueError,
         "Pooling.backward called before forward"),
        (lambda: fl.im2col(np.ones((1, 1, 3, 3)), 4, 1), ValueError, "the 4x1 filter is larger than the padded input"),
        (lambda: fl.col2im(np.ones((4, 2)), (1, 1, 3, 3), 2, 2), ValueError,
         r"col has shape \(4, 2\) but input_shape \(1, 1, 3, 3\) with this filter gives \(4, 4\)"),
        (lambda: fl.col2im(np.ones((4, 4)), (1, 3, 3), 2, 2), ValueError, "input_shape must have 4 entries"),
        (lambda: F.conv_backward(np.ones((1, 2, 3, 3)), np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))), ValueError,
         r"dout has shape \(1, 2, 3, 3\) but x of shape \(1, 1, 4, 4\) and W of shape \(2, 1, 3, 3\) \(stride=1, "
         r"pad=0\) give \(1, 2, 2, 2\)"),
    ],
)  # fmt: skip
def test_bad_input(call, exc, match, backend_both):
    with pytest.raises(exc, match=match):
        call()


@pytest.fixture(params=BACKENDS)
def backend_both(request):
    with fl.use_backend(request.param):
        yield request.param


def test_workspace_geometry_chunks():
    """The chunk rule: a chunk's column matrix stays under CHUNK_BYTES unless one image needs more."""
    geo = C.geometry((100, 16, 28, 28), (16, 16, 3, 3), 1, 1)
    per_image = geo.k * geo.seg * 4
    assert geo.chunk(4) * per_image <= C.CHUNK_BYTES < (geo.chunk(4) + 1) * per_image
    assert C.geometry((1, 64, 200, 200), (8, 64, 5, 5), 1, 2).chunk(8) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_sees_the_input_as_forward_did(backend):
    """The classic layer keeps its column matrix: a caller's later change to ``x`` is not seen by
    ``backward`` (nor by ``col``). Both backends keep a private copy."""
    x, W, b, stride, pad = _data(CONV[2], np.float32)
    with fl.use_backend(backend):
        layer = fl.Convolution(W, b, stride, pad)
        out = layer.forward(x)
        col = layer.col
        dx_want = layer.backward(np.ones_like(out)).copy()
        dW_want = layer.dW.copy()
        layer.forward(x)
        x[...] = 100.0  # refilled in place, as a data loader reusing its buffer does
        dx = layer.backward(np.ones_like(out))
        np.testing.assert_array_equal(layer.col, col)
    np.testing.assert_array_equal(dx, dx_want)
    np.testing.assert_array_equal(layer.dW, dW_want)


#: stride-1 shapes run by the direct kernel: (N, C, H, W, FN, FH, FW, pad) (the kernel registry
#: covers each register tile)
DIRECT = [
    (3, 16, 28, 28, 16, 3, 3, 1),  # DeepConvNet's first layers
    (2, 32, 7, 7, 64, 3, 3, 1),  # its last ones
    (2, 1, 28, 28, 30, 5, 5, 0),  # SimpleConvNet's
    (1, 3, 11, 9, 5, 3, 3, 2),
    (2, 2, 3, 2, 25, 2, 2, 1),
    (1, 3, 30, 29, 4, 3, 1, 1),
    (2, 5, 9, 8, 2, 3, 2, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", DIRECT, ids=str)
def test_direct_convolution(spec, dtype):
    """Stride 1 runs the direct kernel, bias and ReLU fused as the nets ask, any layout of the input;
    its backward pass runs without products."""
    n, c, h, w, fn, fh, fw, pad = spec
    x, W, b, _, _ = _data((n, c, h, w, fn, fh, fw, 1, pad), dtype)
    geo = C.geometry(x.shape, W.shape, 1, pad)
    itemsize = np.dtype(dtype).itemsize
    assert C.direct_plan(geo, itemsize) is not None
    want = _conv_loops(x, W, b, 1, pad).astype(dtype)
    k = W[0].size
    for kind in LAYOUTS:
        assert_close(F.conv_forward(layout(x, kind), W, b, 1, pad), want, "sum", n=k)
    ws = C.Workspace()
    out = C.forward_run(x, W, b, geo, None, True, ws)
    assert_close(out, np.maximum(want, 0), "sum", n=k)
    assert C.direct_plan(C.geometry(x.shape, W.shape, 2, pad), itemsize) is None  # im2col's
    # the backward pass without products, ReLU's mask fused, with and without the input gradient
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    masked = np.where(out <= 0, 0, dout).astype(np.float64)
    rdx, rdW, rdb = R.conv_backward(masked, x.astype(np.float64), W.astype(np.float64), 1, pad)
    for with_dx in (True, False):
        dx, dW, db = C.backward_run(dout, out, W, ws, with_dx, True)
        assert (dx is None) != with_dx
        if with_dx:
            assert_close(dx, rdx.astype(dtype), "sum", n=k)
        assert_close(dW, rdW.astype(dtype), "sum", n=out.size // fn)
        assert_close(db, rdb.astype(dtype), "sum", n=out.size // fn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", [(2, 3, 6, 7, 3, 1, 1, 1, 2), (2, 2, 5, 6, 3, 2, 3, 1, 2)], ids=str)
def test_direct_forward_with_a_pad_wider_than_the_filter(spec, dtype):
    """pad > FH-1: the input gradient goes through im2col's path, the forward stays direct."""
    x, W, b, stride, pad = _data(spec, dtype)
    layer = fl.Convolution(W, b, stride, pad)
    out = layer.forward(x)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)
    rdx, rdW, rdb = R.conv_backward(dout.astype(np.float64), x.astype(np.float64), W.astype(np.float64), stride, pad)
    assert_close(out, _conv_loops(x, W, b, stride, pad).astype(dtype), "sum", n=W[0].size)
    assert_close(dx, rdx.astype(dtype), "sum", n=W[0].size)
    assert_close(layer.dW, rdW.astype(dtype), "sum", n=out.size // W.shape[0])
    assert_close(layer.db, rdb.astype(dtype), "sum", n=out.size // W.shape[0])


def test_direct_convolution_propagates_nan_and_infinity():
    x, W, b, _, _ = _data((2, 3, 9, 8, 7, 3, 3, 1, 1), np.float32)
    x[0, 1, 4, 4] = np.nan
    x[1, 2, 0, 0] = np.inf
    got = F.conv_forward(x, W, b, 1, 1)
    want = R.conv_forward(x, W, b, 1, 1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], "sum", n=27)


def _backward_operands(dtype, geometry, n: int, seed: int) -> tuple:
    """x, W, b, the upstream gradient, a pooled one and its window indices for the direct backward
    tests; ``geometry``: (C, FN, filter size, pad, H, W)."""
    c, fn, k, pad, h, w = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = (0.3 * rng.standard_normal((fn, c, k, k))).astype(dtype)
    b = rng.standard_normal(fn).astype(dtype)
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    dout = rng.standard_normal((n, fn, oh, ow)).astype(dtype)
    dpool = rng.standard_normal((n, fn, oh // 2, ow // 2)).astype(dtype)
    return x, W, b, dout, dpool, rng.integers(0, 4, dpool.shape).astype(np.uint8)


def _assert_relu_conv_gradients(got, x, W, b, pad, dout) -> None:
    """(dx, dW, db) of a Convolution followed by ReLU, against the reference's."""
    y = np.maximum(R.conv_forward(x, W, b, 1, pad), 0)
    want = R.conv_backward(np.where(y > 0, dout, 0).astype(dout.dtype), x, W, 1, pad)
    pixels = x.shape[0] * dout.shape[2] * dout.shape[3]
    for a, ref, terms in zip(got, want, (W[0].size, pixels, pixels), strict=True):
        assert_close(a, ref, "sum", n=terms)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize(
    "geometry",
    [(5, 8, 3, 1, 10, 12), (1, 30, 5, 0, 28, 28), (3, 6, 5, 1, 11, 9), (2, 3, 3, 0, 9, 30)],
    ids=["3x3-same", "5x5-pad0-rows", "5x5-pad1-fn6", "3x3-pad0-rows"],
)
def test_backward_reads_one_layout_and_keeps_the_bits(dtype, pooled, geometry, monkeypatch):
    """The direct backward lays the gradient out once, in the padded layout the input gradient reads
    with the forward's row width ("same" padding, and less: each row's zero columns are the next
    one's left padding), and the filter gradient reads it at an offset, in planes of FN rounded up to
    4 (FN 30 and 6): dx (through the rows tile to 1-3 channels too), dW and db are the bits of the
    two-layout pass, which it takes when that sharing is switched off."""
    pad = geometry[3]
    x, W, b, dout, dpool, arg = _backward_operands(dtype, geometry, 3, 0)

    def gradients():
        conv = fl.Convolution(W, b, pad=pad)
        y = np.maximum(conv.forward(x), 0)
        if pooled:
            got = C.pooled_backward_run(dpool, arg, y, conv.W, conv._ws, True)
        else:
            got = C.backward_run(dout, y, conv.W, conv._ws, True, True)
        return [a.copy() for a in got], "g" in conv._ws._flat  # the second layout's buffer

    shared, second = gradients()
    assert not second
    if not pooled:  # and the one layout's gradients are the convolution's
        _assert_relu_conv_gradients(shared, x, W, b, pad, dout)
    monkeypatch.setattr(C, "SHARE_LAYOUT", False)
    apart, second = gradients()
    assert second
    for s, a in zip(shared, apart, strict=True):
        np.testing.assert_array_equal(s, a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize(
    "geometry",
    [(1, 30, 5, 0, 28, 28), (16, 16, 3, 1, 12, 12), (32, 64, 3, 1, 7, 7), (3, 6, 5, 1, 11, 9)],
    ids=["rows-tile", "direct", "channel-lanes", "5x5-pad1"],
)
def test_backward_in_chunks_of_images_keeps_the_bits(dtype, pooled, geometry, monkeypatch):
    """With the input gradient, the direct backward lays out, and reads, the gradient a chunk of
    images at a time when the layout is more than twice ``BACKWARD_CHUNK_BYTES`` (else whole):
    chunks of 1, 2 and 3 of 7 images (the last one short) give dx, dW and db bit for bit as one
    chunk of the whole batch does, through each kernel of the input gradient (rows tile, flat
    tiles, channel lanes) and of the filter gradient (direct, filters in the lanes), with and
    without the 2x2 pooling after the ReLU; and those are the reference's. Without the input
    gradient: one chunk."""
    n, pad = 7, geometry[3]
    x, W, b, dout, dpool, arg = _backward_operands(dtype, geometry, n, 1)
    layouts = []  # the padded layout of each call of conv_dout_direct: (images, planes, length)
    real = C.launch

    kernels = set()

    def spy(kernel, size, *args):
        kernels.add(kernel.name)
        if kernel is C._conv.conv_dout_direct:
            layouts.append(args[8].shape)
        return real(kernel, size, *args)

    def gradients(with_dx=True):
        layouts.clear()
        conv = fl.Convolution(W, b, pad=pad)
        y = np.maximum(conv.forward(x), 0)
        monkeypatch.setattr(C, "launch", spy)
        if pooled:
            got = C.pooled_backward_run(dpool, arg, y, conv.W, conv._ws, with_dx)
        else:
            got = C.backward_run(dout, y, conv.W, conv._ws, with_dx, True)
        monkeypatch.setattr(C, "launch", real)
        return [None if a is None else a.copy() for a in got]

    whole = gradients()
    assert [s[0] for s in layouts] == [n]
    # the filter gradient's lanes: at 7x7 in every register configuration, and where dw_lanes_serve says
    geo = C.geometry(x.shape, W.shape, 1, pad)
    assert ("conv_dw_lanes" in kernels) == C.dw_lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, x.itemsize)
    assert "conv_dw_lanes" in kernels or geometry[1] != 64
    image_bytes = layouts[0][1] * layouts[0][2] * np.dtype(dtype).itemsize
    if not pooled:
        _assert_relu_conv_gradients(whole, x, W, b, pad, dout)
    monkeypatch.setattr(C, "BACKWARD_CHUNK_BYTES", 4 * image_bytes)  # within twice the chunk: whole
    gradients()
    assert [s[0] for s in layouts] == [n]
    for per_chunk in (1, 2, 3):
        monkeypatch.setattr(C, "BACKWARD_CHUNK_BYTES", per_chunk * image_bytes + image_bytes // 4)
        got = gradients()
        assert [s[0] for s in layouts] == [per_chunk] * (n // per_chunk) + [n % per_chunk] * (n % per_chunk > 0)
        for a, want_a in zip(got, whole, strict=True):
            np.testing.assert_array_equal(a, want_a)
        no_dx = gradients(with_dx=False)
        assert len(layouts) == 1 and no_dx[0] is None
        np.testing.assert_array_equal(no_dx[1], whole[1])
        np.testing.assert_array_equal(no_dx[2], whole[2])
