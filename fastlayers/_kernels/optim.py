"""Optimizer update kernels: parameters and their state updated in place.

Contract: every array is 1-D, C-contiguous, of one float dtype and one length (the functional layer
passes flat views of the parameter arrays); scalars are of that dtype. The outer ``prange`` runs
over blocks of ``BLOCK`` elements, each block on slice views (see ``elementwise``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import twins
from ._math import typed
from ._threads import MEMORY_BOUND

BLOCK = 8192


@twins(MEMORY_BOUND)
def sgd(p, g, lr):
    """p -= lr * g"""
    n = p.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        pb, gb = p[lo:hi], g[lo:hi]
        for i in range(hi - lo):
            pb[i] -= lr * gb[i]


@twins(MEMORY_BOUND)
def momentum(p, v, g, lr, mu):
    """v = mu * v - lr * g; p += v"""
    n = p.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        pb, vb, gb = p[lo:hi], v[lo:hi], g[lo:hi]
        for i in range(hi - lo):
            vb[i] = mu * vb[i] - lr * gb[i]
            pb[i] += vb[i]


@twins(MEMORY_BOUND)
def adagrad(p, h, g, lr, eps):
    """h += g * g; p -= lr * g / (sqrt(h) + eps)"""
    n = p.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        pb, hb, gb = p[lo:hi], h[lo:hi], g[lo:hi]
        for i in range(hi - lo):
            hb[i] += gb[i] * gb[i]
            pb[i] -= lr * gb[i] / (np.sqrt(hb[i]) + eps)


@twins(MEMORY_BOUND)
def adam(p, m, v, g, lr_t, beta1, beta2, eps):
    """m += (1 - beta1) * (g - m); v += (1 - beta2) * (g * g - v); p -= lr_t * m / (sqrt(v) + eps)"""
    n = p.shape[0]
    one = typed(1, p)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        pb, mb, vb, gb = p[lo:hi], m[lo:hi], v[lo:hi], g[lo:hi]
        for i in range(hi - lo):
            gi = gb[i]
            mb[i] += (one - beta1) * (gi - mb[i])
            vb[i] += (one - beta2) * (gi * gi - vb[i])
            pb[i] -= lr_t * mb[i] / (np.sqrt(vb[i]) + eps)
