"""``python -m fastlayers bench``: each row of the table of layers against its yardsticks, in one
process.

For every row and size it times batches of calls through each library's own API (outputs allocated
per call, the way that API does), and reports the median, the range (min-max) and the number of
batches timed:

- fastlayers (backend ``numba``) and its NumPy reference path (backend ``numpy``): the speed-up;
- the same work written in idiomatic NumPy (``np.maximum(x, 0)``, ``x @ W + b``: the table's
  ``numpy`` entry);
- PyTorch's CPU operators for the same work, when ``torch`` is importable, and for the training
  step also ``torch.compile`` of the model, where it compiles;
- the hardware limit: for memory-bound layers a parallel copy (the ``copy`` kernel, into a
  preallocated buffer) of the same number of bytes the layer reads and writes, giving achieved and
  copy GB/s; for Affine the time of its three matrix products alone (preallocated); for the
  convolutions and the convnets' steps the time their products' floating-point operations take at
  the rate NumPy's BLAS reaches on a large product (:func:`gemm_rate`, measured in the same run),
  giving the achieved GFLOP/s and its fraction of that rate (the roofline of a compute-bound call).

fastlayers, its reference, NumPy and the limit are timed round-robin, batch by batch, so that they
see the same load on a shared machine; PyTorch's entries, and in the rows with matrix products the
entries whose products run on NumPy's BLAS, are timed in blocks of their own, which alternate with
blocks of the others (see :func:`interleaved_samples` and :func:`apart_entries`).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _gemm
from ._backend import get_backend, use_backend
from ._kernels import elementwise
from ._table import CASES, Case, step_torch_compile

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
    numpy_us: float | None = None  # the same work in idiomatic NumPy
    vs_numpy: float | None = None
    torch_compile_us: float | None = None
    vs_torch_compile: float | None = None
    #: per entry ("fast", "ref", "numpy", "torch", "torch_compile", "limit"): [min, max] in µs
    spread_us: dict[str, list[float]] = field(default_factory=dict)
    #: batches timed per entry
    samples: int = 0
    gflops: float | None = None  # achieved: the products' floating-point operations / fastlayers' time
    gemm_gflops: float | None = None  # the large-product rate of this run, in the same dtype
    peak_fraction: float | None = None  # gflops / gemm_gflops


#: the product timed for the large-GEMM rate: n x n by n x n
GEMM_RATE_N = 1536


def gemm_rate(dtype, n: int = GEMM_RATE_N, repeats: int = 7) -> float:
    """FLOP/s of NumPy's BLAS on an ``n`` x ``n`` by ``n`` x ``n`` product in ``dtype`` (``2 n**3``
    operations), the median of ``repeats`` calls after one warm-up call: the machine's practical
    compute limit for the dtype, measured in the run that uses it."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


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


#: seconds the timing thread sleeps after an entry timed apart (:func:`interleaved_samples`): long
#: enough for OpenBLAS's and OpenMP's idle threads to stop spinning
SETTLE = 0.05
#: the entries of every row that are timed apart: PyTorch's, whose OpenMP threads spin after each call
TORCH_ENTRIES = ("torch", "torch_compile")


