"""The classic convolutional networks, built from the fast layers: ``SimpleConvNet`` (chapter 7) and
``DeepConvNet`` (chapter 8), with the classic constructor arguments, ``params`` keys and shapes,
``layers`` and methods, and ``save_params``/``load_params`` in the classic pickle format (a plain
dict of arrays), so that the parameter files the book ships load into these nets.

Walking the layers, a Convolution and the ReLU after it, and an Affine and the ReLU after it, run as
fused passes, and the first layer's input gradient is not computed (:mod:`._walk`).

Departures from the classic code: sizes are computed from the actual input (the classic code
assumes square inputs and even sizes), ``accuracy`` also counts the rows past the last full batch
(the classic one skips them but divides by all), ``DeepConvNet`` takes each layer's fan-in for the
He initialisation from the actual sizes (the classic code writes them out for its defaults, where
the two agree), and ``load_params`` refuses files that hold anything but a dict of arrays.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from os import PathLike

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..layers import Affine, Convolution, Dropout, Pooling, Relu, SoftmaxWithLoss
from ._base import LayerNet
from ._params import load_param_file
from .dense import _float_dtype, _size

__all__ = ["SimpleConvNet", "DeepConvNet", "load_param_file"]

_CONV_DEFAULT = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}


def _conv_param(param: Mapping | None, default: Mapping, name: str) -> dict:
    if param is None:
        return dict(default)
    if not isinstance(param, Mapping):
        raise TypeError(f"{name} must be a dict with filter_num, filter_size, pad, stride, got {type(param).__name__}")
    unknown = set(param) - set(_CONV_DEFAULT)
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; expected filter_num, filter_size, pad, stride")
    p = {**default, **param}
    for key, low in (("filter_num", 1), ("filter_size", 1), ("pad", 0), ("stride", 1)):
        value = p[key]
        if isinstance(value, bool):
            raise TypeError(f"{name}[{key!r}] must be an integer, got {value!r}")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name}[{key!r}] must be an integer, got {value!r}") from None
        if value < low:
            raise ValueError(f"{name}[{key!r}] must be >= {low}, got {value}")
        p[key] = value
    return p


def _input_dim(input_dim) -> tuple[int, int, int]:
    try:
        dims = tuple(input_dim)
    except TypeError:
        raise TypeError(f"input_dim must be (channels, height, width), got {input_dim!r}") from None
    if len(dims) != 3:
        raise ValueError(f"input_dim must be (channels, height, width), got {input_dim!r}")
    return tuple(_size(d, "input_dim entries") for d in dims)  # type: ignore[return-value]


def _after_conv(size: int, p: dict, name: str) -> int:
    out = (size + 2 * p["pad"] - p["filter_size"]) // p["stride"] + 1
    if out < 1:
        raise ValueError(
            f"{name}: a {p['filter_size']}-wide filter does not fit an input of {size} with pad {p['pad']}"
        )
    return out


def _after_pool(size: int, name: str) -> int:
    if size < 2:
        raise ValueError(f"{name}: the 2x2 pooling needs at least 2 rows and columns, got {size}")
    return (size - 2) // 2 + 1


class _ConvNet(LayerNet):
    """What the two convolutional nets share: the public methods over :class:`LayerNet` (the walk
    beside the convolution kernels, no plans), accuracy by batches, ``load_params`` that replaces
    the arrays."""

    params: dict[str, np.ndarray]
    last_layer: SoftmaxWithLoss
    _beside_kernels = True
    _train_loss: bool = False  # whether ``loss`` runs the layers in training mode (DeepConvNet)

    def _param_layers(self) -> list:
        """The layers holding ``W{i}``, ``b{i}``, in order."""
        raise NotImplementedError

    def _dtype(self) -> np.dtype:
        return self.params["W1"].dtype

    def predict(self, x: ArrayLike, train_flg: bool = False) -> np.ndarray:
        """Scores before the softmax.

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)
        train_flg : bool, default False
            Training mode for the layers that have one (dropout).

        Returns
        -------
        ndarray (N, output_size), in the dtype NumPy's rule gives for ``x`` and the parameters.
        """
        return self._predict(x, train_flg)

    def loss(self, x: ArrayLike, t: ArrayLike) -> np.floating:
        """Mean softmax cross-entropy of the batch.

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)
        t : array_like
            Integer labels (N,) (or an (N, 1) column) or one-hot rows (N, output_size).
        """
        return self._loss(x, t, self._train_loss)

    def accuracy(self, x: ArrayLike, t: ArrayLike, batch_size: int = 100) -> float:
        """Fraction of rows whose highest score is the target class, predicted ``batch_size`` rows
        at a time (all rows count, the last partial batch included).

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)
        t : array_like
            Integer labels (N,) or one-hot rows (N, output_size).
        batch_size : int >= 1, default 100

        Raises
        ------
        ValueError
            ``t`` with another number of rows than ``x``; ``batch_size`` < 1.
        """
        batch_size = _size(batch_size, "batch_size")
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1) if t.ndim == 2 and t.shape[1] > 1 else t.reshape(-1)
        n = np.shape(x)[0]
        if t.shape[0] != n:
            raise ValueError(f"t has {t.shape[0]} rows but x has {n}")
        hits = 0
        for lo in range(0, n, batch_size):
            y = np.argmax(self.predict(x[lo : lo + batch_size], False), axis=1)
            hits += int(np.sum(y == t[lo : lo + batch_size]))
        return hits / n

    def gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the loss by backpropagation (the layers' own ``dW``/``db`` arrays).

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params``.
        """
        return self._gradient(x, t)

    def numerical_gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the loss by central differences (slow: two forward passes per parameter
        element; use a tiny net and batch).

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params``.
        """
        return self._numerical_gradient(x, t)

    def _grads(self) -> dict[str, np.ndarray]:
        grads = {}
        for i, layer in enumerate(self._param_layers(), start=1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return grads

    def load_params(self, file_name: str | PathLike = "params.pkl") -> None:
        """Read a classic parameter file into the net: each array replaces ``params[key]`` and the
        ``W``/``b`` of its layer, converted to the net's dtype.

        Parameters
        ----------
        file_name : str or path, default "params.pkl"

        Raises
        ------
        ValueError
            A key the net does not have, or an array of another shape than the net's.
        pickle.UnpicklingError
            A file that holds anything but arrays.
        """
        data = load_param_file(file_name)
        for key, value in data.items():
            if key not in self.params:
                raise ValueError(
                    f"{file_name} has {key!r}, which this net does not have (it has {sorted(self.params)})"
                )
            if value.shape != self.params[key].shape:
                want = self.params[key].shape
                raise ValueError(f"{file_name} has {key} of shape {value.shape} but this net's {key} has shape {want}")
        dtype = self._dtype()
        for key, value in data.items():
            self.params[key] = np.array(value, dtype=dtype, order="C")
        for i, layer in enumerate(self._param_layers(), start=1):
            layer.W, layer.b = self.params[f"W{i}"], self.params[f"b{i}"]


class SimpleConvNet(_ConvNet):
    """Convolution -> ReLU -> Pooling(2x2) -> Affine -> ReLU -> Affine -> SoftmaxWithLoss.

    Parameters
    ----------
    input_dim : (C, H, W), default (1, 28, 28)
    conv_param : dict, default ``{'filter_num': 30, 'filter_size': 5, 'pad': 0, 'stride': 1}``
        Missing keys take these defaults.
    hidden_size, output_size : int, defaults 100 and 10
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian initial weights; biases start at 0.
    dtype : float32 or float64, default float64
    seed : int, optional
        Seed of the initial weights (``numpy.random.default_rng``).

    Attributes
    ----------
    params : dict ``W1``, ``b1`` (the filters), ``W2``, ``b2``, ``W3``, ``b3``
    layers : OrderedDict ``Conv1``, ``Relu1``, ``Pool1``, ``Affine1``, ``Relu2``, ``Affine2``
    last_layer : SoftmaxWithLoss

    Raises
    ------
    ValueError, TypeError
        Sizes that are not positive integers, a filter that does not fit the input.
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 28, 28),
        conv_param: Mapping | None = None,
        hidden_size: int = 100,
        output_size: int = 10,
        weight_init_std: float = 0.01,
        *,
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
    ) -> None:
        c, h, w = _input_dim(input_dim)
        p = _conv_param(conv_param, _CONV_DEFAULT, "conv_param")
        hidden, out = _size(hidden_size, "hidden_size"), _size(output_size, "output_size")
        ph = _after_pool(_after_conv(h, p, "conv_param"), "SimpleConvNet")
        pw = _after_pool(_after_conv(w, p, "conv_param"), "SimpleConvNet")
        pooled = p["filter_num"] * ph * pw
        dt = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        fs, fn = p["filter_size"], p["filter_num"]

        def normal(*shape):
            return (weight_init_std * rng.standard_normal(shape)).astype(dt)

        self.params = {
            "W1": normal(fn, c, fs, fs),
            "b1": np.zeros(fn, dt),
            "W2": normal(pooled, hidden),
            "b2": np.zeros(hidden, dt),
            "W3": normal(hidden, out),
            "b3": np.zeros(out, dt),
        }
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"], p["stride"], p["pad"])
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    def _param_layers(self) -> list:
        return [self.layers["Conv1"], self.layers["Affine1"], self.layers["Affine2"]]


