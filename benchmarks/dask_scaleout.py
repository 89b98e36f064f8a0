"""Scale-out on Dask: the figures of the README's "Scale-out on Dask" section.

    python benchmarks/dask_scaleout.py [--rows 100000 1000000] [--repeat 3]

1. Inference throughput (rows/s) of a TwoLayerNet 784-50-10 (float32) on rows of 784 float32
   features: in process (``net.predict``, 100,000 rows at a time), then on a ``LocalCluster`` of 1 and
   of 2 one-thread worker processes (the rows made and kept on the workers; ``predict(...).compute()``
   brings the scores back here). The in-process and cluster figures are timed in separate blocks
   (no cluster runs while the in-process ones are timed). Medians of ``--repeat`` runs.
2. The net's share of the graph the scheduler holds: pickled graph bytes of ``predict`` at 10 and
   1,000 row blocks against the net's bytes.
3. Synchronous training: the step time of ``fastlayers.dask.fit`` on 2 workers against the same steps
   in process (``reference_fit``), per batch size.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time

import numpy as np


def cpu_name() -> str:
    from fastlayers._gemm import cpu_model

    return cpu_model()


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000, 4000, 10000])
    parser.add_argument("--train-rows", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    import dask
    import dask.array as da
    from distributed import Client

    dask.config.set({"distributed.admin.large-graph-warning-threshold": "64GiB"})  # the training rows, sent once

    import fastlayers as fl
    import fastlayers.dask as fd

    def make_net():
        return fl.TwoLayerNet(784, 50, 10, dtype=np.float32, seed=0)

    figures: dict = {"cpu": cpu_name(), "cores": __import__("os").cpu_count(), "predict": {}, "train": {}}
    print(f"CPU: {figures['cpu']} ({figures['cores']} cores)")

    # 1a. inference in process
    net = make_net()
    for n in args.rows:
        x = np.random.default_rng(0).standard_normal((n, 784), dtype=np.float32)

        def run(x=x):
            for lo in range(0, len(x), 100_000):
                net.predict(x[lo : lo + 100_000])

        run()
        seconds = median_time(run, args.repeat)
        figures["predict"][f"in-process/{n}"] = n / seconds
        print(f"predict in process, {n:>9,} rows: {n / seconds:>12,.0f} rows/s ({seconds:.3f} s)", flush=True)
        del x

    # 3a. training steps in process
    rng = np.random.default_rng(1)
    xt = rng.standard_normal((args.train_rows, 784), dtype=np.float32)
    tt = rng.integers(0, 10, args.train_rows)
    half = args.train_rows // 2
    for bs in args.batch_sizes:
        _, steps = fd.batch_plan([half, half], bs)
        steps = min(steps, 50)

        def run_steps(bs=bs, steps=steps):
            n, o = make_net(), fl.SGD(0.01)
            for step in range(steps):
                rows = fd.global_batch([half, half], bs, 0, 0, step)
                o.update(n.params, n.gradient(xt[rows], tt[rows]))

        run_steps()
        seconds = median_time(run_steps, args.repeat) / steps
        figures["train"][f"in-process/{bs}"] = seconds
        print(f"train step in process, batch {bs:>6}: {seconds * 1e3:8.2f} ms", flush=True)

    # 2. the net's share of the graph
    nbytes = sum(v.nbytes for v in net.params.values())
    sizes = {}
    for blocks in (10, 1000):
        graph = fd.predict(net, da.zeros((100_000, 784), np.float32, chunks=100_000 // blocks)).__dask_graph__()
        sizes[blocks] = len(pickle.dumps(dict(graph)))
    figures["graph_bytes"] = {"net": nbytes, **{str(k): v for k, v in sizes.items()}}
    print(f"graph bytes: net {nbytes:,}; predict graph at 10 blocks {sizes[10]:,}, at 1000 blocks {sizes[1000]:,}")

    # 1b, 3b. on clusters
    for workers in (1, 2):
        with fd.local_cluster(workers, 1) as cluster, Client(cluster) as client:
            for n in args.rows:
                # blocks of 100,000 rows (as in process), spread evenly over the workers
                X = da.random.default_rng(0).standard_normal((n, 784), dtype=np.float32, chunks=(100_000, 784))
                client.wait_for_workers(workers)
                X = client.persist(X)
                from distributed import wait

                wait(X)
                client.rebalance(X)
                client.compute(fd.predict(net, X)).result()  # warm: kernels loaded on the workers
                # scores gathered into this process, and scores left on the workers (persist)
                seconds = median_time(lambda X=X: client.compute(fd.predict(net, X)).result(), args.repeat)
                kept = median_time(lambda X=X: wait(client.persist(fd.predict(net, X))), args.repeat)
                figures["predict"][f"{workers}-workers/{n}"] = n / seconds
                figures["predict"][f"{workers}-workers-kept/{n}"] = n / kept
                print(
                    f"predict on {workers} worker(s), {n:>9,} rows: {n / seconds:>12,.0f} rows/s ({seconds:.3f} s) "
                    f"gathered, {n / kept:>12,.0f} rows/s ({kept:.3f} s) left on the workers",
                    flush=True,
                )
                del X
            if workers == 2:
                X = da.from_array(xt, chunks=(half, 784))
                T = da.from_array(tt, chunks=half)
                X, T = client.persist([X, T])
                for bs in args.batch_sizes:
                    history = fd.fit(make_net(), fl.SGD(0.01), X, T, 2, bs, client)
                    epoch = history.epochs[-1]
                    seconds = epoch.seconds / epoch.steps
                    figures["train"][f"2-workers/{bs}"] = seconds
                    base = figures["train"][f"in-process/{bs}"]
                    print(
                        f"train step on 2 workers, batch {bs:>6}: {seconds * 1e3:8.2f} ms "
                        f"({seconds / base:.2f}x in process, overhead {(seconds - base) * 1e3:+.2f} ms)",
                        flush=True,
                    )
    for n in args.rows:
        base = figures["predict"][f"in-process/{n}"]
        ratios = ", ".join(
            f"{w} worker(s) {figures['predict'][f'{w}-workers/{n}'] / base:.2f}x gathered, "
            f"{figures['predict'][f'{w}-workers-kept/{n}'] / base:.2f}x left on the workers"
            for w in (1, 2)
        )
        print(f"predict {n:,} rows against in process: {ratios}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
