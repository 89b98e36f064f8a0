"""A small program written against fastlayers' public API with full annotations.

Not a test module: ``tests/test_api_docs.py`` runs ``mypy --strict`` on it, so that the package's
hints (``py.typed``) are there and fit the way the classic API is used.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

import fastlayers as fl
from fastlayers import functional as F


def train_step(x: npt.NDArray[np.float32], t: npt.NDArray[np.int64], lr: float) -> float:
    rng = np.random.default_rng(0)
    params: dict[str, npt.NDArray[np.float64]] = {
        "W1": 0.01 * rng.standard_normal((x.shape[1], 16)),
        "b1": np.zeros(16),
        "W2": 0.01 * rng.standard_normal((16, 10)),
        "b2": np.zeros(10),
    }
    layers: OrderedDict[str, fl.Affine | fl.Relu | fl.Sigmoid] = OrderedDict()
    layers["Affine1"] = fl.Affine(params["W1"], params["b1"])
    layers["Relu1"] = fl.Relu()
    layers["Affine2"] = fl.Affine(params["W2"], params["b2"])
    last = fl.SoftmaxWithLoss()
    h: npt.NDArray[Any] = x
    for layer in layers.values():
        h = layer.forward(h)
    loss: np.floating[Any] = last.forward(h, t)
    dout: npt.NDArray[Any] = last.backward()
    for layer in reversed(list(layers.values())):
        dout = layer.backward(dout)
    affine = layers["Affine1"]
    assert isinstance(affine, fl.Affine) and affine.dW is not None  # set by backward
    grads = {"W1": affine.dW}
    fl.SGD(lr=lr).update({"W1": params["W1"]}, grads)
    return float(loss)


def functions(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[Any], np.floating[Any]]:
    y = F.softmax(x, out=np.empty_like(x))
    r = fl.relu(x) + fl.sigmoid([1.0, 2.0]).sum()
    loss, probs = F.softmax_cross_entropy_forward(x, np.zeros(x.shape[0], np.int64))
    dx, dW, db = F.affine_backward(np.ones((x.shape[0], 3)), x, np.ones((x.shape[1], 3)))
    ce = fl.cross_entropy_error(probs, np.zeros(x.shape[0], np.int64))
    grad = fl.numerical_gradient(lambda w: float(np.sum(w**2)), x.copy())
    return y + r + dx.sum() + dW.sum() + db.sum() + grad, loss + ce


def nets_and_data() -> float:
    (x, t), (xt, tt) = fl.load_digits()
    net = fl.TwoLayerNet(64, 20, 10, dtype=np.float32, seed=0)
    multi = fl.MultiLayerNet(64, [20, 20], 10, activation="sigmoid", weight_init_std="xavier", seed=1)
    opt = fl.Adam(lr=0.001)
    opt.update(net.params, net.gradient(x[:32], t[:32]))
    diffs: dict[str, float] = fl.gradient_check(multi, x[:3], t[:3])
    with fl.use_backend("numpy"), fl.strict_dtypes():
        accuracy = net.accuracy(xt, tt)
    fl.set_num_threads(fl.get_num_threads())
    return accuracy + max(diffs.values()) + float(multi.loss(x[:8], t[:8]))


def scalars() -> float:
    mul, add = fl.MulLayer(), fl.AddLayer()
    price = mul.forward(add.forward(100, 150), 1.1)
    d_sum, d_tax = mul.backward(1)
    return float(price + d_sum + d_tax)


def lazy_families_keep_their_types() -> float:
    """Names imported at first use are typed as the classes they are."""
    conv = fl.Convolution(np.ones((2, 1, 3, 3)), np.zeros(2))
    y: np.ndarray = conv.forward(np.ones((1, 1, 5, 5)))
    drop: fl.Dropout = fl.Dropout(0.5)
    return float(y.sum()) + float(drop.dropout_ratio)
