"""Compile flags for every kernel, in one place, and the serial/parallel twin builder.

Flags (the same for every kernel; tests check that no kernel sets its own):

- ``error_model="numpy"`` on serial and parallel twins alike: ``prange`` bodies always use the NumPy
  error model, so a serial twin compiled with the default ``"python"`` model would disagree with its
  parallel twin on division by zero and would not vectorize divisions.
- ``fastmath={"contract"}`` only: lets LLVM fuse a multiply and an add into one FMA (one rounding
  instead of two; sigmoid forward 20% faster, accuracy unchanged). Nothing else: ``nnan``/``ninf``
  would break NaN propagation and the exact saturation of the sigmoid, ``reassoc`` would make
  reductions depend on the compiler's order. The kernels vectorize without it (the exp in ``_math``
  needs no libm call; reductions use explicit lanes).
- ``cache=True`` when Numba can find a writable cache location (``NUMBA_CACHE_DIR``, the package's
  ``__pycache__``, or the user-wide cache directory). Where it cannot (read-only install and read-only
  home), Numba raises at decoration time; we then compile without caching so that ``import
  fastlayers`` still works. ``FASTLAYERS_NO_CACHE=1`` switches caching off.
- A damaged cache (a truncated index file, an unreadable data file) is a cache miss, not an error:
  :class:`_TolerantCache` discards the index and the kernel is compiled and cached afresh.
- Numba keys its cache on a function's own bytecode and its file's time stamp, not on the compile
  flags nor on the helpers it inlines from other files (``_math``). Every cached name therefore
  carries :data:`TAG`, a hash of the flags (``NUMBA_BOUNDSCHECK`` included) and of all sources in this
  package, so that changing either compiles afresh instead of loading stale machine code.
"""

from __future__ import annotations

import hashlib
import os
import threading
import types
from collections.abc import Callable
from pathlib import Path

import numba
from numba.core.caching import FunctionCache

FLAGS: dict = {"error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
CACHE_ENABLED: bool = os.environ.get("FASTLAYERS_NO_CACHE", "") in ("", "0")


def _tag() -> str:
    digest = hashlib.sha256(
        repr(sorted((k, sorted(v) if isinstance(v, set) else v) for k, v in FLAGS.items())).encode()
    )
    # NUMBA_BOUNDSCHECK=1 compiles checked code: cached apart, or a checked run would load unchecked code
    digest.update(f"boundscheck={numba.config.BOUNDSCHECK}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


#: Suffix of every compiled function's name: changes with the flags or any kernel source.
TAG: str = _tag()

#: Every function compiled through :func:`jit`, and those that could not be cached, by name.
COMPILED: list[str] = []
UNCACHED: list[str] = []
#: Every kernel defined with :func:`twins`.
ALL_TWINS: list = []


def _copy_function(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` with its own qualified name, so that Numba caches it under its own index."""
    new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__ + suffix
    new.__doc__ = fn.__doc__
    new.__module__ = fn.__module__
    return new


class _TolerantCache(FunctionCache):
    """Numba's per-function cache, with a damaged index or data file treated as a miss."""

    def _discard_index(self) -> None:
        try:
            os.remove(self._cache_file._index_path)
        except OSError:
            pass

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception:  # truncated pickle, EOF, unreadable file: recompile instead
            self._discard_index()
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception:
            self._discard_index()
            try:
                super().save_overload(sig, data)
            except Exception:  # caching only saves time: a failed save must not fail the call
                pass


def jit(fn: Callable, parallel: bool = False, suffix: str = ""):
    """Compile a copy of ``fn`` named with ``suffix`` and :data:`TAG`, with the project's flags,
    caching it when a cache location exists."""
    fn = _copy_function(fn, f"{suffix}_{TAG}")
    COMPILED.append(fn.__qualname__)
    if CACHE_ENABLED:
        try:
            dispatcher = numba.njit(parallel=parallel, cache=True, **FLAGS)(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if "no locator" not in str(exc):
                raise
            UNCACHED.append(fn.__qualname__)
        else:
            dispatcher._cache = _TolerantCache(dispatcher.py_func)
            return dispatcher
    return numba.njit(parallel=parallel, cache=False, **FLAGS)(fn)


def is_cached(dispatcher) -> bool | None:
    """Whether ``dispatcher`` (from :func:`jit`) has machine code in the cache already: True, False,
    or None when that cannot be told (caching off, or Numba's cache internals look different)."""
    try:
        return os.path.exists(dispatcher._cache._cache_file._index_path)
    except AttributeError:
        return None


class Twins:
    """A kernel compiled twice from one Python function: ``serial`` and ``parallel``.

    The two dispatchers are built on first use, not at import, so that ``import fastlayers`` does
    not pay for the kernels a program never calls (building a cached dispatcher costs milliseconds).
    Once built, each is a plain instance attribute (``__getattr__`` only runs while it is missing),
    so the per-call lookup costs no more than any attribute read.
    """

    def __init__(self, fn: Callable, parallel_min: int):
        self.name = fn.__name__
        self.py_func = fn
        self.parallel_min = parallel_min
        self._lock = threading.Lock()
        ALL_TWINS.append(self)

    def __getattr__(self, name: str):
        if name not in ("serial", "parallel"):
            raise AttributeError(name)
        with self._lock:  # compile (or load) each twin once, even when several threads ask at once
            if name not in self.__dict__:
                self.__dict__[name] = jit(self.py_func, parallel=name == "parallel", suffix="_" + name)
            return self.__dict__[name]

    def __repr__(self) -> str:
        return f"<kernel twins {self.name}>"


def twins(parallel_min: int) -> Callable[[Callable], Twins]:
    """Decorator: the serial and parallel versions of a kernel written with ``prange``.

    ``parallel_min``: the input size (elements) from which the parallel twin runs, measured per
    kernel on 2 cores (serial and parallel timed at powers of two; see ``launch``).
    """
    return lambda fn: Twins(fn, parallel_min)


def helper(fn: Callable):
    """Decorator for a small jitted function called from kernels (inlined by LLVM)."""
    return jit(fn, parallel=False)
