"""SimpleConvNet and DeepConvNet: the classic attributes, gradient checks, the fused walk against the
layers called one by one, and the classic parameter files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import fastlayers as fl

TINY = {"filter_num": 2}


def _deep_tiny(**kw):
    params = {f"conv_param_{i}": TINY for i in range(1, 7)}
    return fl.DeepConvNet(input_dim=(1, 12, 12), hidden_size=4, seed=0, **params, **kw)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_simple_convnet_gradient_check_as_the_book_runs_it(backend):
    """The book's ch07/gradient_check.py: a 10x10 image, 10 3x3 filters, label given as a column."""
    net = fl.SimpleConvNet(input_dim=(1, 10, 10), conv_param={"filter_num": 10, "filter_size": 3, "pad": 0,
                           "stride": 1}, hidden_size=10, output_size=10, weight_init_std=0.01, seed=0)  # fmt: skip
    x = np.random.default_rng(0).random(100).reshape((1, 1, 10, 10))
    t = np.array([1]).reshape((1, 1))
    with fl.use_backend(backend):
        numeric = net.numerical_gradient(x, t)
        grads = net.gradient(x, t)
    assert set(grads) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    for key in numeric:
        assert np.abs(numeric[key] - grads[key]).mean() < 1e-6, key  # the book's own runs: 1e-10 to 1e-7


def test_deep_convnet_gradient_check():
    net = _deep_tiny()
    for i in (17, 19):
        net.layers[i].dropout_ratio = 0.0  # keep every unit, so that repeated losses agree
    rng = np.random.default_rng(1)
    for key, p in net.params.items():
        if key.startswith("b"):  # off ReLU's kink: the fourth layer's padding ring outputs its bias alone
            p[...] = rng.uniform(0.05, 0.2, p.shape)
    x = rng.standard_normal((2, 1, 12, 12))
    t = np.array([3, 7])
    numeric = net.numerical_gradient(x, t)
    grads = net.gradient(x, t)
    for key in numeric:
        np.testing.assert_allclose(grads[key], numeric[key], atol=1e-6, rtol=1e-4, err_msg=key)


def test_classic_structure():
    net = fl.SimpleConvNet(seed=0)
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {"W1": (30, 1, 5, 5), "b1": (30,), "W2": (4320, 100), "b2": (100,), "W3": (100, 10), "b3": (10,)}
    assert net.layers["Conv1"].W is net.params["W1"] and net.params["W1"].dtype == np.float64
    deep = fl.DeepConvNet(seed=0)
    assert len(deep.layers) == 20 and isinstance(deep.layers[17], fl.Dropout)
    assert deep.params["W4"].shape == (32, 32, 3, 3) and deep.layers[7].pad == 2
    assert deep.params["W7"].shape == (1024, 50) and deep.params["W8"].shape == (50, 10)
    for i, idx in enumerate((0, 2, 5, 7, 10, 12, 15, 18), start=1):
        assert deep.layers[idx].W is deep.params[f"W{i}"]
    # He initialisation from the actual fan-in
    assert 0.8 < deep.params["W2"].std() / np.sqrt(2 / 144) < 1.2


