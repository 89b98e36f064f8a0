"""The one GEMM entry point (``fastlayers._gemm``): every installed library computes the products
NumPy computes, the choice comes from the environment, ``tune``'s cache or the default, and the
Affine layer gives the same results whichever library serves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import _gemm

from .conftest import DTYPES, assert_close

INSTALL = {"mkl": "pip install mkl", "openblas": "pip install scipy-openblas32", "blis": "pip install blis"}


def _library_or_skip(name: str):
    gemm = _gemm.library(name)
    if gemm is None:
        pytest.skip(f"{name} is not installed here ({INSTALL[name]})")
    return gemm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", _gemm.LIBRARIES)
def test_every_library_computes_numpys_products(name, dtype):
    """The three forms an Affine layer uses (x @ W, dout @ W.T, x.T @ dout), odd shapes, a strided
    operand, and an ``out`` full of NaN (a library must not read it)."""
    gemm = _library_or_skip(name)
    rng = np.random.default_rng(0)
    for n, d, m in ((1, 1, 1), (37, 53, 11), (100, 784, 50), (3, 1031, 7)):
        x = rng.standard_normal((n, d)).astype(dtype)
        W = rng.standard_normal((d, m)).astype(dtype)
        dout = rng.standard_normal((n, m)).astype(dtype)
        wide = rng.standard_normal((n, 2 * d)).astype(dtype)
        for a, b in ((x, W), (dout, W.T), (x.T, dout), (wide[:, ::2], W)):
            out = np.full((a.shape[0], b.shape[1]), np.nan, dtype)
            gemm(a, b, out)
            assert_close(out, a @ b, "sum", n=a.shape[1])


def test_empty_products():
    for name in _gemm.available():
        gemm = _gemm.library(name)
        out = np.full((3, 2), np.nan)
        gemm(np.ones((3, 0)), np.ones((0, 2)), out)
        np.testing.assert_array_equal(out, 0)


@pytest.fixture
def forced(monkeypatch):
    """Force one library for every product (as FASTLAYERS_GEMM does) for the test's duration."""

    def force(name: str) -> None:
        monkeypatch.setenv("FASTLAYERS_GEMM", name)
        _gemm.reset()

    yield force
    monkeypatch.delenv("FASTLAYERS_GEMM", raising=False)
    _gemm.reset()


@pytest.mark.parametrize("name", _gemm.LIBRARIES)
def test_affine_layer_is_the_same_whichever_library(name, forced):
    _library_or_skip(name)
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((64, 30)), rng.standard_normal((30, 20)), rng.standard_normal(20)
    dout = rng.standard_normal((64, 20))
    want = fl.Affine(W, b).forward(x), fl.Affine(W, b)
    want_grad = want[1]
    want_grad.forward(x)
    dx_want = want_grad.backward(dout)
    forced(name)
    assert _gemm.choice()["source"] == "FASTLAYERS_GEMM"
    assert set(_gemm.choice()["choice"].values()) == {name}
    layer = fl.Affine(W, b)
    assert_close(layer.forward(x), want[0], "sum", n=30)
    assert_close(layer.backward(dout), dx_want, "sum", n=20)
    assert_close(layer.dW, want_grad.dW, "sum", n=64)


def test_tune_writes_a_choice_that_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTLAYERS_GEMM", raising=False)
    shapes = {
        "tiny": [(1, 16, 4, "forward"), (3, 16, 4, "forward"), (4, 8, 4, "affine")],
        "small": [(8, 16, 4, "affine")],
        "medium": [(16, 32, 8, "affine")],
        "large": [(32, 64, 16, "affine")],
    }
    monkeypatch.setattr(_gemm, "TUNE_SHAPES", shapes)
    try:
        data = _gemm.tune(seconds=0.001)
        assert _gemm.cache_file() == tmp_path / "fastlayers" / "gemm.json"
        saved = json.loads(_gemm.cache_file().read_text())
        assert saved["machine"] == _gemm.machine_key() and saved["choice"] == data["choice"]
        assert set(saved["choice"]) == {f"{c}/{d}" for c in _gemm.CLASSES for d in ("float32", "float64")}
        assert all(set(times) == set(_gemm.available()) for times in saved["seconds"].values())
        got = _gemm.choice()
        assert got["source"] == str(_gemm.cache_file()) and got["choice"] == data["choice"]
        # a choice measured on another machine (or other libraries) is not used
        saved["machine"] = "another CPU"
        _gemm.cache_file().write_text(json.dumps(saved))
        _gemm.reset()
        assert _gemm.choice()["source"] == "default"
        want = {f"{c}/{d}": _gemm.DEFAULT[c] for c in _gemm.CLASSES for d in ("float32", "float64")}
        assert _gemm.choice()["choice"] == want
    finally:
        _gemm.reset()


