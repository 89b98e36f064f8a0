"""The training loop behind ``python -m fastlayers train``, usable from code as :func:`fit`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from os import PathLike

import numpy as np

from ._backend import use_backend
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_run,
    load_checkpoint,
    pack,
    restore_state,
    state_of,
    write_packed,
)
from .nets import DeepConvNet, MultiLayerNet, MultiLayerNetExtend, SimpleConvNet, TwoLayerNet
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
    ``MultiLayerNetExtend`` with ``dropout`` > 0 or ``batchnorm``), a ``SimpleConvNet`` or a
    ``DeepConvNet`` (``input_size`` then is the images' (C, H, W)).

    ``kind="deep"`` is the classic chapter 8 net with ``hidden`` as its hidden Affine size, sized to
    the images: on 28x28 images its planes go 28 -> 14 -> 8 -> 4 (64 x 4 x 4 values into the first
    Affine layer, as in the classic code); on scikit-learn's 8x8 digits the same six convolutions and
    three poolings take 8 -> 4 -> 3 -> 1 (64 values into the first Affine layer). Images smaller than
    4x4 leave no plane for a pooling and are refused with ``ValueError``."""
    if (dropout or batchnorm) and kind != "multi":
        raise ValueError("--dropout and --batchnorm go with --net multi")
    if kind in ("convnet", "deep"):
        if len(hidden) != 1:
            raise ValueError(f"--net {kind} has one hidden Affine layer: give one --hidden size")
        if kind == "deep":
            return DeepConvNet(
                tuple(input_size), hidden_size=hidden[0], output_size=output_size, dtype=dtype, seed=seed
            )
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
    raise ValueError(f"net must be 'two', 'multi', 'convnet' or 'deep', got {kind!r}")


class Interrupted(KeyboardInterrupt):
    """:func:`fit` stopped at a step boundary after a SIGINT (Ctrl-C) or SIGTERM.

    A subclass of ``KeyboardInterrupt``, so that code that handles Ctrl-C handles it too.

    Attributes
    ----------
    signum : int
        The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
    checkpoint : str or None
        The checkpoint written at the stop (None when ``fit`` was given none).
    epoch, step : int
        Where the run stopped: the epoch in progress (1-based) and the steps of it already taken.
    """

    def __init__(self, signum: int, checkpoint: str | None, epoch: int, step: int) -> None:
        super().__init__(signum, checkpoint, epoch, step)
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step