class DeepConvNet(_ConvNet):
    """Six 3x3 convolutions with ReLU (pooling after every second), Affine -> ReLU -> Dropout ->
    Affine -> Dropout -> SoftmaxWithLoss: the classic chapter 8 net.

    Parameters
    ----------
    input_dim : (C, H, W), default (1, 28, 28)
    conv_param_1 ... conv_param_6 : dict
        Defaults: 16, 16, 32, 32, 64, 64 filters of 3x3, stride 1, pad 1 (pad 2 for the fourth).
    hidden_size, output_size : int, defaults 50 and 10
    dtype, seed : as :class:`SimpleConvNet`

    Attributes
    ----------
    params : dict ``W1``...``W8``, ``b1``...``b8`` (He initialisation: std sqrt(2 / fan-in))
    layers : list of the 20 layers, in the classic order
    last_layer : SoftmaxWithLoss

    ``loss`` and ``gradient`` run the dropout layers in training mode, ``predict`` and ``accuracy``
    in test mode by default, as in the classic code.
    """

    _train_loss = True
    _PARAM_INDEX = (0, 2, 5, 7, 10, 12, 15, 18)

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 28, 28),
        conv_param_1: Mapping | None = None,
        conv_param_2: Mapping | None = None,
        conv_param_3: Mapping | None = None,
        conv_param_4: Mapping | None = None,
        conv_param_5: Mapping | None = None,
        conv_param_6: Mapping | None = None,
        hidden_size: int = 50,
        output_size: int = 10,
        *,
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
    ) -> None:
        c, h, w = _input_dim(input_dim)
        defaults = [(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]
        given = [conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6]
        convs = [
            _conv_param(p, {"filter_num": fn, "filter_size": 3, "pad": pad, "stride": 1}, f"conv_param_{i + 1}")
            for i, (p, (fn, pad)) in enumerate(zip(given, defaults, strict=True))
        ]
        hidden, out = _size(hidden_size, "hidden_size"), _size(output_size, "output_size")
        dt = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {}
        self.layers = []
        channels = c
        for i, p in enumerate(convs, start=1):
            fs = p["filter_size"]
            scale = np.sqrt(2.0 / (channels * fs * fs))
            self.params[f"W{i}"] = (scale * rng.standard_normal((p["filter_num"], channels, fs, fs))).astype(dt)
            self.params[f"b{i}"] = np.zeros(p["filter_num"], dt)
            h, w = _after_conv(h, p, f"conv_param_{i}"), _after_conv(w, p, f"conv_param_{i}")
            self.layers.append(Convolution(self.params[f"W{i}"], self.params[f"b{i}"], p["stride"], p["pad"]))
            self.layers.append(Relu())
            if i % 2 == 0:
                h, w = _after_pool(h, "DeepConvNet"), _after_pool(w, "DeepConvNet")
                self.layers.append(Pooling(pool_h=2, pool_w=2, stride=2))
            channels = p["filter_num"]
        flat = channels * h * w
        for i, (fan_in, fan_out) in enumerate(((flat, hidden), (hidden, out)), start=7):
            self.params[f"W{i}"] = (np.sqrt(2.0 / fan_in) * rng.standard_normal((fan_in, fan_out))).astype(dt)
            self.params[f"b{i}"] = np.zeros(fan_out, dt)
        self.layers.append(Affine(self.params["W7"], self.params["b7"]))
        self.layers.append(Relu())
        self.layers.append(Dropout(0.5))
        self.layers.append(Affine(self.params["W8"], self.params["b8"]))
        self.layers.append(Dropout(0.5))
        self.last_layer = SoftmaxWithLoss()

    def _layer_list(self) -> list:
        return self.layers

    def _param_layers(self) -> list:
        return [self.layers[i] for i in self._PARAM_INDEX]
