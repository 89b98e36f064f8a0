"""Numba kernels and nothing else.

Every kernel takes arrays and scalars only, never validates and never allocates what the caller can
give it: validation and allocation happen in :mod:`fastlayers.functional`, whose modules mirror these.
Each kernel exists twice, built from one Python function by :func:`._numba.twins`: a serial version
for small inputs and a ``parallel=True`` version whose outer loop is a ``prange``; each module names
the size from which its parallel twins run, beside its kernels.

Modules: ``elementwise`` (ReLU, Sigmoid, and the ``copy`` yardstick), ``affine`` (bias add, bias
gradient), ``loss`` (softmax, cross-entropy loss and gradient), ``optim`` (optimizer updates),
``dense`` (the small dense nets' whole passes and the register-tiled products of the ``tiles`` GEMM
library),
``_math`` (a vectorizable exp), ``_blocks`` (the block pattern of the flat kernels), ``_numba`` (compile
flags, the twin builder, the cache fallback, and the helpers compiled in a special way), ``_threads``
(threading layer and launch policy). Every kernel is listed in ``_numba.ALL_TWINS``.

The modules above them reach a kernel module through :func:`lazy`: the module (and Numba with it,
through ``_threads.load_numba``) is imported at its first kernel call, not when fastlayers is
imported, and only the kernel modules a program calls are ever imported.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

#: False when ``FASTLAYERS_NO_CACHE=1``: kernels are compiled without Numba's cache (``_numba.jit``)
CACHE_ENABLED: bool = os.environ.get("FASTLAYERS_NO_CACHE", "") in ("", "0")

#: The register configurations of the tiles: vector bytes -> accumulators of every register tile.
#: 64-byte vectors where Numba compiles for AVX-512 (32 vector registers: 24 accumulators, the loaded
#: vectors and a broadcast), 32-byte vectors elsewhere (AVX2's 16 registers: 12 accumulators).
#: Tiles of 64-byte vectors on a 16-register CPU spill their accumulators to the stack
#: (docs/PERFORMANCE.md, "Tiles for the CPU's registers").
REGISTER_CONFIGS: dict[int, int] = {64: 24, 32: 12}


def _target_features() -> str:
    """The CPU features Numba compiles for, as Numba reads them: ``NUMBA_CPU_FEATURES`` when set,
    none for ``NUMBA_CPU_NAME=generic``, else the host's (llvmlite's)."""
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is not None:
        return features
    if os.environ.get("NUMBA_CPU_NAME", "").lower() == "generic":
        return ""
    from llvmlite import binding

    return binding.get_host_cpu_features().flatten()


@functools.cache
def vector_bytes() -> int:
    """Bytes of a vector in the register tiles of the kernels (a key of :data:`REGISTER_CONFIGS`):
    ``FASTLAYERS_VECTOR_BYTES`` when set (32 or 64; to test one configuration on a CPU made for
    the other, where it is correct but slower), else 64 where the compile target has AVX-512F,
    else 32. Fixed for the process at its first call.

    Raises
    ------
    ValueError
        ``FASTLAYERS_VECTOR_BYTES`` is set to anything but 32 or 64.
    """
    text = os.environ.get("FASTLAYERS_VECTOR_BYTES", "").strip()
    if text:
        if text not in ("32", "64"):
            raise ValueError(f"FASTLAYERS_VECTOR_BYTES must be 32 or 64, got {text!r}")
        return int(text)
    return 64 if "+avx512f" in _target_features().split(",") else 32


def accumulators() -> int:
    """Vector accumulators of every register tile in this process's configuration (:func:`vector_bytes`)."""
    return REGISTER_CONFIGS[vector_bytes()]


class LazyModule:
    """A kernel module, imported at the first read of one of its names.

    After that read its names are copied into the instance's ``__dict__``, so that every later read
    is a plain attribute lookup (``__getattr__`` runs only for names not found there).
    """

    def __init__(self, name: str) -> None:
        self.__dict__["_module_name"] = f"{__name__}.{name}"

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and introspection probes: never an import
            raise AttributeError(attr)
        _load_numba()
        module = importlib.import_module(self._module_name)
        self.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy kernel module {self._module_name}>"


#: every kernel module
MODULES = ("elementwise", "affine", "loss", "optim", "conv", "dropout", "batchnorm", "dense")


def load_all() -> list:
    """Import every kernel module (and Numba); returns ``_numba.ALL_TWINS``, every kernel."""
    _load_numba()
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
    return importlib.import_module(f"{__name__}._numba").ALL_TWINS


def _load_numba() -> None:
    """Numba through :func:`._threads.load_numba` (libtbb first, SciPy left out of Numba's import),
    before a kernel module's own ``from numba import ...`` would import it plainly."""
    from ._threads import load_numba

    load_numba()


def lazy(name: str) -> LazyModule:
    """The kernel module ``fastlayers._kernels.<name>``, imported at its first use."""
    return LazyModule(name)
