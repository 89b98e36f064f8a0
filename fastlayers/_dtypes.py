"""The dtype rule of fastlayers, NumPy's, in one place; and the conversion of array-likes.

The rule
--------
A call computes in, and returns, the dtype that the classic NumPy expression gives for the same
operands: :func:`numpy.result_type` of its floating-point operands, with NEP 50's rules for Python
scalars (a Python ``float`` or ``int`` takes the other operands' dtype; a NumPy scalar such as
``np.float64(2.0)`` counts like an array of its dtype). So float32 with float32 stays float32, and
float32 images with float64 weights compute in float64, as ``x @ W + b`` does. Two departures:

- float16 is computed in float32 and returned as float32 (the kernels have no float16 arithmetic);
- when no operand is floating point (integer or bool arrays, lists of ints), the call computes in
  float64 (what NumPy gives for ``exp`` or a division of integers; ReLU of integers included).

Integer labels never enter the rule. Complex, object, string, datetime and ``longdouble`` operands
raise ``TypeError`` naming the argument.

Strict mode (``fastlayers.strict_dtypes()``, ``fastlayers.set_strict_dtypes()`` or
``FASTLAYERS_STRICT_DTYPES=1``) refuses two floating-point operands of different precision with
``TypeError`` instead of promoting them.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _backend

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
FLOATS = (F32, F64)


def as_array(value, name: str, real: bool = True) -> np.ndarray:
    """``np.asarray(value)`` with the checks every entry point needs.

    Native float32/float64 ndarrays come back as they are. Otherwise: objects with ``__array__``
    (a CPU torch tensor), lists, tuples, memmaps, ``np.matrix`` become plain ndarrays; a masked array
    gives its data when nothing is masked; non-native byte order is converted once to native.

    Raises
    ------
    TypeError
        Ragged lists and other values NumPy cannot convert; a tensor that requires grad (with the
        ``.detach()`` hint); a masked array with masked entries; with ``real`` (the default),
        dtypes that are not real numbers (the caller checks them itself otherwise).
    """
    if type(value) is np.ndarray and value.dtype in FLOATS:
        return value
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.getmaskarray(value).any():
            raise TypeError(f"{name} is a masked array with masked entries; fill them first (e.g. {name}.filled(0))")
        value = value.data
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as exc:
        if getattr(value, "requires_grad", False):
            raise TypeError(
                f"{name} is a tensor that requires grad; pass {name}.detach() (fastlayers computes its own gradients)"
            ) from None
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
    kind = a.dtype.kind
    if real and kind == "f" and a.dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {a.dtype}; only float16, float32 and float64 are supported")
    if real and kind not in "fiub":
        raise TypeError(f"{name} has dtype {a.dtype}; expected a real number array (float32 or float64)")
    if not a.dtype.isnative and kind in "fiub":
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _is_weak(value) -> bool:
    """A Python number (not a NumPy scalar): NEP 50 lets the other operands decide the dtype."""
    return isinstance(value, (int, float)) and not isinstance(value, np.generic)


def compute_dtype(**operands) -> np.dtype:
    """The dtype a call computes in and returns: the module's rule applied to ``operands``.

    Parameters
    ----------
    **operands
        The call's floating-point operands by argument name, each an ndarray from :func:`as_array`,
        a NumPy scalar, or a Python number (weak, NEP 50). Labels are never passed here.

    Returns
    -------
    numpy.dtype
        float32 or float64.

    Raises
    ------
    TypeError
        In strict mode, when two operands are floating point of different precision.
    """
    strong = []
    for value in operands.values():
        if _is_weak(value):
            continue
        strong.append(value.dtype if isinstance(value, (np.ndarray, np.generic)) else np.asarray(value).dtype)
    if strong and all(dt is strong[0] for dt in strong) and strong[0] in FLOATS:
        return strong[0]  # the common case: one float dtype
    if _backend.is_strict():
        _refuse_mixed(operands)
    weak = [v for v in operands.values() if _is_weak(v)]
    dt = np.result_type(*strong, *weak) if strong else F64
    if dt.kind != "f":
        return F64
    if dt.itemsize < 4:
        return F32
    return F64 if dt.itemsize == 8 else F32


def _refuse_mixed(operands: dict) -> None:
    seen: dict[np.dtype, tuple[str, np.dtype]] = {}  # precision computed in -> first operand with it
    for name, value in operands.items():
        if _is_weak(value):
            continue
        dt = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
        if dt.kind == "f":
            seen.setdefault(F32 if dt.itemsize <= 4 else F64, (name, dt))
    if len(seen) > 1:
        names = " but ".join(f"{n} is {dt}" for n, dt in seen.values())
        raise TypeError(f"mixed float precision: {names}; cast them to one dtype (e.g. with .astype)")


def convert(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in ``dtype`` (itself when it already is)."""
    return a if a.dtype == dtype else a.astype(dtype)


def is_number(value) -> bool:
    """A real scalar: a Python or NumPy number, or a 0-d array."""
    return isinstance(value, numbers.Number) or (isinstance(value, np.ndarray) and value.ndim == 0)
