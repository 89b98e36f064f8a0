"""Threading layer choice and the launch policy: serial or parallel twin, and when to hold a lock.

- ``tbb`` is the layer we want (thread-safe and fork-safe). pip's ``tbb`` wheel puts ``libtbb.so.12``
  in ``<prefix>/lib``, where Numba does not look; we load it with ``RTLD_GLOBAL`` before the first
  parallel launch so that Numba's default order (tbb, omp, workqueue) finds it.
- ``omp`` (GNU OpenMP) is thread-safe but a forked child that runs a parallel region after its parent
  did is killed by libgomp. After a fork, the child therefore runs serial twins only. When tbb cannot
  be loaded (so that Numba may fall back to omp) we default ``OMP_WAIT_POLICY`` to ``PASSIVE``
  (unless the user set it); we leave it alone otherwise, since it applies to every OpenMP library in
  the process.
- ``workqueue`` aborts the process when two threads launch parallel kernels at once; when it is the
  layer in use, parallel launches are serialized by a lock.

A user's ``NUMBA_THREADING_LAYER`` is respected.

Numba itself is imported by :func:`load_numba` at the first kernel call, not when fastlayers is
imported (importing Numba and starting its compiler costs a few hundred ms: docs/PERFORMANCE.md,
"Start-up"); libtbb is loaded just before, and the ``import scipy`` of Numba's version check is
left out (:func:`_import_numba_without_scipy`). ``numba.np.arraymath`` is imported only before
fastlayers compiles a kernel (:func:`before_compiling`), without the ``scipy.linalg`` import of its
BLAS check (:func:`_load_arraymath_without_scipy_linalg`).

BLAS: fastlayers' matrix products take turns under :data:`BLAS_LOCK` (OpenBLAS calls from several
Python threads at once collapse, and its thread count is process-wide), while the Numba kernels
still run concurrently. The measurements behind these choices: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path

_THREAD_SAFE_LAYERS = ("tbb", "omp")
_layer_checked = False
_layer_safe = False
_launch_lock = threading.Lock()
_forked_child = False
#: Held around fastlayers' BLAS calls (see the module docstring); re-created in a forked child.
BLAS_LOCK = threading.RLock()
TBB_PRELOADED: str | None = None


def _tbb_candidates() -> list[Path]:
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")}
    found = []
    for prefix in filter(None, prefixes):
        found.extend(sorted(Path(prefix, "lib").glob("libtbb.so.12*")))
    return found


def _preload_tbb() -> str | None:
    """Load pip's libtbb globally so that Numba's tbb threading layer can find it."""
    import ctypes

    for path in _tbb_candidates():
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return str(path)
    return None


def _configure() -> None:
    global TBB_PRELOADED
    if os.environ.get("NUMBA_THREADING_LAYER", "default") in ("default", "safe", "threadsafe", "forksafe", "tbb"):
        TBB_PRELOADED = _preload_tbb()
    if TBB_PRELOADED is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _after_fork_in_child() -> None:
    global _forked_child, BLAS_LOCK, _launch_lock
    _forked_child = True
    BLAS_LOCK = threading.RLock()  # a lock held by another thread at the fork would never be released
    _launch_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_numba_lock = threading.Lock()
_numba_module = None
#: Numba versions whose loading :func:`_load_arraymath_without_scipy_linalg` was checked with (the
#: range ``pyproject.toml`` requires; ``_numba.SUPPORTED`` is this tuple)
NUMBA_SUPPORTED: tuple[str, str] = ("0.60", "0.69")
#: the modules Numba's BLAS check imports, hidden from that one import
_HIDDEN = "scipy.linalg"


class _HideFromThisThread:
    """A ``sys.meta_path`` finder that makes the package ``package`` (default ``scipy.linalg``) and
    its submodules look absent to imports made by one thread; imports by every other thread are left
    alone (it returns None). Packages imported already are not looked up again, so they stay."""

    def __init__(self, package: str = _HIDDEN) -> None:
        self.thread = threading.get_ident()
        self.package = package
        self.hidden: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if threading.get_ident() == self.thread and (name == self.package or name.startswith(self.package + ".")):
            self.hidden.append(name)
            raise ModuleNotFoundError(f"{name} hidden while fastlayers loads Numba", name=name)
        return None


def _import_numba_without_scipy():
    """``import numba`` without the ``import scipy`` that Numba's ``_ensure_critical_deps`` makes only
    to refuse a SciPy older than 1.0 (importing SciPy is a noticeable part of the first kernel call
    when it is installed: docs/PERFORMANCE.md, "Start-up"); nothing else in Numba's import reads SciPy
    (``tests/test_numba_machinery.py`` holds that). SciPy stays importable: the finder hides it from
    this one import in this one thread, and a later ``import scipy`` anywhere finds it. When SciPy is
    imported already, nothing is hidden. Should the hidden import ever make Numba's import fail, Numba
    is imported again with nothing hidden. Skipped with it: the refusal of SciPy 0.x, which predates
    every NumPy that Numba's supported range accepts."""
    if "scipy" in sys.modules or "numba" in sys.modules:
        import numba

        return numba
    return _import_hiding("numba", "scipy")[0]


def _import_hiding(name: str, package: str):
    """(module ``name``, the names hidden) after importing ``name`` while ``package`` looks absent to
    this thread (:class:`_HideFromThisThread`); should the hidden import make that import fail, the
    module is imported again with nothing hidden (and no name is reported hidden)."""
    finder = _HideFromThisThread(package)
    # rebinding (not inserting into) sys.meta_path: another thread iterating the old list is undisturbed
    sys.meta_path = [finder, *sys.meta_path]
    try:
        module = importlib.import_module(name)
    except ImportError:
        if not finder.hidden:
            raise
        module = None  # something there needed the package after all: import it as it would be
    finally:
        sys.meta_path = [f for f in sys.meta_path if f is not finder]
    if module is None:
        return importlib.import_module(name), []
    return module, finder.hidden


