"""What this process runs on (``python -m fastlayers info``): versions, CPU, backend, threads,
BLAS, GEMM choice, cache. The command line (:mod:`fastlayers.__main__`) and the Dask workers
(:func:`fastlayers.dask.worker_info`) both ask it here, so that neither imports the other."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

from . import _gemm


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in the process (threadpoolctl, when installed), else NumPy's BLAS as
    built."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        return [{"internal_api": blas.get("name"), "version": blas.get("version")}]
    keys = ("internal_api", "version", "num_threads", "threading_layer")
    return [{k: d.get(k) for k in keys} for d in threadpool_info() if d.get("user_api") == "blas"]


def info(kernels: bool = True) -> dict:
    """What this process runs on: versions, CPU, backend, threads, BLAS, GEMM choice, cache.

    With ``kernels`` (``info --kernels``; ``bench`` and a Dask worker ask for it) Numba and every
    kernel module are loaded and one parallel kernel runs, so that the threading layer, the threads in
    use and the parallel thresholds are known. Without it nothing is loaded: fields that need Numba
    report what this process has so far (``numba_loaded``; the layer is None until a parallel kernel
    has run).
    """
    from importlib.metadata import version

    from . import __version__, _kernels, get_backend, get_num_threads
    from ._kernels import _threads

    extra: dict = {}
    if kernels:
        from ._kernels import load_all

        twins = load_all()
        _numba = sys.modules["fastlayers._kernels._numba"]
        probe = np.zeros(16)
        next(k for k in twins if k.name == "relu_forward").parallel(probe, probe)  # Numba picks its layer
        extra = {"uncached_kernels": _numba.UNCACHED, "parallel_min": {k.name: k.parallel_min for k in twins}}
    return {
        "fastlayers": __version__,
        "cpu": _gemm.cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": version("numba"),
        "numba_loaded": _threads.numba_loaded(),
        "backend": get_backend(),
        "threading_layer": _threads.threading_layer(),
        "tbb_preloaded": _threads.TBB_PRELOADED,
        "numba_num_threads": _threads.num_threads_limit(),
        "threads_in_use": get_num_threads(),
        "cpu_count": os.cpu_count(),
        "blas": blas_info(),
        "gemm_libraries": _gemm.available(),
        "gemm": _gemm.choice(),
        "cache_enabled": _kernels.CACHE_ENABLED,
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR") or "(next to the sources, else the user cache dir)",
        **extra,
    }


def format_info(data: dict) -> str:
    """:func:`info` as a two-column table for people (``--json`` gives the dict itself)."""
    lines = []

    def row(key: str, value) -> None:
        lines.append(f"{key:<22} {value}")

    for key, value in data.items():
        if key == "blas":
            for i, lib in enumerate(value or [{}]):
                desc = ", ".join(f"{k} {v}" for k, v in lib.items() if v is not None) or "(threadpoolctl not installed)"
                row("blas" if i == 0 else "", desc)
        elif key == "gemm":
            row("gemm chosen by", value["source"])
            for i, (cls, name) in enumerate(value["choice"].items()):
                row("gemm" if i == 0 else "", f"{cls:<16} {name}")
        elif key == "parallel_min":
            groups: dict[int, list[str]] = {}
            for name, n in value.items():
                groups.setdefault(n, []).append(name)
            for i, (n, names) in enumerate(sorted(groups.items())):
                row("parallel from" if i == 0 else "", f"{n:>8,} elements: {', '.join(names)}")
        elif isinstance(value, list):
            row(key, ", ".join(map(str, value)) or "none")
        else:
            row(key, "-" if value is None else value)
    return "\n".join(lines)
