"""The NumPy reference path: short, obviously right, and the oracle of every test.

Each function here is the twin of a compiled kernel path in :mod:`fastlayers.functional` and is
what the ``"numpy"`` backend runs. Inputs are already validated and converted (2-D where noted, one
float dtype, labels as int64 in range); outputs are new arrays of the input dtype. Written for
clarity, never for speed.
"""

from __future__ import annotations

import numpy as np


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0), with NaN kept (NaN <= 0 is false)."""
    return np.where(x <= 0, np.zeros_like(x), x)


def relu_backward(dout: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dout where the forward output ``y`` is > 0 (or NaN), else 0."""
    return np.where(y <= 0, np.zeros_like(dout), dout)


def sigmoid_forward(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) written with exp(-|x|) so that nothing overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dout: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dout * (1 - y) * y, with ``y`` the forward output."""
    return dout * (1 - y) * y


def affine_forward(x2: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x2 @ W + b for a 2-D ``x2``."""
    return x2 @ W + b


def affine_backward(dout: np.ndarray, x2: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx2, dW, db) = (dout @ W.T, x2.T @ dout, dout summed over rows)."""
    return dout @ W.T, x2.T @ dout, dout.sum(axis=0)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a 2-D ``x``, max subtracted."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of a 2-D ``x``: x - logsumexp(x)."""
    m = x.max(axis=1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m)


