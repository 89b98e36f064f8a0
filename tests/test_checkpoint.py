"""Checkpoints and resume from code: the optimizers' state in its documented form, the checkpoint
file (its form, what a damaged or foreign one gives), and ``fit`` resumed from a checkpoint written
within an epoch or at its end, ending with the parameters of the run never interrupted, bit for bit,
for every net of the CLI (dropout and batch normalization included), both dtypes and both backends."""

from __future__ import annotations

import io
import json
import os
import signal
import zipfile

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import optim
from fastlayers.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    net_state,
    restore_net,
    write_checkpoint,
)
from fastlayers.train import Interrupted, build_net, fit

from .conftest import DTYPES

OPTIMIZERS = [
    (optim.SGD, {"lr": 0.1}),
    (optim.Momentum, {"lr": 0.05, "momentum": 0.8}),
    (optim.Nesterov, {"lr": 0.05, "momentum": 0.7}),
    (optim.AdaGrad, {"lr": 0.2, "eps": 1e-6}),
    (optim.RMSprop, {"lr": 0.01, "decay_rate": 0.9}),
    (optim.Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}),
]


def _params(rng, dtype):
    return {"W": rng.standard_normal((7, 5)).astype(dtype), "b": rng.standard_normal(5).astype(dtype)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_optimizer_state_round_trip_continues_bit_for_bit(cls, kw, dtype):
    """A second optimizer given the first's state_dict (through JSON for the plain part) takes the
    same steps, bit for bit; the form is the documented one, and the dict holds copies."""
    rng = np.random.default_rng(0)
    a_params = _params(rng, dtype)
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in a_params.items()} for _ in range(6)]
    a = cls(**kw)
    for g in grads[:3]:
        a.update(a_params, g)
    state = a.state_dict()
    assert set(state) == {"optimizer", "hyper", "step", "state"} and state["optimizer"] == cls.__name__
    assert state["hyper"] == {k: float(v) for k, v in kw.items()}
    assert state["step"] == (3 if cls is optim.Adam else 0)
    assert set(state["state"]) == ({"W", "b"} if cls._state_names else set())
    for moments in state["state"].values():
        assert set(moments) == set(cls._state_names)
        for m in moments.values():
            assert m.ndim == 1 and m.dtype == dtype
            m += 1000  # a copy: the optimizer's own state is untouched
    state = a.state_dict()
    plain = json.loads(json.dumps({k: v for k, v in state.items() if k != "state"}))
    b = cls(lr=0.5)  # other hyper-parameters: the state brings them
    b.load_state_dict({**plain, "state": state["state"]})
    b_params = {k: v.copy() for k, v in a_params.items()}
    for g in grads[3:]:
        a.update(a_params, g)
        b.update(b_params, g)
    for k in a_params:
        np.testing.assert_array_equal(a_params[k], b_params[k])


def test_optimizer_state_errors():
    state = optim.Adam().state_dict()
    with pytest.raises(TypeError, match="state is of a Adam optimizer, not SGD"):
        optim.SGD().load_state_dict(state)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        optim.Adam().load_state_dict({**state, "hyper": {**state["hyper"], "lr": -1.0}})
    with pytest.raises(ValueError, match=r"state\['step'\] must be an integer >= 0"):
        optim.Adam().load_state_dict({**state, "step": -1})
    with pytest.raises(ValueError, match="must be a dict with"):
        optim.Adam().load_state_dict({"optimizer": "Adam"})
    bad = {**state, "state": {"W": {"m": np.zeros(3), "v": np.zeros(4)}}}
    with pytest.raises(ValueError, match="1-D arrays of one size and dtype"):
        optim.Adam().load_state_dict(bad)
    with pytest.raises(ValueError, match=r"must have \['m', 'v'\]"):
        optim.Adam().load_state_dict({**state, "state": {"W": {"m": np.zeros(3)}}})
    with pytest.raises(TypeError, match="float32 or float64 arrays"):
        optim.Adam().load_state_dict({**state, "state": {"W": {"m": np.zeros(3, int), "v": np.zeros(3, int)}}})
    opt = optim.Adam(0.3)
    with pytest.raises(ValueError):
        opt.load_state_dict({**state, "hyper": {**state["hyper"], "beta1": 1.5}})
    assert opt.lr == 0.3 and opt.iter == 0  # a refused state changes nothing


# --- fit, resumed ------------------------------------------------------------------------------------


