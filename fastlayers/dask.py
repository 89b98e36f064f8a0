"""Scale-out on Dask: batch inference and data-parallel training on a ``dask.array`` of rows.

An optional extra: ``pip install "fastlayers[dask]"`` (``dask[array]`` and ``distributed``). This
module is imported only explicitly (``import fastlayers.dask``); ``import fastlayers`` never imports
Dask.

- :func:`predict`, :func:`predict_proba`, :func:`accuracy`: any of the nets on a dask array of rows,
  with the default (threaded) scheduler or a ``distributed.Client``. The net enters the task graph
  once, under its own key (never as an argument copied into every task: Dask's ``sizeof`` does not
  see the arrays inside a Python object, dask-ml#842), so it reaches each worker once per call.
- :func:`fit`: synchronous data-parallel training, the data staying on the workers. Each global step
  takes a slice of every row block, each block's gradient is a task result under its own key, the
  gradients are added by a tree reduction, one task applies the optimizer step and the new parameters
  go out once. A lost worker's part is recomputed by Dask from the graph. ``mode="local"``: local SGD
  (each block takes ``local_steps`` steps on its own, then the parameters are averaged).
- :func:`gradient`: the gradient of the loss over all rows, by the same tree reduction.
- :func:`local_cluster`, :func:`connect`, :func:`check_workers`, :func:`worker_info`: clusters
  whose workers' Numba and BLAS threads follow their ``nthreads``.

Each task sets the Numba threads of its Python thread to the worker's ``nthreads`` (Numba's thread
count is per Python thread: a worker plugin could not set it for the task threads), and each task
thread works on its own copy of the net (the layers keep state between calls).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.sizeof import sizeof as _sizeof
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f'fastlayers.dask needs Dask ({exc}): pip install "fastlayers[dask]" (dask[array] and distributed)'
    ) from exc

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, LocalCluster

__all__ = [
    "predict",
    "predict_proba",
    "accuracy",
    "gradient",
    "fit",
    "reference_fit",
    "batch_plan",
    "global_batch",
    "local_cluster",
    "connect",
    "check_workers",
    "worker_info",
    "arrivals",
    "EpochRecord",
]

_INSTALL = 'pip install "fastlayers[dask]"'

from . import checkpoint as _ckpt  # noqa: E402 - after the check that Dask is installed
from . import train as _train  # noqa: E402


def _distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the extra installs it
        raise ImportError(f"this needs Dask's distributed scheduler ({exc}): {_INSTALL}") from exc
    return distributed


# ---------------------------------------------------------------------------------------------
# The net as one key: counted on arrival, sized for the scheduler, copied once per task thread
# ---------------------------------------------------------------------------------------------

#: How many times each shipped net was unpickled in this process, by token (see :func:`arrivals`).
_ARRIVALS: Counter[str] = Counter()
_ARRIVALS_LOCK = threading.Lock()


def _params_nbytes(params: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in params.values()))


def _layers_of(net) -> list:
    if callable(getattr(net, "_layer_list", None)):
        layers = list(net._layer_list())
    else:
        layers = list(getattr(net, "layers", {}).values())
    return [*layers, getattr(net, "last_layer", None)]


def _slim(net):
    """A copy of ``net`` without what its layers keep from their last calls (inputs, outputs,
    gradients, scratch memory), which may be far larger than the parameters: only the parameters,
    the batch-norm running statistics and the layers' settings travel."""
    params = {id(v) for v in net.params.values()}
    memo: dict[int, Any] = {}
    for layer in _layers_of(net):
        for name, value in vars(layer).items() if layer is not None else ():
            if name.startswith("running_") or id(value) in params:
                continue
            if isinstance(value, np.ndarray) or (
                isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value)
            ):
                memo[id(value)] = None  # the value a fresh layer has
            elif type(value).__name__ == "Workspace":
                memo[id(value)] = type(value)()
    return copy.deepcopy(net, memo)


class _Shipped:
    """A net travelling through the graph under one key; counts its arrivals in each process."""

    __slots__ = ("net", "token", "nbytes", "__weakref__")

    def __init__(self, net, token: str) -> None:
        self.net = net
        self.token = token
        self.nbytes = _params_nbytes(net.params)

    def __reduce__(self):
        return (_arrive, (self.net, self.token))


def _arrive(net, token: str) -> _Shipped:
    with _ARRIVALS_LOCK:
        _ARRIVALS[token] += 1
    box = _Shipped.__new__(_Shipped)
    box.net, box.token, box.nbytes = net, token, _params_nbytes(net.params)
    return box


@_sizeof.register(_Shipped)
def _sizeof_shipped(box: _Shipped) -> int:
    return box.nbytes + 1000


def arrivals(token: str | None = None) -> dict[str, int] | int:
    """How many times shipped nets arrived (were unpickled) in this process.

    Run it on the workers with ``client.run(fastlayers.dask.arrivals, token)`` to count how many
    times a call's net reached each worker.

    Parameters
    ----------
    token : str, optional
        One call's token (the ``fastlayers_token`` attribute of :func:`predict`'s result, or the
        ``token`` of :func:`fit`'s history).

    Returns
    -------
    int for one token, else a dict token -> count.
    """
    with _ARRIVALS_LOCK:
        return _ARRIVALS[token] if token is not None else dict(_ARRIVALS)


_local = threading.local()


def _own_net(box: _Shipped):
    """This thread's private copy of the shipped net (made once per thread and shipped net)."""
    clones = getattr(_local, "clones", None)
    if clones is None:
        clones = _local.clones = weakref.WeakKeyDictionary()
    net = clones.get(box)
    if net is None:
        net = clones[box] = copy.deepcopy(box.net)
    return net


