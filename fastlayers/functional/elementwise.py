"""ReLU and Sigmoid, forward and backward: the checked functions in front of
:mod:`fastlayers._kernels.elementwise`, and the entry point of the activation layers
(:func:`layer_call`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .. import reference
from .._kernels import lazy
from .._kernels._threads import launch
from ._checks import (
    REUSE_MIN_BYTES,
    as_array,
    as_arrays,
    check_out,
    compute_dtype,
    convert,
    fast_dtype,
    finish,
    numpy_backend,
    overlaps,
    plain,
    reusable,
    same_shape,
)

_elem = lazy("elementwise")  # imported (with Numba) at the first kernel call


def _flat(arrays: list[np.ndarray]) -> list[np.ndarray] | None:
    """1-D views of same-shape arrays that all walk memory in one order, or None."""
    if all(a.flags.c_contiguous for a in arrays):
        return [a.reshape(-1) for a in arrays]
    if all(a.flags.f_contiguous for a in arrays):
        return [a.T.reshape(-1) for a in arrays]
    return None


def _fast(kernel: str, x, y=None, out=None) -> np.ndarray | None:
    """The common call without the general machinery, or None when the call is not of that kind
    (``kernel``: the kernel's name in :mod:`fastlayers._kernels.elementwise`).

    The common call: ``x`` (and ``y``, of ``x``'s shape) plain float arrays of one dtype on the
    numba backend (:func:`~._checks.fast_dtype`, :func:`~._checks.plain`), and ``out`` absent, or
    plain, writeable and either an input itself or overlapping none.
    """
    dtype = fast_dtype(x)
    if dtype is None or (y is not None and not (plain(y, dtype) and y.shape == x.shape)):
        return None
    if out is None:
        out = np.empty(x.shape, dtype)
    elif not (
        plain(out, dtype)
        and out.shape == x.shape
        and out.flags.writeable
        and not overlaps(out, x)
        and (y is None or not overlaps(out, y))
    ):
        return None
    if y is None:
        launch(getattr(_elem, kernel), x.size, x.ravel(), out.ravel())
    else:
        launch(getattr(_elem, kernel), x.size, x.ravel(), y.ravel(), out.ravel())
    return out


def layer_call(public, a, y, owner: object, name: str) -> np.ndarray:
    """What an activation layer runs: ``public(a)`` or ``public(a, y)`` (one of this module's
    functions), with the same result.

    The common call (as for :func:`_fast`) goes straight to its kernel, writing into
    ``owner.<name>`` (the layer's earlier result) when :func:`~._checks.reusable` allows it, into a
    fresh array otherwise; anything else goes through ``public`` with its conversions and checks.
    """
    dtype = fast_dtype(a)
    if dtype is None or (y is not None and not (type(y) is np.ndarray and y.dtype is dtype and y.shape == a.shape
                                                and y.flags.c_contiguous)):  # fmt: skip
        return public(a) if y is None else public(a, y)
    size = a.size
    out = reusable(owner, name, a.shape, dtype) if size * dtype.itemsize >= REUSE_MIN_BYTES else None
    if out is None:
        out = np.empty(a.shape, dtype)
    kernel = getattr(_elem, _KERNELS[public])
    if y is None:
        launch(kernel, size, a.reshape(-1), out.reshape(-1))
    else:
        launch(kernel, size, a.reshape(-1), y.reshape(-1), out.reshape(-1))
    return out


def _elementwise(kernel, ref, inputs: list[np.ndarray], out: np.ndarray | None) -> np.ndarray:
    """Run an elementwise kernel on same-shape, same-dtype ``inputs``."""
    x = inputs[0]
    if out is not None:
        check_out(out, x.shape, x.dtype)
    if numpy_backend():
        return finish(ref(*inputs), out)
    order = "F" if (x.flags.f_contiguous and not x.flags.c_contiguous) else "C"
    target = out
    if target is None or any(overlaps(target, a) for a in inputs):
        target = np.empty(x.shape, x.dtype, order=order)
    views = _flat([*inputs, target])
    if views is None:
        c_inputs = [np.ascontiguousarray(a) for a in inputs]
        if not target.flags.c_contiguous:
            target = np.empty(x.shape, x.dtype)
        views = [a.reshape(-1) for a in (*c_inputs, target)]
    launch(getattr(_elem, kernel), x.size, *views)
    return finish(target, out)


def _unary(kernel, ref, x, out) -> np.ndarray:
    fast = _fast(kernel, x, out=out)
    if fast is not None:
        return fast
    _, (x,) = as_arrays(x=x)
    return _elementwise(kernel, ref, [x], out)


def _binary(kernel, ref, dout, y, out, result_from_dout: bool = False) -> np.ndarray:
    """A backward elementwise call. It computes in the rule's dtype of (``dout``, ``y``); with
    ``result_from_dout`` (ReLU: ``y`` only gives a sign, as the classic mask does) the result takes
    the dtype of ``dout`` alone, converted back exactly from the common dtype."""
    fast = _fast(kernel, dout, y, out=out)
    if fast is not None:
        return fast
    dout, y = as_array(dout, "dout"), as_array(y, "y")
    same_shape(dout, y, "dout", "y")
    dtype = compute_dtype(dout=dout, y=y)
    result_dtype = compute_dtype(dout=dout) if result_from_dout else dtype
    inputs = [convert(dout, dtype), convert(y, dtype)]
    if result_dtype == dtype:
        return _elementwise(kernel, ref, inputs, out)
    if out is not None:
        check_out(out, dout.shape, result_dtype)
    return finish(_elementwise(kernel, ref, inputs, None).astype(result_dtype), out)


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
    return _unary("relu_forward", reference.relu_forward, x, out)


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
    return _binary("relu_backward", reference.relu_backward, dout, y, out, result_from_dout=True)


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
    return _unary("sigmoid_forward", reference.sigmoid_forward, x, out)


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
    return _binary("sigmoid_backward", reference.sigmoid_backward, dout, y, out)


#: the kernel of each public function, by name (read from the lazy kernel module at the call)
_KERNELS = {
    relu_forward: "relu_forward",
    relu_backward: "relu_backward",
    sigmoid_forward: "sigmoid_forward",
    sigmoid_backward: "sigmoid_backward",
}
