"""The Numba-specific machinery of ``fastlayers._kernels._numba`` and of the loading in
``_threads.load_numba``: the supported version range, the internals they rely on, and the Python
bodies of the helpers against their compiled versions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import njit

from fastlayers._kernels import _math, _numba, _threads

from .conftest import DTYPES, compiled_only

ROOT = Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_supported_range_is_pyprojects_and_holds_the_installed_numba():
    """``_numba.SUPPORTED`` is the range pyproject requires, and the installed Numba is inside it:
    a Numba outside the range has not been checked against the internals used below."""
    (spec,) = re.findall(r'"(numba[^"]*)"', (ROOT / "pyproject.toml").read_text())
    low, high = _numba.SUPPORTED
    assert spec == f"numba>={low},<{high}"
    assert _version(low) <= _version(numba.__version__) < _version(high)


def test_the_cache_internals_we_subclass_exist():
    """``_TolerantCache`` overrides these methods and reads this attribute of Numba's FunctionCache."""
    from numba.core.caching import FunctionCache

    for name in ("load_overload", "save_overload", "_load_overload", "_guard_against_spurious_io_errors"):
        assert callable(getattr(FunctionCache, name))
    cache = _numba._TolerantCache(_numba.typed)
    assert isinstance(cache._cache_file._index_path, str)


def test_numbas_load_is_a_refresh_then_the_load_and_its_compiler_refreshes_itself():
    """``_TolerantCache.load_overload`` does what Numba's does but the target context's refresh,
    keeping the part of it that running loaded code needs (the runtime's set-up); that holds while
    Numba's load is the refresh plus ``_load_overload``, its refresh sets up the runtime, and its
    compilation pipeline refreshes both contexts before it types anything."""
    import inspect

    import numba.core.base
    import numba.core.caching
    import numba.core.compiler
    import numba.core.cpu
    from numba.core.runtime import rtsys

    load = inspect.getsource(numba.core.caching.Cache.load_overload)
    assert re.findall(r"^\s*(?!#)(\S.*)$", load.split('"""')[-1], re.M) == [
        "target_context.refresh()",
        "with self._guard_against_spurious_io_errors():",
        "return self._load_overload(sig, target_context)",
    ]
    assert "rtsys.initialize(self)" in inspect.getsource(numba.core.cpu.CPUContext.load_additional_registries)
    assert "self.load_additional_registries()" in inspect.getsource(numba.core.base.BaseContext.refresh)
    pipeline = inspect.getsource(numba.core.compiler.CompilerBase.__init__)
    assert "typingctx.refresh()" in pipeline and "targetctx.refresh()" in pipeline
    assert callable(rtsys.initialize)


def test_the_loading_guard_has_the_same_supported_range():
    """``_threads`` decides before importing the kernels whether its guard applies to this Numba."""
    assert _numba.SUPPORTED is _threads.NUMBA_SUPPORTED


def test_numbas_blas_check_is_what_the_loading_guard_defers():
    """``_threads.load_numba`` replaces ``numba.np.arraymath._HAVE_BLAS`` (set at import by
    ``_check_blas()``) with an object whose truth value runs that check: right only while Numba
    reads the name as a truth value and nothing else, as here."""
    import inspect

    import numba.np.arraymath as arraymath

    assert callable(arraymath._check_blas)
    uses = re.findall(r"^.*\b_HAVE_BLAS\b.*$", inspect.getsource(arraymath), re.M)
    assert [u.strip() for u in uses] == ["_HAVE_BLAS = _check_blas()", "if not _HAVE_BLAS:"]
    assert isinstance(arraymath._HAVE_BLAS, (bool, _threads._BlasCheckedOnFirstUse))


def test_the_hiding_finder_hides_scipy_linalg_from_its_own_thread_only():
    import threading

    package = _threads._HideFromThisThread("scipy")
    for name in ("scipy", "scipy.linalg", "scipy.special"):
        with pytest.raises(ModuleNotFoundError):
            package.find_spec(name)
    assert package.find_spec("scipyx") is None and package.find_spec("numpy") is None

    finder = _threads._HideFromThisThread()
    for name in ("scipy.linalg", "scipy.linalg.cython_blas"):
        with pytest.raises(ModuleNotFoundError):
            finder.find_spec(name)
    for name in ("scipy", "scipy.linalgx", "scipy.special", "numpy.linalg"):
        assert finder.find_spec(name) is None
    other = []
    thread = threading.Thread(target=lambda: other.append(finder.find_spec("scipy.linalg")))
    thread.start()
    thread.join()
    assert other == [None] and finder.hidden == ["scipy.linalg", "scipy.linalg.cython_blas"]


SCIPY_LOOKUPS = """
import json, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            frame = sys._getframe(1)
            while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "")
            if importer != "scipy" and not importer.startswith("scipy."):  # SciPy's own imports aside
                seen.append([name, importer, frame.f_code.co_name])
        return None
sys.meta_path.insert(0, Watch())
import numba
print(json.dumps(seen))
"""


