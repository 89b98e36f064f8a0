"""Throughput of one shared net under request threads: rows per second of ``TwoLayerNet(784, 50,
10, float32).predict`` from 1, 2 and 8 Python threads sharing one net, against the same arithmetic
in plain NumPy (``np.maximum(x @ W1 + b1, 0) @ W2 + b2``) on the same threads, at batch 1, 8 and 100.

Usage (from anywhere)::

    python tools/serving.py [--seconds 1.0] [--batches 1 8 100] [--threads 1 2 8]

Each (library, batch, threads) configuration runs in a block of its own for ``--seconds``; the
figure is rows answered per second over the block.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

import fastlayers as fl


def throughput(predict, x: np.ndarray, threads: int, seconds: float) -> float:
    """Rows per second answered by ``threads`` threads calling ``predict(x)`` for ``seconds``."""
    predict(x)  # warm
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(k: int) -> None:
        barrier.wait()
        while not stop.is_set():
            predict(x)
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) * x.shape[0] / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 100])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument(
        "--no-preload", action="store_true", help="leave the kernels unloaded (small calls then run NumPy ufuncs)"
    )
    args = parser.parse_args()
    if not args.no_preload:
        fl.preload(("float32",))  # a server's steady state: every kernel loaded before the first request
    net = fl.TwoLayerNet(784, 50, 10, dtype=np.float32, seed=0)
    W1, b1, W2, b2 = (net.params[k] for k in ("W1", "b1", "W2", "b2"))

    def numpy_predict(x):
        return np.maximum(x @ W1 + b1, 0) @ W2 + b2

    from fastlayers import _gemm

    print(f"CPU: {_gemm.cpu_model()}; rows/s, one shared net; ratio: fastlayers / NumPy on the same threads")
    print(f"{'batch':>6} {'threads':>8} {'fastlayers':>12} {'NumPy':>12} {'fl/NumPy':>9} {'fl vs 1 thread':>15}")
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = rng.standard_normal((batch, 784)).astype(np.float32)
        one = None
        for threads in args.threads:
            ours = throughput(net.predict, x, threads, args.seconds)
            theirs = throughput(numpy_predict, x, threads, args.seconds)
            one = one or ours
            print(f"{batch:>6} {threads:>8} {ours:>12,.0f} {theirs:>12,.0f} {ours / theirs:>9.2f} {ours / one:>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
