"""Bad input raises ValueError or TypeError naming the argument and the shapes, before any kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastlayers
from fastlayers import Affine, Relu, Sigmoid, SoftmaxWithLoss
from fastlayers import functional as F

X = np.zeros((4, 3))


@pytest.fixture(params=["numba", "numpy"])
def backend(request):
    with fastlayers.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize(
    "t,exc,match",
    [
        (np.array([0, 1, 2, 3]), ValueError, r"t holds labels outside \[0, 3\): min 0, max 3"),
        (np.array([0, 1, 2, -1]), ValueError, r"outside \[0, 3\): min -1"),
        (np.array([0, 1, 2, 2**40]), ValueError, r"outside \[0, 3\)"),
        (np.array([0, 1, 2], np.uint64), ValueError, "t has 3 labels but x has 4 rows"),
        (np.array([0, 1, 2]), ValueError, "t has 3 labels but x has 4 rows"),
        (np.array([0.0, 1.0, 2.0, 1.0]), TypeError, "labels must be integers"),
        (np.array([True, False, True, True]), TypeError, "labels must be integers"),
        (np.zeros((4, 2)), ValueError, r"one-hot rows of shape \(4, 3\), got shape \(4, 2\)"),
        (np.zeros((3, 3)), ValueError, r"got shape \(3, 3\)"),
        (np.zeros((4, 3), complex), TypeError, "t has dtype complex128"),
        (np.array(["a", "b", "c", "d"]), TypeError, "labels must be integers"),
    ],
)
def test_bad_targets(backend, t, exc, match):
    with pytest.raises(exc, match=match):
        F.softmax_cross_entropy_forward(X, t)
    with pytest.raises(exc, match=match):
        SoftmaxWithLoss().forward(X, t)
    with pytest.raises(exc, match=match):
        F.softmax_cross_entropy_backward(X, t)


def test_labels_out_of_range_for_probabilities(backend):
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        F.cross_entropy_error(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        F.cross_entropy_error(np.full(3, 1 / 3), -1)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: F.softmax_cross_entropy_forward(np.zeros(3), np.array([0])),
            ValueError,
            r"x must be 2-D .* shape \(3,\)",
        ),
        (lambda: F.softmax_cross_entropy_forward(np.zeros((2, 3, 4)), np.array([0, 1])), ValueError, "x must be 2-D"),
        (lambda: F.softmax_cross_entropy_forward(np.zeros((0, 3)), np.zeros(0, int)), ValueError, "empty batch"),
        (
            lambda: F.softmax_cross_entropy_backward(np.zeros((2, 3)), np.array([0, 1]), dout=np.ones(2)),
            TypeError,
            "dout must be a scalar",
        ),
        (lambda: F.softmax_cross_entropy_forward(np.zeros((2, 0)), np.zeros((2, 0))), ValueError, "x has no classes"),
        (lambda: F.softmax_cross_entropy_backward(np.zeros((2, 0)), np.zeros((2, 0))), ValueError, "y has no classes"),
        (lambda: F.cross_entropy_error(np.zeros((2, 0)), np.zeros((2, 0))), ValueError, "y has no classes"),
        (lambda: F.softmax(np.float64(1.0)), ValueError, r"x must be 1-D \(C,\) or 2-D"),
        (lambda: F.softmax(np.zeros((2, 2, 2))), ValueError, r"got shape \(2, 2, 2\)"),
        (lambda: F.softmax(np.zeros((2, 0))), ValueError, "empty"),
        (lambda: F.cross_entropy_error(np.zeros((2, 2, 2)), np.array([0, 1])), ValueError, "y must be 1-D"),
        (
            lambda: F.affine_forward(np.zeros((4, 5)), np.zeros((6, 2)), np.zeros(2)),
            ValueError,
            r"x has 5 features per row \(shape \(4, 5\)\) but W has 6 rows \(shape \(6, 2\)\)",
        ),
        (
            lambda: F.affine_forward(np.zeros((4, 6)), np.zeros((6, 2)), np.zeros(3)),
            ValueError,
            r"b must have shape \(2,\)",
        ),
        (lambda: F.affine_forward(np.zeros(6), np.zeros((6, 2)), np.zeros(2)), ValueError, "x must be at least 2-D"),
        (lambda: F.affine_forward(np.zeros((0, 6)), np.zeros((6, 2)), np.zeros(2)), ValueError, "empty batch"),
        (lambda: F.affine_forward(np.zeros((4, 6)), np.zeros(6), np.zeros(2)), ValueError, "W must be 2-D"),
        (
            lambda: F.affine_backward(np.zeros((4, 3)), np.zeros((4, 6)), np.zeros((6, 2))),
            ValueError,
            r"dout has shape \(4, 3\) but .* give \(4, 2\)",
        ),
        (
            lambda: F.relu_backward(np.zeros(3), np.zeros(4)),
            ValueError,
            r"dout has shape \(3,\) but y has shape \(4,\)",
        ),
        (lambda: F.relu_forward(np.zeros(3, complex)), TypeError, "x has dtype complex128"),
        (lambda: F.relu_forward(np.array([object()])), TypeError, "x has dtype object"),
        (lambda: F.relu_forward(np.zeros(3, np.longdouble)), TypeError, "only float16, float32 and float64"),
        (lambda: F.relu_forward([[1.0], [1.0, 2.0]]), TypeError, "x cannot be converted"),
        (lambda: F.relu_forward(np.zeros(3), out=np.zeros(4)), ValueError, r"out has shape \(4,\)"),
        (lambda: F.relu_forward(np.zeros(3), out=np.zeros(3, np.float32)), TypeError, "out has dtype float32"),
        (lambda: F.relu_forward(np.zeros(3), out=[0, 0, 0]), TypeError, "out must be a numpy.ndarray"),
    ],
)
def test_bad_shapes_and_dtypes(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: F.affine_forward(np.zeros((4, 6), np.float32), np.zeros((6, 2)), np.zeros(2)),
            "mixed float precision: x is float32 but W is float64",
        ),
        (lambda: F.sigmoid_backward(np.zeros(3, np.float32), np.zeros(3)), "dout is float32 but y is float64"),
        (lambda: Affine(np.zeros((6, 2)), np.zeros(2)).forward(np.zeros((4, 6), np.float32)), "x is float32"),
        (lambda: SoftmaxWithLoss().forward(np.zeros((2, 3), np.float32), np.zeros((2, 3))) and None, None),
        (
            lambda: F.softmax_cross_entropy_backward(np.zeros((2, 3), np.float32), np.eye(3)[:2]),
            "y is float32 but t is float64",
        ),
        (lambda: fastlayers.SGD().update({"W": np.zeros(2, np.float32)}, {"W": np.zeros(2)}), "W"),
    ],
)
def test_strict_mode_refuses_mixed_precision(backend, call, match):
    """The opt-in strict mode keeps the old refusal; the default computes as NumPy does."""
    call()  # default: promoted, no error
    with fastlayers.strict_dtypes():
        if match is None:  # the loss's value is x's dtype whatever t's (classic), so strict mode allows it
            call()
            return
        with pytest.raises(TypeError, match=match):
            call()
    call()  # the context manager restored the default


def test_strict_mode_from_environment():
    code = (
        "import numpy as np, fastlayers as fl\n"
        "try:\n"
        "    fl.functional.sigmoid_backward(np.ones(2, np.float32), np.ones(2))\n"
        "except TypeError as e:\n"
        "    print('refused', e)\n"
    )
    env = dict(os.environ, FASTLAYERS_STRICT_DTYPES="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "refused mixed float precision" in res.stdout, res.stderr
    bad = subprocess.run(
        [sys.executable, "-c", "import fastlayers"],
        env=dict(os.environ, FASTLAYERS_STRICT_DTYPES="maybe"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "FASTLAYERS_STRICT_DTYPES must be 0 or 1" in bad.stderr


def test_read_only_out():
    out = np.zeros(3)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        F.relu_forward(np.zeros(3), out=out)


@pytest.mark.parametrize("layer", [Relu(), Sigmoid(), SoftmaxWithLoss(), Affine(np.zeros((2, 2)), np.zeros(2))])
def test_backward_before_forward(layer):
    with pytest.raises(ValueError, match=f"{type(layer).__name__}.backward called before forward"):
        layer.backward(np.ones((2, 2)))


def test_affine_needs_arrays():
    with pytest.raises(TypeError, match="W and b must be numpy arrays"):
        Affine([[1.0]], [0.0])


def test_backend_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastlayers.use_backend("torch")
    assert fastlayers.get_backend() == "numba"


def test_set_num_threads_range():
    with pytest.raises(ValueError, match="n must be an integer from 1 to"):
        fastlayers.set_num_threads(0)
    with pytest.raises(ValueError, match="n must be an integer"):
        fastlayers.set_num_threads(10_000)
    n = fastlayers.get_num_threads()
    fastlayers.set_num_threads(1)
    assert fastlayers.get_num_threads() == 1
    fastlayers.set_num_threads(n)


class _RequiresGrad:
    """What NumPy sees of a torch tensor with ``requires_grad=True``: ``np.asarray`` of it fails."""

    requires_grad = True

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda g: F.relu_forward(g), "x"),
        (lambda g: F.sigmoid_backward(g, np.ones(2)), "dout"),
        (lambda g: F.affine_forward(np.ones((2, 2)), g, np.zeros(2)), "W"),
        (lambda g: F.softmax_cross_entropy_forward(g, np.array([0, 1])), "x"),
        (lambda g: F.softmax_cross_entropy_backward(np.full((2, 2), 0.5), g), "t"),
        (lambda g: Sigmoid().forward(g), "x"),
        (lambda g: fastlayers.Adam().update({"W": np.ones(2)}, {"W": g}), r"grads\['W'\]"),
    ],
)
def test_tensor_that_requires_grad(backend, call, name):
    with pytest.raises(TypeError, match=rf"{name} is a tensor that requires grad; pass {name}.detach\(\)"):
        call(_RequiresGrad())


@pytest.mark.parametrize("order", [">", "<"])
def test_non_native_byte_order_is_computed_not_refused(backend, order):
    """Big-endian input raised Numba's TypingError on the numba backend; now it is converted once."""
    x = np.linspace(-3, 3, 12).reshape(4, 3)
    t = np.array([0, 1, 2, 0])
    swapped = x.astype(x.dtype.newbyteorder(order)), t.astype(t.dtype.newbyteorder(order))
    assert np.array_equal(F.relu_forward(swapped[0]), F.relu_forward(x))
    assert F.softmax_cross_entropy_forward(*swapped)[0] == F.softmax_cross_entropy_forward(x, t)[0]
    assert np.array_equal(
        F.affine_forward(swapped[0], swapped[0].T, np.zeros(4)), F.affine_forward(x, x.T, np.zeros(4))
    )
