"""``python -m fastlayers bench``: each layer's forward+backward against its yardsticks, in one process.

For every layer and size it times, as medians of batches of calls through each library's own API
(outputs allocated per call, the way that API does), the following in turn, round by round, so that
they see the same load on a shared machine (PyTorch apart, see :func:`interleaved_medians`):

- fastlayers (backend ``numba``) and the NumPy reference path (backend ``numpy``): the speed-up;
- PyTorch's CPU operators for the same work, when ``torch`` is importable;
- the hardware limit: for memory-bound layers a parallel copy (the ``copy`` kernel, into a
  preallocated buffer) of the same number of bytes the layer reads and writes, giving achieved and
  copy GB/s; for Affine the time of its three matrix products alone (NumPy/BLAS, preallocated).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ._backend import get_backend, use_backend
from ._kernels import elementwise
from ._table import CASES, Case

#: shapes timed per row name, from the table of layers
SIZES = {name: case.sizes for name, case in CASES.items()}


@dataclass
class Row:
    layer: str
    shape: str
    dtype: str
    fastlayers_us: float
    reference_us: float
    speedup: float
    torch_us: float | None
    vs_torch: float | None  # fastlayers time / torch time: below 1 is faster than PyTorch
    limit: str  # what the hardware limit is: "copy" or "3 GEMMs"
    limit_us: float | None
    vs_limit: float | None  # fastlayers time / limit time
    gbps: float | None
    copy_gbps: float | None


def _batch_size(fn: Callable[[], object], min_batch: float) -> int:
    """Calls per batch so that one batch of ``fn`` lasts at least ``min_batch`` seconds."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= min_batch or number >= 1 << 16:
            return number
        number *= 2