def _data(kind: str, dtype):
    rng = np.random.default_rng(3)
    n, m = 90, 30
    if kind in ("convnet", "deep"):
        x = rng.random((n + m, 1, 8, 8)).astype(dtype)
    else:
        x = rng.random((n + m, 16)).astype(dtype)
    t = rng.integers(0, 4, n + m)
    return (x[:n], t[:n]), (x[n:], t[n:])


NETS = {
    "two": dict(kind="two", hidden=[12]),
    "multi-dropout-batchnorm": dict(kind="multi", hidden=[12, 10], dropout=0.3, batchnorm=True),
    "convnet": dict(kind="convnet", hidden=[12]),
    "deep": dict(kind="deep", hidden=[12]),
}


def _setup(name: str, dtype):
    spec = dict(NETS[name])
    kind, hidden = spec.pop("kind"), spec.pop("hidden")
    train, test = _data(kind, dtype)
    size = train[0].shape[1:] if kind in ("convnet", "deep") else train[0].shape[1]
    net = build_net(kind, size, hidden, 4, "relu", np.dtype(dtype), 0, **spec)
    return net, optim.Adam(0.01), train, test


def _run(name, dtype, backend, epochs, **kw):
    net, opt, train, test = _setup(name, dtype)
    np.random.seed(5)  # noqa: NPY002 - the dropout keys' generator, as the CLI seeds it
    history = fit(net, opt, train, test, epochs, 16, 1, backend=backend, **kw)
    return net, opt, history


class _CrashError(Exception):
    pass


def _on_call(net, n: int, action) -> None:
    """Make ``net.gradient`` run ``action()`` at its ``n``-th call, before that call's work (raising
    stops the run there; a signal raised and handled lets the step go on)."""
    real, calls = net.gradient, [0]

    def gradient(x, t):
        calls[0] += 1
        if calls[0] == n:
            action()
        return real(x, t)

    net.gradient = gradient


def _crash():
    raise _CrashError


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(NETS))
def test_fit_resumed_within_an_epoch_equals_the_uninterrupted_run(name, dtype, backend, tmp_path):
    """A run that crashes at step 11 (6 steps an epoch) after checkpoints every 4 steps, resumed from
    its checkpoint (step 8: within the second epoch) with more epochs than it was started with, ends
    with the parameters, batch normalization statistics, optimizer state and history of the run never
    interrupted; then NumPy's global generator is where that run left it too."""
    ref_net, ref_opt, ref_hist = _run(name, dtype, backend, 3)
    ref_random = np.random.get_state()[1].copy()  # noqa: NPY002
    path = tmp_path / "ck.npz"
    net, opt, train, test = _setup(name, dtype)
    _on_call(net, 11, _crash)
    np.random.seed(5)  # noqa: NPY002
    with pytest.raises(_CrashError):
        fit(net, opt, train, test, 2, 16, 1, backend=backend, checkpoint=path, checkpoint_every=4)
    ckpt = load_checkpoint(path)
    assert ckpt.position["epoch"] == 2 and ckpt.position["step"] == 2 and ckpt.position["global_step"] == 8
    np.random.seed(99)  # noqa: NPY002 - the checkpoint's state must win
    net2, opt2, train, test = _setup(name, dtype)
    hist = fit(net2, opt2, train, test, 3, 16, 12345, backend=backend, resume=path, checkpoint=path)
    for k in ref_net.params:
        np.testing.assert_array_equal(net2.params[k], ref_net.params[k], err_msg=k)
    assert net_state(net2).keys() == net_state(ref_net).keys()
    for k, v in net_state(ref_net).items():
        np.testing.assert_array_equal(net_state(net2)[k], v, err_msg=k)
    a, b = opt2.state_dict(), ref_opt.state_dict()
    assert a["step"] == b["step"] == 18
    for key in b["state"]:
        for m in b["state"][key]:
            np.testing.assert_array_equal(a["state"][key][m], b["state"][key][m])
    assert [(e.epoch, e.loss, e.train_acc, e.test_acc) for e in hist.epochs] == [
        (e.epoch, e.loss, e.train_acc, e.test_acc) for e in ref_hist.epochs
    ]
    np.testing.assert_array_equal(np.random.get_state()[1], ref_random)  # noqa: NPY002
    assert load_checkpoint(path).epochs_done == 3  # the last epoch's checkpoint is always written


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_resumed_at_an_epoch_end_and_a_finished_run(dtype, tmp_path):
    ref_net, _, _ = _run("multi-dropout-batchnorm", dtype, "numba", 4)
    path = tmp_path / "ck.npz"
    _run("multi-dropout-batchnorm", dtype, "numba", 2, checkpoint=path)
    ckpt = load_checkpoint(path)
    assert ckpt.epochs_done == 2 and ckpt.position == {**ckpt.position, "epoch": 3, "step": 0}
    assert "order" not in ckpt.arrays  # drawn again from the generator's state at the epoch's start
    net, opt, train, test = _setup("multi-dropout-batchnorm", dtype)
    hist = fit(net, opt, train, test, 4, 16, 1, resume=ckpt, checkpoint=path)
    assert [e.epoch for e in hist.epochs] == [1, 2, 3, 4]
    for k in ref_net.params:
        np.testing.assert_array_equal(net.params[k], ref_net.params[k])
    # resumed again when finished: nothing to do, nothing changes
    before = {k: v.copy() for k, v in net.params.items()}
    net3, opt3, train, test = _setup("multi-dropout-batchnorm", dtype)
    hist = fit(net3, opt3, train, test, 4, 16, 1, resume=path)
    assert len(hist.epochs) == 4
    for k in before:
        np.testing.assert_array_equal(net3.params[k], before[k])
    with pytest.raises(ValueError, match="epochs=3 is fewer than the 4 epochs"):
        fit(*_setup("multi-dropout-batchnorm", dtype)[:2], train, test, 3, 16, 1, resume=path)


