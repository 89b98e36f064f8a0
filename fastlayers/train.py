"""The training loop behind ``python -m fastlayers train``, usable from code as :func:`fit`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._backend import use_backend
from .nets import MultiLayerNet, MultiLayerNetExtend, SimpleConvNet, TwoLayerNet
from .optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

OPTIMIZERS = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    seconds: float
    examples_per_s: float


@dataclass
class History:
    backend: str
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)


#: the convolution of ``--net convnet``: 3x3 filters padded to keep the (small) images' size
CONVNET_PARAM = {"filter_num": 30, "filter_size": 3, "pad": 1, "stride": 1}


def build_net(
    kind: str,
    input_size,
    hidden: list[int],
    output_size: int,
    activation: str,
    dtype,
    seed: int,
    dropout: float = 0.0,
    batchnorm: bool = False,
):
    """A ``TwoLayerNet`` (one hidden layer, ReLU, classic 0.01 init), a ``MultiLayerNet`` (a
    ``MultiLayerNetExtend`` with ``dropout`` > 0 or ``batchnorm``), or a ``SimpleConvNet``
    (``input_size`` then is the images' (C, H, W))."""
    if (dropout or batchnorm) and kind != "multi":
        raise ValueError("--dropout and --batchnorm go with --net multi")
    if kind == "convnet":
        if len(hidden) != 1:
            raise ValueError("--net convnet has one hidden Affine layer: give one --hidden size")
        return SimpleConvNet(tuple(input_size), CONVNET_PARAM, hidden[0], output_size, dtype=dtype, seed=seed)
    if kind == "two":
        if len(hidden) != 1 or activation != "relu":
            raise ValueError("--net two has exactly one hidden layer and ReLU; use --net multi otherwise")
        return TwoLayerNet(input_size, hidden[0], output_size, dtype=dtype, seed=seed)
    if kind == "multi" and (dropout or batchnorm):
        return MultiLayerNetExtend(input_size, hidden, output_size, activation=activation, weight_init_std=activation,
                                   use_dropout=dropout > 0, dropout_ration=dropout, use_batchnorm=batchnorm,
                                   dtype=dtype, seed=seed)  # fmt: skip
    if kind == "multi":
        return MultiLayerNet(input_size, hidden, output_size, activation=activation, weight_init_std=activation,
                             dtype=dtype, seed=seed)  # fmt: skip
    raise ValueError(f"net must be 'two', 'multi' or 'convnet', got {kind!r}")


def fit(
    net,
    optimizer,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    seed: int,
    backend: str = "numba",
    progress: Callable | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> History:
    """Mini-batch training: shuffle with ``seed`` each epoch, forward, backward, update.

    ``progress(iterable, desc)`` wraps the loop over epochs (e.g. tqdm); ``on_epoch`` sees each epoch's stats.
    Loss is the mean over the epoch's batches; accuracies are measured on the whole sets.
    """
    x_train, t_train = train
    x_test, t_test = test
    n = x_train.shape[0]
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    rng = np.random.default_rng(seed)
    history = History(backend=backend)
    epoch_numbers = range(1, epochs + 1)
    if progress is not None:
        epoch_numbers = progress(epoch_numbers, f"{backend}")
    with use_backend(backend):
        for epoch in epoch_numbers:
            order = rng.permutation(n)
            batches = range(0, n, batch_size)
            start = time.perf_counter()
            losses = []
            for lo in batches:
                idx = order[lo : lo + batch_size]
                grads = net.gradient(x_train[idx], t_train[idx])
                losses.append(float(net.last_layer.loss))
                optimizer.update(net.params, grads)
            seconds = time.perf_counter() - start
            stats = EpochStats(epoch, float(np.mean(losses)), net.accuracy(x_train, t_train),
                               net.accuracy(x_test, t_test), seconds, n / seconds)  # fmt: skip
            history.epochs.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
    return history
