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

Importing fastlayers loads NumPy and fastlayers' own Python, not Numba: Numba and each kernel module
are loaded at the first call that needs a compiled kernel (:func:`preload` loads them at once, and
``FASTLAYERS_PRELOAD=1`` does so at import).
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from . import _lazy
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
from .gradient import numerical_gradient
from .layers import AddLayer, Affine, MulLayer, Relu, Sigmoid, SoftmaxWithLoss
from .nets import MultiLayerNet, MultiLayerNetExtend, TwoLayerNet, gradient_check
from .optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from .functional.conv import col2im, im2col
    from .layers.conv import Convolution, Pooling
    from .layers.training import BatchNormalization, Dropout
    from .nets.conv import DeepConvNet, SimpleConvNet

#: names imported at their first read (start-up: a program pays only for the families it uses)
_LAZY = {
    **dict.fromkeys(["Convolution", "Pooling", "Dropout", "BatchNormalization"], ".layers"),
    **dict.fromkeys(["SimpleConvNet", "DeepConvNet"], ".nets"),
    **dict.fromkeys(["im2col", "col2im"], ".functional"),
}
_lazy_getattr, _lazy_dir = _lazy.attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(_lazy_dir()) | {"__version__"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return _lazy_getattr(name)
    # ``__version__`` on first read: importing importlib.metadata is a large share of the import time
    if name != "__version__":
        raise AttributeError(f"module 'fastlayers' has no attribute {name!r}")
    from importlib import metadata

    global __version__
    try:  # one source for the version: the package metadata, written from pyproject.toml at install
        __version__ = metadata.version("fastlayers")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        __version__ = "0+unknown"
    return __version__


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
    "preload",
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
    limit = _threads.num_threads_limit()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n must be an integer from 1 to {limit} (NUMBA_NUM_THREADS), got {n!r}")
    _threads.load_numba().set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the parallel kernels use in the calling Python thread (before Numba is
    loaded: the number it will start with)."""
    if not _threads.numba_loaded():
        return _threads.num_threads_limit()
    return _threads.load_numba().get_num_threads()


def preload(dtypes: tuple[str, ...] = ("float32", "float64")) -> int:
    """Load Numba and every kernel's machine code for ``dtypes`` now, instead of at each kernel's
    first call.

    For a server that prefers to pay at start-up (``FASTLAYERS_PRELOAD=1`` calls this at import,
    ``FASTLAYERS_PRELOAD=float32`` for one dtype). Kernels found in the kernel cache are loaded from
    it; those missing are compiled and cached (``python -m fastlayers warmup`` at image-build time
    fills the cache, so that this only loads).

    Parameters
    ----------
    dtypes : tuple of str
        The dtypes whose kernels are loaded: "float32", "float64" or both.

    Returns
    -------
    int
        The number of kernel variants loaded (each twin, each signature); 0 with
        ``NUMBA_DISABLE_JIT=1``, where the kernels are plain Python functions.
    """
    from ._kernels import load_all
    from ._table import warmup

    warmup(dtypes)  # every layer of the table, below and above every parallel threshold
    twins = (getattr(k, twin) for k in load_all() for twin in ("serial", "parallel"))
    return sum(len(getattr(fn, "signatures", ())) for fn in twins)


_PRELOAD = _os.environ.get("FASTLAYERS_PRELOAD", "").strip().lower()
if _PRELOAD in ("float32", "float64"):
    preload((_PRELOAD,))
elif _PRELOAD not in ("", "0"):
    preload()