def test_resume_refuses_another_net_optimizer_or_data(tmp_path):
    path = tmp_path / "ck.npz"
    _run("two", np.float32, "numba", 1, checkpoint=path)
    net, opt, train, test = _setup("two", np.float32)
    with pytest.raises(CheckpointError, match="is of a TwoLayerNet, not of this MultiLayerNetExtend"):
        fit(_setup("multi-dropout-batchnorm", np.float32)[0], opt, train, test, 2, 16, 1, resume=path)
    with pytest.raises(CheckpointError, match="state is of a Adam optimizer, not SGD"):
        fit(net, optim.SGD(), train, test, 2, 16, 1, resume=path)
    with pytest.raises(CheckpointError, match="batch_size 16, this run has 8"):
        fit(net, opt, train, test, 2, 8, 1, resume=path)
    with pytest.raises(CheckpointError, match="n_train 90, this run has 89"):
        fit(net, opt, (train[0][:89], train[1][:89]), test, 2, 16, 1, resume=path)
    net64 = _setup("two", np.float64)[0]
    with pytest.raises(CheckpointError, match="dtype float32, but this net's is"):
        fit(net64, optim.Adam(0.01), _data("two", np.float64)[0], test, 2, 16, 1, resume=path)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        fit(net, opt, train, test, 2, 16, 1, checkpoint=path, checkpoint_every=0)


def test_a_malformed_checkpoint_restores_nothing(tmp_path):
    """A checkpoint of the right form whose row order, random state or position is malformed is
    refused before anything is restored into the net or the optimizer."""
    path = tmp_path / "ck.npz"
    net, opt, train, test = _setup("two", np.float32)
    _on_call(net, 3, _crash)
    with pytest.raises(_CrashError):
        fit(net, opt, train, test, 2, 16, 1, checkpoint=path, checkpoint_every=2)
    good = load_checkpoint(path)
    assert good.position["step"] == 2
    bad_cases = {
        "order": (lambda m, a: a.__setitem__("order", np.zeros_like(a["order"])), "holds no order of its 90 rows"),
        "random": (lambda m, a: a.__setitem__("np_random/keys", a["np_random/keys"][:5]), "random states cannot be"),
        "position": (lambda m, a: m["position"].pop("global_step"), "position or history is malformed"),
    }
    for name, (spoil, message) in bad_cases.items():
        ckpt = load_checkpoint(path)
        spoil(ckpt.meta, ckpt.arrays)
        fresh, fresh_opt, train, test = _setup("two", np.float32)
        before = {k: v.copy() for k, v in fresh.params.items()}
        with pytest.raises(CheckpointError, match=message):
            fit(fresh, fresh_opt, train, test, 2, 16, 1, resume=ckpt)
        for k in before:
            np.testing.assert_array_equal(fresh.params[k], before[k], err_msg=name)
        assert fresh_opt.state == {} and fresh_opt.iter == 0, name