def softmax_cross_entropy_forward(x: np.ndarray, t: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """(mean loss, softmax(x)); ``t`` is int64 labels (N,) or target rows shaped like ``x``."""
    logp = log_softmax(x)
    if t.ndim == 1:
        losses = -logp[np.arange(x.shape[0]), t]
    else:
        losses = -(t * logp).sum(axis=1)
    return _mean(losses), softmax(x)


def _mean(losses: np.ndarray) -> np.floating:
    """The mean of per-row losses, summed in float64 (a float32 sum of losses near 3e38 overflows)."""
    return losses.dtype.type(losses.sum(dtype=np.float64) / losses.shape[0])


def softmax_cross_entropy_backward(y: np.ndarray, t: np.ndarray, dout) -> np.ndarray:
    """dout * (y - t) / N, with labels ``t`` turned into one-hot rows."""
    n = y.shape[0]
    if t.ndim == 1:
        onehot = np.zeros_like(y)
        onehot[np.arange(n), t] = 1
        t = onehot
    return dout * (y - t) / n


def cross_entropy_error(y: np.ndarray, t: np.ndarray) -> np.floating:
    """Mean cross-entropy of probabilities ``y`` (2-D) against labels or target rows (0 log 0 = 0)."""
    with np.errstate(divide="ignore"):  # y == 0 at the target gives an infinite loss, not a warning
        if t.ndim == 1:
            return _mean(-np.log(y[np.arange(y.shape[0]), t]))
        logy = np.log(np.where(t != 0, y, 1))  # terms with t == 0 contribute nothing
        return _mean(-(t * logy).sum(axis=1))


# optimizer updates: in place on ``p`` and the state arrays, as the classic optimizers do
def sgd(p: np.ndarray, g: np.ndarray, lr) -> None:
    p -= lr * g


def momentum(p: np.ndarray, v: np.ndarray, g: np.ndarray, lr, mu) -> None:
    v[...] = mu * v - lr * g
    p += v


def nesterov(p: np.ndarray, v: np.ndarray, g: np.ndarray, lr, mu, mu2, step) -> None:
    p += mu2 * v  # the parameters move with the velocity as it was, then the velocity is updated
    p -= step * g
    v *= mu
    v -= lr * g


def rmsprop(p: np.ndarray, h: np.ndarray, g: np.ndarray, lr, decay, keep, eps) -> None:
    h *= decay
    h += keep * g * g
    p -= lr * g / (np.sqrt(h) + eps)


def adagrad(p: np.ndarray, h: np.ndarray, g: np.ndarray, lr, eps) -> None:
    h += g * g
    p -= lr * g / (np.sqrt(h) + eps)


def adam(p: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr_t, beta1, beta2, eps) -> None:
    m += (1 - beta1) * (g - m)
    v += (1 - beta2) * (g * g - v)
    p -= lr_t * m / (np.sqrt(v) + eps)


# convolution and max pooling on NCHW arrays, through the column matrix of the classic code:
# rows (n, oh, ow), columns (c, ky, kx)
def conv_output_size(size: int, filter_size: int, stride: int, pad: int) -> int:
    """Output positions along one axis: ``(size + 2 * pad - filter_size) // stride + 1``."""
    return (size + 2 * pad - filter_size) // stride + 1


def im2col(x: np.ndarray, fh: int, fw: int, stride: int, pad: int, fill=0) -> np.ndarray:
    """The column matrix (N*OH*OW, C*fh*fw) of a 4-D ``x``, padded with ``fill``."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, fh, stride, pad), conv_output_size(w, fw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    col = np.empty((n, oh, ow, c, fh, fw), x.dtype)
    for ky in range(fh):
        for kx in range(fw):
            window = xp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
            col[..., ky, kx] = window.transpose(0, 2, 3, 1)
    return col.reshape(n * oh * ow, c * fh * fw)


def col2im(col: np.ndarray, shape: tuple, fh: int, fw: int, stride: int, pad: int) -> np.ndarray:
    """The adjoint of :func:`im2col`: each column value added back where it came from; shape ``shape``."""
    n, c, h, w = shape
    oh, ow = conv_output_size(h, fh, stride, pad), conv_output_size(w, fw, stride, pad)
    cols = col.reshape(n, oh, ow, c, fh, fw)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), col.dtype)
    for ky in range(fh):
        for kx in range(fw):
            xp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride] += cols[..., ky, kx].transpose(
                0, 3, 1, 2
            )
    return xp[:, :, pad : pad + h, pad : pad + w].copy()


def conv_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """The convolution (cross-correlation) of ``x`` (N, C, H, W) with ``W`` (FN, C, FH, FW), plus ``b``."""
    fn, _, fh, fw = W.shape
    n, _, h, w = x.shape
    oh, ow = conv_output_size(h, fh, stride, pad), conv_output_size(w, fw, stride, pad)
    out = im2col(x, fh, fw, stride, pad) @ W.reshape(fn, -1).T + b
    return np.ascontiguousarray(out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2))


def conv_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, stride: int, pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dW, db) of :func:`conv_forward` for the upstream gradient ``dout`` (N, FN, OH, OW)."""
    fn, _, fh, fw = W.shape
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
    col = im2col(x, fh, fw, stride, pad)
    dW = (col.T @ d2).T.reshape(W.shape)
    dx = col2im(d2 @ W.reshape(fn, -1), x.shape, fh, fw, stride, pad)
    return dx, dW, d2.sum(axis=0)


def maxpool_forward(x: np.ndarray, ph: int, pw: int, stride: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(out, arg): the maximum of each window (N, C, OH, OW), padded positions never counting, and
    its window-local index ``ky * pw + kx`` (the first maximum; NaN wins, as in ``np.argmax``)."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, ph, stride, pad), conv_output_size(w, pw, stride, pad)
    col = im2col(x, ph, pw, stride, pad).reshape(-1, ph * pw)  # rows (n, oh, ow, c)
    valid = im2col(np.ones((1, 1, h, w), bool), ph, pw, stride, pad).reshape(1, oh * ow, ph * pw)
    valid = np.broadcast_to(valid[:, :, None, :], (n, oh * ow, c, ph * pw)).reshape(-1, ph * pw)
    with np.errstate(invalid="ignore"):
        best = np.max(np.where(valid, col, -np.inf), axis=1)
        nan = np.isnan(best)
        is_best = valid & np.where(nan[:, None], np.isnan(col), col == best[:, None])
    arg = np.argmax(is_best, axis=1)
    as_nchw = lambda a: np.ascontiguousarray(a.reshape(n, oh, ow, c).transpose(0, 3, 1, 2))  # noqa: E731
    return as_nchw(best.astype(x.dtype)), as_nchw(arg)


def maxpool_backward(dout: np.ndarray, arg: np.ndarray, shape: tuple, ph: int, pw: int, stride: int, pad: int):
    """The gradient of :func:`maxpool_forward`: each ``dout`` value added at its window's maximum."""
    n, c, oh, ow = dout.shape
    dmax = np.zeros((n * oh * ow * c, ph * pw), dout.dtype)
    dmax[np.arange(dmax.shape[0]), arg.transpose(0, 2, 3, 1).reshape(-1)] = dout.transpose(0, 2, 3, 1).reshape(-1)
    return col2im(dmax.reshape(n * oh * ow, -1), shape, ph, pw, stride, pad)


# dropout: Philox4x32-10 (Random123's constants), the generator of fastlayers._kernels.dropout
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))
_LOW32 = np.uint64(0xFFFFFFFF)


