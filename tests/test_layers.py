"""The classic layer classes: API compatibility, the seeds' example, state, dtypes, no mutation."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import fastlayers
from fastlayers import AddLayer, Affine, MulLayer, Pooling, Relu, Sigmoid, SoftmaxWithLoss

from .conftest import DTYPES, assert_close


def test_apple_and_orange():
    """The seeds' shopping example, with its published figures."""
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple, mul_orange, mul_tax, add = MulLayer(), MulLayer(), MulLayer(), AddLayer()
    apple_price = mul_apple.forward(apple, apple_num)
    orange_price = mul_orange.forward(orange, orange_num)
    all_price = add.forward(apple_price, orange_price)
    price = mul_tax.forward(all_price, tax)
    dall_price, dtax = mul_tax.backward(1)
    dapple_price, dorange_price = add.backward(dall_price)
    dorange, dorange_num = mul_orange.backward(dorange_price)
    dapple, dapple_num = mul_apple.backward(dapple_price)
    assert int(price) == 715
    assert dapple == pytest.approx(2.2)
    assert int(dapple_num) == 110
    assert dorange == pytest.approx(3.3)
    assert int(dorange_num) == 165
    assert dtax == 650
    assert isinstance(dapple, float) and isinstance(dtax, int)


def test_mul_add_broadcast_gradients_have_input_shapes():
    x = np.arange(6.0).reshape(2, 3)
    y = np.array([1.0, 2.0, 3.0])
    mul, add = MulLayer(), AddLayer()
    np.testing.assert_array_equal(mul.forward(x, y), x * y)
    dout = np.ones((2, 3))
    dx, dy = mul.backward(dout)
    assert dx.shape == (2, 3) and dy.shape == (3,)
    np.testing.assert_array_equal(dy, x.sum(axis=0))
    add.forward(x, np.ones((2, 1)))
    dx, dy = add.backward(dout)
    assert dx.shape == (2, 3) and dy.shape == (2, 1)
    np.testing.assert_array_equal(dy, [[3.0], [3.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_layer(dtype):
    x = np.array([[1.0, -0.5], [-2.0, 3.0]], dtype)
    layer = Relu()
    out = layer.forward(x)
    np.testing.assert_array_equal(out, [[1.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(layer.mask, [[False, True], [True, False]])
    dout = np.ones_like(x)
    before = dout.copy()
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dout, before)  # the classic code zeroes the caller's dout
    np.testing.assert_array_equal(dx, [[1.0, 0.0], [0.0, 1.0]])
    assert out.dtype == dx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_layer_saturates_without_warnings(dtype):
    x = np.array([-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4, np.nan], dtype)
    layer = Sigmoid()
    out = layer.forward(x)  # warnings are errors in this suite: an overflow would fail here
    assert out.dtype == dtype
    assert out[0] == 0 and out[1] == 0 and out[-2] == 1 and out[5] == 1
    assert out[3] == 0.5 and np.isnan(out[-1])
    assert layer.out is out
    dx = layer.backward(np.ones_like(x))
    assert dx[3] == 0.25 and dx[0] == 0 and dx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_layer_keeps_references_and_shapes(dtype):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    layer = Affine(W, b)
    x = rng.standard_normal((5, 3, 2, 2)).astype(dtype)
    out = layer.forward(x)
    assert out.shape == (5, 4) and out.dtype == dtype
    assert layer.original_x_shape == (5, 3, 2, 2) and layer.x.shape == (5, 12)
    dx = layer.backward(np.ones((5, 4), dtype))
    assert dx.shape == x.shape and layer.dW.shape == W.shape and layer.db.shape == b.shape
    assert dx.dtype == layer.dW.dtype == layer.db.dtype == dtype
    W -= 1.0  # an optimizer updating in place is seen by the layer
    assert layer.W is W
    np.testing.assert_allclose(layer.forward(x), x.reshape(5, -1) @ W + b, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_with_loss_labels_equal_onehot(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(dtype)
    labels = np.array([0, 3, 1, 2, 3, 0])
    onehot = np.zeros((6, 4), dtype)
    onehot[np.arange(6), labels] = 1
    a, b = SoftmaxWithLoss(), SoftmaxWithLoss()
    la, lb = a.forward(x, labels), b.forward(x, onehot)
    assert la.dtype == dtype
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    np.testing.assert_allclose(a.backward(), b.backward(), atol=1e-7)
    assert a.loss == la and a.y.shape == x.shape and a.t is labels
    # dout is honoured (the classic code ignores it)
    np.testing.assert_allclose(a.backward(dout=3.0), 3.0 * a.backward(), rtol=1e-6)
    # the classic formula
    y = a.y
    np.testing.assert_allclose(b.backward(), (y - onehot) / 6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("targets", ["labels", "probs"])
def test_softmax_with_loss_gradient_from_forward(dtype, targets):
    """The gradient computed during forward is what backward would compute from y (bit for bit), is
    handed out once, and is never written into while the caller holds it."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 40)).astype(dtype)
    t = rng.integers(0, 40, 300) if targets == "labels" else rng.dirichlet(np.ones(40), 300).astype(dtype)
    layer = SoftmaxWithLoss()
    layer.forward(x, t)
    want = fastlayers.functional.softmax_cross_entropy_backward(layer.y, t)
    first = layer.backward()
    np.testing.assert_array_equal(first, want)
    second = layer.backward()  # after the same forward: computed again, into a new array
    assert second is not first
    np.testing.assert_array_equal(second, want)
    np.testing.assert_array_equal(layer.backward(np.float32(1)), want)
    np.testing.assert_array_equal(
        layer.backward(2.5), fastlayers.functional.softmax_cross_entropy_backward(layer.y, t, 2.5)
    )
    kept = first.copy()
    layer.forward(2 * x, t)  # the caller still holds `first`: forward must not write into it
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(layer.backward(), fastlayers.functional.softmax_cross_entropy_backward(layer.y, t))
    layer.forward(x, t)
    layer.forward(3 * x, t)  # two forwards, one backward: the gradient of the latest one
    np.testing.assert_array_equal(layer.backward(), fastlayers.functional.softmax_cross_entropy_backward(layer.y, t))


def test_functions_exported():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(fastlayers.relu(x), [0.0, 0.0, 2.0])
    np.testing.assert_allclose(fastlayers.sigmoid(x), 1 / (1 + np.exp(-x)))
    s = fastlayers.softmax(np.array([0.3, 2.9, 4.0]))
    np.testing.assert_allclose(s, [0.01821127, 0.24519181, 0.73659691], rtol=1e-6)
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    t = np.zeros(10)
    t[2] = 1
    assert fastlayers.cross_entropy_error(y, t) == pytest.approx(-np.log(0.6))
    assert fastlayers.cross_entropy_error(y, 2) == pytest.approx(-np.log(0.6))
    assert fastlayers.cross_entropy_error(np.stack([y, y]), np.array([2, 2])) == pytest.approx(-np.log(0.6))


def test_lists_and_integers_become_float64():
    assert fastlayers.relu([[1, -2]]).dtype == np.float64
    assert fastlayers.sigmoid(np.array([1, 2], np.int32)).dtype == np.float64
    assert fastlayers.relu(np.array([1.0], np.float16)).dtype == np.float32
    y = np.ones(3, np.float32)
    # ReLU's gradient is dout with a mask applied (the classic code): dout's dtype, here a list of ints
    assert fastlayers.functional.relu_backward([1, 2, 3], y).dtype == np.float64
    assert fastlayers.functional.relu_backward(np.ones(3, np.float32), np.ones(3)).dtype == np.float32


def test_layers_reusable_after_errors():
    layer = SoftmaxWithLoss()
    with pytest.raises(ValueError):
        layer.forward(np.zeros((2, 3)), np.array([0, 5]))
    assert layer.forward(np.zeros((2, 3)), np.array([0, 2])) == pytest.approx(np.log(3))
    np.testing.assert_allclose(layer.backward().sum(), 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_kept_by_the_caller_are_never_overwritten(dtype):
    """Buffer recycling must be invisible: every result the caller still holds keeps its values."""
    rng = np.random.default_rng(5)
    W, b = rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal(4).astype(dtype)
    layers = {"relu": Relu(), "sigmoid": Sigmoid(), "affine": Affine(W, b), "loss": SoftmaxWithLoss()}
    kept, expected = [], []
    for step in range(6):
        x = rng.standard_normal((3, 6)).astype(dtype)
        t = rng.integers(0, 4, 3)
        h = layers["affine"].forward(x)
        r = layers["relu"].forward(h)
        s = layers["sigmoid"].forward(r)
        layers["loss"].forward(s, t)
        y = layers["loss"].y
        d = layers["loss"].backward()
        d_s = layers["sigmoid"].backward(d)
        d_r = layers["relu"].backward(d_s)
        dx = layers["affine"].backward(d_r)
        dW = layers["affine"].dW
        results = [h, r, s, d, d_s, d_r, dx, dW]
        if step % 2:  # keep only views of some results: views must protect them too
            results = [a[:] for a in results] + [y[:1]]
        kept.append(results)
        expected.append([a.copy() for a in results])
    for got, want in zip(kept, expected, strict=True):
        for a, e in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, e)


def test_affine_and_loss_recycle_dropped_results():
    """Affine's output and gradients, and SoftmaxWithLoss's y and gradient, are reused once dropped
    (all of them larger than REUSE_MIN_BYTES; smaller ones are allocated afresh, which is cheaper)."""
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((512, 128)), rng.integers(0, 96, 512)
    affine, loss = Affine(0.1 * rng.standard_normal((128, 96)), np.zeros(96)), SoftmaxWithLoss()
    loss.forward(affine.forward(x), t)
    affine.backward(loss.backward())
    big = (affine._out, affine._dx, affine.dW, loss.y, loss._dx)
    assert min(a.nbytes for a in big) >= fastlayers.functional._checks.REUSE_MIN_BYTES
    before = [weakref.ref(a) for a in big]
    del big
    for _ in range(3):
        loss.forward(affine.forward(x), t)
        affine.backward(loss.backward())
    # the very same objects (a weak reference to a freed array would give None)
    now = (affine._out, affine._dx, affine.dW, loss.y, loss._dx)
    assert all(r() is a for r, a in zip(before, now, strict=True))
    kept = affine.dW
    loss.forward(affine.forward(x), t)
    affine.backward(loss.backward())
    assert affine.dW is not kept  # held by `kept`: a new array


@pytest.mark.parametrize("cls", [Relu, Sigmoid])
def test_dropped_results_are_recycled(cls):
    """Results nobody holds any more are reused (forward output and gradient alike); held ones never."""
    layer = cls()
    x = np.ones((64, 64))
    layer.forward(x)
    first = layer.backward(x)
    address = first.__array_interface__["data"][0]
    del first
    assert layer.backward(x).__array_interface__["data"][0] == address
    out_address = layer.out.__array_interface__["data"][0]
    assert layer.forward(x).__array_interface__["data"][0] == out_address
    held = layer.forward(x)
    assert layer.forward(x) is not held  # `held` is referenced here: a new array
    frozen = layer.out
    frozen.flags.writeable = False
    del frozen, held
    assert layer.forward(x).flags.writeable  # a read-only buffer is never written into


def test_results_the_next_layer_holds_alternate_between_two_arrays():
    """A large result still held after the call (the next layer keeps it as its input, as the
    classic Pooling.x does) is kept aside, and the call after next writes into it once nobody else
    holds it: two arrays in turn, no fresh memory per call (SPARE_MIN_BYTES); never an array
    someone holds (a view included), and nothing extra in the layer's ``__dict__``."""
    checks = fastlayers.functional._checks
    rng = np.random.default_rng(5)
    x = rng.standard_normal((512, 512))  # 2 MiB
    assert x.nbytes >= checks.SPARE_MIN_BYTES
    relu, pool = Relu(), Pooling(2, 2, stride=2)
    pool.forward(relu.forward(x).reshape(1, 1, 512, 512))  # the pooling holds the result as its x
    results = [weakref.ref(relu.out)]
    for _ in range(6):
        out = relu.forward(x)
        pool.forward(out.reshape(1, 1, 512, 512))
        results.append(weakref.ref(out))
        np.testing.assert_array_equal(out, np.maximum(x, 0))
    del out
    alive = [r() for r in results]  # a fresh array per call would leave dead references here
    assert all(a is not None for a in alive) and len({id(a) for a in alive}) == 2
    assert set(vars(relu)) == {"out", "_dx"}
    held = relu.out[:, :3]  # a view of the latest result, and the pooling holds the one before
    before = relu.out.copy()
    for _ in range(3):
        relu.forward(-x)
    np.testing.assert_array_equal(held, before[:, :3])
    np.testing.assert_array_equal(relu.out, np.maximum(-x, 0))


@pytest.mark.parametrize("shape", [(1, 784), (3, 784), (100, 784), (2, 1, 28, 28)])
def test_affine_widens_float32_images_for_float64_weights(shape):
    """The book's mix (float32 images, float64 W and b) takes the layer's fast path: float64
    results equal to converting x first, ``x`` kept as the converted (N, D) copy, and a converted
    copy the caller holds is never written into by the next call."""
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((784, 10)), rng.standard_normal(10)
    layer, relu = Affine(W, b), Relu()
    x = rng.random(shape, dtype=np.float32)
    x2 = x.reshape(shape[0], -1).astype(np.float64)
    out = layer.forward(x)
    assert out.dtype == np.float64 and layer.x.dtype == np.float64 and layer.original_x_shape == shape
    np.testing.assert_array_equal(layer.x, x2)
    assert_close(out.copy(), x2 @ W + b, "sum", n=784)  # the product's order of additions aside
    fused = fastlayers.layers.fused_forward(layer, relu, x)  # the nets' pass, the same conversion
    np.testing.assert_array_equal(fused, np.maximum(out, 0))
    held = layer.x
    x_next = rng.random(shape, dtype=np.float32)
    layer.forward(x_next)
    np.testing.assert_array_equal(held, x2)  # the caller's reference: not overwritten
    np.testing.assert_array_equal(layer.x, x_next.reshape(shape[0], -1))
    dout = rng.standard_normal((shape[0], 10))
    dx = layer.backward(dout)
    assert_close(layer.dW, x_next.reshape(shape[0], -1).astype(np.float64).T @ dout, "sum", n=shape[0])
    assert dx.shape == shape and dx.dtype == np.float64


def test_affine_mixed_precision_outside_the_fast_path():
    """Strict mode still refuses the mix, the float32 policy computes in float32, and bad shapes
    are reported by the general path."""
    rng = np.random.default_rng(4)
    x = rng.random((4, 6), dtype=np.float32)
    layer = Affine(rng.standard_normal((6, 3)), np.zeros(3))
    with fastlayers.strict_dtypes():
        with pytest.raises(TypeError):
            layer.forward(x)
    with fastlayers.float32_compute():
        assert layer.forward(x).dtype == np.float32
    with pytest.raises(ValueError, match="features per row"):
        Affine(np.ones((5, 3)), np.zeros(3)).forward(x)
    with pytest.raises(ValueError):
        Affine(np.ones((6, 3)), np.zeros(4)).forward(x)
