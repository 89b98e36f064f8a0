"""The table of layers (``fastlayers._table.CASES``) drives these checks: every layer, forward and
backward through the classic API, on both backends, against the same work written in idiomatic
NumPy; and the table covers every layer that has kernels."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import layers
from fastlayers._table import CASES

from .conftest import DTYPES, assert_close

#: how close each entry's results must be to idiomatic NumPy (kinds of conftest.assert_close)
#: (the sigmoid's gradient: ``1 - y`` magnifies the rounding of ``y`` near 1, hence "row")
TOLERANCE = {
    "relu": "exact",
    "sigmoid": "row",
    "softmax_loss": "row",
    "affine": "sum",
    "two_layer": "sum",
    "predict": "sum",
    "step": "sum",
    "conv": "sum",
    "conv_first": "sum",
    "conv_forward": "sum",
    "deep_convnet_step": "sum",
    "pool": "exact",
    "dropout": "exact",
    "convnet_step": "sum",
    "batchnorm": "sum",
    "nesterov": "row",
    "rmsprop": "row",
}


def _shapes(case):
    return [case.sizes[0], case.shape_for(1001), *case.sizes[1:2]]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_equals_idiomatic_numpy(name, dtype, backend):
    case = CASES[name]
    for shape in _shapes(case):
        inputs = case.inputs(shape, np.dtype(dtype), np.random.default_rng(1))
        with fastlayers.use_backend(backend):
            layer = case.build(inputs)
            got = case.run(layer, inputs)
        if case.random:  # its own mask, not the one NumPy draws: out = x * mask, dx = dout * mask
            mask = layer.mask
            assert 0.4 < mask.mean() < 0.6 or mask.size < 100
            got, want = got, (inputs["x"] * mask, inputs["dout"] * mask)
        else:
            want = case.numpy(inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_close(g, np.asarray(w).astype(dtype), TOLERANCE[name], n=max(shape))


def test_the_table_covers_every_layer_with_kernels():
    """MulLayer and AddLayer are the book's scalar nodes (NumPy arithmetic, no kernel); every other
    layer class is the layer of an entry."""
    classes = {
        name
        for name, value in vars(layers).items()
        if isinstance(value, type) and value.__module__.startswith(layers.__name__ + ".") and not name.startswith("_")
    }
    assert {"Relu", "Affine", "Convolution", "Pooling", "Dropout"} <= classes
    with_kernels = {c for c in classes if c not in ("MulLayer", "AddLayer")}
    tabled = set()
    for case in CASES.values():
        if case.kind == "layer":
            inputs = case.inputs(case.sizes[0], np.dtype(np.float32), np.random.default_rng(0))
            tabled.add(type(case.build(inputs)).__name__)
    assert with_kernels <= tabled, with_kernels - tabled
    assert set(TOLERANCE) == set(CASES)
