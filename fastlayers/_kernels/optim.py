"""Optimizer update kernels: parameters and their state updated in place.

Contract: every array is 1-D, C-contiguous, of one float dtype and one length (the functional layer
passes flat views of the parameter arrays); scalars are of that dtype. One exception: the gradient
``g`` of the plain (not grouped) kernels may be float32 where the rest is float64 (float32 gradients
of float64 parameters, as under the float32 policy); each element is converted to the parameter's
dtype as it is read (exactly), so the update is the one on ``g.astype(float64)`` (within a
rounding: the compiler may contract a multiply-add differently in the two signatures). Each kernel
follows the block pattern of :mod:`._blocks`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._blocks import bounds, nblocks
from ._numba import helper, twins, typed

# Memory-bound passes like ReLU's: the same threshold, not measured apart (docs/PERFORMANCE.md).
MEMORY_BOUND_MIN = 1 << 18


@helper
def _sgd_block(p, g, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * typed(g[i], p)


@helper
def _momentum_block(p, v, g, lr, mu):
    for i in range(p.shape[0]):
        v[i] = mu * v[i] - lr * typed(g[i], p)
        p[i] += v[i]


@helper
def _adagrad_block(p, h, g, lr, eps):
    for i in range(p.shape[0]):
        gi = typed(g[i], p)
        h[i] += gi * gi
        p[i] -= lr * gi / (np.sqrt(h[i]) + eps)


@helper
def _adam_block(p, m, v, g, lr_t, beta1, beta2, eps):
    one = typed(1, p)
    for i in range(p.shape[0]):
        gi = typed(g[i], p)
        m[i] += (one - beta1) * (gi - m[i])
        v[i] += (one - beta2) * (gi * gi - v[i])
        p[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)


@helper
def _nesterov_block(p, v, g, lr, mu, mu2, step):
    for i in range(p.shape[0]):
        gi = typed(g[i], p)
        vi = v[i]
        p[i] = (p[i] + mu2 * vi) - step * gi
        v[i] = mu * vi - lr * gi


@helper
def _rmsprop_block(p, h, g, lr, decay, keep, eps):
    for i in range(p.shape[0]):
        gi = typed(g[i], p)
        hi = h[i] * decay + keep * gi * gi
        h[i] = hi
        p[i] -= lr * gi / (np.sqrt(hi) + eps)


@twins(MEMORY_BOUND_MIN)
def sgd(p, g, lr):
    """p -= lr * g"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _sgd_block(p[lo:hi], g[lo:hi], lr)


@twins(MEMORY_BOUND_MIN)
def momentum(p, v, g, lr, mu):
    """v = mu * v - lr * g; p += v"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _momentum_block(p[lo:hi], v[lo:hi], g[lo:hi], lr, mu)


@twins(MEMORY_BOUND_MIN)
def adagrad(p, h, g, lr, eps):
    """h += g * g; p -= lr * g / (sqrt(h) + eps)"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _adagrad_block(p[lo:hi], h[lo:hi], g[lo:hi], lr, eps)


@twins(MEMORY_BOUND_MIN)
def adam(p, m, v, g, lr_t, beta1, beta2, eps):
    """m += (1 - beta1) * (g - m); v += (1 - beta2) * (g * g - v); p -= lr_t * m / (sqrt(v) + eps)"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _adam_block(p[lo:hi], m[lo:hi], v[lo:hi], g[lo:hi], lr_t, beta1, beta2, eps)


@twins(MEMORY_BOUND_MIN)
def nesterov(p, v, g, lr, mu, mu2, step):
    """p = (p + mu2 * v) - step * g with the velocity as it was, then v = mu * v - lr * g; ``mu2`` =
    mu * mu and ``step`` = (1 + mu) * lr (the classic code's current Nesterov update)"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _nesterov_block(p[lo:hi], v[lo:hi], g[lo:hi], lr, mu, mu2, step)


@twins(MEMORY_BOUND_MIN)
def rmsprop(p, h, g, lr, decay, keep, eps):
    """h = h * decay + keep * g * g (``keep`` = 1 - decay); p -= lr * g / (sqrt(h) + eps)"""
    n = p.shape[0]
    for blk in prange(nblocks(n)):
        lo, hi = bounds(blk, n)
        _rmsprop_block(p[lo:hi], h[lo:hi], g[lo:hi], lr, decay, keep, eps)


# --------------------------------------------------------------------------------------------
# grouped updates: GROUP parameters per call, for the many small arrays of a net (one call instead
# of one per array; docs/PERFORMANCE.md, "Per-layer calls of the book's nets"). Contract: each
# argument but the scalars is a tuple of GROUP 1-D C-contiguous arrays of one float dtype; the k-th
# arrays of the tuples have one length (zero-length arrays pad a group); scalars of that dtype.
# --------------------------------------------------------------------------------------------
#: Arrays per grouped call: a fixed width, so that one compiled variant per dtype serves every net.
GROUP = 4


@twins(MEMORY_BOUND_MIN)
def sgd_group(ps, gs, lr):
    """sgd on each (ps[k], gs[k])"""
    for k in prange(GROUP):
        _sgd_block(ps[k], gs[k], lr)


@twins(MEMORY_BOUND_MIN)
def momentum_group(ps, vs, gs, lr, mu):
    """momentum on each (ps[k], vs[k], gs[k])"""
    for k in prange(GROUP):
        _momentum_block(ps[k], vs[k], gs[k], lr, mu)


@twins(MEMORY_BOUND_MIN)
def adagrad_group(ps, hs, gs, lr, eps):
    """adagrad on each (ps[k], hs[k], gs[k])"""
    for k in prange(GROUP):
        _adagrad_block(ps[k], hs[k], gs[k], lr, eps)


@twins(MEMORY_BOUND_MIN)
def adam_group(ps, ms, vs, gs, lr_t, beta1, beta2, eps):
    """adam on each (ps[k], ms[k], vs[k], gs[k])"""
    for k in prange(GROUP):
        _adam_block(ps[k], ms[k], vs[k], gs[k], lr_t, beta1, beta2, eps)


@twins(MEMORY_BOUND_MIN)
def nesterov_group(ps, vs, gs, lr, mu, mu2, step):
    """nesterov on each (ps[k], vs[k], gs[k])"""
    for k in prange(GROUP):
        _nesterov_block(ps[k], vs[k], gs[k], lr, mu, mu2, step)


@twins(MEMORY_BOUND_MIN)
def rmsprop_group(ps, hs, gs, lr, decay, keep, eps):
    """rmsprop on each (ps[k], hs[k], gs[k])"""
    for k in prange(GROUP):
        _rmsprop_block(ps[k], hs[k], gs[k], lr, decay, keep, eps)
