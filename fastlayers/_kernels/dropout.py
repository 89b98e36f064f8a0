"""Dropout kernels, with their random numbers from a counter-based generator (Philox4x32-10).

Element ``i`` of a call draws the 32-bit word ``i % 4`` of Philox4x32-10 applied to the counter
``(i // 4 mod 2**32, i // 2**34, 0, 0)`` under the call's key ``(k0, k1)``: each draw is a pure
function of (key, index), so any block of elements can be drawn by any thread and the mask does not
depend on the thread count. The constants are Random123's (Salmon et al., SC'11). The draw ``u``
keeps its element when ``u > threshold``, with ``threshold = floor(ratio * 2**32)``: the same as
``u / 2**32 > ratio``, the classic ``np.random.rand(...) > ratio`` with 32-bit uniforms.

Contract: 1-D arrays of one length; ``x``/``dout``/``out`` of one float dtype, ``mask`` boolean;
``out`` may be ``x`` itself. Each kernel follows the block pattern of :mod:`._blocks` (``BLOCK`` is
a multiple of 4, so a block starts on a counter).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._blocks import BLOCK, bounds, nblocks
from ._numba import helper, twins, typed

#: Memory-bound passes: parallel from this many elements (the dropout forward draws its random
#: numbers, enough work to pay for threads earlier).
MEMORY_BOUND_MIN = 1 << 18
DRAW_MIN = 1 << 15

M0 = np.uint64(0xD2511F53)
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)
W1 = np.uint64(0xBB67AE85)
HALF = np.uint64(32)
ROUNDS = 10


@helper(inline=True)
def philox(c0, c1, k0, k1):
    """The four words of Philox4x32-10 of the counter ``(c0, c1, 0, 0)`` under the key ``(k0, k1)``,
    all uint32. Every intermediate is cast back to uint32 (integer arithmetic widens to 64 bits
    otherwise), and the products are 32 x 32 -> 64 bits, which vectorize."""
    c2 = np.uint32(0)
    c3 = np.uint32(0)
    for _ in range(ROUNDS):
        p0 = M0 * np.uint64(c0)
        p1 = M1 * np.uint64(c2)
        c0, c1, c2, c3 = (
            np.uint32(np.uint32(p1 >> HALF) ^ c1 ^ k0),
            np.uint32(p1),
            np.uint32(np.uint32(p0 >> HALF) ^ c3 ^ k1),
            np.uint32(p0),
        )
        k0 = np.uint32(np.uint64(k0) + W0)  # the key bump mod 2**32, without a uint32 overflow
        k1 = np.uint32(np.uint64(k1) + W1)
    return c0, c1, c2, c3


@helper(inline=True)
def _keep(x, u, threshold, one, zero):
    return x * (one if u > threshold else zero)


@helper
def _draw_block(x, first, k0, k1, threshold, out, mask):
    """The block's elements, counters ``first ...``: whole counters in a loop without branches (it
    vectorizes), then the last 0-3 elements. ``k0``, ``k1``, ``threshold``: uint32."""
    one = typed(1, x)
    zero = typed(0, x)
    n = x.shape[0]
    for j in range(n // 4):
        g = first + j
        u0, u1, u2, u3 = philox(np.uint32(g), np.uint32(g >> 32), k0, k1)
        i = 4 * j
        mask[i] = u0 > threshold
        mask[i + 1] = u1 > threshold
        mask[i + 2] = u2 > threshold
        mask[i + 3] = u3 > threshold
        out[i] = _keep(x[i], u0, threshold, one, zero)
        out[i + 1] = _keep(x[i + 1], u1, threshold, one, zero)
        out[i + 2] = _keep(x[i + 2], u2, threshold, one, zero)
        out[i + 3] = _keep(x[i + 3], u3, threshold, one, zero)
    i = n - n % 4
    if i < n:
        g = first + n // 4
        u = philox(np.uint32(g), np.uint32(g >> 32), k0, k1)
        for lane in range(n - i):
            mask[i + lane] = u[lane] > threshold
            out[i + lane] = _keep(x[i + lane], u[lane], threshold, one, zero)


@twins(DRAW_MIN)
def dropout_forward(x, k0, k1, threshold, out, mask):
    """mask[i] = (draw i > threshold); out[i] = x[i] * mask[i] (so NaN and inf stay NaN when
    dropped, as ``x * mask`` does). ``k0``, ``k1``, ``threshold``: integers in [0, 2**32)."""
    n = x.shape[0]
    key0, key1, limit = np.uint32(k0), np.uint32(k1), np.uint32(threshold)
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _draw_block(x[lo:hi], (blk * BLOCK) >> 2, key0, key1, limit, out[lo:hi], mask[lo:hi])


@helper
def _mask_block(dout, mask, out):
    one = typed(1, dout)
    zero = typed(0, dout)
    for i in range(dout.shape[0]):
        out[i] = dout[i] * (one if mask[i] else zero)


@twins(MEMORY_BOUND_MIN)
def dropout_backward(dout, mask, out):
    """out[i] = dout[i] * mask[i]."""
    n = dout.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _mask_block(dout[lo:hi], mask[lo:hi], out[lo:hi])


@helper
def _scale_block(x, a, out):
    for i in range(x.shape[0]):
        out[i] = x[i] * a


@twins(MEMORY_BOUND_MIN)
def scale(x, a, out):
    """out[i] = x[i] * a, ``a`` a scalar of the arrays' dtype (dropout at test time)."""
    n = x.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _scale_block(x[lo:hi], a, out[lo:hi])
