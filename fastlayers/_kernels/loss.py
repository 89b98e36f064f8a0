"""Row-wise kernels: softmax, the softmax cross-entropy loss and its gradient, and the
cross-entropy of given probabilities.

Contract: ``x``, ``y``, ``out`` and one-hot/probability targets are (N, C) arrays of one float
dtype; integer labels ``t`` are (N,) int64 already checked to lie in [0, C) (nothing here checks:
Numba does not bounds-check); ``losses`` is (N,) of the float dtype and receives one loss per row; the
loss kernels return their sum (float64), which the caller divides by N. ``out`` may be ``y`` itself
(exact aliasing); no other overlap between outputs and inputs is allowed.
With ``with_grad`` true, the loss kernels also write the gradient for ``dout = 1`` into ``grad``
(N, C) in the same pass, with ``scale`` = 1 / N of the dtype, bit-identical to what the
``xent_grad_*`` kernels compute from ``y``; with it false, ``grad`` is neither read nor written (any
array of the dtype will do). The outer ``prange`` runs over rows; the additions
inside a row are always done in the same order, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._math import exp_nonpos
from ._numba import helper, row_max, row_sum, twins, typed

# From how many elements the parallel twin runs (measured: docs/PERFORMANCE.md): the exp-heavy row
# kernels pay for threads early; the gradient kernels are memory-bound passes like ReLU's.
ROWS_WITH_EXP_MIN = 1 << 13
MEMORY_BOUND_MIN = 1 << 18


@helper
def _exp_shifted_row(xr, yr):
    """yr = exp(xr - max(xr)) for one row; returns (max, sum of the exps).

    NaN anywhere in the row makes the sum NaN, and so the whole row of the result and its loss,
    whatever the max; a +inf gives inf - inf = NaN the same way, as in the reference.
    """
    c = xr.shape[0]
    m = row_max(xr)
    for j in range(c):
        yr[j] = exp_nonpos(xr[j] - m)
    return m, row_sum(yr)


@helper
def _total(losses):
    """Sum of the per-row losses, in row order, accumulated in float64 (deterministic, and more
    accurate in float32 than NumPy's pairwise float32 mean)."""
    acc = 0.0
    for i in range(losses.shape[0]):
        acc += np.float64(losses[i])
    return acc


@helper
def copy_label_bounds(t, out):
    """out[:] = t (an int64 copy of non-empty integer labels) and (min, max) of the copy, in one
    pass; its NumPy twin is ``out[:] = t; (out.min(), out.max())``."""
    lo = np.int64(t[0])
    hi = lo
    for i in range(t.shape[0]):
        v = np.int64(t[i])
        out[i] = v
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


@helper
def labels_equal(a, b):
    """True when the integer label arrays ``a`` and ``b`` (1-D, same length) hold the same values."""
    for i in range(a.shape[0]):
        if a[i] != b[i]:
            return False
    return True


@helper
def _scale_row(yr, r):
    for j in range(yr.shape[0]):
        yr[j] *= r


@twins(ROWS_WITH_EXP_MIN)
def softmax(x, y):
    """y = softmax(x) along each row (max subtracted first)."""
    n = x.shape[0]
    one = typed(1, x)
    for i in prange(n):
        m, s = _exp_shifted_row(x[i], y[i])
        _scale_row(y[i], one / s)


@helper
def _scale_row_with_grad(yr, r, gr, scale):
    """yr *= r, and gr = yr * scale (the label gradient before its one correction)."""
    for j in range(yr.shape[0]):
        v = yr[j] * r
        yr[j] = v
        gr[j] = v * scale


@twins(ROWS_WITH_EXP_MIN)
def softmax_xent_labels(x, t, y, losses, with_grad, grad, scale):
    """y = softmax(x); losses[i] = logsumexp(x[i]) - x[i, t[i]]; returns the sum of the losses.
    With ``with_grad``: grad = (y - onehot(t)) * scale, as ``xent_grad_labels``."""
    n = x.shape[0]
    one = typed(1, x)
    for i in prange(n):
        m, s = _exp_shifted_row(x[i], y[i])
        if with_grad:
            _scale_row_with_grad(y[i], one / s, grad[i], scale)
            grad[i, t[i]] = (y[i, t[i]] - one) * scale
        else:
            _scale_row(y[i], one / s)
        losses[i] = (np.log(s) + m) - x[i, t[i]]
    return _total(losses)


@helper
def _probs_row(xr, tr, yr, m, r, gr, scale, with_grad):
    """yr = exp(xr - m) * r (the softmax, ``r`` being 1 / the sum of the exps); with ``with_grad``
    also gr = (yr - tr) * scale, as ``xent_grad_probs``."""
    for j in range(xr.shape[0]):
        yr[j] = exp_nonpos(xr[j] - m)
    if with_grad:
        for j in range(xr.shape[0]):
            v = yr[j] * r
            yr[j] = v
            gr[j] = (v - tr[j]) * scale
    else:
        _scale_row(yr, r)


@twins(ROWS_WITH_EXP_MIN)
def softmax_xent_probs(x, t, y, losses, with_grad, grad, scale):
    """y = softmax(x); losses[i] = sum_j t[i, j] * (logsumexp(x[i]) - x[i, j]); returns their sum.
    With ``with_grad``: grad = (y - t) * scale, as ``xent_grad_probs``."""
    n = x.shape[0]
    one = typed(1, x)
    for i in prange(n):
        xr, tr, yr = x[i], t[i], y[i]
        m, s = _exp_shifted_row(xr, yr)
        lse = np.log(s) + m
        # sum_j t_j * (lse - x_j), written into yr first so that row_sum can add it; then the softmax
        for j in range(xr.shape[0]):
            yr[j] = tr[j] * (lse - xr[j])
        losses[i] = row_sum(yr)
        _probs_row(xr, tr, yr, m, one / s, grad[i] if with_grad else yr, scale, with_grad)
    return _total(losses)


@twins(MEMORY_BOUND_MIN)
def xent_grad_labels(y, t, scale, out):
    """out = (y - onehot(t)) * scale, with ``scale`` = dout / N of y's dtype."""
    n, c = y.shape
    for i in prange(n):
        yr, orow = y[i], out[i]
        k = t[i]
        yk = yr[k]  # read before the row is written: ``out`` may be ``y`` itself
        for j in range(c):
            orow[j] = yr[j] * scale
        orow[k] = (yk - typed(1, y)) * scale


@twins(MEMORY_BOUND_MIN)
def xent_grad_probs(y, t, scale, out):
    """out = (y - t) * scale, with ``scale`` = dout / N of y's dtype."""
    n, c = y.shape
    for i in prange(n):
        yr, tr, orow = y[i], t[i], out[i]
        for j in range(c):
            orow[j] = (yr[j] - tr[j]) * scale


@twins(ROWS_WITH_EXP_MIN)
def cross_entropy_labels(y, t, losses):
    """losses[i] = -log(y[i, t[i]]) for probabilities ``y``; returns the sum of the losses."""
    n = y.shape[0]
    for i in prange(n):
        losses[i] = -np.log(y[i, t[i]])
    return _total(losses)


@twins(ROWS_WITH_EXP_MIN)
def cross_entropy_probs(y, t, losses):
    """losses[i] = -sum over t[i, j] != 0 of t[i, j] * log(y[i, j]) (0 * log 0 counts as 0); returns
    the sum of the losses."""
    n, c = y.shape
    zero = typed(0, y)
    for i in prange(n):
        acc = zero
        for j in range(c):
            tj = t[i, j]
            if tj != zero:
                acc -= tj * np.log(y[i, j])
        losses[i] = acc
    return _total(losses)
