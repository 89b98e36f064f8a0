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


def adagrad(p: np.ndarray, h: np.ndarray, g: np.ndarray, lr, eps) -> None:
    h += g * g
    p -= lr * g / (np.sqrt(h) + eps)


def adam(p: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr_t, beta1, beta2, eps) -> None:
    m += (1 - beta1) * (g - m)
    v += (1 - beta2) * (g * g - v)
    p -= lr_t * m / (np.sqrt(v) + eps)
