"""The classic networks, built from the fast layers.

- :mod:`.dense`: ``TwoLayerNet``, ``MultiLayerNet``, ``MultiLayerNetExtend`` (chapters 5-6),
  ``gradient_check``;
- :mod:`.conv`: ``SimpleConvNet`` (chapter 7), ``DeepConvNet`` (chapter 8).

What both families compute the same way (scores, loss, gradients): :mod:`._base`; how every net
walks its layers (the fused passes, the skipped input gradient): :mod:`._walk`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .dense import MultiLayerNet, MultiLayerNetExtend, TwoLayerNet, gradient_check

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from .conv import DeepConvNet, SimpleConvNet, load_param_file

# the convolutional nets are imported at their first use
__getattr__, __dir__ = _lazy.attributes(
    __name__, dict.fromkeys(["DeepConvNet", "SimpleConvNet", "load_param_file"], ".conv")
)

__all__ = [
    "TwoLayerNet",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "SimpleConvNet",
    "DeepConvNet",
    "gradient_check",
    "load_param_file",
]
