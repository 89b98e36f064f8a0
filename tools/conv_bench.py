"""Convolution figures against the machine: the Convolution layer at the performance issue's three
sizes (forward; forward + backward with and without the input gradient), float32 and float64, and a
SimpleConvNet / DeepConvNet Adam step, batch 100, each against PyTorch's eager equivalent and the
large-product rate of NumPy's BLAS measured in the same processes.

Usage (from the repository root)::

    python tools/conv_bench.py [--rounds 3] [--other PATH] [--torch]

Every library runs in processes of its own, taking turns round by round (``--other PATH``: a second
fastlayers, e.g. an older checkout's, put first on ``PYTHONPATH``; ``--torch``: PyTorch 2 threads,
eager), so that a noisy host loads them alike and no library's spinning threads (OpenBLAS, OpenMP)
meet another's. Each figure is the median of 15 calls in a process; the table gives the median of
the rounds and their range. "Machine limit" is the case's multiply-adds at the rate NumPy's BLAS
reaches on a 2048^3 product in the same dtype.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

CASES = [
    ("5x5 1->30 28x28 pad 0", (100, 1, 28, 28, 30, 5, 0)),
    ("3x3 16->16 28x28 pad 1", (100, 16, 28, 28, 16, 3, 1)),
    ("3x3 32->64 7x7 pad 1", (100, 32, 7, 7, 64, 3, 1)),
]
DTYPES = ("float32", "float64")


def _median_time(f, reps: int = 15) -> float:
    time.sleep(0.1)  # let the previous block's threads go idle
    f()
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _fwd_bwd(layer, x, dout) -> None:
    layer.forward(x)
    layer.backward(dout)


def _fwd_bwd_no_dx(layer, x, dout) -> None:
    layer.forward(x)
    layer._backward(dout, with_dx=False)  # as the nets' walk runs a first layer: no input gradient


def _step(opt, net, x, t) -> None:
    opt.update(net.params, net.gradient(x, t))


def _fastlayers() -> dict:
    import fastlayers as fl

    res = {}
    rng = np.random.default_rng(0)
    for dtn in DTYPES:
        a = np.ones((2048, 2048), dtn)
        c = np.empty_like(a)
        res[f"{dtn} gemm"] = 2 * 2048**3 / _median_time(functools.partial(np.matmul, a, a, out=c), 5)
        for name, (n, ch, h, w, fn, f, pad) in CASES:
            x = rng.standard_normal((n, ch, h, w)).astype(dtn)
            W = (0.1 * rng.standard_normal((fn, ch, f, f))).astype(dtn)
            layer = fl.Convolution(W, np.zeros(fn, dtn), 1, pad)
            dout = np.ones_like(layer.forward(x))
            res[f"{dtn} {name} fwd"] = _median_time(functools.partial(layer.forward, x))
            res[f"{dtn} {name} fwd+bwd"] = _median_time(functools.partial(_fwd_bwd, layer, x, dout))
            res[f"{dtn} {name} fwd+bwd no dx"] = _median_time(functools.partial(_fwd_bwd_no_dx, layer, x, dout))
        x = np.random.default_rng(1).random((100, 1, 28, 28)).astype(dtn)
        t = np.random.default_rng(2).integers(0, 10, 100)
        for net_name in ("SimpleConvNet", "DeepConvNet"):
            net, opt = getattr(fl, net_name)(dtype=dtn, seed=0), fl.Adam(1e-3)
            res[f"{dtn} {net_name} step"] = _median_time(functools.partial(_step, opt, net, x, t))
    return res


def _torch_both(conv2d, xg, Wg, bg, pad) -> None:  # noqa: N803
    y = conv2d(xg, Wg, bg, 1, pad)
    y.backward(y.detach() * 0 + 1)


def _torch_step(opt, loss, model, x, t) -> None:
    opt.zero_grad()
    loss(model(x), t).backward()
    opt.step()


def _torch() -> dict:
    import torch

    torch.set_num_threads(2)
    nn, F = torch.nn, torch.nn.functional
    res = {}
    rng = np.random.default_rng(0)
    for dtn in DTYPES:
        dt = getattr(torch, dtn)
        for name, (n, ch, h, w, fn, f, pad) in CASES:
            x = torch.from_numpy(rng.standard_normal((n, ch, h, w)).astype(dtn))
            W = torch.from_numpy((0.1 * rng.standard_normal((fn, ch, f, f))).astype(dtn))
            b = torch.zeros(fn, dtype=dt)
            with torch.no_grad():
                res[f"{dtn} {name} fwd"] = _median_time(functools.partial(F.conv2d, x, W, b, 1, pad))
            xg, Wg, bg = (v.clone().requires_grad_(True) for v in (x, W, b))  # noqa: N806
            res[f"{dtn} {name} fwd+bwd"] = _median_time(functools.partial(_torch_both, F.conv2d, xg, Wg, bg, pad))
            res[f"{dtn} {name} fwd+bwd no dx"] = _median_time(
                functools.partial(_torch_both, F.conv2d, x.clone(), Wg, bg, pad)  # x without a gradient
            )

        def conv(i, o, p=1):
            return [nn.Conv2d(i, o, 3, padding=p), nn.ReLU()]

        nets = {
            "SimpleConvNet": nn.Sequential(
                nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(4320, 100), nn.ReLU(), nn.Linear(100, 10),
            ),
            "DeepConvNet": nn.Sequential(
                *conv(1, 16), *conv(16, 16), nn.MaxPool2d(2), *conv(16, 32), *conv(32, 32, 2), nn.MaxPool2d(2),
                *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(1024, 50), nn.ReLU(), nn.Dropout(0.5), nn.Linear(50, 10), nn.Dropout(0.5),
            ),
        }  # fmt: skip
        x = torch.from_numpy(np.random.default_rng(1).random((100, 1, 28, 28)).astype(dtn))
        t = torch.from_numpy(np.random.default_rng(2).integers(0, 10, 100))
        for net_name, model in nets.items():
            model = model.to(dt)
            opt, loss = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
            res[f"{dtn} {net_name} step"] = _median_time(functools.partial(_torch_step, opt, loss, model, x, t))
    return res


def _flops(key: str) -> float:
    for name, (n, c, h, w, fn, f, p) in CASES:
        if name in key:
            macs = n * fn * (h + 2 * p - f + 1) * (w + 2 * p - f + 1) * c * f * f
            return 2 * macs * (3 if key.endswith("fwd+bwd") else 2 if key.endswith("no dx") else 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other", help="PYTHONPATH of a second fastlayers to time beside this one")
    parser.add_argument("--torch", action="store_true", help="time PyTorch's equivalents too")
    parser.add_argument("--child", choices=("fastlayers", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_fastlayers() if args.child == "fastlayers" else _torch()))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {"this": ("fastlayers", here)}
    if args.other:
        runs["other"] = ("fastlayers", args.other)
    if args.torch:
        runs["torch"] = ("torch", here)
    results: dict[str, list[dict]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for label, (child, path) in runs.items():
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run(
                [sys.executable, __file__, "--child", child], env=env, check=True, capture_output=True, text=True
            )
            results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rates = {d: [r[f"{d} gemm"] for k in runs if k != "torch" for r in results[k]] for d in DTYPES}
    labels = list(runs)
    head = " | ".join(f"{k} ms" for k in labels) + " | machine limit ms | " + " | ".join(f"{k} %" for k in labels)
    print(f"| case | {head} |")
    print("|---" * (2 * len(labels) + 2) + "|")
    for key in results["this"][0]:
        if key.endswith("gemm"):
            continue
        dtn = key.split()[0]
        rate = float(np.median(rates[dtn]))
        cells, shares = [], []
        for k in labels:
            v = np.array([r[key] for r in results[k]]) * 1e3
            cells.append(f"{np.median(v):.2f} ({v.min():.2f}-{v.max():.2f})")
            shares.append(f"{_flops(key) / (np.median(v) / 1e3) / rate * 100:.0f}%" if "step" not in key else "")
        limit = _flops(key) / rate * 1e3
        print(f"| {key} | " + " | ".join(cells) + f" | {limit:.2f} | " + " | ".join(shares) + " |")
    for d in DTYPES:
        low, high = min(rates[d]) / 1e9, max(rates[d]) / 1e9
        print(f"{d}: large-product rate {np.median(rates[d]) / 1e9:.0f} GFLOP/s ({low:.0f}-{high:.0f})")


if __name__ == "__main__":
    main()
