"""The classic fully connected networks, built from the fast layers: ``TwoLayerNet``,
``MultiLayerNet`` and ``MultiLayerNetExtend`` (batch normalization and dropout)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from os import PathLike

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..layers.core import Affine, Relu, Sigmoid, SoftmaxWithLoss
from ._base import LayerNet
from ._params import load_param_file

__all__ = ["TwoLayerNet", "MultiLayerNet", "MultiLayerNetExtend", "gradient_check"]

_ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}


def _size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class _Net(LayerNet):
    """What the classic fully connected networks share: the public methods over :class:`LayerNet`
    (asking the plans first), accuracy, ``load_params`` that copies into the arrays."""

    params: dict
    layers: OrderedDict
    last_layer: SoftmaxWithLoss
    _planned = True

    def __getstate__(self) -> dict:
        """The net's state for pickle and copy: everything but its plans (their buffers and locks
        are made again at the first call)."""
        state = self.__dict__.copy()
        state.pop("_plans", None)
        state.pop("_hot", None)
        return state

    @property
    def lastLayer(self) -> SoftmaxWithLoss:  # noqa: N802 - the classic TwoLayerNet's name
        """The loss layer under the classic ``TwoLayerNet`` name (``last_layer`` in ``MultiLayerNet``)."""
        return self.last_layer

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Scores before the softmax.

        Parameters
        ----------
        x : array_like, shape (N, input_size)

        Returns
        -------
        ndarray, shape (N, output_size), in the dtype NumPy's rule gives for ``x`` and the weights.
        """
        return self._predict(x)

    def load_params(self, file_name: str | PathLike = "params.pkl") -> None:
        """Read a parameter file (:meth:`save_params`) into the net: each array is copied into
        ``params[key]``, which the layers hold, converted to its dtype. A file from a net with batch
        normalization holds ``gamma``/``beta`` but not the running statistics.

        Parameters
        ----------
        file_name : str or path, default "params.pkl"

        Raises
        ------
        ValueError
            A key the net does not have, a missing key, or an array of another shape than the net's.
        pickle.UnpicklingError
            A file that holds anything but arrays.
        """
        data = load_param_file(file_name)
        if set(data) != set(self.params):
            raise ValueError(f"{file_name} holds {sorted(data)} but this net has {sorted(self.params)}")
        for key, value in data.items():
            if value.shape != self.params[key].shape:
                want = self.params[key].shape
                raise ValueError(f"{file_name} has {key} of shape {value.shape} but this net's {key} has shape {want}")
        for key, value in data.items():
            np.copyto(self.params[key], value, casting="unsafe")

    def loss(self, x: ArrayLike, t: ArrayLike) -> np.floating:
        """Mean softmax cross-entropy of the batch (plus the weight decay term, if any).

        Parameters
        ----------
        x : array_like, shape (N, input_size)
        t : array_like
            Integer labels (N,) or one-hot rows (N, output_size).
        """
        return self._loss(x, t)

    def accuracy(self, x: ArrayLike, t: ArrayLike) -> float:
        """Fraction of rows whose highest score is the target class.

        Parameters
        ----------
        x : array_like, shape (N, input_size)
        t : array_like
            Integer labels (N,) or one-hot rows.

        Raises
        ------
        ValueError
            ``t`` with another number of rows than ``x``.
        """
        y = np.argmax(self.predict(x), axis=1)
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        if t.shape[0] != y.shape[0]:
            raise ValueError(f"t has {t.shape[0]} rows but x has {y.shape[0]}")
        return float(np.sum(y == t)) / y.shape[0]

    def numerical_gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the loss by central differences (slow: two forward passes per parameter element).

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params``, each array shaped like its parameter.
        """
        return self._numerical_gradient(x, t)

    def _affine_grads(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _grads(self) -> dict[str, np.ndarray]:
        return self._affine_grads()

    def gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the loss by backpropagation.

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params`` (the layers' own ``dW``/``db`` arrays, plus the decay term). The
        first layer's gradient with respect to ``x`` is not computed (nobody uses it), and each
        Affine layer's bias gradient is computed in one pass with the gradient of the activation
        after it; the layers are left in the state their own ``backward`` calls would leave.
        """
        return self._gradient(x, t)


