"""The chapter 5 layers of the classic code (Mul, Add, ReLU, Sigmoid, Affine, SoftmaxWithLoss), on the compiled kernels.

Each class keeps the classic public attributes and ``forward``/``backward`` signatures, holds the
state between the two, and leaves the numerics to :mod:`fastlayers.functional`. Defects of the
classic code that are not copied: ``Relu.backward`` does not write into ``dout``; ``Sigmoid`` does not
overflow; ``SoftmaxWithLoss`` uses log-sum-exp and honours ``dout``; ``backward`` before ``forward``
raises a clear error; dtypes are kept and shapes checked.

Buffer recycling: every call returns a result the caller may keep, as in the classic code. When a
layer finds that nothing but itself still references a result it produced earlier (for example the
gradient it returned last time, once the previous layer has consumed it), it writes the new result
into that memory instead of allocating. The reference count decides, so nobody can observe the
reuse (the gate is :func:`fastlayers.functional._checks.reusable`). What it saves is the page faults
of fresh memory (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import _backend
from .._kernels import lazy
from ..functional import affine as A
from ..functional import elementwise as E
from ..functional import loss as S
from ..functional._checks import REUSE_MIN_BYTES, as_array, compute_dtype, plain, reusable, scalar

_loss_kernels = lazy("loss")


def _need_forward(layer: object, value: object) -> None:
    if value is None:
        raise ValueError(f"{type(layer).__name__}.backward called before forward")


def _dtype_of(a) -> np.dtype | None:
    return a.dtype if type(a) is np.ndarray else None


def _sum_to_shape(grad, shape: tuple):
    """Sum a broadcast gradient back down to ``shape`` (the shape of the input it belongs to)."""
    if np.shape(grad) == shape:
        return grad
    grad = np.asarray(grad)
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra > 0 else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class MulLayer:
    """Multiplication node: ``forward(x, y) = x * y``; ``backward(dout) = (dout * y, dout * x)``.

    Works on Python scalars and on arrays with NumPy broadcasting; gradients come back shaped like
    the inputs (summed over the broadcast axes).
    """

    def __init__(self) -> None:
        self.x: Any = None
        self.y: Any = None

    def forward(self, x: Any, y: Any) -> Any:
        """``x * y`` (NumPy's result: a scalar for scalars, an array with broadcasting).

        Parameters
        ----------
        x, y : scalars or array_like
            Kept as ``self.x`` and ``self.y`` for :meth:`backward`.
        """
        self.x = x
        self.y = y
        return x * y

    def backward(self, dout: Any) -> tuple[Any, Any]:
        """``(dout * y, dout * x)``, each summed back to the shape of its input.

        Parameters
        ----------
        dout : scalar or array_like
            Upstream gradient, shaped like the forward result.

        Raises
        ------
        ValueError
            ``backward`` before ``forward``.
        """
        _need_forward(self, self.x)
        dx = dout * self.y
        dy = dout * self.x
        return _sum_to_shape(dx, np.shape(self.x)), _sum_to_shape(dy, np.shape(self.y))


class AddLayer:
    """Addition node: ``forward(x, y) = x + y``; ``backward(dout) = (dout, dout)``.

    With broadcasting, each gradient is summed back to its input's shape.
    """

    def __init__(self) -> None:
        self.x_shape: tuple[int, ...] | None = None
        self.y_shape: tuple[int, ...] | None = None

    def forward(self, x: Any, y: Any) -> Any:
        """``x + y`` (NumPy's result: a scalar for scalars, an array with broadcasting).

        Parameters
        ----------
        x, y : scalars or array_like
            Only their shapes are kept, for :meth:`backward`.
        """
        self.x_shape = np.shape(x)
        self.y_shape = np.shape(y)
        return x + y

    def backward(self, dout: Any) -> tuple[Any, Any]:
        """``(dout, dout)``, each summed back to the shape of its input.

        Parameters
        ----------
        dout : scalar or array_like
            Upstream gradient, shaped like the forward result.

        Raises
        ------
        ValueError
            ``backward`` before ``forward``.
        """
        _need_forward(self, self.x_shape)
        return _sum_to_shape(dout * 1, self.x_shape), _sum_to_shape(dout * 1, self.y_shape)


class _Activation:
    """An elementwise activation: keeps its forward output ``out``, from which backward works."""

    _forward = staticmethod(E.relu_forward)
    _backward = staticmethod(E.relu_backward)

    def __init__(self) -> None:
        self.out: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        """The activation of ``x``, elementwise; kept as ``self.out``.

        Parameters
        ----------
        x : array_like, any shape

        Returns
        -------
        ndarray of ``x``'s shape, in ``x``'s float dtype (float16 as float32, integers as float64).

        Raises
        ------
        TypeError
            A dtype that is not a real number; a tensor that requires grad.
        """
        self.out = E.layer_call(self._forward, x, None, self, "out")
        return self.out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """The gradient with respect to the input, from ``dout`` and ``self.out`` as it is now.

        Parameters
        ----------
        dout : array_like, shaped like the forward input
            Upstream gradient; never written to.

        Returns
        -------
        ndarray of ``dout``'s shape (dtype: see the README's dtype section).

        Raises
        ------
        ValueError
            ``backward`` before ``forward``; ``dout`` and ``out`` of different shapes.
        """
        if self.out is None:
            _need_forward(self, None)
        self._dx = E.layer_call(self._backward, dout, self.out, self, "_dx")
        return self._dx


class Relu(_Activation):
    """ReLU layer. Keeps the forward output ``out``; ``mask`` (``x <= 0``) is computed on demand."""

    @property
    def mask(self) -> np.ndarray | None:
        """The classic boolean mask ``x <= 0`` (computed from ``out``, not stored)."""
        return None if self.out is None else self.out <= 0


class Sigmoid(_Activation):
    """Sigmoid layer. Keeps the forward output ``out``."""

    _forward = staticmethod(E.sigmoid_forward)
    _backward = staticmethod(E.sigmoid_backward)


class Affine:
    """Fully connected layer ``x.reshape(N, -1) @ W + b``.

    Parameters
    ----------
    W : ndarray, shape (D, M)
    b : ndarray, shape (M,)
        Kept by reference (``self.W``, ``self.b``), so optimizers that update them in place are seen
        by the layer; replacing them between calls is allowed, and checked at the next call.

    Attributes
    ----------
    x : ndarray, shape (N, D)
        The latest input, reshaped as ``x.reshape(N, -1)``: a view of the caller's array, as in the
        classic code, unless NumPy's rule made the layer compute in a wider dtype than ``x``'s (float32
        images, float64 weights), in which case it is the converted copy the layer computed with.
        ``original_x_shape`` is the input's shape before the reshape.
    dW, db : ndarray
        Parameter gradients, set by :meth:`backward`.

    Raises
    ------
    TypeError
        If ``W`` or ``b`` is not a numpy array.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        if not isinstance(W, np.ndarray) or not isinstance(b, np.ndarray):
            raise TypeError(f"W and b must be numpy arrays, got {type(W).__name__} and {type(b).__name__}")
        self.W: np.ndarray = W
        self.b: np.ndarray = b
        self.x: np.ndarray | None = None
        self.original_x_shape: tuple[int, ...] | None = None
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``x.reshape(N, -1) @ W + b``.

        Parameters
        ----------
        x : array_like, shape (N, ...)
            A batch of N inputs that each flatten to D values (a 1-D ``x`` is N rows of one value,
            as the classic reshape makes it).

        Returns
        -------
        ndarray, shape (N, M), in the dtype NumPy gives for ``x @ W + b`` (float32 images with
        float64 weights compute in float64).

        Raises
        ------
        ValueError
            Shapes that do not fit ``W`` and ``b``; an empty batch; a 0-d ``x``.
        TypeError
            Unsupported dtypes; mixed precision in strict mode.
        """
        x = as_array(x, "x")
        if x.ndim == 0:
            raise ValueError(f"x must be at least 1-D (N, ...), got shape {x.shape}")
        out = fused_forward(self, None, x)  # the common call, with the fewest checks
        if out is not None:
            return out
        x2 = x if x.ndim == 2 or x.shape[0] == 0 else x.reshape(x.shape[0], -1)
        W, b = self.W, self.b
        plain = A.plain_affine(x2, W, b)
        if not plain and type(W) is np.ndarray and type(b) is np.ndarray:
            # float32 images with float64 weights (the book's mix): x in the dtype NumPy computes in,
            # once, kept for backward; anything else the fast path does not take is checked by A
            dtype = compute_dtype(x=x2, W=W, b=b)
            if W.dtype == dtype and b.dtype == dtype and x2.dtype != dtype:
                converted = reusable(self, "x", x2.shape, dtype)  # the previous call's converted x
                if converted is None:
                    x2 = x2.astype(dtype)
                else:
                    np.copyto(converted, x2)
                    x2 = converted
                plain = A.plain_affine(x2, W, b)
        if plain and b.ndim == 1:
            # the common case: a reusable buffer is the layer's alone, so it overlaps no input
            out = reusable(self, "_out", (x2.shape[0], W.shape[1]), x2.dtype)
            self._out = A.forward_run(x2, W, b, out)
        else:
            self._out = A.affine_forward(x2, W, b)
        self.original_x_shape = x.shape
        self.x = x2
        return self._out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """Gradients of the layer, from ``self.x`` and ``self.W`` as they are now.

        Parameters
        ----------
        dout : array_like, shape (N, M)
            Upstream gradient.

        Returns
        -------
        dx : ndarray shaped like the forward input, in the dtype NumPy gives for ``dout @ W.T``.
            Also sets ``dW`` (``x.T @ dout``) and ``db`` (``dout.sum(axis=0)``), each in its own
            NumPy dtype.

        Raises
        ------
        ValueError
            ``backward`` before ``forward``; ``dout`` (or a replaced ``x``/``W``) of the wrong shape.
        TypeError
            As :meth:`forward`.
        """
        self._backward(dout, with_dx=True)
        return self._dx.reshape(self.original_x_shape)

    def _backward(self, dout: ArrayLike, with_dx: bool) -> None:
        """Set ``dW`` and ``db`` (and the input gradient, with ``with_dx``) from ``dout``. The nets
        call it without ``with_dx`` for their first layer, whose input gradient nobody uses."""
        _need_forward(self, self.x)
        x2, W = self.x, self.W
        if A.plain_affine(x2, W, dout) and dout.ndim == 2:
            dtype = x2.dtype
            small = REUSE_MIN_BYTES // dtype.itemsize  # smaller results are never reused: skip the gate
            dx = reusable(self, "_dx", x2.shape, dtype) if with_dx and x2.size >= small else None
            dW = reusable(self, "dW", W.shape, dtype) if W.size >= small else None
            db = reusable(self, "db", (W.shape[1],), dtype) if W.shape[1] >= small else None
            dx, self.dW, self.db = A.backward_run(dout, x2, x2, W, dx, dW, db, with_dx)
            if with_dx:
                self._dx = dx
        else:
            self._dx, self.dW, self.db = A.affine_backward(dout, x2, W)


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss.

    ``forward(x, t)`` takes integer labels (N,) or target rows shaped like ``x`` and returns the
    mean loss; ``backward(dout=1)`` returns ``dout * (y - t) / N``, computed from ``self.y`` and
    ``self.t`` as they are when it is called (labels are checked again there).

    Attributes
    ----------
    loss : NumPy scalar
    y : ndarray (N, C)
        The softmax output, read-only: the layer may use it again in ``backward``. Replace it to
        change what ``backward`` sees, or copy it to modify it.
    t : the targets as given to ``forward`` (kept by reference, as in the classic code).

    On the numba backend, with integer labels, ``forward`` also computes the gradient for
    ``dout = 1`` in the same pass over each row; ``backward()`` hands it over only when ``y`` is still
    the read-only array ``forward`` made and the labels in ``t`` are still the same (an O(N)
    comparison), and computes it afresh otherwise. Either way the result is bit-identical.
    """

    def __init__(self) -> None:
        self.loss: np.floating | None = None
        self.y: np.ndarray | None = None
        self.t: Any = None
        self._dx: np.ndarray | None = None
        self._fused: tuple[np.ndarray, np.ndarray] | None = None  # (labels, y) the fused gradient is for

    def forward(self, x: ArrayLike, t: ArrayLike) -> np.floating:
        """Mean softmax cross-entropy of the scores ``x`` against ``t``.

        Parameters
        ----------
        x : array_like, shape (N, C)
        t : array_like
            Integer labels (N,) (or an (N, 1) column) in ``[0, C)``, or rows of shape (N, C).

        Returns
        -------
        NumPy scalar in ``x``'s float dtype.

        Raises
        ------
        ValueError
            Wrong shapes, an empty batch, labels out of range.
        TypeError
            Float or bool labels; unsupported dtypes.
        """
        self._fused = None  # drop its references first, so that the buffers below can be reused
        shape, dtype = (x.shape, x.dtype) if type(x) is np.ndarray else (None, None)
        # the fused gradient pays off only for integer labels: (N,) or an (N, 1) column
        fuse = (
            type(t) is np.ndarray
            and t.dtype.kind in "iu"
            and (t.ndim == 1 or t.shape[1:] == (1,))
            and t.shape != shape
            and _backend.current() == "numba"
        )
        grad_out = reusable(self, "_dx", shape, dtype) if fuse else None
        y_out = reusable(self, "y", shape, dtype, frozen=True)
        result = S.xent_forward(x, t, with_grad=fuse, grad_out=grad_out, y_out=y_out)
        y = result.y
        y.flags.writeable = False
        self.loss, self.y, self.t = result.loss, y, t
        if result.grad is not None:
            self._dx = result.grad
            self._fused = (result.targets, y)
        return self.loss

    def backward(self, dout: float | np.floating | np.ndarray = 1) -> np.ndarray:
        """``dout * (y - t) / N`` from the current ``y`` and ``t``.

        Parameters
        ----------
        dout : real scalar, default 1

        Returns
        -------
        ndarray (N, C) in the dtype NumPy gives for ``dout * (y - t) / N``.

        Raises
        ------
        ValueError
            ``backward`` before ``forward``; ``t`` or ``y`` changed into something that does not fit
            (labels out of range, other shapes).
        TypeError
            A ``dout`` that is not a real scalar.
        """
        _need_forward(self, self.y)
        dout = scalar(dout, "dout")
        fused, self._fused = self._fused, None
        y = self.y
        if fused is not None and _is_one(dout, y):
            labels, fused_y = fused
            if y is fused_y and not y.flags.writeable and _same_labels(self.t, labels):
                return self._dx
        self._dx = S.xent_backward(y, self.t, dout, None, spare=reusable(self, "_dx", np.shape(y), _dtype_of(y)))
        return self._dx


def _same_labels(t, labels: np.ndarray) -> bool:
    """True when ``t`` is an integer ndarray holding exactly the values of ``labels``, the private
    int64 copy the fused gradient was made for (an O(N) comparison).

    ``t`` counts when it is 1-D or 2-D with as many elements as ``labels`` (``forward`` took (N,)
    labels or an (N, 1) column); anything else gives False, and the caller computes the gradient
    afresh. A ``t`` in non-native byte order is compared through a native copy: the compiled
    comparison takes native arrays only.
    """
    if not (type(t) is np.ndarray and t.dtype.kind in "iu" and t.ndim in (1, 2) and t.size == labels.shape[0]):
        return False
    flat = t.reshape(-1)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return bool(_loss_kernels.labels_equal(flat, labels))


def _is_one(dout, y) -> bool:
    """True when ``dout`` is 1 and leaves the gradient in ``y``'s dtype: a Python 1 or 1.0, or a
    NumPy scalar of ``y``'s dtype."""
    if type(dout) in (int, float):
        return dout == 1
    return isinstance(dout, np.generic) and dout.dtype == y.dtype and dout == 1


# --------------------------------------------------------------------------------------------
# an Affine layer and the activation after it, in fused passes (used by the nets)
# --------------------------------------------------------------------------------------------
_FUSED = {Relu: "relu", Sigmoid: "sigmoid"}


def fused_forward(affine: Affine, activation: _Activation | None, x) -> np.ndarray | None:
    """``activation.forward(affine.forward(x))`` with the bias add and the activation in one pass
    over the product, leaving both layers in the state the two calls would (``affine.x``,
    ``original_x_shape``, ``activation.out``); with ``activation`` None, ``affine.forward(x)``
    (``affine._out`` too). None, having done nothing, when the call is not the common one (see
    :func:`fastlayers.functional.affine.dense_run`)."""
    if activation is None:
        kind = None
    else:
        kind = _FUSED.get(type(activation))
        if kind is None:
            return None
    if type(x) is not np.ndarray:
        return None
    ndim = x.ndim
    if ndim == 2:
        x2 = x
    elif ndim > 2 and x.shape[0] != 0:
        x2 = x.reshape(x.shape[0], -1)
    else:  # 0-d, 1-D, or an empty batch of images: the general path
        return None
    W, b = affine.W, affine.b
    if type(W) is np.ndarray and x2.dtype is not W.dtype:  # float32 images, float64 weights (the book's)
        x2 = A.widened_rows(x2, W, b, affine, "x")
        if x2 is None:
            return None
    owner, name = (affine, "_out") if activation is None else (activation, "out")
    out = A.dense_run(x2, W, b, kind, owner, name)
    if out is None:
        return None
    setattr(owner, name, out)
    affine.x = x2
    affine.original_x_shape = x.shape
    return out


def fused_backward(affine: Affine, activation: _Activation, dout, with_dx: bool) -> np.ndarray | None | bool:
    """``affine.backward(activation.backward(dout))`` with the activation's gradient and the bias
    gradient in one pass (and without the input gradient unless ``with_dx``), leaving ``dW`` and
    ``db`` as the two calls would. Returns ``dx`` (None without ``with_dx``), or False, having done
    nothing, when the call is not the common one."""
    kind = _FUSED.get(type(activation))
    if kind is None:
        return False
    y, x2, W = activation.out, affine.x, affine.W
    if y is None or x2 is None:
        return False
    dtype = y.dtype
    if not (
        plain(y, dtype)
        and plain(dout, dtype)
        and dout.shape == y.shape
        and A.plain_affine(x2, W, dout)
        and dout.ndim == 2
    ):
        return False
    small = REUSE_MIN_BYTES // dtype.itemsize  # smaller results are never reused: skip the gate
    dh = reusable(activation, "_dx", y.shape, dtype) if y.size >= small else None
    db = reusable(affine, "db", (y.shape[1],), dtype) if y.shape[1] >= small else None
    dh, db = A.activation_backward_run(dout, y, kind, dh, db)
    activation._dx = dh
    dx = reusable(affine, "_dx", x2.shape, dtype) if with_dx and x2.size >= small else None
    dW = reusable(affine, "dW", W.shape, dtype) if W.size >= small else None
    dx, affine.dW, affine.db = A.backward_run(dh, x2, x2, W, dx, dW, db, with_dx, with_db=False)
    if not with_dx:
        return None
    affine._dx = dx
    return dx.reshape(affine.original_x_shape)