def interleaved_samples(
    entries: dict[str, tuple[Callable[[], object], str | None]],
    min_batch: float = 0.005,
    rounds: int = 9,
    blocks: int = 3,
    apart: tuple[str, ...] = TORCH_ENTRIES,
    settle: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of each ``(callable, backend)`` entry, one value per timed batch.

    The entries not named in ``apart`` are timed round-robin: each round runs one batch of every
    such entry in turn (``backend``, when not None, is selected outside the timed region), so that
    they all see the same load. The ``apart`` entries (:func:`apart_entries`) never share a moment
    with the others: PyTorch's OpenMP threads, OpenBLAS's and our kernels' take the cores from
    each other when interleaved (see docs/PERFORMANCE.md). The ``rounds`` are split into
    ``blocks``; each block times the round-robin entries, then each ``apart`` entry alone, so that
    a slow drift of the machine's load reaches both sides. After each ``apart`` entry's batches the
    thread sleeps ``settle`` seconds: the idle threads of that entry's pool (OpenBLAS's, PyTorch's
    OpenMP) spin for a while before they sleep, and would otherwise take a core from the next
    entry. Each timed batch follows an untimed one of the same entry, to wake its thread pools.
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
    per_block = [rounds // blocks + (1 if b < rounds % blocks else 0) for b in range(blocks)]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for count in per_block:
            for _ in range(count):
                for name in together:
                    batch(name)
            for name in entries:
                if name in apart:
                    for _ in range(count):
                        batch(name)
                    time.sleep(settle)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


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


def _gemms_fn(a: dict) -> Callable[[], object]:
    """The three matrix products of an Affine forward+backward alone, into preallocated outputs."""
    x, W, dout = a["x"], a["W"], a["dout"]
    out, dx, dW = np.empty_like(dout), np.empty_like(x), np.empty_like(W)
    numpy_gemm = _gemm.library("numpy")
    return lambda: _gemm.affine_products(numpy_gemm, x, W, dout, out, dx, dW)


def apart_entries(case: Case) -> tuple[str, ...]:
    """The entries of ``case``'s row timed in blocks of their own (:func:`interleaved_samples`):
    PyTorch's always; for a row with matrix products (Affine, the nets, the convolutions) also the
    reference path, idiomatic NumPy and the limit, whose products run on NumPy's BLAS: OpenBLAS's
    threads spin for a while after each product, and timed round-robin with fastlayers they took a
    core from its next batch (DeepConvNet's step read about 2x its time alone: docs/PERFORMANCE.md,
    "Timing beside OpenBLAS")."""
    if case.limit in ("3 GEMMs", "GEMM rate") or case.kind in ("net", "step"):
        return ("ref", "numpy", "limit", *TORCH_ENTRIES)
    return TORCH_ENTRIES


def bench_case(case: Case, shape: tuple, dtype, torch, torch_compile: bool = True, rate: float | None = None) -> Row:
    """One row: ``case`` (an entry of the table of layers) at ``shape``, through the classic API on
    both backends, against idiomatic NumPy, PyTorch (when given) and the hardware limit (for a
    ``"GEMM rate"`` limit: ``rate``, FLOP/s, measured by :func:`gemm_rate` when not given)."""
    inputs = case.inputs(shape, np.dtype(dtype), np.random.default_rng(0))
    entries: dict[str, tuple[Callable[[], object], str | None]] = {}
    for name, backend in (("fast", "numba"), ("ref", "numpy")):
        with use_backend(backend):
            entries[name] = (case.calls(case.build(inputs), inputs)[2], backend)
    entries["numpy"] = ((lambda: case.numpy(inputs)), None)
    nbytes = None
    if case.limit == "copy":
        nbytes = case.bytes_moved(inputs)
        entries["limit"] = (_copy_fn(nbytes, dtype), None)
    elif case.limit == "3 GEMMs":
        entries["limit"] = (_gemms_fn(inputs), None)
    if torch is not None and case.torch is not None:
        entries["torch"] = (case.torch(torch, inputs)[2], None)
        if torch_compile and case.kind == "step":
            compiled = step_torch_compile(torch, inputs)
            if compiled is not None:
                entries["torch_compile"] = (compiled[2], None)
    samples = interleaved_samples(entries, apart=apart_entries(case), settle=SETTLE)
    row = _row(case.name, shape, dtype, samples, case.limit, nbytes)
    if case.limit == "GEMM rate":
        rate = rate or gemm_rate(dtype)
        flops = case.flops(inputs)
        row.limit_us = flops / rate * 1e6
        row.vs_limit = row.fastlayers_us / row.limit_us
        row.gflops = flops / row.fastlayers_us / 1e3
        row.gemm_gflops = rate / 1e9
        row.peak_fraction = row.gflops / row.gemm_gflops
    return row


def _row(layer, shape, dtype, samples: dict[str, list[float]], limit, nbytes) -> Row:
    us = 1e6
    times = {name: statistics.median(values) for name, values in samples.items()}
    fast, ref = times["fast"], times["ref"]

    def versus(name: str) -> tuple[float | None, float | None]:
        other = times.get(name)
        return (None, None) if other is None else (other * us, fast / other)

    numpy_us, vs_numpy = versus("numpy")
    torch_us, vs_torch = versus("torch")
    compile_us, vs_compile = versus("torch_compile")
    limit_us, vs_limit = versus("limit")
    return Row(
        layer=layer,
        shape="x".join(str(s) for s in shape),
        dtype=np.dtype(dtype).name,
        fastlayers_us=fast * us,
        reference_us=ref * us,
        speedup=ref / fast,
        torch_us=torch_us,
        vs_torch=vs_torch,
        limit=limit,
        limit_us=limit_us,
        vs_limit=vs_limit,
        gbps=None if nbytes is None else nbytes / fast / 1e9,
        copy_gbps=None if nbytes is None or limit_us is None else nbytes / (limit_us / us) / 1e9,
        numpy_us=numpy_us,
        vs_numpy=vs_numpy,
        torch_compile_us=compile_us,
        vs_torch_compile=vs_compile,
        spread_us={name: [min(v) * us, max(v) * us] for name, v in samples.items()},
        samples=min(len(v) for v in samples.values()),
    )


def run(
    dtype="float32",
    layers_wanted: list[str] | None = None,
    sizes: str = "all",
    report: Callable | None = None,
    torch_compile: bool = True,
) -> list[Row]:
    """All benchmark rows for ``dtype``; ``sizes`` is "all" or "small" (the classic sizes only).
    ``report(done, total, layer, shape)`` is called before each row (progress for people)."""
    from . import get_num_threads, preload

    preload((dtype,))  # the steady state of a process: every kernel loaded (small calls use them)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(get_num_threads())  # the same threads for both libraries
    todo = [
        (layer, shape)
        for layer, shapes in SIZES.items()
        if not layers_wanted or layer in layers_wanted
        for shape in (shapes[:1] if sizes == "small" else shapes)
    ]
    # the large-product rate, measured once in this run before the rows that are judged against it
    rate = gemm_rate(dtype) if any(CASES[layer].limit == "GEMM rate" for layer, _ in todo) else None
    rows = []
    for done, (layer, shape) in enumerate(todo):
        if report is not None:
            report(done, len(todo), layer, shape)
        rows.append(bench_case(CASES[layer], shape, dtype, torch, torch_compile, rate))
    return rows


def _time(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us:.1f}us"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _range(row: Row, name: str) -> str:
    low_high = row.spread_us.get(name)
    if not low_high:
        return "-"
    low, high = low_high
    return f"{_time(low)}-{_time(high)}"


def format_table(rows: list[Row]) -> str:
    """The rows as a text table: medians, ratios (fastlayers / other: below 1 is faster), and the
    range of fastlayers' batches."""
    columns = [
        ("layer", 12, lambda r: r.layer),
        ("shape", 16, lambda r: r.shape),
        ("dtype", 7, lambda r: r.dtype),
        ("fastlayers", 10, lambda r: _time(r.fastlayers_us)),
        ("fl range", 17, lambda r: _range(r, "fast")),
        ("reference", 10, lambda r: _time(r.reference_us)),
        ("speed-up", 8, lambda r: f"{r.speedup:.1f}x"),
        ("numpy", 10, lambda r: _time(r.numpy_us)),
        ("fl/np", 6, lambda r: _ratio(r.vs_numpy)),
        ("torch", 10, lambda r: _time(r.torch_us)),
        ("fl/torch", 8, lambda r: _ratio(r.vs_torch)),
        ("compiled", 10, lambda r: _time(r.torch_compile_us)),
        ("fl/comp", 7, lambda r: _ratio(r.vs_torch_compile)),
        ("limit", 9, lambda r: r.limit or "-"),
        ("limit us", 10, lambda r: _time(r.limit_us)),
        ("fl/limit", 8, lambda r: _ratio(r.vs_limit)),
        ("GB/s", 6, lambda r: "-" if r.gbps is None else f"{r.gbps:.1f}"),
        ("GFLOP/s", 7, lambda r: "-" if r.gflops is None else f"{r.gflops:.1f}"),
        ("%GEMM", 5, lambda r: "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%"),
        ("n", 3, lambda r: str(r.samples)),
    ]

    def line(cells: list[str]) -> str:
        # the first three columns (names) to the left, the figures to the right
        return " ".join(
            f"{c:{w}s}" if i < 3 else f"{c:>{w}s}" for i, (c, (_, w, _)) in enumerate(zip(cells, columns, strict=True))
        )

    head = line([name for name, _, _ in columns])
    lines = [head, "-" * len(head)]
    lines.extend(line([cell(r) for _, _, cell in columns]) for r in rows)
    return "\n".join(lines)


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