def philox4x32(counters: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """Philox4x32-10 of the counters ``(g mod 2**32, g // 2**32, 0, 0)`` for each ``g`` of
    ``counters`` under the key ``(k0, k1)``: a (len, 4) uint32 array."""
    g = np.asarray(counters, np.uint64)
    c0, c1 = g & _LOW32, g >> np.uint64(32)
    c2 = c3 = np.zeros_like(g)
    key0, key1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0, p1 = _PHILOX_M[0] * c0, _PHILOX_M[1] * c2  # 32 x 32 bits: no overflow in 64
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ key0, p1 & _LOW32, (p0 >> np.uint64(32)) ^ c3 ^ key1, p0 & _LOW32
        key0, key1 = (key0 + _PHILOX_W[0]) & _LOW32, (key1 + _PHILOX_W[1]) & _LOW32
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def dropout_draws(n: int, k0: int, k1: int) -> np.ndarray:
    """The ``n`` 32-bit draws of one dropout call: draw ``i`` is word ``i % 4`` of counter ``i // 4``."""
    return philox4x32(np.arange((n + 3) // 4), k0, k1).reshape(-1)[:n]


def dropout_forward(x: np.ndarray, k0: int, k1: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """(x * mask, mask) with ``mask`` = draws > ``threshold``, shaped like ``x``."""
    mask = (dropout_draws(x.size, k0, k1) > threshold).reshape(x.shape)
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as the kernel gives it, without a warning
        return x * mask, mask


# batch normalization over the columns of a 2-D array: the classic formulas
BATCHNORM_EPS = 10e-7  # the classic code's epsilon: 1e-6


def batchnorm_train(x: np.ndarray, gamma, beta, momentum, rm, rv) -> tuple[np.ndarray, ...]:
    """(out, xn, std, running_mean, running_var) of training-mode batch normalization of ``x`` (N, D)."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + x.dtype.type(BATCHNORM_EPS))
    xn = xc / std
    return gamma * xn + beta, xn, std, momentum * rm + (1 - momentum) * mu, momentum * rv + (1 - momentum) * var


def batchnorm_test(x: np.ndarray, gamma, beta, rm, rv) -> np.ndarray:
    """Test-mode batch normalization of ``x`` (N, D) with the running statistics."""
    return gamma * ((x - rm) / np.sqrt(rv + x.dtype.type(BATCHNORM_EPS))) + beta


def batchnorm_backward(dout: np.ndarray, xn: np.ndarray, gamma, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta) of training-mode batch normalization, in closed form."""
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xn).sum(axis=0)
    return (gamma / std) * (dout - dbeta / n - xn * (dgamma / n)), dgamma, dbeta


# whole-net passes of a small dense net (the kernels of fastlayers._kernels.dense), written with the
# functions above: ``ins``, ``outs`` ... as in that module's contract
_NET_ACTIVATIONS = {1: (relu_forward, relu_backward), 2: (sigmoid_forward, sigmoid_backward)}


_NET_BAD_LABEL, _NET_BAD_LAYOUT = -1.0, -2.0


def _net_fits(a: np.ndarray, *shape: int) -> bool:
    return a.shape == shape and a.flags.c_contiguous and a.flags.aligned


def _net_forward_fits(x, Ws, bs, outs) -> bool:
    n = x.shape[0]
    ins = (x, *outs[:-1])
    return n > 0 and all(
        _net_fits(ins[layer], n, W.shape[0])
        and _net_fits(W, *W.shape)
        and _net_fits(bs[layer], W.shape[1])
        and _net_fits(outs[layer], n, W.shape[1])
        for layer, W in enumerate(Ws)
    )


def _net_loss_fits(x, Ws, bs, outs, t, y, losses) -> bool:
    n, c = x.shape[0], Ws[-1].shape[1]
    return _net_forward_fits(x, Ws, bs, outs) and _net_fits(t, n) and _net_fits(y, n, c) and _net_fits(losses, n)


def net_forward(x: np.ndarray, Ws: tuple, bs: tuple, acts: np.ndarray, outs: tuple) -> float:
    """outs[l] = act_l(input_l @ Ws[l] + bs[l]) for every layer in order (input_0 is x, then
    outs[l - 1]); 0.0, or -2.0 (nothing written) for an array of another shape, layout or alignment
    than the contract's (:mod:`fastlayers._kernels.dense`)."""
    if not _net_forward_fits(x, Ws, bs, outs):
        return _NET_BAD_LAYOUT
    for layer, W in enumerate(Ws):
        z = (x if layer == 0 else outs[layer - 1]) @ W + bs[layer]
        act = _NET_ACTIVATIONS.get(int(acts[layer]))
        outs[layer][...] = z if act is None else act[0](z)
    return 0.0


def _net_labels_ok(t: np.ndarray, scores: np.ndarray) -> bool:
    return bool(np.all((t >= 0) & (t < scores.shape[1])))


def net_loss(x, Ws, bs, acts, outs, t, y, losses) -> float:
    """The forward pass, y = softmax(scores) and the per-row losses; their float64 sum, or (nothing
    written) -2.0 for an array as ``net_forward`` says, -1.0 for a label outside the classes."""
    if not _net_loss_fits(x, Ws, bs, outs, t, y, losses):
        return _NET_BAD_LAYOUT
    if not _net_labels_ok(t, outs[-1]):
        return _NET_BAD_LABEL
    net_forward(x, Ws, bs, acts, outs)
    scores = outs[-1]
    y[...] = softmax(scores)
    losses[...] = -log_softmax(scores)[np.arange(t.shape[0]), t]
    return float(np.sum(losses, dtype=np.float64))


def net_gradient(x, Ws, bs, acts, outs, t, y, losses, grads, dWs, dbs, WTs, scale) -> float:
    """``net_loss``, then the backward pass into ``grads``, ``dWs``, ``dbs`` (``grads[l - 1]`` ends
    holding the gradient with respect to layer l's input, before the activation's gradient turns it
    into layer l - 1's) and ``WTs[l] = Ws[l].T`` for l >= 1, the kernel's scratch."""
    n = x.shape[0]
    for layer, (d, m) in enumerate(W.shape for W in Ws):
        fits = _net_fits(grads[layer], n, m) and _net_fits(dWs[layer], d, m) and _net_fits(dbs[layer], m)
        if not fits or (layer > 0 and not _net_fits(WTs[layer], m, d)):
            return _NET_BAD_LAYOUT
    total = net_loss(x, Ws, bs, acts, outs, t, y, losses)
    if total < 0:
        return total
    last = len(Ws) - 1
    onehot = np.zeros_like(y)
    onehot[np.arange(t.shape[0]), t] = 1
    grads[last][...] = (y - onehot) * scale
    for layer in range(last, -1, -1):
        dz = grads[layer]
        if layer < last:  # dz holds the gradient with respect to the activation's output
            dz[...] = _NET_ACTIVATIONS[int(acts[layer])][1](dz.copy(), outs[layer])
        dbs[layer][...] = dz.sum(axis=0)
        dWs[layer][...] = (x if layer == 0 else outs[layer - 1]).T @ dz
        if layer > 0:
            WTs[layer][...] = Ws[layer].T
            grads[layer - 1][...] = dz @ Ws[layer].T
    return total


def matmul(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """c = a @ b."""
    c[...] = a @ b


def matmul_tn(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """c = a.T @ b."""
    c[...] = a.T @ b


def matmul_nt(a: np.ndarray, b: np.ndarray, c: np.ndarray, panels: np.ndarray) -> None:
    """c = a @ b.T; ``panels[t]`` left holding the last column panel of b.T that task t packs (the
    kernel's scratch: panels t, t + T, ... of width ``panels.shape[2]``, zero-padded)."""
    c[...] = a @ b.T
    tasks, cols = panels.shape[0], panels.shape[2]
    npan = -(-b.shape[0] // cols)
    for t in range(min(tasks, npan)):
        j0 = (t + (npan - 1 - t) // tasks * tasks) * cols
        w = min(cols, b.shape[0] - j0)
        panels[t] = 0
        panels[t, :, :w] = b[j0 : j0 + w].T


# grouped optimizer updates (the kernels' ``*_group``): the update of each array of a group in turn
def _each(update, arrays: tuple, scalars: tuple) -> None:
    for group in zip(*arrays, strict=True):
        update(*group, *scalars)


def sgd_group(ps, gs, lr) -> None:
    _each(sgd, (ps, gs), (lr,))


def momentum_group(ps, vs, gs, lr, mu) -> None:
    _each(momentum, (ps, vs, gs), (lr, mu))


def nesterov_group(ps, vs, gs, lr, mu, mu2, step) -> None:
    _each(nesterov, (ps, vs, gs), (lr, mu, mu2, step))


def rmsprop_group(ps, hs, gs, lr, decay, keep, eps) -> None:
    _each(rmsprop, (ps, hs, gs), (lr, decay, keep, eps))


def adagrad_group(ps, hs, gs, lr, eps) -> None:
    _each(adagrad, (ps, hs, gs), (lr, eps))


def adam_group(ps, ms, vs, gs, lr_t, beta1, beta2, eps) -> None:
    _each(adam, (ps, ms, vs, gs), (lr_t, beta1, beta2, eps))
