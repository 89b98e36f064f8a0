"""Whole-net kernels for small fully connected nets: a stack of Affine layers with ReLU or Sigmoid
between them, run forward (``net_forward``), forward with the softmax cross-entropy on integer
labels (``net_loss``), or forward, loss and backward (``net_gradient``) in one call.

They serve the nets' plans (:mod:`fastlayers.nets._plan`) where a net's products are small enough
that a loop here beats a BLAS call and its Python around it (a served request, the main job's
step); larger products go through BLAS (:mod:`fastlayers._gemm`).

Contract, for L layers of widths D0, ..., DL and a batch of N rows, all arrays of one float dtype and
C-contiguous:

- ``ins``: a tuple of L arrays, ``ins[l]`` (N, Dl): the net's input (``ins[0]``) and the hidden
  activations; ``outs``: a tuple of L arrays, ``outs[l]`` (N, D(l+1)); ``outs[l]`` is ``ins[l+1]``;
- ``Ws``: L arrays (Dl, D(l+1)); ``bs``: L arrays (D(l+1),); ``acts``: int64 (L,), the activation
  after each layer: ``NONE``, ``RELU`` or ``SIGMOID`` (the last layer's is ``NONE``);
- ``t``: (N,) integer labels, read once each into a local and checked to lie in [0, DL) before any
  use; a kernel that finds one outside returns -1.0 before writing anything;
- ``y``: (N, DL), the softmax; ``losses``: (N,); ``grads``: a tuple of L arrays, ``grads[l]``
  (N, D(l+1)), the gradient with respect to ``outs[l]`` before the activation (it holds the
  gradient with respect to the activation's output first, then is overwritten in place);
  ``dins``: a tuple of L arrays (N, Dl), ``dins[l]`` the gradient with respect to ``ins[l]``
  (``dins[0]`` is not written: nobody uses the net's input gradient); ``dWs``, ``dbs``: shaped like
  ``Ws`` and ``bs``; ``scale``: 1 / N in the dtype.

No output overlaps an input, except ``grads[l]`` and ``dins[l + 1]``, which may be one array.
The operations are the layer-by-layer path's (:mod:`fastlayers.layers.core`), in the same order,
except the additions inside each matrix product, whose order differs from BLAS's: the bias add
and activation, the softmax and loss, the activation gradient and the bias gradient (rows added in
order 0..N-1) are bit-identical to it for the same products.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba import DENSE_ROWS, DENSE_VECTORS, dense_tile, helper, twins, typed
from .affine import COL_BLOCK, _relu_row, _sigmoid_row
from .loss import _exp_shifted_row, _scale_row_with_grad, _total

NONE, RELU, SIGMOID = 0, 1, 2
#: From how many multiply-adds (a pass's products) the parallel twins run. The plans use these
#: kernels only below :data:`fastlayers.nets._plan.SMALL_MACS`, where one thread is faster.
PARALLEL_MACS = 1 << 22


@helper
def _rows_times(a, b, c, i0, rows):
    """c[i0:i0+rows] = a[i0:i0+rows] @ b: a (N, K), b (K, M), c (N, M); each element a sum over k
    in order (``dense_tile``)."""
    k = a.shape[1]
    m = b.shape[1]
    cols = DENSE_VECTORS * (64 // c.itemsize)
    for j0 in range(0, m, cols):
        dense_tile(a, i0 * k, k, 1, b, j0, m, k, c, i0 * m + j0, m, rows, min(cols, m - j0))


@helper
def _rows_times_tn(a, b, c, r0, rows):
    """c[r0:r0+rows] = a[:, r0:r0+rows].T @ b: a (N, K), b (N, M), c (K, M); each element a sum
    over the N rows in order."""
    n, k = a.shape
    m = b.shape[1]
    cols = DENSE_VECTORS * (64 // c.itemsize)
    for j0 in range(0, m, cols):
        dense_tile(a, r0, 1, k, b, j0, m, n, c, r0 * m + j0, m, rows, min(cols, m - j0))


@helper
def _transpose_row(a, out, j):
    """out[j] = a[:, j]."""
    row = out[j]
    for i in range(a.shape[0]):
        row[i] = a[i, j]


@helper
def _bias_row(row, b):
    for j in range(row.shape[0]):
        row[j] += b[j]


@helper
def _blocks(n):
    return (n + DENSE_ROWS - 1) // DENSE_ROWS


@helper
def _forward_block(ins, Ws, bs, acts, outs, layer, blk):
    """Rows ``blk * DENSE_ROWS`` on of layer ``layer``: outs = act(ins @ W + b), the product, then
    the bias add and activation row by row (as ``bias_relu``, ``bias_sigmoid``, ``bias_add``)."""
    src, dst, b, act = ins[layer], outs[layer], bs[layer], acts[layer]
    i0 = blk * DENSE_ROWS
    rows = min(DENSE_ROWS, src.shape[0] - i0)
    _rows_times(src, Ws[layer], dst, i0, rows)
    for i in range(i0, i0 + rows):
        if act == 1:
            _relu_row(dst[i], b)
        elif act == 2:
            _sigmoid_row(dst[i], b)
        else:
            _bias_row(dst[i], b)


@helper
def _labels_ok(t, c):
    for i in range(t.shape[0]):
        v = np.int64(t[i])
        if v < 0 or v >= c:
            return False
    return True


@helper
def _softmax_row(scores, t, y, losses, with_grad, grad, scale, i):
    """Row i: y = softmax(scores), its loss, and with ``with_grad`` the gradient
    (y - onehot(t)) * scale, as ``softmax_xent_labels``."""
    one = typed(1, scores)
    k = np.int64(t[i])  # read once: checked against the row's length before any row is done
    m, s = _exp_shifted_row(scores[i], y[i])
    if with_grad:
        _scale_row_with_grad(y[i], one / s, grad[i], scale)
        grad[i, k] = (y[i, k] - one) * scale
    else:
        yr = y[i]
        for j in range(yr.shape[0]):
            yr[j] *= one / s
    losses[i] = (np.log(s) + m) - scores[i, k]


@helper
def _grad_bias_cols(dz, y, act, db, j0, j1):
    """Columns j0..j1: dz = act'(y) * dz in place (``act`` 0: unchanged) and db = dz summed over
    rows in order, as ``relu_grad_bias``, ``sigmoid_grad_bias`` and (``act`` 0) ``bias_grad``."""
    n = dz.shape[0]
    zero = typed(0, dz)
    one = typed(1, dz)
    acc = db[j0:j1]  # slices indexed from 0: no wraparound checks, so the j loops vectorize
    w = j1 - j0
    if act == 0:
        first = dz[0, j0:j1]
        for j in range(w):
            acc[j] = first[j]
        for i in range(1, n):
            d = dz[i, j0:j1]
            for j in range(w):
                acc[j] += d[j]
        return
    for j in range(w):
        acc[j] = zero
    for i in range(n):
        d, yr = dz[i, j0:j1], y[i, j0:j1]
        if act == 1:
            for j in range(w):
                v = zero if yr[j] <= zero else d[j]
                d[j] = v
                acc[j] += v
        else:
            for j in range(w):
                s = yr[j]
                v = d[j] * (one - s) * s
                d[j] = v
                acc[j] += v


@twins(PARALLEL_MACS)
def net_forward(ins, Ws, bs, acts, outs):
    """outs[l] = act_l(ins[l] @ Ws[l] + bs[l]) for every layer in order; row blocks in parallel."""
    for layer in range(len(Ws)):
        for blk in prange(_blocks(ins[0].shape[0])):
            _forward_block(ins, Ws, bs, acts, outs, layer, blk)


@twins(PARALLEL_MACS)
def net_loss(ins, Ws, bs, acts, outs, t, y, losses):
    """The forward pass, then y = softmax(outs[-1]) and the per-row cross-entropy against the
    labels ``t``; returns the sum of the losses (float64, rows in order), or -1.0 (nothing
    written) when a label lies outside [0, DL)."""
    scores = outs[len(outs) - 1]
    if t.shape[0] != scores.shape[0] or not _labels_ok(t, scores.shape[1]):
        return -1.0
    for layer in range(len(Ws)):
        for blk in prange(_blocks(ins[0].shape[0])):
            _forward_block(ins, Ws, bs, acts, outs, layer, blk)
    for i in prange(scores.shape[0]):
        _softmax_row(scores, t, y, losses, False, y, typed(1, y), i)
    return _total(losses)


@twins(PARALLEL_MACS)
def net_gradient(ins, Ws, bs, acts, outs, t, y, losses, grads, dins, dWs, dbs, WTs, scale):
    """The forward pass and the loss (as ``net_loss``, whose return value this returns), then the
    backward pass: ``grads``, ``dins[1:]``, ``dWs``, ``dbs`` as the contract says, and ``WTs[l]``
    (l >= 1, scratch of (D(l+1), Dl)) = ``Ws[l].T``."""
    last = len(Ws) - 1
    scores = outs[last]
    if t.shape[0] != scores.shape[0] or not _labels_ok(t, scores.shape[1]):
        return -1.0
    for layer in range(len(Ws)):
        for blk in prange(_blocks(ins[0].shape[0])):
            _forward_block(ins, Ws, bs, acts, outs, layer, blk)
    for i in prange(scores.shape[0]):
        _softmax_row(scores, t, y, losses, True, grads[last], scale, i)
    for layer in range(last, -1, -1):
        dz = grads[layer]
        act = 0 if layer == last else acts[layer]
        for blk in prange((dz.shape[1] + COL_BLOCK - 1) // COL_BLOCK):
            j0 = blk * COL_BLOCK
            _grad_bias_cols(dz, outs[layer], act, dbs[layer], j0, min(dz.shape[1], j0 + COL_BLOCK))
        for blk in prange(_blocks(ins[layer].shape[1])):
            r0 = blk * DENSE_ROWS
            _rows_times_tn(ins[layer], dz, dWs[layer], r0, min(DENSE_ROWS, ins[layer].shape[1] - r0))
        if layer > 0:
            W, WT = Ws[layer], WTs[layer]
            for j in prange(W.shape[1]):
                _transpose_row(W, WT, j)
            for blk in prange(_blocks(dz.shape[0])):
                i0 = blk * DENSE_ROWS
                _rows_times(dz, WT, dins[layer], i0, min(DENSE_ROWS, dz.shape[0] - i0))
    return _total(losses)


# --------------------------------------------------------------------------------------------
# single products, for fastlayers._gemm's "tiles" library (the products of the layers' own calls)
# --------------------------------------------------------------------------------------------
@twins(PARALLEL_MACS)
def matmul(a, b, c):
    """c = a @ b: a (N, K), b (K, M), c (N, M), C-contiguous, one dtype; each element the sum over
    k in order of FMAs; blocks of rows in parallel."""
    for blk in prange(_blocks(a.shape[0])):
        i0 = blk * DENSE_ROWS
        _rows_times(a, b, c, i0, min(DENSE_ROWS, a.shape[0] - i0))


@twins(PARALLEL_MACS)
def matmul_tn(a, b, c):
    """c = a.T @ b: a (N, K), b (N, M), c (K, M), C-contiguous, one dtype; each element the sum
    over the N rows in order of FMAs; blocks of c's rows in parallel."""
    for blk in prange(_blocks(a.shape[1])):
        r0 = blk * DENSE_ROWS
        _rows_times_tn(a, b, c, r0, min(DENSE_ROWS, a.shape[1] - r0))


@twins(PARALLEL_MACS)
def transpose(a, out):
    """out = a.T: a (R, C), out (C, R), C-contiguous, one dtype."""
    for j in prange(a.shape[1]):
        _transpose_row(a, out, j)