def _load_params(net, params: dict) -> None:
    """Copy ``params`` into the net's own arrays (its layers hold references to them)."""
    for key, value in params.items():
        net.params[key][...] = value


# ---------------------------------------------------------------------------------------------
# Threads inside a task
# ---------------------------------------------------------------------------------------------


def _task_thread_count() -> int:
    from ._kernels._threads import num_threads_limit

    limit = num_threads_limit()
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:
            worker = None
        if worker is not None:
            return max(1, min(limit, int(worker.state.nthreads)))
    # the threaded scheduler runs one task per pool thread: share the Numba threads among them
    pool = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return max(1, limit // int(pool))


@contextmanager
def _task_threads() -> Iterator[None]:
    import fastlayers

    before = fastlayers.get_num_threads()
    fastlayers.set_num_threads(_task_thread_count())
    try:
        yield
    finally:
        fastlayers.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Argument checks (all before anything is submitted)
# ---------------------------------------------------------------------------------------------


def _check_net(net) -> None:
    params = getattr(net, "params", None)
    if not isinstance(params, dict) or not callable(getattr(net, "predict", None)):
        raise TypeError(f"net must be one of fastlayers' nets (params and predict), got {type(net).__name__}")


def _check_rows(X, name: str, min_ndim: int = 1) -> da.Array:
    if not isinstance(X, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array with rows along axis 0, got {type(X).__module__}.{type(X).__name__}"
            f" (wrap it: dask.array.from_array({name}, chunks=(rows_per_block, ...)))"
        )
    if X.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {X.shape}")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} has unknown row chunk sizes; call {name}.compute_chunk_sizes() first")
    return X


def _whole_rows(X: da.Array) -> da.Array:
    """X with every axis but the rows in one block (rechunked when needed)."""
    if all(len(c) == 1 for c in X.chunks[1:]):
        return X
    return X.rechunk({i: -1 for i in range(1, X.ndim)})


def _check_targets(X: da.Array, t, name: str = "t") -> da.Array:
    t = _check_rows(t, name)
    if t.shape[0] != X.shape[0]:
        raise ValueError(f"{name} has {t.shape[0]} rows but X has {X.shape[0]} (shapes {t.shape} and {X.shape})")
    if t.chunks[0] != X.chunks[0]:
        raise ValueError(
            f"{name} and X must have the same row chunks, got {t.chunks[0]} and {X.chunks[0]} "
            f"(rechunk one: {name}.rechunk({{0: X.chunks[0]}}))"
        )
    if t.ndim > 2:
        raise ValueError(f"{name} must be labels (N,) or one-hot rows (N, classes), got shape {t.shape}")
    return _whole_rows(t) if t.ndim == 2 else t


def _probe(box: _Shipped, X: da.Array) -> tuple[int, np.dtype]:
    """Output width and dtype, from one zero row through the net here (which also checks the shapes)."""
    y = _own_net(box).predict(np.zeros((1, *X.shape[1:]), X.dtype))
    return int(y.shape[1]), y.dtype


def _default_client():
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_client() if distributed.client._get_global_client() is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def _predict_block(xb: np.ndarray, box: _Shipped, proba: bool, width: int, dtype: np.dtype) -> np.ndarray:
    if xb.shape[0] == 0:
        return np.empty((0, width), dtype)
    net = _own_net(box)
    with _task_threads():
        y = net.predict(xb)
        if proba:
            from .functional import softmax

            y = softmax(y)
    return y


def _scores(net, X, proba: bool, name: str) -> da.Array:
    _check_net(net)
    X = _whole_rows(_check_rows(X, "X", 2))
    client = _default_client()
    if client is not None:
        _check_new_workers(client)
    token = uuid.uuid4().hex
    box = _Shipped(_slim(net), token)
    width, dtype = _probe(box, X)
    net_key = dask.delayed(box, name=f"fastlayers-net-{token}", traverse=False)
    out = X.map_blocks(
        _predict_block,
        net_key,
        proba,
        width,
        dtype,
        dtype=dtype,
        chunks=(X.chunks[0], (width,)),
        drop_axis=list(range(2, X.ndim)) or None,
        name=f"fastlayers-{name}-{token}",
        meta=np.empty((0, width), dtype),
    )
    out.fastlayers_token = token  # type: ignore[attr-defined]
    return out


def predict(net, X: da.Array) -> da.Array:
    """The net's scores (before the softmax) for every row of ``X``, lazily, block by block.

    Parameters
    ----------
    net : TwoLayerNet, MultiLayerNet, MultiLayerNetExtend, SimpleConvNet or DeepConvNet
        Used as it is now (test mode); the net enters the graph once, under its own key.
    X : dask.array.Array, shape (N, features) or (N, C, H, W)
        Rows in any chunking along axis 0; the other axes are rechunked into one block if needed.

    Returns
    -------
    dask.array.Array, shape (N, classes), chunks ``(X.chunks[0], (classes,))``, in the dtype
    ``net.predict`` gives for ``X``'s dtype. Its ``fastlayers_token`` attribute names the shipped
    net for :func:`arrivals`.

    Raises
    ------
    TypeError
        ``X`` is not a dask array; ``net`` is not a fastlayers net.
    ValueError
        ``X`` has unknown row chunks or rows of a shape the net does not take (from the net's own
        checks on one probe row, before anything is submitted).
    RuntimeError
        With a ``distributed`` client as default: a worker cannot import fastlayers (named).
    """
    return _scores(net, X, False, "predict")


