"""The registry of kernel twins: for every compiled kernel, its NumPy twin and a maker of arguments.

Each entry of :data:`CASES` is named like the kernel (``_numba.ALL_TWINS``; a test holds the two sets
equal, so a kernel cannot be added without its twin) and gives:

- ``twin``: a NumPy function with the kernel's signature and effect (writes the same outputs, returns
  the same value);
- ``make(dtype, size, rng)``: the kernel's arguments for one size (``size`` is the number of elements
  of the main input, about; row kernels take ``rows x cols`` shapes from it);
- ``tol``: how close the kernel must be to the twin (a kind of ``conftest.assert_close``).

The NumPy twins follow the order of operations of the kernels where that makes them bit-identical
(the bias gradient adds rows in order); elsewhere the tolerance says why they may differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastlayers import reference
from fastlayers._kernels import accumulators, vector_bytes

#: the register configuration the kernels are compiled for in this process (their tiles' vector
#: bytes and accumulators): the twins below follow it
VB, ACC = vector_bytes(), accumulators()


def _host_fc(fc):
    """``fc`` where it is a direct tile's channel count here (it divides ``ACC``), else the largest
    channel count below it that is (8 -> 6 with AVX2's 12 accumulators)."""
    return max(c for c in range(1, fc + 1) if ACC % c == 0)


#: sizes of the main input: one element, odd sizes around BLOCK, and one past every parallel threshold
FLAT_SIZES = [1, 7, 8191, 8193, 300_007]
#: row kernels: (rows, columns)
ROW_SHAPES = [(1, 1), (3, 7), (301, 257), (1031, 300)]


#: convolution kernels: (N, C, H, W, FN, FH, FW, stride, pad): batch 1, C = 1 and 3, odd sizes,
#: strides 1-3, padding 0-2, non-square filters, and one past the parallel threshold
CONV_SHAPES = [
    (1, 1, 5, 5, 1, 5, 5, 1, 0),
    (2, 3, 9, 8, 4, 3, 2, 1, 0),
    (1, 3, 11, 9, 5, 3, 3, 2, 1),
    (3, 1, 7, 10, 2, 2, 3, 3, 2),
    (2, 3, 6, 7, 3, 1, 1, 1, 2),
    (5, 3, 61, 47, 4, 3, 2, 1, 1),
]
#: the direct convolution (stride 1): (N, C, H, W, FN, FH, FW, pad, FC): batch 1, C = 1 and 3, odd
#: sizes, padding 0-2, non-square filters, every tile (FC = 8, 6, 4, 12, 3, 2, 1), FN not a multiple of FC,
#: planes smaller than a tile, and two past the parallel threshold (DeepConvNet's 3x3 shapes)
DIRECT_SHAPES = [
    (1, 1, 5, 5, 1, 5, 5, 0, 8),
    (2, 3, 9, 8, 4, 3, 2, 0, 6),
    (1, 3, 11, 9, 5, 3, 3, 2, 4),
    (3, 1, 7, 10, 2, 2, 3, 2, 12),
    (2, 3, 6, 7, 3, 1, 1, 2, 6),
    (5, 3, 61, 47, 13, 3, 2, 1, 8),
    (3, 16, 28, 28, 16, 3, 3, 1, 8),
    (2, 32, 7, 7, 30, 3, 3, 1, 6),
    (2, 3, 8, 9, 5, 3, 3, 1, 3),
    (1, 2, 9, 7, 3, 2, 2, 0, 2),
    (3, 4, 12, 11, 1, 3, 3, 1, 1),
]
#: pooling kernels: (N, C, H, W, pool_h, pool_w, stride, pad)
POOL_SHAPES = [
    (1, 1, 2, 2, 2, 2, 2, 0),
    (2, 3, 9, 8, 2, 2, 2, 0),
    (1, 3, 11, 9, 3, 2, 1, 1),
    (3, 1, 7, 10, 3, 3, 2, 2),
    (2, 2, 5, 7, 1, 2, 3, 0),
    (4, 7, 70, 61, 2, 2, 2, 1),
    (5, 7, 61, 70, 2, 2, 2, 0),  # the classic window past the parallel threshold, an odd row left over
    (2, 3, 16, 17, 2, 2, 2, 0),  # the classic window's vectorized rows (8 outputs), an odd column left over
]
#: the forward's: the same, and the classic window without scratch rows (a trailing False: the
#: general loop), rows of 8 and of 3 outputs
POOL_FORWARD_SHAPES = [(*s, True) for s in POOL_SHAPES] + [
    (2, 3, 16, 17, 2, 2, 2, 0, False),
    (3, 2, 7, 7, 2, 2, 2, 0, False),
]


#: whole-net kernels: (N, widths D0..D3, activations after the two hidden layers: 1 ReLU, 2 Sigmoid):
#: three layers each (every depth is a compilation of its own, and CI compiles the registry five
#: times: the plans' tests run the other depths), one row, a width of one, column counts
#: around the float32 and float64 tiles (16, 64, 8, 32 lanes), row counts around the 6-row tile,
#: and the main job's widths
NET_SHAPES = [
    (1, (3, 4, 5, 2), (1, 2)),
    (7, (13, 9, 5, 4), (1, 2)),
    (6, (70, 17, 65, 3), (2, 1)),
    (13, (5, 1, 33, 2), (1, 1)),
    (32, (64, 50, 10, 10), (1, 1)),
    (11, (40, 64, 8, 31), (2, 2)),
]


#: single products (N, K, M): one row, a width of one, sizes around the tiles (6 rows; 16, 64 and 8, 32
#: columns), and past the parallel threshold
PRODUCT_SHAPES = [(1, 1, 1), (1, 784, 50), (7, 13, 65), (6, 64, 10), (13, 5, 33), (300, 200, 71)]


@dataclass(frozen=True)
class Case:
    twin: Callable
    make: Callable
    tol: str
    rows: bool = False  # sized by ROW_SHAPES instead of FLAT_SIZES
    shapes: list | None = None  # sized by these instead (convolution and pooling kernels)
    n: Callable = lambda size: 1  # the count that scales the tolerance, from the size


def _flat(n, dtype, rng, k=1, positive=False):
    arrays = [(3 * rng.standard_normal(n)).astype(dtype) for _ in range(k)]
    return [np.abs(a) for a in arrays] if positive else arrays


def _rows(shape, dtype, rng):
    return (3 * rng.standard_normal(shape)).astype(dtype)


def _probs(shape, dtype, rng):
    p = rng.random(shape).astype(dtype) + dtype(0.01)
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


def _labels(shape, rng):
    return rng.integers(0, shape[1], shape[0])


def _unary_twin(ref):
    def twin(x, out):
        out[...] = ref(x)

    return twin


def _binary_twin(ref):
    def twin(dout, y, out):
        out[...] = ref(dout, y)

    return twin


def _bias_add(out, b):
    out += b


def _bias_grad(dout, db):
    db[...] = dout[0]
    for row in dout[1:]:  # rows in order, as the kernel adds them
        db += row


def _bias_relu(out, b):
    out[...] = reference.relu_forward(out + b)


def _bias_sigmoid(out, b):
    out[...] = reference.sigmoid_forward(out + b)


def _activation_grad_bias(ref):
    def twin(dout, y, dh, db):
        dh[...] = ref(dout, y)
        _bias_grad(dh, db)

    return twin


def _softmax(x, y):
    y[...] = reference.softmax(x)


def _xent(x, t, y, losses, with_grad, grad, scale):
    logp = reference.log_softmax(x)
    losses[...] = -logp[np.arange(x.shape[0]), t] if t.ndim == 1 else -(t * logp).sum(axis=1)
    y[...] = reference.softmax(x)
    if with_grad:
        _xent_grad(y, t, scale, grad)
    return losses.astype(np.float64).sum()


def _xent_grad(y, t, scale, out):
    target = t
    if t.ndim == 1:
        target = np.zeros_like(y)
        target[np.arange(y.shape[0]), t] = 1
    out[...] = (y - target) * scale


def _cross_entropy(y, t, losses):
    with np.errstate(divide="ignore"):
        if t.ndim == 1:
            losses[...] = -np.log(y[np.arange(y.shape[0]), t])
        else:
            losses[...] = -(t * np.log(np.where(t != 0, y, 1))).sum(axis=1)
    return losses.astype(np.float64).sum()


# --------------------------------------------------------------------------------------------
# convolution and pooling: the kernels' layouts (see fastlayers._kernels.conv), written with NumPy
# --------------------------------------------------------------------------------------------
def _geo(spec):
    from fastlayers.functional.conv import geometry

    n, c, h, w, fn, fh, fw, stride, pad = spec
    return geometry((n, c, h, w), (fn, c, fh, fw), stride, pad)


def _conv_pad(x, n0, pad, xp):
    nb, c, lx = xp.shape
    h, w = x.shape[2:]
    wp = w + 2 * pad
    xp[...] = 0
    for i in range(nb):
        planes = xp[i, :, : (h + 2 * pad) * wp].reshape(c, h + 2 * pad, wp)
        planes[:, pad : pad + h, pad : pad + w] = x[n0 + i]


def _conv_im2col(xp, fh, fw, stride, wp, oh, ow, r, col):
    nb, c, _ = xp.shape
    seg = oh * r
    for ch in range(c):
        for ky in range(fh):
            for kx in range(fw):
                row = col[(ch * fh + ky) * fw + kx]
                for i in range(nb):
                    if stride == 1 and r == wp:
                        off = ky * wp + kx
                        row[i * seg : (i + 1) * seg] = xp[i, ch, off : off + seg]
                    else:
                        for y in range(oh):
                            base = (y * stride + ky) * wp + kx
                            row[i * seg + y * r : i * seg + y * r + ow] = xp[i, ch, base : base + stride * ow : stride]


def _conv_output(tmp, n0, b, r, relu, out):
    fn, oh, ow = out.shape[1:]
    seg = oh * r
    for i in range(tmp.shape[1] // seg):
        v = tmp[:, i * seg : (i + 1) * seg].reshape(fn, oh, r)[:, :, :ow] + b[:, None, None]
        out[n0 + i] = reference.relu_forward(v) if relu else v


def _conv_dout(dout, y, n0, r, relu, dflat, db):
    fn, oh, ow = dout.shape[1:]
    seg = oh * r
    for i in range(dflat.shape[1] // seg):
        d = reference.relu_backward(dout[n0 + i], y[n0 + i]) if relu else dout[n0 + i]
        block = np.zeros((fn, oh, r), dflat.dtype)
        block[:, :, :ow] = d
        dflat[:, i * seg : (i + 1) * seg] = block.reshape(fn, seg)
        db += block.reshape(fn, seg).sum(axis=1)


def _conv_col2im(dcol, fh, fw, stride, wp, oh, ow, r, pad, n0, dxp, dx):
    nb, c, _ = dxp.shape
    h, w = dx.shape[2:]
    seg = oh * r
    dxp[...] = 0
    for i in range(nb):
        for ch in range(c):
            for ky in range(fh):
                for kx in range(fw):
                    src = dcol[(ch * fh + ky) * fw + kx, i * seg : (i + 1) * seg]
                    if stride == 1 and r == wp:
                        off = ky * wp + kx
                        dxp[i, ch, off : off + seg] += src
                    else:
                        for y in range(oh):
                            base = (y * stride + ky) * wp + kx
                            dxp[i, ch, base : base + stride * ow : stride] += src[y * r : y * r + ow]
            plane = dxp[i, ch, : (h + 2 * pad) * wp].reshape(h + 2 * pad, wp)
            dx[n0 + i, ch] = plane[pad : pad + h, pad : pad + w]


def _conv_inputs(dtype, spec, rng, n0=0):
    """A batch, its padded chunk scratch (images ``n0``... of the batch) and the geometry."""
    g = _geo(spec)
    x = (3 * rng.standard_normal((g.n, g.c, g.h, g.w))).astype(dtype)
    nb = g.n - n0
    return g, x, nb


def _make_pad(dtype, spec, rng):
    g, x, nb = _conv_inputs(dtype, spec, rng, n0=spec[0] // 2)
    return [x, g.n - nb, g.pad, np.full((nb, g.c, g.lx), np.nan, dtype)]


def _make_im2col(dtype, spec, rng):
    g, x, nb = _conv_inputs(dtype, spec, rng)
    xp = (3 * rng.standard_normal((nb, g.c, g.lx))).astype(dtype)
    return [xp, g.fh, g.fw, g.stride, g.wp, g.oh, g.ow, g.r, np.full((g.k, nb * g.seg), np.nan, dtype)]


def _make_output(dtype, spec, rng, relu=True):
    g = _geo(spec)
    n0 = g.n // 2
    tmp = (3 * rng.standard_normal((g.fn, (g.n - n0) * g.seg))).astype(dtype)
    return [tmp, n0, rng.standard_normal(g.fn).astype(dtype), g.r, relu, np.zeros(g.out_shape, dtype)]


def _make_dout(dtype, spec, rng, relu=True):
    g = _geo(spec)
    n0 = g.n // 2
    dout = (3 * rng.standard_normal(g.out_shape)).astype(dtype)
    y = (3 * rng.standard_normal(g.out_shape)).astype(dtype)
    dflat = np.full((g.fn, (g.n - n0) * g.seg), np.nan, dtype)
    return [dout, y, n0, g.r, relu, dflat, rng.standard_normal(g.fn).astype(dtype)]


def _make_col2im(dtype, spec, rng):
    g = _geo(spec)
    n0 = g.n // 2
    nb = g.n - n0
    dcol = (3 * rng.standard_normal((g.k, nb * g.seg))).astype(dtype)
    if g.stride == 1 and g.r == g.wp:  # the unread columns are 0, as conv_dout leaves them
        dcol.reshape(g.k, nb, g.oh, g.r)[..., g.ow :] = 0
    dxp = np.full((nb, g.c, g.lx), np.nan, dtype)
    return [dcol, g.fh, g.fw, g.stride, g.wp, g.oh, g.ow, g.r, g.pad, n0, dxp, np.zeros((g.n, g.c, g.h, g.w), dtype)]


def _conv_direct(xp, koff, wr, b, wp, relu, tile, out, pool, arg, vals, vidx):
    n, c, lx = xp.shape
    nblk, k, fc = wr.shape
    fn, oh, ow = out.shape[1:]
    span = (ACC // fc) * (VB // xp.itemsize)
    total = oh * wp
    last = ((total - 1) // span) * span  # the start of each task's last tile, left in ``tile``
    xf = xp.reshape(n, c * lx)
    q = (np.arange(oh)[:, None] * wp + np.arange(ow)[None, :]).reshape(-1)
    for i in range(n):
        terms = xf[i][koff[:, None] + q[None, :]]  # (K, OH*OW): the input under each filter term
        for blk in range(nblk):
            _block_out(out, i, blk, wr, terms, b, relu)
            seen = xf[i][koff[:, None] + (last + np.arange(span))[None, :]]
            tile[i * nblk + blk, : fc * span] = (wr[blk].T @ seen).reshape(-1)
    _pool_tasks(out, fc, pool, arg, vals, vidx)


def _block_out(out, i, blk, wr, terms, b, relu):
    """Image ``i``'s output channels of filter block ``blk`` (``wr``: (nblk, K, fc)) from the input
    under each filter term, ``terms`` (K, OH*OW), plus the bias, through ReLU with ``relu``."""
    fc = wr.shape[2]
    fn, oh, ow = out.shape[1:]
    f0, count = blk * fc, min(fc, fn - blk * fc)
    v = (wr[blk, :, :count].T @ terms + b[f0 : f0 + count, None]).reshape(count, oh, ow)
    out[i, f0 : f0 + count] = reference.relu_forward(v) if relu else v


def _pool_tasks(out, fc, pool, arg, vals, vidx, group=1):
    """The direct kernels' 2x2, stride 2 pooling of their output when ``pool`` is not empty, task
    g*nblk + blk (images g*group ... in block blk) leaving its scratch row holding the first pass
    of its last plane (its last image's last channel)."""
    if not pool.shape[0]:
        return
    n, fn = out.shape[:2]
    nblk = -(-fn // fc)
    pool[...], idx = reference.maxpool_forward(out, 2, 2, 2, 0)
    arg[...] = idx
    ph, pw = pool.shape[2:]
    for g in range(-(-n // group)):
        i = min(n, (g + 1) * group) - 1
        for blk in range(nblk):
            last = min(fn, (blk + 1) * fc) - 1
            row = vals[g * nblk + blk], vidx[g * nblk + blk]
            row[0][: ph * 2 * pw], row[1][: ph * 2 * pw] = _first_pass(out[i, last], ph, pw)


def _conv_direct_lanes(xp, koff, wr, b, wp, relu, group, pof, tile, out, pool, arg, vals, vidx):
    # arrays inside the kernel's contract (the registry makes no others; its refusals have their own
    # test in test_kernels)
    n, c, lx = xp.shape
    nblk, k, fc = wr.shape
    fn, oh, ow = out.shape[1:]
    if fc != ACC // 6 * (VB // xp.itemsize):
        return
    points, plane = 6, oh * ow
    xf = xp.reshape(n, c * lx)
    q = (np.arange(oh)[:, None] * wp + np.arange(ow)[None, :]).reshape(-1)
    for i in range(n):
        terms = xf[i][koff[:, None] + q[None, :]]  # (K, OH*OW): the input under each filter term
        for blk in range(nblk):
            _block_out(out, i, blk, wr, terms, b, relu)
    for g in range(-(-n // group)):  # each task's last tile: its group's pixels, image by image
        total = min(group, n - g * group) * plane
        last = np.minimum(((total - 1) // points) * points + np.arange(points), total - 1)
        img, at = g * group + last // plane, last % plane
        offsets = img * c * lx + (at // ow) * wp + at % ow
        for blk in range(nblk):
            t = g * nblk + blk
            tile[t, : points * fc] = (xp.reshape(-1)[offsets[:, None] + koff[None, :]] @ wr[blk]).reshape(-1)
            pof[t, :points] = offsets
            pof[t, points : 2 * points] = (img * fn + blk * fc) * plane + at
    _pool_tasks(out, fc, pool, arg, vals, vidx, group)


#: the direct convolution's shapes, then with the 2x2 pooling of the output in the same pass (a
#: trailing True): odd planes (a row and a column no window covers), every dtype's tiles, one past
#: the parallel threshold
DIRECT_CASES = [(*s, False) for s in DIRECT_SHAPES] + [
    (2, 3, 9, 8, 4, 3, 2, 0, 6, True),
    (1, 3, 11, 9, 5, 3, 3, 2, 4, True),
    (3, 16, 28, 28, 16, 3, 3, 1, 8, True),
    (2, 32, 7, 7, 30, 3, 3, 1, 6, True),
    (1, 2, 5, 5, 4, 1, 1, 0, 12, True),
]


def _direct_inputs(dtype, spec, fc, lx, rng):
    """The padded batch, term offsets, filter blocks of ``fc`` channels, bias and pooling arrays of
    a direct kernel's case ``spec`` (N, C, H, W, FN, FH, FW, pad, ..., pooled), planes ``lx`` long:
    values in the padded planes, NaN where no stored output may look (past the padded plane, and in
    the filters' channels past FN, computed in the tiles, never stored)."""
    n, c, h, w, fn, fh, fw, pad = spec[:8]
    pooled = spec[-1]
    g = _geo((n, c, h, w, fn, fh, fw, 1, pad))
    xp = (3 * rng.standard_normal((n, c, lx))).astype(dtype)
    xp[:, :, (g.h + 2 * pad) * g.wp :] = np.nan
    nblk = -(-fn // fc)
    wr = rng.standard_normal((nblk, g.k, fc)).astype(dtype)
    flat = wr.transpose(0, 2, 1)  # (nblk, fc, K) view
    for f in range(fn, nblk * fc):
        flat[f // fc, f % fc] = np.nan
    koff = (
        np.arange(c)[:, None, None] * lx + np.arange(fh)[None, :, None] * g.wp + np.arange(fw)[None, None, :]
    ).reshape(-1)
    b = rng.standard_normal(fn).astype(dtype)
    shape = (n, fn, g.oh // 2, g.ow // 2) if pooled else (0, 0, 0, 0)
    pool, arg = np.full(shape, np.nan, dtype), np.full(shape, 9, np.uint8)
    rows = (n * nblk, shape[2] * 2 * shape[3] + 1) if pooled else (0, 0)  # one column past what is written
    vals, vidx = np.full(rows, np.nan, dtype), np.full(rows, 7, np.uint8)
    out = np.full(g.out_shape, np.nan, dtype)
    return g, xp, koff.astype(np.int64), wr, b, out, (pool, arg, vals, vidx)


def _make_direct(dtype, spec, rng):
    n, c, h, w, fn, fh, fw, pad, fc, pooled = spec
    fc = _host_fc(fc)
    span = (ACC // fc) * (VB // np.dtype(dtype).itemsize)
    lx = _geo((n, c, h, w, fn, fh, fw, 1, pad)).lx + span
    g, xp, koff, wr, b, out, pooling = _direct_inputs(dtype, spec, fc, lx, rng)
    tile = np.full((n * wr.shape[0], fc * span), np.nan, dtype)
    relu = fc in (6, 12) or pooled
    return [xp, koff, wr, b, g.wp, relu, tile, out, *pooling]


#: the channel-lanes kernel (N, C, H, W, FN, FH, FW, pad, group, pooled): the 7x7 of the
#: performance issue image by image and two images a task (tiles across images), channels past a
#: block with pooling, few channels on a plane of 16 pixels with non-square filters, a 3x3 plane
#: (one pooled pixel) two images a task (the last task one), one pixel (a tile across three images,
#: a group larger than the batch), an odd plane with pooling's leftover row and column three images
#: a task, and one past the parallel threshold three images a task (the last task one)
LANES_CASES = [
    (2, 32, 7, 7, 64, 3, 3, 1, 1, False),
    (4, 32, 7, 7, 64, 3, 3, 1, 2, False),
    (3, 5, 8, 8, 70, 3, 3, 1, 2, True),
    (1, 3, 5, 6, 20, 2, 3, 0, 1, False),
    (3, 4, 3, 3, 64, 3, 3, 1, 2, True),
    (3, 2, 1, 1, 8, 1, 1, 0, 5, False),
    (4, 3, 9, 7, 33, 3, 2, 2, 3, True),
    (40, 16, 8, 8, 64, 3, 3, 1, 3, False),
]


def _make_direct_lanes(dtype, spec, rng):
    n, c, h, w, fn, fh, fw, pad, group, pooled = spec
    fc = ACC // 6 * (VB // np.dtype(dtype).itemsize)
    lx = (h + 2 * pad) * (w + 2 * pad) + 3  # a little past the padded plane
    g, xp, koff, wr, b, out, pooling = _direct_inputs(dtype, spec, fc, lx, rng)
    tasks = -(-n // group) * wr.shape[0]
    pof = np.full((tasks, 13), -1, np.int64)  # one column past what is written
    tile = np.full((tasks, 6 * fc + 1), np.nan, dtype)
    return [xp, koff, wr, b, g.wp, pooled or fn % 2 == 0, group, pof, tile, out, *pooling]


def _conv_direct_rows(xp, foff, wr, b, wp, fh, fw, relu, tile, out):
    n, planes, lx = xp.shape
    c = foff.shape[0]
    fn, oh, ow = out.shape[1:]
    lanes = VB // xp.itemsize
    vectors = -(-ow // lanes)
    width, rows = vectors * lanes, ACC // max(vectors, 1)
    if vectors not in (2, 4) or fh not in (3, 5) or wr.shape[1] != c * fh * fw or c > planes:
        return
    if (-(-oh // rows) * rows + fh - 2) * wp + fw - 1 + width > lx or out.shape[0] != n:
        return
    last = ((oh - 1) // rows) * rows  # the first output row of each task's last tile, left in ``tile``
    xf = xp.reshape(n, planes * lx)
    koff = (foff[:, None, None] + np.arange(fh)[None, :, None] * wp + np.arange(fw)[None, None, :]).reshape(-1)
    q = (np.arange(oh)[:, None] * wp + np.arange(ow)[None, :]).reshape(-1)
    p = ((last + np.arange(rows))[:, None] * wp + np.arange(width)[None, :]).reshape(-1)
    w2 = wr[:fn, :, 0]
    for i in range(n):
        v = (w2 @ xf[i][koff[:, None] + q[None, :]] + b[:fn, None]).reshape(fn, oh, ow)
        out[i] = reference.relu_forward(v) if relu else v
        tile[i * fn : (i + 1) * fn, : rows * width] = w2 @ xf[i][koff[:, None] + p[None, :]]


#: the rows tile (N, C, H, W, FN, FH, FW, pad, stride[, planes]): outputs of 2 or 4 vectors (float32
#: and float64: 2 and 4 at OW 26-29, 4 and 8 at 60, 1 and 2 at 13, 1 at 3: not served, nothing
#: written), filters of 3 and 5 rows, non-square, FN 1-3, SimpleConvNet's input gradient (30 -> 1
#: channel, 5x5 "full" padding 4) past the parallel threshold, planes smaller than a tile; input
#: rows of the tile's width (stride 0), as wide as the padded rows, wider (with more planes an image
#: than the input's channels), and narrower: the input gradient laid out in the forward's rows of 28,
#: each row's zero columns the next one's left padding, in planes of FN rounded up to 4; the tiles
#: of 5 rows by 2 vectors in float64 (OW 10) and by 4 in float32 (OW 56); the planes exactly as long
#: as the tile reads (a trailing slack of 0) and one element shorter (-1: nothing written)
ROWS_SHAPES = [
    (1, 1, 5, 30, 1, 3, 3, 0, 0),
    (2, 3, 12, 28, 2, 5, 5, 1, 0),
    (3, 2, 9, 26, 3, 3, 2, 2, 0),
    (2, 4, 10, 13, 3, 3, 3, 1, 0),
    (1, 2, 7, 60, 1, 3, 3, 1, 0),
    (2, 30, 24, 24, 1, 5, 5, 4, 0),
    (1, 1, 5, 5, 1, 3, 3, 0, 0),
    (2, 30, 24, 24, 1, 5, 5, 4, 28, 32),
    (3, 2, 9, 26, 3, 3, 2, 2, 40, 3),
    (2, 3, 30, 27, 2, 5, 3, 2, 31),
    (2, 3, 10, 12, 2, 5, 5, 1, 0),
    (1, 2, 6, 56, 1, 5, 5, 2, 0),
    (2, 30, 24, 24, 1, 5, 5, 4, 28, 32, 0),
    (2, 30, 24, 24, 1, 5, 5, 4, 28, 32, -1),
]


def _make_direct_rows(dtype, spec, rng):
    n, c, h, w, fn, fh, fw, pad, stride = spec[:9]
    planes = spec[9] if len(spec) > 9 else c
    slack = spec[10] if len(spec) > 10 else 3  # elements past what the tiles read
    lanes = VB // np.dtype(dtype).itemsize
    hp, wpad = h + 2 * pad, w + 2 * pad
    oh, ow = hp - fh + 1, wpad - fw + 1
    vectors = -(-ow // lanes)
    wp = stride or max(vectors * lanes, wpad)
    rows = max(1, ACC // max(vectors, 1))  # any positive count where the tile does not serve
    lx = (-(-oh // rows) * rows + fh - 2) * wp + fw - 1 + vectors * lanes + slack
    if vectors not in (2, 4):  # not served (nothing written): planes that hold the input
        lx = max(lx, hp * wp)
    # values in the padded planes, NaN where no stored output may look: past the planes' rows and
    # in the columns past W + 2*pad of rows wider than that; rows narrower (the flat layout, each
    # row's zero columns the next one's left padding) hold the padded plane's values as read flat
    xp = np.full((n, planes, lx), np.nan, dtype)
    if wp >= wpad:
        view = xp[:, :c, : hp * wp].reshape(n, c, hp, wp)
        view[..., :wpad] = 3 * rng.standard_normal((n, c, hp, wpad))
    else:  # the flat plane: rows of wp >= W + pad, the padding's zero columns shared by neighbouring rows
        assert wp >= w + pad, spec
        flat = np.zeros((n, c, max(lx, hp * wp)), dtype)
        inner = flat[:, :, : hp * wp].reshape(n, c, hp, wp)
        inner[:, :, pad : pad + h, pad : pad + w] = 3 * rng.standard_normal((n, c, h, w))
        xp[:, :c] = flat[:, :, :lx]  # zero up to the plane's end: the padding past the last row
    wr = rng.standard_normal((fn, c * fh * fw, 1)).astype(dtype)
    b = rng.standard_normal(fn).astype(dtype)
    tile = np.full((n * fn, rows * vectors * lanes), np.nan, dtype)
    out = np.full((n, fn, oh, ow), np.nan, dtype)
    return [xp, (np.arange(c) * lx).astype(np.int64), wr, b, wp, fh, fw, fn == 2, tile, out]


def _direct_geo(spec):
    n, c, h, w, fn, fh, fw, pad, fc = spec
    g = _geo((n, c, h, w, fn, fh, fw, 1, pad))
    return g, fh - 1 - pad, fw - 1 - pad


def _conv_dout_direct(dout, y, relu, wp, qh, qw, padded, g, dpad, db, arg, sums, n0):
    fn, oh, ow = y.shape[1:]
    n = dpad.shape[0] if g.shape[0] == 0 else g.shape[0]  # the images laid out: n0 ... n0 + n - 1
    dout, y = dout[n0 : n0 + n], y[n0 : n0 + n]
    arg = arg[n0 : n0 + n] if arg.shape[0] else arg
    if arg.shape[0]:  # dout: a 2x2, stride 2 pooling's upstream gradient, arg its indices
        ph2, pw2 = arg.shape[2:]
        up = np.zeros(y.shape, y.dtype)
        for k in range(4):  # an index past 3 adds nothing
            sel = arg == k
            up[:, :, k // 2 : 2 * ph2 : 2, k % 2 : 2 * pw2 : 2][sel] = (y.dtype.type(0) + dout)[sel]
        dout = up
    d = reference.relu_backward(dout, y) if relu else dout
    rows = np.zeros((n, fn, g.shape[2]), dpad.dtype)
    rows[:, :, : oh * wp].reshape(n, fn, oh, wp)[..., :ow] = d
    if g.shape[0]:  # empty: shared, the layout in dpad only
        g[:, :fn] = rows
    if padded:  # shared: rows of wp, each row's zero columns past OW the next one's left padding
        wd = wp if g.shape[0] == 0 else ow + 2 * qw
        at = ((np.arange(oh)[:, None] + qh) * wd + qw + np.arange(ow)[None, :]).reshape(-1)
        planes = np.zeros((n, *dpad.shape[1:]), dpad.dtype)  # the planes past FN too
        planes[:, :fn, at] = d.reshape(n, fn, oh * ow)
        dpad[:n] = planes
    sums[n0 : n0 + n, :fn] = rows.sum(axis=2)
    db[...] = 0
    for i in range(n0 + n):
        db += sums[i, :fn]


#: the direct backward's layout of the gradient: the forward's shapes, and (a trailing True) the
#: gradient of a 2x2 pooling after the ReLU, odd planes and past the parallel threshold included;
#: then the layout in dpad only ("shared", a second trailing True): "same" padding, and with less
#: (pad 0 and 1 of 5x5 filters: rows of the forward's width, narrower than the padded gradient's),
#: FN not a multiple of 4 (dpad's planes past FN zeroed)
DOUT_SHAPES = [(*s, False, False) for s in DIRECT_SHAPES] + [
    (2, 3, 9, 8, 4, 3, 2, 0, 6, True, False),
    (3, 16, 28, 28, 16, 3, 3, 1, 8, True, False),
    (5, 3, 61, 47, 13, 3, 2, 1, 8, True, False),
    (3, 16, 28, 28, 16, 3, 3, 1, 8, False, True),
    (3, 16, 28, 28, 16, 3, 3, 1, 8, True, True),
    (2, 3, 9, 7, 4, 3, 3, 1, 6, True, True),
    (2, 5, 11, 6, 8, 5, 5, 2, 4, False, True),
    (1, 2, 5, 5, 4, 1, 1, 0, 12, False, True),
    (2, 1, 28, 28, 30, 5, 5, 0, 6, False, True),
    (2, 1, 12, 11, 6, 5, 3, 0, 6, True, True),
    (2, 3, 10, 9, 5, 5, 5, 1, 4, False, True),
    # a chunk of a batch (a 12th entry: its first image n0; the layouts hold the images from n0 on)
    (5, 3, 10, 9, 5, 5, 5, 1, 4, False, True, 2),
    (4, 16, 12, 12, 16, 3, 3, 1, 8, True, True, 3),
    (3, 3, 9, 8, 4, 3, 2, 0, 6, True, False, 1),
]


def _make_dout_direct(dtype, spec, rng):
    g, qh, qw = _direct_geo(spec[:9])
    pooled = spec[9]
    n0 = spec[11] if len(spec) > 11 else 0
    m = g.n - n0  # the images laid out
    padded = min(qh, qw) >= 0
    lanes = VB // np.dtype(dtype).itemsize
    lg = -(-g.oh * g.wp // lanes) * lanes
    fnp = -(-g.fn // 4) * 4
    y = (3 * rng.standard_normal(g.out_shape)).astype(dtype)
    if pooled:
        shape = (g.n, g.fn, g.oh // 2, g.ow // 2)
        dout = (3 * rng.standard_normal(shape)).astype(dtype)
        dout.reshape(-1)[::5] = -0.0
        arg = rng.integers(0, 5, shape).astype(np.uint8)  # 4: outside the window
    else:
        dout = (3 * rng.standard_normal(g.out_shape)).astype(dtype)
        arg = np.zeros((0, 0, 0, 0), np.uint8)
    ld = (g.oh + 2 * qh) * (g.ow + 2 * qw) + 3 if padded else 1
    if spec[10]:  # shared: rows of wp, dpad long enough for the filter gradient's layout at qh*wp + qw
        assert padded and g.wp >= g.ow + qw, spec
        ld = max((g.oh + 2 * qh) * g.wp + 3, qh * g.wp + qw + lg)
    dpad = np.full((m if padded else 0, fnp if spec[10] else g.fn, ld), np.nan, dtype)
    rows = np.full((0 if spec[10] else m, fnp, lg), np.nan, dtype)
    relu = pooled or spec[8] in (6, 12)
    sums = np.full((g.n + 1, g.fn + 1), np.nan, dtype)  # a row and a column past what is written
    sums[:n0] = rng.standard_normal((n0, g.fn + 1)).astype(dtype)  # the earlier chunks' sums
    db = rng.standard_normal(g.fn).astype(dtype)
    return [dout, y, relu, g.wp, qh, qw, padded, rows, dpad, db, arg, sums, n0]


def _conv_dw_direct(g, g0, xp, koff, nvec, acc, dw, begin, end):
    n, fnp, _ = g.shape
    g = g[:, :, g0:]
    lanes = VB // xp.itemsize
    span = nvec * lanes
    nt = ACC // 4  # the tile's terms
    fn, k = dw.shape
    xf = xp.reshape(n, -1)
    kb = koff.shape[0]
    for t in range(-(-fn // 4) * kb):
        fb, tb = divmod(t, kb)
        rows = g[:, fb * 4 : fb * 4 + 4, :span].reshape(n, 4, nvec, lanes)
        terms = xf[:, koff[tb][:, None] + np.arange(span)[None, :]].reshape(n, nt, nvec, lanes)
        lanes_sum = np.einsum("ifvl,itvl->ftl", rows, terms)  # (4, nt, lanes)
        if not begin:  # an earlier chunk's sums
            lanes_sum = lanes_sum + acc[t, : ACC * lanes].reshape(4, nt, lanes)
        acc[t, : ACC * lanes] = lanes_sum.reshape(-1)
        if not end:
            continue
        for f in range(fb * 4, min(fn, fb * 4 + 4)):
            for term in range(tb * nt, min(k, tb * nt + nt)):
                dw[f, term] = lanes_sum[f - fb * 4, term - tb * nt].sum()


def _make_dw_direct(dtype, spec, rng):
    g, _, _ = _direct_geo(spec)
    lanes = VB // np.dtype(dtype).itemsize
    nvec = -(-g.oh * g.wp // lanes)
    fnp = -(-g.fn // 4) * 4
    lx = g.lx + 2 * lanes
    xp = (3 * rng.standard_normal((g.n, g.c, lx))).astype(dtype)
    rows = (3 * rng.standard_normal((g.n, fnp, nvec * lanes))).astype(dtype)
    g0 = g.n % 3 * 5  # pixel 0 of each plane at 0, 5 or 10 (the layout in dpad: qh*wd + qw on)
    shifted = np.full((g.n, fnp, g0 + nvec * lanes + 2), np.nan, dtype)  # NaN where nothing may read
    shifted[:, :, g0 : g0 + nvec * lanes] = rows
    koff, acc, dw, begin, end = _dw_rest(g, lx, fnp // 4, ACC // 4, dtype, rng)
    return [shifted, g0, xp, koff, nvec, acc, dw, begin, end]


def _dw_rest(g, lx, blocks, nt, dtype, rng):
    """A filter gradient kernel's term offsets (Kb, ``nt``) on planes of ``lx``, its accumulators for
    ``blocks`` blocks of filters (NaN, random on a middle or last chunk; 0 past the tile: untouched),
    ``dw`` (NaN), and its ``begin`` and ``end`` flags, which vary with the shape."""
    lanes = VB // np.dtype(dtype).itemsize
    kb = -(-g.k // nt)
    koff = np.zeros(kb * nt, np.int64)
    koff[: g.k] = (
        np.arange(g.c)[:, None, None] * lx + np.arange(g.fh)[None, :, None] * g.wp + np.arange(g.fw)[None, None, :]
    ).reshape(-1)
    acc = np.full((blocks * kb, ACC * lanes + 5), np.nan, dtype)
    acc[:, ACC * lanes :] = 0
    # a middle or last chunk of a batch (the accumulators hold the earlier chunks' sums) on some shapes
    begin, end = g.n % 2 == 1 or g.c != 3, g.fn != 4
    if not begin:
        acc[:, : ACC * lanes] = rng.standard_normal((acc.shape[0], ACC * lanes)).astype(dtype)
    return koff.reshape(kb, nt), acc, np.full((g.fn, g.k), np.nan, dtype), begin, end


def _dw_lanes_pixels(g):
    return (np.arange(g.oh)[:, None] * g.wp + np.arange(g.ow)[None, :]).reshape(-1)


def _conv_dw_lanes(g, g0, xp, koff, pof, gt, acc, dw, begin, end):
    n, chunk = g.shape[0], gt.shape[0]
    lanes = VB // xp.itemsize
    fc = ACC // 6 * lanes
    fn, k = dw.shape
    copied = min(g.shape[1], gt.shape[2])
    pixel_major = np.zeros((n, pof.size, gt.shape[2]), g.dtype)  # every image's copy
    pixel_major[:, :, :copied] = g[:, :copied, g0 + pof].transpose(0, 2, 1)
    for i0 in range(0, n, chunk):  # the scratch: each chunk's copy over the one before
        gt[: min(chunk, n - i0)] = pixel_major[i0 : i0 + chunk]
    xf = xp.reshape(n, -1)
    kb = koff.shape[0]
    for t in range(-(-fn // fc) * kb):
        fb, tb = divmod(t, kb)
        terms = xf[:, pof[:, None] + koff[tb][None, :]]  # (n, P, 6)
        sums = np.einsum("ipf,ipt->tf", pixel_major[:, :, fb * fc : (fb + 1) * fc], terms)  # (6, fc)
        if not begin:  # an earlier chunk's sums
            sums = sums + acc[t, : ACC * lanes].reshape(6, fc)
        acc[t, : ACC * lanes] = sums.reshape(-1)
        if not end:
            continue
        for f in range(fb * fc, min(fn, fb * fc + fc)):
            for term in range(tb * 6, min(k, tb * 6 + 6)):
                dw[f, term] = sums[term - tb * 6, f - fb * fc]


def _make_dw_lanes(dtype, spec, rng):
    g, _, _ = _direct_geo(spec)
    lanes = VB // np.dtype(dtype).itemsize
    fc = ACC // 6 * lanes
    pof = _dw_lanes_pixels(g)
    g0 = g.n % 3 * 5  # as in dpad: pixel 0 of each plane at qh*wd + qw
    planes = -(-g.fn // 4) * 4
    layout = np.full((g.n, planes, g0 + g.oh * g.wp + 3), np.nan, dtype)  # NaN where nothing may read
    layout[:, :, g0 + pof] = (3 * rng.standard_normal((g.n, planes, pof.size))).astype(dtype)
    lx = g.lx + 2 * lanes
    xp = (3 * rng.standard_normal((g.n, g.c, lx))).astype(dtype)
    wide = -(-g.fn // fc) * fc + (fc if g.n % 2 else 0)  # wider than the blocks on some shapes
    gt = np.full((1 + g.n % 3, pof.size, wide), np.nan, dtype)  # chunks of 1 to 3 images
    koff, acc, dw, begin, end = _dw_rest(g, lx, -(-g.fn // fc), 6, dtype, rng)
    return [layout, g0, xp, koff, pof, gt, acc, dw, begin, end]


def _dw_terms(spec):
    """The terms of a filter gradient's sums: the images' padded planes."""
    return spec[0] * (spec[2] + 2 * spec[7]) * (spec[3] + 2 * spec[7])


def _pool_geo(spec):
    from fastlayers.functional.conv import pool_geometry

    n, c, h, w, ph, pw, stride, pad = spec
    return pool_geometry((n, c, h, w), ph, pw, stride, pad)


def _pool_x(dtype, g, rng):
    x = (3 * rng.standard_normal((g.n, g.c, g.h, g.w))).astype(dtype)
    x.reshape(-1)[:: max(1, x.size // 7)] = x.reshape(-1)[0]  # ties: the first maximum wins
    x.reshape(-1)[3 :: max(4, x.size // 3)] = np.nan  # NaN wins
    return x


def _first_pass(plane, oh, ow):
    """The first pass of ``_pool2x2_plane``: the better of rows 2y and 2y+1 in each of the first
    2*OW columns (the bottom one only where it wins), and its index 0 or 2, flattened."""
    top, bottom = plane[0 : 2 * oh : 2, : 2 * ow], plane[1 : 2 * oh : 2, : 2 * ow]
    take = (top == top) & ((bottom > top) | (bottom != bottom))
    return np.where(take, bottom, top).reshape(-1), np.where(take, 2, 0).reshape(-1)


def _pool_rows(x, oh, ow, vals, where):
    """The scratch rows as the classic pooling's tasks leave them (see ``maxpool_forward``)."""
    planes = x.reshape(-1, *x.shape[2:])
    tasks = min(len(planes), vals.shape[0], where.shape[0])
    per = -(-len(planes) // tasks)
    for k in range(tasks):
        last = min(len(planes), (k + 1) * per) - 1
        if last >= k * per:
            vals[k, : oh * 2 * ow], where[k, : oh * 2 * ow] = _first_pass(planes[last], oh, ow)


def _maxpool_forward(x, ph, pw, stride, pad, out, arg, vals, where):
    out[...], arg[...] = reference.maxpool_forward(x, ph, pw, stride, pad)
    n, c, h, w = x.shape
    oh, ow = out.shape[2:]
    classic = (ph, pw, stride, pad) == (2, 2, 2, 0) and 2 * oh <= h and 2 * ow <= w
    if classic and min(vals.shape[0], where.shape[0]) > 0 and min(vals.shape[1], where.shape[1]) >= oh * 2 * ow:
        _pool_rows(x, oh, ow, vals, where)


def _make_pool_forward(dtype, spec, rng):
    g = _pool_geo(spec[:8])
    shape = (g.n, g.c, g.oh, g.ow)
    # fewer rows than planes (tasks of several planes), one column past what may be written
    rows = (max(1, g.n * g.c // 3), g.oh * 2 * g.ow + 1) if spec[8] else (0, 0)
    vals = np.full(rows, np.nan, dtype)
    where = np.full(vals.shape, 7, np.uint8)
    return [_pool_x(dtype, g, rng), g.fh, g.fw, g.stride, g.pad, np.empty(shape, dtype), np.empty(shape, np.uint8),
            vals, where]  # fmt: skip


def _maxpool_backward(dout, arg, ph, pw, stride, pad, dx):
    dx[...] = reference.maxpool_backward(dout, arg, dx.shape, ph, pw, stride, pad)


def _make_pool_backward(dtype, spec, rng):
    g = _pool_geo(spec)
    _, arg = reference.maxpool_forward(_pool_x(dtype, g, rng), g.fh, g.fw, g.stride, g.pad)
    dout = (3 * rng.standard_normal(arg.shape)).astype(dtype)
    return [dout, arg.astype(np.uint8), g.fh, g.fw, g.stride, g.pad, np.full((g.n, g.c, g.h, g.w), np.nan, dtype)]


def _dropout_forward(x, k0, k1, threshold, out, mask):
    out[...], mask[...] = reference.dropout_forward(x, k0, k1, threshold)


def _make_dropout(dtype, n, rng):
    (x,) = _flat(n, dtype, rng)
    x[:: max(1, n // 5)] = np.nan  # dropped NaN stays NaN, as x * mask
    return [
        x,
        int(rng.integers(1 << 32)),
        int(rng.integers(1 << 32)),
        0x80000000,
        np.empty(n, dtype),
        np.empty(n, bool),
    ]


def _dropout_backward(dout, mask, out):
    out[...] = dout * mask


def _scale(x, a, out):
    out[...] = x * a


def _bn_parts(x, part0, part1, second):
    """Per chunk of ROWS rows: part0 = the chunk's column sums of ``x`` (or means), part1 = those of
    ``second(x chunk, part0 row)``, in float64."""
    from fastlayers._kernels.batchnorm import ROWS

    for c in range(part0.shape[0]):
        chunk = x[c * ROWS : (c + 1) * ROWS]
        part0[c], part1[c] = second(chunk)


def _bn_train(x, gamma, beta, momentum, eps, rm, rv, out, xn, mean, var, std, rm_new, rv_new, part0, part1, coef):
    def stats(chunk):
        m = chunk.astype(np.float64).mean(axis=0)
        return m, ((chunk - m) ** 2).sum(axis=0)

    _bn_parts(x, part0, part1, stats)
    n = x.shape[0]
    mean[...] = x.astype(np.float64).mean(axis=0)
    var[...] = ((x - mean) ** 2).sum(axis=0) / n
    std[...] = np.sqrt(var.astype(x.dtype) + eps)
    coef[0] = mean.astype(x.dtype)
    coef[1] = x.dtype.type(1) / std
    xn[...] = (x - coef[0]) * coef[1]
    out[...] = gamma * xn + beta
    rm_new[...] = momentum * rm + (1 - momentum) * coef[0]
    rv_new[...] = momentum * rv + (1 - momentum) * var.astype(x.dtype)


def _bn_scratch(n, d, dt, k):
    from fastlayers._kernels.batchnorm import chunks

    return [np.empty((chunks(n), d)), np.empty((chunks(n), d)), np.empty((k, d), dt)]


def _make_bn_train(dt, s, rng):
    x = _rows(s, dt, rng) + dt(1)
    d = s[1]
    per = [rng.standard_normal(d).astype(dt) for _ in range(2)] + [dt(0.9), dt(1e-6)]
    stats = [rng.standard_normal(d).astype(dt), np.abs(rng.standard_normal(d)).astype(dt)]
    outs = [
        np.empty(s, dt),
        np.empty(s, dt),
        np.empty(d),
        np.empty(d),
        np.empty(d, dt),
        np.empty(d, dt),
        np.empty(d, dt),
    ]
    return [x, *per, *stats, *outs, *_bn_scratch(s[0], d, dt, 2)]


def _bn_test(x, gamma, beta, rm, std, out):
    out[...] = gamma * ((x - rm) / std) + beta


def _bn_backward(dout, xn, gamma, std, dgamma, dbeta, dx, part0, part1, coef):
    _bn_parts(dout, part0, part1, lambda c: (c.astype(np.float64).sum(axis=0), 0.0))
    for c in range(part1.shape[0]):
        chunk = slice(c * 16, (c + 1) * 16)
        part1[c] = (dout[chunk] * xn[chunk]).astype(np.float64).sum(axis=0)  # products in the data dtype
    n = dout.shape[0]
    s0, s1 = part0.sum(axis=0), part1.sum(axis=0)
    part0[0], part1[0] = s0, s1
    dbeta[...], dgamma[...] = s0, s1
    coef[0] = gamma / std
    coef[1] = (s0 / n).astype(dout.dtype)
    coef[2] = (s1 / n).astype(dout.dtype)
    dx[...] = coef[0] * (dout - coef[1] - xn * coef[2])


def _make_bn_backward(dt, s, rng):
    d = s[1]
    xn = _rows(s, dt, rng) / dt(3)
    gamma, std = rng.standard_normal(d).astype(dt), (np.abs(rng.standard_normal(d)) + 0.5).astype(dt)
    outs = [np.empty(d, dt), np.empty(d, dt), np.empty(s, dt)]
    return [_rows(s, dt, rng), xn, gamma, std, *outs, *_bn_scratch(s[0], d, dt, 3)]


def _scalars(dtype, *values):
    return [dtype(v) for v in values]


def _groups(n, dtype, rng, k, positive=()):
    """``k`` tuples of GROUP flat arrays for the grouped optimizer kernels: the i-th arrays of the
    tuples of one length (n, about n / 3, 1, then zero-length padding); the tuples at the indices
    in ``positive`` hold non-negative values (squared-gradient state)."""
    from fastlayers._kernels.optim import GROUP

    lengths = [n, n // 3 + 1, 1] + [0] * (GROUP - 3)
    out = []
    for i in range(k):
        arrays = tuple(_flat(m, dtype, rng, 1, positive=i in positive)[0] for m in lengths)
        out.append(arrays)
    return out


def _conv_case(twin, make, tol="exact", n=lambda spec: 1) -> Case:
    return Case(twin, make, tol, shapes=CONV_SHAPES, n=n)


def _make_net(dtype, spec, rng, mode="gradient"):
    """Arguments of a whole-net kernel: the net of ``spec`` with random weights, a batch and labels."""
    n, widths, acts = spec
    dt = np.dtype(dtype)
    Ws = tuple((_rows((d, m), dt, rng) / np.sqrt(d)).astype(dt) for d, m in zip(widths[:-1], widths[1:], strict=True))
    bs = tuple(_rows((m,), dt, rng) for m in widths[1:])
    outs = tuple(np.full((n, m), np.nan, dt) for m in widths[1:])
    x = _rows((n, widths[0]), dt, rng)
    codes = np.array([*acts, 0], np.int64)
    if mode == "forward":
        return [x, Ws, bs, codes, outs]
    t = rng.integers(0, widths[-1], n)
    y, losses = np.full((n, widths[-1]), np.nan, dt), np.full(n, np.nan, dt)
    if mode == "loss":
        return [x, Ws, bs, codes, outs, t, y, losses]
    grads = tuple(np.full((n, m), np.nan, dt) for m in widths[1:])
    dWs = tuple(np.full_like(W, np.nan) for W in Ws)
    dbs = tuple(np.full_like(b, np.nan) for b in bs)
    WTs = (np.zeros((1, 1), dt), *(np.full((W.shape[1], W.shape[0]), np.nan, dt) for W in Ws[1:]))
    return [x, Ws, bs, codes, outs, t, y, losses, grads, dWs, dbs, WTs, dt.type(1) / dt.type(n)]


def _net_n(spec):
    return spec[0] + sum(spec[1])  # the terms of the longest sums that reach the weights' gradients


CASES: dict[str, Case] = {
    "conv_pad": _conv_case(_conv_pad, _make_pad),
    "conv_im2col": _conv_case(_conv_im2col, _make_im2col),
    "conv_output": _conv_case(_conv_output, _make_output),
    "conv_dout": _conv_case(_conv_dout, _make_dout, "sum", n=lambda spec: spec[0] * spec[2] * spec[3]),
    "conv_col2im": _conv_case(_conv_col2im, _make_col2im),
    "matmul": Case(
        reference.matmul,
        lambda dt, s, rng: [_rows(s[:2], dt, rng), _rows(s[1:], dt, rng), np.full((s[0], s[2]), np.nan, dt)],
        "sum",
        shapes=PRODUCT_SHAPES,
        n=lambda s: s[1],
    ),
    "matmul_tn": Case(
        reference.matmul_tn,
        lambda dt, s, rng: [_rows(s[:2], dt, rng), _rows((s[0], s[2]), dt, rng), np.full(s[1:], np.nan, dt)],
        "sum",
        shapes=PRODUCT_SHAPES,
        n=lambda s: s[0],
    ),
    "matmul_nt": Case(
        reference.matmul_nt,
        lambda dt, s, rng: [
            _rows(s[:2], dt, rng),
            _rows((s[2], s[1]), dt, rng),
            np.full((s[0], s[2]), np.nan, dt),
            np.full((1 + s[2] % 3, s[1], ACC // 6 * VB // np.dtype(dt).itemsize), np.nan, dt),  # 1 to 3 tasks
        ],
        "sum",
        shapes=PRODUCT_SHAPES,
        n=lambda s: s[1],
    ),
    "net_forward": Case(
        reference.net_forward, lambda dt, s, rng: _make_net(dt, s, rng, "forward"), "sum", shapes=NET_SHAPES, n=_net_n
    ),
    "net_loss": Case(
        reference.net_loss, lambda dt, s, rng: _make_net(dt, s, rng, "loss"), "sum", shapes=NET_SHAPES, n=_net_n
    ),
    "net_gradient": Case(reference.net_gradient, _make_net, "sum", shapes=NET_SHAPES, n=_net_n),
    "conv_direct": Case(_conv_direct, _make_direct, "sum", shapes=DIRECT_CASES, n=lambda s: s[1] * s[5] * s[6]),
    "conv_direct_lanes": Case(
        _conv_direct_lanes, _make_direct_lanes, "sum", shapes=LANES_CASES, n=lambda s: s[1] * s[5] * s[6]
    ),
    "conv_direct_rows": Case(
        _conv_direct_rows, _make_direct_rows, "sum", shapes=ROWS_SHAPES, n=lambda s: s[1] * s[5] * s[6]
    ),
    "conv_dout_direct": Case(
        _conv_dout_direct, _make_dout_direct, "sum", shapes=DOUT_SHAPES, n=lambda s: s[0] * s[2] * s[3]
    ),
    "conv_dw_direct": Case(_conv_dw_direct, _make_dw_direct, "sum", shapes=DIRECT_SHAPES, n=_dw_terms),
    "conv_dw_lanes": Case(_conv_dw_lanes, _make_dw_lanes, "sum", shapes=DIRECT_SHAPES, n=_dw_terms),
    "maxpool_forward": Case(_maxpool_forward, _make_pool_forward, "exact", shapes=POOL_FORWARD_SHAPES),
    "maxpool_backward": Case(
        _maxpool_backward, _make_pool_backward, "sum", shapes=POOL_SHAPES, n=lambda s: s[4] * s[5]
    ),
    "batchnorm_train": Case(_bn_train, _make_bn_train, "sum", rows=True),
    "batchnorm_test": Case(
        _bn_test,
        lambda dt, s, rng: [
            _rows(s, dt, rng),
            *(rng.standard_normal(s[1]).astype(dt) for _ in range(3)),
            (np.abs(rng.standard_normal(s[1])) + 0.5).astype(dt),
            np.empty(s, dt),
        ],
        "row",
        rows=True,
    ),  # fmt: skip
    "batchnorm_backward": Case(_bn_backward, _make_bn_backward, "sum", rows=True),
    "dropout_forward": Case(_dropout_forward, _make_dropout, "exact"),
    "dropout_backward": Case(
        _dropout_backward, lambda dt, n, rng: [*_flat(n, dt, rng), rng.random(n) < 0.7, np.empty(n, dt)], "exact"
    ),
    "scale": Case(_scale, lambda dt, n, rng: [*_flat(n, dt, rng), dt(0.3), np.empty(n, dt)], "exact"),
    "copy": Case(_unary_twin(np.copy), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "exact"),
    "relu_forward": Case(
        _unary_twin(reference.relu_forward), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "exact"
    ),
    "relu_backward": Case(
        _binary_twin(reference.relu_backward), lambda dt, n, rng: [*_flat(n, dt, rng, 2), np.empty(n, dt)], "exact"
    ),
    "sigmoid_forward": Case(
        _unary_twin(reference.sigmoid_forward), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "ulp"
    ),
    "sigmoid_backward": Case(
        _binary_twin(reference.sigmoid_backward), lambda dt, n, rng: [*_flat(n, dt, rng, 2), np.empty(n, dt)], "ulp"
    ),
    "bias_add": Case(_bias_add, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "exact", rows=True),
    "bias_grad": Case(_bias_grad, lambda dt, s, rng: [_rows(s, dt, rng), np.empty(s[1], dt)], "exact", rows=True),
    "bias_relu": Case(_bias_relu, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "exact", rows=True),
    "bias_sigmoid": Case(
        _bias_sigmoid, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "ulp", rows=True
    ),
    "relu_grad_bias": Case(
        _activation_grad_bias(reference.relu_backward),
        lambda dt, s, rng: [_rows(s, dt, rng), _rows(s, dt, rng), np.empty(s, dt), np.empty(s[1], dt)],
        "exact",
        rows=True,
    ),
    "sigmoid_grad_bias": Case(
        _activation_grad_bias(reference.sigmoid_backward),
        lambda dt, s, rng: [_rows(s, dt, rng), _probs(s, dt, rng), np.empty(s, dt), np.empty(s[1], dt)],
        "row",
        rows=True,
    ),
    "softmax": Case(_softmax, lambda dt, s, rng: [_rows(s, dt, rng), np.empty(s, dt)], "row", rows=True),
    "softmax_xent_labels": Case(
        _xent,
        lambda dt, s, rng: [
            _rows(s, dt, rng),
            _labels(s, rng),
            np.empty(s, dt),
            np.empty(s[0], dt),
            True,
            np.empty(s, dt),
            dt(1 / s[0]),
        ],
        "row",
        rows=True,
    ),  # fmt: skip
    "softmax_xent_probs": Case(
        _xent,
        lambda dt, s, rng: [
            _rows(s, dt, rng),
            _probs(s, dt, rng),
            np.empty(s, dt),
            np.empty(s[0], dt),
            True,
            np.empty(s, dt),
            dt(1 / s[0]),
        ],
        "row",
        rows=True,
    ),  # fmt: skip
    "xent_grad_labels": Case(
        _xent_grad,
        lambda dt, s, rng: [_probs(s, dt, rng), _labels(s, rng), dt(0.5), np.empty(s, dt)],
        "exact",
        rows=True,
    ),
    "xent_grad_probs": Case(
        _xent_grad,
        lambda dt, s, rng: [_probs(s, dt, rng), _probs(s, dt, rng), dt(0.5), np.empty(s, dt)],
        "exact",
        rows=True,
    ),
    "cross_entropy_labels": Case(
        _cross_entropy,
        lambda dt, s, rng: [_probs(s, dt, rng), _labels(s, rng), np.empty(s[0], dt)],
        "ulp",
        rows=True,
    ),
    "cross_entropy_probs": Case(
        _cross_entropy,
        lambda dt, s, rng: [_probs(s, dt, rng), _probs(s, dt, rng), np.empty(s[0], dt)],
        "row",
        rows=True,
    ),
    # optimizer updates: "row" (relative to the largest value), as p - lr * g may cancel and the
    # kernel may fuse the multiply and the subtraction (one rounding fewer than NumPy)
    "sgd": Case(reference.sgd, lambda dt, n, rng: [*_flat(n, dt, rng, 2), dt(0.1)], "row"),
    "momentum": Case(reference.momentum, lambda dt, n, rng: [*_flat(n, dt, rng, 3), *_scalars(dt, 0.1, 0.9)], "row"),
    "nesterov": Case(
        reference.nesterov, lambda dt, n, rng: [*_flat(n, dt, rng, 3), *_scalars(dt, 0.1, 0.9, 0.81, 0.19)], "row"
    ),
    "rmsprop": Case(
        reference.rmsprop,
        lambda dt, n, rng: [
            *_flat(n, dt, rng),
            *_flat(n, dt, rng, 1, positive=True),
            *_flat(n, dt, rng),
            *_scalars(dt, 0.1, 0.99, 0.01, 1e-7),
        ],
        "row",
    ),  # fmt: skip
    "adagrad": Case(
        reference.adagrad,
        lambda dt, n, rng: [
            *_flat(n, dt, rng),
            *_flat(n, dt, rng, 1, positive=True),
            *_flat(n, dt, rng),
            *_scalars(dt, 0.1, 1e-7),
        ],
        "row",
    ),  # fmt: skip
    "adam": Case(
        reference.adam,
        lambda dt, n, rng: [
            *_flat(n, dt, rng, 2),
            *_flat(n, dt, rng, 1, positive=True),
            *_flat(n, dt, rng),
            *_scalars(dt, 0.01, 0.9, 0.999, 1e-7),
        ],
        "row",
    ),  # fmt: skip
    # the grouped updates: GROUP arrays of different lengths per call, as the plain ones
    "sgd_group": Case(reference.sgd_group, lambda dt, n, rng: [*_groups(n, dt, rng, 2), dt(0.1)], "row"),
    "momentum_group": Case(
        reference.momentum_group, lambda dt, n, rng: [*_groups(n, dt, rng, 3), *_scalars(dt, 0.1, 0.9)], "row"
    ),
    "nesterov_group": Case(
        reference.nesterov_group,
        lambda dt, n, rng: [*_groups(n, dt, rng, 3), *_scalars(dt, 0.1, 0.9, 0.81, 0.19)],
        "row",
    ),
    "rmsprop_group": Case(
        reference.rmsprop_group,
        lambda dt, n, rng: [*_groups(n, dt, rng, 3, positive=(1,)), *_scalars(dt, 0.1, 0.99, 0.01, 1e-7)],
        "row",
    ),
    "adagrad_group": Case(
        reference.adagrad_group,
        lambda dt, n, rng: [*_groups(n, dt, rng, 3, positive=(1,)), *_scalars(dt, 0.1, 1e-7)],
        "row",
    ),
    "adam_group": Case(
        reference.adam_group,
        lambda dt, n, rng: [*_groups(n, dt, rng, 4, positive=(2,)), *_scalars(dt, 0.01, 0.9, 0.999, 1e-7)],
        "row",
    ),
}


def sizes(case: Case) -> list:
    if case.shapes is not None:
        return case.shapes
    return ROW_SHAPES if case.rows else FLAT_SIZES
