"""Batch normalization, the classic way: per feature over the batch (a 4-D input is normalised per
element of C*H*W, as the classic code reshapes it), biased batch variance, ``std = sqrt(var + 1e-6)``
(the classic ``10e-7``), running statistics ``momentum * old + (1 - momentum) * batch``. The checked
functions around :mod:`fastlayers._kernels.batchnorm`.

Everything is computed in the dtype NumPy's rule gives for ``x``, ``gamma`` and ``beta`` (the
running statistics are converted to it; new ones are created in it).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .. import reference
from .._kernels import lazy
from .._kernels._threads import launch
from ._checks import as_array, compute_dtype, convert, numpy_backend

_bn = lazy("batchnorm")  # imported (with Numba) at the first kernel call

EPS = reference.BATCHNORM_EPS


def as_rows(x: np.ndarray, name: str = "x") -> np.ndarray:
    """``x`` as (N, D): 2-D as it is, higher ranks as ``x.reshape(N, -1)`` (the classic code)."""
    if x.ndim < 2:
        raise ValueError(f"{name} must be at least 2-D (N, D) or (N, C, H, W), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); at least one row is needed")
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def check_momentum(momentum) -> float:
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    return float(momentum)


def _feature(a, name: str, d: int, x_shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A per-feature array, (D,) or (1, D), as a C-contiguous (D,) array of ``dtype``."""
    arr = as_array(a, name)
    if arr.shape not in ((d,), (1, d)):
        what = f"C*H*W = {d}" if len(x_shape) == 4 else f"{d}"
        raise ValueError(f"{name} has shape {arr.shape} but x of shape {x_shape} needs {what} values per feature")
    return np.ascontiguousarray(convert(arr, dtype).reshape(d))


