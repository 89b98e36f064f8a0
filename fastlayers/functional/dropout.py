"""Dropout in the classic form (not inverted: kept values are not scaled in training, and the test
pass scales by ``1 - dropout_ratio``): the checked functions around :mod:`fastlayers._kernels.dropout`.

The random draws come from a counter-based generator (Philox4x32-10) keyed per call, by default
from NumPy's legacy global generator (two 32-bit integers from ``np.random.randint``): after
``np.random.seed(s)`` a program draws the same masks run after run, whatever the thread count. The
masks are not the bits ``np.random.rand(...) > ratio`` would give (another generator), but they
have the same law: each element kept with probability ``1 - ratio``, independently.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike

from .. import reference
from .._kernels import lazy
from .._kernels._threads import launch
from ._checks import (
    REUSE_MIN_BYTES,
    as_array,
    check_out,
    compute_dtype,
    convert,
    fast_dtype,
    numpy_backend,
    reusable,
)

_dropout = lazy("dropout")  # imported (with Numba) at the first kernel call


def check_ratio(ratio) -> float:
    """``dropout_ratio`` as a float in [0, 1).

    Raises
    ------
    TypeError
        Not a real number.
    ValueError
        Outside [0, 1) (NaN included).
    """
    if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"dropout_ratio must be a number in [0, 1), got {type(ratio).__name__} {ratio!r}")
    r = float(ratio)
    if not 0 <= r < 1:
        raise ValueError(f"dropout_ratio must be in [0, 1), got {ratio!r}")
    return r


def draw_key() -> tuple[int, int]:
    """A key for one call, from NumPy's legacy global generator (``np.random.seed`` makes it
    reproducible)."""
    k = np.random.randint(0, 1 << 32, size=2, dtype=np.uint64)  # noqa: NPY002 - the classic global generator, on purpose
    return int(k[0]), int(k[1])


def threshold(ratio: float) -> int:
    """The largest 32-bit draw that drops its element: a draw ``u`` keeps it when ``u > threshold``,
    which is ``u / 2**32 > ratio``."""
    return int(ratio * 4294967296.0)


def _key(key) -> tuple[int, int]:
    if key is None:
        return draw_key()
    try:
        k0, k1 = (int(operator_index) for operator_index in key)
    except (TypeError, ValueError):
        raise TypeError(f"key must be a pair of integers in [0, 2**32), got {key!r}") from None
    if not (0 <= k0 < 1 << 32 and 0 <= k1 < 1 << 32):
        raise ValueError(f"key must be a pair of integers in [0, 2**32), got {key!r}")
    return k0, k1


def forward_run(x: np.ndarray, ratio: float, key, out=None, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Training-mode dropout of a plain C-contiguous float ``x`` (numba backend) into ``out`` and
    ``mask`` (None: allocated; otherwise C-contiguous arrays of ``x``'s shape)."""
    k0, k1 = _key(key)
    out = np.empty(x.shape, x.dtype) if out is None else out
    mask = np.empty(x.shape, np.bool_) if mask is None else mask
    launch(_dropout.dropout_forward, x.size, x.reshape(-1), k0, k1, threshold(ratio), out.reshape(-1), mask.reshape(-1))
    return out, mask


