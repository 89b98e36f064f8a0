"""Batch normalization kernels over (N, D) arrays: per-feature (column) statistics.

The statistics are computed in row chunks of :data:`ROWS` rows, each chunk's partial results
(float64) written to scratch ``part0``/``part1`` of shape (ceil(N / ROWS), D), then combined chunk by
chunk in order: every pass reads rows as they lie in memory (contiguous), and the order of the
additions depends on N alone, so results do not depend on the thread count. The training forward
takes each chunk's mean and the sum of squared deviations from it (two passes over a chunk, which
is in the cache), combined with Chan et al.'s pairwise formula; the backward takes the column sums
of ``dout`` and ``dout * xn``.

Contract: ``x``, ``out``, ``xn``, ``dout``, ``dx`` (N, D) C-contiguous of one float dtype;
``gamma``, ``beta``, ``std`` and the running statistics (D,) of that dtype; ``mean``, ``var`` (D,)
float64; ``part0``, ``part1`` (ceil(N / ROWS), D) float64 scratch; scalars of the data's dtype.
N >= 1. No output may be an input.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba import twins, typed

#: Memory-bound passes: parallel from this many elements.
MEMORY_BOUND_MIN = 1 << 18
#: Rows per chunk of the statistics.
ROWS = 16
#: Columns per block when chunks are combined.
COL_BLOCK = 256


def chunks(n: int) -> int:
    """How many row chunks cover ``n`` rows."""
    return (n + ROWS - 1) // ROWS


@twins(MEMORY_BOUND_MIN)
def batchnorm_train(x, gamma, beta, momentum, eps, rm, rv, out, xn, mean, var, std, rm_new, rv_new, part0, part1, coef):
    """Training-mode batch normalization of each column of ``x``:

    mean = the column mean, var = the mean of (x - mean)**2 (biased), std = sqrt(var + eps),
    xn = (x - mean) * (1 / std), out = gamma * xn + beta, rm_new = momentum * rm + (1 - momentum) *
    mean and likewise rv_new from var (``mean`` and ``var`` cast to the data's dtype where they meet
    it). ``coef`` (2, D), of the data's dtype, is scratch: the mean and 1 / std."""
    n, d = x.shape
    one = typed(1, x)
    nch = (n + ROWS - 1) // ROWS
    for c in prange(nch):  # each chunk: its mean and its sum of squared deviations
        r0 = c * ROWS
        r1 = min(n, r0 + ROWS)
        pm = part0[c]
        pq = part1[c]
        for j in range(d):
            pm[j] = 0.0
            pq[j] = 0.0
        for i in range(r0, r1):
            row = x[i]
            for j in range(d):
                pm[j] += row[j]
        inv = 1.0 / (r1 - r0)
        for j in range(d):
            pm[j] *= inv
        for i in range(r0, r1):
            row = x[i]
            for j in range(d):
                dev = row[j] - pm[j]
                pq[j] += dev * dev
    for blk in prange((d + COL_BLOCK - 1) // COL_BLOCK):  # the chunks combined in order
        j0 = blk * COL_BLOCK
        j1 = min(d, j0 + COL_BLOCK)
        m = mean[j0:j1]
        q = var[j0:j1]
        first0 = part0[0, j0:j1]
        first1 = part1[0, j0:j1]
        for j in range(j1 - j0):
            m[j] = first0[j]
            q[j] = first1[j]
        count = float(min(n, ROWS))
        for c in range(1, nch):
            size = float(min(n, (c + 1) * ROWS) - c * ROWS)
            total = count + size
            pm = part0[c, j0:j1]
            pq = part1[c, j0:j1]
            for j in range(j1 - j0):
                delta = pm[j] - m[j]
                m[j] += delta * (size / total)
                q[j] += pq[j] + delta * delta * (count * size / total)
            count = total
        s = std[j0:j1]
        a = rm[j0:j1]
        b = rv[j0:j1]
        new_m = rm_new[j0:j1]
        new_v = rv_new[j0:j1]
        mus = coef[0, j0:j1]
        invs = coef[1, j0:j1]
        for j in range(j1 - j0):
            q[j] /= n
            v = typed(q[j], x)
            mu = typed(m[j], x)
            s[j] = np.sqrt(v + eps)
            mus[j] = mu
            invs[j] = one / s[j]
            new_m[j] = momentum * a[j] + (one - momentum) * mu
            new_v[j] = momentum * b[j] + (one - momentum) * v
    mus = coef[0]
    invs = coef[1]
    for i in prange(n):  # the output, row by row
        row = x[i]
        nrow = xn[i]
        orow = out[i]
        for j in range(d):
            z = (row[j] - mus[j]) * invs[j]
            nrow[j] = z
            orow[j] = gamma[j] * z + beta[j]


@twins(MEMORY_BOUND_MIN)
def batchnorm_test(x, gamma, beta, rm, std, out):
    """Test-mode batch normalization with the running statistics: out = gamma * (x - rm) / std + beta,
    ``std`` = sqrt(running variance + eps) computed by the caller."""
    n, d = x.shape
    for i in prange(n):
        row = x[i]
        orow = out[i]
        for j in range(d):
            orow[j] = gamma[j] * ((row[j] - rm[j]) / std[j]) + beta[j]


@twins(MEMORY_BOUND_MIN)
def batchnorm_backward(dout, xn, gamma, std, dgamma, dbeta, dx, part0, part1, coef):
    """The gradient of training-mode batch normalization, in closed form: dbeta = the column sums of
    dout, dgamma = those of dout * xn (per row chunk, then the chunks in order), then
    dx = (gamma / std) * (dout - dbeta / N - xn * dgamma / N). ``coef`` (3, D), of the data's dtype,
    is scratch: gamma / std, dbeta / N, dgamma / N."""
    n, d = dout.shape
    nch = (n + ROWS - 1) // ROWS
    for c in prange(nch):
        p0 = part0[c]
        p1 = part1[c]
        for j in range(d):
            p0[j] = 0.0
            p1[j] = 0.0
        for i in range(c * ROWS, min(n, (c + 1) * ROWS)):
            drow = dout[i]
            nrow = xn[i]
            for j in range(d):
                p0[j] += drow[j]
                p1[j] += drow[j] * nrow[j]
    for blk in prange((d + COL_BLOCK - 1) // COL_BLOCK):
        j0 = blk * COL_BLOCK
        j1 = min(d, j0 + COL_BLOCK)
        a = part0[0, j0:j1]
        b = part1[0, j0:j1]
        for c in range(1, nch):
            pa = part0[c, j0:j1]
            pb = part1[c, j0:j1]
            for j in range(j1 - j0):
                a[j] += pa[j]
                b[j] += pb[j]
        db = dbeta[j0:j1]
        dg = dgamma[j0:j1]
        scale = coef[0, j0:j1]
        shift = coef[1, j0:j1]
        slope = coef[2, j0:j1]
        g = gamma[j0:j1]
        s = std[j0:j1]
        for j in range(j1 - j0):
            db[j] = typed(a[j], dout)
            dg[j] = typed(b[j], dout)
            scale[j] = g[j] / s[j]
            shift[j] = typed(a[j] / n, dout)
            slope[j] = typed(b[j] / n, dout)
    scale = coef[0]
    shift = coef[1]
    slope = coef[2]
    for i in prange(n):
        drow = dout[i]
        nrow = xn[i]
        orow = dx[i]
        for j in range(d):
            orow[j] = scale[j] * (drow[j] - shift[j] - nrow[j] * slope[j])
