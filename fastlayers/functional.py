"""Kernel-level API: validation, dtype rule, allocation with optional ``out=`` buffers, backend choice.

Every public function here validates its arguments in Python (Numba does not bounds-check), then
runs either a compiled kernel from :mod:`fastlayers._kernels` (backend ``"numba"``) or its twin in
:mod:`fastlayers.reference` (backend ``"numpy"``). Caller arrays are never modified, except an
``out=`` buffer given on purpose.

The dtype rule is NumPy's (see :mod:`fastlayers._dtypes`): each function computes in, and returns,
the dtype the classic NumPy expression gives for the same operands (float16 computed and returned as
float32; integer-only operands computed in float64). Which operands count is said per function.

Layouts: C-contiguous inputs take the fast path; Fortran-ordered inputs are processed in their own
order (and give Fortran-ordered outputs); other strided views are copied to C order first.

``out=`` buffers must have the exact shape and dtype of the result and be writeable. An ``out`` that
shares memory with any input (targets included) gives the same result as a separate buffer: where
the kernel allows it, an ``out`` that is exactly an input is written in place, and any other overlap
is computed through a temporary. (Affine's buffers that overlap an input are refused with
``ValueError`` instead: a product cannot be written over its own operand.)
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import _backend, reference
from ._dtypes import FLOATS as _FLOATS
from ._dtypes import as_array, compute_dtype, convert, is_number
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


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _as_arrays(**args) -> tuple[np.dtype, list[np.ndarray]]:
    """Convert keyword arguments to arrays of the dtype the rule gives for all of them."""
    values = list(args.values())
    first = values[0]
    if type(first) is np.ndarray and first.dtype in _FLOATS:  # fast path: float arrays of one dtype
        dtype = first.dtype
        if all(type(v) is np.ndarray and v.dtype is dtype for v in values):
            return dtype, values
    arrays = {name: as_array(value, name) for name, value in args.items()}
    dtype = compute_dtype(**arrays)
    return dtype, [convert(a, dtype) for a in arrays.values()]


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


def _numpy_backend() -> bool:
    return _backend.current() == "numpy"


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
    if not (type(x) is np.ndarray and x.dtype in _FLOATS and x.flags.c_contiguous):
        return None
    if _backend.current() != "numba":
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
        and a.dtype in _FLOATS
        and _backend.current() == "numba"
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


def _binary(kernel, ref, dout, y, out, result_from_dout: bool = False) -> np.ndarray:
    """A backward elementwise call. It computes in the rule's dtype of (``dout``, ``y``); with
    ``result_from_dout`` (ReLU: ``y`` only gives a sign, as the classic mask does) the result takes
    the dtype of ``dout`` alone, converted back exactly from the common dtype."""
    fast = _fast(kernel, dout, y, out=out)
    if fast is not None:
        return fast
    dout, y = as_array(dout, "dout"), as_array(y, "y")
    _same_shape(dout, y, "dout", "y")
    dtype = compute_dtype(dout=dout, y=y)
    result_dtype = compute_dtype(dout=dout) if result_from_dout else dtype
    inputs = [convert(dout, dtype), convert(y, dtype)]
    if result_dtype == dtype:
        return _elementwise(kernel, ref, inputs, out)
    if out is not None:
        _check_out(out, dout.shape, result_dtype)
    return _finish(_elementwise(kernel, ref, inputs, None).astype(result_dtype), out)


def relu_forward(x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """ReLU: ``max(x, 0)`` elementwise (NaN stays NaN).

    Parameters
    ----------
    x : array_like, any shape
        Real numbers; float32 stays float32, float16 becomes float32, other dtypes float64.
    out : ndarray, optional
        Buffer of the result's shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray of ``x``'s shape, in ``x``'s float dtype.
    """
    return _unary(_elem.relu_forward, reference.relu_forward, x, out)


def relu_backward(dout: ArrayLike, y: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """ReLU gradient: ``dout`` where ``y > 0``, else 0.

    Parameters
    ----------
    dout : array_like
        Upstream gradient.
    y : array_like
        The forward output (or input: the sign is the same), of ``dout``'s shape.
    out : ndarray, optional
        Buffer for the result; may be ``dout`` itself.

    Returns
    -------
    ndarray of ``dout``'s shape and dtype (as ``dout`` with the classic mask applied).

    Raises
    ------
    ValueError
        If the shapes differ.
    TypeError
        Unsupported dtypes; float operands of different precision in strict mode.
    """
    return _binary(_elem.relu_backward, reference.relu_backward, dout, y, out, result_from_dout=True)


def sigmoid_forward(x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid ``1 / (1 + exp(-x))`` without overflow: exact 0 and 1 at the extremes, NaN kept.

    Parameters
    ----------
    x : array_like, any shape
        Real numbers; float32 stays float32, float16 becomes float32, other dtypes float64.
    out : ndarray, optional
        Buffer of the result's shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray of ``x``'s shape, in ``x``'s float dtype.
    """
    return _unary(_elem.sigmoid_forward, reference.sigmoid_forward, x, out)


