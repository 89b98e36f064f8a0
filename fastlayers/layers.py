"""The classic layer classes of "Deep Learning from Scratch", on the compiled kernels.

Each class keeps the classic public attributes and ``forward``/``backward`` signatures, holds the
state between the two, and leaves the numerics to :mod:`fastlayers.functional`. Defects of the
classic code that are not copied: ``Relu.backward`` does not write into ``dout``; ``Sigmoid`` does not
overflow; ``SoftmaxWithLoss`` uses log-sum-exp and honours ``dout``; ``backward`` before ``forward``
raises a clear error; dtypes are kept and shapes checked.
"""

from __future__ import annotations

import numpy as np

from . import functional as F


def _need_forward(layer: object, value: object) -> None:
    if value is None:
        raise ValueError(f"{type(layer).__name__}.backward called before forward")


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


class Relu:
    """ReLU layer. Keeps the forward output ``out``; ``mask`` (``x <= 0``) is computed on demand."""

    def __init__(self) -> None:
        self.out = None

    @property
    def mask(self):
        """The classic boolean mask ``x <= 0`` (computed from ``out``, not stored)."""
        return None if self.out is None else self.out <= 0

    def forward(self, x):
        self.out = F.relu_forward(x)
        return self.out

    def backward(self, dout):
        _need_forward(self, self.out)
        return F.relu_backward(dout, self.out)


class Sigmoid:
    """Sigmoid layer. Keeps the forward output ``out``."""

    def __init__(self) -> None:
        self.out = None

    def forward(self, x):
        self.out = F.sigmoid_forward(x)
        return self.out

    def backward(self, dout):
        _need_forward(self, self.out)
        return F.sigmoid_backward(dout, self.out)


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

    def forward(self, x):
        out = F.affine_forward(x, self.W, self.b)
        x = np.asarray(x)
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return out

    def backward(self, dout):
        _need_forward(self, self.x)
        dx, self.dW, self.db = F.affine_backward(dout, self.x, self.W)
        return dx.reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss.

    ``forward(x, t)`` takes integer labels (N,) or target rows shaped like ``x`` and returns the
    mean loss; ``backward(dout=1)`` returns ``dout * (y - t) / N``.
    """

    def __init__(self) -> None:
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.loss, self.y = F.softmax_cross_entropy_forward(x, t)
        self.t = t
        return self.loss

    def backward(self, dout=1):
        _need_forward(self, self.y)
        return F.softmax_cross_entropy_backward(self.y, self.t, dout)
