"""The affine transform ``x.reshape(N, -1) @ W + b`` and its gradients: the checked functions around
the matrix products (:func:`fastlayers._gemm.matmul`) and :mod:`fastlayers._kernels.affine`, and the
run steps the ``Affine`` layer calls with buffers it owns (:func:`forward_run`, :func:`backward_run`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .. import _backend, _gemm, reference
from .._kernels import _threads, lazy
from .._kernels._threads import launch
from ._checks import (
    F32,
    F64,
    REUSE_MIN_BYTES,
    as_array,
    check_out,
    compute_dtype,
    convert,
    fast_dtype,
    finish,
    numpy_backend,
    plain,
    require_2d,
    require_batch,
    reusable,
)

_affine = lazy("affine")  # imported (with Numba) at the first kernel call


def _affine_shapes(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Check the shapes of an affine call; return ``x`` as (N, D)."""
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (D, M), got shape {W.shape}")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},) to match W of shape {W.shape}, got {b.shape}")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D (N, ...), got shape {x.shape}")
    require_batch(x, "x")
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
    if plain_affine(x, W, b) and b.ndim == 1 and _free_buffer(out, (x.shape[0], W.shape[1]), x, W, b):
        return forward_run(x, W, b, out)
    x, W, b = as_array(x, "x"), as_array(W, "W"), as_array(b, "b")
    x2 = _affine_shapes(x, W, b)
    dtype = compute_dtype(x=x, W=W, b=b)
    x2, W, b = convert(x2, dtype), convert(W, dtype), convert(b, dtype)
    shape = (x2.shape[0], W.shape[1])
    if out is not None:
        check_out(out, shape, dtype)
        if any(np.may_share_memory(out, a) for a in (x, x2, W, b)):
            raise ValueError("out must not overlap x, W or b")
    if numpy_backend():
        return finish(reference.affine_forward(x2, W, b), out)
    return forward_run(x2, W, b, out)


def plain_affine(x, W, a) -> bool:
    """True for the common call: ``x`` (N, D) with N >= 1, ``W`` (D, M), and ``a`` either the bias
    (M,) or the upstream gradient (N, M), all plain arrays of one float dtype on the numba backend
    (:func:`~._checks.fast_dtype`, :func:`~._checks.plain`). Anything else goes through full
    validation."""
    dtype = fast_dtype(x)
    if (
        dtype is None
        or not plain(W, dtype)
        or not plain(a, dtype)
        or x.ndim != 2
        or W.ndim != 2
        or x.shape[0] == 0
        or x.shape[1] != W.shape[0]
    ):
        return False
    if a.ndim == 1:
        return a.shape[0] == W.shape[1]
    return a.ndim == 2 and a.shape[0] == x.shape[0] and a.shape[1] == W.shape[1]


def _free_buffer(buf, shape: tuple, *inputs: np.ndarray) -> bool:
    """True when ``buf`` is None, or a writeable plain array of ``shape`` and the inputs' dtype that
    overlaps none of them (so the fast path may write into it)."""
    if buf is None:
        return True
    if not plain(buf, inputs[0].dtype) or buf.shape != shape or not buf.flags.writeable:
        return False
    return not any(np.may_share_memory(buf, a) for a in inputs)


def forward_run(x2: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        out = np.empty((x2.shape[0], W.shape[1]), x2.dtype)
    _gemm.matmul(x2, W, out)
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
        plain_affine(x, W, dout)
        and dout.ndim == 2
        and _free_buffer(dx, x.shape, dout, x, W)
        and _free_buffer(dW, W.shape, dout, x, W)
        and _free_buffer(db, (W.shape[1],), dout, x, W)
    ):
        return backward_run(dout, x, x, W, dx, dW, db)
    dout, x, W = as_array(dout, "dout"), as_array(x, "x"), as_array(W, "W")
    x2 = _affine_shapes(x, W, None)
    n, m = x2.shape[0], W.shape[1]
    require_2d(dout, "dout", "(N, M)")
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
            check_out(buf, shape, dt, name)
            if any(np.may_share_memory(buf, a) for a in (dout, x, W)):
                raise ValueError(f"{name} must not overlap dout, x or W")
    if dx is not None and x.ndim != 2 and not dx.flags.c_contiguous:
        raise ValueError(f"dx must be C-contiguous when x is {x.ndim}-D")
    dout, x2, W = convert(dout, dtype), convert(x2, dtype), convert(W, dtype)
    bufs = [buf if dt == dtype else None for buf, dt in zip((dx, dW, db), dtypes, strict=True)]
    if numpy_backend():
        rdx, rdW, rdb = reference.affine_backward(dout, x2, W)
        results = (rdx.reshape(x.shape), rdW, rdb)
    else:
        results = backward_run(dout, x, x2, W, *bufs)
    given = (dx, dW, db)
    return tuple(finish(convert(r, dt), buf) for r, dt, buf in zip(results, dtypes, given, strict=True))


