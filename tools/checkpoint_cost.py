"""What checkpoints cost a training run, measured as whole epochs: the run's wall time per epoch with
``checkpoint=`` against the same run without, in alternated rounds (medians and ranges), and the time
of one checkpoint write (snapshot, archive, fsync, rename). By default the CLI's default run (the
digits, TwoLayerNet 64-50-10, Adam, batch 32, 30 epochs, float32); ``--mnist-size`` times a run on
60,000 random rows of 784 features instead (the epoch length of MNIST).

    python tools/checkpoint_cost.py [--rounds 7] [--epochs 30] [--every STEPS] [--mnist-size]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from fastlayers import _gemm
from fastlayers.checkpoint import write_packed
from fastlayers.datasets import load_digits
from fastlayers.optim import Adam
from fastlayers.train import _Checkpoints, _Position, _snapshot, build_net, fit


def one_run(data, epochs: int, path: str | None, every: int | None) -> tuple[float, int]:
    (x, t), test = data
    net = build_net("two", x.shape[1], [50], 10, "relu", x.dtype, 0)
    np.random.seed(0)  # noqa: NPY002 - as the CLI does
    written = []
    real = _Checkpoints.write

    def counted(self, snapshot, force=False):
        before = self.written
        real(self, snapshot, force)
        written.append(self.written - before)

    _Checkpoints.write = counted
    try:
        start = time.perf_counter()
        fit(net, Adam(0.005), (x, t), test, epochs, 32, 0, checkpoint=path, checkpoint_every=every)
        return (time.perf_counter() - start) / epochs, sum(written)
    finally:
        _Checkpoints.write = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--every", type=int, default=None, help="also checkpoint every STEPS steps")
    ap.add_argument("--mnist-size", action="store_true", help="60,000 rows of 784 features")
    args = ap.parse_args()
    if args.mnist_size:
        rng = np.random.default_rng(0)
        x = rng.random((60000, 784), np.float32)
        t = rng.integers(0, 10, 60000)
        data = ((x, t), (x[:10000], t[:10000]))
    else:
        data = load_digits(seed=0, dtype=np.float32)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "ck.npz")
    one_run(data, 2, None, None)  # kernels loaded
    one_run(data, 2, path, args.every)
    plain, with_ck, counts = [], [], []
    for _ in range(args.rounds):
        plain.append(one_run(data, args.epochs, None, None)[0])
        seconds, n = one_run(data, args.epochs, path, args.every)
        with_ck.append(seconds)
        counts.append(n)
    ratios = [c / p - 1 for p, c in zip(plain, with_ck, strict=True)]
    (x, t), test = data
    net = build_net("two", x.shape[1], [50], 10, "relu", x.dtype, 0)
    opt = Adam(0.005)
    fit(net, opt, (x, t), test, 1, 32, 0)
    rng = np.random.default_rng(0)
    history = [{"epoch": i, "loss": 0.1, "train_acc": 0.9, "test_acc": 0.9, "seconds": 0.1, "examples_per_s": 1.0}
               for i in range(args.epochs)]  # fmt: skip
    writes = []
    for _ in range(20):
        s = time.perf_counter()
        meta, data_bytes = _snapshot(net, opt, rng, _Position(2, 0, 45), history, {}, {})
        snap = time.perf_counter() - s
        write_packed(path, meta, data_bytes)
        writes.append((snap, time.perf_counter() - s))
    ms = 1e3
    print(f"CPU: {_gemm.cpu_model()}; {os.cpu_count()} cores; {'MNIST-size' if args.mnist_size else 'digits'} run")
    print(f"epoch without checkpoints: median {statistics.median(plain) * ms:.2f} ms "
          f"(range {min(plain) * ms:.2f}-{max(plain) * ms:.2f})")  # fmt: skip
    print(f"epoch with checkpoints{f' every {args.every} steps' if args.every else ''}: median "
          f"{statistics.median(with_ck) * ms:.2f} ms (range {min(with_ck) * ms:.2f}-{max(with_ck) * ms:.2f}); "
          f"{statistics.median(counts):.0f} checkpoints written in {args.epochs} epochs")  # fmt: skip
    print(f"cost: median {statistics.median(ratios) * 100:+.1f}% of an epoch "
          f"(per round: {', '.join(f'{r * 100:+.1f}%' for r in ratios)})")  # fmt: skip
    print(f"one checkpoint: snapshot {statistics.median(w[0] for w in writes) * 1e6:.0f} us; snapshot and write "
          f"{statistics.median(w[1] for w in writes) * ms:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
