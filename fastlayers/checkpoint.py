"""Training checkpoints: everything a run needs to continue where it stopped, in one file.

A checkpoint is a NumPy ``.npz`` archive of two uint8 members, read with ``allow_pickle=False``
(loading one runs no code) and written atomically (:func:`fastlayers._files.atomic_write`: a process
killed during the write leaves the previous checkpoint): ``meta``, UTF-8 JSON, and ``data``, the
bytes of every array one after the other, as ``meta["arrays"]`` lays them out (name, dtype, shape,
offset; numeric dtypes only). One member for all the arrays keeps a checkpoint's cost in the training
loop to little more than a copy of the state (docs/PERFORMANCE.md). The arrays:

- ``param/<key>``: the net's parameters (``net.params``);
- ``layer/<i>/running_mean``, ``layer/<i>/running_var``: the running statistics of the net's
  ``i``-th layer when it is a batch normalization layer (they are not parameters, and the classic
  parameter files leave them out);
- ``optim/<key>/<name>``: the optimizer's moments (:meth:`fastlayers.optim.SGD.state_dict`);
- ``np_random/keys``: the 624 words of NumPy's legacy global generator, which draws the dropout
  layers' keys;
- ``order``: the current epoch's order of the training rows, when the checkpoint was written within
  an epoch.

The JSON metadata holds the rest: the format and its version, the net's class and parameter shapes,
the optimizer's class, hyper-parameters and step count, the run (epochs, batch size, seed, backend,
training rows), the run's options (``options``: what the command line was given), the position
(epoch, step within it, steps in all, the epoch's losses so far), the batch-order generator's state,
the rest of the global generator's state and the history of finished epochs.

:func:`load_checkpoint` reads one and checks its form; :func:`fastlayers.train.fit` writes and
resumes them.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from ._files import atomic_write

#: the ``format`` field of every checkpoint's metadata
FORMAT = "fastlayers-checkpoint"
#: the version of the layout; a reader refuses versions it does not know
VERSION = 1

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointError",
    "check_run",
    "load_checkpoint",
    "net_state",
    "restore_net",
    "restore_state",
    "state_of",
]


class CheckpointError(ValueError):
    """A file that is not a readable fastlayers checkpoint (missing, damaged, truncated, another
    format), or one that does not fit the net or optimizer it is restored into.

    Parameters
    ----------
    message : str
        One line naming the file and what is wrong.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass
class Checkpoint:
    """A checkpoint as read from its file (:func:`load_checkpoint`).

    Parameters
    ----------
    path : str
    meta : dict
        The JSON metadata (see the module's description).
    arrays : dict of str to ndarray
        Every array, by its name in the archive.
    """

    path: str
    meta: dict
    arrays: dict

    @property
    def options(self) -> dict:
        """The run's options as given to :func:`fastlayers.train.fit` (``options=``)."""
        return dict(self.meta.get("options") or {})

    @property
    def position(self) -> dict:
        """``{"epoch", "step", "global_step", "losses", "seconds"}``: the epoch in progress (1-based),
        the steps of it already taken, the steps of the whole run, that epoch's losses so far."""
        return dict(self.meta["position"])

    @property
    def epochs_done(self) -> int:
        """Epochs finished when the checkpoint was written."""
        return len(self.meta["history"])


def _layers(net) -> list:
    layers = net.layers
    return list(layers.values()) if isinstance(layers, dict) else list(layers)


def net_state(net: Any) -> dict[str, np.ndarray]:
    """Copies of everything a net's training changes: its parameters (``param/<key>``) and the
    running statistics of its batch normalization layers (``layer/<i>/running_mean`` and
    ``running_var``, where the layer has them).

    Parameters
    ----------
    net : a fastlayers net (``params`` and ``layers``)

    Returns
    -------
    dict of str to ndarray
    """
    out = {f"param/{k}": np.array(v, copy=True) for k, v in net.params.items()}
    for i, layer in enumerate(_layers(net)):
        for name in ("running_mean", "running_var"):
            value = getattr(layer, name, None)
            if isinstance(value, np.ndarray):
                out[f"layer/{i}/{name}"] = value.copy()
    return out


