"""Shared fixtures and the tolerances, written down once.

Why these tolerances (eps = machine epsilon of the dtype: 1.19e-7 for float32, 2.22e-16 for float64):

- ``exact``: ReLU and the Affine products and bias add do the same arithmetic in the same order as
  the reference (the products are the same BLAS call), so they must be bit-identical.
- ``ulp``: elementwise results that go through exp (sigmoid) or a division: our exp and NumPy's are
  each within 1 ulp of the truth and the sigmoid adds two roundings, so 8 eps relative; the absolute
  floor (the smallest normal number) covers subnormal results, where relative error is meaningless.
- ``row``: softmax rows and loss gradients: a row sum enters every element, summed in another order
  than NumPy's pairwise sum (error grows like eps * log2(C) there, like eps * C here at worst), and
  ``y - 1`` cancels; so the tolerance is relative to the largest element of the result.
- ``sum``: means over a batch and column sums (the bias gradient): order of additions differs from
  NumPy's, error bound eps * N.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import fastlayers
from fastlayers._kernels import _numba

DTYPES = [np.float32, np.float64]

#: For tests of what compiling gives (flags, threading layer, cache): skipped under NUMBA_DISABLE_JIT=1.
compiled_only = pytest.mark.skipif(_numba.DISABLED, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")


def _tol(kind: str, dtype, n: int = 1) -> dict:
    eps = float(np.finfo(dtype).eps)
    tiny = float(np.finfo(dtype).tiny)
    if kind == "exact":
        return {"rtol": 0.0, "atol": 0.0}
    if kind == "ulp":
        return {"rtol": 8 * eps, "atol": tiny}
    if kind == "row":
        return {"rtol": 16 * eps, "atol": 4 * eps * max(n, 1)}
    if kind == "sum":
        return {"rtol": 4 * eps * max(n, 1), "atol": 4 * eps * max(n, 1)}
    raise ValueError(kind)


def assert_close(actual, desired, kind: str, n: int = 1) -> None:
    """Compare a fastlayers result with the reference: same dtype, same shape, values within ``kind``."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.dtype == desired.dtype, (actual.dtype, desired.dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    scale = float(np.nanmax(np.abs(desired[np.isfinite(desired)]), initial=1.0)) if desired.size else 1.0
    tol = _tol(kind, desired.dtype, n)
    if kind in ("row", "sum"):
        tol["atol"] *= scale
    np.testing.assert_allclose(actual, desired, equal_nan=True, **tol)


@pytest.fixture(autouse=True)
def _numba_backend():
    """Every test starts on the default backend and leaves it that way."""
    with fastlayers.use_backend("numba"):
        yield


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout: C, F, or a strided view."""
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    raise ValueError(kind)


LAYOUTS = ["C", "F", "strided"]


def project_copy(dest: Path) -> Path:
    """A copy of what builds the package (``fastlayers/`` without its caches, ``pyproject.toml``,
    the README and the licence) in ``dest``, for tests that build it: a build in the clone would share
    its build folder with another Python's test run on the same clone (CI runs two at once) and
    could meet cache files written mid-build."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "fastlayers", dest / "fastlayers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(root / name, dest / name)
    return dest
