"""The classic networks, built from the fast layers.

- :mod:`.dense`: ``TwoLayerNet``, ``MultiLayerNet``, ``MultiLayerNetExtend`` (chapters 5-6),
  ``gradient_check``;
- :mod:`.conv`: ``SimpleConvNet`` (chapter 7), ``DeepConvNet`` (chapter 8).

How every net walks its layers (the fused passes, the skipped input gradient): :mod:`._walk`.
"""

from __future__ import annotations

from .conv import DeepConvNet, SimpleConvNet, load_param_file
from .dense import MultiLayerNet, MultiLayerNetExtend, TwoLayerNet, gradient_check

__all__ = [
    "TwoLayerNet",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "SimpleConvNet",
    "DeepConvNet",
    "gradient_check",
    "load_param_file",
]