def dropout_forward(
    x: ArrayLike, dropout_ratio: float = 0.5, key: tuple[int, int] | None = None, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Training-mode dropout: ``(x * mask, mask)``.

    Parameters
    ----------
    x : array_like, any shape
    dropout_ratio : float in [0, 1)
        Probability of dropping each element.
    key : pair of ints in [0, 2**32), optional
        The generator's key; by default drawn from NumPy's legacy global generator.
    out : ndarray, optional
        Buffer for ``x * mask``, of ``x``'s shape and float dtype.

    Returns
    -------
    (out, mask) : ``x * mask`` in ``x``'s float dtype (integers as float64), and the boolean mask
        (True where kept).

    Raises
    ------
    TypeError, ValueError
        A ratio that is not a number in [0, 1); a bad key; unsupported dtypes; an ``out`` that does
        not fit.
    """
    ratio = check_ratio(dropout_ratio)
    k = _key(key)
    x = as_array(x, "x")
    dtype = compute_dtype(x=x)
    x = np.ascontiguousarray(convert(x, dtype))
    if out is not None:
        check_out(out, x.shape, dtype)
    if numpy_backend():
        result, mask = reference.dropout_forward(x, *k, threshold(ratio))
        if out is not None:
            out[...] = result
            result = out
        return result, mask
    buf = out if _free(out, x) else None
    result, mask = forward_run(x, ratio, k, buf)
    if out is not None and buf is None:
        out[...] = result
        result = out
    return result, mask


def dropout_backward(dout: ArrayLike, mask: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """``dout * mask``.

    Parameters
    ----------
    dout : array_like
    mask : array_like of ``dout``'s shape
        Usually the boolean mask of the forward call; any real array works (as in the classic
        ``dout * mask``).
    out : ndarray, optional
        Buffer of the result's shape and dtype.

    Returns
    -------
    ndarray in the dtype NumPy's rule gives for ``dout`` (and a non-boolean ``mask``).

    Raises
    ------
    ValueError
        ``mask`` of another shape than ``dout``.
    """
    dout = as_array(dout, "dout")
    m = as_array(mask, "mask")
    if m.shape != dout.shape:
        raise ValueError(f"mask has shape {m.shape} but dout has shape {dout.shape}")
    if m.dtype != np.bool_:
        dtype = compute_dtype(dout=dout, mask=m)
        with np.errstate(invalid="ignore"):  # inf * 0: NaN, as the kernel gives it
            result = convert(dout, dtype) * convert(m, dtype)
        return result if out is None else _into(out, result)
    dtype = compute_dtype(dout=dout)
    dout = np.ascontiguousarray(convert(dout, dtype))
    m = np.ascontiguousarray(m)
    if numpy_backend():
        with np.errstate(invalid="ignore"):
            result = dout * m
        return result if out is None else _into(out, result)
    if out is not None:
        check_out(out, dout.shape, dtype)
    buf = out if _free(out, dout, m) else np.empty(dout.shape, dtype)
    launch(_dropout.dropout_backward, dout.size, dout.reshape(-1), m.reshape(-1), buf.reshape(-1))
    return buf if out is None or buf is out else _into(out, buf)


def _free(out, *inputs) -> bool:
    """Whether the kernel may write into ``out`` directly: C-contiguous, and each input either is
    ``out`` itself (elementwise in place is safe) or shares no memory with it."""
    if out is None or not out.flags.c_contiguous:
        return False
    return all(a is out or not np.may_share_memory(out, a) for a in inputs)


def _into(out: np.ndarray, result: np.ndarray) -> np.ndarray:
    check_out(out, result.shape, result.dtype)
    out[...] = result
    return out


def scale_run(x, ratio: float, owner: object, name: str) -> np.ndarray | None:
    """Test-mode dropout of a plain float ``x`` (:func:`~._checks.fast_dtype`: numba backend), into
    ``owner.<name>`` when :func:`~._checks.reusable` allows it, else into a new array; None, having
    done nothing, for any other ``x``. ``ratio`` is checked already."""
    dtype = fast_dtype(x)
    if dtype is None:
        return None
    out = reusable(owner, name, x.shape, dtype) if x.size * dtype.itemsize >= REUSE_MIN_BYTES else None
    if out is None:
        out = np.empty(x.shape, dtype)
    launch(_dropout.scale, x.size, x.reshape(-1), dtype.type(1.0 - ratio), out.reshape(-1))
    return out


def dropout_scale(x: ArrayLike, dropout_ratio: float = 0.5, out: np.ndarray | None = None) -> np.ndarray:
    """Test-mode dropout: ``x * (1 - dropout_ratio)``, in ``x``'s float dtype.

    Parameters
    ----------
    x : array_like, any shape
    dropout_ratio : float in [0, 1)
    out : ndarray, optional
        Buffer of ``x``'s shape and float dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`dropout_forward`.
    """
    ratio = check_ratio(dropout_ratio)
    x = as_array(x, "x")
    dtype = compute_dtype(x=x)
    x = np.ascontiguousarray(convert(x, dtype))
    if numpy_backend():
        with np.errstate(invalid="ignore"):
            result = x * dtype.type(1.0 - ratio)
        return result if out is None else _into(out, result)
    if out is not None:
        check_out(out, x.shape, dtype)
    buf = out if _free(out, x) else np.empty(x.shape, dtype)
    launch(_dropout.scale, x.size, x.reshape(-1), dtype.type(1.0 - ratio), buf.reshape(-1))
    return buf if out is None or buf is out else _into(out, buf)
