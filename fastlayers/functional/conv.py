"""Convolution and max pooling on NCHW batches, and the classic ``im2col``/``col2im``: the checked
functions around :mod:`fastlayers._kernels.conv` and the matrix products, and the run steps the
``Convolution`` and ``Pooling`` layers call with scratch memory they own (:class:`Workspace`).

How a convolution runs (the numba backend): the batch is padded once into a scratch array. With
stride 1 the direct kernel (:func:`fastlayers._kernels.conv.conv_direct`) computes the output from
it in one pass, bias and ReLU included (:func:`direct_plan` picks its register tile). Other strides
process it in chunks of images (:data:`CHUNK_BYTES` of column matrix each): im2col of the chunk,
one matrix product with ``W.reshape(FN, -1)``, and one pass writing the NCHW output with the bias
(and, in the nets, ReLU). The backward pass walks the chunks in reverse order (the last chunk's
column matrix is still there from an im2col forward pass), and per chunk lays out ``dout``, adds
its sums to ``db``, multiplies for ``dW`` and, when asked, for the column gradient, which is added
back into ``dx``. Details of the layouts: :mod:`fastlayers._kernels.conv`.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .. import _gemm, reference
from .._kernels import accumulators, lazy, vector_bytes
from .._kernels._threads import launch, load_numba
from ._checks import FLOATS, as_array, check_out, compute_dtype, convert, numpy_backend, plain

_conv = lazy("conv")  # imported (with Numba) at the first kernel call

#: Bytes of column matrix per chunk of images: large enough for efficient products, small enough
#: to stay in the processor's caches (measured: docs/PERFORMANCE.md).
CHUNK_BYTES = 8 << 20


def _int(value, name: str, low: int) -> int:
    """``value`` as a Python int >= ``low`` (bools refused; NumPy integers accepted)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def require_4d(a: np.ndarray, name: str, what: str) -> None:
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D {what}, got {a.ndim}-D with shape {a.shape}")


class Geometry(NamedTuple):
    """The sizes of one convolution (or pooling) call."""

    n: int
    c: int
    h: int
    w: int
    fn: int
    fh: int
    fw: int
    stride: int
    pad: int
    oh: int
    ow: int

    @property
    def wp(self) -> int:
        return self.w + 2 * self.pad

    @property
    def r(self) -> int:
        """Row width of the column layout: the padded input's with stride 1, else OW."""
        return self.wp if self.stride == 1 else self.ow

    @property
    def seg(self) -> int:
        """Columns per image."""
        return self.oh * self.r

    @property
    def lx(self) -> int:
        """Length of a padded, flattened plane (room for im2col's last contiguous copy)."""
        return (self.h + 2 * self.pad) * self.wp + self.fw

    @property
    def k(self) -> int:
        return self.c * self.fh * self.fw

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.fn, self.oh, self.ow)

    def chunk(self, itemsize: int) -> int:
        """Images per chunk."""
        return max(1, min(self.n, CHUNK_BYTES // max(1, self.k * self.seg * itemsize)))


def geometry(x_shape: tuple, w_shape: tuple, stride, pad, names=("x", "W", "filter")) -> Geometry:
    """Check the sizes of a convolution of ``x_shape`` (N, C, H, W) with filters ``w_shape``
    (FN, C, FH, FW) (for pooling: (C, C, ph, pw)) and return them with the output size.

    Raises
    ------
    ValueError
        Not 4-D, an empty batch or plane, channels that differ, a filter larger than the padded
        input, ``stride`` < 1, ``pad`` < 0.
    TypeError
        A non-integer ``stride`` or ``pad``.
    """
    xname, wname, what = names
    stride = _int(stride, "stride", 1)
    pad = _int(pad, "pad", 0)
    n, c, h, w = x_shape
    fn, fc, fh, fw = w_shape
    if n == 0:
        raise ValueError(f"{xname} is an empty batch (shape {tuple(x_shape)}); at least one image is needed")
    if min(c, h, w) == 0:
        raise ValueError(f"{xname} has an empty dimension (shape {tuple(x_shape)})")
    if min(fn, fc, fh, fw) == 0:
        raise ValueError(f"{wname} has an empty dimension (shape {tuple(w_shape)})")
    if fc != c:
        raise ValueError(
            f"{xname} has {c} channels (shape {tuple(x_shape)}) but {wname} expects {fc} (shape {tuple(w_shape)})"
        )
    if fh > h + 2 * pad or fw > w + 2 * pad:
        raise ValueError(
            f"the {fh}x{fw} {what} is larger than the padded input: {xname} of shape {tuple(x_shape)} "
            f"with pad={pad} is {h + 2 * pad}x{w + 2 * pad}"
        )
    oh = reference.conv_output_size(h, fh, stride, pad)
    ow = reference.conv_output_size(w, fw, stride, pad)
    return Geometry(n, c, h, w, fn, fh, fw, stride, pad, oh, ow)


def _filters(W: np.ndarray, b: np.ndarray | None) -> None:
    require_4d(W, "W", "(FN, C, FH, FW)")
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},) to match W of shape {W.shape}, got {b.shape}")


