"""The block pattern of the flat kernels (elementwise and optimizer updates), with one ``BLOCK``.

A flat kernel takes 1-D arrays of one length. Its outer ``prange`` runs over blocks of ``BLOCK``
elements, and hands each block, as slice views, to a small helper (``@helper``) whose loop LLVM
vectorizes::

    n = x.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _relu_forward_block(x[lo:hi], out[lo:hi])

The helper indexes its slices from 0 to their length, so nothing is read outside ``[lo, hi)`` and
each element is written by exactly one block, whatever the thread count. Why the loop is its own
function and the data are slices, not indices into the whole array: docs/PERFORMANCE.md.
"""

from __future__ import annotations

from ._numba import helper

#: Elements per block: a multiple of every vector width, large enough that a block costs much more
#: than handing it to a thread.
BLOCK = 8192


@helper
def nblocks(n):
    """How many blocks cover ``n`` elements."""
    return (n + BLOCK - 1) // BLOCK


@helper
def bounds(blk, n):
    """``(lo, hi)``: the elements of block ``blk`` of ``n`` elements."""
    lo = blk * BLOCK
    return lo, min(n, lo + BLOCK)
