"""Affine kernels around the matrix products: the bias add and the bias-gradient reduction, and
their fusions with the activation that follows an Affine layer in the nets (bias add + activation in
one pass over the product; activation gradient + bias gradient in one pass over ``dout``).

The matrix products themselves are :func:`fastlayers._gemm.matmul` calls in
:mod:`fastlayers.functional` (a BLAS is faster than any loop written here, and is never called
inside a ``prange``).

Contract: ``out``, ``dout``, ``y`` and ``dh`` are (N, M), ``b`` and ``db`` (M,), all of one float
dtype; ``dh`` may be ``dout`` itself.
"""

from __future__ import annotations

from numba import prange

from ._math import exp_nonpos
from ._numba import helper, twins, typed

# Memory-bound passes: parallel from 2**18 elements (measured: docs/PERFORMANCE.md).
MEMORY_BOUND_MIN = 1 << 18
#: Columns per block of the bias gradient (a row-wise reduction: blocks of columns, not of elements).
COL_BLOCK = 64


@twins(MEMORY_BOUND_MIN)
def bias_add(out, b):
    """out[i, j] += b[j] in place. ``out``: (N, M); ``b``: (M,), same dtype."""
    n, m = out.shape
    for i in prange(n):
        for j in range(m):
            out[i, j] += b[j]


@twins(MEMORY_BOUND_MIN)
def bias_grad(dout, db):
    """db[j] = sum over i of dout[i, j], rows added in order 0..N-1 (deterministic).

    ``dout``: (N, M); ``db``: (M,), same dtype, overwritten. Parallel over blocks of columns, so no
    two threads write the same element and the order of additions never depends on the threads.
    """
    n, m = dout.shape
    for blk in prange((m + COL_BLOCK - 1) // COL_BLOCK):
        j0 = blk * COL_BLOCK
        j1 = min(m, j0 + COL_BLOCK)
        acc = db[j0:j1]  # slice views indexed from 0: no wraparound checks, so the j loops vectorize
        first = dout[0, j0:j1]
        for j in range(j1 - j0):
            acc[j] = first[j]
        for i in range(1, n):
            row = dout[i, j0:j1]
            for j in range(j1 - j0):
                acc[j] += row[j]


@helper
def _relu_row(row, b):
    zero = typed(0, row)
    for j in range(row.shape[0]):
        v = row[j] + b[j]
        row[j] = zero if v <= zero else v


@helper
def _sigmoid_row(row, b):
    one = typed(1, row)
    zero = typed(0, row)
    for j in range(row.shape[0]):
        v = row[j] + b[j]
        e = exp_nonpos(-abs(v))
        row[j] = (one if v >= zero else e) / (one + e)


@twins(MEMORY_BOUND_MIN)
def bias_relu(out, b):
    """out[i, j] = relu(out[i, j] + b[j]) in place: the bias add and ReLU's forward in one pass,
    bit-identical to ``bias_add`` followed by ``relu_forward``."""
    for i in prange(out.shape[0]):
        _relu_row(out[i], b)


@twins(MEMORY_BOUND_MIN)
def bias_sigmoid(out, b):
    """out[i, j] = sigmoid(out[i, j] + b[j]) in place, bit-identical to ``bias_add`` followed by
    ``sigmoid_forward``."""
    for i in prange(out.shape[0]):
        _sigmoid_row(out[i], b)


@twins(MEMORY_BOUND_MIN)
def relu_grad_bias(dout, y, dh, db):
    """dh = dout where y > 0, else 0 (ReLU's backward), and db = dh summed over rows in order 0..N-1
    (the bias gradient), in one pass; bit-identical to ``relu_backward`` then ``bias_grad``."""
    n, m = dout.shape
    zero = typed(0, dout)
    for blk in prange((m + COL_BLOCK - 1) // COL_BLOCK):
        j0 = blk * COL_BLOCK
        j1 = min(m, j0 + COL_BLOCK)
        acc = db[j0:j1]
        for j in range(j1 - j0):
            acc[j] = zero
        for i in range(n):
            d, yr, h = dout[i, j0:j1], y[i, j0:j1], dh[i, j0:j1]
            for j in range(j1 - j0):
                v = zero if yr[j] <= zero else d[j]
                h[j] = v
                acc[j] += v


@twins(MEMORY_BOUND_MIN)
def sigmoid_grad_bias(dout, y, dh, db):
    """dh = dout * (1 - y) * y (Sigmoid's backward) and db = dh summed over rows in order, in one
    pass; bit-identical to ``sigmoid_backward`` then ``bias_grad``."""
    n, m = dout.shape
    one = typed(1, dout)
    for blk in prange((m + COL_BLOCK - 1) // COL_BLOCK):
        j0 = blk * COL_BLOCK
        j1 = min(m, j0 + COL_BLOCK)
        acc = db[j0:j1]
        for j in range(j1 - j0):
            acc[j] = one - one
        for i in range(n):
            d, yr, h = dout[i, j0:j1], y[i, j0:j1], dh[i, j0:j1]
            for j in range(j1 - j0):
                s = yr[j]
                v = d[j] * (one - s) * s
                h[j] = v
                acc[j] += v
