"""Elementwise kernels: ReLU and Sigmoid, forward and backward.

Contract shared by all kernels here: every array argument is 1-D, of the same length and dtype
(float32 or float64); ``out`` may be the same array as an input (exact aliasing is safe, partial
overlap is not). Each kernel follows the block pattern of :mod:`._blocks`.
"""

from __future__ import annotations

from numba import prange

from ._blocks import bounds, nblocks
from ._math import exp_nonpos
from ._numba import helper, twins, typed

# From how many elements the parallel twin runs (measured: docs/PERFORMANCE.md): memory-bound passes
# from 2**18, the sigmoid's exp pays for threads earlier.
MEMORY_BOUND_MIN = 1 << 18
SIGMOID_FORWARD_MIN = 1 << 15


@helper
def _relu_forward_block(x, out):
    zero = typed(0, x)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = zero if v <= zero else v


@helper
def _relu_backward_block(dout, y, out):
    zero = typed(0, dout)
    for i in range(dout.shape[0]):
        out[i] = zero if y[i] <= zero else dout[i]


@helper
def _sigmoid_forward_block(x, out):
    one = typed(1, x)
    zero = typed(0, x)
    for i in range(x.shape[0]):
        v = x[i]
        e = exp_nonpos(-abs(v))
        # 1 / (1 + e) for v >= 0, e / (1 + e) below: one division, rounded once
        out[i] = (one if v >= zero else e) / (one + e)


@helper
def _sigmoid_backward_block(dout, y, out):
    one = typed(1, dout)
    for i in range(dout.shape[0]):
        s = y[i]
        out[i] = dout[i] * (one - s) * s


@helper
def _copy_block(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i]


@twins(MEMORY_BOUND_MIN)
def relu_forward(x, out):
    """out[i] = 0 where x[i] <= 0, else x[i] (NaN stays NaN)."""
    n = x.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _relu_forward_block(x[lo:hi], out[lo:hi])


@twins(MEMORY_BOUND_MIN)
def relu_backward(dout, y, out):
    """out[i] = 0 where y[i] <= 0, else dout[i]; ``y`` is the forward output (or input)."""
    n = dout.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _relu_backward_block(dout[lo:hi], y[lo:hi], out[lo:hi])


@twins(SIGMOID_FORWARD_MIN)
def sigmoid_forward(x, out):
    """out[i] = 1 / (1 + exp(-x[i])), computed from exp(-|x|) so that nothing overflows.

    Saturates to exactly 0 and 1; NaN in gives NaN out.
    """
    n = x.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _sigmoid_forward_block(x[lo:hi], out[lo:hi])


@twins(MEMORY_BOUND_MIN)
def sigmoid_backward(dout, y, out):
    """out[i] = dout[i] * (1 - y[i]) * y[i]; ``y`` is the forward output."""
    n = dout.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _sigmoid_backward_block(dout[lo:hi], y[lo:hi], out[lo:hi])


@twins(MEMORY_BOUND_MIN)
def copy(x, out):
    """out[i] = x[i]: the yardstick of the benchmarks (the machine's parallel copy bandwidth)."""
    n = x.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _copy_block(x[lo:hi], out[lo:hi])
