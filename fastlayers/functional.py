"""Kernel-level API: validation, dtype rule, allocation with optional ``out=`` buffers, backend choice.

Every public function here validates its arguments in Python (Numba does not bounds-check), then
runs either a compiled kernel from :mod:`fastlayers._kernels` (backend ``"numba"``) or its twin in
:mod:`fastlayers.reference` (backend ``"numpy"``). Caller arrays are never modified, except an
``out=`` buffer given on purpose.

The dtype rule
--------------
One call computes in one float dtype, float32 or float64, and returns that dtype:

- float32 and float64 arrays keep their dtype; float16 is computed (and returned) as float32.
- Arrays and arguments that are not floating point (Python scalars and lists, integer and bool arrays)
  take the float dtype of the call's floating-point arrays, or float64 if there are none.
- Two floating-point arrays of different precision in one call (float32 ``x`` with float64 ``W``)
  raise ``TypeError``: nothing is upcast behind the caller's back.
- Complex, object, string and other dtypes raise ``TypeError``.

Layouts: C-contiguous inputs take the fast path; Fortran-ordered inputs are processed in their own
order (and give Fortran-ordered outputs); other strided views are copied to C order first.

``out=`` buffers must have the exact shape and dtype of the result and be writeable; an ``out`` that
is the same array as an input is allowed (in-place), one that partly overlaps an input is computed
through a temporary.
"""

from __future__ import annotations

import functools
import numbers
import sys

import numpy as np

from . import _backend, reference
from ._backend import get_backend
from ._kernels import _threads
from ._kernels import affine as _affine
from ._kernels import elementwise as _elem
from ._kernels import softmax as _softmax
from ._kernels._threads import launch

__all__ = [
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "affine_forward",
    "affine_backward",
    "softmax",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "cross_entropy_error",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _float_kind(a: np.ndarray, name: str) -> np.dtype | None:
    """The float dtype ``a`` imposes on the call, None if it adopts the call's dtype."""
    kind = a.dtype.kind
    if kind == "f":
        if a.dtype.itemsize == 2:
            return np.dtype(np.float32)
        if a.dtype in _FLOATS:
            return a.dtype
        raise TypeError(f"{name} has dtype {a.dtype}; only float16, float32 and float64 are supported")
    if kind in "iub":
        return None
    raise TypeError(f"{name} has dtype {a.dtype}; expected a real number array (float32 or float64)")


def _as_arrays(**args) -> tuple[np.dtype, list[np.ndarray]]:
    """Convert keyword arguments to arrays of one float dtype, following the module's dtype rule."""
    values = list(args.values())
    first = values[0]
    if type(first) is np.ndarray and first.dtype in _FLOATS:  # fast path: float arrays of one dtype
        dtype = first.dtype
        if all(type(v) is np.ndarray and v.dtype == dtype for v in values):
            return dtype, values
    arrays = []
    precision: dict[np.dtype, str] = {}  # float dtype -> first argument that imposes it
    for name, value in args.items():
        try:
            a = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
        dt = _float_kind(a, name)
        if dt is not None and isinstance(value, (np.ndarray, np.floating)):
            precision.setdefault(dt, name)
        arrays.append(a)
    if len(precision) > 1:
        names = " but ".join(f"{n} is {dt}" for dt, n in precision.items())
        raise TypeError(f"mixed float precision: {names}; cast them to one dtype (e.g. with .astype)")
    dtype = next(iter(precision), np.dtype(np.float64))
    return dtype, [a if a.dtype == dtype else a.astype(dtype) for a in arrays]


def _check_out(out, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape} but the result has shape {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype} but the result has dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def _require_2d(a: np.ndarray, name: str, what: str = "(N, C)") -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D {what}, got {a.ndim}-D with shape {a.shape}")


def _require_batch(a: np.ndarray, name: str) -> None:
    if a.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {a.shape}); at least one row is needed")


def _require_scores(a: np.ndarray, name: str) -> None:
    """A 2-D (N, C) batch with N >= 1 rows and C >= 1 classes (the row kernels read column 0)."""
    _require_2d(a, name)
    _require_batch(a, name)
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {a.shape}); at least one column is needed")


