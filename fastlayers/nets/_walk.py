"""How the nets walk their layers: forward in order and backward in reverse, running an Affine
layer and the activation after it, a Convolution and the ReLU after it, and a Convolution, a ReLU
and a 2x2 Pooling (forward and backward) as fused passes, and skipping the first layer's input
gradient (nobody uses it). Every layer is left in the state its own calls would leave it in."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..layers.core import Affine, Relu, Sigmoid, fused_backward, fused_forward

# The convolution and training families are imported only by programs that use them (start-up):
# a net can hold one of their layers only once its module is loaded, so the walk looks them up in
# sys.modules instead of importing them.
_CONV = "fastlayers.layers.conv"
_ACTIVATIONS = (Relu, Sigmoid)  # those fused_forward runs with the Affine layer before them
_TRAINING = "fastlayers.layers.training"


def _takes_flag(layer) -> bool:
    """Whether ``layer``'s forward takes the training flag (Dropout, BatchNormalization)."""
    training = sys.modules.get(_TRAINING)
    return training is not None and isinstance(layer, (training.Dropout, training.BatchNormalization))


def _conv_then_relu(first, second):
    """The convolution module when ``first`` is a Convolution and ``second`` a Relu, else None."""
    conv = sys.modules.get(_CONV)
    if conv is not None and type(first) is conv.Convolution and type(second) is Relu:
        return conv
    return None


def _conv_relu_pool(first, second, third):
    """The convolution module when ``first``, ``second``, ``third`` are a Convolution, a Relu and a
    Pooling, else None."""
    conv = _conv_then_relu(first, second)
    if conv is not None and type(third) is conv.Pooling:
        return conv
    return None


def forward(layers: Sequence, x, train_flg: bool = False):
    """``x`` through ``layers`` in order (``train_flg`` goes to the layers that take it)."""
    i, n = 0, len(layers)
    while i < n:
        layer = layers[i]
        after = layers[i + 1] if i + 1 < n else None
        paired = after if type(after) in _ACTIVATIONS else None  # an activation to fuse with
        if isinstance(layer, Affine) and (paired is not None or type(layer) is Affine):
            fused = fused_forward(layer, paired, x)  # None when the call is not the common one
            if fused is not None:
                x, i = fused, i + (1 if paired is None else 2)
                continue
        elif paired is not None:
            conv = _conv_then_relu(layer, paired)
            if conv is not None:
                third = layers[i + 2] if i + 2 < n else None
                if type(third) is conv.Pooling:
                    x, i = conv.conv_relu_pool_forward(layer, paired, third, x), i + 3
                else:
                    x, i = conv.conv_relu_forward(layer, paired, x), i + 2
                continue
        x = layer.forward(x, train_flg) if _takes_flag(layer) else layer.forward(x)
        i += 1
    return x


def backward(layers: Sequence, dout) -> None:
    """``dout`` back through ``layers`` in reverse order, setting every layer's gradients; the
    first layer's input gradient is not computed when it is an Affine or a Convolution layer."""
    i = len(layers) - 1
    while i >= 0:
        layer = layers[i]
        before = layers[i - 1] if i >= 1 else None
        with_dx = i > 1  # the pair's first layer's input gradient, unless it is the net's first layer
        conv = _conv_relu_pool(layers[i - 2] if i >= 2 else None, before, layer)
        if conv is not None:
            fused = conv.conv_relu_pool_backward(layers[i - 2], before, layer, dout, i > 2)
            if fused is not False:
                dout, i = fused, i - 3
                continue
        if isinstance(before, Affine):
            fused = fused_backward(before, layer, dout, with_dx)  # False when not the common call
            if fused is not False:
                dout, i = fused, i - 2
                continue
        else:
            conv = _conv_then_relu(before, layer)
            if conv is not None:
                dout, i = conv.conv_relu_backward(before, layer, dout, with_dx), i - 2
                continue
        conv = sys.modules.get(_CONV)
        if i == 0 and (isinstance(layer, Affine) or (conv is not None and isinstance(layer, conv.Convolution))):
            layer._backward(dout, with_dx=False)
        else:
            dout = layer.backward(dout)
        i -= 1
