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
imported (importing Numba and starting its compiler costs most of a second: docs/PERFORMANCE.md,
"Start-up"); libtbb is loaded just before.

BLAS: fastlayers' matrix products take turns under :data:`BLAS_LOCK` (OpenBLAS calls from several
Python threads at once collapse, and its thread count is process-wide), while the Numba kernels
still run concurrently. The measurements behind these choices: docs/PERFORMANCE.md.
"""

from __future__ import annotations

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


def load_numba():
    """Numba, imported on first use, with libtbb loaded first (:func:`_configure`). Every module of
    fastlayers outside the kernels gets Numba from here."""
    global _numba_module
    if _numba_module is None:
        with _numba_lock:
            if _numba_module is None:
                _configure()
                import numba

                _numba_module = numba
    return _numba_module


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