# --------------------------------------------------------------------------------------------
# scratch memory and the run steps (numba backend, validated operands of one dtype)
# --------------------------------------------------------------------------------------------
class Workspace:
    """Scratch memory of one convolution: the padded batch (kept for the backward pass), the column
    matrix of one chunk, the product of one chunk, the padded planes of a chunk's gradient. A layer
    owns one and never hands its arrays out; the functional API uses a fresh one per call."""

    def __init__(self) -> None:
        self.xp: np.ndarray | None = None
        self.geo: Geometry | None = None
        self.col_chunk = -1  # first image of the chunk whose column matrix ``col`` holds, or -1
        self._flat: dict[str, np.ndarray] = {}

    def flat(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` on memory this workspace keeps (grown when too small)."""
        size = int(np.prod(shape))
        buf = self._flat.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self._flat[name] = np.empty(max(size, 1), dtype)
        return buf[:size].reshape(shape)


def _chunks(geo: Geometry, itemsize: int) -> list[tuple[int, int]]:
    step = geo.chunk(itemsize)
    return [(n0, min(geo.n, n0 + step) - n0) for n0 in range(0, geo.n, step)]


#: The output channels of the direct kernel's register tiles, in the order preferred on a tie: those
#: that divide the accumulators of the process's register configuration (``_kernels.accumulators``;
#: each tile's vectors of pixels are the accumulators over its channels), as
#: ``_kernels._numba.CONV_TILES`` (numbers here so that this module needs no Numba).
DIRECT_CHANNELS = (8, 6, 4, 12, 3, 2, 1)


@functools.cache
def direct_tiles() -> tuple[tuple[int, int], ...]:
    """The direct kernel's register tiles in this process, (output channels, vectors of pixels)."""
    acc = accumulators()
    return tuple((fc, acc // fc) for fc in DIRECT_CHANNELS if acc % fc == 0)


def _tile(fn: int, total: int, itemsize: int) -> tuple[int, int]:
    """(output channels, pixels) of the direct kernel's tile for ``fn`` output channels over
    ``total`` pixels: for fn <= 3 the tile of that many channels; otherwise, of the tiles of 4 to 12
    channels, the one that computes the fewest padded terms (the first on a tie). The tiles of 1-3
    channels load a vector of input per 3 FMAs or fewer: measured much slower than the others
    wherever those waste no more than a few channels (docs/PERFORMANCE.md)."""
    lanes = vector_bytes() // itemsize
    if fn <= 3:
        fc = fn
        return fc, (accumulators() // fc) * lanes
    best = None
    for fc, vectors in direct_tiles():
        if fc < 4:
            continue
        span = vectors * lanes
        cost = -(-total // span) * span * (-(-fn // fc) * fc)
        if best is None or cost < best[0]:
            best = (cost, fc, span)
    return best[1], best[2]


def direct_plan(geo: Geometry, itemsize: int) -> tuple[int, int] | None:
    """(output channels, pixels) of the direct kernel's tile for this convolution, or None when it
    takes the im2col path (stride > 1). The tile is the one that computes the fewest padded terms:
    output channels rounded up to the tile's, pixels ``OH * wp`` rounded up to its span (measured:
    docs/PERFORMANCE.md)."""
    if geo.stride != 1:
        return None
    return _tile(geo.fn, geo.oh * geo.wp, itemsize)


#: The pixels of the channel-lanes tile of :func:`~fastlayers._kernels.conv.conv_direct_lanes` and
#: of the filter gradient's (``_kernels._numba.CONV_LANES_TILE``, ``CONV_DW_LANES_TILE``: their
#: vectors of channels are the accumulators over these).
LANES_POINTS = 6
#: The largest ratio of the terms the lanes kernel computes to those the direct kernel computes at
#: which a convolution takes the lanes kernel, per item size: it loads a filter vector per 6 FMAs
#: where the direct tile loads an input vector per 8, so it pays only where the padded rows waste
#: more (measured: docs/PERFORMANCE.md, "Small planes: output channels in the lanes"; in float64
#: since its tasks take several images, it wins at 0.818-0.825 and loses at 0.914).
LANES_MAX_RATIO = {4: 0.85, 8: 0.85}


def _lanes_block(itemsize: int) -> tuple[int, int]:
    """(output channels, pixels) of the channel-lanes tile in this item size (:data:`LANES_POINTS`
    pixels by the accumulators over them in vectors of channels)."""
    return accumulators() // LANES_POINTS * (vector_bytes() // itemsize), LANES_POINTS


#: The most images a task of the channel-lanes kernel takes (its tiles run on from one image's
#: plane into the next): more leaves too few tasks to share between threads.
LANES_GROUP_MAX = 4


@functools.lru_cache(maxsize=256)
def lanes_group(n: int, nblk: int, plane: int, threads: int) -> int:
    """Images per task of :func:`~fastlayers._kernels.conv.conv_direct_lanes` for ``n`` images,
    ``nblk`` blocks of channels and planes of ``plane`` pixels on ``threads`` threads: of 1 to
    ``LANES_GROUP_MAX``, the count whose tasks are done soonest (in tiles: each task's pixels
    rounded up to the tile's; the larger of the full tasks shared out whole and all the tiles
    shared out evenly), the smaller on a tie. One image a task computes up to 5 pixels a plane that
    it does not store (10% at 7x7); several leave that once per task (docs/PERFORMANCE.md, "Small
    planes: output channels in the lanes")."""
    points = LANES_POINTS
    best, cost = 1, -1
    for group in range(1, min(LANES_GROUP_MAX, n) + 1):
        full, rest = (n // group) * nblk, n % group
        tiles = -(-(group * plane) // points)
        left = nblk * -(-(rest * plane) // points)  # the last images' tasks, when the groups do not divide n
        c = max(-(-full // threads) * tiles, -(-(full * tiles + left) // threads))
        if cost < 0 or c < cost:
            best, cost = group, c
    return best


def _lanes_threads(macs: int) -> int:
    """The threads the channel-lanes kernel runs on for ``macs`` multiply-adds (as ``launch``)."""
    return load_numba().get_num_threads() if macs >= _conv.conv_direct_lanes.parallel_min else 1


def _lanes(ws: Workspace, name: str, macs: int, xp, koff, wr, b, wp: int, relu: bool, tile, out, *pool) -> None:
    """:func:`~fastlayers._kernels.conv.conv_direct_lanes` into ``out`` with tasks of
    :func:`lanes_group` images, each task's pixel offsets (in the input and in ``out``: 2P
    columns) in the private scratch ``name``; ``pool``: the kernel's (pool, arg, vals, vidx)."""
    n, _, oh, ow = out.shape
    group = lanes_group(n, wr.shape[0], oh * ow, _lanes_threads(macs))
    pof = ws.flat(name, (tile.shape[0], 2 * LANES_POINTS), np.dtype(np.int64))
    launch(_conv.conv_direct_lanes, macs, xp, koff, wr, b, wp, relu, group, pof, tile, out, *pool)


def lanes_serve(fn: int, oh: int, ow: int, wp: int, itemsize: int) -> bool:
    """Whether a stride-1 convolution to ``fn`` output channels of OH x OW pixels, on padded rows
    of width ``wp``, runs on :func:`~fastlayers._kernels.conv.conv_direct_lanes`: its tiles compute
    the pixels rounded up to 6 and the channels rounded up to its block (:func:`_lanes_block`), at most
    ``LANES_MAX_RATIO`` times the terms of the direct kernel's tile (:func:`_tile`)."""
    fc, points = _lanes_block(itemsize)
    lanes_terms = -(-(oh * ow) // points) * points * (-(-fn // fc) * fc)
    dfc, span = _tile(fn, oh * wp, itemsize)
    direct_terms = -(-(oh * wp) // span) * span * (-(-fn // dfc) * dfc)
    return lanes_terms <= LANES_MAX_RATIO.get(itemsize, 0.0) * direct_terms


#: When a backward pass takes the filter gradient's channel-lanes kernel (:func:`dw_lanes_serve`):
#: planes of at most ``DW_LANES_MAX_PIXELS`` output pixels (8x8), where it computes at most
#: ``DW_LANES_MAX_RATIO`` times the terms of :func:`~fastlayers._kernels.conv.conv_dw_direct`
#: (measured: docs/PERFORMANCE.md, "Small planes: filters in the lanes of the filter gradient"; on
#: larger planes it won and lost by turns within the noise at the same ratios, at 5x5 1->30 24x24
#: float64 it lost at 0.86).
DW_LANES_MAX_RATIO = 0.9
DW_LANES_MAX_PIXELS = 64


def dw_lanes_serve(fn: int, oh: int, ow: int, wp: int, itemsize: int) -> bool:
    """Whether the filter gradient of a direct convolution to ``fn`` output channels of OH x OW
    pixels, on padded rows of width ``wp``, runs on
    :func:`~fastlayers._kernels.conv.conv_dw_lanes`: its tasks visit the output's pixels for
    filters rounded up to the lanes tile's block (:func:`_lanes_block`), those of
    :func:`~fastlayers._kernels.conv.conv_dw_direct` the pixels ``OH * wp`` rounded up to a vector
    for filters rounded up to 4; small planes only (``DW_LANES_MAX_PIXELS``), where the lanes
    compute at most ``DW_LANES_MAX_RATIO`` times as many."""
    lanes = vector_bytes() // itemsize
    fc = _lanes_block(itemsize)[0]
    lanes_terms = oh * ow * -(-fn // fc) * fc
    direct_terms = -(-(oh * wp) // lanes) * lanes * -(-fn // 4) * 4
    return oh * ow <= DW_LANES_MAX_PIXELS and lanes_terms <= DW_LANES_MAX_RATIO * direct_terms


def _offsets(ws: Workspace, name: str, c: int, fh: int, fw: int, lx: int, wp: int, rows: int = 0) -> np.ndarray:
    """The term offsets c*lx + ky*wp + kx of the K = c*fh*fw terms, int64, private; with ``rows``,
    in rows of that many, the last row filled with 0."""
    k = c * fh * fw
    size = -(-k // rows) * rows if rows else k
    koff = ws.flat(name, (size,), np.dtype(np.int64))
    koff[:k] = (
        np.arange(c)[:, None, None] * lx + np.arange(fh)[None, :, None] * wp + np.arange(fw)[None, None, :]
    ).reshape(k)
    koff[k:] = 0
    return koff.reshape(-1, rows) if rows else koff


def _blocks(ws: Workspace, name: str, W2: np.ndarray, fc: int) -> np.ndarray:
    """``W2`` (FN, K) as private blocks (nblk, K, fc) of ``fc`` output channels, 0 past FN."""
    fn, k = W2.shape
    nblk = -(-fn // fc)
    wide = ws.flat(name + "_wide", (nblk * fc, k), W2.dtype)
    wide[:fn] = W2
    wide[fn:] = 0
    wr = ws.flat(name, (nblk, k, fc), W2.dtype)
    wr[...] = wide.reshape(nblk, fc, k).transpose(0, 2, 1)
    return wr


def _no_pool(dtype: np.dtype) -> np.ndarray:
    """The empty pooled output that tells the direct kernel not to pool."""
    return np.empty((0, 0, 0, 0), dtype)


def _no_rows(dtype: np.dtype) -> np.ndarray:
    """Empty scratch rows for a kernel's pooling that does not run."""
    return np.empty((0, 0), dtype)


def _direct(xp, W, b, geo: Geometry, plan: tuple[int, int], out, relu: bool, ws: Workspace, pool=None) -> None:
    """The direct kernel on the padded batch ``xp``: the filters rearranged into blocks of the
    tile's output channels, the offsets of the K terms, and the tiles' scratch, all private;
    ``pool``: None, or the (pooled output, indices) of a 2x2 pooling done in the same pass."""
    fc, span = plan
    lanes = lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, W.dtype.itemsize)
    if lanes:
        fc, span = _lanes_block(W.dtype.itemsize)
    koff = _offsets(ws, "koff", geo.c, geo.fh, geo.fw, xp.shape[2], geo.wp)
    wr = _blocks(ws, "wr", W.reshape(geo.fn, geo.k), fc)
    tile = ws.flat("tile", (geo.n * wr.shape[0], fc * span), W.dtype)
    macs = geo.n * geo.fn * geo.oh * geo.ow * geo.k
    if pool is None:
        pooled, arg, vals, vidx = _no_pool(W.dtype), _NO_ARG, _no_rows(W.dtype), _NO_VIDX
    else:
        pooled, arg = pool
        rows = (tile.shape[0], pooled.shape[2] * 2 * pooled.shape[3])
        vals, vidx = ws.flat("pool_vals", rows, W.dtype), ws.flat("pool_vidx", rows, np.dtype(np.uint8))
    if lanes:
        _lanes(ws, "pof", macs, xp, koff, wr, b, geo.wp, relu, tile, out, pooled, arg, vals, vidx)
    else:
        launch(_conv.conv_direct, macs, xp, koff, wr, b, geo.wp, relu, tile, out, pooled, arg, vals, vidx)


def direct_backward_serves(ws: Workspace, dtype: np.dtype, with_dx: bool) -> bool:
    """Whether the backward pass of the latest forward in ``ws`` runs without products
    (:func:`_direct_backward`): the forward was direct, and the input gradient, when asked, needs
    a pad of at most FH-1 and FW-1."""
    geo = ws.geo
    plan = direct_plan(geo, dtype.itemsize)
    qh, qw = geo.fh - 1 - geo.pad, geo.fw - 1 - geo.pad
    return plan is not None and ws.xp.shape[2] == geo.lx + plan[1] and not (with_dx and min(qh, qw) < 0)


_NO_ARG = np.zeros((0, 0, 0, 0), np.uint8)
_NO_VIDX = np.zeros((0, 0), np.uint8)
#: Whether the direct backward that computes the input gradient lays the upstream gradient out once
#: (see :func:`_direct_backward`); off only to compare with the two-layout pass.
SHARE_LAYOUT = True
#: The most bytes of the padded gradient that the direct backward with the input gradient lays out
#: at a time (:func:`backward_chunk`): a chunk's layout written, then read by the filter gradient and
#: the input gradient while it is in the last-level cache (docs/PERFORMANCE.md, "The gradient's
#: layouts").
BACKWARD_CHUNK_BYTES = 4 << 20


def backward_chunk(n: int, image_bytes: int) -> int:
    """Images per chunk of the direct backward pass that lays out the padded gradient
    (``image_bytes`` an image): all ``n`` when the whole layout is within twice
    :data:`BACKWARD_CHUNK_BYTES` (two chunks of such a layout were slower than one), else as many as
    keep a chunk within it, at least one."""
    if n * image_bytes <= 2 * BACKWARD_CHUNK_BYTES:
        return n
    return max(1, min(n, BACKWARD_CHUNK_BYTES // max(image_bytes, 1)))


def _direct_backward(dout, y, W: np.ndarray, ws: Workspace, with_dx: bool, relu: bool, dx, dW, db, arg=None) -> bool:
    """The backward pass of a direct forward without products: the upstream gradient laid out once
    (:func:`~fastlayers._kernels.conv.conv_dout_direct`), the filter gradient by
    :func:`~fastlayers._kernels.conv.conv_dw_direct` (where :func:`dw_lanes_serve` says so, by
    :func:`~fastlayers._kernels.conv.conv_dw_lanes`, which copies that layout pixel by pixel a few
    images at a time), the input gradient as a direct convolution of
    the gradient padded by FH-1-pad, FW-1-pad with the filters flipped and transposed. With the
    input gradient, the three run chunk by chunk of images (:func:`backward_chunk`), so that a
    chunk's layout is still in cache when the two convolutions read it; the bits are those of one
    chunk. False (nothing done) when :func:`direct_backward_serves` says no. With ``arg`` (uint8
    indices of a 2x2, stride 2 pooling after the ReLU, shaped like ``dout``), ``dout`` is the
    pooling's upstream gradient."""
    geo = ws.geo
    dtype = W.dtype
    if not direct_backward_serves(ws, dtype, with_dx):
        return False
    qh, qw = geo.fh - 1 - geo.pad, geo.fw - 1 - geo.pad
    lanes = vector_bytes() // dtype.itemsize
    nvec = -(-geo.oh * geo.wp // lanes)
    fnp = -(-geo.fn // 4) * 4
    # One layout of the gradient for both (pad <= FH-1, FW-1, the padding of every net): the padded
    # gradient that the input gradient reads is laid out with the forward's row width wp >= OW + qw,
    # each row's zero columns past OW serving as the next row's left padding, so that it holds the
    # filter gradient's layout too, shifted by qh*wp + qw; the filter gradient reads it there, in
    # planes of FN rounded up to 4 (the rest zero), and no second copy of the gradient is made
    shared = SHARE_LAYOUT and with_dx and min(qh, qw) >= 0 and geo.wp >= geo.ow + qw
    hd, wd = geo.oh + 2 * max(qh, 0), (geo.wp if shared else geo.ow + 2 * max(qw, 0))
    g0 = qh * wd + qw if shared else 0  # where the filter gradient's pixel 0 lies in its planes
    rows = with_dx and rows_serve(geo.c, geo.fh, geo.w, dtype.itemsize)
    by_lanes = with_dx and not rows and lanes_serve(geo.c, geo.h, geo.w, wd, dtype.itemsize)
    lg = nvec * lanes
    planes, length = (fnp if shared else geo.fn), 0
    if with_dx:
        if rows:  # its tiles: R rows of V vectors, read from rows wd apart
            vectors = -(-geo.w // lanes)
            r = accumulators() // vectors
            fc, span = 1, r * vectors * lanes
            length = (-(-geo.h // r) * r + geo.fh) * wd + geo.fw + vectors * lanes
        else:
            fc, span = _tile(geo.c, geo.h * wd, dtype.itemsize)
            length = hd * wd + geo.fw + span
        length = max(length, g0 + lg)
    # With the input gradient, the layouts chunk by chunk of images, each chunk read by the two
    # convolutions while it is in cache; without it, whole (chunks measured slower: the filter
    # gradient alone reads the layout once, in chunks of its own that stay in L2)
    per_image = (planes * length + (0 if shared else fnp * lg)) * dtype.itemsize
    chunk = backward_chunk(geo.n, per_image) if with_dx else geo.n
    dpad = ws.flat("dpad", (chunk, planes, length) if with_dx else (0, geo.fn, 1), dtype)
    if shared:
        g = np.empty((0, fnp, lg), dtype)  # not written: its layout is in dpad
    else:
        g = ws.flat("g", (chunk, fnp, lg), dtype)
        g[:, geo.fn :] = 0
    arg = _NO_ARG if arg is None else arg
    sums = ws.flat("db_sums", (geo.n, geo.fn), dtype)
    dw_lanes = dw_lanes_serve(geo.fn, geo.oh, geo.ow, geo.wp, dtype.itemsize)
    # the term rows of the filter gradient's tasks: the lanes tile's pixels, or the direct tile's
    # accumulators over its 4 filters
    terms = LANES_POINTS if dw_lanes else accumulators() // 4
    koff = _offsets(ws, "koff_dw", geo.c, geo.fh, geo.fw, ws.xp.shape[2], geo.wp, rows=terms)
    blocks = fnp // 4  # the filter gradient's blocks of filters: its tasks are blocks x term rows
    if dw_lanes:  # scratch for a chunk of the gradient pixel by pixel, its filters contiguous
        fcl = _lanes_block(dtype.itemsize)[0]
        fnl, npix = -(-geo.fn // fcl) * fcl, geo.oh * geo.ow
        blocks = fnl // fcl
        pof = ws.flat("pof_dw", (npix,), np.dtype(np.int64))
        pof[...] = (np.arange(geo.oh)[:, None] * geo.wp + np.arange(geo.ow)[None, :]).reshape(-1)
        images = max(1, min(chunk, _conv.DW_CHUNK_ELEMENTS // (npix * fnl + geo.c * ws.xp.shape[2])))
        gt = ws.flat("g_lanes", (images, npix, fnl), dtype)
    acc = ws.flat("acc_dw", (blocks * koff.shape[0], accumulators() * lanes), dtype)
    dW2 = dW.reshape(geo.fn, geo.k)
    if with_dx:
        flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(geo.c, geo.fn * geo.fh * geo.fw)
        if by_lanes:
            fc, span = _lanes_block(dtype.itemsize)
        wr = _blocks(ws, "wr_dx", flipped, fc)
        zeros = ws.flat("zeros", (geo.c,), dtype)
        zeros[...] = 0
        if rows:
            foff = ws.flat("foff_dx", (geo.fn,), np.dtype(np.int64))
            foff[...] = np.arange(geo.fn) * dpad.shape[2]
        else:
            koff_dx = _offsets(ws, "koff_dx", geo.fn, geo.fh, geo.fw, dpad.shape[2], wd)
            none = (_no_pool(dtype), _NO_ARG, _no_rows(dtype), _NO_VIDX)
    for n0 in range(0, geo.n, chunk):
        m = min(chunk, geo.n - n0)
        padded, rows_g = dpad[:m], (g if shared else g[:m])  # this chunk's layouts
        args = (dout, y, relu, geo.wp, qh, qw, with_dx, rows_g, padded, db, arg, sums, n0)
        launch(_conv.conv_dout_direct, m * y[0].size, *args)
        macs = m * geo.fn * geo.oh * geo.ow * geo.k
        xs = ws.xp[n0 : n0 + m]
        part = padded if shared else rows_g  # where the filter gradient reads the layout
        first, last = n0 == 0, n0 + m == geo.n
        if dw_lanes:
            launch(_conv.conv_dw_lanes, macs, part, g0, xs, koff, pof, gt, acc, dW2, first, last)
        else:
            launch(_conv.conv_dw_direct, macs, part, g0, xs, koff, nvec, acc, dW2, first, last)
        if not with_dx:
            continue
        tile = ws.flat("tile_dx", (m * wr.shape[0], fc * span), dtype)
        dxs = dx[n0 : n0 + m]
        if rows:
            launch(_conv.conv_direct_rows, macs, padded, foff, wr, zeros, wd, geo.fh, geo.fw, False, tile, dxs)
        elif by_lanes:
            _lanes(ws, "pof_dx", macs, padded, koff_dx, wr, zeros, wd, False, tile, dxs, *none)
        else:
            launch(_conv.conv_direct, macs, padded, koff_dx, wr, zeros, wd, False, tile, dxs, *none)
    return True


#: Output channels up to which a convolution whose rows fit the rows tile takes it
#: (:func:`rows_serve`; measured: docs/PERFORMANCE.md, "Few output channels: the rows tile").
ROWS_MAX_CHANNELS = 3


def rows_serve(channels: int, fh: int, ow: int, itemsize: int) -> bool:
    """Whether a stride-1 convolution to ``channels`` output channels of width ``ow`` with filters
    of ``fh`` rows runs on :func:`~fastlayers._kernels.conv.conv_direct_rows`: few channels,
    filters of 3 or 5 rows, output rows of 2 or 4 vectors (the last one's lanes past OW computed
    and not stored)."""
    lanes = vector_bytes() // itemsize
    return channels <= ROWS_MAX_CHANNELS and fh in (3, 5) and -(-ow // lanes) in (2, 4)


def pool_fuses(geo: Geometry, dtype: np.dtype) -> bool:
    """Whether :func:`forward_run` can pool this convolution's output in its own pass (a 2x2,
    stride 2, unpadded pooling): the direct kernel serves the convolution, and the output has a
    whole window."""
    return direct_plan(geo, dtype.itemsize) is not None and geo.oh >= 2 and geo.ow >= 2


def forward_run(
    x, W: np.ndarray, b: np.ndarray, geo: Geometry, out, relu: bool, ws: Workspace, pool=None
) -> np.ndarray:
    """The convolution of ``x`` (any real dtype; converted as it is padded) with ``W`` and ``b`` (of
    the compute dtype), through ReLU with ``relu``, into ``out`` (None: allocated). Stride 1 runs
    the direct kernel (its planes padded ``span`` elements longer: its last tile reads that far);
    other strides im2col in chunks and a product.

    ``pool``: None, or, where :func:`pool_fuses` holds, (pooled, arg): the (N, FN, OH // 2, OW // 2)
    outputs, in the compute dtype and uint8, of the 2x2, stride 2 max pooling of the result, written
    in the same pass as :func:`pool_forward_run` would write them."""
    dtype = W.dtype
    if out is None:
        out = np.empty(geo.out_shape, dtype)
    plan = direct_plan(geo, dtype.itemsize)
    if pool is not None:
        shape = (geo.n, geo.fn, geo.oh // 2, geo.ow // 2)
        pooled, arg = pool
        if not (
            pool_fuses(geo, dtype)
            and plain(pooled, dtype)
            and pooled.shape == shape
            and plain(arg, np.dtype(np.uint8))
            and arg.shape == shape
        ):
            raise ValueError(f"pool: the pooled output and indices must be {shape} {dtype} and uint8, C-contiguous")
    lx = geo.lx + (plan[1] if plan else 0)
    xp = ws.xp
    if xp is None or xp.shape != (geo.n, geo.c, lx) or xp.dtype != dtype:
        xp = np.empty((geo.n, geo.c, lx), dtype)
    launch(_conv.conv_pad, xp.size, x, 0, geo.pad, xp)
    ws.xp, ws.geo, ws.col_chunk = xp, geo, -1
    if plan is not None:
        _direct(xp, W, b, geo, plan, out, relu, ws, pool)
        return out
    W2 = W.reshape(geo.fn, geo.k)
    for n0, nb in _chunks(geo, dtype.itemsize):
        col = ws.flat("col", (geo.k, nb * geo.seg), dtype)
        tmp = ws.flat("tmp", (geo.fn, nb * geo.seg), dtype)
        launch(
            _conv.conv_im2col,
            col.size,
            xp[n0 : n0 + nb],
            geo.fh,
            geo.fw,
            geo.stride,
            geo.wp,
            geo.oh,
            geo.ow,
            geo.r,
            col,
        )
        _gemm.matmul(W2, col, tmp)
        launch(_conv.conv_output, nb * geo.fn * geo.oh * geo.ow, tmp, n0, b, geo.r, relu, out)
        ws.col_chunk = n0
    return out


def _gradient_buffers(geo: Geometry, W: np.ndarray, with_dx: bool, dx, dW, db) -> tuple:
    """(dx, dW, db) of a backward pass: those given, or new ones of ``W``'s dtype (dx only with
    ``with_dx``); db set to 0."""
    dtype = W.dtype
    db = np.zeros(geo.fn, dtype) if db is None else db
    db[...] = 0
    dW = np.empty(W.shape, dtype) if dW is None else dW
    if with_dx and dx is None:
        dx = np.empty((geo.n, geo.c, geo.h, geo.w), dtype)
    return dx, dW, db


def backward_run(dout, y, W: np.ndarray, ws: Workspace, with_dx: bool, relu: bool, dx=None, dW=None, db=None):
    """(dx, dW, db) from ``dout`` (N, FN, OH, OW) of the compute dtype and the padded batch in ``ws``
    (from :func:`forward_run`); ``y`` is the forward output, read for ReLU's mask when ``relu``.
    Without ``with_dx``, dx is None. Buffers given must be C-contiguous of the right shape. (The
    gradient through a 2x2 pooling after the ReLU: :func:`pooled_backward_run`.)"""
    geo = ws.geo
    dtype = W.dtype
    W2 = W.reshape(geo.fn, geo.k)
    dx, dW, db = _gradient_buffers(geo, W, with_dx, dx, dW, db)
    dW2 = dW.reshape(geo.fn, geo.k)
    partial = None
    y = dout if y is None else y
    if _direct_backward(dout, y, W, ws, with_dx, relu, dx, dW, db):
        return (dx if with_dx else None), dW, db
    for index, (n0, nb) in enumerate(reversed(_chunks(geo, dtype.itemsize))):
        col = ws.flat("col", (geo.k, nb * geo.seg), dtype)
        dflat = ws.flat("tmp", (geo.fn, nb * geo.seg), dtype)
        if ws.col_chunk != n0:
            xs = ws.xp[n0 : n0 + nb]
            launch(_conv.conv_im2col, col.size, xs, geo.fh, geo.fw, geo.stride, geo.wp, geo.oh, geo.ow, geo.r, col)
            ws.col_chunk = n0
        launch(_conv.conv_dout, dflat.size, dout, y, n0, geo.r, relu, dflat, db)
        if index == 0:
            _gemm.matmul(dflat, col.T, dW2)
        else:
            partial = ws.flat("dW", dW2.shape, dtype) if partial is None else partial
            _gemm.matmul(dflat, col.T, partial)
            dW2 += partial
        if with_dx:
            _gemm.matmul(W2.T, dflat, col)  # the column gradient, over this chunk's column matrix
            ws.col_chunk = -1
            dxp = ws.flat("dxp", (nb, geo.c, geo.lx), dtype)
            launch(
                _conv.conv_col2im,
                dxp.size,
                col,
                geo.fh,
                geo.fw,
                geo.stride,
                geo.wp,
                geo.oh,
                geo.ow,
                geo.r,
                geo.pad,
                n0,
                dxp,
                dx,
            )
    return (dx if with_dx else None), dW, db


def pooled_backward_run(dpool, arg, y, W: np.ndarray, ws: Workspace, with_dx: bool, dx=None, dW=None, db=None):
    """(dx, dW, db) of a Convolution whose output went through ReLU (``y``: the ReLU's output, (N,
    FN, OH, OW)) and a 2x2, stride 2, unpadded max pooling, from the pooling's upstream gradient
    ``dpool`` and its indices ``arg`` (uint8, both (N, FN, OH // 2, OW // 2)), all checked and of
    the compute dtype: the pooling's and the ReLU's backward passes happen as the gradient is laid
    out for the convolution's (:func:`~fastlayers._kernels.conv.conv_dout_direct`). Only where
    :func:`direct_backward_serves`; buffers as :func:`backward_run`."""
    geo = ws.geo
    dtype = W.dtype
    if dpool.shape != arg.shape or arg.shape != (geo.n, geo.fn, geo.oh // 2, geo.ow // 2) or y.shape != geo.out_shape:
        raise ValueError(f"pooled gradient {dpool.shape}, indices {arg.shape}, output {y.shape}: shapes that differ")
    if dpool.dtype != dtype or y.dtype != dtype or arg.dtype != np.uint8:
        raise TypeError(f"pooled gradient {dpool.dtype}, output {y.dtype}, indices {arg.dtype}: not {dtype} and uint8")
    if not (dpool.flags.c_contiguous and arg.flags.c_contiguous and y.flags.c_contiguous):
        raise ValueError("the pooled gradient, its indices and the output must be C-contiguous")
    dx, dW, db = _gradient_buffers(geo, W, with_dx, dx, dW, db)
    if not _direct_backward(dpool, y, W, ws, with_dx, True, dx, dW, db, arg):
        raise ValueError("the pooled backward pass needs a direct forward (see direct_backward_serves)")
    return (dx if with_dx else None), dW, db


# --------------------------------------------------------------------------------------------
# the checked functions
# --------------------------------------------------------------------------------------------


def prepare(x, W, b, stride, pad) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """The operands of a convolution, checked: ``x`` as an array of float32 or float64 (integers,
    bools and float16 converted to the compute dtype; either float kept, the padding kernel converts
    it), ``W`` and ``b`` in the compute dtype (NumPy's rule), and the geometry.

    Raises
    ------
    ValueError, TypeError
        As :func:`conv_forward`.
    """
    x, W, b = as_array(x, "x"), as_array(W, "W"), as_array(b, "b")
    require_4d(x, "x", "(N, C, H, W)")
    _filters(W, b)
    geo = geometry(x.shape, W.shape, stride, pad)
    dtype = compute_dtype(x=x, W=W, b=b)
    if x.dtype not in FLOATS:  # integers, bools, float16: the kernels copy float32 or float64
        x = x.astype(dtype)
    return x, convert(W, dtype), convert(b, dtype), geo


def pool_prepare(x, pool_h, pool_w, stride, pad) -> tuple[np.ndarray, Geometry]:
    """``x`` checked for max pooling and converted to its float dtype, with the geometry.

    Raises
    ------
    ValueError, TypeError
        As :func:`max_pool_forward`.
    """
    x = as_array(x, "x")
    require_4d(x, "x", "(N, C, H, W)")
    geo = pool_geometry(x.shape, pool_h, pool_w, stride, pad)
    return convert(x, compute_dtype(x=x)), geo


def conv_forward(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, stride: int = 1, pad: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """The convolution layer's forward pass: cross-correlation of ``x`` with the filters ``W``, plus ``b``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    W : array_like, shape (FN, C, FH, FW)
    b : array_like, shape (FN,)
    stride : int >= 1
    pad : int >= 0
        Zeros added on each side of every plane.
    out : ndarray, shape (N, FN, OH, OW), optional
        Buffer for the result (``OH = (H + 2*pad - FH) // stride + 1``, likewise ``OW``); it may
        overlap nothing the call reads.

    Returns
    -------
    ndarray, shape (N, FN, OH, OW), C-contiguous, in the dtype NumPy gives for ``x``, ``W`` and ``b``
    (float32 images with float64 filters compute in float64).

    Raises
    ------
    ValueError
        ``x`` or ``W`` not 4-D, channels that differ, ``b`` not (FN,), a filter larger than the padded
        input, ``stride`` < 1, ``pad`` < 0, an empty batch, an ``out`` that does not fit.
    TypeError
        Unsupported dtypes, a non-integer ``stride`` or ``pad``, an ``out`` of another dtype.
    """
    x, W, b, geo = prepare(x, W, b, stride, pad)
    dtype = W.dtype
    if out is not None:
        check_out(out, geo.out_shape, dtype)
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if any(np.may_share_memory(out, a) for a in (x, W, b)):
            raise ValueError("out must not overlap x, W or b")
    if numpy_backend():
        result = reference.conv_forward(convert(x, dtype), W, b, geo.stride, geo.pad)
        if out is None:
            return result
        out[...] = result
        return out
    return forward_run(x, W, b, geo, out, False, Workspace())


def conv_backward(
    dout: ArrayLike, x: ArrayLike, W: ArrayLike, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv_forward`.

    Parameters
    ----------
    dout : array_like, shape (N, FN, OH, OW)
        Upstream gradient.
    x : array_like, shape (N, C, H, W)
        The forward input.
    W : array_like, shape (FN, C, FH, FW)
    stride, pad : as :func:`conv_forward`

    Returns
    -------
    (dx, dW, db) : shaped like ``x``, ``W`` and (FN,), all in the dtype NumPy gives for ``dout``,
        ``x`` and ``W`` together.

    Raises
    ------
    ValueError, TypeError
        As :func:`conv_forward`; ``dout`` of another shape than the forward output.
    """
    dout, x, W = as_array(dout, "dout"), as_array(x, "x"), as_array(W, "W")
    require_4d(x, "x", "(N, C, H, W)")
    _filters(W, None)
    geo = geometry(x.shape, W.shape, stride, pad)
    if dout.shape != geo.out_shape:
        raise ValueError(
            f"dout has shape {dout.shape} but x of shape {x.shape} and W of shape {W.shape} "
            f"(stride={geo.stride}, pad={geo.pad}) give {geo.out_shape}"
        )
    dtype = compute_dtype(dout=dout, x=x, W=W)
    dout, W = convert(dout, dtype), convert(W, dtype)
    if x.dtype not in FLOATS:
        x = x.astype(dtype)
    if numpy_backend():
        return reference.conv_backward(dout, convert(x, dtype), W, geo.stride, geo.pad)
    ws = Workspace()
    plan = direct_plan(geo, dtype.itemsize)  # padded as a direct forward pads: the direct backward
    ws.xp = np.empty((geo.n, geo.c, geo.lx + (plan[1] if plan else 0)), dtype)
    launch(_conv.conv_pad, ws.xp.size, x, 0, geo.pad, ws.xp)
    ws.geo = geo
    return backward_run(np.ascontiguousarray(dout), None, W, ws, True, False)


def pool_geometry(x_shape: tuple, pool_h, pool_w, stride, pad) -> Geometry:
    """Check the sizes of a max pooling of ``x_shape`` (N, C, H, W) and return them.

    Raises
    ------
    ValueError, TypeError
        As :func:`geometry`; ``pool_h``/``pool_w`` < 1; ``pad`` not smaller than the window (a
        window would then hold padding only).
    """
    ph, pw = _int(pool_h, "pool_h", 1), _int(pool_w, "pool_w", 1)
    pad_ = _int(pad, "pad", 0)
    if pad_ >= ph or pad_ >= pw:
        raise ValueError(f"pad must be smaller than the {ph}x{pw} window, got pad={pad_}")
    c = x_shape[1]
    return geometry(x_shape, (c, c, ph, pw), stride, pad_, ("x", "the pooling window", "pooling window"))


def _arg_dtype(geo: Geometry) -> np.dtype:
    return np.dtype(np.uint8) if geo.fh * geo.fw <= 256 else np.dtype(np.int32)


def pool_forward_run(x: np.ndarray, geo: Geometry, out=None, arg=None) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling of a checked 4-D float ``x`` into ``out`` and ``arg`` (None: allocated)."""
    shape = (geo.n, geo.c, geo.oh, geo.ow)
    out = np.empty(shape, x.dtype) if out is None else out
    arg = np.empty(shape, _arg_dtype(geo)) if arg is None else arg
    if (geo.fh, geo.fw, geo.stride, geo.pad) == (2, 2, 2, 0):  # the classic window's scratch rows
        rows = (min(geo.n * geo.c, _conv.POOL_TASKS), geo.oh * 2 * geo.ow)
        vals, vidx = np.empty(rows, x.dtype), np.empty(rows, np.uint8)
    else:
        vals, vidx = np.empty((0, 0), x.dtype), _NO_VIDX
    launch(_conv.maxpool_forward, x.size, x, geo.fh, geo.fw, geo.stride, geo.pad, out, arg, vals, vidx)
    return out, arg


def pool_backward_run(dout: np.ndarray, arg: np.ndarray, geo: Geometry, dx=None) -> np.ndarray:
    """The gradient of max pooling from checked ``dout`` and ``arg`` (both (N, C, OH, OW))."""
    dx = np.empty((geo.n, geo.c, geo.h, geo.w), dout.dtype) if dx is None else dx
    launch(_conv.maxpool_backward, dx.size, dout, arg, geo.fh, geo.fw, geo.stride, geo.pad, dx)
    return dx


def max_pool_forward(
    x: ArrayLike, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling of every plane of ``x``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    pool_h, pool_w : int >= 1
        The window.
    stride : int >= 1
    pad : int, 0 <= pad < min(pool_h, pool_w)
        Positions added on each side that never win (they count as -inf).

    Returns
    -------
    (out, arg) : ``out`` (N, C, OH, OW) in ``x``'s float dtype (``OH = (H + 2*pad - pool_h) //
        stride + 1``); ``arg`` (N, C, OH, OW) integers, the window-local index ``ky * pool_w + kx``
        of each maximum (the first one; a NaN wins).

    Raises
    ------
    ValueError, TypeError
        As :func:`pool_geometry`; unsupported dtypes.
    """
    x, geo = pool_prepare(x, pool_h, pool_w, stride, pad)
    if numpy_backend():
        out, arg = reference.maxpool_forward(x, geo.fh, geo.fw, geo.stride, geo.pad)
        return out, arg.astype(_arg_dtype(geo))
    return pool_forward_run(x, geo)


def max_pool_backward(
    dout: ArrayLike, arg: ArrayLike, x_shape: tuple, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0
) -> np.ndarray:
    """Gradient of :func:`max_pool_forward`: each ``dout`` value added at its window's maximum.

    Parameters
    ----------
    dout : array_like, shape (N, C, OH, OW)
    arg : array_like of integers, shape (N, C, OH, OW)
        Window-local indices from :func:`max_pool_forward`, each in ``[0, pool_h * pool_w)``.
    x_shape : tuple (N, C, H, W)
        The forward input's shape.
    pool_h, pool_w, stride, pad : as :func:`max_pool_forward`

    Returns
    -------
    ndarray of ``x_shape`` in ``dout``'s float dtype.

    Raises
    ------
    ValueError
        Shapes that do not fit, indices outside the window.
    TypeError
        Non-integer indices; as :func:`max_pool_forward`.
    """
    dout = as_array(dout, "dout")
    x_shape = tuple(_int(s, "x_shape entries", 0) for s in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must have 4 entries (N, C, H, W), got {x_shape}")
    geo = pool_geometry(x_shape, pool_h, pool_w, stride, pad)
    shape = (geo.n, geo.c, geo.oh, geo.ow)
    if dout.shape != shape:
        raise ValueError(f"dout has shape {dout.shape} but pooling x of shape {x_shape} gives {shape}")
    arg = checked_arg(arg, shape, geo, "arg")
    dout = np.ascontiguousarray(convert(dout, compute_dtype(dout=dout)))
    if numpy_backend():
        return reference.maxpool_backward(dout, arg, x_shape, geo.fh, geo.fw, geo.stride, geo.pad)
    return pool_backward_run(dout, arg, geo)


def checked_arg(arg, shape: tuple, geo: Geometry, name: str) -> np.ndarray:
    """Window-local indices as a private C-contiguous int64 copy, checked against ``shape`` and the
    window size (the copy is what a kernel reads, so the caller's array cannot change under it)."""
    a = np.asarray(arg)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape} but the pooled output has shape {shape}")
    a = np.array(a, dtype=np.int64, order="C")
    size = geo.fh * geo.fw
    if a.size and (a.min() < 0 or a.max() >= size):
        raise ValueError(f"{name} holds indices outside [0, {size}): min {a.min()}, max {a.max()}")
    return a


# --------------------------------------------------------------------------------------------
# the classic im2col and col2im
# --------------------------------------------------------------------------------------------
def im2col(input_data: ArrayLike, filter_h: int, filter_w: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """The classic column matrix of a batch of images.

    Parameters
    ----------
    input_data : array_like, shape (N, C, H, W)
    filter_h, filter_w : int >= 1
    stride : int >= 1
    pad : int >= 0

    Returns
    -------
    ndarray, shape (N*OH*OW, C*filter_h*filter_w): row ``(n, oh, ow)``, column ``(c, ky, kx)``, in
    ``input_data``'s float dtype (the classic code always returns float64; integers give float64 here).

    Raises
    ------
    ValueError, TypeError
        As :func:`conv_forward`.
    """
    x = as_array(input_data, "input_data")
    require_4d(x, "input_data", "(N, C, H, W)")
    c = x.shape[1]
    geo = geometry(x.shape, (1, c, filter_h, filter_w), stride, pad, ("input_data", "the filter", "filter"))
    x = convert(x, compute_dtype(x=x))
    if numpy_backend():
        return reference.im2col(x, geo.fh, geo.fw, geo.stride, geo.pad)
    xp = np.empty((geo.n, geo.c, geo.lx), x.dtype)
    launch(_conv.conv_pad, xp.size, x, 0, geo.pad, xp)
    col = np.empty((geo.k, geo.n * geo.oh * geo.ow), x.dtype)
    args = (geo.fh, geo.fw, geo.stride, geo.wp, geo.oh, geo.ow, geo.ow, col)
    launch(_conv.conv_im2col, col.size, xp, *args)
    return np.ascontiguousarray(col.T)


def col2im(
    col: ArrayLike, input_shape: tuple, filter_h: int, filter_w: int, stride: int = 1, pad: int = 0
) -> np.ndarray:
    """The adjoint of :func:`im2col`: every value of ``col`` added back at the position it was read from.

    Parameters
    ----------
    col : array_like, shape (N*OH*OW, C*filter_h*filter_w)
    input_shape : tuple (N, C, H, W)
    filter_h, filter_w, stride, pad : as :func:`im2col`

    Returns
    -------
    ndarray of ``input_shape`` in ``col``'s float dtype.

    Raises
    ------
    ValueError, TypeError
        As :func:`im2col`; ``col`` of another shape.
    """
    col = as_array(col, "col")
    shape = tuple(_int(s, "input_shape entries", 0) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must have 4 entries (N, C, H, W), got {tuple(input_shape)}")
    geo = geometry(shape, (1, shape[1], filter_h, filter_w), stride, pad, ("input_shape", "the filter", "filter"))
    want = (geo.n * geo.oh * geo.ow, geo.k)
    if col.shape != want:
        raise ValueError(f"col has shape {col.shape} but input_shape {shape} with this filter gives {want}")
    col = convert(col, compute_dtype(col=col))
    if numpy_backend():
        return reference.col2im(col, shape, geo.fh, geo.fw, geo.stride, geo.pad)
    dcol = np.ascontiguousarray(col.T)
    dx = np.empty(shape, col.dtype)
    dxp = np.empty((geo.n, geo.c, geo.lx), col.dtype)
    args = (geo.fh, geo.fw, geo.stride, geo.wp, geo.oh, geo.ow, geo.ow, geo.pad, 0, dxp, dx)
    launch(_conv.conv_col2im, dxp.size, dcol, *args)
    return dx