def operands(x, gamma, beta) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, x2, gamma, beta)`` checked: ``x`` as an array, ``x2`` its (N, D) rows C-contiguous in
    the compute dtype (NumPy's rule for ``x``, ``gamma``, ``beta``), ``gamma`` and ``beta`` (D,) in it.

    Raises
    ------
    ValueError, TypeError
        As :func:`batch_norm_train`.
    """
    x = as_array(x, "x")
    x2 = as_rows(x)
    g, b = as_array(gamma, "gamma"), as_array(beta, "beta")
    dtype = compute_dtype(x=x, gamma=g, beta=b)
    d = x2.shape[1]
    g, b = _feature(g, "gamma", d, x.shape, dtype), _feature(b, "beta", d, x.shape, dtype)
    return x, np.ascontiguousarray(convert(x2, dtype)), g, b


def backward_operands(dout, xn, gamma, std, mismatch=None) -> tuple[np.ndarray, ...]:
    """``(dout, d2, xn, gamma, std)`` checked for the backward pass: ``dout`` as an array, its rows
    ``d2`` and ``xn`` (N, D) C-contiguous in the compute dtype (NumPy's rule for ``dout``, ``xn``,
    ``gamma``), ``gamma`` and ``std`` (D,) in it. ``mismatch(dout_shape, xn_shape, rows_shape)``
    words the error when ``xn`` does not fit ``dout``.

    Raises
    ------
    ValueError, TypeError
        As :func:`batch_norm_backward`.
    """
    dout = as_array(dout, "dout")
    d2 = as_rows(dout, "dout")
    xn_a = as_array(xn, "xn")
    if xn_a.shape != d2.shape:
        if mismatch is None:
            raise ValueError(f"xn has shape {xn_a.shape} but dout of shape {dout.shape} gives {d2.shape}")
        raise ValueError(mismatch(dout.shape, xn_a.shape, d2.shape))
    g, s = as_array(gamma, "gamma"), as_array(std, "std")
    dtype = compute_dtype(dout=dout, xn=xn_a, gamma=g)
    d = d2.shape[1]
    g, s = _feature(g, "gamma", d, dout.shape, dtype), _feature(s, "std", d, dout.shape, dtype)
    return dout, np.ascontiguousarray(convert(d2, dtype)), np.ascontiguousarray(convert(xn_a, dtype)), g, s


class TrainResult(NamedTuple):
    out: np.ndarray
    xn: np.ndarray
    std: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


def train_run(x2, gamma, beta, momentum: float, rm, rv, out=None, xn=None) -> TrainResult:
    """Training-mode batch normalization of checked operands of one dtype (``x2`` (N, D)
    C-contiguous; the rest (D,)), numba backend; ``out``/``xn`` None or buffers of ``x2``'s shape."""
    dtype = x2.dtype
    n, d = x2.shape
    out = np.empty((n, d), dtype) if out is None else out
    xn = np.empty((n, d), dtype) if xn is None else xn
    mean, var = np.empty(d), np.empty(d)
    std, rm_new, rv_new = np.empty(d, dtype), np.empty(d, dtype), np.empty(d, dtype)
    parts = np.empty((2, _bn.chunks(n), d))
    t = dtype.type
    args = (
        t(momentum),
        t(EPS),
        rm,
        rv,
        out,
        xn,
        mean,
        var,
        std,
        rm_new,
        rv_new,
        parts[0],
        parts[1],
        np.empty((2, d), dtype),
    )
    launch(_bn.batchnorm_train, x2.size, x2, gamma, beta, *args)
    return TrainResult(out, xn, std, rm_new, rv_new)


def infer_run(x2, gamma, beta, rm, rv, out=None) -> np.ndarray:
    """Test-mode batch normalization of checked operands of one dtype (numba backend)."""
    out = np.empty(x2.shape, x2.dtype) if out is None else out
    std = np.sqrt(rv + x2.dtype.type(EPS))
    launch(_bn.batchnorm_test, x2.size, x2, gamma, beta, rm, std, out)
    return out


def backward_run(dout2, xn, gamma, std, dx=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta) from checked (N, D) ``dout2`` and ``xn`` and (D,) ``gamma``, ``std``."""
    n, d = dout2.shape
    dtype = dout2.dtype
    dx = np.empty((n, d), dtype) if dx is None else dx
    dgamma, dbeta = np.empty(d, dtype), np.empty(d, dtype)
    parts = np.empty((2, _bn.chunks(n), d))
    coef = np.empty((3, d), dtype)
    launch(_bn.batchnorm_backward, dout2.size, dout2, xn, gamma, std, dgamma, dbeta, dx, parts[0], parts[1], coef)
    return dx, dgamma, dbeta


def batch_norm_train(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    running_mean: ArrayLike | None = None,
    running_var: ArrayLike | None = None,
    momentum: float = 0.9,
) -> TrainResult:
    """Training-mode batch normalization.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, ...)
        Inputs of more than 2 dimensions are normalised as ``x.reshape(N, -1)`` (per element).
    gamma, beta : array_like of D values
    running_mean, running_var : array_like of D values, optional
        The running statistics before this batch (zeros when not given).
    momentum : float in [0, 1]

    Returns
    -------
    TrainResult(out, xn, std, running_mean, running_var) : ``out`` shaped like ``x``; ``xn`` (N, D)
        the normalised batch; ``std`` (D,) ``sqrt(var + 1e-6)``; the updated running statistics
        (new arrays). All in the dtype NumPy gives for ``x``, ``gamma`` and ``beta``.

    Raises
    ------
    ValueError
        ``x`` of fewer than 2 dimensions or an empty batch; per-feature arrays that do not hold D
        values; ``momentum`` outside [0, 1].
    TypeError
        Unsupported dtypes.
    """
    m = check_momentum(momentum)
    x, x2, g, b = operands(x, gamma, beta)
    dtype, d = x2.dtype, x2.shape[1]
    rm = np.zeros(d, dtype) if running_mean is None else _feature(running_mean, "running_mean", d, x.shape, dtype)
    rv = np.zeros(d, dtype) if running_var is None else _feature(running_var, "running_var", d, x.shape, dtype)
    if numpy_backend():
        out, xn, std, rm2, rv2 = reference.batchnorm_train(x2, g, b, dtype.type(m), rm, rv)
        return TrainResult(out.reshape(x.shape), xn, std, rm2.astype(dtype), rv2.astype(dtype))
    res = train_run(x2, g, b, m, rm, rv)
    return res._replace(out=res.out.reshape(x.shape))


def batch_norm_test(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike
) -> np.ndarray:
    """Test-mode batch normalization with the running statistics.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, ...)
    gamma, beta, running_mean, running_var : array_like of D values

    Returns
    -------
    ndarray shaped like ``x``, in the dtype NumPy gives for ``x``, ``gamma`` and ``beta``.

    Raises
    ------
    ValueError, TypeError
        As :func:`batch_norm_train`.
    """
    x, x2, g, b = operands(x, gamma, beta)
    d = x2.shape[1]
    stats = [
        _feature(a, name, d, x.shape, x2.dtype)
        for a, name in ((running_mean, "running_mean"), (running_var, "running_var"))
    ]
    args = [g, b, *stats]
    if numpy_backend():
        return reference.batchnorm_test(x2, *args).reshape(x.shape)
    return infer_run(x2, *args).reshape(x.shape)


def batch_norm_backward(
    dout: ArrayLike, xn: ArrayLike, gamma: ArrayLike, std: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of training-mode batch normalization.

    Parameters
    ----------
    dout : array_like, shape (N, D) or (N, ...)
    xn : array_like, shape (N, D)
        The normalised batch of the forward pass.
    gamma, std : array_like of D values
        ``std`` is the forward pass's ``sqrt(var + 1e-6)``.

    Returns
    -------
    (dx, dgamma, dbeta) : ``dx`` shaped like ``dout``; ``dgamma``, ``dbeta`` (D,); in the dtype NumPy
        gives for ``dout``, ``xn`` and ``gamma``.

    Raises
    ------
    ValueError
        ``xn`` of another shape than ``dout`` as (N, D); per-feature arrays of the wrong size.
    TypeError
        Unsupported dtypes.
    """
    dout, d2, xn_a, g, s = backward_operands(dout, xn, gamma, std)
    if numpy_backend():
        dx, dgamma, dbeta = reference.batchnorm_backward(d2, xn_a, g, s)
    else:
        dx, dgamma, dbeta = backward_run(d2, xn_a, g, s)
    return dx.reshape(dout.shape), dgamma, dbeta
