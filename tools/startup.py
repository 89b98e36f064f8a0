"""Whole-process start-up figures: wall time and peak memory of a fresh Python that imports NumPy,
fastlayers, and answers its first call, each the median of several runs.

Usage (from anywhere)::

    python tools/startup.py [--runs 9] [--only NAME ...] [--json]

Each snippet runs in its own process (``python -c``), the snippets taking turns run by run so that a
noisy machine loads them alike; a first round, not counted, warms the file cache and the kernel
cache. Wall time is measured around the whole process (interpreter start and exit included); peak
memory is the child's maximum resident set (``wait4``'s ``ru_maxrss``). Each line gives the median,
the range (fastest to slowest run), and the median's difference from ``import numpy`` and from
``import fastlayers``.

The children run in the current directory, which ``python -c`` puts first on ``sys.path``: run
from a checkout's root, they import that checkout's fastlayers whatever ``PYTHONPATH`` says (run
from elsewhere to time another tree). They inherit this environment: with
``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` in a source checkout, every fastlayers module
is compiled from source in every run, which an installed package does not do (``python -m
compileall fastlayers`` first to time that case).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SNIPPETS = {
    "python": "pass",
    "import numpy": "import numpy",
    "import fastlayers": "import fastlayers",
    "import + first Relu": ("import numpy as np, fastlayers as fl; fl.Relu().forward(np.ones((2, 3), np.float32))"),
    "import + first predict, 1 row": (
        "import numpy as np, fastlayers as fl; "
        "fl.TwoLayerNet(784, 50, 10, dtype=np.float32).predict(np.ones((1, 784), np.float32))"
    ),
    "import + first predict, 100 rows": (
        "import numpy as np, fastlayers as fl; "
        "fl.TwoLayerNet(784, 50, 10, dtype=np.float32).predict(np.ones((100, 784), np.float32))"
    ),
    "import + first gradient, 100 rows": (
        "import numpy as np, fastlayers as fl; "
        "fl.TwoLayerNet(784, 50, 10, dtype=np.float32)"
        ".gradient(np.ones((100, 784), np.float32), np.zeros(100, np.int64))"
    ),
}


def run_once(code: str) -> tuple[float, float]:
    """Seconds and peak MiB of ``python -c code``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{code!r} exited with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SNIPPETS),
        metavar="NAME",
        help="time only this snippet (repeatable; the two imports are always timed)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    names = [n for n in SNIPPETS if not args.only or n in args.only or n in ("import numpy", "import fastlayers")]
    for name in names:  # warm the file cache and the kernel cache
        run_once(SNIPPETS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    mems: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            seconds, mib = run_once(SNIPPETS[name])
            times[name].append(seconds)
            mems[name].append(mib)
    result = {
        name: {
            "ms": statistics.median(times[name]) * 1e3,
            "min_ms": min(times[name]) * 1e3,
            "max_ms": max(times[name]) * 1e3,
            "MiB": statistics.median(mems[name]),
        }
        for name in names
    }
    numpy_ms, fastlayers_ms = result["import numpy"]["ms"], result["import fastlayers"]["ms"]
    if args.json:
        print(json.dumps({"runs": args.runs, "figures": result}, indent=2))
        return 0
    print(f"median (range) of {args.runs} runs per line, whole process ({sys.executable})")
    print(f"{'what':<36} {'ms':>8} {'range':>15} {'- numpy':>9} {'- import':>9} {'peak MiB':>9}")
    for name, fig in result.items():
        span = f"{fig['min_ms']:.0f}-{fig['max_ms']:.0f}"
        print(
            f"{name:<36} {fig['ms']:8.1f} {span:>15} {fig['ms'] - numpy_ms:+9.1f}"
            f" {fig['ms'] - fastlayers_ms:+9.1f} {fig['MiB']:9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
