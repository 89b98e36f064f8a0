"""Scalar math for the kernels: typed constants and an exp that LLVM can vectorize.

``np.exp`` inside a Numba loop is a call into libm for every element: the llvmlite wheels on the
package index have no SVML, so such loops do not vectorize. ``exp_nonpos`` computes exp by range
reduction (Cody-Waite split of ln 2), a polynomial, and a scale by 2**n built by writing the exponent
bits directly (``_pow2``). It is branch-free, so loops that call it vectorize.

Both functions dispatch on the argument's dtype at compile time (``numba.extending.overload``): the
float32 version uses float32 constants and a shorter polynomial, so float32 code never silently
promotes to float64.

Accuracy, checked by ``tests/test_kernels.py`` on a dense grid of ``[-800, 0]`` against the exact
value (float64 ``np.exp``): within 1.5 ulp in float32 and float64 (1 ulp of NumPy's own result),
subnormal results within one subnormal step, exact 0 below the underflow point, exact 1 at 0, NaN in
gives NaN out, ``-inf`` gives 0.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


def typed(value, ref):  # pragma: no cover - replaced by the overload inside jitted code
    """``value`` converted to the dtype of ``ref`` (an array or a scalar), in jitted code only."""
    raise NotImplementedError("typed() is only callable from jitted code")


@overload(typed, inline="always")
def _typed_overload(value, ref):
    dtype = ref.dtype if isinstance(ref, types.Array) else ref

    def impl(value, ref):
        return dtype(value)

    return impl


@intrinsic
def _bits_to_f64(typingctx, bits):
    """Reinterpret the 64 bits of an int64 as a float64."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterpret the 32 bits of an int32 as a float32."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp_nonpos(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp(x) for x <= 0 (and NaN), vectorizable; in jitted code only."""
    raise NotImplementedError("exp_nonpos() is only callable from jitted code")


# float64: |r| <= ln2/2 after reduction; Taylor terms up to r**13/13! leave an error below 1e-17.
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # upper bits of ln 2, exact in n * _LN2_HI for |n| < 2**11
_LN2_LO = 1.90821492927058770002e-10
_LO64 = -746.0  # exp(-746) rounds to 0 in float64
_LO32 = np.float32(-104.0)  # exp(-104) rounds to 0 in float32


@overload(exp_nonpos, inline="always")
def _exp_nonpos_overload(x):
    if x == types.float64:

        def exp64(x):
            xc = x if x > _LO64 else _LO64  # NaN also goes to _LO64 here; restored below
            n = np.floor(xc * _LOG2E + 0.5)
            r = (xc - n * _LN2_HI) - n * _LN2_LO
            p = 1.0 / 6227020800.0
            p = p * r + 1.0 / 479001600.0
            p = p * r + 1.0 / 39916800.0
            p = p * r + 1.0 / 3628800.0
            p = p * r + 1.0 / 362880.0
            p = p * r + 1.0 / 40320.0
            p = p * r + 1.0 / 5040.0
            p = p * r + 1.0 / 720.0
            p = p * r + 1.0 / 120.0
            p = p * r + 1.0 / 24.0
            p = p * r + 1.0 / 6.0
            p = p * r + 0.5
            p = p * r + 1.0
            p = p * r + 1.0
            ni = np.int64(n)  # in [-1076, 0]
            n1 = ni >> 1
            n2 = ni - n1  # two factors keep each 2**k normal, so subnormal results come out right
            y = p * _bits_to_f64((n1 + 1023) << 52) * _bits_to_f64((n2 + 1023) << 52)
            return y if x == x else x

        return exp64

    if x == types.float32:
        log2e = np.float32(_LOG2E)
        ln2_hi = np.float32(0.693359375)
        ln2_lo = np.float32(-2.12194440e-4)
        c = [np.float32(1.0 / k) for k in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0)]
        c0, c1, c2, c3, c4, c5, c6, c7 = c
        half = np.float32(0.5)

        def exp32(x):
            xc = x if x > _LO32 else _LO32
            n = np.floor(xc * log2e + half)
            r = (xc - n * ln2_hi) - n * ln2_lo
            p = c0
            p = p * r + c1
            p = p * r + c2
            p = p * r + c3
            p = p * r + c4
            p = p * r + c5
            p = p * r + c6
            p = p * r + c7
            ni = np.int32(n)  # in [-150, 0]
            n1 = ni >> np.int32(1)
            n2 = ni - n1
            y = (
                p
                * _bits_to_f32((n1 + np.int32(127)) << np.int32(23))
                * _bits_to_f32((n2 + np.int32(127)) << np.int32(23))
            )
            return y if x == x else x

        return exp32

    return None