def predict_proba(net, X: da.Array) -> da.Array:
    """Softmax probabilities of every row of ``X``: as :func:`predict`, each row summing to 1.

    Parameters
    ----------
    net, X : as :func:`predict`

    Returns
    -------
    dask.array.Array, shape (N, classes), same chunks and dtype as :func:`predict`.

    Raises
    ------
    As :func:`predict`.
    """
    return _scores(net, X, True, "proba")


def accuracy(net, X: da.Array, t: da.Array) -> float:
    """Fraction of rows of ``X`` whose highest score is the target class (computed now).

    Parameters
    ----------
    net, X : as :func:`predict`
    t : dask.array.Array
        Integer labels (N,) or one-hot rows (N, classes), with ``X``'s row chunks.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``X`` or ``t`` is not a dask array.
    ValueError
        ``t`` with another number of rows or other row chunks than ``X``; as :func:`predict`.
    """
    X = _check_rows(X, "X", 2)
    t = _check_targets(X, t)
    labels = t.argmax(axis=1) if t.ndim == 2 else t
    hits = (predict(net, X).argmax(axis=1) == labels).sum()
    return float(hits.compute()) / X.shape[0]


# ---------------------------------------------------------------------------------------------
# Global batches
# ---------------------------------------------------------------------------------------------


