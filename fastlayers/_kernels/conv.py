"""Convolution and max-pooling kernels on NCHW arrays.

A convolution of stride 1 runs as :func:`conv_pad` then :func:`conv_direct`: a direct convolution
whose inner loop (``_numba.conv_tile_*``, LLVM code generated in ``_numba``) keeps a tile of output
channels x pixels in vector registers over the whole reduction, the filters rearranged into blocks
of the tile's channels, bias and ReLU applied as the tile is written out (and, for the nets'
Convolution -> ReLU -> 2x2 Pooling, each task's planes pooled as soon as they are written).
:func:`conv_direct_rows` is the same convolution to a few channels (a net's first input gradient)
in a tile of whole rows, :func:`conv_direct_lanes` the same on small planes with many output
channels, in a tile whose vector lanes are output channels. Backward, :func:`conv_dout_direct` lays
the upstream gradient out; :func:`conv_dw_direct` computes the filter gradient from that layout, or,
on small planes with many filters, :func:`conv_dw_lanes` from its copy pixel by pixel, a chunk of
images at a time, with the filters in the vector lanes.

Other strides run as im2col, one matrix product (:func:`fastlayers._gemm.matmul`, in
:mod:`fastlayers.functional.conv`), and a pass that writes the output; over a batch it works in
chunks of images so that the column matrix of a chunk stays small. The kernels here are the passes
around the product:

- :func:`conv_pad`: a chunk of images copied into a zero-padded scratch ``xp`` of shape
  (nb, C, Lx), each plane flattened with row width ``wp = W + 2 * pad`` (``Lx >= Hp * wp + FW``);
- :func:`conv_im2col`: the column matrix ``col`` (C*FH*FW, nb*L) of that chunk, row ``k = (c, ky,
  kx)`` in the order of ``W.reshape(FN, -1)``, column ``i * L + oh * r + ow`` for image ``i`` of the
  chunk, output pixel (oh, ow). ``L = OH * r``. With stride 1 the functional module takes ``r = wp``
  (output rows as wide as padded input rows): each row of ``col`` is then one contiguous copy of
  ``L`` values per image, and the ``wp - OW`` columns past ``OW`` of every output row hold values
  nobody reads. Otherwise ``r = OW``;
- :func:`conv_output`: the product ``tmp`` (FN, nb*L) written into the NCHW output with the bias
  added (and ReLU applied, when a net fuses the two layers);
- :func:`conv_dout`: the upstream gradient of a chunk laid out like ``tmp`` (zeros in the unread
  columns), ReLU's mask applied when fused, and each filter's sum added to ``db``;
- :func:`conv_col2im`: the column gradient added back into the padded planes and the interior
  copied into ``dx``.

Max pooling (:func:`maxpool_forward`, :func:`maxpool_backward`) works on planes directly. Windows
reach past the input by ``pad`` on each side; padded positions never win (they count as -inf). The
window-local index of each maximum (``ky * pool_w + kx``, the first maximum, NaN winning as in
``np.argmax``) is kept in ``arg``.

Contract: arrays have the shapes stated per kernel, float arrays of one dtype except ``x`` of
:func:`conv_pad` (any real dtype, converted as it is copied); integers describe shapes that the
functional module checked against the arrays. Every kernel writes each output element from exactly
one task and adds in a fixed order, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba import (
    CONV_DW_LANES_TILE,
    CONV_DW_TILE,
    CONV_LANES_TILE,
    TILE_ACCUMULATORS,
    VECTOR_BYTES,
    conv_dw_lanes_tile_6,
    conv_dw_tile_4,
    conv_lanes_tile_6,
    conv_rows_tile_3x2,
    conv_rows_tile_3x4,
    conv_rows_tile_5x2,
    conv_rows_tile_5x4,
    conv_tile_1,
    conv_tile_2,
    conv_tile_3,
    conv_tile_4,
    conv_tile_6,
    conv_tile_8,
    conv_tile_12,
    helper,
    row_sum,
    twins,
    typed,
)

u64 = np.uint64

#: Passes over a chunk run in parallel from this many elements written.
MEMORY_BOUND_MIN = 1 << 16
#: The direct convolution runs in parallel from this many multiply-adds.
DIRECT_MIN = 1 << 18
#: The filter gradient walks images in chunks of about this many elements (gradient rows and input
#: planes together: 512 KiB in float32, within a core's L2 cache).
DW_CHUNK_ELEMENTS = 1 << 17
#: The tiles' shapes in this process's register configuration (``_numba.VECTOR_BYTES``): the
#: channel-lanes tile's vectors of output channels (its pixels are 6), the filter gradient's terms
#: per task (its filters are 4), the filter gradient lanes tile's terms and vectors of filters.
LANES_VECTORS = CONV_LANES_TILE[1]
DW_TERMS = CONV_DW_TILE[1]
DWL_TERMS, DWL_VECTORS = CONV_DW_LANES_TILE


@helper
def _copy(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@helper
def _add(dst, src):
    for j in range(dst.shape[0]):
        dst[j] += src[j]


@helper
def _zero_at(flat, start, stop):
    """flat[start:stop] = 0 (unsigned indices, for vector code), no view made."""
    zero = typed(0, flat)
    for j in range(u64(start), u64(stop)):
        flat[j] = zero


@helper
def _zero(dst):
    zero = typed(0, dst)
    for j in range(dst.shape[0]):
        dst[j] = zero


@twins(MEMORY_BOUND_MIN)
def conv_pad(x, n0, pad, xp):
    """xp[i, c] = image ``n0 + i`` of ``x`` (N, C, H, W), zero-padded by ``pad``, flattened with row
    width ``W + 2 * pad``; the tail past ``Hp * wp`` is zeroed. ``xp``: (nb, C, Lx)."""
    nb, c, lx = xp.shape
    h, w = x.shape[2], x.shape[3]
    wp = w + 2 * pad
    xf = xp.reshape(xp.size)  # flat, unsigned indices: no view per row (see conv_dout_direct)
    for r in prange(nb * c):
        i = r // c
        ch = r % c
        base = r * lx
        _zero_at(xf, base, base + pad * wp + pad)
        for y in range(h):
            start = base + (y + pad) * wp + pad
            dst = u64(start)
            for j in range(u64(w)):
                xf[dst + j] = x[n0 + i, ch, y, j]
            _zero_at(xf, start + w, start + w + 2 * pad)
        _zero_at(xf, base + (h + pad) * wp + pad, base + lx)


@twins(MEMORY_BOUND_MIN)
def conv_im2col(xp, fh, fw, stride, wp, oh, ow, r, col):
    """col[(c, ky, kx), i*L + y*r + xo] = xp[i, c, (y*stride + ky)*wp + xo*stride + kx] for every
    output pixel (y, xo) with xo < ow; with ``stride == 1`` and ``r == wp`` also the unread columns
    (one contiguous copy per row and image). ``col``: (C*fh*fw, nb*L), ``L = oh * r``."""
    nb, c = xp.shape[0], xp.shape[1]
    taps = fh * fw
    seg = oh * r
    for k in prange(c * taps):
        ch = k // taps
        ky = (k % taps) // fw
        kx = k % fw
        off = ky * wp + kx
        row = col[k]
        for i in range(nb):
            src = xp[i, ch]
            if stride == 1 and r == wp:
                _copy(row[i * seg : (i + 1) * seg], src[off : off + seg])
            else:
                for y in range(oh):
                    dst = row[i * seg + y * r : i * seg + y * r + ow]
                    base = (y * stride + ky) * wp + kx
                    for j in range(ow):
                        dst[j] = src[base + j * stride]


@twins(MEMORY_BOUND_MIN)
def conv_output(tmp, n0, b, r, relu, out):
    """out[n0 + i, f, y, xo] = tmp[f, i*L + y*r + xo] + b[f], through ReLU when ``relu``.
    ``tmp``: (FN, nb*L); ``out``: (N, FN, OH, OW); ``b``: (FN,)."""
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    seg = oh * r
    nb = tmp.shape[1] // seg
    zero = typed(0, out)
    for t in prange(nb * fn):
        i = t // fn
        f = t % fn
        bias = b[f]
        for y in range(oh):
            dst = out[n0 + i, f, y]
            src = tmp[f, i * seg + y * r : i * seg + y * r + ow]
            if relu:
                for j in range(ow):
                    v = src[j] + bias
                    dst[j] = zero if v <= zero else v
            else:
                for j in range(ow):
                    dst[j] = src[j] + bias


@twins(MEMORY_BOUND_MIN)
def conv_dout(dout, y, n0, r, relu, dflat, db):
    """dflat[f, i*L + y*r + xo] = dout[n0 + i, f, y, xo] (0 where ``relu`` and the forward output
    ``y`` at that pixel is <= 0), 0 in the unread columns; db[f] += each image's sum of its row of
    ``dflat``, images in order. ``dout``, ``y``: (N, FN, OH, OW) (``y`` unread without ``relu``);
    ``dflat``: (FN, nb*L)."""
    fn, oh, ow = dout.shape[1], dout.shape[2], dout.shape[3]
    seg = oh * r
    nb = dflat.shape[1] // seg
    zero = typed(0, dflat)
    for f in prange(fn):
        for i in range(nb):
            for yy in range(oh):
                dst = dflat[f, i * seg + yy * r : i * seg + (yy + 1) * r]
                src = dout[n0 + i, f, yy]
                if relu:
                    fwd = y[n0 + i, f, yy]
                    for j in range(ow):
                        dst[j] = zero if fwd[j] <= zero else src[j]
                else:
                    for j in range(ow):
                        dst[j] = src[j]
                for j in range(ow, r):
                    dst[j] = zero
            db[f] += row_sum(dflat[f, i * seg : (i + 1) * seg])


@twins(MEMORY_BOUND_MIN)
def conv_col2im(dcol, fh, fw, stride, wp, oh, ow, r, pad, n0, dxp, dx):
    """The adjoint of :func:`conv_pad` then :func:`conv_im2col`: dxp[i, c] = the sum over taps of
    ``dcol``'s values at the positions im2col read them from (taps in order), then
    dx[n0 + i, c] = the interior of dxp[i, c]. ``dxp``: (nb, C, Lx) scratch; ``dx``: (N, C, H, W).
    With ``stride == 1`` and ``r == wp`` the unread columns of ``dcol`` must be 0 (they are, when it
    is a product with the output of :func:`conv_dout`)."""
    nb, c = dxp.shape[0], dxp.shape[1]
    h, w = dx.shape[2], dx.shape[3]
    taps = fh * fw
    seg = oh * r
    for t in prange(nb * c):
        i = t // c
        ch = t % c
        acc = dxp[i, ch]
        _zero(acc)
        for tap in range(taps):
            ky = tap // fw
            kx = tap % fw
            src = dcol[ch * taps + tap, i * seg : (i + 1) * seg]
            if stride == 1 and r == wp:
                off = ky * wp + kx
                _add(acc[off : off + seg], src)
            else:
                for y in range(oh):
                    base = (y * stride + ky) * wp + kx
                    for j in range(ow):
                        acc[base + j * stride] += src[y * r + j]
        for y in range(h):
            start = (y + pad) * wp + pad
            _copy(dx[n0 + i, ch, y], acc[start : start + w])


@helper
def _farthest(offsets):
    """The largest of the 1-D ``offsets`` (0 when there are none), or -1 when one is negative."""
    far = 0
    for j in range(offsets.shape[0]):
        if offsets[j] < 0:
            return -1
        far = max(far, offsets[j])
    return far


@helper
def _store_tile(acc, at, of, plane, bias, relu, start, stop, wp, ow):
    """One output channel of a direct convolution's tile into the flat output ``of``: the tile's
    pixels q = start ... stop - 1 (q = y*wp + xo, read at acc[at + q - start]) with xo < OW stored
    at of[plane + y*OW + xo], plus ``bias``, through ReLU with ``relu``; the others are not stored."""
    for y in range(start // wp, (stop - 1) // wp + 1):  # flat indices: slice views cost ~12 ns each
        lo = max(start, y * wp) - y * wp
        hi = min(stop - y * wp, ow)
        if hi <= lo:
            continue
        dst = u64(plane + y * ow + lo)  # unsigned: see conv_dout_direct
        src = u64(at + y * wp - start + lo)
        _store_row(acc, src, of, dst, u64(hi - lo), bias, relu)


@helper(inline=True)
def _store_row(acc, src, of, dst, count, bias, relu):
    """of[dst + m] = acc[src + m] + bias for m < ``count``, through ReLU with ``relu`` (NaN stays)."""
    zero = typed(0, of)
    if relu:
        for m in range(count):
            v = acc[src + m] + bias
            of[dst + m] = zero if v <= zero else v
    else:
        for m in range(count):
            of[dst + m] = acc[src + m] + bias


@helper
def _pools(out, nblk, pool, arg, vals, vidx):
    """Whether the direct kernels pool their output ``out`` (N, FN, OH, OW), tasks of ``nblk``
    blocks per image: ``pool`` (N, FN, PH, PW) with 2*PH <= OH, 2*PW <= OW, ``arg`` of its shape,
    and scratch rows ``vals`` and ``vidx`` of at least N*nblk rows of PH*2*PW."""
    n, fn, oh, ow = out.shape
    ph, pw = pool.shape[2], pool.shape[3]
    return (
        pool.shape[0] == n
        and pool.shape[1] == fn
        and arg.shape == pool.shape
        and 2 * ph <= oh
        and 2 * pw <= ow
        and min(vals.shape[0], vidx.shape[0]) >= n * nblk
        and min(vals.shape[1], vidx.shape[1]) >= ph * 2 * pw
    )


@twins(DIRECT_MIN)
def conv_direct(xp, koff, wr, b, wp, relu, tile, out, pool, arg, vals, vidx):
    """The direct convolution, stride 1: out[i, f, y, xo] = the sum over k = (c, ky, kx), in that
    order, of W[f, c, ky, kx] * xp[i, c, (y + ky)*wp + xo + kx] (one FMA per term in compiled code),
    plus b[f], through ReLU when ``relu``.

    ``xp``: the padded batch (N, C, Lx) of :func:`conv_pad`; ``koff``: (K,) int64, koff[k] = c*Lx +
    ky*wp + kx; ``wr``: (nblk, K, FC), the filters in blocks of FC output channels, wr[blk, k, j] =
    W[blk*FC + j, k] (0 past FN), FC one of ``_numba.CONV_TILES`` (the channel counts that divide
    ``TILE_ACCUMULATORS``; with another it returns at once), whose S = (TILE_ACCUMULATORS // FC)
    vectors of ``VECTOR_BYTES`` are the pixels of a tile; ``tile``: (N*nblk,
    >= FC*S) scratch; ``out``: (N, FN, OH, OW).

    Output pixels are walked as ``q = y*wp + xo`` (rows as wide as the padded input's, like im2col's
    ``r = wp``), S at a time: the tile at ``q`` reads xp[i, c, q + ky*wp + kx + p] for p < S, inside
    the plane when ``Lx >= ceil(OH*wp / S)*S + (FH - 1)*wp + FW - 1`` (the caller pads the planes
    that long). Columns ``xo >= OW`` and pixels past OH*wp are computed and never stored.

    With ``pool`` not empty (the nets' Convolution -> ReLU -> 2x2 Pooling), (N, FN, PH, PW) with
    2*PH <= OH and 2*PW <= OW, ``arg`` (uint8, the same shape), and scratch rows ``vals`` (the
    dtype) and ``vidx`` (uint8), (N*nblk, >= PH*2*PW): task t = i*nblk + blk then pools the planes
    it has just written, while they are in its core's cache, into pool[i, f] and arg[i, f] by
    :func:`_pool2x2_plane` through row t (left holding its last plane's first pass), as
    :func:`maxpool_forward` does (the 2x2, stride 2 window's maximum and its index 0..3, the first
    NaN winning, then the first larger value). ``pool``, ``arg``: empty (0, 0, 0, 0) otherwise."""
    n, c, lx = xp.shape
    nblk, k, fc = wr.shape
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    if fc < 1 or fc > 12 or TILE_ACCUMULATORS % fc != 0:
        return
    span = (TILE_ACCUMULATORS // fc) * (VECTOR_BYTES // xp.itemsize)  # the tile's vectors times the lanes
    total = oh * wp
    xf = xp.reshape(n * c * lx)
    wf = wr.reshape(nblk * k * fc)
    of = out.reshape(out.size)
    ph, pw = pool.shape[2], pool.shape[3]
    pooled = _pools(out, nblk, pool, arg, vals, vidx)
    pf = pool.reshape(pool.size)
    af = arg.reshape(arg.size)
    for t in prange(n * nblk):
        i = t // nblk
        blk = t % nblk
        f0 = blk * fc
        nj = min(fc, fn - f0)
        acc = tile[t]
        woff = blk * k * fc
        y0 = 0  # the first output row of the tile at ``start``: start // wp, kept without a division
        for start in range(0, total, span):
            xoff = i * c * lx + start
            if fc == 8:
                conv_tile_8(xf, xoff, koff, wf, woff, acc)
            elif fc == 6:
                conv_tile_6(xf, xoff, koff, wf, woff, acc)
            elif fc == 4:
                conv_tile_4(xf, xoff, koff, wf, woff, acc)
            elif fc == 12:
                conv_tile_12(xf, xoff, koff, wf, woff, acc)
            elif fc == 3:
                conv_tile_3(xf, xoff, koff, wf, woff, acc)
            elif fc == 2:
                conv_tile_2(xf, xoff, koff, wf, woff, acc)
            else:
                conv_tile_1(xf, xoff, koff, wf, woff, acc)
            stop = min(total, start + span)
            # the store of _store_tile with the tile's rows outside the channels' loop: each row's
            # bounds are worked out once per tile, not once per channel, and without an integer
            # division per channel (docs/PERFORMANCE.md, "The tile is at the core's peak")
            while (y0 + 1) * wp <= start:
                y0 += 1
            y = y0
            while y * wp < stop:  # every row the tile's pixels q = start ... stop - 1 reach (y < OH)
                lo = max(start, y * wp) - y * wp
                hi = min(stop - y * wp, ow)
                if hi > lo:
                    drow = u64(y * ow + lo)  # unsigned: see conv_dout_direct
                    srow = u64(y * wp - start + lo)
                    for j in range(nj):  # flat indices: slice views cost ~12 ns each
                        dst = u64((i * fn + f0 + j) * oh * ow) + drow
                        _store_row(acc, u64(j * span) + srow, of, dst, u64(hi - lo), b[f0 + j], relu)
                y += 1
        if pooled:
            for j in range(nj):
                plane = (i * fn + f0 + j) * ph * pw
                _pool2x2_plane(out[i, f0 + j], ph, pw, pf, af, plane, vals[t], vidx[t])


@twins(DIRECT_MIN)
def conv_direct_lanes(xp, koff, wr, b, wp, relu, group, pof, tile, out, pool, arg, vals, vidx):
    """The direct convolution of :func:`conv_direct` (stride 1, the same output, the same ``xp``,
    ``koff``, ``pool``, ``arg``, ``vals`` and ``vidx``), through a tile whose vector lanes are
    output channels (``_numba.conv_lanes_tile_*``): P pixels times FC output channels, each output
    the same FMAs in the same order as in :func:`conv_direct`, so the same bits. No padded column
    is computed: it serves small planes, where most of the padded rows' pixels would be padding
    (docs/PERFORMANCE.md, "Small planes: output channels in the lanes").

    ``wr``: (nblk, K, FC), the filters in blocks of FC output channels as for :func:`conv_direct`,
    FC = LANES_VECTORS * (VECTOR_BYTES // itemsize) (with another it returns at once): the vectors
    of ``_numba.CONV_LANES_TILE``, whose P = 6 pixels make a tile. A task is a block of
    channels of ``group`` consecutive images (the last group: what is left): their planes' pixels
    (image by image, q = y*OW + xo within a plane) taken P at a time, so that a tile may span
    images and only each task's last tile computes pixels it does not store (its missing pixels
    replaced by the task's last, computed, not stored). ``pof``: (T, >= 2P) int64 scratch, T =
    ceil(N / group) * nblk, task t's row holding each pixel's offset in ``xp`` (columns 0..P-1)
    and in the output (P..2P-1, the block's first channel) for its last tile; ``tile``: (T, >=
    P*FC) scratch, tile[t, p*FC + f] (left holding the last tile's sums, without bias). It returns
    without writing when the arrays do not fit that: ``group`` < 1, a pixel's terms reaching past
    its image's planes, ``koff`` and ``wr`` of different term counts, blocks of another width or
    too few for FN, ``b`` shorter than FN, ``out`` of another batch size or an empty plane, rows
    wider than ``wp``, scratch too small. With ``pool``, each task pools its planes (image by
    image, channel by channel) once its tiles are stored, into the scratch rows ``vals[t]`` and
    ``vidx[t]``."""
    n, c, lx = xp.shape
    nblk, k, fc = wr.shape
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    lanes = VECTOR_BYTES // xp.itemsize
    points = 6
    plane = oh * ow
    xf = xp.reshape(n * c * lx)
    wf = wr.reshape(nblk * k * fc)
    of = out.reshape(out.size)
    ph, pw = pool.shape[2], pool.shape[3]
    pooled = _pools(out, nblk, pool, arg, vals, vidx)
    pf = pool.reshape(pool.size)
    af = arg.reshape(arg.size)
    if fc != LANES_VECTORS * lanes or plane < 1 or koff.shape[0] != k or ow > wp or group < 1:
        return
    if out.shape[0] != n or b.shape[0] < fn or nblk * fc < fn:
        return
    tasks = ((n + group - 1) // group) * nblk
    if min(pof.shape[0], tile.shape[0]) < tasks or pof.shape[1] < 2 * points or tile.shape[1] < points * fc:
        return
    reach = _farthest(koff)  # the farthest term: every pixel's reads stay inside its image's planes
    if reach < 0 or (oh - 1) * wp + ow - 1 + reach >= c * lx:
        return
    zero = typed(0, out)
    for t in prange(tasks):
        i0 = (t // nblk) * group
        blk = t % nblk
        f0 = blk * fc
        nj = min(fc, fn - f0)
        ni = min(group, n - i0)
        acc = tile[t]
        at = pof[t]
        woff = blk * k * fc
        total = ni * plane
        for q0 in range(0, total, points):
            for p in range(points):
                qq = min(q0 + p, total - 1)
                i = qq // plane
                q = qq - i * plane
                y = q // ow
                at[p] = (i0 + i) * c * lx + y * wp + q - y * ow
                at[points + p] = ((i0 + i) * fn + f0) * plane + q
            conv_lanes_tile_6(xf, at, koff, wf, woff, acc)
            # pixel by pixel, its channels' sums in a row of the tile: faster than channel by
            # channel (docs/PERFORMANCE.md, "Small planes: output channels in the lanes")
            for p in range(min(points, total - q0)):
                dst = at[points + p]
                row = acc[p * fc : p * fc + nj]
                for j in range(nj):
                    v = row[j] + b[f0 + j]
                    of[dst + j * plane] = zero if relu and v <= zero else v
        if pooled:
            for i in range(i0, i0 + ni):
                for j in range(nj):
                    plane_at = (i * fn + f0 + j) * ph * pw
                    _pool2x2_plane(out[i, f0 + j], ph, pw, pf, af, plane_at, vals[t], vidx[t])


@twins(DIRECT_MIN)
def conv_direct_rows(xp, foff, wr, b, wp, fh, fw, relu, tile, out):
    """The direct convolution of :func:`conv_direct` (stride 1, the same output) one output channel
    at a time, through the rows tile (``_numba.conv_rows_tile_*``): R = TILE_ACCUMULATORS // V rows
    of V vectors,
    V = ceil(OW / lanes), each input vector loaded once serving the filter's ``fh`` rows; in each
    output element the terms add in the order (c, kx, ky), one FMA each in compiled code. For
    convolutions to few channels (the input gradient of a net's first layer), where the tiles of
    :func:`conv_direct` load a vector per FMA or two.

    ``xp``: the padded batch (N, P, Lx), P >= C planes an image (the first C are the input's), of
    row stride ``wp`` (the columns past OW of an output row read on into the next input row, and are
    not stored), Lx >= (ceil(OH / R)*R + fh - 2)*wp + fw - 1 + V*lanes; ``foff``: (C,) int64,
    foff[c] = c*Lx; ``wr``: (FN, K, 1), wr[f, (c*fh + ky)*fw + kx, 0] = W[f, c, ky, kx]; ``tile``:
    (N*FN, >= R*V*lanes) scratch; ``out``: (N, FN, OH, OW). Returns at once (nothing written)
    unless (``fh``, V) is one of ``_numba.CONV_ROWS_TILES``, or when Lx, ``foff``, ``wr`` or
    ``tile`` do not fit."""
    n, planes, lx = xp.shape
    c = foff.shape[0]
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    k = wr.shape[1]
    lanes = VECTOR_BYTES // xp.itemsize
    vectors = (ow + lanes - 1) // lanes
    if not (vectors == 2 or vectors == 4) or not (fh == 3 or fh == 5) or wp < 1 or fw < 1:
        return
    if k != c * fh * fw or c > planes or wr.shape[0] < fn or wr.shape[2] != 1 or b.shape[0] < fn:
        return
    width = vectors * lanes  # the tile's row: the output row and the columns past it
    rows = TILE_ACCUMULATORS // vectors
    if (-(-oh // rows) * rows + fh - 2) * wp + fw - 1 + width > lx or tile.shape[1] < rows * width:
        return
    if tile.shape[0] < n * fn or out.shape[0] != n:
        return
    for ch in range(c):
        if foff[ch] != ch * lx:
            return
    xf = xp.reshape(n * planes * lx)
    wf = wr.reshape(wr.shape[0] * k)
    of = out.reshape(out.size)
    for t in prange(n * fn):
        i = t // fn
        f = t % fn
        acc = tile[t]
        for y0 in range(0, oh, rows):
            xoff = i * planes * lx + y0 * wp
            if fh == 3 and vectors == 2:
                conv_rows_tile_3x2(xf, xoff, foff, fw, wp, wf, f * k, acc)
            elif fh == 3:
                conv_rows_tile_3x4(xf, xoff, foff, fw, wp, wf, f * k, acc)
            elif vectors == 2:
                conv_rows_tile_5x2(xf, xoff, foff, fw, wp, wf, f * k, acc)
            else:
                conv_rows_tile_5x4(xf, xoff, foff, fw, wp, wf, f * k, acc)
            stop = min(oh, y0 + rows)
            _store_tile(acc, 0, of, (i * fn + f) * oh * ow, b[f], relu, y0 * width, stop * width, width, ow)


@helper
def _pooled_row(of, af, src, yf, base, pw2, top, ow, gf, row):
    """gf[row + x] for x < ow: the gradient at column x of one row of a ReLU's output through the
    2x2, stride 2 max pooling after it, as ``relu_backward(maxpool_backward(...))`` gives it: 0 +
    of[src + x // 2] where af[src + x // 2] (the window's index of its maximum) is ``top`` + x % 2
    (``top``: 0 on a window's first row, 2 on its second), else 0; then 0 where yf[base + x] (the
    ReLU's output) is <= 0. Columns from 2 * pw2 on (no window covers them): 0."""
    zero = typed(0, gf)
    for x in range(u64(2 * pw2)):
        p = src + (x >> u64(1))
        v = zero + of[p]
        v = v if af[p] == top + (x & u64(1)) else zero
        gf[row + x] = zero if yf[base + x] <= zero else v
    for x in range(u64(2 * pw2), u64(ow)):
        gf[row + x] = zero


@twins(MEMORY_BOUND_MIN)
def conv_dout_direct(dout, y, relu, wp, qh, qw, padded, g, dpad, db, arg, sums, n0):
    """The upstream gradient of M images, n0 ... n0 + M - 1 (M: the layouts' images, ``dpad``'s
    when shared, else ``g``'s; a backward pass in chunks of images calls it once a chunk), in the
    two layouts of the direct backward pass, image n0 + j in their image j, ReLU's mask applied
    when ``relu`` (0 where the forward output ``y`` is <= 0); each image's
    :func:`~fastlayers._kernels._numba.row_sum` of its plane of ``g`` kept in sums[n0 + j, f]
    (``sums``: (>= N, >= FN) scratch of the dtype; smaller, nothing is written), and db[f] = the sum
    of sums[i, f] over i < n0 + M, in order (after the last chunk, the whole batch's; rows below
    n0 are those the earlier chunks wrote). The tasks take the planes image by image, each image's
    channels in turn, so that a task's planes lie next to each other in every array
    (docs/PERFORMANCE.md, "The gradient's layouts"):

    - g[i, f, yy*wp + x] = dout[i, f, yy, x] for x < OW, 0 in the other columns of rows of width
      ``wp`` and past OH*wp (the filter gradient's layout, the forward's pixel grid);
    - dpad[i, f]: the plane zero-padded by ``qh`` rows and ``qw`` columns on each side, flattened
      with row width OW + 2*qw, 0 past it (the input gradient's input); only when ``padded``. Planes
      FN ... of each image, where dpad has more, are zeroed.

    With ``arg`` not empty (the nets' Convolution -> ReLU -> 2x2 Pooling, ``relu`` set), ``dout`` is
    the pooling's upstream gradient, (N, FN, PH, PW) with 2*PH <= OH and 2*PW <= OW, and ``arg``
    (uint8, the same shape) each window's index of its maximum: the gradient laid out is the
    pooling's backward (0 + dout at the position ``arg`` names, 0 elsewhere; an index past 3 adds
    nothing) through ReLU's mask, as :func:`_pooled_row` says; the full-size gradient is never
    written.

    With ``g`` empty, (0, FNp, Lg) ("shared": ``padded`` and ``wp`` >= OW + ``qw``), only ``dpad``
    is written, its planes with row width ``wp`` instead: each row's zero columns past OW are then
    also the next row's left padding (the flat plane reads the same as the padded one), and
    ``dpad`` holds the first layout too, shifted by s = qh*wp + qw: dpad[i, f, s + q] = g[i, f, q]
    for q < Lg. db is summed from dpad[i, f, s : s + Lg], the same values in the same order; the
    filter gradient then reads ``dpad`` (:func:`conv_dw_direct`'s ``g0``), whose planes past FN are
    zero.

    ``y``: (N, FN, OH, OW), C-contiguous (unread without ``relu``); ``dout``: (N, FN, OH, OW), or as
    above; ``g``: (M, >= FN, Lg >= OH*wp), rows past FN left alone, or empty as above; ``dpad``: (>=
    M, >= FN, Ld >= (OH + 2*qh)*(row width), and >= s + Lg when shared) (unread and unwritten
    without ``padded``); ``db``: (FN,), set; ``arg``: empty (0, 0, 0, 0), or as above; 0 <= ``n0``
    <= N - M. Nothing is written when an array does not fit."""
    n, fn, oh, ow = y.shape
    pooled = arg.shape[0] > 0
    ph2, pw2 = arg.shape[2], arg.shape[3]
    af = arg.reshape(arg.size)
    fnp, lg, ld = g.shape[1], g.shape[2], dpad.shape[2]
    shared = g.shape[0] == 0  # the gradient laid out in dpad only (see above)
    m = dpad.shape[0] if shared else g.shape[0]  # the images laid out
    wd = wp if shared else ow + 2 * qw
    dn = dpad.shape[1]  # dpad's planes an image
    shift = qh * wd + qw
    zero = typed(0, g)
    gf = g.reshape(g.size)  # flat indices: a slice view per row costs ~12 ns
    df = dpad.reshape(dpad.size)
    dst = df if shared else gf  # where each row is laid out first
    of = dout.reshape(dout.size)
    yf = y.reshape(y.size)
    if sums.shape[0] < n or sums.shape[1] < fn or db.shape[0] < fn or n0 < 0 or n0 + m > n:
        return
    if pooled:  # dout: the pooling's upstream gradient, arg its indices (see above)
        if dout.shape != arg.shape or arg.shape[0] != n or arg.shape[1] != fn or 2 * ph2 > oh or 2 * pw2 > ow:
            return
    elif dout.shape != y.shape:
        return
    if padded and (dpad.shape[0] < m or dn < fn or qh < 0 or qw < 0 or (oh + 2 * qh) * wd > ld):
        return
    if shared and (not padded or wp < ow + qw or shift + lg > ld):
        return
    if not shared and (fnp < fn or lg < oh * wp or wp < ow):
        return
    for t in prange(m * fn):
        j = t // fn  # the image's place in the layouts
        i = n0 + j  # and in dout, y, arg and sums
        f = t % fn
        gp = (j * fnp + f) * lg
        dp = (j * dn + f) * ld
        # Each plane is zeroed whole, in one long loop, and its rows written over it: the rows
        # are short (7-28 items), and a loop per row for each border cost more than the copies
        # (docs/PERFORMANCE.md, "The gradient's layouts").
        if not shared:
            _zero_at(gf, gp, gp + lg)
        if padded:
            _zero_at(df, dp, dp + ld)
        for yy in range(oh):
            # unsigned indices: a signed one costs a negative-index test that blocks vector code
            src = u64(((i * fn + f) * oh + yy) * ow)
            start = u64(dp + (yy + qh) * wd + qw if padded else 0)  # the row in dpad
            row = start if shared else u64(gp + yy * wp)
            if pooled:
                if yy < 2 * ph2:
                    pooled_src = u64(((i * fn + f) * ph2 + yy // 2) * pw2)
                    _pooled_row(of, af, pooled_src, yf, src, pw2, u64(2 * (yy % 2)), ow, dst, row)
                # else: a last row no window covers, left 0
            elif relu:
                for x in range(u64(ow)):
                    dst[row + x] = zero if yf[src + x] <= zero else of[src + x]
            else:
                for x in range(u64(ow)):
                    dst[row + x] = of[src + x]
            if padded and not shared:
                for x in range(u64(ow)):
                    df[start + x] = gf[row + x]
        if padded and f == fn - 1:  # the image's planes past FN
            _zero_at(df, (j * dn + fn) * ld, (j + 1) * dn * ld)
        if shared:
            sums[i, f] = row_sum(df[dp + shift : dp + shift + lg])
        else:
            sums[i, f] = row_sum(gf[gp : gp + lg])
    for f in range(fn):
        total = zero
        for i in range(n0 + m):
            total += sums[i, f]
        db[f] = total


@twins(DIRECT_MIN)
def conv_dw_direct(g, g0, xp, koff, nvec, acc, dw, begin, end):
    """The filter gradient of the direct convolution: dw[f, k] = the sum over images, in order, of
    the sum over the pixels q < nvec*lanes of g[i, f, q] * xp[i, c, q + ky*wp + kx] (k = (c, ky,
    kx); one FMA each, lane by lane, in compiled code), the lanes then added by
    :func:`~fastlayers._kernels._numba.row_sum`.

    Each task (4 filters x DW_TERMS terms, ``_numba.CONV_DW_TILE``) keeps its accumulators in
    ``acc`` across chunks of images (:data:`DW_CHUNK_ELEMENTS`), the images of a chunk in order
    inside one call of the tile; and
    across calls: ``begin`` sets them to 0 first, ``end`` writes ``dw`` from them after. So a
    backward pass in chunks of images (one call a chunk, ``begin`` on the first, ``end`` on the
    last) gives the bits of one call over the whole batch.

    ``g``: (N, FNp, Lg) from :func:`conv_dout_direct`, FNp = FN rounded up to the tile's 4 rows
    (the extra rows 0), pixel q of each plane at ``g0`` + q, ``g0`` + nvec*lanes <= Lg (``g0``: 0
    for its ``g``, qh*wp + qw for its ``dpad`` when shared); ``xp``: the forward's padded planes of
    the same N images (N, C, Lx), C*Lx >= nvec*lanes + max(koff); ``koff``: (Kb, DW_TERMS) int64, the
    K term offsets c*Lx + ky*wp + kx >= 0 in rows of the tile's terms (past K: 0), K <= DW_TERMS*Kb;
    ``acc``: (ceil(FN/4)*Kb, >= TILE_ACCUMULATORS*lanes) scratch; ``dw``: (FN, K). Nothing is read
    or written when an array does not fit."""
    n, fnp, lg = g.shape
    c, lx = xp.shape[1], xp.shape[2]
    kb = koff.shape[0]
    fn, k = dw.shape
    lanes = VECTOR_BYTES // xp.itemsize
    width = TILE_ACCUMULATORS * lanes  # a task's accumulators
    tasks = ((fn + 3) // 4) * kb
    if xp.shape[0] != n or fnp < tasks // max(kb, 1) * 4 or k > DW_TERMS * kb or g0 < 0 or nvec < 0:
        return
    if g0 + nvec * lanes > lg or koff.shape[1] != DW_TERMS or acc.shape[0] < tasks or acc.shape[1] < width:
        return
    for t in range(kb):
        for j in range(DW_TERMS):
            if koff[t, j] < 0 or koff[t, j] + nvec * lanes > c * lx:  # within the image's planes
                return
    gf = g.reshape(n * fnp * lg)
    xf = xp.reshape(n * c * lx)
    # images in chunks whose gradient rows and input planes stay in a core's L2 cache together
    chunk = max(1, DW_CHUNK_ELEMENTS // (fnp * lg + c * lx))
    if begin:
        for t in prange(tasks):
            _zero(acc[t, :width])
    for i0 in range(0, n, chunk):
        nimg = min(chunk, n - i0)
        for t in prange(tasks):
            fb = t // kb
            gstart = (i0 * fnp + fb * 4) * lg + g0
            conv_dw_tile_4(gf, gstart, lg, fnp * lg, xf, i0 * c * lx, c * lx, koff[t % kb], nvec, nimg, acc[t])
    if not end:
        return
    for t in prange(tasks):
        fb = t // kb
        tb = t % kb
        a = acc[t]
        for f in range(fb * 4, min(fn, fb * 4 + 4)):
            for term in range(tb * DW_TERMS, min(k, tb * DW_TERMS + DW_TERMS)):
                slot = ((f - fb * 4) * DW_TERMS + term - tb * DW_TERMS) * lanes
                dw[f, term] = row_sum(a[slot : slot + lanes])


@helper
def _pixel_major(src, g0, pof, dst):
    """One image's gradient pixel by pixel, its filters contiguous: dst[p, f] = src[f, g0 + pof[p]]
    for f < the planes of ``src``, 0 for the rest of ``dst``'s row."""
    fn = min(src.shape[0], dst.shape[1])
    zero = typed(0, dst)
    for p in range(pof.shape[0]):
        q = g0 + pof[p]
        row = dst[p]
        for f in range(fn):
            row[f] = src[f, q]
        for f in range(fn, dst.shape[1]):
            row[f] = zero


@twins(DIRECT_MIN)
def conv_dw_lanes(g, g0, xp, koff, pof, gt, acc, dw, begin, end):
    """The filter gradient with the filters in the vector lanes: dw[f, k] = the sum over images, in
    order, and over the output pixels p, in order, of g[i, f, g0 + pof[p]] * xp[i, c, pof[p] +
    ky*wp + kx] (k = (c, ky, kx); one FMA each in compiled code, ``_numba.conv_dw_lanes_tile_*``).
    It visits the output's pixels only: it serves small planes, where :func:`conv_dw_direct` would
    compute many padded columns (docs/PERFORMANCE.md, "Small planes: filters in the lanes of the
    filter gradient").

    The images go in chunks of M = len(gt): each chunk's gradient is first copied pixel by pixel,
    its filters contiguous, into the scratch ``gt`` (gt[i, p, f] = g[i0 + i, f, g0 + pof[p]], 0 past
    the planes of ``g``), then the tasks (FC filters x T terms, ``_numba.CONV_DW_LANES_TILE``: T =
    DWL_TERMS, FC = DWL_VECTORS * (VECTOR_BYTES // itemsize)) add the
    chunk to their accumulators in ``acc``. They keep them across chunks and across calls, as
    :func:`conv_dw_direct` does: ``begin`` sets them to 0 first, ``end`` writes ``dw`` from them
    after, so a backward pass in chunks of images gives the bits of one call over the whole batch.

    ``g``: (N, FNg, Lg), the layout of :func:`conv_dout_direct` (pixel (y, xo) of plane f at ``g0``
    + y*wp + xo); ``xp``: the forward's padded planes of the same N images (N, C, Lx); ``koff``:
    (Kb, T) int64, the K term offsets c*Lx + ky*wp + kx in rows of T (past K: 0), K <= T*Kb;
    ``pof``: (P,) int64, the output pixels' offsets y*wp + xo; ``gt``: (M >= 1, P, FNt) scratch,
    FNt >= FN rounded up to FC, left holding the last chunk's copy; ``acc``: (ceil(FN/FC)*Kb, >=
    TILE_ACCUMULATORS*lanes) scratch; ``dw``: (FN, K). Nothing is read or written when an array does not fit, or a
    pixel's term reaches past its image's planes or its gradient past its plane."""
    n, fng, lg = g.shape
    c, lx = xp.shape[1], xp.shape[2]
    chunk, npix, fnt = gt.shape
    kb = koff.shape[0]
    fn, k = dw.shape
    lanes = VECTOR_BYTES // xp.itemsize
    fc = DWL_VECTORS * lanes
    terms = DWL_TERMS
    width = TILE_ACCUMULATORS * lanes  # a task's accumulators: terms x fc
    nfb = (fn + fc - 1) // fc
    tasks = nfb * kb
    if xp.shape[0] != n or chunk < 1 or fnt < nfb * fc or k > terms * kb or koff.shape[1] != terms:
        return
    if pof.shape[0] != npix or acc.shape[0] < tasks or acc.shape[1] < width or g0 < 0:
        return
    # the farthest pixel offset and term: every read stays inside its image's planes and its plane
    far, reach = _farthest(pof), _farthest(koff.reshape(kb * terms))
    if far < 0 or reach < 0 or (npix and (g0 + far >= lg or far + reach >= c * lx)):
        return
    gf = gt.reshape(chunk * npix * fnt)
    xf = xp.reshape(n * c * lx)
    if begin:
        for t in prange(tasks):
            _zero(acc[t, :width])
    for i0 in range(0, n, chunk):
        nimg = min(chunk, n - i0)
        for i in prange(nimg):
            _pixel_major(g[i0 + i], g0, pof, gt[i])
        for t in prange(tasks):
            fb = t // kb
            conv_dw_lanes_tile_6(gf, fb * fc, fnt, xf, i0 * c * lx, c * lx, pof, koff[t % kb], nimg, acc[t])
    if not end:
        return
    for t in prange(tasks):
        fb = t // kb
        tb = t % kb
        a = acc[t]
        for term in range(tb * terms, min(k, tb * terms + terms)):
            for f in range(fb * fc, min(fn, fb * fc + fc)):
                dw[f, term] = a[(term - tb * terms) * fc + f - fb * fc]


@helper
def _window_max(img, y0, x0, ph, pw):
    """(maximum, window-local index) of the window at (y0, x0) clipped to ``img``, in row order:
    the first NaN wins, otherwise the first strictly greater value."""
    h, w = img.shape
    ky0, ky1 = max(0, -y0), min(ph, h - y0)
    kx0, kx1 = max(0, -x0), min(pw, w - x0)
    best = img[y0 + ky0, x0 + kx0]
    where = ky0 * pw + kx0
    for ky in range(ky0, ky1):
        for kx in range(kx0, kx1):
            v = img[y0 + ky, x0 + kx]
            if _better(v, best):
                best = v
                where = ky * pw + kx
    return best, where


@helper
def _better(v, best):
    """Whether ``v`` replaces ``best`` as a window's maximum: the first NaN wins, otherwise the
    first strictly greater value."""
    return (best == best) & ((v > best) | (v != v))


#: Outputs per row from which the 2x2 pooling's backward runs whole rows (measured:
#: docs/PERFORMANCE.md, "Pooling").
POOL_ROW_MIN = 8
#: Scratch rows (tasks) of the classic pooling's planes (:func:`maxpool_forward`): a few per
#: thread, so that the tasks balance; results do not depend on it.
POOL_TASKS = 64


@helper
def _pool2x2_rows_serve(ph, pw, stride, pad, h, w, oh, ow):
    """Whether the pooling is the classic one (2x2, stride 2, unpadded) with every window inside
    the (h, w) plane and rows of at least ``POOL_ROW_MIN`` outputs: the backward's row loops
    serve it."""
    return ph == 2 and pw == 2 and stride == 2 and pad == 0 and 2 * oh <= h and 2 * ow <= w and ow >= POOL_ROW_MIN


@helper
def _pool2x2_plane(img, ph, pw, of, af, base, vals, vidx):
    """The 2x2, stride 2, unpadded max pooling of the plane ``img`` into of[base + y*pw + xo] and
    af[base + y*pw + xo] (y < ph, xo < pw): each window's maximum (the first NaN in the window's
    row order winning, else the first larger value) and its index 0..3 (ky*2 + kx), in two passes
    that vectorize whatever the rows' length. First, into vals[y*2pw + xx] and
    vidx[y*2pw + xx] (uint8), the better of img[2y, xx] and img[2y+1, xx] for xx < 2pw (by
    ``_better``: the bottom one only where it wins; index 0 or 2). Then each window's better
    column, the plane's windows as one flat loop (a window's two columns are adjacent in ``vals``
    and never straddle a row): the first NaN in the window's row order (the smaller index), else
    the larger value, on a tie the smaller index. ``img`` holds rows 2ph-1 and columns 2pw-1;
    ``vals`` and ``vidx`` are 1-D with at least ph*2pw elements."""
    # unsigned indices: a signed one costs a negative-index test that blocks vector code
    w2 = u64(2 * pw)
    start = u64(base)
    for y in range(ph):
        row = u64(y) * w2
        for xx in range(w2):
            a = img[2 * y, xx]
            c = img[2 * y + 1, xx]
            take = _better(c, a)
            vals[row + xx] = c if take else a
            vidx[row + xx] = 2 if take else 0
    for m in range(u64(ph * pw)):
        p = vals[m + m]
        ip = vidx[m + m]
        q = vals[m + m + u64(1)]
        iq = vidx[m + m + u64(1)] + 1
        pn = p != p
        qn = q != q
        earlier = iq < ip
        takeq = (qn & ((~pn) | earlier)) | ((~pn) & (~qn) & ((q > p) | ((q == p) & earlier)))
        of[start + m] = q if takeq else p
        af[start + m] = iq if takeq else ip


@helper
def _unpool2x2_row(grad, idx, y, r0, r1):
    """The backward of :func:`_pool2x2_plane` for output row ``y`` into the plane's rows 2y (``r0``)
    and 2y+1 (``r1``): each window's four positions get 0 + its gradient where its index says (as
    the general path adds it to a zeroed plane, so -0.0 becomes +0.0) and 0 elsewhere; an index past
    3 gives four zeros. Columns past 2 * grad.shape[1] (a last one no window covers) get 0."""
    zero = typed(0, r0)
    ow = grad.shape[1]
    for xo in range(ow):
        j = 2 * xo
        v = zero + grad[y, xo]
        k = idx[y, xo]
        r0[j] = v if k == 0 else zero
        r0[j + 1] = v if k == 1 else zero
        r1[j] = v if k == 2 else zero
        r1[j + 1] = v if k == 3 else zero
    for ix in range(2 * ow, r0.shape[0]):
        r0[ix] = zero
        r1[ix] = zero


@twins(MEMORY_BOUND_MIN)
def maxpool_forward(x, ph, pw, stride, pad, out, arg, vals, vidx):
    """out[n, c, y, xo] = the maximum of x[n, c] over the window of rows y*stride - pad + [0, ph)
    and columns xo*stride - pad + [0, pw) clipped to the input (NaN wins; ties: the first, in row
    order); arg[n, c, y, xo] = its window-local index ky * pw + kx. ``x``: (N, C, H, W); ``out``,
    ``arg``: (N, C, OH, OW), C-contiguous, every window holding at least one input element.

    ``vals`` (x's dtype) and ``vidx`` (uint8): (T, >= OH*2*OW) scratch rows for the classic window
    (2x2, stride 2, unpadded, inside the plane), pooled a plane at a time by
    :func:`_pool2x2_plane`: the planes are then split among min(T, N*C) tasks, task k taking the
    ceil(N*C/tasks) planes from k*ceil(N*C/tasks) on in order, through its row k, which it leaves
    holding its last plane's first pass. Otherwise (0, 0): a task per plane, the general loop."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    # output columns whose windows lie inside the input: xo*stride - pad >= 0 and ... + pw <= w
    lo = min(ow, (pad + stride - 1) // stride)
    hi = max(lo, min(ow, (w + pad - pw) // stride + 1))
    classic = ph == 2 and pw == 2 and stride == 2 and pad == 0 and 2 * oh <= h and 2 * ow <= w
    tasks = min(n * c, vals.shape[0], vidx.shape[0])
    if classic and tasks > 0 and min(vals.shape[1], vidx.shape[1]) >= oh * 2 * ow:
        of = out.reshape(out.size)
        af = arg.reshape(arg.size)
        per = (n * c + tasks - 1) // tasks
        for k in prange(tasks):
            for t in range(k * per, min(n * c, (k + 1) * per)):
                _pool2x2_plane(x[t // c, t % c], oh, ow, of, af, t * oh * ow, vals[k], vidx[k])
        return
    for t in prange(n * c):
        img = x[t // c, t % c]
        dst = out[t // c, t % c]
        idx = arg[t // c, t % c]
        for y in range(oh):
            y0 = y * stride - pad
            inside = y0 >= 0 and y0 + ph <= h
            for xo in range(ow):
                x0 = xo * stride - pad
                if not (inside and lo <= xo < hi):
                    best, where = _window_max(img, y0, x0, ph, pw)
                elif ph == 2 and pw == 2:  # the classic nets' window, unrolled, branch-free
                    r0 = img[y0]
                    r1 = img[y0 + 1]
                    best = r0[x0]
                    where = 0
                    v = r0[x0 + 1]
                    take = _better(v, best)
                    best, where = (v, 1) if take else (best, where)
                    v = r1[x0]
                    take = _better(v, best)
                    best, where = (v, 2) if take else (best, where)
                    v = r1[x0 + 1]
                    take = _better(v, best)
                    best, where = (v, 3) if take else (best, where)
                else:
                    best = img[y0, x0]
                    where = 0
                    for ky in range(ph):
                        for kx in range(pw):
                            v = img[y0 + ky, x0 + kx]
                            take = _better(v, best)
                            best, where = (v, ky * pw + kx) if take else (best, where)
                dst[y, xo] = best
                idx[y, xo] = where


@twins(MEMORY_BOUND_MIN)
def maxpool_backward(dout, arg, ph, pw, stride, pad, dx):
    """dx[n, c] = the sum of dout[n, c, y, xo] at the input position of each window's maximum
    (``arg``), windows in row order; 0 elsewhere. An index of ``arg`` that points outside its
    window or the input contributes nothing. ``dout``, ``arg``: (N, C, OH, OW); ``dx``: (N, C, H, W)."""
    n, c, h, w = dx.shape
    oh, ow = dout.shape[2], dout.shape[3]
    size = ph * pw
    halves = _pool2x2_rows_serve(ph, pw, stride, pad, h, w, oh, ow)
    for t in prange(n * c):
        plane = dx[t // c, t % c]
        grad = dout[t // c, t % c]
        idx = arg[t // c, t % c]
        if halves:  # windows that tile the plane: each position written once, whole rows
            for y in range(oh):
                _unpool2x2_row(grad, idx, y, plane[2 * y], plane[2 * y + 1])
            for yy in range(2 * oh, h):  # a last row no window covers
                _zero(plane[yy])
            continue
        for yy in range(h):
            _zero(plane[yy])
        for y in range(oh):
            for xo in range(ow):
                a = int(idx[y, xo])  # int64 arithmetic below, whatever the index dtype
                if a < 0 or a >= size:
                    continue
                iy = y * stride - pad + a // pw
                ix = xo * stride - pad + a % pw
                if 0 <= iy < h and 0 <= ix < w:
                    plane[iy, ix] += grad[y, xo]