def restore_net(net: Any, arrays: dict, source: str = "the checkpoint") -> None:
    """Copy ``arrays`` (as :func:`net_state` returns them) into ``net``: each parameter into its
    array in place (the layers hold those arrays), each running statistic onto its layer. Everything
    is checked before anything is copied.

    Parameters
    ----------
    net : a fastlayers net
    arrays : dict of str to ndarray
    source : str
        What the arrays come from, for the messages.

    Raises
    ------
    CheckpointError
        Another set of parameters, a shape or dtype that differs from the net's, or running
        statistics for a layer that has none.
    """
    params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
    if set(params) != set(net.params):
        raise CheckpointError(f"{source} holds the parameters {sorted(params)} but this net has {sorted(net.params)}")
    for key, value in params.items():
        mine = net.params[key]
        if value.shape != mine.shape or value.dtype != mine.dtype:
            raise CheckpointError(
                f"{source} has {key} of shape {value.shape} and dtype {value.dtype}, but this net's is "
                f"{mine.shape} {mine.dtype}"
            )
    layers = _layers(net)
    stats = {k: v for k, v in arrays.items() if k.startswith("layer/")}
    for name in stats:
        _, index, attr = name.split("/")
        i = int(index)
        if i >= len(layers) or not hasattr(layers[i], attr):
            raise CheckpointError(f"{source} has {name}, but this net's layer {i} keeps no {attr}")
    for key, value in params.items():
        np.copyto(net.params[key], value)
    for name, value in stats.items():
        _, index, attr = name.split("/")
        setattr(layers[int(index)], attr, value.copy())


def pack(meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    """``meta`` with the layout of ``arrays`` added (``meta["arrays"]``: name, dtype, shape, offset of
    each) and the arrays' bytes, one after the other (8-byte aligned): the state of this moment, apart
    from the live arrays (a copy). Cheap enough for the training loop to call."""
    layout, parts, offset = [], [], 0
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).tobytes()
        layout.append([name, a.dtype.str, list(a.shape), offset])
        pad = -len(raw) % 8
        parts.append(raw + b"\0" * pad if pad else raw)
        offset += len(raw) + pad
    return {"format": FORMAT, "version": VERSION, **meta, "arrays": layout}, b"".join(parts)


def write_packed(path: str | PathLike, meta: dict, data: bytes) -> None:
    """Write what :func:`pack` returned as a checkpoint file at ``path``, atomically: an ``.npz``
    archive of two members, ``meta`` (UTF-8 JSON) and ``data`` (the bytes), each CRC-checked on read."""
    text = json.dumps(meta, separators=(",", ":")).encode()
    buffer = io.BytesIO()  # the archive built in memory, then written in one call
    np.savez(buffer, meta=np.frombuffer(text, dtype=np.uint8), data=np.frombuffer(data, dtype=np.uint8))
    archive = buffer.getbuffer()
    atomic_write(path, lambda fh: fh.write(archive))


