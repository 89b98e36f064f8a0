"""The process-wide backend switch: ``"numba"`` (compiled kernels, default) or ``"numpy"``."""

from __future__ import annotations

import os

BACKENDS = ("numba", "numpy")


def _checked(name: str, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name.lower()


_current = _checked(os.environ.get("FASTLAYERS_BACKEND", "numba"), "FASTLAYERS_BACKEND")


def get_backend() -> str:
    """The backend in use: ``"numba"`` or ``"numpy"``."""
    return _current


class use_backend:  # noqa: N801 - a function to its callers, a class only to be a context manager
    """Switch the backend for the whole process; also a context manager that switches back.

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
        global _current
        self._previous = _current
        _current = _checked(name, "backend")

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc) -> None:
        global _current
        _current = self._previous