def interleaved_medians(
    entries: dict[str, tuple[Callable[[], object], str | None]],
    min_batch: float = 0.005,
    rounds: int = 9,
    apart: tuple[str, ...] = ("torch",),
) -> dict[str, float]:
    """Median seconds per call of each ``(callable, backend)`` entry.

    The entries are timed round-robin: each round runs one batch of every entry in turn
    (``backend``, when not None, is selected outside the timed region), so that they all see the
    same load; on a shared, noisy machine the ratios between them hold much better than with one
    entry timed after the other. Each timed batch follows an untimed one of the same entry, to wake
    its thread pools.

    The entries named in ``apart`` (PyTorch's) are timed afterwards, all their rounds in one block:
    its OpenMP threads and OpenBLAS's take the cores from each other when interleaved (see
    docs/PERFORMANCE.md). In use, nobody alternates the two libraries every few milliseconds.
    """
    numbers = {}
    for name, (fn, backend) in entries.items():
        with use_backend(backend or get_backend()):
            numbers[name] = _batch_size(fn, min_batch)
    samples: dict[str, list[float]] = {name: [] for name in entries}

    def batch(name: str) -> None:
        fn, backend = entries[name]
        with use_backend(backend or get_backend()):
            number = numbers[name]
            for _ in range(number):
                fn()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)

    together = [name for name in entries if name not in apart]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name in together:
                batch(name)
        for name in entries:
            if name in apart:
                for _ in range(rounds):
                    batch(name)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: float(np.median(values)) for name, values in samples.items()}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _copy_fn(nbytes: int, dtype) -> Callable[[], object]:
    """The parallel copy kernel reading and writing ``nbytes`` in all (half each way)."""
    n = max(1, nbytes // 2 // np.dtype(dtype).itemsize)
    src = np.ones(n, dtype)
    dst = np.empty_like(src)
    return lambda: elementwise.copy.parallel(src, dst)


def bench_case(case: Case, shape: tuple, dtype, torch) -> Row:
    """One row: ``case`` (an entry of the table of layers) at ``shape``, forward+backward through
    the classic API on both backends, against PyTorch (when given) and the hardware limit."""
    inputs = case.inputs(shape, np.dtype(dtype), np.random.default_rng(0))
    entries = {}
    for name, backend in (("fast", "numba"), ("ref", "numpy")):
        with use_backend(backend):
            entries[name] = (case.calls(case.build(inputs), inputs)[2], backend)
    if case.limit == "copy":
        nbytes = case.bytes_moved(inputs)
        entries["limit"] = (_copy_fn(nbytes, dtype), None)
    elif case.limit == "3 GEMMs":
        nbytes = None
        entries["limit"] = (_gemms_fn(inputs), None)
    else:
        nbytes = None
    if torch is not None and case.torch is not None:
        entries["torch"] = (case.torch(torch, inputs)[2], None)
    return _row(case.name, shape, dtype, interleaved_medians(entries), case.limit, nbytes)


def _gemms_fn(a: dict) -> Callable[[], object]:
    """The three matrix products of an Affine forward+backward alone, into preallocated outputs."""
    x, W, dout = a["x"], a["W"], a["dout"]
    out, dx, dW = np.empty_like(dout), np.empty_like(x), np.empty_like(W)

    def gemms():
        np.matmul(x, W, out=out)
        np.matmul(dout, W.T, out=dx)
        np.matmul(x.T, dout, out=dW)

    return gemms


def _row(layer, shape, dtype, times: dict[str, float], limit, nbytes) -> Row:
    us = 1e6
    fast, ref, t_torch, t_limit = times["fast"], times["ref"], times.get("torch"), times.get("limit")
    return Row(
        layer=layer,
        shape="x".join(str(s) for s in shape),
        dtype=np.dtype(dtype).name,
        fastlayers_us=fast * us,
        reference_us=ref * us,
        speedup=ref / fast,
        torch_us=None if t_torch is None else t_torch * us,
        vs_torch=None if t_torch is None else fast / t_torch,
        limit=limit,
        limit_us=None if t_limit is None else t_limit * us,
        vs_limit=None if t_limit is None else fast / t_limit,
        gbps=None if nbytes is None else nbytes / fast / 1e9,
        copy_gbps=None if nbytes is None or t_limit is None else nbytes / t_limit / 1e9,
    )


def run(
    dtype="float32", layers_wanted: list[str] | None = None, sizes: str = "all", report: Callable | None = None
) -> list[Row]:
    """All benchmark rows for ``dtype``; ``sizes`` is "all" or "small" (the classic sizes only).
    ``report(done, total, layer, shape)`` is called before each row (progress for people)."""
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())  # the same threads for both libraries
    rows = []
    todo = [
        (layer, shape)
        for layer, shapes in SIZES.items()
        if not layers_wanted or layer in layers_wanted
        for shape in (shapes[:1] if sizes == "small" else shapes)
    ]
    for done, (layer, shape) in enumerate(todo):
        if report is not None:
            report(done, len(todo), layer, shape)
        rows.append(bench_case(CASES[layer], shape, dtype, torch))
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'layer':13s} {'shape':17s} {'dtype':8s} {'fastlayers':>11s} {'reference':>11s} {'speed-up':>8s} "
        f"{'torch':>11s} {'fl/torch':>8s} {'limit':>8s} {'limit us':>10s} {'fl/limit':>8s} {'GB/s':>6s} "
        f"{'copy GB/s':>9s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.layer:13s} {r.shape:17s} {r.dtype:8s} {r.fastlayers_us:9.1f}us {r.reference_us:9.1f}us "
            f"{r.speedup:7.1f}x {_fmt(r.torch_us, '9.1f') + 'us' if r.torch_us else '-':>11s} "
            f"{_fmt(r.vs_torch, '8.2f'):>8s} {r.limit:>8s} {_fmt(r.limit_us, '10.1f'):>10s} "
            f"{_fmt(r.vs_limit, '8.2f'):>8s} {_fmt(r.gbps, '6.1f'):>6s} {_fmt(r.copy_gbps, '9.1f'):>9s}"
        )
    return "\n".join(lines)


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