def state_of(net: Any, optimizer: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """The part of a checkpoint that a net and its optimizer give: metadata (``net``: class and
    parameter shapes and dtypes; ``optimizer``: class, hyper-parameters, step count) and arrays
    (:func:`net_state`, the optimizer's moments as ``optim/<key>/<name>``).

    Parameters
    ----------
    net : a fastlayers net
    optimizer : a fastlayers optimizer

    Returns
    -------
    (dict, dict of str to ndarray)
    """
    opt = optimizer.state_dict()
    shapes = {k: [list(a.shape), a.dtype.str] for k, a in net.params.items()}
    meta = {
        "net": {"class": type(net).__name__, "params": shapes},
        "optimizer": {"optimizer": opt["optimizer"], "hyper": opt["hyper"], "step": opt["step"]},
    }
    return meta, {**net_state(net), **optimizer_arrays(opt)}


def check_run(ckpt: Checkpoint, net: Any, run: dict, keys: tuple[str, ...], epochs: int) -> int:
    """Check that ``ckpt`` continues this run: written by the same trainer (``run["trainer"]``), of
    ``net``'s class, with the same ``run[key]`` for each of ``keys``, and not past ``epochs``.

    Parameters
    ----------
    ckpt : Checkpoint
    net : a fastlayers net
    run : dict
        The run's fields, as its trainer writes them into a checkpoint's ``run``.
    keys : tuple of str
        The fields that must agree.
    epochs : int
        The epoch the run is to end with.

    Returns
    -------
    int
        The epochs the checkpoint has finished.

    Raises
    ------
    CheckpointError
        Another trainer, net class or field.
    ValueError
        ``epochs`` fewer than the checkpoint has finished.
    """
    meta, where = ckpt.meta, ckpt.path
    trainer = meta["run"].get("trainer", "fastlayers.train.fit")  # the first checkpoints named none
    if trainer != run["trainer"]:
        raise CheckpointError(f"{where} was written by {trainer}: resume it with that")
    if meta["net"]["class"] != type(net).__name__:  # before the run's fields: the likelier mistake
        raise CheckpointError(f"{where} is of a {meta['net']['class']}, not of this {type(net).__name__}")
    for key in keys:
        if meta["run"].get(key) != run[key]:
            raise CheckpointError(f"{where} was written with {key} {meta['run'].get(key)}, this run has {run[key]}")
    done = ckpt.epochs_done
    if epochs < done:
        raise ValueError(f"epochs={epochs} is fewer than the {done} epochs {where} has finished")
    return done


def restore_state(ckpt: Checkpoint, net: Any, optimizer: Any) -> None:
    """Restore a checkpoint's net and optimizer state (:func:`state_of`) into ``net`` and
    ``optimizer``, after checking that they are of the checkpoint's classes and shapes.

    Parameters
    ----------
    ckpt : Checkpoint
    net : a fastlayers net
    optimizer : a fastlayers optimizer

    Raises
    ------
    CheckpointError
        Another net class, another optimizer class or state, other parameter shapes or dtypes.
    """
    meta, where = ckpt.meta, ckpt.path
    if meta["net"]["class"] != type(net).__name__:
        raise CheckpointError(f"{where} is of a {meta['net']['class']}, not of this {type(net).__name__}")
    try:
        optimizer.load_state_dict(optimizer_state(meta, ckpt.arrays))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    restore_net(net, ckpt.arrays, where)


def write_checkpoint(path: str | PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` and ``arrays`` as a checkpoint file at ``path``, atomically."""
    write_packed(path, *pack(meta, arrays))


def _fail(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable fastlayers checkpoint: {why}")


def _unpack(path: str, meta: dict, data: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint, each checked against the bytes it claims (plain numeric dtypes only)."""
    arrays = {}
    layout = meta.get("arrays")
    if not isinstance(layout, list):
        raise _fail(path, "its metadata has no array layout")
    for entry in layout:
        try:
            name, dtype_text, shape, offset = entry
            dtype = np.dtype(dtype_text)
            shape = tuple(int(n) for n in shape)
            offset = int(offset)
        except (TypeError, ValueError):
            raise _fail(path, f"a malformed array entry {entry!r}") from None
        if dtype.kind not in "biuf" or any(n < 0 for n in shape) or offset < 0:
            raise _fail(path, f"array {name!r}: dtype {dtype} shape {shape} is not allowed")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > data.size:
            raise _fail(path, f"array {name!r} reaches past the data (truncated?)")
        arrays[str(name)] = data[offset : offset + nbytes].view(dtype).reshape(shape).copy()
    return arrays


def load_checkpoint(path: str | PathLike) -> Checkpoint:
    """Read and check a checkpoint; no code in the file is run (``allow_pickle=False``).

    Parameters
    ----------
    path : str or path

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        The file does not exist or cannot be read, is damaged or truncated (the archive's CRCs are
        checked), is another kind of file, or a checkpoint of a version this library does not know.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not raw.startswith(b"PK"):
        raise _fail(path, "not an .npz archive")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            members = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as exc:
        raise _fail(path, f"damaged or truncated ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    text, blob = members.pop("meta", None), members.pop("data", None)
    if text is None or text.dtype != np.uint8 or text.ndim != 1:
        raise _fail(path, "an .npz archive without fastlayers' metadata")
    try:
        meta = json.loads(text.tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise _fail(path, "its metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, "an .npz archive of another format")
    if meta.get("version") != VERSION:
        raise _fail(path, f"format version {meta.get('version')!r}; this fastlayers reads version {VERSION}")
    for field in ("net", "optimizer", "run", "position", "batch_rng", "np_random", "history"):
        if field not in meta:
            raise _fail(path, f"its metadata has no {field!r}")
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1 or members:
        raise _fail(path, "its archive does not hold exactly 'meta' and 'data'")
    return Checkpoint(path=path, meta=meta, arrays=_unpack(path, meta, blob))


def optimizer_arrays(state: dict) -> dict[str, np.ndarray]:
    """An optimizer's :meth:`state_dict` moments as ``optim/<key>/<name>`` arrays."""
    return {f"optim/{key}/{name}": a for key, st in state["state"].items() for name, a in st.items()}


def optimizer_state(meta: dict, arrays: dict) -> dict[str, Any]:
    """The :meth:`state_dict` form of a checkpoint's optimizer."""
    moments: dict[str, dict[str, np.ndarray]] = {}
    for name, a in arrays.items():
        if name.startswith("optim/"):
            key, _, moment = name[len("optim/") :].rpartition("/")
            moments.setdefault(key, {})[moment] = a
    opt = meta["optimizer"]
    return {"optimizer": opt["optimizer"], "hyper": opt["hyper"], "step": opt["step"], "state": moments}