def _overlaps(out: np.ndarray, a: np.ndarray) -> bool:
    """True when ``out`` may share memory with ``a`` and is not ``a`` itself (exact in-place is safe)."""
    return out is not a and np.may_share_memory(out, a)


def _is_scalar(value) -> bool:
    return isinstance(value, numbers.Number) or (isinstance(value, np.ndarray) and value.ndim == 0)


def _numpy_backend() -> bool:
    return get_backend() == "numpy"


def _finish(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``result``, copied into ``out`` when a buffer was given and it is not already there."""
    if out is None or result is out:
        return result
    np.copyto(out, result)
    return out


# --------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------
def _flat(arrays: list[np.ndarray]) -> list[np.ndarray] | None:
    """1-D views of same-shape arrays that all walk memory in one order, or None."""
    if all(a.flags.c_contiguous for a in arrays):
        return [a.reshape(-1) for a in arrays]
    if all(a.flags.f_contiguous for a in arrays):
        return [a.T.reshape(-1) for a in arrays]
    return None


def _fast(kernel, x, y=None, out=None) -> np.ndarray | None:
    """The common call (C-contiguous float32/float64 ndarrays of one dtype and shape, numba backend,
    ``out`` absent or a C-contiguous buffer that is an input or overlaps none) without the general
    machinery: at the classic sizes Python overhead is most of the time (ReLU 100x50: 5.3 us per call
    through the general path, 2.8 us here). None when the call is not of that kind."""
    if not (type(x) is np.ndarray and x.dtype.char in "fd" and x.flags.c_contiguous):
        return None
    if _backend._current != "numba":
        return None
    if y is not None and not (
        type(y) is np.ndarray and y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
    ):
        return None
    if out is None:
        result = np.empty(x.shape, x.dtype)
    elif (
        type(out) is np.ndarray
        and out.dtype == x.dtype
        and out.shape == x.shape
        and out.flags.c_contiguous
        and out.flags.writeable
        and not _overlaps(out, x)
        and (y is None or not _overlaps(out, y))
    ):
        result = out
    else:
        return None
    inputs = (x,) if y is None else (x, y)
    launch(kernel, x.size, *[a.ravel() for a in inputs], result.ravel())
    return result


class _Probe:
    def __init__(self) -> None:
        self.buf = np.empty(1)


def _sole_owner_count() -> int:
    """The reference count that ``sys.getrefcount`` reports, inside a function, for an array passed
    to it from an attribute that is its only other reference (measured: it varies across Python
    versions). Calls that check ownership this way must pass the buffer straight from the attribute."""
    probe = _Probe()
    counts = []

    def count(a, b, c, buf):
        counts.append(sys.getrefcount(buf))

    count(None, None, None, probe.buf)
    return counts[0]


_SOLE_OWNER = _sole_owner_count()


def _layer_call(public, a, y, previous) -> np.ndarray:
    """The layers' call of an elementwise function: ``public(a)`` or ``public(a, y)``, one of this
    module's ReLU/Sigmoid functions, written into ``previous`` when possible.

    ``previous`` is the calling layer's earlier result for this call, passed straight from its
    attribute. When nothing but that attribute references it (the reference count tells, so nobody
    can see the reuse), it is C-contiguous, writeable, not a view, and of the right shape and dtype,
    the result is written into it; such a buffer cannot overlap an input, so no overlap check is
    needed. For C-contiguous float arrays on the numba backend this goes straight to the kernel
    (ReLU forward+backward at 100x50: 6.9 us through the public functions, 4.6 us here); anything
    else takes the public function, with its conversions and checks.

    The input checks repeat those of :func:`_fast` on purpose: routing this through ``_fast`` (with
    the owned buffer as a parameter) was measured at 0.2-0.5 us more per forward+backward, which
    made ReLU at 100x50 slower than PyTorch again (1.02-1.10x instead of 0.97-0.99x).
    """
    if (
        type(a) is np.ndarray
        and _backend._current == "numba"
        and a.dtype.char in "fd"
        and a.flags.c_contiguous
        and (
            y is None or (type(y) is np.ndarray and y.dtype == a.dtype and y.shape == a.shape and y.flags.c_contiguous)
        )
    ):
        if (
            type(previous) is np.ndarray
            and sys.getrefcount(previous) <= _SOLE_OWNER
            and previous.shape == a.shape
            and previous.dtype == a.dtype
            and previous.base is None
            and previous.flags.c_contiguous
            and previous.flags.writeable
        ):
            spare = previous
        else:
            spare = np.empty(a.shape, a.dtype)
        kernel = _LAYER_KERNELS[public]
        if y is None:
            launch(kernel, a.size, a.reshape(-1), spare.reshape(-1))
        else:
            launch(kernel, a.size, a.reshape(-1), y.reshape(-1), spare.reshape(-1))
        return spare
    return public(a) if y is None else public(a, y)


def _elementwise(kernel, ref, inputs: list[np.ndarray], out: np.ndarray | None) -> np.ndarray:
    """Run an elementwise kernel on same-shape, same-dtype ``inputs``."""
    x = inputs[0]
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    if _numpy_backend():
        return _finish(ref(*inputs), out)
    order = "F" if (x.flags.f_contiguous and not x.flags.c_contiguous) else "C"
    target = out
    if target is None or any(_overlaps(target, a) for a in inputs):
        target = np.empty(x.shape, x.dtype, order=order)
    views = _flat([*inputs, target])
    if views is None:
        c_inputs = [np.ascontiguousarray(a) for a in inputs]
        if not target.flags.c_contiguous:
            target = np.empty(x.shape, x.dtype)
        views = [a.reshape(-1) for a in (*c_inputs, target)]
    launch(kernel, x.size, *views)
    return _finish(target, out)


def _unary(kernel, ref, x, out) -> np.ndarray:
    fast = _fast(kernel, x, out=out)
    if fast is not None:
        return fast
    _, (x,) = _as_arrays(x=x)
    return _elementwise(kernel, ref, [x], out)


def _binary(kernel, ref, dout, y, out) -> np.ndarray:
    fast = _fast(kernel, dout, y, out=out)
    if fast is not None:
        return fast
    _, (dout, y) = _as_arrays(dout=dout, y=y)
    _same_shape(dout, y, "dout", "y")
    return _elementwise(kernel, ref, [dout, y], out)


def relu_forward(x, out: np.ndarray | None = None) -> np.ndarray:
    """ReLU: ``max(x, 0)`` elementwise (NaN stays NaN).

    Parameters
    ----------
    x : array_like, any shape
        float32 or float64 (see the module's dtype rule).
    out : ndarray, optional
        Buffer of ``x``'s shape and dtype for the result; may be ``x`` itself.

    Returns
    -------
    ndarray of ``x``'s shape and dtype.
    """
    return _unary(_elem.relu_forward, reference.relu_forward, x, out)


def relu_backward(dout, y, out: np.ndarray | None = None) -> np.ndarray:
    """ReLU gradient: ``dout`` where ``y > 0``, else 0.

    Parameters
    ----------
    dout : array_like
        Upstream gradient.
    y : array_like
        The forward output (or input: the sign is the same), of ``dout``'s shape.
    out : ndarray, optional
        Buffer for the result; may be ``dout`` itself.

    Raises
    ------
    ValueError
        If the shapes differ.
    TypeError
        If the dtypes are float of different precision.
    """
    return _binary(_elem.relu_backward, reference.relu_backward, dout, y, out)


def sigmoid_forward(x, out: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid ``1 / (1 + exp(-x))`` without overflow: exact 0 and 1 at the extremes, NaN kept.

    Parameters and returns as :func:`relu_forward`.
    """
    return _unary(_elem.sigmoid_forward, reference.sigmoid_forward, x, out)


def sigmoid_backward(dout, y, out: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid gradient ``dout * (1 - y) * y`` with ``y`` the forward output.

    Parameters, returns and errors as :func:`relu_backward`.
    """
    return _binary(_elem.sigmoid_backward, reference.sigmoid_backward, dout, y, out)


_LAYER_KERNELS = {
    relu_forward: _elem.relu_forward,
    relu_backward: _elem.relu_backward,
    sigmoid_forward: _elem.sigmoid_forward,
    sigmoid_backward: _elem.sigmoid_backward,
}


# --------------------------------------------------------------------------------------------
# affine
# --------------------------------------------------------------------------------------------
def _affine_operands(x, W, b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _, (x, W, b) = _as_arrays(x=x, W=W, b=b)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (D, M), got shape {W.shape}")
    if b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},) to match W of shape {W.shape}, got {b.shape}")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D (N, ...), got shape {x.shape}")
    _require_batch(x, "x")
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] != W.shape[0]:
        raise ValueError(
            f"x has {x2.shape[1]} features per row (shape {x.shape}) but W has {W.shape[0]} rows (shape {W.shape})"
        )
    return x, x2, W, b


def affine_forward(x, W, b, out: np.ndarray | None = None) -> np.ndarray:
    """Affine transform ``x.reshape(N, -1) @ W + b``.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Batch of N inputs; each row flattens to D values.
    W : ndarray, shape (D, M)
    b : ndarray, shape (M,)
        All three of one float dtype.
    out : ndarray, shape (N, M), optional
        Buffer for the result; must not overlap the inputs.

    Returns
    -------
    ndarray, shape (N, M)

    Raises
    ------
    ValueError
        Shapes that do not fit, or an empty batch.
    TypeError
        Mixed float precision, unsupported dtypes, or an ``out`` of the wrong dtype.
    """
    if _plain_affine(x, W, b) and b.ndim == 1 and _free_buffer(out, (x.shape[0], W.shape[1]), x, W, b):
        return _affine_forward_run(x, W, b, out)
    x, x2, W, b = _affine_operands(x, W, b)
    shape = (x2.shape[0], W.shape[1])
    if out is not None:
        _check_out(out, shape, x2.dtype)
        if any(np.may_share_memory(out, a) for a in (x2, W, b)):
            raise ValueError("out must not overlap x, W or b")
    if _numpy_backend():
        return _finish(reference.affine_forward(x2, W, b), out)
    return _affine_forward_run(x2, W, b, out)


def _plain_affine(x, W, a) -> bool:
    """The common case, checked in a few attribute reads: numba backend, ``x`` (N, D) with N >= 1,
    ``W`` (D, M), and ``a`` either the bias (M,) or the upstream gradient (N, M), all ndarrays of one
    float32/float64 dtype. Anything else goes through full validation."""
    if not (
        _backend._current == "numba"
        and type(x) is np.ndarray
        and type(W) is np.ndarray
        and type(a) is np.ndarray
        and x.dtype.char in "fd"
        and W.dtype == x.dtype
        and a.dtype == x.dtype
        and x.ndim == 2
        and W.ndim == 2
        and x.shape[0] > 0
        and x.shape[1] == W.shape[0]
    ):
        return False
    if a.ndim == 1:
        return a.shape[0] == W.shape[1]
    return a.ndim == 2 and a.shape[0] == x.shape[0] and a.shape[1] == W.shape[1]


def _free_buffer(buf, shape: tuple, *inputs: np.ndarray) -> bool:
    """True when ``buf`` is None, or a writeable ndarray of ``shape`` and the inputs' dtype that
    overlaps none of them (so the fast path may write into it)."""
    if buf is None:
        return True
    if type(buf) is not np.ndarray or buf.shape != shape or buf.dtype != inputs[0].dtype or not buf.flags.writeable:
        return False
    for a in inputs:
        if np.may_share_memory(buf, a):
            return False
    return True


def _affine_forward_run(x2: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        out = np.empty((x2.shape[0], W.shape[1]), x2.dtype)
    with _threads.BLAS_LOCK:
        np.matmul(x2, W, out=out)
    launch(_affine.bias_add, out.size, out, b)
    return out


def affine_backward(
    dout,
    x,
    W,
    dx: np.ndarray | None = None,
    dW: np.ndarray | None = None,
    db: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of the affine transform.

    Parameters
    ----------
    dout : array_like, shape (N, M)
        Upstream gradient.
    x : array_like, shape (N, ...)
        The forward input (any shape that flattens to (N, D)).
    W : ndarray, shape (D, M)
    dx, dW, db : ndarray, optional
        Buffers for the results, shaped like ``x``, ``W`` and ``(M,)``; ``dx`` must be C-contiguous
        when ``x`` is not 2-D.

    Returns
    -------
    (dx, dW, db) : ``dout @ W.T`` reshaped like ``x``, ``x2.T @ dout``, ``dout.sum(axis=0)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`affine_forward`, and when ``dout`` is not (N, M).
    """
    if (
        _plain_affine(x, W, dout)
        and dout.ndim == 2
        and _free_buffer(dx, x.shape, dout, x, W)
        and _free_buffer(dW, W.shape, dout, x, W)
        and _free_buffer(db, (W.shape[1],), dout, x, W)
    ):
        return _affine_backward_run(dout, x, x, W, dx, dW, db)
    _, (dout, x, W) = _as_arrays(dout=dout, x=x, W=W)
    x, x2, W, _ = _affine_operands(x, W, np.zeros(W.shape[1:2], W.dtype))
    n, m = x2.shape[0], W.shape[1]
    _require_2d(dout, "dout", "(N, M)")
    if dout.shape != (n, m):
        raise ValueError(
            f"dout has shape {dout.shape} but x of shape {x.shape} and W of shape {W.shape} give ({n}, {m})"
        )
    dtype = x2.dtype
    for name, buf, shape in (("dx", dx, x.shape), ("dW", dW, W.shape), ("db", db, (m,))):
        if buf is not None:
            _check_out(buf, shape, dtype, name)
            if any(np.may_share_memory(buf, a) for a in (dout, x2, W)):
                raise ValueError(f"{name} must not overlap dout, x or W")
    if dx is not None and x.ndim != 2 and not dx.flags.c_contiguous:
        raise ValueError(f"dx must be C-contiguous when x is {x.ndim}-D")
    if _numpy_backend():
        rdx, rdW, rdb = reference.affine_backward(dout, x2, W)
        return _finish(rdx.reshape(x.shape), dx), _finish(rdW, dW), _finish(rdb, db)
    return _affine_backward_run(dout, x, x2, W, dx, dW, db)


def _affine_backward_run(dout, x, x2, W, dx, dW, db) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The products and the bias gradient, for validated operands; ``x2`` is ``x`` as (N, D)."""
    n, m = dout.shape
    dtype = x2.dtype
    if dx is None:
        dx = np.empty(x.shape, dtype)
    if dW is None:
        dW = np.empty(W.shape, dtype)
    if db is None:
        db = np.empty((m,), dtype)
    with _threads.BLAS_LOCK:
        np.matmul(dout, W.T, out=dx.reshape(n, -1))
        np.matmul(x2.T, dout, out=dW)
    launch(_affine.bias_grad, dout.size, dout, db)
    return dx, dW, db


# --------------------------------------------------------------------------------------------
# softmax and cross-entropy
# --------------------------------------------------------------------------------------------
def _targets(t, x: np.ndarray, name: str = "t") -> np.ndarray:
    """Validated targets for a 2-D (N, C) ``x``: int64 labels (N,) or rows of x's dtype and shape."""
    n, c = x.shape
    if type(t) is np.ndarray and t.dtype == np.int64 and t.shape == (n,) and n and t.flags.c_contiguous:
        return _labels_in_range(t, c, name)  # the common case: contiguous int64 labels
    t = np.asarray(t)
    if t.shape == x.shape:
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{name} has dtype {t.dtype}; target rows must be real numbers")
        return np.ascontiguousarray(t, dtype=x.dtype)
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be labels of shape ({n},) or one-hot rows of shape {x.shape}, got shape {t.shape}"
        )
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{name} has dtype {t.dtype}; labels must be integers (or pass one-hot rows of shape {x.shape})"
        )
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} labels but x has {n} rows")
    if n == 0:
        return t.astype(np.int64)
    if t.dtype == np.int64:
        return _labels_in_range(np.ascontiguousarray(t), c, name)
    lo, hi = int(t.min()), int(t.max())  # before any cast: a uint64 above 2**63 must not wrap
    _check_label_range(lo, hi, c, name)
    return np.ascontiguousarray(t, dtype=np.int64)


