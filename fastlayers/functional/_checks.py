"""What every checked function shares: the dtype rule (NumPy's), the conversion of array-likes, the
argument checks, and the two gates of the fast paths (:func:`fast_dtype`/:func:`plain` and
:func:`reusable`).

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
import sys
import weakref

import numpy as np

from .. import _backend

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
    if strong and all(dt is strong[0] for dt in strong) and strong[0] in FLOATS:  # the common case
        return F32 if strong[0] is F64 and _backend.is_float32() else strong[0]
    if _backend.is_strict():
        _refuse_mixed(operands)
    if strong and all(dt is F32 or dt is F64 for dt in strong):
        # float32 with float64 (the book's mix): float64, whatever the Python numbers (NEP 50)
        return F32 if _backend.is_float32() else F64
    weak = [v for v in operands.values() if _is_weak(v)]
    dt = np.result_type(*strong, *weak) if strong else F64
    if dt.kind == "f" and dt.itemsize < 4:
        return F32
    if dt.kind != "f" or dt.itemsize == 8:
        return F32 if _backend.is_float32() else F64
    return F32


def param_dtype(p: np.ndarray) -> np.dtype:
    """The dtype an optimizer updates parameter ``p`` in: its own (float16 as float32), whatever the
    float32 compute policy (parameters keep their dtype)."""
    return p.dtype if p.dtype in FLOATS else F32


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


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def as_arrays(**args) -> tuple[np.dtype, list[np.ndarray]]:
    """The keyword arguments as arrays (:func:`as_array`), converted to the dtype the rule gives for
    all of them; returns ``(dtype, arrays)`` in argument order."""
    values = list(args.values())
    dtype = values[0].dtype if type(values[0]) is np.ndarray else None
    if (dtype is F32 or (dtype is F64 and not _backend.is_float32())) and all(
        type(v) is np.ndarray and v.dtype is dtype for v in values
    ):
        return dtype, values  # float arrays of one dtype: nothing to convert
    arrays = {name: as_array(value, name) for name, value in args.items()}
    dtype = compute_dtype(**arrays)
    return dtype, [convert(a, dtype) for a in arrays.values()]


def check_out(out, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    """``out`` checked to be a writeable ndarray of exactly ``shape`` and ``dtype``.

    Raises
    ------
    TypeError
        Not an ndarray, or another dtype.
    ValueError
        Another shape, or read-only.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape} but the result has shape {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype} but the result has dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def require_2d(a: np.ndarray, name: str, what: str = "(N, C)") -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D {what}, got {a.ndim}-D with shape {a.shape}")


def require_batch(a: np.ndarray, name: str) -> None:
    if a.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {a.shape}); at least one row is needed")


def require_scores(a: np.ndarray, name: str) -> None:
    """A 2-D (N, C) batch with N >= 1 rows and C >= 1 classes (the row kernels read column 0)."""
    require_2d(a, name)
    require_batch(a, name)
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {a.shape}); at least one column is needed")


def scalar(value, name: str):
    """``value`` checked to be a real scalar; returned as given (Python numbers stay weak for the
    dtype rule, NumPy scalars and 0-d arrays count with their dtype).

    Raises
    ------
    TypeError
        An array of more than one value, or a scalar that is not a real number.
    """
    if isinstance(value, (int, float)):  # bool and np.float64 included: real numbers
        return value
    if not is_number(value):
        raise TypeError(f"{name} must be a scalar, got {type(value).__name__} of shape {np.shape(value)}")
    v = np.asarray(value)
    if v.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real number, got dtype {v.dtype}")
    return value


def overlaps(out: np.ndarray, a: np.ndarray) -> bool:
    """True when ``out`` may share memory with ``a`` and is not ``a`` itself (exact in-place is safe)."""
    return out is not a and np.may_share_memory(out, a)


def numpy_backend() -> bool:
    """True when the calling thread runs the NumPy reference path."""
    return _backend.current() == "numpy"