def sigmoid_backward(dout: ArrayLike, y: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid gradient ``dout * (1 - y) * y`` with ``y`` the forward output.

    Parameters
    ----------
    dout : array_like
        Upstream gradient.
    y : array_like
        The forward output, of ``dout``'s shape.
    out : ndarray, optional
        Buffer for the result; may be ``dout`` or ``y`` itself.

    Returns
    -------
    ndarray of ``dout``'s shape, in the dtype NumPy gives for ``dout`` and ``y`` together.

    Raises
    ------
    ValueError
        If the shapes differ.
    TypeError
        Unsupported dtypes; float operands of different precision in strict mode.
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
def _affine_shapes(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Check the shapes of an affine call; return ``x`` as (N, D)."""
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (D, M), got shape {W.shape}")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},) to match W of shape {W.shape}, got {b.shape}")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D (N, ...), got shape {x.shape}")
    _require_batch(x, "x")
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] != W.shape[0]:
        raise ValueError(
            f"x has {x2.shape[1]} features per row (shape {x.shape}) but W has {W.shape[0]} rows (shape {W.shape})"
        )
    return x2


def affine_forward(x: ArrayLike, W: ArrayLike, b: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """Affine transform ``x.reshape(N, -1) @ W + b``.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Batch of N inputs; each row flattens to D values.
    W : array_like, shape (D, M)
    b : array_like, shape (M,)
    out : ndarray, shape (N, M), optional
        Buffer for the result; must not overlap the inputs.

    Returns
    -------
    ndarray, shape (N, M), in the dtype NumPy gives for ``x @ W + b`` (float32 ``x`` with float64
    ``W`` computes in float64).

    Raises
    ------
    ValueError
        Shapes that do not fit, an empty batch, an ``out`` that overlaps an input or is read-only.
    TypeError
        Unsupported dtypes, an ``out`` of the wrong dtype, mixed precision in strict mode.
    """
    if _plain_affine(x, W, b) and b.ndim == 1 and _free_buffer(out, (x.shape[0], W.shape[1]), x, W, b):
        return _affine_forward_run(x, W, b, out)
    x, W, b = as_array(x, "x"), as_array(W, "W"), as_array(b, "b")
    x2 = _affine_shapes(x, W, b)
    dtype = compute_dtype(x=x, W=W, b=b)
    x2, W, b = convert(x2, dtype), convert(W, dtype), convert(b, dtype)
    shape = (x2.shape[0], W.shape[1])
    if out is not None:
        _check_out(out, shape, dtype)
        if any(np.may_share_memory(out, a) for a in (x, x2, W, b)):
            raise ValueError("out must not overlap x, W or b")
    if _numpy_backend():
        return _finish(reference.affine_forward(x2, W, b), out)
    return _affine_forward_run(x2, W, b, out)


def _plain_affine(x, W, a) -> bool:
    """The common case, checked in a few attribute reads: numba backend, ``x`` (N, D) with N >= 1,
    ``W`` (D, M), and ``a`` either the bias (M,) or the upstream gradient (N, M), all ndarrays of one
    float32/float64 dtype. Anything else goes through full validation."""
    if not (
        type(x) is np.ndarray
        and type(W) is np.ndarray
        and type(a) is np.ndarray
        and x.dtype in _FLOATS
        and _backend.current() == "numba"
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
    dout: ArrayLike,
    x: ArrayLike,
    W: ArrayLike,
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
    (dx, dW, db) : ``dout @ W.T`` reshaped like ``x``, ``x2.T @ dout``, ``dout.sum(axis=0)``, each
        in the dtype NumPy gives for that expression (computed in the widest of the three).

    Raises
    ------
    ValueError
        As :func:`affine_forward`; ``dout`` not (N, M); a buffer that overlaps an input.
    TypeError
        As :func:`affine_forward`; a buffer of another dtype than its result.
    """
    if (
        _plain_affine(x, W, dout)
        and dout.ndim == 2
        and _free_buffer(dx, x.shape, dout, x, W)
        and _free_buffer(dW, W.shape, dout, x, W)
        and _free_buffer(db, (W.shape[1],), dout, x, W)
    ):
        return _affine_backward_run(dout, x, x, W, dx, dW, db)
    dout, x, W = as_array(dout, "dout"), as_array(x, "x"), as_array(W, "W")
    x2 = _affine_shapes(x, W, None)
    n, m = x2.shape[0], W.shape[1]
    _require_2d(dout, "dout", "(N, M)")
    if dout.shape != (n, m):
        raise ValueError(
            f"dout has shape {dout.shape} but x of shape {x.shape} and W of shape {W.shape} give ({n}, {m})"
        )
    # each result in the dtype NumPy gives for its classic expression: dx = dout @ W.T,
    # dW = x2.T @ dout, db = dout.sum(axis=0); all computed in the widest of them
    dtype = compute_dtype(dout=dout, x=x, W=W)
    dtypes = (compute_dtype(dout=dout, W=W), compute_dtype(x=x, dout=dout), compute_dtype(dout=dout))
    for name, buf, shape, dt in (
        ("dx", dx, x.shape, dtypes[0]),
        ("dW", dW, W.shape, dtypes[1]),
        ("db", db, (m,), dtypes[2]),
    ):
        if buf is not None:
            _check_out(buf, shape, dt, name)
            if any(np.may_share_memory(buf, a) for a in (dout, x, W)):
                raise ValueError(f"{name} must not overlap dout, x or W")
    if dx is not None and x.ndim != 2 and not dx.flags.c_contiguous:
        raise ValueError(f"dx must be C-contiguous when x is {x.ndim}-D")
    dout, x2, W = convert(dout, dtype), convert(x2, dtype), convert(W, dtype)
    bufs = [buf if dt == dtype else None for buf, dt in zip((dx, dW, db), dtypes, strict=True)]
    if _numpy_backend():
        rdx, rdW, rdb = reference.affine_backward(dout, x2, W)
        results = (rdx.reshape(x.shape), rdW, rdb)
    else:
        results = _affine_backward_run(dout, x, x2, W, *bufs)
    given = (dx, dW, db)
    return tuple(_finish(convert(r, dt), buf) for r, dt, buf in zip(results, dtypes, given, strict=True))


def _affine_backward_run(dout, x, x2, W, dx, dW, db) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The products and the bias gradient, for validated operands of one dtype; ``x2`` is ``x`` as
    (N, D), and ``dx`` comes back in ``x``'s shape."""
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
def _targets(t, x: np.ndarray, name: str = "t", dtype: np.dtype | None = None) -> np.ndarray:
    """Validated targets for a 2-D (N, C) ``x``: int64 labels (N,) in [0, C), or target rows of x's
    shape as a C-contiguous array of ``dtype`` (default: x's dtype).

    Labels may also come as an (N, 1) column of integers (the classic code's fancy indexing accepts
    it); an integer array of x's own shape counts as rows, as in the classic ``t.size == y.size``.
    Labels always come back as a private copy whose range was checked on that copy: the kernels
    index with them, and the caller's array may change meanwhile (another thread, a data loader).
    """
    n, c = x.shape
    if type(t) is np.ndarray and t.dtype == np.int64 and t.shape == (n,) and n:
        return _labels_in_range(t, c, name)  # the common case: int64 labels
    t = as_array(t, name, real=False)
    if t.shape == x.shape:
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{name} has dtype {t.dtype}; target rows must be real numbers")
        return np.ascontiguousarray(t, dtype=x.dtype if dtype is None else dtype)
    if t.ndim == 2 and t.shape == (n, 1) and t.dtype.kind in "iu":
        t = t.reshape(n)
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
    return _labels_in_range(t, c, name)


def _labels_in_range(t: np.ndarray, c: int, name: str) -> np.ndarray:
    """A private int64 copy of the non-empty integer labels ``t``, checked to lie in [0, c)."""
    labels = np.empty(t.shape[0], np.int64)  # a copy even when t is int64 already
    lo, hi = _softmax.copy_label_bounds(t, labels)  # one compiled pass: copy, min and max
    if lo < 0 or hi >= c:
        if t.dtype.kind == "u":  # uint64 above 2**63 wrapped in the copy: report the caller's values
            lo, hi = int(t.min()), int(t.max())
        _check_label_range(int(lo), int(hi), c, name)
    return labels


def _check_label_range(lo: int, hi: int, c: int, name: str) -> None:
    if lo < 0 or hi >= c:
        raise ValueError(f"{name} holds labels outside [0, {c}): min {lo}, max {hi}")


def _scalar(value, name: str):
    """``value`` checked to be a real scalar; returned as given (Python numbers stay weak for the
    dtype rule, NumPy scalars and 0-d arrays count with their dtype)."""
    if isinstance(value, (int, float)):  # bool and np.float64 included: real numbers
        return value
    if not is_number(value):
        raise TypeError(f"{name} must be a scalar, got {type(value).__name__} of shape {np.shape(value)}")
    v = np.asarray(value)
    if v.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real number, got dtype {v.dtype}")
    return value


def _scores(x, name: str = "x") -> np.ndarray:
    """``x`` as a 2-D (N, C) float array of its own float dtype, N >= 1 and C >= 1."""
    if not (type(x) is np.ndarray and x.dtype in _FLOATS):  # float ndarrays skip the conversion
        _, (x,) = _as_arrays(**{name: x})
    _require_scores(x, name)
    return x


def softmax(x: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax of a 1-D vector, or of each row of a 2-D array (max subtracted first).

    Parameters
    ----------
    x : array_like, shape (C,) or (N, C)
    out : ndarray, optional
        Buffer of the result's shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray of ``x``'s shape, in ``x``'s float dtype.

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


def softmax_cross_entropy_forward(
    x: ArrayLike, t: ArrayLike, out: np.ndarray | None = None
) -> tuple[np.floating, np.ndarray]:
    """Softmax followed by the mean cross-entropy, in one pass, computed as log-sum-exp.

    Parameters
    ----------
    x : array_like, shape (N, C)
        Scores (logits).
    t : array_like
        Integer labels of shape (N,) (or an (N, 1) column) in ``[0, C)``, or target rows (one-hot
        or probabilities) of shape (N, C).
    out : ndarray, shape (N, C), optional
        Buffer for ``y``, of ``x``'s float dtype; may share memory with ``x`` or ``t``.

    Returns
    -------
    (loss, y) : the mean loss as a NumPy scalar, and ``softmax(x)``, both in ``x``'s float dtype
        (as the classic ``cross_entropy_error(softmax(x), t)``, whatever the dtype of ``t``).

    Raises
    ------
    ValueError
        Wrong shapes, an empty batch, labels out of range.
    TypeError
        Float or bool labels, unsupported dtypes.
    """
    result = _xent_forward(x, t, out, want_grad=False)
    return result.loss, result.y


@functools.lru_cache(maxsize=64)
def _mean_scale(dtype: np.dtype, dout: np.floating, n: int) -> np.floating:
    """``dout / n`` in ``dtype`` (``dout`` a scalar of that dtype): the factor of the loss gradient,
    computed one way for the forward pass's gradient and for backward (so the two agree bit for bit),
    and cached (NumPy scalar arithmetic costs about 1 us per call)."""
    return dtype.type(dout / dtype.type(n))


class XentForward(NamedTuple):
    """What :func:`_xent_forward` computes."""

    loss: np.floating
    #: softmax of the scores
    y: np.ndarray
    #: the validated targets: a private int64 copy of the labels, or rows of the scores' dtype
    targets: np.ndarray
    #: ``(y - onehot(t)) / N``, the gradient for ``dout = 1``, when asked for on the numba backend
    grad: np.ndarray | None


def _xent_forward(
    x, t, out, want_grad: bool, grad_buf: np.ndarray | None = None, spare: np.ndarray | None = None
) -> XentForward:
    """:func:`softmax_cross_entropy_forward`, plus the validated targets and, with ``want_grad`` on
    the numba backend, the ``dout = 1`` gradient computed in the same pass over each row (into
    ``grad_buf`` when given). ``grad_buf`` and ``spare`` (used for ``y`` when ``out`` is None) are
    C-contiguous (N, C) buffers of the scores' dtype that the calling layer owns alone (see
    ``layers._spare``): nothing else references them, so they cannot overlap an input."""
    x = _scores(x)
    t = _targets(t, x)
    if out is not None:
        _check_out(out, x.shape, x.dtype)
    if _numpy_backend():
        loss, y = reference.softmax_cross_entropy_forward(x, t)
        return XentForward(loss, _finish(y, out), t, None)
    if out is None:
        y = spare if spare is not None and spare.shape == x.shape and spare.dtype == x.dtype else None
    else:
        y = out if not (np.may_share_memory(out, x) or np.may_share_memory(out, t)) else None
    y = np.empty(x.shape, x.dtype) if y is None else y
    losses = np.empty(x.shape[0], x.dtype)
    if want_grad:
        g = np.empty(x.shape, x.dtype) if grad_buf is None else grad_buf
    else:
        g = np.empty((0, x.shape[1]), x.dtype)  # no rows: the kernel skips the gradient
    scale = _mean_scale(x.dtype, x.dtype.type(1), x.shape[0])
    kernel = _softmax.softmax_xent_labels if t.ndim == 1 else _softmax.softmax_xent_probs
    total = launch(kernel, x.size, x, t, y, losses, g, scale)
    return XentForward(x.dtype.type(total / x.shape[0]), _finish(y, out), t, g if want_grad else None)


def softmax_cross_entropy_backward(
    y: ArrayLike, t: ArrayLike, dout: float | np.floating | np.ndarray = 1.0, out: np.ndarray | None = None
) -> np.ndarray:
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
        Buffer for the result; may share memory with ``y`` or ``t``.

    Returns
    -------
    ndarray, shape (N, C), in the dtype NumPy gives for ``dout * (y - t) / N``: that of ``y``, or
    wider when target rows or a NumPy scalar ``dout`` are wider (a Python number does not count).

    Raises
    ------
    ValueError, TypeError
        As :func:`softmax_cross_entropy_forward`; ``dout`` that is not a real scalar.
    """
    y = as_array(y, "y")
    dout = _scalar(dout, "dout")
    return _xent_backward(y, t, dout, out)


def _xent_backward(y: np.ndarray, t, dout, out, spare: np.ndarray | None = None) -> np.ndarray:
    """:func:`softmax_cross_entropy_backward` for an array ``y`` and a checked scalar ``dout``;
    ``t`` is validated here, against ``y`` as it is now. ``spare`` is a buffer the calling layer
    owns alone (see ``layers._spare``), used for the result when its shape and dtype fit."""
    _require_scores(y, "y")
    rows = t if type(t) is np.ndarray else as_array(t, "t", real=False)
    if rows.shape == y.shape and rows.dtype.kind in "fiub":
        dtype = compute_dtype(y=y, t=rows, dout=dout)
    else:
        dtype = compute_dtype(y=y, dout=dout)
    y = convert(y, dtype)
    t = _targets(rows, y, dtype=dtype)
    dout = dtype.type(dout)
    if out is not None:
        _check_out(out, y.shape, dtype)
    if _numpy_backend():
        return _finish(reference.softmax_cross_entropy_backward(y, t, dout), out)
    if out is None:
        usable = spare is not None and spare.shape == y.shape and spare.dtype == dtype
        target = spare if usable else np.empty(y.shape, dtype)
    else:
        target = out if not _overlaps(out, y) and not _overlaps(out, t) else np.empty(y.shape, dtype)
    scale = _mean_scale(dtype, dout, y.shape[0])
    kernel = _softmax.xent_grad_labels if t.ndim == 1 else _softmax.xent_grad_probs
    launch(kernel, y.size, y, t, scale, target)
    return _finish(target, out)


def cross_entropy_error(y: ArrayLike, t: ArrayLike) -> np.floating:
    """Mean cross-entropy of probabilities ``y`` against labels or target rows.

    Parameters
    ----------
    y : array_like, shape (C,) or (N, C)
        Probabilities (a softmax output); 1-D is a batch of one.
    t : array_like
        Labels (N,) (a scalar label for 1-D ``y``) or rows shaped like ``y``.

    Returns
    -------
    The mean over the batch of ``-sum(t * log(y))``, as a NumPy scalar of ``y``'s float dtype (as the
    classic function, which turns one-hot rows into labels); terms with ``t == 0`` count as 0, and a
    zero probability at a target gives ``inf`` (no ``1e-7`` fudge).
    """
    _, (y,) = _as_arrays(y=y)
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = as_array(t, "t", real=False)
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
