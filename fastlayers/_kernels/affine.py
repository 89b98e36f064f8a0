"""Affine kernels around the BLAS products: the bias add and the bias-gradient reduction.

The matrix products themselves are NumPy ``matmul`` calls with ``out=`` in
:mod:`fastlayers.functional` (BLAS is faster than any loop written here, and never called inside a
``prange``).
"""

from __future__ import annotations

from numba import prange

from ._numba import twins

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
