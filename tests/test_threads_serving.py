"""Many threads, one net: request threads share one net and call ``predict`` (and ``accuracy``) at
once, at batch sizes below and above the buffer-reuse and parallel thresholds; every caller gets
exactly the answer a lone call gives. Each thread runs for a fixed time, long enough for thousands
of calls to interleave (a race between one call's result and another's reuse of a layer buffer
shows up as a wrong answer)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import fastlayers as fl

THREADS = 8
SECONDS = 1.5
#: 1 and 8 rows (served requests), 200 (the hidden layer's buffer is reused), 3000 (parallel kernels)
BATCHES = (1, 8, 200, 3000)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_net_predict_from_many_threads(dtype):
    rng = np.random.default_rng(0)
    net = fl.TwoLayerNet(784, 50, 10, dtype=dtype, seed=1)
    inputs = [rng.standard_normal((n, 784)).astype(dtype) for n in BATCHES]
    labels = [rng.integers(0, 10, n) for n in BATCHES]
    expected = [net.predict(x).copy() for x in inputs]
    expected_acc = [net.accuracy(x, t) for x, t in zip(inputs, labels, strict=True)]
    errors: list[str] = []
    calls = [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(k: int) -> None:
        start.wait()
        end = time.perf_counter() + SECONDS
        i = k
        while time.perf_counter() < end:
            j = i % len(BATCHES)
            got = net.predict(inputs[j])
            if not np.array_equal(got, expected[j]):
                errors.append(f"thread {k}, batch {BATCHES[j]}: predict differs")
            if i % 7 == 0 and net.accuracy(inputs[j], labels[j]) != expected_acc[j]:
                errors.append(f"thread {k}, batch {BATCHES[j]}: accuracy differs")
            i += 1
            calls[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[:5]
    assert min(calls) >= 20, calls  # every thread ran many calls while the others did