def finish(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``result``, copied into ``out`` when a buffer was given and it is not already there."""
    if out is None or result is out:
        return result
    np.copyto(out, result)
    return out


# --------------------------------------------------------------------------------------------
# the gates of the fast paths
# --------------------------------------------------------------------------------------------
_context_backend = _backend._backend_var.get
_context_float32 = _backend._float32_var.get


def fast_dtype(a) -> np.dtype | None:
    """The dtype of ``a`` when a call on it may take a fast path, else None.

    A fast path is allowed when ``a`` is a plain array (see :func:`plain`) of float32, or of float64
    outside the float32 compute policy, and the calling thread is on the numba backend. Every other
    call goes through the general path, whose conversions and checks give the same results.
    """
    # the settings are read inline (_backend.current(), _backend.is_float32()): this runs on every call
    if type(a) is np.ndarray and a.flags.c_contiguous and (_context_backend() or _backend._default) == "numba":
        dtype = a.dtype
        if dtype is F32:
            return dtype
        if dtype is F64:
            flag = _context_float32()
            if not (_backend._float32_default if flag is None else flag):
                return dtype
    return None


def plain(a, dtype: np.dtype) -> bool:
    """True when ``a`` is a plain array of ``dtype``: an ndarray (no subclass), of exactly that
    native dtype, C-contiguous. The kernels can take such an array as it is."""
    return type(a) is np.ndarray and a.dtype is dtype and a.flags.c_contiguous


#: Smaller results are allocated afresh: the checks of :func:`reusable` cost more than a small
#: ``np.empty``, and only large allocations pay for fresh pages (see docs/PERFORMANCE.md).
REUSE_MIN_BYTES = 32 * 1024
#: From this size a layer keeps its result of the call before aside when the next layer holds its
#: latest one (:func:`reusable`): NumPy's allocations this large get fresh pages at every call, at a
#: cost measured in docs/PERFORMANCE.md ("Reusing results nobody holds").
SPARE_MIN_BYTES = 1 << 20
#: Each layer's results kept aside by :func:`reusable`, by attribute name.
_SPARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sole_owner_refs(owner: object, name: str) -> int:
    """The reference count that :func:`reusable` sees for ``owner.<name>`` when the attribute is
    the only other reference (the array held in a local variable of the same name, as there)."""
    buf = owner.__dict__.get(name)
    return sys.getrefcount(buf)


class _Probe:
    def __init__(self) -> None:
        self.buf = np.empty(1)


#: Measured at import: the count differs between Python versions.
_SOLE_OWNER = _sole_owner_refs(_Probe(), "buf")


def _local_only_refs() -> int:
    """The reference count that :func:`reusable` sees for a spare taken out of its slot and held
    only in a local variable (the same steps as there)."""
    spares = {"buf": np.empty(1)}
    spare = spares.get("buf")
    spares["buf"] = None
    return sys.getrefcount(spare)


_LOCAL_ONLY = _local_only_refs()


def reusable(owner: object, name: str, shape: tuple, dtype: np.dtype, frozen: bool = False) -> np.ndarray | None:
    """The array in attribute ``name`` of ``owner`` (a layer) when a new result of ``shape`` and
    ``dtype`` may be written into it, else None.

    It may when nothing but that attribute references the array (so that nobody can see the write,
    and it cannot overlap any input of the call), it owns its memory, is C-contiguous and writeable,
    has exactly ``shape`` and ``dtype``, has at least :data:`REUSE_MIN_BYTES`, and the calling
    thread is on the numba backend (the reference path allocates anyway). The gate reads the
    attribute itself, so no caller can hold an extra reference that would make the count lie.

    With ``frozen``, the array may be one the layer made read-only when it published it (``y`` of
    ``SoftmaxWithLoss``); it is made writeable again for the layer's own write.

    When someone else still holds the array (the next layer keeps it as its input, as the classic
    ``Pooling.x`` and ``Convolution.x`` do) and it has at least :data:`SPARE_MIN_BYTES`, the owner's
    result of the call before, kept aside (outside its ``__dict__``: not pickled or copied with it),
    is returned instead when the same conditions hold for it, and the held array is kept aside in
    its place. So a layer whose results the next layer holds writes into two arrays in turn: one
    result more stays alive, and no call pays for fresh pages.
    """
    buf = owner.__dict__.get(name)
    if type(buf) is not np.ndarray or buf.nbytes < REUSE_MIN_BYTES:
        return None
    if sys.getrefcount(buf) > _SOLE_OWNER:  # the attribute, ``buf`` and the call's argument
        if buf.nbytes < SPARE_MIN_BYTES or buf.shape != shape or buf.dtype != dtype:
            return None
        try:
            spares = _SPARES.setdefault(owner, {})
        except TypeError:  # an owner that cannot be weakly referenced or hashed: no spare
            return None
        spare = spares.get(name)
        spares[name] = buf
        if spare is None or sys.getrefcount(spare) > _LOCAL_ONLY:  # ``spare`` and the call's argument
            return None
        return _writable(spare, shape, dtype, frozen)
    return _writable(buf, shape, dtype, frozen)


def _writable(buf: np.ndarray, shape: tuple, dtype: np.dtype, frozen: bool) -> np.ndarray | None:
    """``buf``, referenced by nobody else, when a result of ``shape`` and ``dtype`` may be written
    into it (see :func:`reusable`), else None."""
    if (
        buf.base is not None
        or buf.shape != shape
        or buf.dtype != dtype
        or (_context_backend() or _backend._default) != "numba"  # _backend.current(), read inline
    ):
        return None
    flags = buf.flags
    if not flags.c_contiguous:
        return None
    if not flags.writeable:
        if not (frozen and flags.owndata):
            return None
        flags.writeable = True
    return buf
