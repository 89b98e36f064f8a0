"""Settings that choose how a call computes: the backend, the strict-dtype switch and the float32
compute policy.

Each setting has a process-wide default (from an environment variable at import, or a ``set_*``
function) and a context-local value set by ``use_backend`` / ``strict_dtypes`` /
``float32_compute``. The context-local value lives in a :class:`contextvars.ContextVar`: it affects
only the calling thread, and asyncio tasks (which copy their creator's context); a new thread starts
from the process-wide default.
"""

from __future__ import annotations

import contextvars
import os

BACKENDS = ("numba", "numpy")


def _checked(name: str, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def _flag(value: str, source: str) -> bool:
    text = value.strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{source} must be 0 or 1, got {value!r}")


_default = _checked(os.environ.get("FASTLAYERS_BACKEND", "numba"), "FASTLAYERS_BACKEND")
_backend_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastlayers_backend", default=None)
_strict_default = _flag(os.environ.get("FASTLAYERS_STRICT_DTYPES", "0"), "FASTLAYERS_STRICT_DTYPES")
_strict_var: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fastlayers_strict", default=None)
_float32_default = _flag(os.environ.get("FASTLAYERS_FLOAT32", "0"), "FASTLAYERS_FLOAT32")
_float32_var: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fastlayers_float32", default=None)


def current() -> str:
    """The backend of the calling context (hot path: one ContextVar read)."""
    name = _backend_var.get()
    return _default if name is None else name


def get_backend() -> str:
    """The backend in use in the calling thread or task: ``"numba"`` or ``"numpy"``."""
    return current()


def set_default_backend(name: str) -> None:
    """Set the process-wide default backend (what every thread uses unless it chose another).

    Parameters
    ----------
    name : {"numba", "numpy"}

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.
    """
    global _default
    _default = _checked(name, "backend")


class use_backend:  # noqa: N801 - a function to its callers, a class only to be a context manager
    """Switch the backend of the calling thread (or asyncio task); as a context manager, switch back.

    Other threads are not affected: they keep the process-wide default
    (:func:`set_default_backend`, or ``FASTLAYERS_BACKEND`` at import).

    Parameters
    ----------
    name : {"numba", "numpy"}
        ``"numba"`` runs the compiled kernels; ``"numpy"`` runs :mod:`fastlayers.reference`.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.

    Examples
    --------
    >>> import fastlayers
    >>> with fastlayers.use_backend("numpy"):
    ...     fastlayers.get_backend()
    'numpy'
    """

    def __init__(self, name: str):
        self._token = _backend_var.set(_checked(name, "backend"))

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc) -> None:
        _backend_var.reset(self._token)


def is_strict() -> bool:
    """True when mixed float precision must raise instead of being promoted (see :func:`strict_dtypes`)."""
    flag = _strict_var.get()
    return _strict_default if flag is None else flag


def set_strict_dtypes(enabled: bool = True) -> None:
    """Set the process-wide default of the strict dtype mode (``FASTLAYERS_STRICT_DTYPES=1`` at import).

    In strict mode two floating-point operands of different precision in one call (float32 ``x`` with
    float64 ``W``) raise ``TypeError`` instead of being computed in the wider dtype as NumPy would.

    Parameters
    ----------
    enabled : bool, default True
    """
    global _strict_default
    _strict_default = bool(enabled)


class _Switch:
    """A context-local on/off setting: set on construction, so that it works as a plain call too;
    as a context manager, the previous value comes back on exit."""

    _var: contextvars.ContextVar[bool | None]

    def __init__(self, enabled: bool = True):
        self._token = self._var.set(bool(enabled))

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc) -> None:
        self._var.reset(self._token)


class strict_dtypes(_Switch):  # noqa: N801 - a function to its callers, a class only to be a context manager
    """Turn the strict dtype mode on (or off) in the calling thread or task; as a context manager,
    restore the previous mode on exit.

    Parameters
    ----------
    enabled : bool, default True

    Examples
    --------
    >>> import numpy as np, fastlayers as fl
    >>> with fl.strict_dtypes():
    ...     fl.Affine(np.ones((2, 1)), np.zeros(1)).forward(np.ones((1, 2), np.float32))
    Traceback (most recent call last):
    ...
    TypeError: mixed float precision: x is float32 but W is float64; cast them to one dtype (e.g. with .astype)
    """

    _var = _strict_var


def is_float32() -> bool:
    """True when float64 operands are computed, and results returned, in float32 (see
    :func:`float32_compute`)."""
    flag = _float32_var.get()
    return _float32_default if flag is None else flag


def set_float32_compute(enabled: bool = True) -> None:
    """Set the process-wide default of the float32 compute policy (``FASTLAYERS_FLOAT32=1`` at import).

    Under the policy, the layers and functions compute float64 operands in float32 and return float32
    results, on purpose unlike NumPy's rule (as JAX computes in float32 unless float64 is switched
    on): float32 arithmetic moves half the bytes and its matrix products run about twice as fast.
    Parameters keep their dtype: optimizers update a float64 parameter in float64, from whatever
    gradient they are given. Expect results to differ from float64 ones by float32 rounding.

    Parameters
    ----------
    enabled : bool, default True
    """
    global _float32_default
    _float32_default = bool(enabled)


class float32_compute(_Switch):  # noqa: N801 - a function to its callers, a class only to be a context manager
    """Turn the float32 compute policy on (or off) in the calling thread or task; as a context
    manager, restore the previous policy on exit. See :func:`set_float32_compute`.

    Parameters
    ----------
    enabled : bool, default True

    Examples
    --------
    >>> import numpy as np, fastlayers as fl
    >>> with fl.float32_compute():
    ...     fl.Relu().forward(np.ones(3)).dtype
    dtype('float32')
    """

    _var = _float32_var
