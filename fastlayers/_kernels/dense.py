"""Whole-net kernels for small fully connected nets: a stack of Affine layers with ReLU or Sigmoid
between them, run forward (``net_forward``), forward with the softmax cross-entropy on integer
labels (``net_loss``), or forward, loss and backward (``net_gradient``) in one call.

They serve the nets' plans (:mod:`fastlayers.nets._plan`) where a net's products are small enough
that a loop here beats a BLAS call and its Python around it (a served request, the main job's
step); larger products go through BLAS (:mod:`fastlayers._gemm`).

Contract, for L layers of widths D0, ..., DL and a batch of N rows, all arrays of one float dtype and
C-contiguous:

- ``x`` (N, D0): the net's input; ``outs``: a tuple of L arrays, ``outs[l]`` (N, D(l+1)), the
  output of layer l after its activation and the input of layer l + 1;
- ``Ws``: L arrays (Dl, D(l+1)); ``bs``: L arrays (D(l+1),); ``acts``: int64 (L,), the activation
  after each layer: ``NONE``, ``RELU`` or ``SIGMOID`` (the last layer's is ``NONE``);
- ``t``: (N,) integer labels, checked to lie in [0, DL) before any row is done; a kernel that
  finds one outside returns :data:`BAD_LABEL` before writing anything (each row reads its label
  again, clamped to [0, DL): labels sharing memory with an output cannot index past a row);
- ``y``: (N, DL), the softmax; ``losses``: (N,); ``grads``: a tuple of L arrays, ``grads[l]``
  (N, D(l+1)), the gradient with respect to ``outs[l]`` before the activation (it holds the
  gradient with respect to the activation's output first, then is overwritten in place);
  ``grads[l - 1]`` then receives the gradient with respect to layer l's input (none is computed
  for ``x``: nobody uses the net's input gradient); ``dWs``, ``dbs``: shaped like
  ``Ws`` and ``bs``; ``scale``: 1 / N in the dtype.

No output overlaps an input. Each kernel checks, before it writes anything, that N >= 1 and that
every array it reads or writes has the shape the contract gives it from ``Ws``' shapes and ``x``'s rows,
C-contiguous strides (NumPy's rule: an axis of length 1 may have any stride) and an address aligned
to its items (the unused ``WTs[0]`` excepted), and returns :data:`BAD_LAYOUT` when one does not:
the plans check only each array's type, dtype and number of dimensions in Python (which the
conversion of the arguments relies on), and leave the rest to this check, which costs the kernel a
few comparisons.
The operations are the layer-by-layer path's (:mod:`fastlayers.layers.core`), in the same order,
except the additions inside each matrix product, whose order differs from BLAS's: the bias add
and activation, the softmax and loss, the activation gradient and the bias gradient (rows added in
order 0..N-1) are bit-identical to it for the same products.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._math import exp_nonpos
from ._numba import (
    ACCUMULATORS,
    DENSE_ROWS,
    DENSE_TILE_VECTORS,
    DENSE_VECTORS,
    VECTOR_BYTES,
    dense_tile,
    helper,
    twins,
    typed,
)
from .affine import COL_BLOCK
from .loss import _exp_shifted_row, _scale_row_with_grad, _total

NONE, RELU, SIGMOID = 0, 1, 2
#: What a kernel returns, having written nothing, for a label outside the classes and for an array
#: whose shape, strides or alignment the contract does not allow.
BAD_LABEL, BAD_LAYOUT = -1.0, -2.0
#: From how many multiply-adds (a pass's products) the parallel twins run. The plans use these
#: kernels only below :data:`fastlayers.nets._plan.SMALL_MACS`, where one thread is faster.
PARALLEL_MACS = 1 << 22
#: Bytes of one row of :func:`matmul_nt`'s panels: the register tile's columns.
PANEL_BYTES = DENSE_VECTORS * VECTOR_BYTES


@helper
def _rows_times(a, b, c, i0, rows):
    """c[i0:i0+rows] = a[i0:i0+rows] @ b: a (N, K), b (K, M), c (N, M); each element a sum over k
    in order (``dense_tile``)."""
    k = a.shape[1]
    m = b.shape[1]
    cols = DENSE_TILE_VECTORS[rows] * (VECTOR_BYTES // c.itemsize)
    for j0 in range(0, m, cols):
        dense_tile(a, i0 * k, k, 1, b, j0, m, k, c, i0 * m + j0, m, rows, min(cols, m - j0))


@helper
def _rows_times_tn(a, b, c, r0, rows):
    """c[r0:r0+rows] = a[:, r0:r0+rows].T @ b: a (N, K), b (N, M), c (K, M); each element a sum
    over the N rows in order."""
    n, k = a.shape
    m = b.shape[1]
    cols = DENSE_TILE_VECTORS[rows] * (VECTOR_BYTES // c.itemsize)
    for j0 in range(0, m, cols):
        dense_tile(a, r0, 1, k, b, j0, m, n, c, r0 * m + j0, m, rows, min(cols, m - j0))


@helper
def _transpose_row(a, out, j):
    """out[j] = a[:, j]."""
    row = out[j]
    for i in range(a.shape[0]):
        row[i] = a[i, j]


@helper
def _blocks(n):
    return (n + DENSE_ROWS - 1) // DENSE_ROWS


@helper
def _forward_block(src, W, b, act, dst, blk):
    """Rows ``blk * DENSE_ROWS`` on of one layer: dst = act(src @ W + b), the product, then the
    bias add and activation row by row (as ``bias_relu``, ``bias_sigmoid``, ``bias_add``).

    The kernels take each layer's arrays from their tuples once per layer, outside the loop over
    row blocks: an item of a tuple at a loop index is a switch over the tuple's items, which cost
    more per row block than the block's bias and activation (docs/PERFORMANCE.md, "Plans")."""
    i0 = blk * DENSE_ROWS
    rows = min(DENSE_ROWS, src.shape[0] - i0)
    _rows_times(src, W, dst, i0, rows)
    _bias_act_rows(dst, b, act, i0, i0 + rows)


