"""The classic layer classes of "Deep Learning from Scratch", on the compiled kernels.

Each class keeps the classic public attributes and ``forward``/``backward`` signatures, holds the
state between the two, and leaves the numerics to :mod:`fastlayers.functional`. One module per
family, mirroring :mod:`fastlayers.functional` and :mod:`fastlayers._kernels`:

- :mod:`.core`: ``MulLayer``, ``AddLayer``, ``Relu``, ``Sigmoid``, ``Affine``, ``SoftmaxWithLoss``
  (chapter 5), and the fused Affine + activation passes of the nets;
- :mod:`.conv`: ``Convolution``, ``Pooling`` (chapter 7), and the fused Convolution + ReLU passes;
- :mod:`.training`: ``Dropout``, ``BatchNormalization`` (chapter 6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .core import AddLayer, Affine, MulLayer, Relu, Sigmoid, SoftmaxWithLoss, fused_backward, fused_forward

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from .conv import Convolution, Pooling, conv_relu_backward, conv_relu_forward
    from .training import BatchNormalization, Dropout

# the chapter 6-7 families are imported at their first use
__getattr__, __dir__ = _lazy.attributes(
    __name__,
    {
        **dict.fromkeys(["Convolution", "Pooling", "conv_relu_backward", "conv_relu_forward"], ".conv"),
        **dict.fromkeys(["BatchNormalization", "Dropout"], ".training"),
    },
)

__all__ = [
    "AddLayer",
    "BatchNormalization",
    "Affine",
    "Convolution",
    "Dropout",
    "MulLayer",
    "Pooling",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "conv_relu_backward",
    "conv_relu_forward",
    "fused_backward",
    "fused_forward",
]
