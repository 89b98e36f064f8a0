"""Row-wise kernels: softmax, the softmax cross-entropy loss and its gradient, and the
cross-entropy of given probabilities.

Contract: ``x``, ``y``, ``out`` and one-hot/probability targets are (N, C) arrays of one float
dtype; integer labels ``t`` are (N,) int64 already checked to lie in [0, C) (nothing here checks:
Numba does not bounds-check); ``losses`` is (N,) of the float dtype and receives one loss per row,
which the caller averages. ``out`` may alias ``y``. The outer ``prange`` runs over rows; the additions
inside a row are always done in the same order, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twins
from ._math import exp_nonpos, typed


@helper
def _exp_shifted_row(x, i, y):
    """y[i, :] = exp(x[i, :] - max(x[i, :])); returns (max, sum of the exps). NaN-propagating."""
    c = x.shape[1]
    m = x[i, 0]
    for j in range(1, c):
        v = x[i, j]
        if v > m or v != v:
            m = v
    for j in range(c):
        y[i, j] = exp_nonpos(x[i, j] - m)
    s = typed(0, x)
    for j in range(c):
        s += y[i, j]
    return m, s


@twins
def softmax(x, y):
    """y = softmax(x) along each row (max subtracted first)."""
    n, c = x.shape
    one = typed(1, x)
    for i in prange(n):
        m, s = _exp_shifted_row(x, i, y)
        r = one / s
        for j in range(c):
            y[i, j] *= r


@twins
def softmax_xent_labels(x, t, y, losses):
    """y = softmax(x); losses[i] = logsumexp(x[i]) - x[i, t[i]]."""
    n, c = x.shape
    one = typed(1, x)
    for i in prange(n):
        m, s = _exp_shifted_row(x, i, y)
        r = one / s
        for j in range(c):
            y[i, j] *= r
        losses[i] = (np.log(s) + m) - x[i, t[i]]


@twins
def softmax_xent_probs(x, t, y, losses):
    """y = softmax(x); losses[i] = sum_j t[i, j] * (logsumexp(x[i]) - x[i, j])."""
    n, c = x.shape
    one = typed(1, x)
    for i in prange(n):
        m, s = _exp_shifted_row(x, i, y)
        r = one / s
        for j in range(c):
            y[i, j] *= r
        lse = np.log(s) + m
        acc = typed(0, x)
        for j in range(c):
            acc += t[i, j] * (lse - x[i, j])
        losses[i] = acc


@twins
def xent_grad_labels(y, t, scale, out):
    """out = (y - onehot(t)) * scale, with ``scale`` = dout / N of y's dtype."""
    n, c = y.shape
    for i in prange(n):
        for j in range(c):
            out[i, j] = y[i, j] * scale
        out[i, t[i]] = (y[i, t[i]] - typed(1, y)) * scale


@twins
def xent_grad_probs(y, t, scale, out):
    """out = (y - t) * scale, with ``scale`` = dout / N of y's dtype."""
    n, c = y.shape
    for i in prange(n):
        for j in range(c):
            out[i, j] = (y[i, j] - t[i, j]) * scale


@twins
def cross_entropy_labels(y, t, losses):
    """losses[i] = -log(y[i, t[i]]) for probabilities ``y``."""
    n = y.shape[0]
    for i in prange(n):
        losses[i] = -np.log(y[i, t[i]])


@twins
def cross_entropy_probs(y, t, losses):
    """losses[i] = -sum over t[i, j] != 0 of t[i, j] * log(y[i, j]) (0 * log 0 counts as 0)."""
    n, c = y.shape
    zero = typed(0, y)
    for i in prange(n):
        acc = zero
        for j in range(c):
            tj = t[i, j]
            if tj != zero:
                acc -= tj * np.log(y[i, j])
        losses[i] = acc
