"""Softmax, the softmax cross-entropy loss and its gradient, and the cross-entropy of probabilities:
the checked functions in front of :mod:`fastlayers._kernels.loss`, and the steps the
``SoftmaxWithLoss`` layer calls (:func:`xent_forward`, :func:`xent_backward`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .. import reference
from .._kernels import lazy
from .._kernels._threads import launch
from ._checks import (
    as_array,
    as_arrays,
    check_out,
    compute_dtype,
    convert,
    fast_dtype,
    finish,
    numpy_backend,
    overlaps,
    require_scores,
    scalar,
)

_loss = lazy("loss")  # imported (with Numba) at the first kernel call


def _targets(t, x: np.ndarray, name: str = "t", dtype: np.dtype | None = None) -> np.ndarray:
    """Validated targets for a 2-D (N, C) ``x``: int64 labels (N,) in [0, C), or target rows of x's
    shape as a C-contiguous array of ``dtype`` (default: x's dtype).

    Labels may be of any integer dtype, in either byte order, and may also come as an (N, 1) column
    (the classic code's fancy indexing accepts it); an integer array of x's own shape counts as rows,
    as in the classic ``t.size == y.size``.
    Labels always come back as a private copy whose range was checked on that copy: the kernels
    index with them, and the caller's array may change meanwhile (another thread, a data loader).
    """
    n, c = x.shape
    if type(t) is np.ndarray and t.dtype == np.int64 and t.shape == (n,) and n:
        return _labels_in_range(t, c, name)  # the common case: int64 labels
    t = as_array(t, name, real=False)
    if t.shape == x.shape:
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{name} has dtype {t.dtype}; target rows must be real numbers")
        return np.ascontiguousarray(t, dtype=x.dtype if dtype is None else dtype)
    if t.ndim == 2 and t.shape == (n, 1) and t.dtype.kind in "iu":
        t = t.reshape(n)
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be labels of shape ({n},) or one-hot rows of shape {x.shape}, got shape {t.shape}"
        )
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{name} has dtype {t.dtype}; labels must be integers (or pass one-hot rows of shape {x.shape})"
        )
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} labels but x has {n} rows")
    if n == 0:
        return t.astype(np.int64)
    return _labels_in_range(t, c, name)


def _labels_in_range(t: np.ndarray, c: int, name: str) -> np.ndarray:
    """A private int64 copy of the non-empty 1-D integer labels ``t`` (any integer dtype, either byte
    order), checked to lie in [0, c); the range is checked on the copy.

    Raises
    ------
    ValueError
        A label outside [0, c), naming ``name`` and the caller's min and max.
    """
    if not t.dtype.isnative:  # the compiled copy takes native arrays only
        t = t.astype(t.dtype.newbyteorder("="))
    labels = np.empty(t.shape[0], np.int64)  # a copy even when t is int64 already
    if numpy_backend():  # the reference path loads no kernel
        labels[...] = t
        lo, hi = labels.min(), labels.max()
    else:
        lo, hi = _loss.copy_label_bounds(t, labels)  # one compiled pass: copy, min and max
    if lo < 0 or hi >= c:
        if t.dtype.kind == "u":  # uint64 above 2**63 wrapped in the copy: report the caller's values
            lo, hi = int(t.min()), int(t.max())
        _check_label_range(int(lo), int(hi), c, name)
    return labels


def _check_label_range(lo: int, hi: int, c: int, name: str) -> None:
    if lo < 0 or hi >= c:
        raise ValueError(f"{name} holds labels outside [0, {c}): min {lo}, max {hi}")


def _scores(x, name: str = "x") -> np.ndarray:
    """``x`` as a 2-D (N, C) float array of its own float dtype, N >= 1 and C >= 1."""
    if fast_dtype(x) is None:
        _, (x,) = as_arrays(**{name: x})
    require_scores(x, name)
    return x


def softmax(x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax of a 1-D vector, or of each row of a 2-D array (max subtracted first).

    Parameters
    ----------
    x : array_like, shape (C,) or (N, C)
    out : ndarray, optional
        Buffer of the result's shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray of ``x``'s shape, in ``x``'s float dtype.

    Raises
    ------
    ValueError
        For 0-d, 3-D or higher, or empty input.
    """
    _, (x,) = as_arrays(x=x)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D (C,) or 2-D (N, C), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x is empty (shape {x.shape})")
    if out is not None:
        check_out(out, x.shape, x.dtype)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if numpy_backend():
        return finish(reference.softmax(x2).reshape(x.shape), out)
    usable = out is not None and out.flags.c_contiguous and not overlaps(out, x)
    target = out if usable else np.empty(x.shape, x.dtype)
    launch(_loss.softmax, x2.size, x2, target.reshape(x2.shape))
    return finish(target, out)


def softmax_cross_entropy_forward(
    x: ArrayLike, t: ArrayLike, out: np.ndarray | None = None
) -> tuple[np.floating, np.ndarray]:
    """Softmax followed by the mean cross-entropy, in one pass, computed as log-sum-exp.

    Parameters
    ----------
    x : array_like, shape (N, C)
        Scores (logits).
    t : array_like
        Integer labels of shape (N,) (or an (N, 1) column) in ``[0, C)``, or target rows (one-hot
        or probabilities) of shape (N, C).
    out : ndarray, shape (N, C), optional
        Buffer for ``y``, of ``x``'s float dtype; may share memory with ``x`` or ``t``.

    Returns
    -------
    (loss, y) : the mean loss as a NumPy scalar, and ``softmax(x)``, both in ``x``'s float dtype
        (as the classic ``cross_entropy_error(softmax(x), t)``, whatever the dtype of ``t``).

    Raises
    ------
    ValueError
        Wrong shapes, an empty batch, labels out of range.
    TypeError
        Float or bool labels, unsupported dtypes.
    """
    result = xent_forward(x, t, out)
    return result.loss, result.y


@functools.lru_cache(maxsize=64)
def _mean_scale(dtype: np.dtype, dout: np.floating, n: int) -> np.floating:
    """``dout / n`` in ``dtype`` (``dout`` a scalar of that dtype): the factor of the loss gradient,
    computed one way for the forward pass's gradient and for backward (so the two agree bit for bit),
    and cached (NumPy scalar arithmetic is slow next to the kernels)."""
    return dtype.type(dout / dtype.type(n))


@functools.lru_cache(maxsize=64)
def _unit_scale(dtype: np.dtype, n: int) -> np.floating:
    """``_mean_scale`` for ``dout = 1``, cached on the dtype and the batch size alone."""
    return _mean_scale(dtype, dtype.type(1), n)


class XentForward(NamedTuple):
    """What :func:`xent_forward` computes."""

    loss: np.floating
    #: softmax of the scores
    y: np.ndarray
    #: the validated targets: a private int64 copy of the labels, or rows of the scores' dtype
    targets: np.ndarray
    #: ``(y - onehot(t)) / N``, the gradient for ``dout = 1``, when ``with_grad`` asked for it on
    #: the numba backend; None otherwise
    grad: np.ndarray | None


def xent_forward(
    x,
    t,
    out: np.ndarray | None = None,
    *,
    with_grad: bool = False,
    grad_out: np.ndarray | None = None,
    y_out: np.ndarray | None = None,
) -> XentForward:
    """:func:`softmax_cross_entropy_forward`, plus the validated targets and, with ``with_grad`` on
    the numba backend, the gradient for ``dout = 1``, computed in the same pass over each row.

    ``grad_out`` and ``y_out`` (used for ``y`` when ``out`` is None) are buffers from
    :func:`~._checks.reusable`: nothing else references them, so they overlap no input. Each is used
    when its shape and dtype fit the scores and ignored otherwise.
    """
    x = _scores(x)
    t = _targets(t, x)
    if out is not None:
        check_out(out, x.shape, x.dtype)
    if numpy_backend():
        loss, y = reference.softmax_cross_entropy_forward(x, t)
        return XentForward(loss, finish(y, out), t, None)
    if out is None:
        y = y_out if y_out is not None and _fits(y_out, x) else np.empty(x.shape, x.dtype)
    elif np.may_share_memory(out, x) or np.may_share_memory(out, t):
        y = np.empty(x.shape, x.dtype)
    else:
        y = out
    losses = np.empty(x.shape[0], x.dtype)
    if with_grad:
        grad = grad_out if grad_out is not None and _fits(grad_out, x) else np.empty(x.shape, x.dtype)
    else:
        grad = y  # not written: the kernel is told so
    scale = _unit_scale(x.dtype, x.shape[0])
    kernel = _loss.softmax_xent_labels if t.ndim == 1 else _loss.softmax_xent_probs
    total = launch(kernel, x.size, x, t, y, losses, with_grad, grad, scale)
    return XentForward(x.dtype.type(total / x.shape[0]), finish(y, out), t, grad if with_grad else None)


def _fits(buf: np.ndarray | None, like: np.ndarray) -> bool:
    return buf is not None and buf.shape == like.shape and buf.dtype == like.dtype


def softmax_cross_entropy_backward(
    y: ArrayLike, t: ArrayLike, dout: float | np.floating | np.ndarray = 1.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of the mean softmax cross-entropy with respect to the scores: ``dout * (y - t) / N``.

    Parameters
    ----------
    y : array_like, shape (N, C)
        The softmax output of the forward pass.
    t : array_like
        The targets of the forward pass (labels or rows, see :func:`softmax_cross_entropy_forward`).
    dout : scalar, default 1.0
        Upstream gradient of the loss.
    out : ndarray, shape (N, C), optional
        Buffer for the result; may share memory with ``y`` or ``t``.

    Returns
    -------
    ndarray, shape (N, C), in the dtype NumPy gives for ``dout * (y - t) / N``: that of ``y``, or
    wider when target rows or a NumPy scalar ``dout`` are wider (a Python number does not count).

    Raises
    ------
    ValueError, TypeError
        As :func:`softmax_cross_entropy_forward`; ``dout`` that is not a real scalar.
    """
    y = as_array(y, "y")
    dout = scalar(dout, "dout")
    return xent_backward(y, t, dout, out)


def xent_backward(y: np.ndarray, t, dout, out, spare: np.ndarray | None = None) -> np.ndarray:
    """:func:`softmax_cross_entropy_backward` for an array ``y`` and a checked scalar ``dout``;
    ``t`` is validated here, against ``y`` as it is now. ``spare`` is a buffer from
    :func:`~._checks.reusable`, used for the result when its shape and dtype fit."""
    require_scores(y, "y")
    rows = t if type(t) is np.ndarray else as_array(t, "t", real=False)
    if rows.shape == y.shape and rows.dtype.kind in "fiub":
        dtype = compute_dtype(y=y, t=rows, dout=dout)
    else:
        dtype = compute_dtype(y=y, dout=dout)
    y = convert(y, dtype)
    t = _targets(rows, y, dtype=dtype)
    dout = dtype.type(dout)
    if out is not None:
        check_out(out, y.shape, dtype)
    if numpy_backend():
        return finish(reference.softmax_cross_entropy_backward(y, t, dout), out)
    if out is None:
        target = spare if _fits(spare, y) else np.empty(y.shape, dtype)
    else:
        target = out if not overlaps(out, y) and not overlaps(out, t) else np.empty(y.shape, dtype)
    scale = _mean_scale(dtype, dout, y.shape[0])
    kernel = _loss.xent_grad_labels if t.ndim == 1 else _loss.xent_grad_probs
    launch(kernel, y.size, y, t, scale, target)
    return finish(target, out)


def cross_entropy_error(y: ArrayLike, t: ArrayLike) -> np.floating:
    """Mean cross-entropy of probabilities ``y`` against labels or target rows.

    Parameters
    ----------
    y : array_like, shape (C,) or (N, C)
        Probabilities (a softmax output); 1-D is a batch of one.
    t : array_like
        Labels (N,) (a scalar label for 1-D ``y``) or rows shaped like ``y``.

    Returns
    -------
    The mean over the batch of ``-sum(t * log(y))``, as a NumPy scalar of ``y``'s float dtype (as the
    classic function, which turns one-hot rows into labels); terms with ``t == 0`` count as 0, and a
    zero probability at a target gives ``inf`` (no ``1e-7`` fudge).
    """
    _, (y,) = as_arrays(y=y)
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = as_array(t, "t", real=False)
        t = t.reshape(1, -1) if t.ndim == 1 and t.shape[0] == y.shape[1] else t.reshape(-1)
    elif y.ndim != 2:
        raise ValueError(f"y must be 1-D (C,) or 2-D (N, C), got shape {y.shape}")
    require_scores(y, "y")
    t = _targets(t, y)
    if numpy_backend():
        return reference.cross_entropy_error(y, t)
    losses = np.empty(y.shape[0], y.dtype)
    kernel = _loss.cross_entropy_labels if t.ndim == 1 else _loss.cross_entropy_probs
    y = np.ascontiguousarray(y)
    return y.dtype.type(launch(kernel, y.size, y, t, losses) / y.shape[0])
