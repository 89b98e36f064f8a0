"""The classic layer classes of "Deep Learning from Scratch", on the compiled kernels.

Each class keeps the classic public attributes and ``forward``/``backward`` signatures, holds the
state between the two, and leaves the numerics to :mod:`fastlayers.functional`. Defects of the
classic code that are not copied: ``Relu.backward`` does not write into ``dout``; ``Sigmoid`` does not
overflow; ``SoftmaxWithLoss`` uses log-sum-exp and honours ``dout``; ``backward`` before ``forward``
raises a clear error; dtypes are kept and shapes checked.

Buffer recycling: every call returns a result the caller may keep, as in the classic code. When a
layer finds that nothing but itself still references a result it produced earlier (for example the
gradient it returned last time, once the previous layer has consumed it), it writes the new result
into that memory instead of allocating. The reference count decides, so nobody can observe the
reuse; what it saves is the kernel's zeroing of fresh pages, which for large arrays costs as much
as the computation (SoftmaxWithLoss forward at 512x32000 float32: 12.1 ms with a fresh y, 7.4 ms
without the allocation).
"""

from __future__ import annotations

import sys

import numpy as np

from . import _backend
from . import functional as F


def _need_forward(layer: object, value: object) -> None:
    if value is None:
        raise ValueError(f"{type(layer).__name__}.backward called before forward")


def _spare(buf, shape: tuple, dtype) -> np.ndarray | None:
    """``buf`` if it can hold a new result of ``shape`` and ``dtype`` and nothing but the layer holds
    it (so that writing into it cannot be seen by anyone); None otherwise, and always None on the
    numpy backend, whose reference functions allocate anyway (a buffer would only add a copy)."""
    if (
        type(buf) is np.ndarray
        and buf.nbytes >= REUSE_MIN_BYTES
        and _backend._current == "numba"
        and sys.getrefcount(buf) <= F._SOLE_OWNER  # first: a flags object would hold a reference too
        and buf.base is None
        and buf.shape == shape
        and buf.dtype == dtype
    ):
        flags = buf.flags
        if flags.c_contiguous and flags.writeable:
            return buf
    return None


#: Smaller results are allocated afresh: ``np.empty`` of a few KiB costs less than the checks above
#: (0.2 us against 0.7 us), and only large allocations pay for fresh pages.
REUSE_MIN_BYTES = 64 * 1024


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
        self.x = None
        self.y = None

    def forward(self, x, y):
        self.x = x
        self.y = y
        return x * y

    def backward(self, dout):
        _need_forward(self, self.x)
        dx = dout * self.y
        dy = dout * self.x
        return _sum_to_shape(dx, np.shape(self.x)), _sum_to_shape(dy, np.shape(self.y))


class AddLayer:
    """Addition node: ``forward(x, y) = x + y``; ``backward(dout) = (dout, dout)``.

    With broadcasting, each gradient is summed back to its input's shape.
    """

    def __init__(self) -> None:
        self.x_shape = None
        self.y_shape = None

    def forward(self, x, y):
        self.x_shape = np.shape(x)
        self.y_shape = np.shape(y)
        return x + y

    def backward(self, dout):
        _need_forward(self, self.x_shape)
        return _sum_to_shape(dout * 1, self.x_shape), _sum_to_shape(dout * 1, self.y_shape)


class _Activation:
    """An elementwise activation: keeps its forward output ``out``, from which backward works."""

    _forward = staticmethod(F.relu_forward)
    _backward = staticmethod(F.relu_backward)

    def __init__(self) -> None:
        self.out = None
        self._dx = None

    def forward(self, x):
        # the previous result goes along as the buffer to reuse: F._layer_call reuses it when nothing
        # else holds it
        self.out = F._layer_call(self._forward, x, None, self.out)
        return self.out

    def backward(self, dout):
        if self.out is None:
            _need_forward(self, None)
        self._dx = F._layer_call(self._backward, dout, self.out, self._dx)
        return self._dx


class Relu(_Activation):
    """ReLU layer. Keeps the forward output ``out``; ``mask`` (``x <= 0``) is computed on demand."""

    @property
    def mask(self):
        """The classic boolean mask ``x <= 0`` (computed from ``out``, not stored)."""
        return None if self.out is None else self.out <= 0