class _Signals:
    """While active in the main thread: the first SIGINT or SIGTERM is noted (``signum``) for the
    loop to stop at its next step boundary; a second one raises ``KeyboardInterrupt`` at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _Signals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class _Checkpoints:
    """Writes a run's checkpoints to one file, in the training thread (a background writer was
    measured to save little: docs/PERFORMANCE.md).

    A write (the copy, the archive, the fsync and the rename) can take longer than a whole epoch of
    a small run (the CLI's default on the digits). So an epoch-end checkpoint is written only when
    the time since the last write is at least ``1 / BUDGET`` times that write's duration, which keeps
    checkpointing within ``BUDGET`` of the training time; every epoch's is written as soon as an epoch
    takes longer than that (any MNIST-size run). Forced writes (the last epoch, ``checkpoint_every``
    steps, a stop by a signal) are always written."""

    BUDGET = 0.02

    def __init__(self, path: str) -> None:
        self.path = path
        self.ready_at = 0.0
        self.written = 0

    def write(self, snapshot: Callable[[], tuple], force: bool = False) -> None:
        start = time.perf_counter()
        if not force and start < self.ready_at:
            return
        write_packed(self.path, *snapshot())
        end = time.perf_counter()
        self.ready_at = end + (end - start) / self.BUDGET
        self.written += 1


@dataclass
class _Position:
    epoch: int = 1  # the epoch in progress, 1-based
    step: int = 0  # steps of it already taken
    global_step: int = 0
    losses: list = field(default_factory=list)
    seconds: float = 0.0  # training time of this epoch before a resume
    order: np.ndarray | None = None  # this epoch's row order, once drawn


def _snapshot(net, optimizer, rng, pos: _Position, history: list[dict], run: dict, options: dict | None):
    """The checkpoint of this moment, packed (:func:`fastlayers.checkpoint.pack`): metadata and a
    copy of the arrays' bytes. ``history``: the finished epochs' stats as dicts."""
    meta, arrays = state_of(net, optimizer)
    name, keys, mt_pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the dropout keys' generator
    arrays["np_random/keys"] = keys
    if pos.order is not None:
        arrays["order"] = pos.order  # never written to: a new array every epoch
    meta.update({
        "run": run,
        "options": options or {},
        "position": {"epoch": pos.epoch, "step": pos.step, "global_step": pos.global_step,
                     "losses": list(pos.losses), "seconds": pos.seconds},
        "batch_rng": rng.bit_generator.state,
        "np_random": {"name": name, "pos": int(mt_pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "history": list(history),
    })  # fmt: skip
    return pack(meta, arrays)


def _resume(ckpt: Checkpoint, net, optimizer, rng, run: dict, epochs: int) -> tuple[_Position, list[EpochStats]]:
    """Restore a run from ``ckpt`` into ``net``, ``optimizer``, ``rng`` and NumPy's global generator."""
    meta, arrays = ckpt.meta, ckpt.arrays
    where = ckpt.path
    check_run(ckpt, net, run, ("batch_size", "n_train"), epochs)
    n = run["n_train"]
    p = meta["position"]
    order = arrays.get("order")
    try:
        pos = _Position(int(p["epoch"]), int(p["step"]), int(p["global_step"]), [float(v) for v in p["losses"]],
                        float(p["seconds"]), order)  # fmt: skip
        history = [EpochStats(**e) for e in meta["history"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: its position or history is malformed ({exc})") from None
    if pos.step and (order is None or order.dtype.kind not in "iu" or not np.array_equal(np.sort(order), np.arange(n))):
        raise CheckpointError(f"{where} stops within an epoch but holds no order of its {n} rows")
    g = meta["np_random"]
    legacy = (g.get("name"), arrays.get("np_random/keys"), g.get("pos"), g.get("has_gauss"), g.get("cached_gaussian"))
    try:  # checked on scratch generators first: nothing is restored from a checkpoint that fails here
        np.random.default_rng().bit_generator.state = meta["batch_rng"]
        np.random.RandomState().set_state(legacy)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{where}: its random states cannot be restored ({exc})") from None
    restore_state(ckpt, net, optimizer)
    rng.bit_generator.state = meta["batch_rng"]
    np.random.set_state(legacy)  # noqa: NPY002 - the dropout keys' generator
    return pos, history


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
    *,
    checkpoint: str | PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str | PathLike | Checkpoint | None = None,
    options: dict | None = None,
    handle_signals: bool = True,
) -> History:
    """Mini-batch training: shuffle with ``seed`` each epoch, forward, backward, update.

    Parameters
    ----------
    net, optimizer
        A fastlayers net and optimizer (updated in place).
    train, test : (x, t) pairs
    epochs : int >= 1
        The epoch to end with (counting those a resumed run already finished).
    batch_size : int >= 1
    seed : int
        Seed of the batch order (a ``numpy.random.default_rng``). The dropout layers draw their keys
        from NumPy's global generator: seed it (``np.random.seed``) for a reproducible run.
    backend : {"numba", "numpy"}
    progress : callable, optional
        ``progress(iterable, desc)`` wraps the loop over epochs (e.g. tqdm).
    on_epoch : callable, optional
        Sees each epoch's :class:`EpochStats`, after that epoch's checkpoint was handed to the writer.
    checkpoint : str or path, optional
        Write a checkpoint here (:mod:`fastlayers.checkpoint`; atomically, in a thread of its own) at
        the end of every epoch, every ``checkpoint_every`` steps, and when a signal stops the run.
    checkpoint_every : int >= 1, optional
        Steps between checkpoints within epochs (counted over the whole run).
    resume : str, path or Checkpoint, optional
        Continue the run a checkpoint holds: the parameters, batch normalization statistics,
        optimizer state (hyper-parameters included), batch order, NumPy's global generator and history
        come from it; ``net`` and ``optimizer`` must be of the same classes and shapes, and
        ``batch_size`` and the training rows the same. A run resumed on the same machine with the same
        thread count ends with the parameters, bit for bit, of the same run never interrupted.
    options : dict, optional
        Plain (JSON) values kept in the checkpoint (the command line keeps its options there).
    handle_signals : bool, default True
        In the main thread, a SIGINT (Ctrl-C) or SIGTERM stops the run at the next step boundary:
        the checkpoint is written (when one was asked for) and :class:`Interrupted` is raised. A second
        signal raises ``KeyboardInterrupt`` at once. Elsewhere, or with False, signals are left alone.

    Returns
    -------
    History
        Every epoch's stats, those of a resumed run's earlier epochs included. Loss is the mean over
        the epoch's batches; accuracies are measured on the whole sets.

    Raises
    ------
    ValueError
        ``batch_size``, ``epochs`` or ``checkpoint_every`` below 1; ``epochs`` fewer than a resumed
        run has finished.
    fastlayers.checkpoint.CheckpointError
        ``resume`` is not a readable checkpoint, or not one of this net, optimizer and data.
    Interrupted
        A signal stopped the run.
    """
    x_train, t_train = train
    x_test, t_test = test
    n = x_train.shape[0]
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    rng = np.random.default_rng(seed)
    history = History(backend=backend)
    run = {"trainer": "fastlayers.train.fit", "epochs": epochs, "batch_size": batch_size, "seed": seed,
           "backend": backend, "n_train": n}  # fmt: skip
    pos = _Position()
    if resume is not None:
        ckpt = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
        pos, history.epochs = _resume(ckpt, net, optimizer, rng, run, epochs)
    path = None if checkpoint is None else os.fspath(checkpoint)
    writer = _Checkpoints(path) if path is not None else None
    epoch_numbers = range(pos.epoch, epochs + 1)
    if progress is not None:
        epoch_numbers = progress(epoch_numbers, f"{backend}")
    signals = _Signals(handle_signals)
    done = [asdict(e) for e in history.epochs]  # as the checkpoints keep them

    def snapshot() -> tuple:
        return _snapshot(net, optimizer, rng, pos, done, run, options)

    def stop() -> None:
        if writer is not None:
            writer.write(snapshot, force=True)
        raise Interrupted(signals.signum, path, pos.epoch, pos.step)

    with use_backend(backend), signals:
        for epoch in epoch_numbers:
            if pos.order is None:
                pos.order = rng.permutation(n)
            order = pos.order
            start = time.perf_counter()
            for lo in range(pos.step * batch_size, n, batch_size):
                idx = order[lo : lo + batch_size]
                grads = net.gradient(x_train[idx], t_train[idx])
                pos.losses.append(float(net.last_layer.loss))
                optimizer.update(net.params, grads)
                pos.step += 1
                pos.global_step += 1
                if signals.signum is not None:
                    pos.seconds += time.perf_counter() - start
                    stop()
                if writer is not None and checkpoint_every and pos.global_step % checkpoint_every == 0:
                    writer.write(snapshot, force=True)
            seconds = pos.seconds + time.perf_counter() - start
            stats = EpochStats(epoch, float(np.mean(pos.losses)), net.accuracy(x_train, t_train),
                               net.accuracy(x_test, t_test), seconds, n / seconds)  # fmt: skip
            history.epochs.append(stats)
            done.append(asdict(stats))
            pos = _Position(epoch + 1, 0, pos.global_step)
            if writer is not None:
                writer.write(snapshot, force=epoch == epochs)
            if on_epoch is not None:
                on_epoch(stats)
            if signals.signum is not None:
                stop()
    return history