class _BlasCheckedOnFirstUse:
    """Stands for ``numba.np.arraymath._HAVE_BLAS`` (read as ``if not _HAVE_BLAS``): the check Numba
    runs at import, run at the first read instead, once."""

    def __init__(self, check) -> None:
        self._check = check
        self._value: bool | None = None

    def __bool__(self) -> bool:
        if self._value is None:
            self._value = bool(self._check())
        return self._value

    def __repr__(self) -> str:
        state = "not checked yet" if self._value is None else self._value
        return f"<_HAVE_BLAS checked on first use: {state}>"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _load_arraymath_without_scipy_linalg(numba) -> bool:
    """Import ``numba.np.arraymath`` without the ``scipy.linalg`` import its BLAS check makes.

    At import, that module sets ``_HAVE_BLAS = _check_blas()``, which imports ``scipy.linalg`` (a
    large share of a first compilation's set-up when SciPy is installed: docs/PERFORMANCE.md,
    "Start-up") only to know whether Numba's own ``np.dot``/``np.linalg`` support has a BLAS; no
    fastlayers kernel uses it. We import the module while ``scipy.linalg`` looks absent to this
    thread, then replace the False that the check gave with :class:`_BlasCheckedOnFirstUse`, which
    runs Numba's check when Numba first reads it (compiling a user's ``np.correlate``, say). Numba's
    ``np.dot`` and ``np.linalg`` call ``ensure_blas`` when they compile, which imports
    ``scipy.linalg`` then, as before.

    Does nothing (returns False) when the module is imported already, when ``scipy.linalg`` is
    (nothing to save), with ``NUMBA_DISABLE_JIT=1`` (nothing compiles: the module may never be
    needed), or with a Numba outside :data:`NUMBA_SUPPORTED`; when the hidden import made the
    module's import fail, imports it again with nothing hidden. Returns whether it hid the import."""
    if "numba.np.arraymath" in sys.modules or _HIDDEN in sys.modules or numba.config.DISABLE_JIT:
        return False
    low, high = NUMBA_SUPPORTED
    if not _version(low) <= _version(numba.__version__) < _version(high):
        return False
    arraymath, hidden = _import_hiding("numba.np.arraymath", _HIDDEN)
    if hidden and arraymath._HAVE_BLAS is False:
        arraymath._HAVE_BLAS = _BlasCheckedOnFirstUse(arraymath._check_blas)
    return bool(hidden)


def load_numba():
    """Numba, imported on first use, with libtbb loaded first (:func:`_configure`) and without the
    ``import scipy`` of its version check (:func:`_import_numba_without_scipy`). Every module of
    fastlayers outside the kernels gets Numba from here. ``numba.np.arraymath`` is not imported
    here: loading cached kernels never needs it, and before fastlayers compiles one,
    :func:`before_compiling` imports it without ``scipy.linalg``."""
    global _numba_module
    if _numba_module is None:
        with _numba_lock:
            if _numba_module is None:
                _configure()
                _numba_module = _import_numba_without_scipy()
    return _numba_module


def before_compiling() -> None:
    """Called by the kernels' loader before fastlayers compiles a kernel (a cache miss, or no
    cache): Numba's compiler set-up imports ``numba.np.arraymath``, so it is imported first through
    :func:`_load_arraymath_without_scipy_linalg`. Cheap when done already."""
    if "numba.np.arraymath" not in sys.modules:
        numba = load_numba()
        with _numba_lock:
            _load_arraymath_without_scipy_linalg(numba)


def numba_loaded() -> bool:
    """Whether Numba has been imported (by fastlayers or by anyone else in the process)."""
    return "numba" in sys.modules


def num_threads_limit() -> int:
    """The number of threads Numba starts with (``NUMBA_NUM_THREADS``, default: the CPUs this
    process may run on), read without importing Numba when it is not loaded yet."""
    if numba_loaded():
        return load_numba().config.NUMBA_NUM_THREADS
    try:
        return max(1, int(os.environ["NUMBA_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def threading_layer() -> str | None:
    """The threading layer Numba chose, or None before the first parallel launch."""
    if not numba_loaded():
        return None
    try:
        return load_numba().threading_layer()
    except ValueError:
        return None


def launch(kernel, size: int, *args):
    """Run ``kernel`` (a :class:`~fastlayers._kernels._numba.Twins`) on ``args``.

    The serial twin runs below the kernel's ``parallel_min`` elements (it keeps the GIL: such a call
    is short), and in a forked child on the ``omp`` layer; otherwise the parallel twin runs (it
    releases the GIL), under a lock when the threading layer is not thread-safe. With one thread
    (``fastlayers.set_num_threads(1)``, ``NUMBA_NUM_THREADS=1``) the parallel twin runs on that one
    thread, so that a long call still lets other Python threads run. Returns what the kernel returns.
    """
    global _layer_checked, _layer_safe
    if size < kernel.parallel_min or (_forked_child and threading_layer() == "omp"):
        return kernel.serial(*args)  # libgomp kills a forked child that opens a parallel region
    if _layer_checked and _layer_safe:
        return kernel.parallel(*args)
    with _launch_lock:
        result = kernel.parallel(*args)
        _layer_safe = threading_layer() in _THREAD_SAFE_LAYERS
        _layer_checked = True
    return result