def backward_run(
    dout, x, x2, W, dx, dW, db, with_dx: bool = True, with_db: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The products and the bias gradient, for validated operands of one dtype; ``x2`` is ``x`` as
    (N, D), and ``dx`` comes back in ``x``'s shape. Without ``with_dx`` the input gradient is not
    computed (one product fewer) and comes back as None; without ``with_db``, ``db`` was computed
    already (by :func:`activation_backward_run`) and comes back as given."""
    n, m = dout.shape
    dtype = x2.dtype
    if dx is None and with_dx:
        dx = np.empty(x.shape, dtype)
    if dW is None:
        dW = np.empty(W.shape, dtype)
    if db is None:
        db = np.empty((m,), dtype)
    if n * m * W.shape[0] < _gemm.LOCK_MIN and _gemm.DIRECT.get(dtype):
        # small products: no turn under the lock, and np.matmul without _gemm.matmul's call
        if with_dx:
            np.matmul(dout, W.T, out=dx.reshape(n, -1))
        np.matmul(x2.T, dout, out=dW)
    else:
        with _threads.BLAS_LOCK:  # both products in one turn
            if with_dx:
                _gemm.matmul(dout, W.T, dx.reshape(n, -1))
            _gemm.matmul(x2.T, dout, dW)
    if with_db:
        launch(_affine.bias_grad, dout.size, dout, db)
    return (dx if with_dx else None), dW, db


#: the fused kernels of an Affine layer followed by an activation: (forward, backward), by name in
#: :mod:`fastlayers._kernels.affine`
ACTIVATIONS = {
    "relu": ("bias_relu", "relu_grad_bias"),
    "sigmoid": ("bias_sigmoid", "sigmoid_grad_bias"),
}


#: the bias kernel that follows the product, by the activation after the layer (None: none)
BIAS_KERNELS = {None: "bias_add", "relu": "bias_relu", "sigmoid": "bias_sigmoid"}
#: Up to this many result elements, a bias add (and ReLU) whose kernel module is not loaded yet runs
#: as NumPy ufuncs instead, which give the same values (their twins are exact: ``tests/kernel_cases``),
#: so that a process answering small requests does not wait for Numba's start-up (docs/PERFORMANCE.md,
#: "Start-up"); ``fastlayers.preload()``, any larger call, or the ``UFUNC_CALLS``-th such call loads
#: the kernels.
UFUNC_MAX = 1 << 12
#: How many small Affine calls run as NumPy ufuncs before one loads the kernels itself: about where
#: the time those calls lose against the kernels and the plans adds up to the time of the load, so
#: that a long-running process that never calls ``preload()`` pays at most about twice the least it
#: could (measured: docs/PERFORMANCE.md, "The per-call floor and many request threads").
UFUNC_CALLS = 100_000
_ufunc_calls = [0]  # small calls answered so far by the ufuncs (a race only miscounts by a few)


def dense_run(x2, W, b, kind: str | None, owner: object, name: str) -> np.ndarray | None:
    """``activation(x2 @ W + b)`` for the common call of an Affine layer (followed by the activation
    ``kind``, "relu", "sigmoid" or None), or None, having done nothing visible, for any other call.

    ``x2`` is 2-D (the callers reshape). The common call: ``x2`` (N, D) with N >= 1, ``W`` (D, M)
    and ``b`` (M,), exact ndarrays of one float dtype that the rule computes in as it is, ``x2`` and
    ``b`` C-contiguous, on the numba backend (:func:`~._checks.fast_dtype`). The gate is written
    inline and checks only what the product does not (it runs on every layer call of a net: the
    per-call floor of a small batch): the product itself raises for operands that do not fit, and
    the call then returns None, so that the general path reports it. The result goes into
    ``owner.<name>`` when :func:`~._checks.reusable` allows it (results of at least
    ``REUSE_MIN_BYTES``), else into a new array. The product, then the bias add and the activation
    in one pass over it."""
    dtype = fast_dtype(x2)  # a plain array the rule computes in as it is, numba backend
    if dtype is None or type(W) is not np.ndarray or type(b) is not np.ndarray:
        return None
    if W.dtype is not dtype or b.dtype is not dtype or W.ndim != 2 or b.ndim != 1:
        return None
    n = x2.shape[0]
    m = W.shape[1]
    if n == 0 or b.shape[0] != m or not b.flags.c_contiguous:  # b is all the kernel reads besides out
        return None
    size = n * m
    out = reusable(owner, name, (n, m), dtype) if size * dtype.itemsize >= REUSE_MIN_BYTES else None
    if out is None:
        out = np.empty((n, m), dtype)
    try:
        if size * W.shape[0] < _gemm.LOCK_MIN and _gemm.DIRECT.get(dtype):
            np.matmul(x2, W, out=out)  # what _gemm.matmul does for such a product, without the call
        else:
            _gemm.matmul(x2, W, out)
    except (ValueError, TypeError):  # x2 and W do not fit: the general path says how
        return None
    name = BIAS_KERNELS[kind]
    kernel = _affine.__dict__.get(name)  # None until the kernel module is loaded
    if kernel is None and size <= UFUNC_MAX and kind != "sigmoid" and _ufunc_calls[0] < UFUNC_CALLS:
        _ufunc_calls[0] += 1
        np.add(out, b, out=out)
        if kind == "relu":
            np.maximum(out, 0, out=out)  # NaN stays NaN and -0.0 becomes 0.0, as in the kernel
        return out
    launch(kernel or getattr(_affine, name), size, out, b)
    return out


def widened_rows(x2, W, b, owner: object, name: str) -> np.ndarray | None:
    """``x2`` converted to float64 for the book's mix (float32 images, float64 ``W`` and ``b``), or
    None, having done nothing, for any other call.

    The call it takes: ``x2`` a plain float32 (N, D) array with N >= 1, ``W`` (D, M) and ``b`` (M,)
    plain float64 arrays, outside strict mode and the float32 compute policy (the rule then computes
    in float64, as ``x @ W + b`` does). The shapes are checked before anything is written. The
    copy goes into ``owner.<name>`` (the layer's previous converted input) when
    :func:`~._checks.reusable` allows it, into a new array otherwise; the caller keeps it as the
    layer's ``x``."""
    if fast_dtype(x2) is not F32 or fast_dtype(W) is not F64 or not plain(b, F64) or _backend.is_strict():
        return None
    n, d = x2.shape
    if n == 0 or W.ndim != 2 or b.ndim != 1 or W.shape[0] != d or b.shape[0] != W.shape[1]:
        return None
    buf = reusable(owner, name, (n, d), F64) if n * d * 8 >= REUSE_MIN_BYTES else None
    if buf is None:
        return x2.astype(F64)
    np.copyto(buf, x2)
    return buf


def activation_backward_run(dout: np.ndarray, y: np.ndarray, kind: str, dh, db) -> tuple[np.ndarray, np.ndarray]:
    """The activation's gradient ``dh`` (from its output ``y``) and the bias gradient ``db`` (``dh``
    summed over rows), in one pass, for plain (N, M) ``dout`` and ``y`` of one dtype. ``dh`` and
    ``db`` are None or buffers from :func:`~._checks.reusable`."""
    if dh is None:
        dh = np.empty(dout.shape, dout.dtype)
    if db is None:
        db = np.empty(dout.shape[1], dout.dtype)
    launch(getattr(_affine, ACTIVATIONS[kind][1]), dout.size, dout, y, dh, db)
    return dh, db