def test_numbas_import_looks_scipy_up_only_for_its_version_check():
    """``_threads._import_numba_without_scipy`` hides SciPy from ``import numba``: that is safe while
    the only SciPy lookup of Numba's import is ``_ensure_critical_deps``'s ``import scipy``, whose
    use is a version comparison (a fresh interpreter records every SciPy lookup and who made it)."""
    import inspect
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", SCIPY_LOOKUPS], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [["scipy", "numba", "_ensure_critical_deps"]]
    source = inspect.getsource(sys.modules["numba"])
    uses = [line.strip() for line in source.splitlines() if "scipy" in line.lower()]
    assert uses[1:3] == ["import scipy", "sp_version = extract_version(scipy)"], uses
    # the rest: the docstring of _ensure_critical_deps and the message of the refusal
    assert [u[:6] for u in uses[:1] + uses[3:]] == ["Make s", "msg = ", 'f"{sci'], uses


def test_the_deferred_blas_check_runs_once_on_first_read():
    calls = []
    flag = _threads._BlasCheckedOnFirstUse(lambda: calls.append(1) or True)
    assert calls == [] and "not checked yet" in repr(flag)
    assert flag and not (not flag) and calls == [1]
    assert "True" in repr(flag)
    assert not _threads._BlasCheckedOnFirstUse(lambda: False)


@njit(error_model="numpy")
def _compiled_helpers(x, sums, maxes, exps, back):
    for i in range(x.shape[0]):
        sums[i] = _numba.row_sum(x[i])
        maxes[i] = _numba.row_max(x[i])
        exps[i] = _math.exp_nonpos(-abs(x[i, 0]))
        back[i] = _numba.typed(3, x)


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_python_bodies_match_the_compiled_helpers(dtype):
    """Without the JIT the helpers run their Python bodies: the lane reductions bit for bit, the exp
    within the compiled version's accuracy, ``typed`` in the same dtype."""
    rng = np.random.default_rng(0)
    for c in (1, 7, 64, 65, 1000):
        x = (3 * rng.standard_normal((5, c))).astype(dtype)
        sums, maxes, exps, back = (np.empty(5, dtype) for _ in range(4))
        _compiled_helpers(x, sums, maxes, exps, back)
        for i in range(5):
            assert _numba.row_sum(x[i]) == sums[i] and _numba.row_sum(x[i]).dtype == dtype
            assert _numba.row_max(x[i]) == maxes[i]
            exp = _math.exp_nonpos(-abs(x[i, 0]))
            assert exp.dtype == dtype and abs(exp - exps[i]) <= 2 * np.spacing(exps[i])
            assert _numba.typed(3, x) == back[i] and _numba.typed(3, x).dtype == dtype


@compiled_only
def test_bitcasts_python_bodies_match_compiled():
    @njit
    def casts(a, b):
        return _numba.f64_to_bits(a), _numba.bits_to_f64(_numba.f64_to_bits(a)), _numba.f32_to_bits(b)

    a, b = np.float64(-1.5e-300), np.float32(3.25)
    assert casts(a, b) == (_numba.f64_to_bits(a), _numba.bits_to_f64(_numba.f64_to_bits(a)), _numba.f32_to_bits(b))
    assert _numba.bits_to_f64(_numba.f64_to_bits(a)) == a
    assert _numba.bits_to_f32(_numba.f32_to_bits(b)) == b


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", _numba.CONV_TILES)
def test_conv_tile_python_body_matches_compiled(tile, dtype):
    """The direct convolution's register tile: its Python body (no JIT) against the compiled one
    (FMAs there: within rounding), and the bounds its Python body checks."""
    channels, vectors = tile
    fn = getattr(_numba, f"conv_tile_{channels}")
    assert channels * vectors == _numba.TILE_ACCUMULATORS

    @njit(error_model="numpy")
    def compiled(xf, xoff, koff, wf, woff, out):
        fn(xf, xoff, koff, wf, woff, out)

    rng = np.random.default_rng(1)
    span = vectors * _numba.VECTOR_BYTES // np.dtype(dtype).itemsize
    koff = np.array([0, 3, 40, 41, 90], np.int64)
    xf = rng.standard_normal(100 + span).astype(dtype)
    wf = rng.standard_normal(7 + 5 * channels).astype(dtype)
    got, want = np.full(channels * span + 3, 7, dtype), np.full(channels * span + 3, 7, dtype)
    compiled(xf, 5, koff, wf, 7, got)
    fn(xf, 5, koff, wf, 7, want)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)
    assert (got[-3:] == 7).all()
    with pytest.raises(IndexError):
        fn(xf, 100 - 90 + 1, koff, wf, 7, want)
    with pytest.raises(IndexError):
        fn(xf, 0, koff, wf, 8 + channels * 5 - 1, want)


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_dw_tile_python_body_matches_compiled(dtype):
    """The filter gradient's tile: Python body against compiled (within rounding), accumulating
    into what ``acc`` holds, over images then vectors; the bounds its Python body checks."""
    fn = _numba.conv_dw_tile_4
    terms = _numba.TILE_ACCUMULATORS // 4
    assert _numba.CONV_DW_TILE == (4, terms)

    @njit(error_model="numpy")
    def compiled(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc):
        fn(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc)

    rng = np.random.default_rng(2)
    lanes = _numba.VECTOR_BYTES // np.dtype(dtype).itemsize
    koff = np.array([0, 1, 9, 10, 11, 30, 99], np.int64)  # the first ``terms`` are read
    gf = rng.standard_normal(3 + 2 * 200 + 3 * 40 + 2 * lanes).astype(dtype)
    xf = rng.standard_normal(5 + 2 * 150 + 30 + 2 * lanes).astype(dtype)
    start = rng.standard_normal(4 * terms * lanes + 2).astype(dtype)
    got, want = start.copy(), start.copy()
    args = (gf, 3, 40, 200, xf, 5, 150, koff, 2, 3)
    compiled(*args, got)
    fn(*args, want)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-4)
    assert (got[-2:] == start[-2:]).all()
    with pytest.raises(IndexError):
        fn(gf, 3, 40, 200, xf, 5, 150, koff, 2, 4, want)  # a fourth image past the gradient rows
    with pytest.raises(IndexError):
        fn(gf, 3, 40, 200, xf, 5, 150, koff, 2, 3, want[: 4 * terms * lanes - 1])