@helper
def _bias_act_rows(dst, b, act, i0, i1):
    """Rows i0..i1 of dst: dst = act(dst + b), ``act`` 1 ReLU, 2 sigmoid, 0 the bias add alone;
    element for element the operations of the affine kernels' ``_relu_row`` and ``_sigmoid_row``.
    Indexed in two dimensions: a row view costs Numba a reference count update (docs/PERFORMANCE.md,
    "Plans")."""
    m = dst.shape[1]
    zero = typed(0, dst)
    one = typed(1, dst)
    for i in range(i0, i1):
        if act == 1:
            for j in range(m):
                v = dst[i, j] + b[j]
                dst[i, j] = zero if v <= zero else v
        elif act == 2:
            for j in range(m):
                v = dst[i, j] + b[j]
                e = exp_nonpos(-abs(v))
                dst[i, j] = (one if v >= zero else e) / (one + e)
        else:
            for j in range(m):
                dst[i, j] += b[j]


# The layout checks combine their comparisons with ``&`` and test the result once, after the loop:
# a return inside the loop over the layers' tuples kept Numba's reference counts of every array taken
# from them (each an atomic update), which cost more than the checks themselves (docs/PERFORMANCE.md,
# "Which checks run where").
@helper(inline=True)
def _fits(a, rows, cols):
    """``a`` is (rows, cols), C-contiguous and aligned to its items."""
    s = a.itemsize
    return (
        (a.shape[0] == rows)
        & (a.shape[1] == cols)
        & ((cols <= 1) | (a.strides[1] == s))
        & ((rows <= 1) | (a.strides[0] == cols * s))
        & (a.ctypes.data % s == 0)
    )


@helper(inline=True)
def _fits_vector(a, n):
    """``a`` is (n,), contiguous and aligned to its items."""
    s = a.itemsize
    return (a.shape[0] == n) & ((n <= 1) | (a.strides[0] == s)) & (a.ctypes.data % s == 0)


@helper(inline=True)
def _forward_fits(x, Ws, bs, outs):
    """Every array of the forward pass is as the contract says (the module's docstring)."""
    n = x.shape[0]
    ok = n > 0
    for layer in range(len(Ws)):
        src, W, b, dst = _input(x, outs, layer), Ws[layer], bs[layer], outs[layer]
        d, m = W.shape
        ok &= _fits(src, n, d) & _fits(W, d, m) & _fits_vector(b, m) & _fits(dst, n, m)
    return ok


@helper(inline=True)
def _loss_fits(x, Ws, bs, outs, t, y, losses):
    """As :func:`_forward_fits`, and the labels, softmax and losses."""
    n = x.shape[0]
    c = Ws[len(Ws) - 1].shape[1]
    return _forward_fits(x, Ws, bs, outs) & _fits_vector(t, n) & _fits(y, n, c) & _fits_vector(losses, n)


@helper(inline=True)
def _backward_fits(x, Ws, grads, dWs, dbs, WTs):
    """The backward pass's arrays are as the contract says (``WTs[0]`` unused)."""
    n = x.shape[0]
    ok = True
    for layer in range(len(Ws)):
        d, m = Ws[layer].shape
        g, dW, db, WT = grads[layer], dWs[layer], dbs[layer], WTs[layer]
        ok &= _fits(g, n, m) & _fits(dW, d, m) & _fits_vector(db, m)
        ok &= (layer == 0) | _fits(WT, m, d)
    return ok