class TwoLayerNet(_Net):
    """Affine -> ReLU -> Affine -> SoftmaxWithLoss, with the classic attributes and methods.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian initial weights; biases start at 0.
    dtype : float32 or float64, default float64
        dtype of the parameters (inputs must be of the same precision, or integer).
    seed : int, optional
        Seed of the initial weights (``numpy.random.default_rng``).

    Attributes
    ----------
    params : dict with ``W1``, ``b1``, ``W2``, ``b2``
    layers : OrderedDict ``Affine1``, ``Relu1``, ``Affine2``
    lastLayer : SoftmaxWithLoss
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        weight_init_std: float = 0.01,
        *,
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
    ) -> None:
        sizes = [_size(input_size, "input_size"), _size(hidden_size, "hidden_size"), _size(output_size, "output_size")]
        dt = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": (weight_init_std * rng.standard_normal(sizes[:2])).astype(dt),
            "b1": np.zeros(sizes[1], dt),
            "W2": (weight_init_std * rng.standard_normal(sizes[1:])).astype(dt),
            "b2": np.zeros(sizes[2], dt),
        }
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.last_layer = SoftmaxWithLoss()

    def _affine_grads(self) -> dict[str, np.ndarray]:
        a1, a2 = self.layers["Affine1"], self.layers["Affine2"]
        return {"W1": a1.dW, "b1": a1.db, "W2": a2.dW, "b2": a2.db}


class MultiLayerNet(_Net):
    """Fully connected network: (Affine -> activation) per hidden layer, then Affine -> SoftmaxWithLoss.

    Parameters
    ----------
    input_size : int
    hidden_size_list : list of int
        Sizes of the hidden layers (may be empty: plain softmax regression).
    output_size : int
    activation : {"relu", "sigmoid"}
    weight_init_std : {"relu", "he", "sigmoid", "xavier"} or float
        "relu"/"he": std sqrt(2 / fan_in); "sigmoid"/"xavier": sqrt(1 / fan_in); a float: that std.
    weight_decay_lambda : float, default 0
        L2 penalty ``0.5 * lambda * sum(W ** 2)`` added to the loss, and ``lambda * W`` to each dW.
    dtype, seed : as :class:`TwoLayerNet`.

    Attributes
    ----------
    params : dict with ``W1``, ``b1``, ... ``W{L}``, ``b{L}``
    layers : OrderedDict ``Affine1``, ``Activation_function1``, ..., ``Affine{L}``
    last_layer : SoftmaxWithLoss
    """

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        activation: str = "relu",
        weight_init_std: str | float = "relu",
        weight_decay_lambda: float = 0.0,
        *,
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
    ) -> None:
        hidden = [_size(h, "hidden_size_list entries") for h in hidden_size_list]
        sizes = [_size(input_size, "input_size"), *hidden, _size(output_size, "output_size")]
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not weight_decay_lambda >= 0:
            raise ValueError(f"weight_decay_lambda must be >= 0, got {weight_decay_lambda!r}")
        dt = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.hidden_size_list = hidden
        self.hidden_layer_num = len(hidden)
        self.weight_decay_lambda = float(weight_decay_lambda)
        self.params = {}
        self.layers = OrderedDict()
        for idx in range(1, len(sizes)):
            fan_in = sizes[idx - 1]
            std = self._init_std(weight_init_std, fan_in)
            self.params[f"W{idx}"] = (std * rng.standard_normal((fan_in, sizes[idx]))).astype(dt)
            self.params[f"b{idx}"] = np.zeros(sizes[idx], dt)
            self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"], self.params[f"b{idx}"])
            if idx < len(sizes) - 1:
                self.layers[f"Activation_function{idx}"] = _ACTIVATIONS[activation]()
        self.last_layer = SoftmaxWithLoss()

    @staticmethod
    def _init_std(spec, fan_in: int) -> float:
        if isinstance(spec, str):
            key = spec.lower()
            if key in ("relu", "he"):
                return float(np.sqrt(2.0 / fan_in))
            if key in ("sigmoid", "xavier"):
                return float(np.sqrt(1.0 / fan_in))
            raise ValueError(f"weight_init_std must be 'relu', 'he', 'sigmoid', 'xavier' or a number, got {spec!r}")
        return float(spec)

    def _penalty(self) -> float:
        if not self.weight_decay_lambda:
            return 0.0
        total = sum(float(np.sum(self.params[f"W{i}"].astype(np.float64) ** 2)) for i in self._indices())
        return 0.5 * self.weight_decay_lambda * total

    def _indices(self) -> range:
        return range(1, self.hidden_layer_num + 2)

    def _affine_grads(self) -> dict[str, np.ndarray]:
        grads = {}
        lam = self.weight_decay_lambda
        for i in self._indices():
            layer = self.layers[f"Affine{i}"]
            grads[f"W{i}"] = layer.dW + layer.dW.dtype.type(lam) * layer.W if lam else layer.dW
            grads[f"b{i}"] = layer.db
        return grads


def gradient_check(net: TwoLayerNet | MultiLayerNet, x: ArrayLike, t: ArrayLike) -> dict[str, float]:
    """Mean absolute difference, per parameter, between backprop and numerical gradients.

    Use a small batch and float64 parameters: the numerical gradient costs two forward passes per
    parameter element. Values around 1e-10 to 1e-8 mean backpropagation is right.

    Parameters
    ----------
    net : TwoLayerNet or MultiLayerNet
    x, t : a batch and its targets, as ``net.loss`` takes them

    Returns
    -------
    dict keyed like ``net.params``.
    """
    grad_backprop = net.gradient(x, t)
    grad_backprop = {k: v.copy() for k, v in grad_backprop.items()}
    grad_numerical = net.numerical_gradient(x, t)
    return {key: float(np.mean(np.abs(grad_backprop[key] - grad_numerical[key]))) for key in net.params}


class MultiLayerNetExtend(MultiLayerNet):
    """The classic extended network: per hidden layer Affine -> [BatchNormalization] -> activation
    -> [Dropout], then Affine -> SoftmaxWithLoss; weight decay as :class:`MultiLayerNet`.

    Parameters
    ----------
    input_size, hidden_size_list, output_size, activation, weight_init_std, weight_decay_lambda :
        as :class:`MultiLayerNet`.
    use_dropout : bool, default False
    dropout_ration : float in [0, 1), default 0.5
        The dropout ratio (the classic spelling).
    use_batchnorm : bool, default False
    dtype, seed : as :class:`TwoLayerNet`.

    Attributes
    ----------
    params : dict ``W1``, ``b1``, ... ``W{L}``, ``b{L}``, then ``gamma1``, ``beta1``, ... (batch norm)
    layers : OrderedDict ``Affine1``, [``BatchNorm1``], ``Activation_function1``, [``Dropout1``], ...
    last_layer : SoftmaxWithLoss

    ``predict``, ``loss`` and ``accuracy`` run in test mode by default (``train_flg=False``);
    ``gradient`` and ``numerical_gradient`` in training mode, as in the classic code.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        activation: str = "relu",
        weight_init_std: str | float = "relu",
        weight_decay_lambda: float = 0.0,
        use_dropout: bool = False,
        dropout_ration: float = 0.5,
        use_batchnorm: bool = False,
        *,
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size_list, output_size, activation, weight_init_std,
                         weight_decay_lambda, dtype=dtype, seed=seed)  # fmt: skip
        from ..functional.dropout import check_ratio
        from ..layers.training import BatchNormalization, Dropout

        ratio = check_ratio(dropout_ration)
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.use_dropout, self.use_batchnorm = bool(use_dropout), bool(use_batchnorm)
        dt = self.params["W1"].dtype
        plain = self.layers
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = plain[f"Affine{idx}"]
            if self.use_batchnorm:
                size = self.hidden_size_list[idx - 1]
                self.params[f"gamma{idx}"] = np.ones(size, dt)
                self.params[f"beta{idx}"] = np.zeros(size, dt)
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(
                    self.params[f"gamma{idx}"], self.params[f"beta{idx}"]
                )
            self.layers[f"Activation_function{idx}"] = plain[f"Activation_function{idx}"]
            if self.use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(ratio)
        last = self.hidden_layer_num + 1
        self.layers[f"Affine{last}"] = plain[f"Affine{last}"]

    def predict(self, x: ArrayLike, train_flg: bool = False) -> np.ndarray:
        """Scores before the softmax.

        Parameters
        ----------
        x : array_like, shape (N, input_size)
        train_flg : bool, default False
            Training mode for batch normalization (batch statistics, running ones updated) and dropout.

        Returns
        -------
        ndarray (N, output_size).
        """
        return self._predict(x, train_flg)  # the plans answer None with batch normalization or dropout

    def loss(self, x: ArrayLike, t: ArrayLike, train_flg: bool = False) -> np.floating:
        """Mean softmax cross-entropy of the batch plus the weight decay term.

        Parameters
        ----------
        x : array_like, shape (N, input_size)
        t : array_like
            Integer labels (N,) or one-hot rows.
        train_flg : bool, default False
        """
        return self._loss(x, t, train_flg)

    def numerical_gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients by central differences of the training-mode loss (dropout draws new masks at
        every evaluation, so use it without dropout).

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params``.
        """
        return self._numerical_gradient(x, t)

    def gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the training-mode loss by backpropagation.

        Parameters
        ----------
        x, t : as :meth:`loss`

        Returns
        -------
        dict keyed like ``params``: ``W{i}``, ``b{i}`` (plus the decay term), ``gamma{i}``, ``beta{i}``.
        """
        return self._gradient(x, t)

    def _training_loss(self, x: ArrayLike, t: ArrayLike) -> np.floating:
        return self.loss(x, t, True)

    def _grads(self) -> dict[str, np.ndarray]:
        grads = self._affine_grads()
        if self.use_batchnorm:
            for idx in range(1, self.hidden_layer_num + 1):
                bn = self.layers[f"BatchNorm{idx}"]
                grads[f"gamma{idx}"], grads[f"beta{idx}"] = bn.dgamma, bn.dbeta
        return grads
