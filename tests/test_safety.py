"""Nothing a caller does through the public API crashes, corrupts memory or silently computes a wrong
answer: the cases found by trying the library as a user would, each held here.

Cases that crashed the interpreter run in a child process, so that a crash fails the test instead
of ending the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["numba", "numpy"]


def _child(code: str) -> subprocess.CompletedProcess:
    prelude = "import numpy as np, fastlayers as fl\nfrom fastlayers import functional as F\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip


def _expect_value_error_in_child(code: str, match: str) -> None:
    res = _child(
        f"""
        try:
{textwrap.indent(textwrap.dedent(code), " " * 12)}
        except ValueError as exc:
            print("ValueError:", exc)
        else:
            print("no error")
        """
    )
    assert res.returncode == 0, f"the child died (exit {res.returncode}): {res.stderr[-2000:]}"
    assert "ValueError:" in res.stdout and match in res.stdout, res.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_refilled_out_of_range_before_backward(backend):
    """Was: SIGSEGV on numba (IndexError on numpy)."""
    _expect_value_error_in_child(
        f"""
        fl.use_backend("{backend}")
        loss = fl.SoftmaxWithLoss()
        t = np.arange(4096) % 10
        loss.forward(np.random.default_rng(0).standard_normal((4096, 10)), t)
        t[:] = 10**12
        loss.backward(2.0)
        """,
        "t holds labels outside [0, 10)",
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_y_replaced_with_another_shape(backend):
    """Was: SIGSEGV on numba (``y`` of 2 columns indexed with labels up to 9)."""
    _expect_value_error_in_child(
        f"""
        fl.use_backend("{backend}")
        loss = fl.SoftmaxWithLoss()
        loss.forward(np.zeros((4096, 10)), np.arange(4096) % 10)
        loss.y = np.full((4096, 2), .5)
        loss.backward(2.0)
        """,
        "t holds labels outside [0, 2)",
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dout", [1, 2.0])
def test_labels_refilled_with_the_class_count(backend, dout):
    """Was: a silent write one element past each row on numba (past the buffer on the last row)."""
    with fl.use_backend(backend):
        loss = fl.SoftmaxWithLoss()
        t = np.arange(8) % 10
        loss.forward(np.zeros((8, 10)), t)
        loss.backward(dout)
        t[:] = 10
        with pytest.raises(ValueError, match=r"t holds labels outside \[0, 10\): min 10, max 10"):
            loss.backward(dout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(4, 3), (512, 300)])
def test_labels_refilled_in_range_give_the_new_gradient(backend, size):
    """Was: numba handed back the gradient of the old labels (computed in forward), numpy the new."""
    n, c = size
    x = np.random.default_rng(1).standard_normal(size)
    t = np.arange(n) % c
    with fl.use_backend(backend):
        loss = fl.SoftmaxWithLoss()
        loss.forward(x, t)
        t[:] = (t + 1) % c
        got = loss.backward()
    y = np.exp(x - x.max(1, keepdims=True))
    y /= y.sum(1, keepdims=True)
    want = (y - np.eye(c)[t]) / n
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_y_is_read_only_and_a_replaced_y_is_used(backend):
    x = np.random.default_rng(2).standard_normal((6, 4))
    t = np.arange(6) % 4
    with fl.use_backend(backend):
        loss = fl.SoftmaxWithLoss()
        loss.forward(x, t)
        with pytest.raises(ValueError, match="read-only"):
            loss.y[0, 0] = 1.0
        new_y = np.full((6, 4), 0.25)
        loss.y = new_y
        np.testing.assert_allclose(loss.backward(), (new_y - np.eye(4)[t]) / 6)
        loss.forward(x, t)
        loss.y.setflags(write=True)  # a deliberate unlock: the layer can no longer trust its gradient
        loss.y[:] = 0.5
        np.testing.assert_allclose(loss.backward(), (0.5 - np.eye(4)[t]) / 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_out_may_be_y(backend):
    """Was: wrong at the label column (documented as allowed)."""
    y = np.full((5, 3), 1 / 3)
    t = np.array([0, 1, 2, 0, 1])
    want = (y - np.eye(3)[t]) / 5
    with fl.use_backend(backend):
        buf = y.copy()
        got = F.softmax_cross_entropy_backward(buf, t, out=buf)
    assert got is buf
    np.testing.assert_allclose(got, want, rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_out_may_be_the_targets(backend):
    """Was: loss 3.054 instead of 2.017 with ``out=t``."""
    x = np.random.default_rng(3).standard_normal((5, 3))
    rows = np.eye(3)[[0, 1, 2, 0, 1]]
    want_loss, want_y = F.softmax_cross_entropy_forward(x, rows.copy())
    with fl.use_backend(backend):
        t = rows.copy()
        loss, y = F.softmax_cross_entropy_forward(x, t, out=t)
    assert y is t
    assert loss == pytest.approx(want_loss, rel=1e-14)
    np.testing.assert_allclose(y, want_y, rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["forward", "backward"])
@pytest.mark.parametrize("out_after_t", [True, False])
def test_out_partly_overlapping_the_targets(backend, fn, out_after_t):
    """Was: 35 of 45 elements wrong (only overlap with x or y was checked)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 5))
    rows = rng.random((9, 5))
    if fn == "forward":
        want_loss, want = F.softmax_cross_entropy_forward(x, rows)
    else:
        want = F.softmax_cross_entropy_backward(F.softmax(x), rows)
    with fl.use_backend(backend):
        big = np.zeros((10, 5))
        t_at, out_at = (slice(None, 9), slice(1, None)) if out_after_t else (slice(1, None), slice(None, 9))
        big[t_at] = rows
        t, out = big[t_at], big[out_at]  # out_after_t: row i of the result lands on row i + 1 of t
        if fn == "forward":
            loss, got = F.softmax_cross_entropy_forward(x, t, out=out)
            assert loss == pytest.approx(want_loss, rel=1e-13)
        else:
            got = F.softmax_cross_entropy_backward(F.softmax(x), t, out=out)
    assert got is out
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", [fl.SGD, fl.Momentum, fl.AdaGrad, fl.Adam])
@pytest.mark.parametrize("g_first", [True, False])
def test_optimizer_grads_partly_overlapping_params(backend, opt, g_first):
    """Was: wrong updates (SGD/Momentum 50 of 150 elements) when the gradient trails the parameter."""
    base = np.random.default_rng(5).standard_normal(200)
    p_at, g_at = (slice(50, None), slice(None, 150)) if g_first else (slice(None, 150), slice(50, None))
    with fl.use_backend(backend):
        buf = base.copy()
        p, g = buf[p_at], buf[g_at]
        want_p = base[p_at].copy()
        state = [np.zeros(150) for _ in opt._state_names]
        scalars = [np.float64(s) for s in opt()._step_scalars()]
        getattr(fl.reference, opt.__name__.lower())(want_p, *state, base[g_at].copy(), *scalars)
        opt().update({"p": p}, {"p": g})
    np.testing.assert_allclose(p, want_p, rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_grads_that_are_the_params(backend):
    with fl.use_backend(backend):
        p = np.ones(10)
        fl.SGD(lr=0.5).update({"p": p}, {"p": p})
    np.testing.assert_array_equal(p, 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_1d_x_as_the_classic_reshape(backend):
    """Was: worked on numba, raised on numpy; the classic reshape makes a (D,) x into D rows of one."""
    with fl.use_backend(backend):
        layer = fl.Affine(np.array([[2.0, 3.0]]), np.array([1.0, 0.0]))
        out = layer.forward(np.array([1.0, 2.0, 3.0]))
        dx = layer.backward(np.ones((3, 2)))
    np.testing.assert_array_equal(out, [[3, 3], [5, 6], [7, 9]])
    assert dx.shape == (3,)
    np.testing.assert_array_equal(dx, [5, 5, 5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_losses_near_the_float32_max(backend):
    """Was: 3e38 on numba, inf on numpy (the reference's float32 mean overflowed)."""
    x = np.array([[0.0, -3e38], [0.0, -3e38]], np.float32)
    t = np.array([1, 1])
    with fl.use_backend(backend):
        loss = fl.SoftmaxWithLoss().forward(x, t)
        ce = F.cross_entropy_error(np.array([[1.0, 0.0]], np.float32), np.array([1]))
    assert loss.dtype == np.float32 and np.isfinite(loss) and loss == pytest.approx(3e38, rel=1e-6)
    assert np.isinf(ce)


def test_backend_switch_is_per_thread():
    """Was: ``with use_backend("numpy")`` in one thread switched every thread."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 33)).astype(np.float32)
    t = rng.integers(0, 33, 64)

    def work():
        layer = fl.SoftmaxWithLoss()
        s = fl.Sigmoid()
        return layer.forward(s.forward(x), t), s.backward(layer.backward()).copy(), fl.get_backend()

    single = {}
    for name in BACKENDS:
        with fl.use_backend(name):
            single[name] = work()
    assert not np.array_equal(single["numba"][1], single["numpy"][1]), "the backends should differ in the last bits"
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(8)

    def run(i):
        name = BACKENDS[i % 2]
        with fl.use_backend(name):
            barrier.wait()
            results[i] = [work() for _ in range(50)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, runs in results.items():
        want = single[BACKENDS[i % 2]]
        for loss, grad, name in runs:
            assert name == BACKENDS[i % 2]
            assert loss == want[0]
            np.testing.assert_array_equal(grad, want[1])
    assert fl.get_backend() == "numba"


def test_backend_default_and_new_threads():
    seen = []
    with fl.use_backend("numpy"):
        th = threading.Thread(target=lambda: seen.append(fl.get_backend()))
        th.start()
        th.join()
    assert seen == ["numba"], "a new thread starts from the process-wide default"
    fl.set_default_backend("numpy")
    try:
        th = threading.Thread(target=lambda: seen.append(fl.get_backend()))
        th.start()
        th.join()
        assert seen[-1] == "numpy"
        assert fl.get_backend() == "numba", (
            "this thread chose numba (the tests' fixture): the default does not override it"
        )
    finally:
        fl.set_default_backend("numba")


def test_backend_follows_asyncio_tasks():
    import asyncio

    async def task(name):
        with fl.use_backend(name):
            await asyncio.sleep(0.01)
            return fl.get_backend()

    async def main():
        return await asyncio.gather(task("numpy"), task("numba"), task("numpy"))

    assert asyncio.run(main()) == ["numpy", "numba", "numpy"]