def test_tune_keeps_numpy_where_another_library_is_slower_at_one_shape(monkeypatch, tmp_path):
    """A library faster over a class but slower than NumPy at one of its shapes is not chosen."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTLAYERS_GEMM", raising=False)
    times = {
        "tiny/float32": {"numpy": 10.0, "mkl": 8.0},
        "tiny/float32/1x784x50": {"numpy": 1.0, "mkl": 1.5},
        "tiny/float32/16x784x50": {"numpy": 9.0, "mkl": 6.5},
        "small/float32": {"numpy": 10.0, "mkl": 8.0},
        "small/float32/100x784x50": {"numpy": 10.0, "mkl": 8.0},
    }
    monkeypatch.setattr(_gemm, "measure", lambda seconds: times)
    try:
        assert _gemm.tune()["choice"] == {"tiny/float32": "numpy", "small/float32": "mkl"}
    finally:
        _gemm.reset()


def test_size_classes():
    assert _gemm.size_class(1, 50, 784) == "tiny" and _gemm.size_class(16, 50, 784) == "tiny"
    assert _gemm.size_class(32, 50, 64) == "tiny"
    assert _gemm.size_class(100, 50, 784) == "small"
    assert _gemm.size_class(256, 1000, 1024) == "medium"
    assert _gemm.size_class(1024, 1024, 4096) == "large"


def test_environment_override_and_bad_value():
    code = (
        "import fastlayers.__main__ as m; d = m.info(); print(d['gemm']['source'], set(d['gemm']['choice'].values()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, FASTLAYERS_GEMM="numpy"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.stdout.split() == ["FASTLAYERS_GEMM", "{'numpy'}"], res.stderr
    bad = subprocess.run(
        [sys.executable, "-c", "import fastlayers"], env=dict(os.environ, FASTLAYERS_GEMM="cublas"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "FASTLAYERS_GEMM must be one of" in bad.stderr


@pytest.mark.parametrize("name", [n for n in _gemm.LIBRARIES if n != "numpy"])
def test_wrong_operands_are_refused_before_any_c_code(name):
    """A C library reads and writes by the shapes and dtypes it is told: every wrapper around one
    checks them (NumPy's ``matmul`` checks its own)."""
    gemm = _library_or_skip(name)
    a, b = np.ones((3, 4)), np.ones((4, 2))
    with pytest.raises(ValueError, match="do not give"):
        gemm(a, b, np.empty((3, 3)))
    with pytest.raises(ValueError, match="do not give"):
        gemm(a, np.ones((5, 2)), np.empty((3, 2)))
    with pytest.raises(TypeError, match="one dtype"):
        gemm(a.astype(np.float32), b, np.empty((3, 2)))
    with pytest.raises(TypeError, match="one dtype"):
        gemm(a.astype(np.int64), b.astype(np.int64), np.empty((3, 2), np.int64))
    frozen = np.empty((3, 2))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gemm(a, b, frozen)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_beside_parallel_kernels_run_on_the_tiles_in_the_calling_thread_only(dtype, monkeypatch):
    """Under beside_parallel_kernels, a product between LOCK_MIN and BESIDE_MAX multiply-adds that the
    choice gives to NumPy's BLAS runs on the tiles (no OpenBLAS call, so no OpenBLAS thread left
    spinning): the same product, within the order-of-additions tolerance, for plain and transposed
    operands; outside the context, above BESIDE_MAX, and in other threads, NumPy's BLAS as chosen."""
    import threading

    from fastlayers import _gemm

    rng = np.random.default_rng(0)
    seen = []
    calls = []
    real = np.matmul

    def counting(a, b, out=None):
        calls.append(a.shape[0] * a.shape[1] * b.shape[1])
        return real(a, b, out=out)

    monkeypatch.setattr(np, "matmul", counting)
    monkeypatch.setenv("FASTLAYERS_GEMM", "numpy")  # the rule concerns NumPy's BLAS
    monkeypatch.setattr(_gemm, "_choice", _gemm._Choice())
    monkeypatch.setattr(_gemm, "_fast", {})
    monkeypatch.setattr(_gemm, "_tiny", {})
    monkeypatch.setattr(_gemm, "DIRECT", {})
    for m, k, n in [(100, 1024, 50), (1024, 100, 50), (100, 50, 1024), (33, 2000, 70), (100, 4320, 100)]:
        assert _gemm.LOCK_MIN <= m * n * k < _gemm.BESIDE_MAX
        for a in (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, m)).astype(dtype).T):
            b = rng.standard_normal((k, n)).astype(dtype)
            want = a @ b
            out = np.full((m, n), np.nan, dtype)
            calls.clear()
            _gemm.matmul(a, b, out)
            assert calls == [m * n * k]  # outside: NumPy's one product
            out[...] = np.nan
            calls.clear()
            with _gemm.beside_parallel_kernels():
                with _gemm.beside_parallel_kernels():  # re-entrant
                    _gemm.matmul(a, b, out)
                assert _gemm._beside.depth == 1
                t = threading.Thread(target=lambda: seen.append(getattr(_gemm._beside, "depth", 0)))
                t.start()
                t.join()
            assert _gemm._beside.depth == 0
            assert calls == []  # the tiles: no BLAS call
            assert_close(out, want, "sum", n=k)
    assert seen == [0] * len(seen) and seen
    monkeypatch.setattr(_gemm, "BESIDE_MAX", 100 * 1024 * 50)  # at the bound: the BLAS again
    a, b = rng.standard_normal((100, 1024)).astype(dtype), rng.standard_normal((1024, 50)).astype(dtype)
    out = np.empty((100, 50), dtype)
    calls.clear()
    with _gemm.beside_parallel_kernels():
        _gemm.matmul(a, b, out)
    assert calls == [100 * 1024 * 50]
    assert_close(out, a @ b, "sum", n=1024)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_are_bit_identical_across_thread_counts_and_to_a_copied_transpose(dtype):
    """The tiles' products, a transposed right operand packed panel by panel included (above
    COPY_MAX_BYTES), give the same bits on one thread as on all, and the packed product gives the
    bits of the plain product of a copy of the transpose (each element the same sum in order)."""
    from fastlayers._kernels import _threads, dense

    tiles = _gemm.library("tiles")
    rng = np.random.default_rng(0)
    m, k, n = 101, 67, 700  # n * k above COPY_MAX_BYTES in both dtypes; past the parallel threshold
    assert k * n * np.dtype(dtype).itemsize >= _gemm.COPY_MAX_BYTES and m * n * k >= dense.matmul_nt.parallel_min
    a = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    at = np.ascontiguousarray(a.T)
    b = rng.standard_normal((k, n)).astype(dtype)

    def products():
        outs = [np.full((m, n), np.nan, dtype) for _ in range(4)]
        tiles(a, w.T, outs[0])  # packed panels
        tiles(a, b, outs[1])
        tiles(at.T, b, outs[2])  # a transposed left operand
        tiles(at.T, w.T, outs[3])  # both transposed: the right one copied
        return outs

    everyone = products()
    threads = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        alone = products()
    finally:
        fl.set_num_threads(threads)
    for x, y in zip(everyone, alone, strict=True):
        np.testing.assert_array_equal(x, y)
    copied = np.full((m, n), np.nan, dtype)
    _threads.launch(dense.matmul, m * n * k, a, np.ascontiguousarray(w.T), copied)
    np.testing.assert_array_equal(everyone[0], copied)
    assert_close(everyone[0], a @ w.T, "sum", n=k)
    assert_close(everyone[3], a @ w.T, "sum", n=k)