def test_register_configuration_follows_the_cpu_numba_compiles_for():
    """The tiles' vector bytes are 64 exactly where Numba's target machine has AVX-512F (unless
    ``FASTLAYERS_VECTOR_BYTES`` chose), and every tile shape follows from its accumulators."""
    import os

    from fastlayers import _kernels

    if os.environ.get("FASTLAYERS_VECTOR_BYTES"):
        assert _numba.VECTOR_BYTES == int(os.environ["FASTLAYERS_VECTOR_BYTES"])
    else:
        from numba.core.registry import cpu_target

        features = cpu_target.target_context.codegen()._tm_features.split(",")
        assert (_numba.VECTOR_BYTES == 64) == ("+avx512f" in features)
    assert _numba.TILE_ACCUMULATORS == _kernels.REGISTER_CONFIGS[_numba.VECTOR_BYTES]
    acc = _numba.TILE_ACCUMULATORS
    assert all(c * v == acc for c, v in _numba.CONV_TILES) and (6, acc // 6) in _numba.CONV_TILES
    assert _numba.CONV_LANES_TILE == _numba.CONV_DW_LANES_TILE == (6, acc // 6)
    assert _numba.CONV_DW_TILE == (4, acc // 4)
    assert _numba.DENSE_ROWS * _numba.DENSE_VECTORS == acc
    # fewer rows take more vectors, up to 4 and the accumulators
    vectors = list(_numba.DENSE_TILE_VECTORS[1:])
    assert vectors == [min(4, acc // r) for r in range(1, 7)] and vectors[-1] == _numba.DENSE_VECTORS


REGISTER_PROBE = """
import json, sys
from fastlayers import _kernels
try:
    vb = _kernels.vector_bytes()
except ValueError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
from fastlayers._kernels import _numba
print(json.dumps({"vb": vb, "acc": _kernels.accumulators(), "tiles": _numba.CONV_TILES, "tag": _numba.TAG}))
"""


def test_the_register_configuration_can_be_chosen_and_keys_the_cache():
    """``FASTLAYERS_VECTOR_BYTES`` chooses 32 or 64 (the tiles follow, the cache tag changes with it),
    and anything else is a ValueError naming the variable; ``NUMBA_CPU_NAME=generic`` (no features)
    takes 32."""
    import os
    import subprocess
    import sys

    def probe(**env):
        full = {k: v for k, v in os.environ.items() if k not in ("FASTLAYERS_VECTOR_BYTES", "NUMBA_CPU_NAME")}
        res = subprocess.run(
            [sys.executable, "-c", REGISTER_PROBE], env={**full, **env}, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    small, large = probe(FASTLAYERS_VECTOR_BYTES="32"), probe(FASTLAYERS_VECTOR_BYTES="64")
    assert (small["vb"], small["acc"], large["vb"], large["acc"]) == (32, 12, 64, 24)
    assert [tuple(t) for t in small["tiles"]] == [(6, 2), (4, 3), (12, 1), (3, 4), (2, 6), (1, 12)]
    assert [tuple(t) for t in large["tiles"]] == [(8, 3), (6, 4), (4, 6), (12, 2), (3, 8), (2, 12), (1, 24)]
    assert small["tag"] != large["tag"]
    for bad in ("48", "avx2", "0"):
        assert "FASTLAYERS_VECTOR_BYTES" in probe(FASTLAYERS_VECTOR_BYTES=bad)["error"]
    assert probe(NUMBA_CPU_NAME="generic")["vb"] == 32
