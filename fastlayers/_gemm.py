"""The one entry point for matrix products, :func:`matmul`, and the choice of the library behind it.

Libraries (each used only when installed; NumPy's BLAS is always there):

- ``numpy``: ``numpy.matmul`` with ``out=`` (NumPy's bundled OpenBLAS, or whatever NumPy was built with);
- ``mkl``: Intel oneMKL's ``cblas_?gemm`` from the ``mkl`` wheel (``pip install "fastlayers[mkl]"``),
  on MKL's TBB threading layer, so that its threads and Numba's tbb kernels share one pool of workers
  instead of spinning against each other;
- ``openblas``: a newer OpenBLAS from the ``scipy-openblas32`` wheel, through its ``cblas_?gemm``;
- ``blis``: BLIS through the ``blis`` package;
- ``tiles``: fastlayers' own register tiles (``_kernels/dense.py``: ``matmul``, ``matmul_tn``,
  ``matmul_nt``), always there, compiled with the other kernels; faster than a BLAS call for the
  small products of the classic nets (docs/PERFORMANCE.md, "Plans").

Which library serves a product is chosen per size class (:func:`size_class`, by the number of
multiply-adds) and dtype:

1. ``FASTLAYERS_GEMM=<library>`` in the environment uses that library for every product;
2. otherwise the choice measured by ``python -m fastlayers tune`` (:func:`tune`) on this machine,
   cached in a JSON file beside Numba's kernel cache and keyed by the CPU and the libraries' versions;
3. otherwise :data:`DEFAULT`: ``tiles`` for the tiny, small and medium classes, ``numpy`` above.

``python -m fastlayers info`` reports the choice and where it came from. Every library computes the
same products; results differ only by the rounding of the order of additions inside the product
(the tolerance ``sum`` of ``tests/conftest.py``: a few eps times the inner dimension).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import _kernels
from ._kernels import _threads

LIBRARIES = ("numpy", "mkl", "openblas", "blis", "tiles")
#: size classes, by multiply-adds of one product: below 2**20 (one to a few dozen rows through a
#: 784x50 layer: a served request), below 2**24, below 2**30, and above
CLASSES = ("tiny", "small", "medium", "large")
_BOUNDS = (1 << 20, 1 << 24, 1 << 30)
#: below this many multiply-adds (a 784x50 layer up to ~100 rows) a product takes no turn under the
#: BLAS lock: the lock's cost is a visible share of such a call, and request threads that queue on
#: it lose throughput (tools/serving.py: one shared net on 8 threads kept 0.57 of one thread's rows/s
#: at batch 100 without the lock, 0.53 with it; 0.95 against 0.46 at batch 8; docs/PERFORMANCE.md)
LOCK_MIN = 1 << 22

#: The ``tiles`` copy an operand given transposed (``W.T`` in ``dout @ W.T``) below this size, and
#: pack it a panel per thread at a time above (``_kernels/dense.matmul_nt``; docs/PERFORMANCE.md,
#: "Medium products on the tiles").
COPY_MAX_BYTES = 1 << 16

_lock = threading.Lock()  # loading a library
_loaded: dict[str, Callable | None] = {}

#: Products of at least :data:`LOCK_MIN` and fewer than ``BESIDE_MAX`` multiply-adds that run between
#: parallel kernels (a convnet's Affine layers, :func:`beside_parallel_kernels`) and that the choice
#: gives to a BLAS with its own pool of spinning threads (``numpy``, ``openblas``) run on the
#: ``tiles`` instead, whose threads are the convolution kernels' own: woken, OpenBLAS's threads keep
#: spinning after the product and take the two cores from the next convolution kernel
#: (docs/PERFORMANCE.md, "OpenBLAS's spinning threads and the convnets' steps"). Larger products
#: keep the BLAS.
BESIDE_MAX = 1 << 30
_beside = threading.local()


@contextmanager
def beside_parallel_kernels() -> Iterator[None]:
    """In the calling thread only, run the products of :data:`LOCK_MIN` to :data:`BESIDE_MAX`
    multiply-adds that the choice gives to OpenBLAS (NumPy's or the ``openblas`` library) on the
    ``tiles`` instead, so that no BLAS worker thread is left spinning against the next parallel
    kernel. For code whose products sit between parallel Numba kernels (the convnets' steps).
    Re-entrant; other threads are not affected."""
    depth = getattr(_beside, "depth", 0)
    _beside.depth = depth + 1
    try:
        yield
    finally:
        _beside.depth = depth


def size_class(m: int, n: int, k: int) -> str:
    """The size class of an (m, k) @ (k, n) product."""
    work = m * n * k
    for cls, bound in zip(CLASSES, _BOUNDS, strict=False):  # the last class has no bound
        if work < bound:
            return cls
    return CLASSES[-1]


# --------------------------------------------------------------------------------------------
# the libraries
# --------------------------------------------------------------------------------------------
def _numpy_gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b, out=out)


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _operand(a: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``a`` as a cblas operand: (array, transpose flag, leading dimension)."""
    if a.flags.c_contiguous:
        return a, _NO_TRANS, max(1, a.shape[1])
    if a.flags.f_contiguous:  # a transposed C array, as x.T in x.T @ dout
        return a, _TRANS, max(1, a.shape[0])
    a = np.ascontiguousarray(a)
    return a, _NO_TRANS, max(1, a.shape[1])


def _check(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Raise unless ``out[...] = a @ b`` is a product of 2-D arrays of one float dtype with fitting
    shapes and a writeable ``out``."""
    if not (a.ndim == b.ndim == out.ndim == 2):
        raise ValueError(f"matmul needs 2-D arrays, got shapes {a.shape}, {b.shape} and out {out.shape}")
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"shapes {a.shape} @ {b.shape} do not give out's shape {out.shape}")
    if not (a.dtype == b.dtype == out.dtype) or out.dtype not in (np.float32, np.float64):
        raise TypeError(f"matmul needs one dtype, float32 or float64; got {a.dtype}, {b.dtype}, {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def _cblas(lib: ctypes.CDLL, prefix: str) -> Callable:
    """``gemm(a, b, out)`` through the library's ``<prefix>sgemm`` / ``<prefix>dgemm`` (row-major
    cblas, 32-bit integers)."""
    fns = {}
    for letter, scalar, dtype in (("s", ctypes.c_float, np.float32), ("d", ctypes.c_double, np.float64)):
        fn = getattr(lib, f"{prefix}{letter}gemm")
        i = ctypes.c_int
        p = ctypes.c_void_p
        fn.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
        fn.restype = None
        fns[np.dtype(dtype)] = fn

    def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        _check(a, b, out)  # the C library reads and writes by these shapes and dtypes, unchecked
        m, k = a.shape
        n = b.shape[1]
        if not out.flags.c_contiguous or m == 0 or n == 0:
            np.matmul(a, b, out=out)
            return
        if k == 0:
            out[...] = 0
            return
        a, ta, lda = _operand(a)
        b, tb, ldb = _operand(b)
        fn = fns[out.dtype]
        fn(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out.ctypes.data, n)

    return gemm


def _load_mkl() -> Callable | None:
    candidates = sorted(Path(sys.prefix, "lib").glob("libmkl_rt.so*"))
    if not candidates:
        return None
    # read by MKL when it starts: 32-bit integers, and its threads from the same tbb runtime as
    # Numba's kernels (unless tbb could not be loaded, or the user chose otherwise)
    os.environ.setdefault("MKL_INTERFACE_LAYER", "LP64")
    if _threads.TBB_PRELOADED is not None:
        os.environ.setdefault("MKL_THREADING_LAYER", "TBB")
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return _cblas(lib, "cblas_")
    return None


def _load_openblas() -> Callable | None:
    try:
        import scipy_openblas32
    except ImportError:
        return None
    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so"))
    return _cblas(lib, "scipy_cblas_")


def _load_blis() -> Callable | None:
    try:
        from blis.py import gemm as blis_gemm
    except ImportError:
        return None

    def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        _check(a, b, out)
        if not out.flags.c_contiguous or 0 in a.shape or 0 in b.shape:
            np.matmul(a, b, out=out)
            return
        # C-ordered operands only: its transposed float64 products came out wrong here (blis 1.3.4)
        out.fill(0)  # BLIS reads ``out`` even with beta = 0: NaN or garbage there would survive
        blis_gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), out=out)

    return gemm


_NEED = 0x1 | 0x100  # NumPy's flag bits: C-contiguous, aligned
_OUT_NEED = _NEED | 0x400  # and writeable


def _load_tiles() -> Callable:
    dense = _kernels.lazy("dense")
    launch = _threads.launch

    def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        _check(a, b, out)  # the kernels index by these shapes, unchecked
        m, k = a.shape
        n = b.shape[1]
        if (
            out.flags.num & _OUT_NEED != _OUT_NEED  # out overlaps neither a nor b: the contract
            or m * n * k == 0
            or (m * n * k < LOCK_MIN and "numba" not in sys.modules)  # a small call does not wait for Numba
        ):
            np.matmul(a, b, out=out)
            return
        if b.flags.num & _NEED != _NEED:
            bt = b.T  # b given transposed, as W.T in dout @ W.T
            if bt.flags.num & _NEED != _NEED:
                np.matmul(a, b, out=out)
                return
            if a.flags.num & _NEED == _NEED and k * n * out.itemsize >= COPY_MAX_BYTES:
                kernel = dense.matmul_nt  # large: packed panel by panel, never copied whole
                cols = dense.PANEL_BYTES // out.itemsize
                tasks = 1 if m * n * k < kernel.parallel_min else _threads.load_numba().get_num_threads()
                panels = np.empty((max(1, min(tasks, -(-n // cols))), k, cols), out.dtype)  # one per task
                launch(kernel, m * n * k, a, bt, out, panels)
                return
            b = np.ascontiguousarray(b)  # small (faster than packing panels), or ``a`` transposed too
        if a.flags.num & _NEED == _NEED:
            launch(dense.matmul, m * n * k, a, b, out)
        elif a.T.flags.num & _NEED == _NEED:  # a transposed C array, as x.T in x.T @ dout
            launch(dense.matmul_tn, m * n * k, a.T, b, out)
        else:
            np.matmul(a, b, out=out)

    return gemm


_LOADERS = {
    "numpy": lambda: _numpy_gemm,
    "mkl": _load_mkl,
    "openblas": _load_openblas,
    "blis": _load_blis,
    "tiles": _load_tiles,
}
#: The library of each size class when nothing else was chosen (measured: docs/PERFORMANCE.md,
#: "Plans" and "Medium products on the tiles"): fastlayers' tiles up to the medium class, NumPy's
#: BLAS above.
DEFAULT = {"tiny": "tiles", "small": "tiles", "medium": "tiles", "large": "numpy"}


def library(name: str) -> Callable | None:
    """The ``gemm(a, b, out)`` function of library ``name``, or None when it is not installed."""
    if name not in _LOADERS:
        raise ValueError(f"unknown GEMM library {name!r}; choose from {LIBRARIES}")
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = _LOADERS[name]()
            except (OSError, AttributeError):  # a broken install: as if absent
                _loaded[name] = None
        return _loaded[name]


def available() -> list[str]:
    """The libraries installed here, ``numpy`` first."""
    return [name for name in LIBRARIES if library(name) is not None]


# --------------------------------------------------------------------------------------------
# the choice
# --------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"numpy": np.__version__}
    for name, package in (("mkl", "mkl"), ("openblas", "scipy-openblas32"), ("blis", "blis")):
        try:
            found[name] = version(package)
        except PackageNotFoundError:
            pass
    return found


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What a measured choice is valid for: the CPU, the core count and the libraries' versions."""
    libs = ",".join(f"{k}={v}" for k, v in sorted(_versions().items()))
    return f"{cpu_model()}|{os.cpu_count()} cores|{platform.machine()}|{libs}"


def cache_file() -> Path:
    """Where :func:`tune` keeps its choice: beside Numba's cache (``NUMBA_CACHE_DIR``), else in the
    user cache directory (``XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "fastlayers", "gemm.json")


class _Choice:
    def __init__(self) -> None:
        self.table: dict[str, str] = {}  # "<class>/<dtype>" -> library
        self.source = "default"
        self.loaded = False


_choice = _Choice()


def _forced() -> str:
    name = os.environ.get("FASTLAYERS_GEMM", "").strip().lower()
    if name and name not in LIBRARIES:
        raise ValueError(f"FASTLAYERS_GEMM must be one of {LIBRARIES}, got {name!r}")
    return name


_forced()  # a bad value fails at import, not at the first product


def _load_choice() -> None:
    forced = _forced()
    if forced:
        _choice.table = {f"{c}/{d}": forced for c in CLASSES for d in ("float32", "float64")}
        _choice.source = "FASTLAYERS_GEMM"
    else:
        try:
            data = json.loads(cache_file().read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("machine") == machine_key():
            _choice.table = {k: v for k, v in data.get("choice", {}).items() if v in LIBRARIES}
            _choice.source = str(cache_file())
    _choice.loaded = True


def choice() -> dict[str, object]:
    """The library per size class and dtype, and where the choice came from."""
    if not _choice.loaded:
        _load_choice()
    table = {f"{c}/{d}": _choice.table.get(f"{c}/{d}", DEFAULT[c]) for c in CLASSES for d in ("float32", "float64")}
    return {"source": _choice.source, "choice": table}


def reset() -> None:
    """Forget the loaded choice (it is read again at the next product)."""
    _choice.table, _choice.source, _choice.loaded = {}, "default", False
    _fast.clear()
    _tiny.clear()
    DIRECT.clear()


_fast: dict[tuple[str, np.dtype], Callable] = {}
_tiny: dict[np.dtype, Callable] = {}  # the tiny class's entries of _fast, by dtype alone
#: dtype -> True when NumPy's BLAS serves that dtype's tiny class, so that a product below
#: :data:`LOCK_MIN` is a plain ``np.matmul`` (:func:`matmul` does exactly that). Filled at the first
#: product of each dtype; the fused layer passes read it to skip :func:`matmul`'s own call.
DIRECT: dict[np.dtype, bool] = {}


def _for(cls: str, dtype: np.dtype) -> Callable:
    gemm = _fast.get((cls, dtype))
    if gemm is None:
        if not _choice.loaded:
            _load_choice()
        name = _choice.table.get(f"{cls}/{dtype.name}", DEFAULT[cls])
        gemm = library(name) or _numpy_gemm  # a chosen library that has gone: NumPy's
        _fast[(cls, dtype)] = gemm
        if cls == "tiny":
            _tiny[dtype] = gemm
            DIRECT[dtype] = gemm is _numpy_gemm
    return gemm


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = a @ b`` for 2-D float32/float64 arrays of one dtype (``a`` and ``b`` may be
    transposed views), through the library chosen for the product's size class, under
    :data:`~fastlayers._kernels._threads.BLAS_LOCK`. ``out`` must not overlap ``a`` or ``b``.

    Raises
    ------
    ValueError, TypeError
        Shapes that do not fit, mixed or unsupported dtypes, a read-only ``out`` (checked by every
        library's wrapper before any C code runs).
    """
    m, k = a.shape
    n = b.shape[1]
    if m * n * k < LOCK_MIN:  # no turn under the lock (see LOCK_MIN)
        if DIRECT.get(out.dtype):
            np.matmul(a, b, out=out)  # the call the wrapper makes, without the wrapper
        else:
            (_tiny.get(out.dtype) or _for("tiny", out.dtype))(a, b, out)
        return out
    gemm = _for(size_class(m, n, k), out.dtype)
    if (
        getattr(_beside, "depth", 0)
        and m * n * k < BESIDE_MAX
        and (gemm is _numpy_gemm or gemm is _loaded.get("openblas"))
    ):
        gemm = library("tiles")
    with _threads.BLAS_LOCK:  # re-entrant: a caller may hold it around several products
        gemm(a, b, out)
    return out


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------
#: the products timed per size class: those of an Affine layer's forward and backward (N, D, M) at
#: the benchmark sizes, and for "tiny" the forward product of a served request of 1, 8 and 16 rows
#: through a 784x50 layer plus the main job's 32x64x50 layer forward and backward
TUNE_SHAPES: dict[str, list[tuple[int, int, int, str]]] = {
    "tiny": [(1, 784, 50, "forward"), (8, 784, 50, "forward"), (16, 784, 50, "forward"), (32, 64, 50, "affine")],
    "small": [(100, 784, 50, "affine")],
    "medium": [(256, 1024, 1000, "affine")],
    "large": [(1024, 4096, 1024, "affine")],
}


def affine_products(gemm: Callable, x, W, dout, out, dx, dW) -> None:
    """The three products of an Affine forward+backward (``x @ W``, ``dout @ W.T``, ``x.T @ dout``)
    through ``gemm``, into preallocated outputs, in one turn of the BLAS lock: the yardstick of
    :func:`measure` and of ``python -m fastlayers bench``."""
    with _threads.BLAS_LOCK:
        gemm(x, W, out)
        gemm(dout, W.T, dx)
        gemm(x.T, dout, dW)


def _best(run: Callable, args: tuple, seconds: float) -> float:
    run(*args)  # load, warm the thread pools
    best, spent, calls = float("inf"), 0.0, 0
    while spent < seconds or calls < 3:
        start = time.perf_counter()
        run(*args)
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best


def measure(seconds: float = 0.3, classes: tuple[str, ...] = CLASSES, dtypes=("float32", "float64")) -> dict:
    """Seconds per library for each size class and dtype, and for each shape timed in the class:
    ``{"<class>/<dtype>": {library: total}}`` and ``{"<class>/<dtype>/<N>x<D>x<M>": {library:
    seconds}}``. Each figure is the best of several batches, each library timed in blocks of its own;
    ``affine`` shapes time the three products of an Affine forward+backward, ``forward`` ones the
    forward product alone."""
    results: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for cls in classes:
        for dtype in dtypes:
            key = f"{cls}/{dtype}"
            results[key] = {}
            for n, d, m, what in TUNE_SHAPES[cls]:
                x = rng.standard_normal((n, d)).astype(dtype)
                W = rng.standard_normal((d, m)).astype(dtype)
                dout = rng.standard_normal((n, m)).astype(dtype)
                out, dx, dW = np.empty((n, m), dtype), np.empty((n, d), dtype), np.empty((d, m), dtype)
                shape_key = f"{key}/{n}x{d}x{m}"
                results[shape_key] = {}
                for name in available():
                    gemm = library(name)
                    args = (gemm, x, W, dout, out, dx, dW) if what == "affine" else (x, W, out)
                    best = _best(affine_products if what == "affine" else gemm, args, seconds)
                    results[shape_key][name] = best
                    results[key][name] = results[key].get(name, 0.0) + best
    return results


def tune(seconds: float = 0.3) -> dict:
    """Measure every installed library (:func:`measure`), keep the fastest per size class and dtype
    (NumPy's, unless another takes at most 0.97 of its time over the class and is not slower than it
    at any shape timed in the class), write the choice to :func:`cache_file` and use
    it from now on. Returns what was written."""
    times = measure(seconds)
    table = {}
    for key, by_library in times.items():
        if key.count("/") != 1:
            continue  # one shape of a class: judged below, with its class
        shapes = [v for k, v in times.items() if k.startswith(key + "/")]
        fast_enough = [
            name
            for name, total in by_library.items()
            if total < 0.97 * by_library["numpy"] and all(s[name] <= s["numpy"] for s in shapes)
        ]
        table[key] = min(fast_enough, key=by_library.get) if fast_enough else "numpy"
    data = {"machine": machine_key(), "choice": table, "seconds": times}
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(data, indent=2) + "\n").encode()
    from ._files import atomic_write

    atomic_write(path, lambda fh: fh.write(text))
    reset()
    return data
