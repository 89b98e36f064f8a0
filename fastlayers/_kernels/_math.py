"""A vectorizable exp for the kernels.

``exp_nonpos(x)`` is exp for x <= 0 (and NaN). Compiled, it is computed by range reduction (Cody-Waite
split of ln 2), a polynomial, and a scale by 2**n built by writing the exponent bits directly; it is
branch-free, so loops that call it vectorize (``np.exp`` in a Numba loop is a libm call per element:
see docs/PERFORMANCE.md). Each dtype has its own version (:func:`~._numba.by_dtype`): float32 uses
float32 constants and a degree-6 minimax polynomial, so float32 code never promotes to float64.
Without the JIT, its Python body is NumPy's float64 ``exp`` rounded to the argument's dtype.

Accuracy, checked by ``tests/test_kernels.py`` on a dense grid of ``[-800, 0]`` against the exact
value (float64 ``np.exp``): within 1.5 ulp in float32 and float64 (1 ulp of NumPy's own result),
subnormal results within one subnormal step, exact 0 below the underflow point, exact 1 at 0, NaN in
gives NaN out, ``-inf`` gives 0.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import bits_to_f32, bits_to_f64, by_dtype, f32_to_bits, f64_to_bits

# The scheme, for both dtypes: n = round(x / ln 2) comes from adding a "magic" constant 1.5 * 2**m
# (m = mantissa bits), which leaves n in the low bits of the sum; r = x - n ln 2 (Cody-Waite split of
# ln 2); exp(r) by a polynomial in Horner form; then one multiply by 2**(n + 64), whose bits are the low
# bits of the sum shifted into the exponent field. The polynomial coefficients carry a factor 2**-64
# (exact: a power of two), so that 2**(n + 64) stays a normal number down to the underflow point and a
# subnormal result is rounded once, correctly. NaN passes through every step (the clamp keeps it), so
# no separate NaN test is needed. Constants are module globals, which Numba freezes into the code.
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


def _exp64(x):
    xc = _D_LO if x < _D_LO else x  # NaN stays NaN
    t = xc * _LOG2E + _D_MAGIC  # n + magic, n rounded to nearest
    n = t - _D_MAGIC
    r = (xc - n * _D_LN2_HI) - n * _D_LN2_LO
    p = ((((((_D13 * r + _D12) * r + _D11) * r + _D10) * r + _D9) * r + _D8) * r + _D7) * r + _D6
    p = (((((p * r + _D5) * r + _D4) * r + _D3) * r + _D2) * r + _D1) * r + _D0
    return p * bits_to_f64((f64_to_bits(t) << 52) + (_D_BIAS << 52))


def _exp32(x):
    xc = _F_LO if x < _F_LO else x  # NaN stays NaN
    t = xc * _F_LOG2E + _F_MAGIC  # n + magic, n rounded to nearest
    n = t - _F_MAGIC
    r = (xc - n * _F_LN2_HI) - n * _F_LN2_LO
    p = (((((_F6 * r + _F5) * r + _F4) * r + _F3) * r + _F2) * r + _F1) * r + _F0
    return p * bits_to_f32((f32_to_bits(t) << _F_23) + (_F_BIAS << _F_23))


def _exp_numpy(x):
    """exp(x) in the dtype of ``x``, computed in float64 and rounded once: the Python body (NumPy's
    own float32 exp is up to 2.2 ulp off, more than the compiled versions)."""
    return type(x)(np.exp(np.float64(x)))


#: exp(x) for x <= 0 (and NaN), vectorizable when compiled.
exp_nonpos = by_dtype(_exp_numpy, float32=_exp32, float64=_exp64)
