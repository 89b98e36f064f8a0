"""fastlayers: the classic "Deep Learning from Scratch" layers on parallel Numba kernels.

Layers: :class:`Relu`, :class:`Sigmoid`, :class:`Affine`, :class:`SoftmaxWithLoss`,
:class:`MulLayer`, :class:`AddLayer`, :class:`Convolution`, :class:`Pooling`, :class:`Dropout`,
:class:`BatchNormalization`. Functions: :func:`relu`, :func:`sigmoid`, :func:`softmax`,
:func:`cross_entropy_error`, :func:`numerical_gradient`, :func:`im2col`, :func:`col2im`. Networks:
:class:`TwoLayerNet`, :class:`MultiLayerNet`, :class:`MultiLayerNetExtend`, :class:`SimpleConvNet`,
:class:`DeepConvNet`, :func:`gradient_check`; optimizers :class:`SGD`, :class:`Momentum`,
:class:`Nesterov`, :class:`AdaGrad`, :class:`RMSprop`, :class:`Adam`; data in
:mod:`fastlayers.datasets`. Kernel-level API with ``out=`` buffers: :mod:`fastlayers.functional`;
NumPy reference path: :mod:`fastlayers.reference`.
"""

from __future__ import annotations

from importlib import metadata as _metadata

import numba as _numba

from ._backend import (
    float32_compute,
    get_backend,
    set_default_backend,
    set_float32_compute,
    set_strict_dtypes,
    strict_dtypes,
    use_backend,
)
from ._kernels import _threads
from .datasets import load_digits, load_mnist
from .functional import cross_entropy_error, softmax
from .functional import relu_forward as relu
from .functional import sigmoid_forward as sigmoid
from .functional.conv import col2im, im2col
from .gradient import numerical_gradient
from .layers import (
    AddLayer,
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    MulLayer,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
)
from .nets import DeepConvNet, MultiLayerNet, MultiLayerNetExtend, SimpleConvNet, TwoLayerNet, gradient_check
from .optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

try:  # one source for the version: the package metadata, written from pyproject.toml at install
    __version__ = _metadata.version("fastlayers")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Affine",
    "AddLayer",
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "Pooling",
    "im2col",
    "col2im",
    "Momentum",
    "Nesterov",
    "RMSprop",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "SimpleConvNet",
    "DeepConvNet",
    "TwoLayerNet",
    "gradient_check",
    "MulLayer",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "cross_entropy_error",
    "get_backend",
    "get_num_threads",
    "load_digits",
    "load_mnist",
    "numerical_gradient",
    "relu",
    "set_num_threads",
    "sigmoid",
    "softmax",
    "use_backend",
    "set_default_backend",
    "strict_dtypes",
    "set_strict_dtypes",
    "float32_compute",
    "set_float32_compute",
    "__version__",
]


def set_num_threads(n: int) -> None:
    """Set the number of threads the parallel kernels use (in the calling Python thread).

    Parameters
    ----------
    n : int
        From 1 to the number Numba started with (``NUMBA_NUM_THREADS``, default: the core count).

    Raises
    ------
    ValueError
        If ``n`` is out of that range.
    """
    limit = _numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n must be an integer from 1 to {limit} (NUMBA_NUM_THREADS), got {n!r}")
    _numba.set_num_threads(n)
    _threads.set_serial_only(n == 1)


def get_num_threads() -> int:
    """The number of threads the parallel kernels use in the calling Python thread."""
    return _numba.get_num_threads()
