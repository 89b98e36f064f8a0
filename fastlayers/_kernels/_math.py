"""Scalar math for the kernels: typed constants and an exp that LLVM can vectorize.

``np.exp`` inside a Numba loop is a call into libm for every element: the llvmlite wheels on the
package index have no SVML, so such loops do not vectorize. ``exp_nonpos`` computes exp by range
reduction (Cody-Waite split of ln 2), a polynomial, and a scale by 2**n built by writing the exponent
bits directly (the scheme is described above its constants). It is branch-free, so loops that call
it vectorize: about 15 vector instructions per 16 float32 values.

Both functions dispatch on the argument's dtype at compile time (``numba.extending.overload``): the
float32 version uses float32 constants and a shorter polynomial (degree 6, minimax), so float32 code
never silently promotes to float64.

Accuracy, checked by ``tests/test_kernels.py`` on a dense grid of ``[-800, 0]`` against the exact
value (float64 ``np.exp``): within 1.5 ulp in float32 and float64 (1 ulp of NumPy's own result),
subnormal results within one subnormal step, exact 0 below the underflow point, exact 1 at 0, NaN in
gives NaN out, ``-inf`` gives 0.
"""

from __future__ import annotations

import math

import numpy as np
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


def _bitcast(name: str, src, dst):
    """A Numba intrinsic ``name(value)`` that reinterprets the bits of a ``src`` scalar as ``dst``
    (same width), as an LLVM ``bitcast``: no conversion, no instruction of its own."""

    def impl(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    impl.__name__ = impl.__qualname__ = name
    impl.__doc__ = f"Reinterpret the bits of a {src} as a {dst}."
    return intrinsic(impl)


_bits_to_f64 = _bitcast("_bits_to_f64", types.int64, types.float64)
_f64_to_bits = _bitcast("_f64_to_bits", types.float64, types.int64)
_bits_to_f32 = _bitcast("_bits_to_f32", types.int32, types.float32)
_f32_to_bits = _bitcast("_f32_to_bits", types.float32, types.int32)


def exp_nonpos(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp(x) for x <= 0 (and NaN), vectorizable; in jitted code only."""
    raise NotImplementedError("exp_nonpos() is only callable from jitted code")


# The scheme, for both dtypes: n = round(x / ln 2) comes from adding a "magic" constant 1.5 * 2**m
# (m = mantissa bits), which leaves n in the low bits of the sum; r = x - n ln 2 (Cody-Waite split of
# ln 2); exp(r) by a polynomial in Horner form; then one multiply by 2**(n + 64), whose bits are the low
# bits of the sum shifted into the exponent field. The polynomial coefficients carry a factor 2**-64
# (exact: a power of two), so that 2**(n + 64) stays a normal number down to the underflow point and a
# subnormal result is rounded once, correctly. NaN passes through every step (the clamp keeps it), so
# no separate NaN test is needed. Constants are module globals, which Numba freezes into the code
# (a tuple of coefficients was left in memory and re-loaded on every iteration: 20% slower).
_LOG2E = 1.4426950408889634
_S = 2.0**-64

# float64: Taylor terms up to r**13/13! on |r| <= ln2/2 (truncation below 1e-17)
_D13, _D12, _D11, _D10, _D9, _D8, _D7, _D6, _D5, _D4, _D3, _D2, _D1, _D0 = (
    _S / math.factorial(k) for k in range(13, -1, -1)
)
_D_MAGIC = 1.5 * 2.0**52
_D_LO = -746.0  # exp(-746) rounds to 0; down there n = -1076 and 2**(n + 64) is still normal
_D_LN2_HI = 0.693147180369123816490  # upper bits of ln 2: n * _D_LN2_HI is exact for |n| < 2**11
_D_LN2_LO = 1.90821492927058770002e-10
_D_BIAS = np.int64(1023 + 64)

# float32: degree-6 minimax fit of exp on |r| <= ln2/2 (relative error 1.9e-9; half an ulp is 6e-8)
_F6, _F5, _F4, _F3, _F2, _F1, _F0 = (
    np.float32(c * _S)
    for c in (
        0.0013836775906383991,
        0.008374855853617191,
        0.041668228805065155,
        0.16666419804096222,
        0.49999991059303284,
        1.0,
        1.0,
    )
)
_F_MAGIC = np.float32(1.5 * 2.0**23)
_F_LO = np.float32(-104.0)  # exp(-104) rounds to 0; down there n = -150
_F_LOG2E = np.float32(_LOG2E)
_F_LN2_HI = np.float32(0.693359375)  # 9 significant bits: n * _F_LN2_HI is exact
_F_LN2_LO = np.float32(-2.12194440e-4)
_F_BIAS = np.int32(127 + 64)
_F_23 = np.int32(23)


@overload(exp_nonpos)
def _exp_nonpos_overload(x):
    if x == types.float64:

        def exp64(x):
            xc = _D_LO if x < _D_LO else x  # NaN stays NaN
            t = xc * _LOG2E + _D_MAGIC  # n + magic, n rounded to nearest
            n = t - _D_MAGIC
            r = (xc - n * _D_LN2_HI) - n * _D_LN2_LO
            p = ((((((_D13 * r + _D12) * r + _D11) * r + _D10) * r + _D9) * r + _D8) * r + _D7) * r + _D6
            p = (((((p * r + _D5) * r + _D4) * r + _D3) * r + _D2) * r + _D1) * r + _D0
            return p * _bits_to_f64((_f64_to_bits(t) << 52) + (_D_BIAS << 52))

        return exp64

    if x == types.float32:

        def exp32(x):
            xc = _F_LO if x < _F_LO else x  # NaN stays NaN
            t = xc * _F_LOG2E + _F_MAGIC  # n + magic, n rounded to nearest
            n = t - _F_MAGIC
            r = (xc - n * _F_LN2_HI) - n * _F_LN2_LO
            p = (((((_F6 * r + _F5) * r + _F4) * r + _F3) * r + _F2) * r + _F1) * r + _F0
            return p * _bits_to_f32((_f32_to_bits(t) << _F_23) + (_F_BIAS << _F_23))

        return exp32

    return None