def _manual(layers, x, train):
    for layer in layers:
        x = layer.forward(x, train) if isinstance(layer, fl.Dropout) else layer.forward(x)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_walk_equals_the_layers_one_by_one(dtype):
    net = fl.SimpleConvNet(input_dim=(3, 14, 13), conv_param={"filter_num": 5, "filter_size": 3, "pad": 1},
                           hidden_size=7, output_size=4, weight_init_std=0.3, dtype=dtype, seed=2)  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 14, 13)).astype(dtype)
    t = rng.integers(0, 4, 6)
    grads = {k: v.copy() for k, v in net.gradient(x, t).items()}
    scores = net.predict(x)
    layers = list(net.layers.values())
    np.testing.assert_array_equal(scores, _manual(layers, x, False))
    net.last_layer.forward(scores, t)
    dout = net.last_layer.backward()
    for layer in reversed(layers):
        dout = layer.backward(dout)
    for i, name in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
        np.testing.assert_array_equal(grads[f"W{i}"], net.layers[name].dW)
        np.testing.assert_array_equal(grads[f"b{i}"], net.layers[name].db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_conv_relu_pool_backward_equals_the_layers_one_by_one(dtype, monkeypatch):
    """DeepConvNet's Conv -> ReLU -> 2x2 Pooling blocks (each conv's input gradient asked, planes of
    12, 6 and 3 rows: one left over) backward as one pass: every gradient equals the layers' own
    calls bit for bit, and the fused pass really served all three blocks."""
    import fastlayers.layers.conv as conv_layers

    net = _deep_tiny(dtype=dtype)
    for i in (17, 19):
        net.layers[i].dropout_ratio = 0.0
    served = []
    fused = conv_layers.conv_relu_pool_backward

    def spy(*args):
        out = fused(*args)
        served.append(out is not False)
        return out

    monkeypatch.setattr(conv_layers, "conv_relu_pool_backward", spy)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, 12, 12)).astype(dtype)
    t = rng.integers(0, 10, 3)
    grads = {k: v.copy() for k, v in net.gradient(x, t).items()}
    assert served == [True, True, True]
    layers = list(net.layers)  # DeepConvNet keeps its layers in a list, as the book does
    scores = _manual(layers, x, True)
    net.last_layer.forward(scores, t)
    dout = net.last_layer.backward()
    for layer in reversed(layers):
        dout = layer.backward(dout)
    convs = [layer for layer in layers if isinstance(layer, (fl.Convolution, fl.Affine))]
    for i, layer in enumerate(convs, start=1):
        np.testing.assert_array_equal(grads[f"W{i}"], layer.dW, err_msg=f"W{i}")
        np.testing.assert_array_equal(grads[f"b{i}"], layer.db, err_msg=f"b{i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_conv_relu_pool_forward_equals_the_layers_one_by_one(dtype, monkeypatch):
    """Convolution -> ReLU -> 2x2 Pooling forward with the pooling in the convolution's pass: the
    pooled output, the indices and every layer's state equal the three calls bit for bit (planes
    with a row and a column no window covers, NaN and infinities in the input, W replaced between
    calls), and a pooled output the caller still holds is never written over."""
    import fastlayers.layers.conv as conv_layers

    pooled_in_pass = []
    run = conv_layers.C.forward_run

    def spy(*args):
        pooled_in_pass.append(args[-1] is not None)
        return run(*args)

    monkeypatch.setattr(conv_layers.C, "forward_run", spy)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 13, 11)).astype(dtype)
    x[0, 0, 2, 2], x[1, 1, 5, 5], x[2, 0, 7, 3] = np.nan, np.inf, -np.inf
    W, b = rng.standard_normal((5, 2, 3, 3)).astype(dtype), rng.standard_normal(5).astype(dtype)
    fused = [fl.Convolution(W, b, pad=1), fl.Relu(), fl.Pooling(2, 2, 2)]
    layers = [fl.Convolution(W, b, pad=1), fl.Relu(), fl.Pooling(2, 2, 2)]
    held = []
    for call in range(3):
        got = conv_layers.conv_relu_pool_forward(*fused, x)
        want = _manual(layers, x, False)
        assert got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(fused[1].out, layers[1].out)
        assert fused[2].x is fused[1].out and fused[0].x is x
        np.testing.assert_array_equal(fused[2].arg_max, layers[2].arg_max)
        assert fused[2]._geo == layers[2]._geo
        for a, w in held:
            np.testing.assert_array_equal(a, w)
        held.append((got, want.copy()))
        for net in (fused, layers):  # a new W, as a caller may set between calls
            net[0].W = (W * (call + 2)).astype(dtype)
    assert pooled_in_pass == [True, False] * 3  # each call, then the three layers' own
    assert len({id(a) for a, _ in held}) == 3
    # DeepConvNet's pooled blocks in its walk: planes of 12, 6 and 3 rows (one left over)
    net = _deep_tiny(dtype=dtype)
    pooled_in_pass.clear()
    xs = rng.standard_normal((2, 1, 12, 12)).astype(dtype)
    scores = net.predict(xs)
    assert pooled_in_pass == [False, True] * 3
    np.testing.assert_array_equal(scores, _manual(list(net.layers), xs, False))


def test_first_layer_input_gradient_is_skipped_and_relu_state_kept():
    net = fl.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_size": 3, "pad": 1, "filter_num": 4}, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    net.gradient(x, np.array([1, 2, 3]))
    assert net.layers["Conv1"]._dx is None
    assert net.layers["Relu1"].out.shape == (3, 4, 8, 8) and (net.layers["Relu1"].out >= 0).all()
    np.testing.assert_array_equal(net.layers["Relu1"].mask, net.layers["Relu1"].out <= 0)