def batch_plan(row_chunks: Sequence[int], batch_size: int) -> tuple[list[int], int]:
    """How many rows each row block gives to every global batch, and the steps per epoch.

    Block ``b`` of ``n_b`` rows gives ``m_b`` rows, ``m_b`` proportional to ``n_b`` (largest
    remainders), ``sum(m_b) == batch_size``; an epoch has ``min(n_b // m_b)`` steps, each block's
    rows taken in an order drawn per epoch and block.

    Parameters
    ----------
    row_chunks : sequence of int
        The rows of each block (``X.chunks[0]``).
    batch_size : int
        Rows per global step, at least the number of non-empty blocks, at most the rows.

    Returns
    -------
    (list of m_b, steps per epoch)

    Raises
    ------
    ValueError
        ``batch_size`` out of that range.
    """
    sizes = [int(n) for n in row_chunks]
    total = sum(sizes)
    blocks = sum(1 for n in sizes if n > 0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if not blocks <= batch_size <= total:
        raise ValueError(
            f"batch_size must be from {blocks} (one row from each of the {blocks} row blocks of X) to {total} "
            f"(the rows of X), got {batch_size}; rechunk X into fewer blocks for a smaller batch"
        )
    exact = [batch_size * n / total for n in sizes]
    shares = [int(math.floor(e)) for e in exact]
    # every non-empty block gives at least one row; the rest by largest remainders
    for b, n in enumerate(sizes):
        if n > 0 and shares[b] == 0:
            shares[b] = 1
    order = sorted(range(len(sizes)), key=lambda b: (shares[b] - exact[b], b))
    i = 0
    while sum(shares) < batch_size:
        b = order[i % len(order)]
        if shares[b] < sizes[b]:
            shares[b] += 1
        i += 1
    while sum(shares) > batch_size:
        b = max((b for b in range(len(sizes)) if shares[b] > 1), key=lambda b: (shares[b] - exact[b], -b))
        shares[b] -= 1
    steps = min(n // m for n, m in zip(sizes, shares, strict=True) if m > 0)
    return shares, steps


_PERMS: dict[tuple[int, int, int, int], np.ndarray] = {}
_PERMS_LOCK = threading.Lock()


def _order(seed: int, epoch: int, block: int, n: int) -> np.ndarray:
    """The order of block ``block``'s rows in epoch ``epoch`` (cached: a few recent ones)."""
    key = (seed, epoch, block, n)
    with _PERMS_LOCK:
        perm = _PERMS.get(key)
    if perm is None:
        perm = np.random.default_rng([seed, epoch, block]).permutation(n)
        perm.flags.writeable = False
        with _PERMS_LOCK:
            if len(_PERMS) > 64:
                _PERMS.clear()
            _PERMS[key] = perm
    return perm


def global_batch(row_chunks: Sequence[int], batch_size: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """The rows (indices into the whole ``X``) of one global batch of :func:`fit`, block by block.

    Parameters
    ----------
    row_chunks, batch_size : as :func:`batch_plan`
    seed, epoch, step : int
        As :func:`fit` numbers them (epochs and steps from 0).

    Returns
    -------
    int64 array of ``batch_size`` row indices.
    """
    shares, _ = batch_plan(row_chunks, batch_size)
    offsets = np.concatenate([[0], np.cumsum(row_chunks)])
    parts = []
    for b, (n, m) in enumerate(zip(row_chunks, shares, strict=True)):
        if m:
            parts.append(offsets[b] + _order(seed, epoch, b, int(n))[step * m : (step + 1) * m])
    return np.concatenate(parts).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Gradients and steps, as tasks
# ---------------------------------------------------------------------------------------------

_LOSS = "__loss__"


def _slice_grad(box: _Shipped, params: dict, xb, tb, rows, weight: float) -> dict:
    """``weight`` x the gradient (and loss) of the net at ``params`` on rows ``rows`` of one block."""
    net = _own_net(box)
    _load_params(net, params)
    if rows is not None:
        xb, tb = xb[rows], tb[rows]
    with _task_threads():
        grads = net.gradient(xb, tb)
        out = {k: g * g.dtype.type(weight) for k, g in grads.items()}
        out[_LOSS] = np.float64(weight) * float(net.last_layer.loss)
    return out


def _block_grad(box, state, xb, tb, seed, epoch, step, block, m, weight):
    params = state[0]
    rows = _order(seed, epoch, block, xb.shape[0])[step * m : (step + 1) * m]
    return _slice_grad(box, params, xb, tb, rows, weight)


def _add(*parts: dict) -> dict:
    total = {k: v.copy() for k, v in parts[0].items()}
    for part in parts[1:]:
        for k, v in part.items():
            total[k] += v
    return total


def _apply(state: tuple, *parts: dict) -> tuple:
    """One optimizer step: (params, optimizer, losses) and the partial gradient sums -> the next state."""
    params, optimizer, losses = state
    grads = _add(*parts)
    loss = float(grads.pop(_LOSS))
    params = {k: v.copy() for k, v in params.items()}
    optimizer = copy.deepcopy(optimizer)
    with _task_threads():
        optimizer.update(params, grads)
    return params, optimizer, (*losses, loss)


def _local_round(box, state, xb, tb, seed, epoch, first, k, block, m, weight):
    """Local SGD: ``k`` steps on one block's own slices from the shared state; weighted results."""
    params, optimizer, _ = state
    net = _own_net(box)
    params = {key: v.copy() for key, v in params.items()}
    optimizer = copy.deepcopy(optimizer)
    losses = []
    for step in range(first, first + k):
        rows = _order(seed, epoch, block, xb.shape[0])[step * m : (step + 1) * m]
        g = _slice_grad(box, params, xb, tb, rows, 1.0)
        losses.append(float(g.pop(_LOSS)))
        optimizer.update(params, g)
    del net
    out = {f"p:{key}": v * v.dtype.type(weight) for key, v in params.items()}
    for key, st in optimizer.state.items():
        for name, arr in st.items():
            out[f"s:{key}:{name}"] = arr * arr.dtype.type(weight)
    out[_LOSS] = np.asarray([weight * v for v in losses])
    out["__optimizer__"] = optimizer
    return out


def _add_local(*parts: dict) -> dict:
    total = {k: (v if k == "__optimizer__" else v.copy()) for k, v in parts[0].items()}
    for part in parts[1:]:
        for k, v in part.items():
            if k != "__optimizer__":
                total[k] += v
    return total


def _average(state: tuple, *parts: dict) -> tuple:
    """The weighted mean of the blocks' parameters and optimizer states after a local round."""
    _, _, losses = state
    total = _add_local(*parts)
    optimizer = copy.deepcopy(total.pop("__optimizer__"))
    step_losses = total.pop(_LOSS)
    params = {key[2:]: v for key, v in total.items() if key.startswith("p:")}
    for key, v in total.items():
        if key.startswith("s:"):
            _, pkey, name = key.split(":", 2)
            optimizer.state[pkey][name] = v
    return params, optimizer, (*losses, *map(float, step_losses))


def _restart(state: tuple) -> tuple:
    """An epoch's starting state: the previous epoch's parameters and optimizer, no losses yet."""
    params, optimizer, _ = state
    return params, optimizer, ()


def _tree(parts: list, combine: Callable, name: str, split_every: int) -> list:
    """Add ``parts`` in groups of ``split_every`` until at most ``split_every`` are left (fixed order)."""
    level = 0
    while len(parts) > split_every:
        parts = [
            dask.delayed(combine, pure=False)(*parts[i : i + split_every], dask_key_name=f"{name}-add{level}-{i}")
            for i in range(0, len(parts), split_every)
        ]
        level += 1
    return parts


# ---------------------------------------------------------------------------------------------
# Running graphs
# ---------------------------------------------------------------------------------------------


def _compute(obj, client, timeout: float | None):
    if client is None:
        return dask.compute(obj, scheduler="threads")[0]
    future = client.compute(obj)
    try:
        return future.result(timeout=timeout)
    finally:
        future.release()


def _resolve_client(client):
    if client is None:
        return _default_client()
    distributed = _distributed()
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client or None, got {type(client).__name__}")
    return client


def _prepare_data(X, t, client):
    X = _whole_rows(_check_rows(X, "X", 2))
    t = _check_targets(X, t)
    if client is not None:
        X, t = client.persist([X, t])
    else:
        X, t = dask.persist(X, t, scheduler="threads")
    return X, t


def gradient(net, X: da.Array, t: da.Array, client: Client | None = None, *, split_every: int = 8,
             timeout: float | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Gradient of the net's mean loss over all rows of ``X``, each block's part a task, added by a
    tree reduction (what one step of :func:`fit` computes, on the whole of ``X``).

    Parameters
    ----------
    net : a fastlayers net (at its current parameters)
    X : dask.array.Array, shape (N, ...)
    t : dask.array.Array, labels (N,) or one-hot rows (N, classes), with ``X``'s row chunks
    client : distributed.Client, optional
        Default: the default client if there is one, else the threaded scheduler.
    split_every : int, default 8
        Fan-in of the tree reduction.
    timeout : float, optional
        Seconds to wait for the result on a client.

    Returns
    -------
    dict keyed like ``net.params``, each array shaped like its parameter, in the gradient's dtype.
    Equal to ``net.gradient(x, t)`` on the whole data up to the order of the additions.

    Raises
    ------
    TypeError, ValueError
        As :func:`fit`.
    """
    _check_net(net)
    client = _resolve_client(client)
    if client is not None:
        _check_new_workers(client)
    X, t = _prepare_data(X, t, client)
    token = uuid.uuid4().hex
    box = _Shipped(_slim(net), token)
    _probe(box, X)
    net_key = dask.delayed(box, name=f"fastlayers-net-{token}", traverse=False)
    params = dask.delayed({k: np.array(v) for k, v in net.params.items()}, name=f"fastlayers-params-{token}",
                          traverse=False)  # fmt: skip
    total = X.shape[0]
    parts = [
        dask.delayed(_slice_grad, pure=False)(
            net_key, params, xb, tb, None, n / total, dask_key_name=f"fastlayers-grad-{token}-{b}"
        )  # fmt: skip
        for b, (xb, tb, n) in enumerate(zip(X.to_delayed().ravel(), t.to_delayed().ravel(), X.chunks[0], strict=True))
        if n > 0
    ]
    parts = _tree(parts, _add, f"fastlayers-grad-{token}", split_every)
    result = _compute(dask.delayed(_add, pure=False)(*parts, dask_key_name=f"fastlayers-gradsum-{token}"), client,
                      timeout)  # fmt: skip
    result.pop(_LOSS)
    return result


@dataclass
class EpochRecord:
    """One epoch of :func:`fit`."""

    epoch: int
    loss: float  #: mean of the epoch's global-batch losses
    steps: int
    seconds: float
    rows_per_s: float


@dataclass
class DaskHistory:
    """What :func:`fit` returns: the epochs, the shipped net's token, the batch plan."""

    token: str
    mode: str
    shares: list[int]
    steps_per_epoch: int
    epochs: list[EpochRecord] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)


def _fit_snapshot(net, optimizer, run: dict, done: int, history: DaskHistory, options: dict | None) -> tuple:
    """The checkpoint of :func:`fit` after ``done`` epochs, packed."""
    meta, arrays = _ckpt.state_of(net, optimizer)
    meta.update({
        "run": run,
        "options": options or {},
        "position": {"epoch": done + 1, "step": 0, "global_step": done * history.steps_per_epoch, "losses": [],
                     "seconds": 0.0},
        "batch_rng": {},
        "np_random": {},
        "history": [dataclasses.asdict(e) for e in history.epochs],
        "step_losses": list(history.step_losses),
    })  # fmt: skip
    return _ckpt.pack(meta, arrays)


def _resume_fit(resume, net, optimizer, run: dict, epochs: int, history: DaskHistory) -> int:
    """Restore a :func:`fit` run from its checkpoint; the number of epochs it finished."""
    ckpt = resume if isinstance(resume, _ckpt.Checkpoint) else _ckpt.load_checkpoint(resume)
    done = _ckpt.check_run(ckpt, net, run, ("batch_size", "seed", "mode", "local_steps", "row_chunks"), epochs)
    meta = ckpt.meta
    _ckpt.restore_state(ckpt, net, optimizer)
    history.epochs.extend(EpochRecord(**e) for e in meta["history"])
    history.step_losses.extend(meta.get("step_losses", []))
    return done


def fit(
    net,
    optimizer,
    X: da.Array,
    t: da.Array,
    epochs: int,
    batch_size: int,
    client: Client | None = None,
    *,
    seed: int = 0,
    mode: str = "sync",
    local_steps: int = 8,
    split_every: int = 8,
    timeout: float | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | Any = None,
    options: dict | None = None,
    handle_signals: bool = True,
) -> DaskHistory:
    """Data-parallel training of ``net`` with ``optimizer`` on the row blocks of ``X``, ``t``.

    The blocks are persisted where they are computed (on the workers with a client) and stay there.
    ``mode="sync"``: each global step takes ``m_b`` rows of every block ``b`` (:func:`batch_plan`:
    ``sum(m_b) == batch_size``, rows in an order drawn per epoch and block, :func:`global_batch`);
    each block's weighted gradient ``m_b / batch_size * grad_b`` at the current parameters is a task
    result under its own key, the parts are added by a tree reduction of fan-in ``split_every``, one
    task applies ``optimizer.update`` and its result (the new parameters) is what the next step's
    tasks read. The result equals single-process training on the same global batches
    (:func:`reference_fit`) up to the order of the additions: about 1e-12 relative in float64 after
    hundreds of steps, 1e-5 in float32 (tested). ``mode="local"``: local SGD: each block takes
    ``local_steps`` steps of ``m_b`` rows with its own copy of the parameters and optimizer state,
    then parameters and optimizer states are averaged (weighted by ``m_b``): one round trip per
    ``local_steps`` steps, with a (measured) cost in accuracy.

    Each epoch is one graph, submitted at once: the state at its end comes back here (``net.params``
    and ``optimizer`` are updated in place after every epoch), so a lost worker costs at most the
    recomputation of the lost keys of the epochs in flight, and no result is lost or counted twice.
    On a client the next epoch's graph is submitted before this one's state comes back, reading it
    on the workers: they do not wait for this process between epochs, and tasks waiting for the net
    keep its copies on the workers (the scheduler's Active Memory Manager drops the replicas of a key
    that no task waits for, and the net would travel again; it still may when this process spends
    longer between two epochs, in a checkpoint or ``on_epoch``, than the workers take for one). An
    epoch's ``seconds`` run from the previous epoch's state coming back (or the start) to this one's.

    Parameters
    ----------
    net : TwoLayerNet, MultiLayerNet, MultiLayerNetExtend (without batch normalization),
        SimpleConvNet or DeepConvNet
    optimizer : a fastlayers optimizer (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
    X : dask.array.Array, shape (N, features) or (N, C, H, W), float32 or float64
    t : dask.array.Array, integer labels (N,) or one-hot rows (N, classes), with ``X``'s row chunks
    epochs : int >= 1
    batch_size : int
        Rows per global step, from the number of non-empty row blocks to N.
    client : distributed.Client, optional
        Default: the default client if there is one, else the threaded scheduler (one process).
    seed : int, default 0
        Seed of the rows' order (per epoch and block).
    mode : {"sync", "local"}
    local_steps : int >= 1, default 8
        Steps between averages in ``mode="local"`` (the last round of an epoch may be shorter).
    split_every : int >= 2, default 8
        Fan-in of the tree reduction.
    timeout : float, optional
        Seconds to wait for each epoch on a client (``TimeoutError`` past it).
    on_epoch : callable, optional
        Called with each :class:`EpochRecord`, after ``net`` and ``optimizer`` were updated.
    checkpoint : str or path, optional
        Write a checkpoint (:mod:`fastlayers.checkpoint`, atomically) in this (the coordinating)
        process at the end of every epoch and when a signal stops the run: the parameters, the
        optimizer's state, the position and the history. The batches need no random state: they are a
        function of ``seed``, the epoch, the step and the block.
    resume : str, path or fastlayers.checkpoint.Checkpoint, optional
        Continue the run a checkpoint of this function holds (same net and optimizer classes, the same
        ``batch_size``, ``seed``, ``mode``, ``local_steps`` and row chunks); ``epochs`` is the epoch to
        end with. The result equals the run never interrupted, as Dask computes it.
    options : dict, optional
        Plain (JSON) values kept in the checkpoint.
    handle_signals : bool, default True
        In the main thread, a SIGINT or SIGTERM stops the run when the epoch in flight is done (an
        epoch is one graph; the next one, already submitted, is cancelled): the checkpoint is
        written, then :class:`fastlayers.train.Interrupted` is raised. A second signal raises
        ``KeyboardInterrupt`` at once (that epoch is lost).

    Returns
    -------
    DaskHistory

    Raises
    ------
    TypeError
        ``X`` or ``t`` not a dask array; ``client`` not a ``distributed.Client``; ``net`` not a net.
    ValueError
        Other rows or row chunks in ``t`` than in ``X``; ``batch_size`` out of range; a net with
        batch normalization; ``mode``, ``epochs``, ``local_steps`` or ``split_every`` out of range.
    RuntimeError
        A worker cannot import fastlayers (named).
    fastlayers.checkpoint.CheckpointError
        ``resume`` is not a readable checkpoint of this function, net, optimizer and run.
    fastlayers.train.Interrupted
        A signal stopped the run.
    """
    _check_net(net)
    if getattr(net, "use_batchnorm", False):
        raise ValueError(
            "fit does not train batch normalization across workers (its statistics would be per block); "
            "use a net without use_batchnorm"
        )
    if mode not in ("sync", "local"):
        raise ValueError(f"mode must be 'sync' or 'local', got {mode!r}")
    for value, name, low in ((epochs, "epochs", 1), (local_steps, "local_steps", 1), (split_every, "split_every", 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimizer must have update(params, grads), got {type(optimizer).__name__}")
    client = _resolve_client(client)
    X0 = _check_rows(X, "X", 2)
    _check_targets(X0, t)
    shares, steps = batch_plan(X0.chunks[0], batch_size)
    if client is not None:
        _check_new_workers(client)
    token = uuid.uuid4().hex
    box = _Shipped(_slim(net), token)
    _probe(box, X0)
    X, t = _prepare_data(X, t, client)
    net_key = dask.delayed(box, name=f"fastlayers-net-{token}", traverse=False)
    if client is not None:
        (net_key,) = client.persist([net_key])
    blocks = [
        (b, xb, tb, int(n), m)
        for b, (xb, tb, n, m) in enumerate(
            zip(X.to_delayed().ravel(), t.to_delayed().ravel(), X.chunks[0], shares, strict=True)
        )
        if m > 0
    ]
    history = DaskHistory(token=token, mode=mode, shares=shares, steps_per_epoch=steps)
    run = {"trainer": "fastlayers.dask.fit", "batch_size": int(batch_size), "seed": int(seed), "mode": mode,
           "local_steps": int(local_steps), "row_chunks": [int(n) for n in X0.chunks[0]]}  # fmt: skip
    done = 0
    if resume is not None:
        done = _resume_fit(resume, net, optimizer, run, epochs, history)
    path = None if checkpoint is None else os.fspath(checkpoint)
    signals = _train._Signals(handle_signals)
    state = ({k: np.array(v) for k, v in net.params.items()}, copy.deepcopy(optimizer), ())

    def graph(epoch: int, start):
        """The delayed state at the end of ``epoch``, from ``start``: the state at its beginning, or
        (on a client) the future of the previous epoch's end, read without its losses."""
        name = f"fastlayers-{token}-e{epoch}"
        if client is not None and isinstance(start, _distributed().Future):
            node = dask.delayed(_restart, pure=False)(start, dask_key_name=f"{name}-state")
        else:
            node = dask.delayed(start, name=f"{name}-state", traverse=False)
        if mode == "sync":
            for step in range(steps):
                parts = [
                    dask.delayed(_block_grad, pure=False)(net_key, node, xb, tb, seed, epoch, step, b, m,
                                                          m / batch_size, dask_key_name=f"{name}-s{step}-grad-{b}")
                    for b, xb, tb, _, m in blocks
                ]  # fmt: skip
                parts = _tree(parts, _add, f"{name}-s{step}", split_every)
                node = dask.delayed(_apply, pure=False)(node, *parts, dask_key_name=f"{name}-s{step}-state")
        else:
            for s0 in range(0, steps, local_steps):
                k = min(local_steps, steps - s0)
                parts = [
                    dask.delayed(_local_round, pure=False)(net_key, node, xb, tb, seed, epoch, s0, k, b, m,
                                                           m / batch_size, dask_key_name=f"{name}-r{s0}-local-{b}")
                    for b, xb, tb, _, m in blocks
                ]  # fmt: skip
                parts = _tree(parts, _add_local, f"{name}-r{s0}", split_every)
                node = dask.delayed(_average, pure=False)(node, *parts, dask_key_name=f"{name}-r{s0}-state")
        return node

    ahead = None  # the next epoch, submitted before this one's result is back (client only)
    start = time.perf_counter()
    with signals:
        try:
            for epoch in range(done, epochs):
                if client is None:
                    start = time.perf_counter()
                    state = _compute(graph(epoch, state), None, timeout)
                else:
                    future = ahead if ahead is not None else client.compute(graph(epoch, state))
                    ahead = client.compute(graph(epoch + 1, future)) if epoch + 1 < epochs else None
                    try:
                        state = future.result(timeout=timeout)
                    finally:
                        future.release()
                params, new_optimizer, losses = state
                state = (params, new_optimizer, ())
                _load_params(net, params)
                optimizer.__dict__.update(copy.deepcopy(new_optimizer).__dict__)
                now = time.perf_counter()
                seconds, start = now - start, now
                record = EpochRecord(epoch + 1, float(np.mean(losses)), steps, seconds, steps * batch_size / seconds)
                history.epochs.append(record)
                history.step_losses.extend(losses)
                if path is not None:
                    _ckpt.write_packed(path, *_fit_snapshot(net, optimizer, run, epoch + 1, history, options))
                if on_epoch is not None:
                    on_epoch(record)
                if signals.signum is not None:
                    raise _train.Interrupted(signals.signum, path, epoch + 2, 0)
        finally:
            if ahead is not None:
                ahead.cancel()
                ahead.release()
    return history


def reference_fit(net, optimizer, X: np.ndarray, t: np.ndarray, row_chunks: Sequence[int], epochs: int,
                  batch_size: int, *, seed: int = 0) -> list[float]:  # fmt: skip
    """Single-process twin of ``fit(mode="sync")``: the same global batches, one process, no Dask.

    Parameters
    ----------
    net, optimizer : as :func:`fit` (updated in place)
    X : ndarray, shape (N, ...)
    t : ndarray, labels (N,) or one-hot rows (N, classes)
    row_chunks : sequence of int
        The row chunks :func:`fit` saw (``X.chunks[0]`` of the dask array).
    epochs, batch_size, seed : as :func:`fit`

    Returns
    -------
    list of float: the loss of every global batch.

    Raises
    ------
    ValueError
        ``row_chunks`` do not add up to the rows of ``X``; ``batch_size`` out of range.
    """
    if sum(row_chunks) != len(X) or len(t) != len(X):
        raise ValueError(f"row_chunks add up to {sum(row_chunks)} rows; X has {len(X)} and t {len(t)}")
    _, steps = batch_plan(row_chunks, batch_size)
    losses = []
    for epoch in range(epochs):
        for step in range(steps):
            rows = global_batch(row_chunks, batch_size, seed, epoch, step)
            grads = net.gradient(X[rows], t[rows])
            losses.append(float(net.last_layer.loss))
            optimizer.update(net.params, grads)
    return losses


# ---------------------------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------------------------

#: The thread variables set in each worker before it starts.
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Those the nanny sets in its own process before spawning the worker (``pre-spawn-environ``:
#: BLAS libraries read them when NumPy loads, before any Dask code runs in the worker).
#: ``NUMBA_NUM_THREADS`` goes through ``distributed.nanny.environ`` instead, set in the worker
#: process before it runs anything (Numba is imported by the first task): the nanny's process is
#: the caller's, where Numba re-reads ``NUMBA_NUM_THREADS`` at each compilation and raises when it
#: differs from the thread count it launched with.
PRE_SPAWN_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **kwargs: Any) -> LocalCluster:
    """A ``distributed.LocalCluster`` of worker processes on 127.0.0.1 whose Numba and BLAS threads
    follow ``threads_per_worker``, in place before the worker imports NumPy or Numba, and after a
    restart too (:data:`PRE_SPAWN_VARIABLES` through ``distributed.nanny.pre-spawn-environ``,
    ``NUMBA_NUM_THREADS`` through ``distributed.nanny.environ``, so that the caller's own Numba
    never sees it change).

    Parameters
    ----------
    n_workers : int >= 1, default 2
    threads_per_worker : int >= 1, default 1
    **kwargs
        More ``LocalCluster`` arguments (no dashboard; the scheduler's HTTP server on a free port).

    Returns
    -------
    distributed.LocalCluster (close it, or use it as a context manager).

    Raises
    ------
    ValueError
        ``n_workers`` or ``threads_per_worker`` below 1.
    """
    distributed = _distributed()
    for value, name in ((n_workers, "n_workers"), (threads_per_worker, "threads_per_worker")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update({name: str(threads_per_worker) for name in PRE_SPAWN_VARIABLES})
    in_worker = dict(dask.config.get("distributed.nanny.environ", {}) or {})
    in_worker["NUMBA_NUM_THREADS"] = str(threads_per_worker)
    # no dashboard, and its HTTP server (health, metrics) on a free port rather than 8787
    kwargs.setdefault("dashboard_address", "127.0.0.1:0")
    kwargs.setdefault("scheduler_kwargs", {"dashboard": False})
    kwargs.setdefault("silence_logs", 40)
    before = {name: os.environ.get(name) for name in PRE_SPAWN_VARIABLES}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, "distributed.nanny.environ": in_worker}):
            return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                            processes=True, host="127.0.0.1", **kwargs)  # fmt: skip
    finally:  # the nanny wrote them into this process (again at each worker restart): undo that here
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: What the import check evaluates on each worker (builtins only, so that it runs there even
#: when fastlayers does not import).
_IMPORT_PROBE = "__import__('fastlayers.dask').__version__"


def check_workers(client: Client, timeout: float = 30.0) -> dict[str, str]:
    """Check that every worker imports ``fastlayers.dask``; name those that do not.

    Parameters
    ----------
    client : distributed.Client
    timeout : float, default 30
        Seconds to wait for the workers' answers.

    Returns
    -------
    dict worker address -> fastlayers version there.

    Raises
    ------
    RuntimeError
        The cluster has no worker, or some workers cannot import fastlayers (each named, with its error).
    """
    answers = client.run(eval, _IMPORT_PROBE, on_error="return")
    if not answers:
        raise RuntimeError(f"the Dask cluster at {client.scheduler.address} has no worker")
    bad = {addr: value for addr, value in answers.items() if isinstance(value, BaseException)}
    if bad:
        lines = "; ".join(f"{addr}: {type(err).__name__}: {err}" for addr, err in sorted(bad.items()))
        raise RuntimeError(f"{len(bad)} of {len(answers)} Dask workers cannot import fastlayers.dask ({lines}); "
                           f'install it there: {_INSTALL}')  # fmt: skip
    return answers


#: per client, the worker addresses :func:`check_workers` found able to import fastlayers
_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_new_workers(client: Client) -> None:
    """:func:`check_workers` when the client sees a worker not checked yet (a new or restarted
    worker has a new address): a round trip to every worker, once per worker, not once per call."""
    workers = set(client.scheduler_info().get("workers", {}))
    seen = _checked.get(client)
    if workers and seen is not None and workers <= seen:
        return
    _checked[client] = set(check_workers(client)) | (seen or set())


def connect(scheduler: str, timeout: float = 10.0) -> tuple[Client, LocalCluster | None]:
    """A client for ``"local:N"`` (a new :func:`local_cluster` of N one-thread workers) or for an
    existing scheduler at ``"tcp://HOST:PORT"``; its workers checked with :func:`check_workers`.

    Parameters
    ----------
    scheduler : str
    timeout : float, default 10
        Seconds to reach the scheduler.

    Returns
    -------
    (client, cluster): the cluster is None for an existing scheduler. Close both when done.

    Raises
    ------
    ValueError
        ``scheduler`` is neither form.
    OSError
        The scheduler cannot be reached within ``timeout`` (the message names it).
    RuntimeError
        A worker cannot import fastlayers (named).
    """
    distributed = _distributed()
    if not isinstance(scheduler, str):
        raise TypeError(f"scheduler must be a string 'local:N' or 'tcp://HOST:PORT', got {scheduler!r}")
    cluster = None
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler[6:])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"scheduler 'local:N' needs a number of workers N >= 1, got {scheduler!r}")
        cluster = local_cluster(n, 1)
        client = distributed.Client(cluster, timeout=timeout)
    elif "://" in scheduler:
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except OSError as exc:
            raise OSError(f"could not reach the Dask scheduler at {scheduler} within {timeout:g} s ({exc})") from None
    else:
        raise ValueError(f"scheduler must be 'local:N' or 'tcp://HOST:PORT', got {scheduler!r}")
    try:
        check_workers(client)
    except BaseException:
        client.close()
        if cluster is not None:
            cluster.close()
        raise
    return client, cluster


def _info_here(dask_worker=None) -> dict:
    from ._info import info
    from ._kernels._threads import num_threads_limit

    data = info()
    nthreads = int(dask_worker.state.nthreads) if dask_worker is not None else None
    data["worker_nthreads"] = nthreads
    data["task_threads"] = max(1, min(num_threads_limit(), nthreads or 1))
    data["environ"] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    return data


def worker_info(client: Client) -> dict[str, dict]:
    """``python -m fastlayers info`` on every worker: the threading layer, Numba's threads, BLAS...

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict worker address -> the info dict, plus ``worker_nthreads`` (the worker's task threads),
    ``task_threads`` (the Numba threads a task sets) and ``environ`` (the thread variables there).
    """
    return client.run(_info_here)


# ---------------------------------------------------------------------------------------------
# Command line: python -m fastlayers train --scheduler ...
# ---------------------------------------------------------------------------------------------


def cli_train(args, data, net, optimizer, options: dict | None = None) -> int:
    """``train --scheduler``: ``fit`` on a cluster, one row block per worker; accuracies measured here;
    ``--checkpoint``/``--resume`` as ``fit``'s ``checkpoint``/``resume`` (``options``: the run's)."""
    (x_train, t_train), (x_test, t_test) = data
    try:
        client, cluster = connect(args.scheduler)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        n_workers = len(client.scheduler_info()["workers"])
        rows = -(-len(x_train) // n_workers)
        X = da.from_array(x_train, chunks=(rows, *x_train.shape[1:]))
        t = da.from_array(t_train, chunks=(rows,))
        print(f"dask: {args.scheduler}, {n_workers} workers, row blocks {X.chunks[0]}", flush=True)

        def report(record: EpochRecord) -> None:
            print(
                f"[dask] epoch {record.epoch:3d}  loss {record.loss:.4f}  train acc "
                f"{net.accuracy(x_train, t_train):.4f}  test acc {net.accuracy(x_test, t_test):.4f}  "
                f"{record.rows_per_s:,.0f} examples/s",
                flush=True,
            )

        batch = max(args.batch_size, X.numblocks[0])
        # the data travel once, inside the persisted graph (recomputable), whatever their size
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "64GiB"}):
            history = fit(net, optimizer, X, t, args.epochs, batch, client, seed=args.seed, on_epoch=report,
                          checkpoint=args.checkpoint, resume=args.resume or None, options=options)  # fmt: skip
        print(
            f"done: test accuracy {net.accuracy(x_test, t_test):.4f}, train accuracy "
            f"{net.accuracy(x_train, t_train):.4f}; training {history.train_seconds:.2f} s on {n_workers} workers"
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


def cli_info(scheduler: str) -> dict[str, dict]:
    """``info --scheduler``: :func:`worker_info` of that cluster."""
    try:
        client, cluster = connect(scheduler)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        return worker_info(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
