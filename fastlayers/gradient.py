"""Numerical gradients by central differences, the yardstick of every gradient check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f`` at ``x``, for ``x`` of any shape.

    Each element of ``x`` is in turn set to ``x + h`` and ``x - h`` *in place* (``f`` usually reads
    ``x`` through a closure, as in the classic networks) and restored afterwards, also when ``f``
    raises.

    Parameters
    ----------
    f : callable
        Called as ``f(x)``; returns a real scalar.
    x : ndarray of float32 or float64, any shape
        Must be writeable.
    h : float, default 1e-4
        Step. The classic value suits float64; in float32 expect errors around 1e-3.

    Returns
    -------
    ndarray shaped and typed like ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a float ndarray.
    ValueError
        If ``x`` is read-only.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"x must be a float numpy.ndarray, got {type(x).__name__} {getattr(x, 'dtype', '')}".strip())
    if not x.flags.writeable:
        raise ValueError("x is read-only; numerical_gradient perturbs it in place")
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        saved = x[idx]
        try:
            x[idx] = float(saved) + h
            f_plus = float(f(x))
            x[idx] = float(saved) - h
            f_minus = float(f(x))
        finally:
            x[idx] = saved
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad
