"""Everything that depends on Numba beyond ``prange``: compile flags, the serial/parallel twin
builder, the cache fallback, and the low-level helpers the kernels call (``typed``, ``by_dtype``, bit
casts, ``row_sum``/``row_max``). Kernel modules import only from here, ``numba.prange`` and NumPy.

Supported Numba versions: :data:`SUPPORTED` (the range ``pyproject.toml`` requires; a test holds
the two equal). Three things use Numba internals and are checked against that range by
``tests/test_numba_machinery.py``: the subclass of ``numba.core.caching.FunctionCache`` (its
loads skip the target context's refresh, see :class:`_TolerantCache`) and the
LLVM code generation of the intrinsics (``numba.core.cgutils``, llvmlite) here, and the deferred
BLAS check of ``numba.np.arraymath`` in ``_threads.before_compiling``.

Every helper that Numba compiles in a special way (an ``overload`` or an ``intrinsic``) is a plain
Python function with a Python body: the body runs when ``NUMBA_DISABLE_JIT=1`` (the whole kernel
test suite runs that way in CI, for coverage of the kernels' Python), and compiled code uses the
Numba implementation registered for it, which gives the same results (tests compare them).

Flags (the same for every kernel; tests check that no kernel sets its own):

- ``error_model="numpy"`` on serial and parallel twins alike: ``prange`` bodies always use the NumPy
  error model, so a serial twin compiled with the default ``"python"`` model would disagree with its
  parallel twin on division by zero.
- ``nogil=True`` for the parallel twins only. A serial twin runs below its kernel's parallel
  threshold, for microseconds: releasing the GIL and taking it back around such a call made every
  call of eight request threads sharing one net queue for the GIL (``tools/serving.py``: 0.61 of
  one thread's rows/s at batch 1 on 8 threads with it released, 0.99 with it kept).
- ``fastmath={"contract"}`` only: a multiply and an add may become one FMA (one rounding instead of
  two). Nothing else: ``nnan``/``ninf`` would break NaN propagation and the exact saturation of the
  sigmoid, ``reassoc`` would make reductions depend on the compiler's order.
- ``cache=True`` when Numba can find a writable cache location (``NUMBA_CACHE_DIR``, the package's
  ``__pycache__``, or the user-wide cache directory). Where it cannot (read-only install and read-only
  home), Numba raises at decoration time; we then compile without caching so that ``import
  fastlayers`` still works. ``FASTLAYERS_NO_CACHE=1`` switches caching off.
- A damaged cache (a truncated index file, an unreadable data file) is a cache miss, not an error:
  :class:`_TolerantCache` discards the index and the kernel is compiled and cached afresh.
- Numba keys its cache on a function's own bytecode and its file's time stamp, not on the compile
  flags nor on the helpers it inlines from other files. Every cached name therefore carries
  :data:`TAG`, a hash of the flags (``NUMBA_BOUNDSCHECK`` included) and of all sources in this
  package, so that changing either compiles afresh instead of loading stale machine code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import types as pytypes
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _threads
from ._threads import load_numba

numba = load_numba()  # libtbb first, then Numba (this module is imported at the first kernel call)

from llvmlite import ir  # noqa: E402  (after Numba: it loads llvmlite itself)
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.core.caching import FunctionCache  # noqa: E402
from numba.core.runtime import rtsys as _rtsys  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

#: Numba versions this module was checked with: (lowest, first unsupported), as in pyproject.toml.
SUPPORTED: tuple[str, str] = _threads.NUMBA_SUPPORTED
#: True when ``NUMBA_DISABLE_JIT=1``: every kernel and helper then runs as plain Python.
DISABLED: bool = bool(numba.config.DISABLE_JIT)

FLAGS: dict = {"error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
from . import (  # noqa: E402
    CACHE_ENABLED,  # noqa: F401  (parsed where fastlayers can read it without Numba)
    accumulators,
    vector_bytes,
)

#: Bytes of a vector in every register tile below (``fastlayers._kernels.vector_bytes``: 64 where
#: Numba compiles for AVX-512, else 32), and the accumulators each tile keeps in registers (24 or 12).
VECTOR_BYTES: int = vector_bytes()
TILE_ACCUMULATORS: int = accumulators()


def _tag() -> str:
    digest = hashlib.sha256(
        repr(sorted((k, sorted(v) if isinstance(v, set) else v) for k, v in FLAGS.items())).encode()
    )
    # NUMBA_BOUNDSCHECK=1 compiles checked code: cached apart, or a checked run would load unchecked code
    digest.update(f"boundscheck={numba.config.BOUNDSCHECK}".encode())
    # FASTLAYERS_VECTOR_BYTES changes every tile without changing the CPU Numba keys its cache on
    digest.update(f"vector_bytes={vector_bytes()}".encode())
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
    new = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__ + suffix
    new.__doc__ = fn.__doc__
    new.__module__ = fn.__module__
    return new


class _TolerantCache(FunctionCache):
    """Numba's per-function cache, with a damaged index or data file treated as a miss, and loads
    that leave the CPU target's full set-up to the first compilation.

    Numba's ``load_overload`` first refreshes the target context: it imports Numba's implementation
    modules and installs their typing and lowering registries (a large share of a process's first
    kernel call: docs/PERFORMANCE.md, "Start-up and compilation"), which only compiling reads.
    Loading cached machine code needs the runtime (NRT: unboxing an array makes a meminfo), which
    is set up here; the rest happens at the first compilation, whose pipeline refreshes both
    contexts itself (``numba.core.compiler``). A cache miss therefore compiles exactly as before.
    """

    def _discard_index(self) -> None:
        try:
            os.remove(self._cache_file._index_path)
        except OSError:
            pass

    def load_overload(self, sig, target_context):
        _rtsys.initialize(target_context)  # what the refresh did that running loaded code needs
        try:
            with self._guard_against_spurious_io_errors():
                loaded = self._load_overload(sig, target_context)
        except Exception:  # truncated pickle, EOF, unreadable file: recompile instead
            self._discard_index()
            loaded = None
        if loaded is None:  # Numba compiles it next
            _threads.before_compiling()
        return loaded

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception:
            self._discard_index()
            try:
                super().save_overload(sig, data)
            except Exception:  # caching only saves time: a failed save must not fail the call
                pass


def jit(fn: Callable, parallel: bool = False, suffix: str = "", inline: bool = False):
    """Compile a copy of ``fn`` named with ``suffix`` and :data:`TAG`, with the project's flags,
    caching it when a cache location exists. With ``inline``, Numba inlines it into its callers
    before LLVM sees them (for a helper whose calls must vectorize with the caller's loop)."""
    fn = _copy_function(fn, f"{suffix}_{TAG}")
    COMPILED.append(fn.__qualname__)
    if DISABLED:
        return fn
    flags = dict(FLAGS, inline="always") if inline else FLAGS
    if suffix == "_serial":  # short calls keep the GIL: see the module docstring
        flags = dict(flags, nogil=False)
    if CACHE_ENABLED:
        try:
            dispatcher = numba.njit(parallel=parallel, cache=True, **flags)(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if "no locator" not in str(exc):
                raise
            UNCACHED.append(fn.__qualname__)
        else:
            dispatcher._cache = _TolerantCache(dispatcher.py_func)
            return dispatcher
    _threads.before_compiling()  # every call of an uncached dispatcher's new signature compiles
    return numba.njit(parallel=parallel, cache=False, **flags)(fn)


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
        self.module = fn.__module__.rsplit(".", 1)[-1]
        self.py_func = fn
        self.parallel_min = parallel_min
        self._lock = threading.Lock()
        ALL_TWINS.append(self)

    def __getattr__(self, name: str):
        if name not in ("serial", "parallel"):
            raise AttributeError(name)
        with self._lock:  # compile (or load) each twin once, even when several threads ask at once
            if name not in self.__dict__:
                twin = jit(self.py_func, parallel=name == "parallel", suffix="_" + name)
                self.__dict__[name] = _quiet(twin) if DISABLED else twin
            return self.__dict__[name]

    def __repr__(self) -> str:
        return f"<kernel twins {self.name}>"


def _quiet(fn: Callable) -> Callable:
    """``fn`` run as plain Python with NumPy's floating-point warnings off: compiled kernels use the
    NumPy error model, which gives IEEE results (inf, NaN) without warnings."""

    @functools.wraps(fn)
    def run(*args):
        with np.errstate(all="ignore"):
            return fn(*args)

    return run


def twins(parallel_min: int) -> Callable[[Callable], Twins]:
    """Decorator: the serial and parallel versions of a kernel written with ``prange``.

    ``parallel_min``: the input size (elements) from which the parallel twin runs; each kernel
    module defines its thresholds beside its kernels (see ``_threads.launch``).
    """
    return lambda fn: Twins(fn, parallel_min)


def helper(fn: Callable | None = None, *, inline: bool = False):
    """Decorator for a small jitted function called from kernels (inlined by LLVM; with
    ``inline=True``, by Numba, before LLVM's loop vectorizer runs: see docs/PERFORMANCE.md)."""
    if fn is None:
        return lambda f: jit(f, parallel=False, inline=inline)
    return jit(fn, parallel=False, inline=inline)


# --------------------------------------------------------------------------------------------
# helpers for kernels: each a Python function (its body runs without the JIT) with a Numba
# implementation for compiled code
# --------------------------------------------------------------------------------------------
def typed(value, ref):
    """``value`` converted to the dtype of ``ref`` (an array or a scalar)."""
    dtype = ref.dtype if isinstance(ref, np.ndarray) else np.dtype(type(ref))
    return dtype.type(value)


@overload(typed, inline="always")
def _typed_impl(value, ref):
    dtype = ref.dtype if isinstance(ref, types.Array) else ref

    def impl(value, ref):
        return dtype(value)

    return impl


def by_dtype(python_body: Callable, **impls: Callable) -> Callable:
    """``python_body`` (a function of one scalar), which compiled code runs as ``impls[name]`` for
    an argument of the dtype ``name`` ("float32", "float64"). The implementations must give what
    the Python body gives, up to their documented accuracy."""

    @overload(python_body)
    def _impl(x):
        return impls.get(str(x))

    return python_body


def _bitcast(src: str, dst: str) -> Callable:
    """A function that reinterprets the bits of a ``src`` scalar as ``dst`` (same width); in
    compiled code an LLVM ``bitcast``, with no instruction of its own."""
    src_t, dst_t = getattr(types, src), getattr(types, dst)
    src_np, dst_np = np.dtype(src), np.dtype(dst)

    def python_body(value):
        return np.array(value, src_np).view(dst_np)[()]

    python_body.__name__ = python_body.__qualname__ = f"{src}_bits_as_{dst}"

    def typer(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst_t))

        return dst_t(src_t), codegen

    cast = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(value):
        return lambda value: cast(value)

    return python_body


bits_to_f64 = _bitcast("int64", "float64")
f64_to_bits = _bitcast("float64", "int64")
bits_to_f32 = _bitcast("int32", "float32")
f32_to_bits = _bitcast("float32", "int32")


# Sum and max of a 1-D float array in explicit SIMD lanes (why: see docs/PERFORMANCE.md).
# ``ACCUMULATORS`` vectors of ``64 // itemsize`` lanes (16 float32 or 8 float64) take the elements
# in turn, the leftover tail goes through a scalar accumulator, and everything is combined in a
# fixed tree order: accumulators pairwise, then halves of the lanes, then the tail. The order
# depends on the length alone, so results are deterministic; a strided array fills the same lanes
# element by element, so its result is bit-identical to that of a contiguous copy. The vectors are
# plain LLVM vector types: without 512-bit registers LLVM splits them into narrower ones.

#: independent vector accumulators: enough to hide the add latency behind the loads
ACCUMULATORS = 4


def _lanes_reduce(a: np.ndarray, combine: Callable, first):
    """The Python body of the lane reductions: the same order of operations as the compiled code."""
    n = a.shape[0]
    lanes = 64 // a.itemsize
    step = lanes * ACCUMULATORS
    accs = [np.full(lanes, first, a.dtype) for _ in range(ACCUMULATORS)]
    for base in range(0, (n // step) * step, step):
        for k in range(ACCUMULATORS):
            accs[k] = combine(accs[k], a[base + k * lanes : base + (k + 1) * lanes])
    tail = a.dtype.type(first)
    for i in range((n // step) * step, n):
        tail = combine(tail, a[i])
    while len(accs) > 1:
        accs = [combine(accs[i], accs[i + 1]) for i in range(0, len(accs), 2)]
    vec = accs[0]
    while vec.shape[0] > 1:
        half = vec.shape[0] // 2
        vec = combine(vec[:half], vec[half:])
    return combine(vec[0], tail)


def _add(a, b):
    return a + b


def _max(a, b):
    return np.where(b > a, b, a) if isinstance(a, np.ndarray) else (b if b > a else a)


def row_sum(a: np.ndarray):
    """Sum of a 1-D float32/float64 array, in the fixed lane order described above."""
    return _lanes_reduce(a, _add, 0)


def row_max(a: np.ndarray):
    """Max of a non-empty 1-D float32/float64 array; NaN never wins (``b if b > a else a``)."""
    return _lanes_reduce(a, _max, a[0])


def _check_1d_float(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.float32, types.float64)


def _indices(values) -> ir.Constant:
    """A constant <k x i32> vector, the lane selector of a ``shufflevector``."""
    values = list(values)
    i32 = ir.IntType(32)
    return ir.Constant(ir.VectorType(i32, len(values)), [ir.Constant(i32, v) for v in values])


def _reduction(kind: str):
    """Codegen of a lane-wise reduction; ``kind`` is "sum" or "max"."""

    def combine(builder, a, b):
        if kind == "sum":
            return builder.fadd(a, b)
        return builder.select(builder.fcmp_ordered(">", b, a), b, a)  # b wins only if greater

    def codegen(context, builder, signature, args):
        (aryty,) = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        n = builder.extract_value(ary.shape, 0)
        intp = n.type
        fty = context.get_value_type(aryty.dtype)
        lanes = 64 // context.get_abi_sizeof(fty)
        vty = ir.VectorType(fty, lanes)
        data = ary.data
        contiguous = aryty.layout in ("C", "F")  # the same thing in one dimension
        strides = cgutils.unpack_tuple(builder, ary.strides, 1)

        def element_ptr(index):
            if contiguous:
                return builder.gep(data, [index])
            return cgutils.get_item_pointer2(context, builder, data, [n], strides, aryty.layout, [index])

        def load_vector(index):
            if contiguous:  # one vector load
                ptr = builder.bitcast(builder.gep(data, [index]), vty.as_pointer())
                return builder.load(ptr, align=context.get_abi_sizeof(fty))
            vec = cgutils.get_null_value(vty)  # strided: element by element, same lanes as above
            for i in range(lanes):
                value = builder.load(element_ptr(builder.add(index, ir.Constant(intp, i))))
                vec = builder.insert_element(vec, value, ir.Constant(ir.IntType(32), i))
            return vec

        step = lanes * ACCUMULATORS
        nvec = builder.udiv(n, ir.Constant(intp, step))

        if kind == "sum":
            first = ir.Constant(fty, 0.0)
        else:
            first = builder.load(element_ptr(ir.Constant(intp, 0)))  # n >= 1 is the caller's contract
        start = cgutils.get_null_value(vty)
        for i in range(lanes):
            start = builder.insert_element(start, first, ir.Constant(ir.IntType(32), i))
        accs = [cgutils.alloca_once_value(builder, start) for _ in range(ACCUMULATORS)]
        with cgutils.for_range(builder, nvec) as loop:
            base = builder.mul(loop.index, ir.Constant(intp, step))
            for k, acc in enumerate(accs):
                vec = load_vector(builder.add(base, ir.Constant(intp, k * lanes)))
                builder.store(combine(builder, builder.load(acc), vec), acc)

        tail = cgutils.alloca_once_value(builder, first)
        done = builder.mul(nvec, ir.Constant(intp, step))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            value = builder.load(element_ptr(builder.add(done, loop.index)))
            builder.store(combine(builder, builder.load(tail), value), tail)

        vecs = [builder.load(acc) for acc in accs]
        while len(vecs) > 1:
            vecs = [combine(builder, vecs[i], vecs[i + 1]) for i in range(0, len(vecs), 2)]
        vec, width = vecs[0], lanes
        while width > 1:
            width //= 2
            low = builder.shuffle_vector(vec, vec, _indices(range(width)))
            high = builder.shuffle_vector(vec, vec, _indices(range(width, 2 * width)))
            vec = combine(builder, low, high)
        total = builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))
        return combine(builder, total, builder.load(tail))

    return codegen


@intrinsic
def _row_sum_llvm(typingctx, arr):
    if not _check_1d_float(arr):
        return None
    return arr.dtype(arr), _reduction("sum")


@intrinsic
def _row_max_llvm(typingctx, arr):
    if not _check_1d_float(arr):
        return None
    return arr.dtype(arr), _reduction("max")


@overload(row_sum, inline="always")
def _row_sum_impl(a):
    return lambda a: _row_sum_llvm(a)


@overload(row_max, inline="always")
def _row_max_impl(a):
    return lambda a: _row_max_llvm(a)


# --------------------------------------------------------------------------------------------
# The register tile of the direct convolution (fastlayers._kernels.conv.conv_direct): ``channels``
# output channels times ``vectors`` vectors of consecutive output pixels (VECTOR_BYTES // itemsize
# lanes each), accumulated in vector registers over the whole reduction: per term k, ``vectors``
# unaligned loads of input, ``channels`` broadcast weights, ``channels * vectors`` FMAs.
# --------------------------------------------------------------------------------------------
def _tile_python(channels: int, vectors: int) -> Callable:
    def conv_tile(xf, xoff, koff, wf, woff, tile):
        span = vectors * (VECTOR_BYTES // xf.itemsize)
        nk = koff.shape[0]
        if nk and (xoff < 0 or koff.min() < 0 or xoff + int(koff.max()) + span > xf.shape[0]):
            raise IndexError("conv_tile would read xf out of bounds")
        if woff < 0 or woff + nk * channels > wf.shape[0] or channels * span > tile.shape[0]:
            raise IndexError("conv_tile would read wf or write tile out of bounds")
        acc = np.zeros((channels, span), xf.dtype)
        for k in range(nk):
            x = xf[xoff + koff[k] : xoff + koff[k] + span]
            w = wf[woff + k * channels : woff + (k + 1) * channels]
            acc += w[:, None] * x[None, :]
        tile[: channels * span] = acc.reshape(-1)

    conv_tile.__name__ = conv_tile.__qualname__ = f"conv_tile_{channels}x{vectors}"
    return conv_tile


def _vector_fma(module: ir.Module, vty: ir.VectorType) -> ir.Function:
    """LLVM's fused multiply-add of ``vty`` vectors (one rounding per lane), declared in ``module``."""
    bits = 32 if isinstance(vty.element, ir.FloatType) else 64
    return cgutils.get_or_insert_function(module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{vty.count}f{bits}")


def _splat(builder: ir.IRBuilder, value, vty: ir.VectorType):
    """A ``vty`` vector with ``value`` in every lane (insert into lane 0, then broadcast it)."""
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined), _indices([0] * vty.count))


def _tile_declaration(module: ir.Module, name: str, args: list, noalias: bool = True) -> tuple[ir.Function, bool]:
    """The register tile ``name`` of ``module`` as an LLVM function of ``args`` returning nothing,
    and whether it is new (its body still to be built): each tile is made once per module, with
    internal linkage and ``noinline`` (inlined into a kernel's loops, LLVM spilled the accumulators
    to the stack), its pointer arguments ``noalias`` when ``noalias``."""
    if name in module.globals:
        return module.globals[name], False
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), args), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    if noalias:
        for arg in fn.args:
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
    return fn, True


def _tile_function(module: ir.Module, fty, intp, channels: int, vectors: int) -> ir.Function:
    """The tile as its own LLVM function (``noinline``: inlined into a kernel's loops, LLVM spilled
    the accumulators to the stack), made once per module:
    f(x, koff, nk, w, tile) with x and w already offset."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    ptr = fty.as_pointer()
    name = f"fastlayers_conv_tile_{channels}x{vectors}_f{size * 8}"
    fn, new = _tile_declaration(module, name, [ptr, intp.as_pointer(), intp, ptr, ptr])
    if not new:
        return fn
    x, koff, nk, w, tile = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    fma = _vector_fma(module, vty)
    zero = cgutils.get_null_value(vty)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(channels)]
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        xbase = builder.gep(x, [builder.load(builder.gep(koff, [k]))])
        xv = []
        for v in range(vectors):
            vptr = builder.bitcast(builder.gep(xbase, [ir.Constant(intp, v * lanes)]), vty.as_pointer())
            xv.append(builder.load(vptr, align=size))
        wbase = builder.gep(w, [builder.mul(k, ir.Constant(intp, channels))])
        for f in range(channels):
            value = builder.load(builder.gep(wbase, [ir.Constant(intp, f)]))
            splat = _splat(builder, value, vty)
            for v in range(vectors):
                acc = accs[f][v]
                builder.store(builder.call(fma, [splat, xv[v], builder.load(acc)]), acc)
    for f in range(channels):
        for v in range(vectors):
            tptr = builder.gep(tile, [ir.Constant(intp, (f * vectors + v) * lanes)])
            builder.store(builder.load(accs[f][v]), builder.bitcast(tptr, vty.as_pointer()), align=size)
    builder.ret_void()
    return fn


def _tile_codegen(channels: int, vectors: int):
    def codegen(context, builder, signature, args):
        xty, _, kty, wty, _, tty = signature.args
        xf, xoff, koff, wf, woff, tile = args
        xa = context.make_array(xty)(context, builder, xf)
        ka = context.make_array(kty)(context, builder, koff)
        wa = context.make_array(wty)(context, builder, wf)
        ta = context.make_array(tty)(context, builder, tile)
        nk = builder.extract_value(ka.shape, 0)
        xoff = context.cast(builder, xoff, signature.args[1], types.intp)
        woff = context.cast(builder, woff, signature.args[4], types.intp)
        fty = context.get_value_type(xty.dtype)
        fn = _tile_function(builder.module, fty, nk.type, channels, vectors)
        builder.call(fn, [builder.gep(xa.data, [xoff]), ka.data, nk, builder.gep(wa.data, [woff]), ta.data])
        return context.get_dummy_value()

    return codegen


def _tile_check(xf, koff, wf, tile) -> bool:
    return (
        _check_1d_float(xf)
        and xf.layout == "C"
        and wf == xf
        and tile == xf
        and isinstance(koff, types.Array)
        and koff.ndim == 1
        and koff.layout == "C"
        and koff.dtype == types.int64
    )


def conv_tile(channels: int, vectors: int) -> Callable:
    """``conv_tile_CxV(xf, xoff, koff, wf, woff, tile)``: tile[f*S + p] = the sum over k, in order,
    of wf[woff + k*channels + f] * xf[xoff + koff[k] + p] (one FMA each in compiled code), for
    f < ``channels`` and p < S = ``vectors`` * (VECTOR_BYTES // itemsize). 1-D C-contiguous float arrays of one
    dtype, ``koff`` int64. Compiled code does not check bounds: the caller guarantees them (the Python
    body checks them)."""
    python_body = _tile_python(channels, vectors)
    codegen = _tile_codegen(channels, vectors)

    def typer(typingctx, xf, xoff, koff, wf, woff, tile):
        if not _tile_check(xf, koff, wf, tile):
            return None
        return types.none(xf, xoff, koff, wf, woff, tile), codegen

    tile_llvm = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(xf, xoff, koff, wf, woff, tile):
        return lambda xf, xoff, koff, wf, woff, tile: tile_llvm(xf, xoff, koff, wf, woff, tile)

    return python_body


#: the register tiles of the direct convolution, (output channels, vectors of pixels):
#: TILE_ACCUMULATORS accumulators each, which with the loaded input vectors and one broadcast fit
#: the vector registers (AVX-512's 32: (8, 3), (6, 4), (4, 6), (12, 2), (3, 8), (2, 12), (1, 24);
#: AVX2's 16: (6, 2), (4, 3), (12, 1), (3, 4), (2, 6), (1, 12)). ``conv_tile_C`` is the tile of C
#: channels (of 8 channels and one vector where 8 does not divide the accumulators: never chosen)
CONV_TILES = tuple((c, TILE_ACCUMULATORS // c) for c in (8, 6, 4, 12, 3, 2, 1) if TILE_ACCUMULATORS % c == 0)
conv_tile_8 = conv_tile(8, max(1, TILE_ACCUMULATORS // 8))
conv_tile_6 = conv_tile(6, TILE_ACCUMULATORS // 6)
conv_tile_4 = conv_tile(4, TILE_ACCUMULATORS // 4)
conv_tile_12 = conv_tile(12, TILE_ACCUMULATORS // 12)
conv_tile_3 = conv_tile(3, TILE_ACCUMULATORS // 3)
conv_tile_2 = conv_tile(2, TILE_ACCUMULATORS // 2)
conv_tile_1 = conv_tile(1, TILE_ACCUMULATORS)


# --------------------------------------------------------------------------------------------
# The channel-lanes tile of the direct convolution (conv_direct_lanes): ``points`` output pixels
# times ``vectors`` vectors of consecutive output channels (VECTOR_BYTES // itemsize lanes each),
# accumulated in vector registers over the whole reduction: per term k, ``vectors`` loads of
# filter values, ``points`` broadcast input values (one per pixel, each from its own offset),
# ``points * vectors`` FMAs. The pixels may lie anywhere, so no padded column is computed.
# --------------------------------------------------------------------------------------------
def _lanes_python(points: int, vectors: int) -> Callable:
    def conv_lanes_tile(xf, pof, koff, wf, woff, tile):
        fc = vectors * (VECTOR_BYTES // xf.itemsize)
        nk = koff.shape[0]
        if pof.shape[0] < points or woff < 0 or woff + nk * fc > wf.shape[0] or points * fc > tile.shape[0]:
            raise IndexError("conv_lanes_tile would read pof or wf or write tile out of bounds")
        at = pof[:points]
        if nk and (at.min() < 0 or koff.min() < 0 or int(at.max()) + int(koff.max()) >= xf.shape[0]):
            raise IndexError("conv_lanes_tile would read xf out of bounds")
        acc = np.zeros((points, fc), xf.dtype)
        for k in range(nk):
            w = wf[woff + k * fc : woff + (k + 1) * fc]
            acc += xf[at + koff[k]][:, None] * w[None, :]
        tile[: points * fc] = acc.reshape(-1)

    conv_lanes_tile.__name__ = conv_lanes_tile.__qualname__ = f"conv_lanes_tile_{points}x{vectors}"
    return conv_lanes_tile


def _lanes_function(module: ir.Module, fty, intp, points: int, vectors: int) -> ir.Function:
    """The channel-lanes tile as its own LLVM function (``noinline``, as the other tiles), made once
    per module: f(x, pof, koff, nk, w, tile) with w already offset."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    fc = vectors * lanes
    ptr = fty.as_pointer()
    name = f"fastlayers_conv_lanes_tile_{points}x{vectors}_f{size * 8}"
    fn, new = _tile_declaration(module, name, [ptr, intp.as_pointer(), intp.as_pointer(), intp, ptr, ptr])
    if not new:
        return fn
    x, pof, koff, nk, w, tile = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    fma = _vector_fma(module, vty)
    zero = cgutils.get_null_value(vty)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(points)]
    bases = [builder.gep(x, [builder.load(builder.gep(pof, [ir.Constant(intp, p)]))]) for p in range(points)]
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        term = builder.load(builder.gep(koff, [k]))
        wbase = builder.gep(w, [builder.mul(k, ir.Constant(intp, fc))])
        wv = []
        for v in range(vectors):
            vptr = builder.bitcast(builder.gep(wbase, [ir.Constant(intp, v * lanes)]), vty.as_pointer())
            wv.append(builder.load(vptr, align=size))
        for p in range(points):
            value = builder.load(builder.gep(bases[p], [term]))
            splat = _splat(builder, value, vty)
            for v in range(vectors):
                acc = accs[p][v]
                builder.store(builder.call(fma, [splat, wv[v], builder.load(acc)]), acc)
    for p in range(points):
        for v in range(vectors):
            tptr = builder.gep(tile, [ir.Constant(intp, p * fc + v * lanes)])
            builder.store(builder.load(accs[p][v]), builder.bitcast(tptr, vty.as_pointer()), align=size)
    builder.ret_void()
    return fn


def _lanes_codegen(points: int, vectors: int):
    def codegen(context, builder, signature, args):
        xty, pty, kty, wty, _, tty = signature.args
        xf, pof, koff, wf, woff, tile = args
        xa = context.make_array(xty)(context, builder, xf)
        pa = context.make_array(pty)(context, builder, pof)
        ka = context.make_array(kty)(context, builder, koff)
        wa = context.make_array(wty)(context, builder, wf)
        ta = context.make_array(tty)(context, builder, tile)
        nk = builder.extract_value(ka.shape, 0)
        woff = context.cast(builder, woff, signature.args[4], types.intp)
        fty = context.get_value_type(xty.dtype)
        fn = _lanes_function(builder.module, fty, nk.type, points, vectors)
        builder.call(fn, [xa.data, pa.data, ka.data, nk, builder.gep(wa.data, [woff]), ta.data])
        return context.get_dummy_value()

    return codegen


def conv_lanes_tile(points: int, vectors: int) -> Callable:
    """``conv_lanes_tile_PxV(xf, pof, koff, wf, woff, tile)``: with FC = ``vectors`` * (64 //
    itemsize), tile[p*FC + f] = the sum over k, in order, of xf[pof[p] + koff[k]] * wf[woff + k*FC
    + f] (one FMA each in compiled code), for p < ``points`` and f < FC. 1-D C-contiguous float
    arrays of one dtype, ``pof`` and ``koff`` int64. Compiled code does not check bounds: the caller
    guarantees them (the Python body checks them)."""
    python_body = _lanes_python(points, vectors)
    codegen = _lanes_codegen(points, vectors)

    def typer(typingctx, xf, pof, koff, wf, woff, tile):
        if not (_tile_check(xf, koff, wf, tile) and _tile_check(xf, pof, wf, tile)):
            return None
        return types.none(xf, pof, koff, wf, woff, tile), codegen

    tile_llvm = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(xf, pof, koff, wf, woff, tile):
        return lambda xf, pof, koff, wf, woff, tile: tile_llvm(xf, pof, koff, wf, woff, tile)

    return python_body


#: the channel-lanes tile, (pixels, vectors of output channels): 6 pixels by TILE_ACCUMULATORS // 6
#: vectors, which with the loaded filter vectors and one broadcast fit the vector registers. One of
#: 12 pixels by 2 vectors was slower at every size measured with AVX-512, and of 3 pixels by 4
#: vectors with AVX2 (docs/PERFORMANCE.md)
CONV_LANES_TILE = (6, TILE_ACCUMULATORS // 6)
conv_lanes_tile_6 = conv_lanes_tile(*CONV_LANES_TILE)


# --------------------------------------------------------------------------------------------
# The rows tile of the direct convolution for one output channel (conv_direct_rows): ``rows`` rows
# of ``vectors`` vectors each, read from input rows of any stride ``wd`` (past the row's end it reads
# on into the next row), so that an input vector loaded once serves the filter's ``fh`` rows of taps
# for ``fh`` output rows (per input channel and tap column: fh broadcast weights, (rows + fh - 1) *
# vectors loads, rows * fh * vectors FMAs).
# --------------------------------------------------------------------------------------------
def _rows_python(fh: int, vectors: int) -> Callable:
    rows = TILE_ACCUMULATORS // vectors

    def conv_rows_tile(xf, xoff, foff, fw, wd, wf, woff, tile):
        width = vectors * (VECTOR_BYTES // xf.itemsize)
        nf = foff.shape[0]
        if wd < 1 or fw < 1 or xoff < 0 or woff < 0:
            raise IndexError("conv_rows_tile: a row stride or tap count below 1, or negative offsets")
        reach = (rows + fh - 2) * wd + fw - 1 + width  # past the last tap of the last pixel, from foff[f]
        if nf and (foff.min() < 0 or xoff + int(foff.max()) + reach > xf.shape[0]):
            raise IndexError("conv_rows_tile would read xf out of bounds")
        if woff + nf * fh * fw > wf.shape[0] or rows * width > tile.shape[0]:
            raise IndexError("conv_rows_tile would read wf or write tile out of bounds")
        acc = np.zeros((rows, width), xf.dtype)
        for f in range(nf):
            for kx in range(fw):
                for ky in range(fh):
                    for r in range(rows):
                        at = xoff + foff[f] + (r + ky) * wd + kx
                        acc[r] += wf[woff + (f * fh + ky) * fw + kx] * xf[at : at + width]
        tile[: rows * width] = acc.reshape(-1)

    conv_rows_tile.__name__ = conv_rows_tile.__qualname__ = f"conv_rows_tile_{fh}x{vectors}"
    return conv_rows_tile


def _rows_function(module: ir.Module, fty, intp, fh: int, vectors: int) -> ir.Function:
    """The rows tile as its own LLVM function (``noinline``, as the other tiles), made once per
    module: f(x, foff, nf, fw, wd, w, tile) with x and w already offset."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    rows = TILE_ACCUMULATORS // vectors
    ptr = fty.as_pointer()
    name = f"fastlayers_conv_rows_tile_{fh}x{vectors}_f{size * 8}"
    fn, new = _tile_declaration(module, name, [ptr, intp.as_pointer(), intp, intp, intp, ptr, ptr])
    if not new:
        return fn
    x, foff, nf, fw, wd, w, tile = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    fma = _vector_fma(module, vty)
    zero = cgutils.get_null_value(vty)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]
    taps = builder.mul(fw, ir.Constant(intp, fh))
    with cgutils.for_range(builder, nf) as channel:
        xc = builder.gep(x, [builder.load(builder.gep(foff, [channel.index]))])
        wc = builder.gep(w, [builder.mul(channel.index, taps)])
        with cgutils.for_range(builder, fw) as column:
            kx = column.index
            splats = []
            for ky in range(fh):
                value = builder.load(builder.gep(wc, [builder.add(builder.mul(ir.Constant(intp, ky), fw), kx)]))
                splats.append(_splat(builder, value, vty))
            xk = builder.gep(xc, [kx])
            for r in range(rows + fh - 1):  # input row r serves output rows r - ky
                xr = builder.gep(xk, [builder.mul(ir.Constant(intp, r), wd)])
                for v in range(vectors):
                    vptr = builder.bitcast(builder.gep(xr, [ir.Constant(intp, v * lanes)]), vty.as_pointer())
                    xv = builder.load(vptr, align=size)
                    for ky in range(fh):
                        if 0 <= r - ky < rows:
                            acc = accs[r - ky][v]
                            builder.store(builder.call(fma, [splats[ky], xv, builder.load(acc)]), acc)
    for r in range(rows):
        for v in range(vectors):
            tptr = builder.gep(tile, [ir.Constant(intp, (r * vectors + v) * lanes)])
            builder.store(builder.load(accs[r][v]), builder.bitcast(tptr, vty.as_pointer()), align=size)
    builder.ret_void()
    return fn


def _rows_codegen(fh: int, vectors: int):
    def codegen(context, builder, signature, args):
        sig = signature.args
        xf, xoff, foff, fw, wd, wf, woff, tile = args
        xa = context.make_array(sig[0])(context, builder, xf)
        fa = context.make_array(sig[2])(context, builder, foff)
        wa = context.make_array(sig[5])(context, builder, wf)
        ta = context.make_array(sig[7])(context, builder, tile)
        nf = builder.extract_value(fa.shape, 0)
        xoff, fw, wd, woff = (context.cast(builder, args[i], sig[i], types.intp) for i in (1, 3, 4, 6))
        fty = context.get_value_type(sig[0].dtype)
        fn = _rows_function(builder.module, fty, nf.type, fh, vectors)
        builder.call(fn, [builder.gep(xa.data, [xoff]), fa.data, nf, fw, wd, builder.gep(wa.data, [woff]), ta.data])
        return context.get_dummy_value()

    return codegen


def conv_rows_tile(fh: int, vectors: int) -> Callable:
    """``conv_rows_tile_FHxV(xf, xoff, foff, fw, wd, wf, woff, tile)``: with R = TILE_ACCUMULATORS // ``vectors``
    rows of L = ``vectors`` * (VECTOR_BYTES // itemsize) pixels, read from input rows ``wd`` apart,
    tile[r*L + p] for r < R, p < L = the sum over f < len(foff), kx < fw, ky < ``fh``, in that
    order, of wf[woff + (f*fh + ky)*fw + kx] * xf[xoff + foff[f] + (r + ky)*wd + kx + p] (one FMA
    each in compiled code). 1-D C-contiguous float arrays of one dtype, ``foff`` int64. Compiled
    code does not check bounds: the caller guarantees them (the Python body checks them)."""
    python_body = _rows_python(fh, vectors)
    codegen = _rows_codegen(fh, vectors)

    def typer(typingctx, xf, xoff, foff, fw, wd, wf, woff, tile):
        if not _tile_check(xf, foff, wf, tile):
            return None
        return types.none(xf, xoff, foff, fw, wd, wf, woff, tile), codegen

    rows_llvm = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(xf, xoff, foff, fw, wd, wf, woff, tile):
        return lambda xf, xoff, foff, fw, wd, wf, woff, tile: rows_llvm(xf, xoff, foff, fw, wd, wf, woff, tile)

    return python_body


#: the rows tiles, (filter rows, vectors per row): TILE_ACCUMULATORS each (that // vectors rows)
CONV_ROWS_TILES = ((3, 2), (3, 4), (5, 2), (5, 4))
conv_rows_tile_3x2 = conv_rows_tile(3, 2)
conv_rows_tile_3x4 = conv_rows_tile(3, 4)
conv_rows_tile_5x2 = conv_rows_tile(5, 2)
conv_rows_tile_5x4 = conv_rows_tile(5, 4)


# --------------------------------------------------------------------------------------------
# The register tile of the direct convolution's filter gradient (conv_dw_direct): ``filters`` rows
# of the output gradient times ``terms`` filter terms, each accumulator a vector of pixel lanes.
# --------------------------------------------------------------------------------------------
def _dw_python(filters: int, terms: int) -> Callable:
    def conv_dw_tile(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc):
        lanes = VECTOR_BYTES // gf.itemsize
        span = nvec * lanes
        last = max(nimg - 1, 0)
        if min(nvec, nimg, goff, xoff, gstride, gimage, ximage) < 0 or koff.shape[0] < terms or koff[:terms].min() < 0:
            raise IndexError("conv_dw_tile: negative offsets or too few terms")
        if nimg and (
            goff + last * gimage + (filters - 1) * gstride + span > gf.shape[0]
            or xoff + last * ximage + int(koff[:terms].max()) + span > xf.shape[0]
        ):
            raise IndexError("conv_dw_tile would read out of bounds")
        if acc.shape[0] < filters * terms * lanes:
            raise IndexError("conv_dw_tile would write acc out of bounds")
        a = acc[: filters * terms * lanes].reshape(filters, terms, lanes)
        for i in range(nimg):
            for v in range(nvec):
                q = v * lanes
                for f in range(filters):
                    at = goff + i * gimage + f * gstride + q
                    g = gf[at : at + lanes]
                    for t in range(terms):
                        at = xoff + i * ximage + koff[t] + q
                        a[f, t] += g * xf[at : at + lanes]

    conv_dw_tile.__name__ = conv_dw_tile.__qualname__ = f"conv_dw_tile_{filters}x{terms}"
    return conv_dw_tile


def _dw_function(module: ir.Module, fty, intp, filters: int, terms: int) -> ir.Function:
    """f(g, gstride, gimage, x, ximage, koff, nvec, nimg, acc), g and x already offset; ``noinline``
    as the forward tile. The accumulators stay in registers over all ``nimg`` images."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    ptr = fty.as_pointer()
    name = f"fastlayers_conv_dw_tile_{filters}x{terms}_f{size * 8}"
    args = [ptr, intp, intp, ptr, intp, intp.as_pointer(), intp, intp, ptr]
    fn, new = _tile_declaration(module, name, args, noalias=False)
    if not new:
        return fn
    g, gstride, gimage, x, ximage, koff, nvec, nimg, acc_ptr = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    fma = _vector_fma(module, vty)

    def vptr(base, index):
        return builder.bitcast(builder.gep(base, [index]), vty.as_pointer())

    slots = [[vptr(acc_ptr, ir.Constant(intp, (f * terms + t) * lanes)) for t in range(terms)] for f in range(filters)]
    accs = [[cgutils.alloca_once_value(builder, builder.load(s, align=size)) for s in row] for row in slots]
    offsets = [builder.load(builder.gep(koff, [ir.Constant(intp, t)])) for t in range(terms)]
    with cgutils.for_range(builder, nimg) as image:
        gimg = builder.gep(g, [builder.mul(image.index, gimage)])
        ximg = builder.gep(x, [builder.mul(image.index, ximage)])
        grows = [builder.gep(gimg, [builder.mul(ir.Constant(intp, f), gstride)]) for f in range(filters)]
        xrows = [builder.gep(ximg, [offset]) for offset in offsets]
        with cgutils.for_range(builder, nvec) as loop:
            q = builder.mul(loop.index, ir.Constant(intp, lanes))
            gv = [builder.load(vptr(row, q), align=size) for row in grows]
            xv = [builder.load(vptr(row, q), align=size) for row in xrows]
            for f in range(filters):
                for t in range(terms):
                    acc = accs[f][t]
                    builder.store(builder.call(fma, [gv[f], xv[t], builder.load(acc)]), acc)
    for f in range(filters):
        for t in range(terms):
            builder.store(builder.load(accs[f][t]), slots[f][t], align=size)
    builder.ret_void()
    return fn


def _dw_codegen(filters: int, terms: int):
    def codegen(context, builder, signature, args):
        sig = signature.args
        gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc = args
        ga = context.make_array(sig[0])(context, builder, gf)
        xa = context.make_array(sig[4])(context, builder, xf)
        ka = context.make_array(sig[7])(context, builder, koff)
        aa = context.make_array(sig[10])(context, builder, acc)
        goff, gstride, gimage, xoff, ximage, nvec, nimg = (
            context.cast(builder, args[i], sig[i], types.intp) for i in (1, 2, 3, 5, 6, 8, 9)
        )
        fty = context.get_value_type(sig[0].dtype)
        fn = _dw_function(builder.module, fty, nvec.type, filters, terms)
        gptr, xptr = builder.gep(ga.data, [goff]), builder.gep(xa.data, [xoff])
        builder.call(fn, [gptr, gstride, gimage, xptr, ximage, ka.data, nvec, nimg, aa.data])
        return context.get_dummy_value()

    return codegen


def conv_dw_tile(filters: int, terms: int) -> Callable:
    """``conv_dw_tile_FxT(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc)``: for
    f < ``filters``, t < ``terms`` and the lanes l of a vector (VECTOR_BYTES), acc[(f*terms + t)*lanes + l]
    += the sum over images i < ``nimg`` and vectors v < ``nvec``, in that order, of
    gf[goff + i*gimage + f*gstride + v*lanes + l] * xf[xoff + i*ximage + koff[t] + v*lanes + l] (one
    FMA each in compiled code). 1-D C-contiguous float arrays of one dtype, ``koff`` int64 (its first
    ``terms`` entries are read). Compiled code does not check bounds (the Python body does)."""
    python_body = _dw_python(filters, terms)
    codegen = _dw_codegen(filters, terms)

    def typer(typingctx, gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc):
        if not _tile_check(gf, koff, xf, acc):
            return None
        return types.none(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc), codegen

    dw_llvm = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc):
        def impl(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc):
            dw_llvm(gf, goff, gstride, gimage, xf, xoff, ximage, koff, nvec, nimg, acc)

        return impl

    return python_body


#: the filter gradient's tile: (rows of the output gradient, filter terms), TILE_ACCUMULATORS
#: accumulators (4 x 6 with AVX-512; 4 x 3 with AVX2, where 4 x 6 spilled: docs/PERFORMANCE.md)
CONV_DW_TILE = (4, TILE_ACCUMULATORS // 4)
conv_dw_tile_4 = conv_dw_tile(*CONV_DW_TILE)


# --------------------------------------------------------------------------------------------
# The filter gradient's channel-lanes tile (conv_dw_lanes): ``terms`` filter terms times ``vectors``
# vectors of consecutive filters (VECTOR_BYTES // itemsize lanes each), accumulated in vector
# registers over every pixel of every image: per pixel, ``vectors`` loads of the gradient (laid out
# pixel by pixel, its filters contiguous), ``terms`` broadcast input values, ``terms * vectors``
# FMAs. Only the output's pixels are visited: no padded column is computed.
# --------------------------------------------------------------------------------------------
def _dw_lanes_python(terms: int, vectors: int) -> Callable:
    def conv_dw_lanes_tile(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc):
        fc = vectors * (VECTOR_BYTES // gf.itemsize)
        npix = pof.shape[0]
        if min(goff, gstride, xoff, ximage, nimg) < 0 or koff.shape[0] < terms or koff[:terms].min() < 0:
            raise IndexError("conv_dw_lanes_tile: negative offsets or too few terms")
        if npix and pof.min() < 0:
            raise IndexError("conv_dw_lanes_tile: negative pixel offset")
        if (
            nimg
            and npix
            and (
                goff + (nimg * npix - 1) * gstride + fc > gf.shape[0]
                or xoff + (nimg - 1) * ximage + int(pof.max()) + int(koff[:terms].max()) >= xf.shape[0]
            )
        ):
            raise IndexError("conv_dw_lanes_tile would read out of bounds")
        if acc.shape[0] < terms * fc:
            raise IndexError("conv_dw_lanes_tile would write acc out of bounds")
        a = acc[: terms * fc].reshape(terms, fc)
        for i in range(nimg):
            for p in range(npix):
                at = goff + (i * npix + p) * gstride
                g = gf[at : at + fc]
                for t in range(terms):
                    a[t] += xf[xoff + i * ximage + pof[p] + koff[t]] * g

    conv_dw_lanes_tile.__name__ = conv_dw_lanes_tile.__qualname__ = f"conv_dw_lanes_tile_{terms}x{vectors}"
    return conv_dw_lanes_tile


def _dw_lanes_function(module: ir.Module, fty, intp, terms: int, vectors: int) -> ir.Function:
    """f(g, gstride, x, ximage, pof, npix, koff, nimg, acc), g and x already offset; ``noinline`` as
    the other tiles. The accumulators stay in registers over all ``nimg`` images."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    ptr = fty.as_pointer()
    name = f"fastlayers_conv_dw_lanes_tile_{terms}x{vectors}_f{size * 8}"
    args = [ptr, intp, ptr, intp, intp.as_pointer(), intp, intp.as_pointer(), intp, ptr]
    fn, new = _tile_declaration(module, name, args, noalias=False)
    if not new:
        return fn
    g, gstride, x, ximage, pof, npix, koff, nimg, acc_ptr = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    fma = _vector_fma(module, vty)

    def vptr(base, index):
        return builder.bitcast(builder.gep(base, [index]), vty.as_pointer())

    slots = [
        [vptr(acc_ptr, ir.Constant(intp, (t * vectors + v) * lanes)) for v in range(vectors)] for t in range(terms)
    ]
    accs = [[cgutils.alloca_once_value(builder, builder.load(s, align=size)) for s in row] for row in slots]
    offsets = [builder.load(builder.gep(koff, [ir.Constant(intp, t)])) for t in range(terms)]
    with cgutils.for_range(builder, nimg) as image:
        gimg = builder.gep(g, [builder.mul(builder.mul(image.index, npix), gstride)])
        ximg = builder.gep(x, [builder.mul(image.index, ximage)])
        with cgutils.for_range(builder, npix) as pixel:
            xbase = builder.gep(ximg, [builder.load(builder.gep(pof, [pixel.index]))])
            grow = builder.gep(gimg, [builder.mul(pixel.index, gstride)])
            gv = [builder.load(vptr(grow, ir.Constant(intp, v * lanes)), align=size) for v in range(vectors)]
            for t in range(terms):
                splat = _splat(builder, builder.load(builder.gep(xbase, [offsets[t]])), vty)
                for v in range(vectors):
                    acc = accs[t][v]
                    builder.store(builder.call(fma, [splat, gv[v], builder.load(acc)]), acc)
    for t in range(terms):
        for v in range(vectors):
            builder.store(builder.load(accs[t][v]), slots[t][v], align=size)
    builder.ret_void()
    return fn


def _dw_lanes_codegen(terms: int, vectors: int):
    def codegen(context, builder, signature, args):
        sig = signature.args
        gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc = args
        ga = context.make_array(sig[0])(context, builder, gf)
        xa = context.make_array(sig[3])(context, builder, xf)
        pa = context.make_array(sig[6])(context, builder, pof)
        ka = context.make_array(sig[7])(context, builder, koff)
        aa = context.make_array(sig[9])(context, builder, acc)
        goff, gstride, xoff, ximage, nimg = (
            context.cast(builder, args[i], sig[i], types.intp) for i in (1, 2, 4, 5, 8)
        )
        npix = builder.extract_value(pa.shape, 0)
        fty = context.get_value_type(sig[0].dtype)
        fn = _dw_lanes_function(builder.module, fty, npix.type, terms, vectors)
        gptr, xptr = builder.gep(ga.data, [goff]), builder.gep(xa.data, [xoff])
        builder.call(fn, [gptr, gstride, xptr, ximage, pa.data, npix, ka.data, nimg, aa.data])
        return context.get_dummy_value()

    return codegen


def conv_dw_lanes_tile(terms: int, vectors: int) -> Callable:
    """``conv_dw_lanes_tile_TxV(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc)``: with
    FC = ``vectors`` * (VECTOR_BYTES // itemsize) and P = len(pof), for t < ``terms`` and f < FC,
    acc[t*FC + f] += the sum over images i < ``nimg`` and pixels p < P, in that order, of
    xf[xoff + i*ximage + pof[p] + koff[t]] * gf[goff + (i*P + p)*gstride + f] (one FMA each in
    compiled code). 1-D C-contiguous float arrays of one dtype, ``pof`` and ``koff`` int64 (the
    first ``terms`` entries of ``koff`` are read). Compiled code does not check bounds (the Python
    body does)."""
    python_body = _dw_lanes_python(terms, vectors)
    codegen = _dw_lanes_codegen(terms, vectors)

    def typer(typingctx, gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc):
        if not (_tile_check(gf, koff, xf, acc) and _tile_check(gf, pof, xf, acc)):
            return None
        return types.none(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc), codegen

    tile_llvm = intrinsic(typer)

    @overload(python_body, inline="always")
    def _impl(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc):
        def impl(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc):
            tile_llvm(gf, goff, gstride, xf, xoff, ximage, pof, koff, nimg, acc)

        return impl

    return python_body


#: the filter gradient's channel-lanes tile: (filter terms, vectors of filters), TILE_ACCUMULATORS
#: accumulators, which with the loaded gradient vectors and one broadcast fit the vector registers
CONV_DW_LANES_TILE = (6, TILE_ACCUMULATORS // 6)
conv_dw_lanes_tile_6 = conv_dw_lanes_tile(*CONV_DW_LANES_TILE)


# --------------------------------------------------------------------------------------------
# The register tile of the small dense products (fastlayers._kernels.dense): ``rows`` rows of the
# result times up to ``DENSE_VECTORS`` vectors of consecutive columns (VECTOR_BYTES // itemsize
# lanes each), accumulated in vector registers over the whole reduction: per term k, one load of
# each vector of ``b``'s row k (the last one masked to the columns that exist), ``rows`` broadcast
# elements of ``a``, ``rows * vectors`` FMAs. Operands are addressed by offsets and strides in
# elements, so that one tile serves ``a @ b`` and ``a.T @ b``.
# --------------------------------------------------------------------------------------------
#: rows and vectors of the largest dense tile: TILE_ACCUMULATORS accumulators (6 x 4 with AVX-512,
#: 6 x 2 with AVX2), which with the loaded vectors of ``b`` and one broadcast fit the vector registers
DENSE_ROWS = 6
DENSE_VECTORS = TILE_ACCUMULATORS // DENSE_ROWS
#: the most vectors of a tile of fewer rows: ``DENSE_TILE_VECTORS[rows]`` = min(this, the
#: accumulators over its rows), so that one row (a one-row ``predict``) keeps 4 independent sums per
#: term with AVX2 too (with AVX-512 every row count takes 4)
DENSE_VECTORS_MAX = 4
#: the vectors of columns of the dense tile of ``rows`` rows, 1 to DENSE_ROWS (0 at 0 rows), read by
#: the tile, its callers and its compiled switch alike
DENSE_TILE_VECTORS = (0, *(min(DENSE_VECTORS_MAX, TILE_ACCUMULATORS // r) for r in range(1, DENSE_ROWS + 1)))


def dense_tile(a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols):
    """c[coff + r*crs + j] = the sum over k < nk, in order, of a[aoff + r*ars + k*aks] *
    b[boff + k*bks + j] (one FMA each in compiled code), for r < ``rows`` and j < ``ncols``;
    ``rows`` from 1 to :data:`DENSE_ROWS`, ``ncols`` from 1 to ``DENSE_TILE_VECTORS[rows]`` *
    (VECTOR_BYTES // itemsize). ``a``, ``b``, ``c``: C-contiguous float arrays of one dtype, indexed as flat. Compiled
    code does not check bounds: the caller guarantees them (this Python body checks them)."""
    lanes = VECTOR_BYTES // c.itemsize
    af, bf, cf = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    if not (1 <= rows <= DENSE_ROWS and 1 <= ncols <= DENSE_TILE_VECTORS[rows] * lanes and nk >= 0):
        raise IndexError("dense_tile: rows or ncols outside the tile")
    if min(aoff, boff, coff, ars, aks, bks, crs) < 0:
        raise IndexError("dense_tile: negative offset or stride")
    if nk and (aoff + (rows - 1) * ars + (nk - 1) * aks >= af.shape[0] or boff + (nk - 1) * bks + ncols > bf.shape[0]):
        raise IndexError("dense_tile would read a or b out of bounds")
    if coff + (rows - 1) * crs + ncols > cf.shape[0]:
        raise IndexError("dense_tile would write c out of bounds")
    acc = np.zeros((rows, ncols), c.dtype)
    r_index = aoff + np.arange(rows) * ars
    for k in range(nk):
        acc += af[r_index + k * aks][:, None] * bf[boff + k * bks : boff + k * bks + ncols][None, :]
    for r in range(rows):
        cf[coff + r * crs : coff + r * crs + ncols] = acc[r]


def _masked_names(vty) -> tuple[str, str]:
    """LLVM's names of the masked vector load and store of ``vty`` (pointer types are mangled into
    the name; LLVM 15 and later mangle every pointer as ``p0``, older ones by the pointee)."""
    size = 32 if vty.element == ir.FloatType() else 64
    suffix = f"v{vty.count}f{size}"
    pointer = "p0" if str(ir.IntType(8).as_pointer()) == "ptr" else f"p0{suffix}"
    return f"llvm.masked.load.{suffix}.{pointer}", f"llvm.masked.store.{suffix}.{pointer}"


def _dense_function(module: ir.Module, fty, intp, rows: int, vectors: int) -> ir.Function:
    """The tile of ``rows`` x ``vectors`` as its own LLVM function, made once per module:
    f(a, ars, aks, b, bks, nk, c, crs, ncols) with a, b, c already offset; the last vector is masked
    to ``ncols``."""
    size = 4 if isinstance(fty, ir.FloatType) else 8
    lanes = VECTOR_BYTES // size
    ptr = fty.as_pointer()
    name = f"fastlayers_dense_tile_{rows}x{vectors}_f{size * 8}"
    fn, new = _tile_declaration(module, name, [ptr, intp, intp, ptr, intp, intp, ptr, intp, intp])
    if not new:
        return fn
    a, ars, aks, b, bks, nk, c, crs, ncols = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vty = ir.VectorType(fty, lanes)
    i1, i32 = ir.IntType(1), ir.IntType(32)
    mty = ir.VectorType(i1, lanes)
    fma = _vector_fma(module, vty)
    load_name, store_name = _masked_names(vty)
    vptr = vty.as_pointer()
    mload = cgutils.get_or_insert_function(module, ir.FunctionType(vty, [vptr, i32, mty, vty]), load_name)
    mstore = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [vty, vptr, i32, mty]), store_name)
    zero = cgutils.get_null_value(vty)
    # the last vector's lanes that exist: lane + (vectors - 1) * lanes < ncols
    first = (vectors - 1) * lanes
    iota = ir.Constant(ir.VectorType(intp, lanes), [ir.Constant(intp, first + i) for i in range(lanes)])
    limit = _splat(builder, ncols, ir.VectorType(intp, lanes))
    mask = builder.icmp_signed("<", iota, limit)
    align = ir.Constant(i32, size)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        bbase = builder.gep(b, [builder.mul(k, bks)])
        bv = []
        for v in range(vectors):
            p = builder.bitcast(builder.gep(bbase, [ir.Constant(intp, v * lanes)]), vptr)
            if v < vectors - 1:
                bv.append(builder.load(p, align=size))
            else:
                bv.append(builder.call(mload, [p, align, mask, zero]))
        abase = builder.gep(a, [builder.mul(k, aks)])
        for r in range(rows):
            value = builder.load(builder.gep(abase, [builder.mul(ir.Constant(intp, r), ars)]))
            splat = _splat(builder, value, vty)
            for v in range(vectors):
                acc = accs[r][v]
                builder.store(builder.call(fma, [splat, bv[v], builder.load(acc)]), acc)
    for r in range(rows):
        cbase = builder.gep(c, [builder.mul(ir.Constant(intp, r), crs)])
        for v in range(vectors):
            p = builder.bitcast(builder.gep(cbase, [ir.Constant(intp, v * lanes)]), vptr)
            if v < vectors - 1:
                builder.store(builder.load(accs[r][v]), p, align=size)
            else:
                builder.call(mstore, [builder.load(accs[r][v]), p, align, mask])
    builder.ret_void()
    return fn


def _dense_codegen(context, builder, signature, args):
    aty, bty, cty = signature.args[0], signature.args[4], signature.args[8]
    a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols = args
    intp_t = types.intp

    def idx(i):
        return context.cast(builder, args[i], signature.args[i], intp_t)

    aoff, ars, aks, boff, bks, nk, coff, crs, rows, ncols = (idx(i) for i in (1, 2, 3, 5, 6, 7, 9, 10, 11, 12))
    ad = context.make_array(aty)(context, builder, a).data
    bd = context.make_array(bty)(context, builder, b).data
    cd = context.make_array(cty)(context, builder, c).data
    fty = context.get_value_type(cty.dtype)
    intp = nk.type
    lanes = VECTOR_BYTES // context.get_abi_sizeof(fty)
    a0, b0, c0 = builder.gep(ad, [aoff]), builder.gep(bd, [boff]), builder.gep(cd, [coff])
    # vectors = ceil(ncols / lanes); one call per (rows, vectors) pair, chosen by a switch
    vectors = builder.udiv(builder.add(ncols, ir.Constant(intp, lanes - 1)), ir.Constant(intp, lanes))
    key = builder.add(builder.mul(rows, ir.Constant(intp, 8)), vectors)
    done = builder.append_basic_block("dense_tile.done")
    switch = builder.switch(key, done)
    for r in range(1, DENSE_ROWS + 1):
        for v in range(1, DENSE_TILE_VECTORS[r] + 1):
            block = builder.append_basic_block(f"dense_tile.{r}x{v}")
            switch.add_case(ir.Constant(intp, r * 8 + v), block)
            with builder.goto_block(block):
                fn = _dense_function(builder.module, fty, intp, r, v)
                builder.call(fn, [a0, ars, aks, b0, bks, nk, c0, crs, ncols])
                builder.branch(done)
    builder.position_at_end(done)
    return context.get_dummy_value()


def _dense_check(a, b, c, ints) -> bool:
    return (
        all(
            isinstance(x, types.Array) and x.layout == "C" and x.dtype in (types.float32, types.float64)
            for x in (a, b, c)
        )
        and a.dtype == b.dtype == c.dtype
        and c.mutable
        and all(isinstance(i, types.Integer) for i in ints)
    )


@intrinsic
def _dense_tile_llvm(typingctx, a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols):
    if not _dense_check(a, b, c, (aoff, ars, aks, boff, bks, nk, coff, crs, rows, ncols)):
        return None
    return types.none(a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols), _dense_codegen


@overload(dense_tile, inline="always")
def _dense_tile_impl(a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols):
    return lambda a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols: _dense_tile_llvm(
        a, aoff, ars, aks, b, boff, bks, nk, c, coff, crs, rows, ncols
    )


def entry_point(dispatcher, args: tuple) -> Callable:
    """The machine code of ``dispatcher`` (a twin) for arguments of exactly the Numba types of
    ``args``, compiled or loaded from the cache now, as a callable that skips Numba's typing of the
    arguments at each call (docs/PERFORMANCE.md, "Plans").

    Only for callers that check, at every call, that each argument has the type it had here (dtype,
    dimensions, layout, alignment, writeability, tuple length): the entry point converts whatever it
    is given as if it had those types. With ``NUMBA_DISABLE_JIT=1``, ``dispatcher`` itself."""
    if DISABLED:
        return dispatcher
    from numba.core.typing.typeof import Purpose, typeof

    return dispatcher.compile(tuple(typeof(a, Purpose.argument) for a in args))