def _labels_in_range(t: np.ndarray, c: int, name: str) -> np.ndarray:
    """``t`` (contiguous int64 labels, non-empty) after checking they lie in [0, c)."""
    lo, hi = _softmax.label_bounds(t)  # one compiled pass instead of two NumPy reductions
    _check_label_range(lo, hi, c, name)
    return t


def _check_label_range(lo: int, hi: int, c: int, name: str) -> None:
    if lo < 0 or hi >= c:
        raise ValueError(f"{name} holds labels outside [0, {c}): min {lo}, max {hi}")


def _scalar(value, name: str, dtype: np.dtype):
    if not _is_scalar(value):
        raise TypeError(f"{name} must be a scalar, got {type(value).__name__} of shape {np.shape(value)}")
    v = np.asarray(value)
    if v.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real number, got dtype {v.dtype}")
    return dtype.type(v)


def softmax(x, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax of a 1-D vector, or of each row of a 2-D array (max subtracted first).

    Parameters
    ----------
    x : array_like, shape (C,) or (N, C)
    out : ndarray, optional
        Buffer of ``x``'s shape and dtype; may be ``x`` itself.

    Raises
    ------
    ValueError
        For 0-d, 3-D or higher, or empty input.
    """
    _, (x,) = _as_arrays(x=x)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D (C,) or 2-D (N, C), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x is empty (shape {x.shape})")
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if _numpy_backend():
        return _finish(reference.softmax(x2).reshape(x.shape), out)
    usable = out is not None and out.flags.c_contiguous and not _overlaps(out, x)
    target = out if usable else np.empty(x.shape, x.dtype)
    launch(_softmax.softmax, x2.size, x2, target.reshape(x2.shape))
    return _finish(target, out)


def softmax_cross_entropy_forward(x, t, out: np.ndarray | None = None) -> tuple[np.floating, np.ndarray]:
    """Softmax followed by the mean cross-entropy, in one pass, computed as log-sum-exp.

    Parameters
    ----------
    x : array_like, shape (N, C)
        Scores (logits), float32 or float64.
    t : array_like
        Integer labels of shape (N,) in ``[0, C)``, or target rows (one-hot or probabilities) of
        shape (N, C), converted to ``x``'s dtype.
    out : ndarray, shape (N, C), optional
        Buffer for ``y``; must not overlap ``x``.

    Returns
    -------
    (loss, y) : the mean loss as a NumPy scalar of ``x``'s dtype, and ``softmax(x)``.

    Raises
    ------
    ValueError
        Wrong shapes, an empty batch, labels out of range.
    TypeError
        Float or bool labels, unsupported dtypes.
    """
    loss, y, _, _ = _xent_forward(x, t, out)
    return loss, y


@functools.lru_cache(maxsize=64)
def _mean_scale(dtype: np.dtype, dout: np.floating, n: int) -> np.floating:
    """``dout / n`` in ``dtype`` (``dout`` a scalar of that dtype): the factor of the loss gradient,
    computed one way for the forward pass's gradient and for backward (so the two agree bit for bit),
    and cached (NumPy scalar arithmetic costs about 1 us per call)."""
    return dtype.type(dout / dtype.type(n))


def _xent_forward(x, t, out, grad: np.ndarray | bool = False) -> tuple:
    """:func:`softmax_cross_entropy_forward`, also returning the validated targets and, when ``grad``
    is True or a buffer (a C-contiguous (N, C) array of ``x``'s dtype that nothing else holds), the
    gradient for ``dout = 1`` computed in the same pass (None on the numpy backend, or when not
    asked for)."""
    if not (type(x) is np.ndarray and x.dtype.char in "fd"):  # float ndarrays skip the conversion
        _, (x,) = _as_arrays(x=x)
    _require_scores(x, "x")
    t = _targets(t, x)
    if out is not None:
        _check_out(out, x.shape, x.dtype)
        if np.may_share_memory(out, x):
            raise ValueError("out must not overlap x")
    if _numpy_backend():
        loss, y = reference.softmax_cross_entropy_forward(x, t)
        return loss, _finish(y, out), t, None
    y = np.empty(x.shape, x.dtype) if out is None else out
    losses = np.empty(x.shape[0], x.dtype)
    if grad is False:
        g = np.empty((0, x.shape[1]), x.dtype)  # no rows: the kernel skips the gradient
    else:
        g = np.empty(x.shape, x.dtype) if grad is True else grad
    scale = _mean_scale(x.dtype, x.dtype.type(1), x.shape[0])
    kernel = _softmax.softmax_xent_labels if t.ndim == 1 else _softmax.softmax_xent_probs
    total = launch(kernel, x.size, x, t, y, losses, g, scale)
    return x.dtype.type(total / x.shape[0]), y, t, (g if g.shape[0] else None)


def softmax_cross_entropy_backward(y, t, dout=1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of the mean softmax cross-entropy with respect to the scores: ``dout * (y - t) / N``.

    Parameters
    ----------
    y : array_like, shape (N, C)
        The softmax output of the forward pass.
    t : array_like
        The targets of the forward pass (labels or rows, see :func:`softmax_cross_entropy_forward`).
    dout : scalar, default 1.0
        Upstream gradient of the loss.
    out : ndarray, shape (N, C), optional
        Buffer for the result; may be ``y`` itself.
    """
    _, (y,) = _as_arrays(y=y)
    _require_scores(y, "y")
    return _xent_backward(y, _targets(t, y), dout, out)


def _xent_backward(y: np.ndarray, t: np.ndarray, dout, out) -> np.ndarray:
    """:func:`softmax_cross_entropy_backward` for a validated ``y`` and targets ``t``."""
    dout = _scalar(dout, "dout", y.dtype)
    if out is not None:
        _check_out(out, y.shape, y.dtype)
    if _numpy_backend():
        return _finish(reference.softmax_cross_entropy_backward(y, t, dout), out)
    target = out if out is not None and not _overlaps(out, y) else np.empty(y.shape, y.dtype)
    scale = _mean_scale(y.dtype, dout, y.shape[0])
    kernel = _softmax.xent_grad_labels if t.ndim == 1 else _softmax.xent_grad_probs
    launch(kernel, y.size, y, t, scale, target)
    return _finish(target, out)


def cross_entropy_error(y, t) -> np.floating:
    """Mean cross-entropy of probabilities ``y`` against labels or target rows.

    Parameters
    ----------
    y : array_like, shape (C,) or (N, C)
        Probabilities (a softmax output); 1-D is a batch of one.
    t : array_like
        Labels (N,) (a scalar label for 1-D ``y``) or rows shaped like ``y``.

    Returns
    -------
    The mean over the batch of ``-sum(t * log(y))``, as a NumPy scalar of ``y``'s dtype; terms with
    ``t == 0`` count as 0, and a zero probability at a target gives ``inf`` (no ``1e-7`` fudge).
    """
    _, (y,) = _as_arrays(y=y)
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = np.asarray(t)
        t = t.reshape(1, -1) if t.ndim == 1 and t.shape[0] == y.shape[1] else t.reshape(-1)
    elif y.ndim != 2:
        raise ValueError(f"y must be 1-D (C,) or 2-D (N, C), got shape {y.shape}")
    _require_scores(y, "y")
    t = _targets(t, y)
    if _numpy_backend():
        return reference.cross_entropy_error(y, t)
    losses = np.empty(y.shape[0], y.dtype)
    kernel = _softmax.cross_entropy_labels if t.ndim == 1 else _softmax.cross_entropy_probs
    y = np.ascontiguousarray(y)
    return y.dtype.type(launch(kernel, y.size, y, t, losses) / y.shape[0])