def test_convnets_walk_beside_the_kernels_and_never_ask_the_plans(monkeypatch):
    """The shared base (nets/_base.py): a convnet's walks run inside
    ``_gemm.beside_parallel_kernels`` and never ask the plans; a dense net's ask the plans first
    and walk outside it."""
    from fastlayers import _gemm
    from fastlayers.nets import _plan, _walk

    seen = []
    for name in ("forward", "backward"):
        real = getattr(_walk, name)

        def spy(*args, _real=real, _name=name):
            seen.append((_name, getattr(_gemm._beside, "depth", 0)))
            return _real(*args)

        monkeypatch.setattr(_walk, name, spy)
    asked = []
    real_call = _plan._call
    monkeypatch.setattr(_plan, "_call", lambda net, x, t, mode: asked.append(mode) or real_call(net, x, t, mode))
    rng = np.random.default_rng(0)
    for net, x in ((fl.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_size": 3}, seed=0), (3, 1, 8, 8)),
                   (_deep_tiny(), (3, 1, 12, 12))):  # fmt: skip
        seen.clear()
        net.gradient(rng.standard_normal(x), np.array([1, 2, 3]))
        net.predict(rng.standard_normal(x))
        assert seen == [("forward", 1), ("backward", 1), ("forward", 1)]
        assert asked == [] and "_plans" not in vars(net)
    net = fl.MultiLayerNetExtend(6, [5], 3, use_batchnorm=True, seed=0)  # no plan serves batch norm
    seen.clear()
    net.gradient(rng.standard_normal((4, 6)), np.array([0, 1, 2, 0]))
    assert seen == [("forward", 0), ("backward", 0)]
    assert asked == ["gradient", "loss", "predict"]


def test_accuracy_counts_every_row_and_takes_one_hot():
    net = fl.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_size": 3}, seed=0)
    x = np.random.default_rng(0).standard_normal((7, 1, 8, 8))
    t = np.argmax(net.predict(x), axis=1)
    assert net.accuracy(x, t, batch_size=3) == 1.0
    assert net.accuracy(x, np.eye(10)[t], batch_size=100) == 1.0
    assert net.accuracy(x, (t + 1) % 10, batch_size=2) == 0.0
    with pytest.raises(ValueError, match="t has 6 rows but x has 7"):
        net.accuracy(x, t[:6])


def test_deep_convnet_dropout_only_in_training():
    net = _deep_tiny()
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12))
    a, b = net.predict(x), net.predict(x)
    np.testing.assert_array_equal(a, b)  # test mode: deterministic
    np.random.seed(0)  # noqa: NPY002 - the classic global generator
    la = net.loss(x, np.zeros(4, int))
    np.random.seed(0)  # noqa: NPY002 - the classic global generator
    assert net.loss(x, np.zeros(4, int)) == la  # training mode: reproducible after np.random.seed


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_classic_parameter_files(tmp_path, protocol):
    """A file in the book's format (a pickled plain dict of float64 arrays) loads, into a float32
    net too; save_params writes that format."""
    net = fl.SimpleConvNet(seed=0)
    book = {k: np.random.default_rng(1).standard_normal(v.shape) for k, v in net.params.items()}
    path = tmp_path / "params.pkl"
    with open(path, "wb") as f:
        pickle.dump(book, f, protocol=protocol)
    net.load_params(path)
    for i, name in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
        assert net.layers[name].W is net.params[f"W{i}"]
        np.testing.assert_array_equal(net.params[f"W{i}"], book[f"W{i}"])
    small = fl.SimpleConvNet(seed=1, dtype=np.float32)
    small.load_params(path)
    assert small.params["W1"].dtype == np.float32 and small.layers["Conv1"].W.dtype == np.float32
    out = tmp_path / "saved.pkl"
    net.save_params(out)
    with open(out, "rb") as f:
        saved = pickle.load(f)
    assert type(saved) is dict and set(saved) == set(book)
    deep = fl.DeepConvNet(seed=0)
    deep.save_params(tmp_path / "deep.pkl")
    again = fl.DeepConvNet(seed=5)
    again.load_params(tmp_path / "deep.pkl")
    for key in deep.params:
        np.testing.assert_array_equal(again.params[key], deep.params[key])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_load_params_refuses_other_files(tmp_path):
    net = fl.SimpleConvNet(seed=0)
    cases = {
        "evil.pkl": {"W1": _Evil()},
        "shape.pkl": {"W1": np.zeros((3, 1, 5, 5))},
        "key.pkl": {"W9": np.zeros(3)},
        "list.pkl": [np.zeros(3)],
    }
    for name, data in cases.items():
        with open(tmp_path / name, "wb") as f:
            pickle.dump(data, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing posix.system|refusing os.system|refusing nt.system"):
        net.load_params(tmp_path / "evil.pkl")
    with pytest.raises(ValueError, match=r"has W1 of shape \(3, 1, 5, 5\) but this net's W1 has shape \(30, 1, 5, 5\)"):
        net.load_params(tmp_path / "shape.pkl")
    with pytest.raises(ValueError, match="'W9', which this net does not have"):
        net.load_params(tmp_path / "key.pkl")
    with pytest.raises(ValueError, match="does not hold a dict of arrays"):
        net.load_params(tmp_path / "list.pkl")


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: fl.SimpleConvNet(input_dim=(1, 4, 4)), ValueError, "does not fit an input of 4"),
        (lambda: fl.SimpleConvNet(input_dim=(1, 28)), ValueError, r"input_dim must be \(channels, height, width\)"),
        (
            lambda: fl.SimpleConvNet(conv_param={"filter_num": 0}),
            ValueError,
            r"conv_param\['filter_num'\] must be >= 1",
        ),
        (lambda: fl.SimpleConvNet(conv_param={"filters": 3}), ValueError, "unknown keys"),
        (lambda: fl.SimpleConvNet(conv_param={"stride": 1.5}), TypeError, "must be an integer"),
        (lambda: fl.SimpleConvNet(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
        (lambda: fl.DeepConvNet(input_dim=(1, 3, 3)), ValueError, "2x2 pooling needs at least 2"),
        (lambda: fl.DeepConvNet(hidden_size=0), ValueError, "hidden_size must be a positive integer"),
    ],
)
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
