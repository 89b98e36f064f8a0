"""Stateful fuzz: layer objects driven through random sequences of calls and of changes to their
public attributes, each step done twice, on the numba backend and on the numpy backend, with twin
objects given the same values. Every step either gives the same result on both, or raises the same
ValueError/TypeError on both. Anything else (another exception, a crash) fails.

Run by ``test_fuzz.py`` in a subprocess (``STATEFUL_EXAMPLES`` sets the number of programs), so that
a crash is a failure and not a dead test run. Not collected by pytest directly.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import fastlayers as fl
from fastlayers import functional as F

BACKENDS = ("numba", "numpy")
EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "60"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "40"))

sizes = st.sampled_from([(1, 1), (3, 4), (5, 10), (64, 33), (300, 40)])
dtypes = st.sampled_from([np.float32, np.float64])
douts = st.sampled_from([1, 1.0, 2.0, 0, -1, np.float32(1), np.float64(1), np.float64(0.5), "x", None, np.ones(2)])
label_values = st.sampled_from([-1, 0, 1, 9, 10, 39, 40, 2**40, -(2**40)])


class Mismatch(AssertionError):  # noqa: N818 - reads better in the failure report
    pass


def _close(a, b) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _close(u, v)
        return
    u, v = np.asarray(a), np.asarray(b)
    if u.dtype != v.dtype or u.shape != v.shape:
        raise Mismatch(f"dtype/shape {u.dtype}{u.shape} vs {v.dtype}{v.shape}")
    if u.dtype.kind != "f":
        if not np.array_equal(u, v):
            raise Mismatch("values differ")
        return
    tol = 1e-4  # float32 state (a float32 forward output) can enter a float64 result: precision is the
    # business of the reference tests; this fuzz looks for wrong answers, stale gradients and crashes
    with np.errstate(invalid="ignore", over="ignore"):
        scale = float(np.nanmax(np.abs(v[np.isfinite(v)]), initial=1.0)) if v.size else 1.0
        ok = np.isclose(u, v, rtol=tol, atol=tol * scale, equal_nan=True) | ((u == v) & ~np.isfinite(v))
    if not np.all(ok):
        raise Mismatch(f"values differ: max |diff| {np.nanmax(np.abs(u - v))}")


_KINDS: dict[str, type] = {}


def _mismatch(what: str) -> type:
    """A Mismatch subclass per step kind: Hypothesis tells failures apart by exception type and
    place, so each kind of wrong answer is reported on its own instead of folded into one."""
    if what not in _KINDS:
        _KINDS[what] = type(f"Mismatch_{what}", (Mismatch,), {})
    return _KINDS[what]


def both(fn, what: str = "step"):
    """``fn(backend)`` on each backend: the same result, or the same ValueError/TypeError."""
    results = []
    for backend in BACKENDS:
        with fl.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference may warn (overflow in exp of huge values)
            try:
                results.append(("ok", fn(backend)))
            except (ValueError, TypeError) as exc:
                results.append(("error", type(exc)))
    (ka, a), (kb, b) = results
    kind = _mismatch(what)
    if ka != kb:
        raise kind(f"numba {ka} {a if ka == 'error' else ''} but numpy {kb} {b if kb == 'error' else ''}")
    if ka == "ok":
        try:
            _close(a, b)
        except Mismatch as exc:
            raise kind(str(exc)) from None
    elif a is not b:
        raise kind(f"numba raised {a.__name__}, numpy {b.__name__}")


class Layers(RuleBasedStateMachine):
    """Twin layers (one per backend) and the twin arrays they were given."""

    @initialize(size=sizes, dtype=dtypes, seed=st.integers(0, 2**32 - 1))
    def setup(self, size, dtype, seed):
        self.rng = np.random.default_rng(seed)
        self.n, self.c = size
        self.dtype = dtype
        d = 7
        W = self.rng.standard_normal((d, self.c)).astype(dtype)
        b = self.rng.standard_normal(self.c).astype(dtype)
        self.loss = {k: fl.SoftmaxWithLoss() for k in BACKENDS}
        self.relu = {k: fl.Relu() for k in BACKENDS}
        self.sigmoid = {k: fl.Sigmoid() for k in BACKENDS}
        self.affine = {k: fl.Affine(W.copy(), b.copy()) for k in BACKENDS}
        self.opt = {k: fl.SGD(lr=0.1) for k in BACKENDS}
        self.d = d
        self.fn = 3
        cw = self.rng.standard_normal((self.fn, 2, 3, 2)).astype(dtype)
        cb = self.rng.standard_normal(self.fn).astype(dtype)
        stride, pad = int(self.rng.integers(1, 3)), int(self.rng.integers(0, 3))
        self.conv = {k: fl.Convolution(cw.copy(), cb.copy(), stride, pad) for k in BACKENDS}
        pool_pad = int(self.rng.integers(0, 2))
        self.pool = {k: fl.Pooling(2, 3, 2, pool_pad) for k in BACKENDS}
        self.dropout = {k: fl.Dropout(0.4) for k in BACKENDS}
        g, b = self.rng.standard_normal(6).astype(dtype), self.rng.standard_normal(6).astype(dtype)
        self.bn = {k: fl.BatchNormalization(g.copy(), b.copy()) for k in BACKENDS}

    # -- the loss layer ------------------------------------------------------------------------
    @rule(
        kind=st.sampled_from(["labels", "uint8", "column", "rows", "bad", "float_labels"]),
        scale=st.sampled_from([1.0, 30.0, 1e30]),
    )
    def loss_forward(self, kind, scale):
        x = (self.rng.standard_normal((self.n, self.c)) * scale).astype(self.dtype)
        labels = self.rng.integers(0, self.c, self.n)
        t = {
            "labels": labels,
            "uint8": labels.astype(np.uint8),
            "column": labels.reshape(-1, 1),
            "rows": np.eye(self.c)[labels],
            "bad": np.full(self.n, self.c),
            "float_labels": labels.astype(np.float64),
        }[kind]
        both(lambda k: self.loss[k].forward(x.copy(), t.copy()), "loss_forward")

    @rule(dout=douts)
    def loss_backward(self, dout):
        both(lambda k: self.loss[k].backward(dout), "loss_backward")

    @rule(value=label_values, where=st.sampled_from(["all", "first", "last"]))
    def refill_labels(self, value, where):
        for k in BACKENDS:
            t = self.loss[k].t
            if isinstance(t, np.ndarray) and t.dtype.kind in "iu" and t.size:
                with np.errstate(over="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = np.array(value).astype(t.dtype) if t.dtype.kind == "u" else value
                    if where == "all":
                        t[...] = v
                    else:
                        t.reshape(-1)[0 if where == "first" else -1] = v

    @rule(shape=st.sampled_from(["same", "fewer_columns", "more_rows", "1d"]), fill=st.sampled_from([0.5, 0.0, np.nan]))
    def replace_y(self, shape, fill):
        y = self.loss["numpy"].y
        if y is None:
            return
        rows, cols = (y.shape[0], y.shape[-1]) if y.ndim else (1, 1)
        new_shape = {"same": y.shape, "fewer_columns": (rows, 2), "more_rows": (rows + 3, cols), "1d": (y.size,)}[shape]
        for k in BACKENDS:
            self.loss[k].y = np.full(new_shape, fill, y.dtype)

    @rule()
    def unlock_and_write_y(self):
        for k in BACKENDS:
            y = self.loss[k].y
            if isinstance(y, np.ndarray) and y.size:
                try:
                    y.setflags(write=True)
                except ValueError:
                    continue
                y.reshape(-1)[0] = 0.75

    # -- elementwise layers ---------------------------------------------------------------------
    @rule(
        which=st.sampled_from(["relu", "sigmoid"]),
        shape=st.sampled_from(["batch", "other"]),
        scale=st.sampled_from([1.0, 1e3]),
    )
    def act_forward(self, which, shape, scale):
        dims = (self.n, self.c) if shape == "batch" else (2, 3, 5)
        x = (self.rng.standard_normal(dims) * scale).astype(self.dtype)
        both(lambda k: getattr(self, which)[k].forward(x.copy()), f"{which}_forward")

    @rule(
        which=st.sampled_from(["relu", "sigmoid"]),
        shape=st.sampled_from(["batch", "other"]),
        dt=st.sampled_from([np.float32, np.float64]),
    )
    def act_backward(self, which, shape, dt):
        dims = (self.n, self.c) if shape == "batch" else (2, 3, 5)
        dout = self.rng.standard_normal(dims).astype(dt)
        both(lambda k: getattr(self, which)[k].backward(dout.copy()), f"{which}_backward")

    @rule(which=st.sampled_from(["relu", "sigmoid"]), shape=st.sampled_from(["same", "other"]))
    def replace_out(self, which, shape):
        out = getattr(self, which)["numpy"].out
        if out is None:
            return
        new = self.rng.standard_normal(out.shape if shape == "same" else (out.size + 1,)).astype(out.dtype)
        for k in BACKENDS:
            getattr(self, which)[k].out = new.copy()

    # -- affine and an optimizer ----------------------------------------------------------------
    @rule(rows=st.sampled_from(["n", "1d", "4d"]), dt=st.sampled_from([np.float32, np.float64]))
    def affine_forward(self, rows, dt):
        x = self.rng.standard_normal(
            {"n": (self.n, self.d), "1d": (self.d,), "4d": (self.n, 1, self.d, 1)}[rows]
        ).astype(dt)
        both(lambda k: self.affine[k].forward(x.copy()), f"affine_forward_{rows}")

    @rule(dt=st.sampled_from([np.float32, np.float64]), wrong=st.booleans())
    def affine_backward(self, dt, wrong):
        x = self.affine["numpy"].x
        rows = x.shape[0] if isinstance(x, np.ndarray) and x.ndim else self.n
        dout = self.rng.standard_normal((rows + wrong, self.c)).astype(dt)
        both(lambda k: self.affine[k].backward(dout.copy()), "affine_backward")

    @rule(what=st.sampled_from(["W", "b", "x"]), how=st.sampled_from(["inplace", "reshape", "smaller"]))
    def change_affine(self, what, how):
        value = getattr(self.affine["numpy"], what)
        if not isinstance(value, np.ndarray) or value.size == 0:
            return
        if how == "inplace":
            new = self.rng.standard_normal(value.shape).astype(value.dtype)
            for k in BACKENDS:
                getattr(self.affine[k], what)[...] = new
            return
        shape = value.shape[::-1] if how == "reshape" else tuple(max(1, s - 1) for s in value.shape)
        new = self.rng.standard_normal(shape).astype(value.dtype)
        for k in BACKENDS:
            setattr(self.affine[k], what, new.copy())

    @rule()
    def optimizer_step(self):
        def step(k):
            a = self.affine[k]
            if a.dW is None:
                raise ValueError("no gradient yet")
            self.opt[k].update({"W": a.W, "b": a.b}, {"W": a.dW, "b": a.db})
            return a.W.copy(), a.b.copy()

        both(step, "optimizer_step")

    # -- convolution, pooling, dropout ------------------------------------------------------------
    @rule(kind=st.sampled_from(["ok", "channels", "3d", "small", "ints"]), dt=st.sampled_from([np.float32, np.float64]))
    def conv_forward(self, kind, dt):
        shape = {
            "ok": (2, 2, 7, 6),
            "channels": (2, 3, 7, 6),
            "3d": (2, 7, 6),
            "small": (1, 2, 1, 1),
            "ints": (1, 2, 5, 5),
        }
        x = self.rng.standard_normal(shape[kind])
        x = (x * 10).astype(np.int16) if kind == "ints" else x.astype(dt)
        both(lambda k: self.conv[k].forward(x.copy()), f"conv_forward_{kind}")

    @rule(wrong=st.booleans(), dt=st.sampled_from([np.float32, np.float64]), with_dx=st.booleans())
    def conv_backward(self, wrong, dt, with_dx):
        out = self.conv["numpy"]._out
        shape = out.shape if out is not None else (2, self.fn, 3, 3)
        dout = self.rng.standard_normal((shape[0] + wrong, *shape[1:])).astype(dt)

        def call(k):
            dx = self.conv[k]._backward(dout.copy(), with_dx)
            return (dx, self.conv[k].dW, self.conv[k].db) if with_dx else (self.conv[k].dW, self.conv[k].db)

        both(call, "conv_backward")

    @rule(what=st.sampled_from(["W", "b", "x", "stride", "pad"]), how=st.sampled_from(["inplace", "other"]))
    def change_conv(self, what, how):
        value = getattr(self.conv["numpy"], what)
        if what in ("stride", "pad"):
            new = {"inplace": 1, "other": 0 if what == "stride" else 5}[how]
            for k in BACKENDS:
                setattr(self.conv[k], what, new)
            return
        if not isinstance(value, np.ndarray):
            return
        if how == "inplace":
            new = self.rng.standard_normal(value.shape).astype(value.dtype)
            for k in BACKENDS:
                getattr(self.conv[k], what)[...] = new
            return
        shape = tuple(s + 1 for s in value.shape)
        new = self.rng.standard_normal(shape).astype(value.dtype)
        for k in BACKENDS:
            setattr(self.conv[k], what, new.copy())

    @rule(kind=st.sampled_from(["ok", "small", "nan"]), dt=st.sampled_from([np.float32, np.float64]))
    def pool_forward(self, kind, dt):
        x = self.rng.standard_normal((2, 3, 1, 1) if kind == "small" else (2, 3, 7, 8)).astype(dt)
        if kind == "nan":
            x[0, 0, 1, 1] = np.nan
        both(lambda k: (self.pool[k].forward(x.copy()), self.pool[k].arg_max), f"pool_forward_{kind}")

    @rule(wrong=st.booleans())
    def pool_backward(self, wrong):
        out = self.pool["numpy"]._out
        shape = out.shape if out is not None else (2, 3, 3, 3)
        dout = self.rng.standard_normal((shape[0], shape[1] + wrong, *shape[2:]))
        both(lambda k: self.pool[k].backward(dout.copy()), "pool_backward")

    @rule(value=st.sampled_from([-1, 0, 5, 255, 2**40]))
    def refill_arg_max(self, value):
        for k in BACKENDS:
            a = self.pool[k].arg_max
            if a is not None:
                a[...] = value  # a fresh array: changes nothing

    @rule(seed=st.integers(0, 2**32 - 1), train=st.booleans(), shape=st.sampled_from([(3, 5), (2, 3, 4, 5), (0, 4)]))
    def dropout_forward(self, seed, train, shape):
        x = self.rng.standard_normal(shape).astype(self.dtype)

        def call(k):
            np.random.seed(seed)  # noqa: NPY002 - the classic global generator
            return self.dropout[k].forward(x.copy(), train)

        both(call, "dropout_forward")

    @rule(wrong=st.booleans())
    def dropout_backward(self, wrong):
        mask = self.dropout["numpy"].mask
        shape = mask.shape if mask is not None else (3, 5)
        dout = self.rng.standard_normal((shape[0] + wrong, *shape[1:])).astype(self.dtype)
        both(lambda k: self.dropout[k].backward(dout.copy()), "dropout_backward")

    @rule(how=st.sampled_from(["refill", "floats", "other_shape", "ratio"]))
    def change_dropout(self, how):
        mask = self.dropout["numpy"].mask
        for k in BACKENDS:
            if how == "ratio":
                self.dropout[k].dropout_ratio = 1.5
            elif mask is None:
                continue
            elif how == "refill":
                self.dropout[k].mask[...] = True
            elif how == "floats":
                self.dropout[k].mask = np.full(mask.shape, 0.5)
            else:
                self.dropout[k].mask = np.ones(mask.size + 1, bool)

    @rule(shape=st.sampled_from([(5, 6), (4, 1, 2, 3), (1, 6), (5, 7), (6,)]), train=st.booleans(),
          dt=st.sampled_from([np.float32, np.float64]))  # fmt: skip
    def bn_forward(self, shape, train, dt):
        x = (self.rng.standard_normal(shape) * 3).astype(dt)
        both(lambda k: (self.bn[k].forward(x.copy(), train), self.bn[k].running_mean), "bn_forward")

    @rule(wrong=st.booleans())
    def bn_backward(self, wrong):
        xn = self.bn["numpy"].xn
        shape = xn.shape if isinstance(xn, np.ndarray) and xn.ndim == 2 else (5, 6)
        dout = self.rng.standard_normal((shape[0] + wrong, shape[1])).astype(self.dtype)

        def call(k):
            return self.bn[k].backward(dout.copy()), self.bn[k].dgamma, self.bn[k].dbeta

        both(call, "bn_backward")

    @rule(what=st.sampled_from(["gamma", "beta", "std", "xn", "running_mean", "momentum"]),
          how=st.sampled_from(["inplace", "other"]))  # fmt: skip
    def change_bn(self, what, how):
        value = getattr(self.bn["numpy"], what)
        if what == "momentum":
            for k in BACKENDS:
                self.bn[k].momentum = 0.5 if how == "inplace" else 2.0
            return
        if not isinstance(value, np.ndarray):
            return
        if how == "inplace":
            new = self.rng.standard_normal(value.shape).astype(value.dtype)
            for k in BACKENDS:
                getattr(self.bn[k], what)[...] = new
            return
        new = self.rng.standard_normal(value.size + 1).astype(value.dtype)
        for k in BACKENDS:
            setattr(self.bn[k], what, new.copy())

    # -- functions with out= buffers that alias their inputs ------------------------------------
    @rule(
        case=st.sampled_from(
            ["relu_in_place", "sigmoid_bwd_out_y", "xent_bwd_out_y", "xent_fwd_out_t", "xent_bwd_overlap_t",
             "softmax_in_place", "sgd_overlap", "momentum_overlap", "adam_same"]
        )
    )  # fmt: skip
    def aliased_out(self, case):
        x = self.rng.standard_normal((self.n, self.c)).astype(self.dtype)
        labels = self.rng.integers(0, self.c, self.n)
        rows = np.eye(self.c, dtype=self.dtype)[labels]

        def call(k):
            if case.endswith(("_overlap", "_same")):  # optimizer grads sharing memory with params
                buf = x.reshape(-1).copy()
                half = buf.size // 2
                p, g = (buf[half:], buf[: buf.size - half]) if case.endswith("_overlap") else (buf, buf)
                opt = {"sgd": fl.SGD, "momentum": fl.Momentum, "adam": fl.Adam}[case.split("_")[0]]()
                opt.update({"p": p}, {"p": g})
                return buf.copy()
            if case == "relu_in_place":
                a = x.copy()
                return F.relu_forward(a, out=a).copy()
            if case == "softmax_in_place":
                a = x.copy()
                return F.softmax(a, out=a).copy()
            if case == "sigmoid_bwd_out_y":
                y = F.sigmoid_forward(x)
                return F.sigmoid_backward(x.copy(), y, out=y).copy()
            y = F.softmax(x)
            if case == "xent_bwd_out_y":
                return F.softmax_cross_entropy_backward(y, labels, out=y).copy()
            big = np.zeros((self.n + 1, self.c), self.dtype)
            big[: self.n] = rows
            t, out = big[: self.n], big[1:]
            if case == "xent_fwd_out_t":
                loss, yy = F.softmax_cross_entropy_forward(x, t, out=out)
                return loss, yy.copy()
            return F.softmax_cross_entropy_backward(y, t, out=out).copy()

        both(call, case)

    @invariant()
    def y_is_what_the_backends_agree_on(self):
        if hasattr(self, "loss") and self.loss["numpy"].y is not None:
            _close(self.loss["numba"].y, self.loss["numpy"].y)


Layers.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
test_layers_state_machine = Layers.TestCase


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", "error", "-x"]))
