"""Elementwise kernels: ReLU and Sigmoid, forward and backward.

Contract shared by all kernels here: every array argument is 1-D, of the same length and dtype
(float32 or float64); ``out`` may be the same array as an input (exact aliasing is safe, partial
overlap is not). The outer ``prange`` runs over blocks of ``BLOCK`` elements; each block works on
slice views indexed from 0, which lets Numba drop its negative-index wraparound and LLVM vectorize
the inner loop (indexing the whole array from ``blk * BLOCK`` does not vectorize: measured 10x slower).
"""

from __future__ import annotations

from numba import prange

from ._jit import twins
from ._math import exp_nonpos, typed
from ._threads import MEMORY_BOUND

BLOCK = 8192


@twins(MEMORY_BOUND)
def relu_forward(x, out):
    """out[i] = 0 where x[i] <= 0, else x[i] (NaN stays NaN)."""
    n = x.shape[0]
    zero = typed(0, x)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        xb, ob = x[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            ob[i] = zero if v <= zero else v


@twins(MEMORY_BOUND)
def relu_backward(dout, y, out):
    """out[i] = 0 where y[i] <= 0, else dout[i]; ``y`` is the forward output (or input)."""
    n = dout.shape[0]
    zero = typed(0, dout)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        db, yb, ob = dout[lo:hi], y[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            ob[i] = zero if yb[i] <= zero else db[i]


@twins(1 << 15)
def sigmoid_forward(x, out):
    """out[i] = 1 / (1 + exp(-x[i])), computed from exp(-|x|) so that nothing overflows.

    Saturates to exactly 0 and 1; NaN in gives NaN out.
    """
    n = x.shape[0]
    one = typed(1, x)
    zero = typed(0, x)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        xb, ob = x[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            e = exp_nonpos(-abs(v))
            d = one / (one + e)
            ob[i] = d if v >= zero else e * d


@twins(MEMORY_BOUND)
def sigmoid_backward(dout, y, out):
    """out[i] = dout[i] * (1 - y[i]) * y[i]; ``y`` is the forward output."""
    n = dout.shape[0]
    one = typed(1, dout)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        db, yb, ob = dout[lo:hi], y[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            s = yb[i]
            ob[i] = db[i] * (one - s) * s


@twins(MEMORY_BOUND)
def copy(x, out):
    """out[i] = x[i]: the yardstick of the benchmarks (the machine's parallel copy bandwidth)."""
    n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        xb, ob = x[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            ob[i] = xb[i]
