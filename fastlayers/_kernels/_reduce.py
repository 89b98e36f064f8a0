"""Sum and max of a 1-D float array in explicit SIMD lanes, for the row kernels.

Why by hand: a running sum or max in a loop is one long chain of dependent operations. LLVM's loop
vectorizer splits such a chain into vector lanes only when it may reorder floating-point additions
(``reassoc``, which this project does not grant: results would then depend on the compiler), and
Numba switches LLVM's SLP vectorizer off (it miscompiled code), so eight or sixteen scalar
accumulators written in Python stay scalar: about 0.5 cycles per element, as slow as the exp pass.

``row_sum`` and ``row_max`` are Numba intrinsics that emit the loop in LLVM IR with vector types:
``ACCUMULATORS`` vectors of ``64 // itemsize`` lanes (16 float32 or 8 float64) take the elements in
turn, the leftover tail goes through a scalar accumulator, and everything is combined in a fixed tree
order. The order of operations is fixed by the array length alone, so results are deterministic and
independent of threads; the NumPy twins are ``x.sum()`` and ``x.max()`` (equal up to rounding for
the sum, exactly for the max). The vectors are plain LLVM vector types: on a machine without 512-bit
registers LLVM splits them into narrower ones. A strided (non-contiguous) array fills the same lanes
element by element, so its result is bit-identical to that of a contiguous copy.

NaN: ``row_max`` uses ``a if a > b else b`` semantics lane by lane, so a NaN never becomes the max
(callers that care detect NaN through the sum, as the softmax kernels do); ``row_sum`` propagates
NaN as any sum does. ``row_max`` of an empty array is not defined (callers never pass one).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: independent vector accumulators: enough to hide the add latency (4 cycles) behind the loads
ACCUMULATORS = 4


def _check(arr) -> bool:
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

        # fixed tree: accumulators pairwise, then halves of the lanes, then the tail
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
def row_sum(typingctx, arr):
    """Sum of a 1-D float32/float64 array (see the module docstring for the order)."""
    if not _check(arr):
        return None
    return arr.dtype(arr), _reduction("sum")


@intrinsic
def row_max(typingctx, arr):
    """Max of a non-empty 1-D float32/float64 array; NaN never wins."""
    if not _check(arr):
        return None
    return arr.dtype(arr), _reduction("max")