@helper(inline=True)
def _input(x, outs, layer):
    """Layer ``layer``'s input: ``x`` or the previous layer's output."""
    return x if layer == 0 else outs[layer - 1]


@helper
def _labels_ok(t, c):
    for i in range(t.shape[0]):
        v = np.int64(t[i])
        if v < 0 or v >= c:
            return False
    return True


@helper
def _softmax_rows(scores, t, y, losses, with_grad, grad, scale, i0, i1):
    """Rows i0..i1: y = softmax(scores), each row's loss, and with ``with_grad`` the gradient
    (y - onehot(t)) * scale, as ``softmax_xent_labels`` (the same operations, so the same bits)."""
    one = typed(1, scores)
    c = scores.shape[1]
    if c >= (64 // scores.itemsize) * ACCUMULATORS:
        for i in range(i0, i1):
            m, s = _exp_shifted_row(scores[i], y[i])
            if with_grad:
                _scale_row_with_grad(y[i], one / s, grad[i], scale)
            else:
                yr = y[i]
                for j in range(c):
                    yr[j] *= one / s
            _row_loss(scores, t, y, losses, with_grad, grad, scale, i, m, s)
        return
    # Rows shorter than one round of the lane reductions (row_max, row_sum): their max and sum are
    # those reductions' results taken in order, here in two dimensions (no row views); the exps of
    # all the rows go in one flat pass, which vectorizes where a short row's loop would not.
    for i in range(i0, i1):
        m = scores[i, 0]
        for j in range(c):
            v = scores[i, j]
            m = v if v > m else m
        for j in range(c):
            y[i, j] = scores[i, j] - m
        losses[i] = m  # until the row's loss replaces it
    flat = y.reshape(y.shape[0] * c)[i0 * c : i1 * c]
    for q in range(flat.shape[0]):
        flat[q] = exp_nonpos(flat[q])
    for i in range(i0, i1):
        s = typed(0, scores)
        for j in range(c):
            s += y[i, j]
        r = one / s
        if with_grad:
            for j in range(c):
                v = y[i, j] * r
                y[i, j] = v
                grad[i, j] = v * scale
        else:
            for j in range(c):
                y[i, j] *= r
        _row_loss(scores, t, y, losses, with_grad, grad, scale, i, losses[i], s)


@helper
def _row_loss(scores, t, y, losses, with_grad, grad, scale, i, m, s):
    """Row i's loss from its max ``m`` and sum of exps ``s``, and its label's gradient entry."""
    # Read again: checked against the row's length before any row was done, but labels that share
    # memory with an output (which the plans never pass) could have changed since; clamped, so that
    # such labels give wrong values, never an index past the row.
    k = min(max(np.int64(t[i]), 0), scores.shape[1] - 1)
    if with_grad:
        grad[i, k] = (y[i, k] - typed(1, y)) * scale
    losses[i] = (np.log(s) + m) - scores[i, k]


#: Rows per block of the softmax pass in the parallel twins.
SOFTMAX_ROWS = 64


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
def net_forward(x, Ws, bs, acts, outs):
    """outs[l] = act_l(input_l @ Ws[l] + bs[l]) for every layer in order (input_0 = x, then
    outs[l - 1]); row blocks in parallel. Returns 0.0, or :data:`BAD_LAYOUT` (nothing written)."""
    if not _forward_fits(x, Ws, bs, outs):
        return BAD_LAYOUT
    for layer in range(len(Ws)):
        src, W, b, act, dst = _input(x, outs, layer), Ws[layer], bs[layer], acts[layer], outs[layer]
        for blk in prange(_blocks(src.shape[0])):
            _forward_block(src, W, b, act, dst, blk)
    return 0.0


@twins(PARALLEL_MACS)
def net_loss(x, Ws, bs, acts, outs, t, y, losses):
    """The forward pass, then y = softmax(outs[-1]) and the per-row cross-entropy against the
    labels ``t``; returns the sum of the losses (float64, rows in order), or (nothing written)
    :data:`BAD_LAYOUT` or :data:`BAD_LABEL`."""
    if not _loss_fits(x, Ws, bs, outs, t, y, losses):
        return BAD_LAYOUT
    scores = outs[len(outs) - 1]
    if not _labels_ok(t, scores.shape[1]):
        return BAD_LABEL
    for layer in range(len(Ws)):
        src, W, b, act, dst = _input(x, outs, layer), Ws[layer], bs[layer], acts[layer], outs[layer]
        for blk in prange(_blocks(src.shape[0])):
            _forward_block(src, W, b, act, dst, blk)
    n = scores.shape[0]
    for blk in prange((n + SOFTMAX_ROWS - 1) // SOFTMAX_ROWS):
        i0 = blk * SOFTMAX_ROWS
        _softmax_rows(scores, t, y, losses, False, y, typed(1, y), i0, min(n, i0 + SOFTMAX_ROWS))
    return _total(losses)


@twins(PARALLEL_MACS)
def net_gradient(x, Ws, bs, acts, outs, t, y, losses, grads, dWs, dbs, WTs, scale):
    """The forward pass and the loss (as ``net_loss``, whose return value this returns), then the
    backward pass: ``grads``, ``dWs``, ``dbs`` as the contract says, and ``WTs[l]``
    (l >= 1, scratch of (D(l+1), Dl)) = ``Ws[l].T``."""
    if not (_loss_fits(x, Ws, bs, outs, t, y, losses) & _backward_fits(x, Ws, grads, dWs, dbs, WTs)):
        return BAD_LAYOUT
    last = len(Ws) - 1
    scores = outs[last]
    if not _labels_ok(t, scores.shape[1]):
        return BAD_LABEL
    for layer in range(len(Ws)):
        src, W, b, act, dst = _input(x, outs, layer), Ws[layer], bs[layer], acts[layer], outs[layer]
        for blk in prange(_blocks(src.shape[0])):
            _forward_block(src, W, b, act, dst, blk)
    dz = grads[last]
    n = scores.shape[0]
    for blk in prange((n + SOFTMAX_ROWS - 1) // SOFTMAX_ROWS):
        i0 = blk * SOFTMAX_ROWS
        _softmax_rows(scores, t, y, losses, True, dz, scale, i0, min(n, i0 + SOFTMAX_ROWS))
    for layer in range(last, -1, -1):
        dz, h, db, src, dW = grads[layer], outs[layer], dbs[layer], _input(x, outs, layer), dWs[layer]
        act = 0 if layer == last else acts[layer]
        for blk in prange((dz.shape[1] + COL_BLOCK - 1) // COL_BLOCK):
            j0 = blk * COL_BLOCK
            _grad_bias_cols(dz, h, act, db, j0, min(dz.shape[1], j0 + COL_BLOCK))
        for blk in prange(_blocks(src.shape[1])):
            r0 = blk * DENSE_ROWS
            _rows_times_tn(src, dz, dW, r0, min(DENSE_ROWS, src.shape[1] - r0))
        if layer > 0:
            W, WT, din = Ws[layer], WTs[layer], grads[layer - 1]
            for j in prange(W.shape[1]):
                _transpose_row(W, WT, j)
            for blk in prange(_blocks(dz.shape[0])):
                i0 = blk * DENSE_ROWS
                _rows_times(dz, WT, din, i0, min(DENSE_ROWS, dz.shape[0] - i0))
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


@helper
def _pack_panel(b, panel, j0, w):
    """panel[k, j] = b[j0 + j, k] for j < ``w``, 0 in the panel's other columns: columns j0... of
    b.T, as the register tile reads its right operand (rows of contiguous columns)."""
    k = b.shape[1]
    cols = panel.shape[1]
    zero = typed(0, panel)
    for j in range(w):
        row = b[j0 + j]
        for kk in range(k):
            panel[kk, j] = row[kk]
    for kk in range(k):
        for j in range(w, cols):
            panel[kk, j] = zero


@twins(PARALLEL_MACS)
def matmul_nt(a, b, c, panels):
    """c = a @ b.T: a (N, K), b (M, K), c (N, M), C-contiguous, one dtype; each element the sum over
    k in order of FMAs (bit for bit :func:`matmul` of ``a`` and a copy of ``b.T``), without that
    copy. ``panels``: (T >= 1, K, PANEL_BYTES // itemsize) scratch: task t packs c's column panels
    t, t + T, ... of ``b.T`` into ``panels[t]`` in turn, each then multiplied by every row block of
    ``a``; the tasks run in parallel. ``panels[t]`` is left holding task t's last panel."""
    n, k = a.shape
    m = b.shape[0]
    tasks, cols = panels.shape[0], panels.shape[2]
    npan = (m + cols - 1) // cols
    for t in prange(tasks):
        panel = panels[t]
        for p in range(t, npan, tasks):
            j0 = p * cols
            w = min(cols, m - j0)
            _pack_panel(b, panel, j0, w)
            for i0 in range(0, n, DENSE_ROWS):
                dense_tile(a, i0 * k, k, 1, panel, 0, cols, k, c, i0 * m + j0, m, min(DENSE_ROWS, n - i0), w)
