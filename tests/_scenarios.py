"""Scenarios that may crash or hang a process, run by the tests in a subprocess with a time limit.

``python -m tests._scenarios NAME`` exits 0 when the scenario's results are right. The threading
layer is chosen by the caller through ``NUMBA_THREADING_LAYER``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastlayers as fl

# large enough for the parallel twins (over 2**18 elements), small enough to be quick
N, D, M = 600, 64, 500


def make_inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((N, D)).astype(np.float32),
        "W": (0.05 * rng.standard_normal((D, M))).astype(np.float32),
        "b": rng.standard_normal(M).astype(np.float32),
        "t": rng.integers(0, M, N),
    }


def forward_backward(inp: dict) -> list[np.ndarray]:
    """Every layer, forward and backward, on the same inputs; returns all outputs."""
    affine, relu, sig, loss = fl.Affine(inp["W"], inp["b"]), fl.Relu(), fl.Sigmoid(), fl.SoftmaxWithLoss()
    h = affine.forward(inp["x"])
    r = relu.forward(h)
    s = sig.forward(r)
    value = loss.forward(s, inp["t"])
    d = loss.backward()
    d = sig.backward(d)
    d = relu.backward(d)
    dx = affine.backward(d)
    return [h, r, s, np.asarray(value), d, dx, affine.dW, affine.db]


def same(a: list, b: list) -> bool:
    return all(np.array_equal(u, v, equal_nan=True) for u, v in zip(a, b, strict=True))


def threads(n_threads: int = 8, calls: int = 100) -> int:
    inp = make_inputs()
    expected = forward_backward(inp)

    def worker(_):
        return all(same(forward_backward(inp), expected) for _ in range(calls))

    with ThreadPoolExecutor(n_threads) as pool:
        ok = all(pool.map(worker, range(n_threads)))
    print(f"layer {fl.__main__.info()['threading_layer']}: {n_threads} threads x {calls} calls, equal: {ok}")
    return 0 if ok else 1


def _child(seed: int) -> list[np.ndarray]:
    return forward_backward(make_inputs(seed))


def processes(method: str) -> int:
    expected = [forward_backward(make_inputs(seed)) for seed in range(4)]  # the parent runs kernels first
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(_child, range(4))
    ok = all(same(r, e) for r, e in zip(results, expected, strict=True))
    print(f"{method}: 4 tasks in 2 children, equal: {ok}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    import fastlayers.__main__  # noqa: F401 - for info()

    name = argv[0]
    if name == "threads":
        return threads()
    if name in ("fork", "spawn", "forkserver"):
        return processes(name)
    raise SystemExit(f"unknown scenario {name!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