class Sigmoid(_Activation):
    """Sigmoid layer. Keeps the forward output ``out``."""

    _forward = staticmethod(F.sigmoid_forward)
    _backward = staticmethod(F.sigmoid_backward)


class Affine:
    """Fully connected layer ``x.reshape(N, -1) @ W + b``.

    ``W`` (D, M) and ``b`` (M,) are kept by reference, so optimizers that update them in place are
    seen by the layer. After ``backward``, ``dW`` and ``db`` hold the parameter gradients.
    """

    def __init__(self, W, b) -> None:
        if not isinstance(W, np.ndarray) or not isinstance(b, np.ndarray):
            raise TypeError(f"W and b must be numpy arrays, got {type(W).__name__} and {type(b).__name__}")
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None
        self._out = None
        self._dx = None

    def forward(self, x):
        x = np.asarray(x)
        rows = x.shape[0] if x.ndim else 0
        x2 = x.reshape(rows, -1) if x.ndim != 2 else x
        W, b = self.W, self.b
        if F._plain_affine(x2, W, b) and b.ndim == 1:
            # the common case: the buffer from _spare is the layer's alone, so it overlaps nothing and
            # the products can go straight to F's run step (no overlap checks: 2 us less per call)
            out = _spare(self._out, (rows, W.shape[1]), x.dtype)
            self._out = F._affine_forward_run(x2, W, b, out)
        else:
            out_shape = (rows, W.shape[1] if W.ndim == 2 else 0)
            self._out = F.affine_forward(x, W, b, out=_spare(self._out, out_shape, _dtype_of(x)))
        self.original_x_shape = x.shape
        self.x = x2
        return self._out

    def backward(self, dout):
        _need_forward(self, self.x)
        x2, W = self.x, self.W
        dtype = x2.dtype
        dx = _spare(self._dx, x2.shape, dtype)
        dW = _spare(self.dW, W.shape, dtype)
        db = _spare(self.db, self.b.shape, dtype)
        if F._plain_affine(x2, W, dout) and dout.ndim == 2:
            self._dx, self.dW, self.db = F._affine_backward_run(dout, x2, x2, W, dx, dW, db)
        else:
            self._dx, self.dW, self.db = F.affine_backward(dout, x2, W, dx=dx, dW=dW, db=db)
        return self._dx.reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss.

    ``forward(x, t)`` takes integer labels (N,) or target rows shaped like ``x`` and returns the
    mean loss; ``backward(dout=1)`` returns ``dout * (y - t) / N``.

    Beyond the classic design, on the numba backend ``forward`` also computes the gradient for
    ``dout = 1`` in the same pass over each row (while the row is in cache), so that ``backward()``
    only hands it over: 256x1000 float32, forward+backward 1.3x faster. Other ``dout`` values, and a
    second ``backward`` call after the same ``forward``, compute it from ``y``. Either way the result
    is bit-identical. (Changing ``y`` in place between ``forward`` and ``backward`` is therefore not
    seen by a ``backward()`` with the default ``dout``.)
    """

    def __init__(self) -> None:
        self.loss = None
        self.y = None
        self.t = None
        self._t = None  # the targets as validated by forward: backward needs no second check
        self._dx = None
        self._dx_ready = False  # _dx holds the dout = 1 gradient of the latest forward, not yet returned

    def forward(self, x, t):
        shape, dtype = np.shape(x), _dtype_of(x)
        grad = False  # the numpy backend computes the gradient in backward, as the classic code
        if _backend._current == "numba":
            buf = _spare(self._dx, shape, dtype)
            grad = True if buf is None else buf
        self.loss, self.y, self._t, g = F._xent_forward(x, t, out=_spare(self.y, shape, dtype), grad=grad)
        self.t = t
        self._dx_ready = g is not None
        if g is not None:
            self._dx = g
        return self.loss

    def backward(self, dout=1):
        _need_forward(self, self.y)
        if self._dx_ready and _is_one(dout):
            self._dx_ready = False
            return self._dx
        self._dx_ready = False
        self._dx = F._xent_backward(self.y, self._t, dout, out=_spare(self._dx, self.y.shape, self.y.dtype))
        return self._dx


def _is_one(dout) -> bool:
    """True for the default upstream gradient: the number 1 (an int, a float or a NumPy scalar)."""
    return type(dout) in (int, float, np.float32, np.float64) and dout == 1