def test_a_signal_stops_fit_at_a_step_boundary_with_a_checkpoint(tmp_path):
    """SIGINT (as Ctrl-C) during fit: the step in progress finishes, the checkpoint is written,
    Interrupted (a KeyboardInterrupt) says where; resuming gives the uninterrupted run."""
    ref_net, _, _ = _run("two", np.float64, "numba", 2)
    path = tmp_path / "ck.npz"
    net, opt, train, test = _setup("two", np.float64)
    _on_call(net, 4, lambda: signal.raise_signal(signal.SIGINT))  # handled: the step goes on
    np.random.seed(5)  # noqa: NPY002
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        fit(net, opt, train, test, 2, 16, 1, checkpoint=path)
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.signum, info.value.epoch, info.value.step) == (signal.SIGINT, 1, 4)
    assert info.value.checkpoint == os.fspath(path)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    net2, opt2, train, test = _setup("two", np.float64)
    fit(net2, opt2, train, test, 2, 16, 1, resume=path)
    for k in ref_net.params:
        np.testing.assert_array_equal(net2.params[k], ref_net.params[k])


def test_restore_net_checks_what_it_copies():
    net = fl.TwoLayerNet(6, 4, 3, seed=0)
    state = net_state(net)
    other = fl.TwoLayerNet(6, 4, 3, seed=1)
    w1 = other.params["W1"]
    restore_net(other, state)
    assert other.params["W1"] is w1  # copied in place: the layers hold these arrays
    np.testing.assert_array_equal(other.params["W1"], net.params["W1"])
    np.testing.assert_array_equal(other.layers["Affine1"].W, net.params["W1"])
    with pytest.raises(CheckpointError, match="holds the parameters"):
        restore_net(other, {"param/W1": state["param/W1"]})
    with pytest.raises(CheckpointError, match="has W1 of shape"):
        restore_net(other, {**state, "param/W1": np.zeros((2, 2))})
    with pytest.raises(CheckpointError, match="keeps no running_mean"):
        restore_net(other, {**state, "layer/0/running_mean": np.zeros(4)})


# --- the file ----------------------------------------------------------------------------------------


def test_checkpoint_file_form(tmp_path):
    """An .npz of two uint8 members (JSON metadata and the arrays' bytes) that loads with
    allow_pickle=False; the arrays come back with their dtypes and shapes."""
    path = tmp_path / "ck.npz"
    _run("multi-dropout-batchnorm", np.float32, "numba", 1, checkpoint=path, options={"note": "x"})
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["data", "meta"]
        meta = json.loads(archive["meta"].tobytes())
    assert meta["format"] == FORMAT and meta["version"] == 1 and meta["options"] == {"note": "x"}
    ckpt = load_checkpoint(path)
    names = set(ckpt.arrays)
    assert {"param/W1", "param/gamma1", "optim/W1/m", "optim/W1/v", "np_random/keys"} <= names
    assert any(n.endswith("running_mean") for n in names)
    assert ckpt.arrays["param/W1"].dtype == np.float32 and ckpt.arrays["np_random/keys"].shape == (624,)
    assert not any(n.startswith("order") for n in names)


def test_damaged_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    path = tmp_path / "ck.npz"
    _run("two", np.float32, "numba", 1, checkpoint=path)
    good = path.read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "flipped": good[:300] + bytes([good[300] ^ 0xFF]) + good[301:],
        "empty": b"",
        "text": b"hello",
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match="is not a readable fastlayers checkpoint") as info:
            load_checkpoint(bad)
        assert "\n" not in str(info.value)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="without fastlayers' metadata"):
        load_checkpoint(tmp_path / "foreign.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    # an object array smuggled into the layout is refused, not unpickled
    meta = json.loads(np.load(path)["meta"].tobytes())
    meta["arrays"][0][1] = "|O"
    write = tmp_path / "objects.npz"
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(write, "w") as out:
        out.writestr("data.npy", z.read("data.npy"))
        buf = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        b = io.BytesIO()
        np.save(b, buf)
        out.writestr("meta.npy", b.getvalue())
    with pytest.raises(CheckpointError, match="is not allowed"):
        load_checkpoint(write)


_META = {"net": {}, "optimizer": {}, "run": {}, "position": {}, "batch_rng": {}, "np_random": {}, "history": []}


def test_write_checkpoint_is_atomic_over_an_existing_file(tmp_path, monkeypatch):
    """A write that fails (here: the disk full at the fsync) leaves the previous file as it was and no
    temporary file; a write that succeeds keeps the file's permission bits."""
    import fastlayers._files as files

    path = tmp_path / "ck.npz"
    write_checkpoint(path, _META, {"a": np.arange(3.0)})
    os.chmod(path, 0o640)
    first = path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", full)
        with pytest.raises(OSError, match="No space left"):
            write_checkpoint(path, _META, {"a": np.arange(1000.0)})
    assert path.read_bytes() == first and os.listdir(tmp_path) == ["ck.npz"]
    write_checkpoint(path, _META, {"a": np.arange(4.0)})
    assert os.stat(path).st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(load_checkpoint(path).arrays["a"], np.arange(4.0))
