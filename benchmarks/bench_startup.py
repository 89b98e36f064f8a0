"""Start-up: the cost of ``import fastlayers`` and of the first calls, each in a fresh interpreter.

asv's ``timeraw_`` benchmarks return source code that asv runs in a new Python process, timing only
the statement (not the interpreter's own start, nor the setup part of a ``(statement, setup)`` pair).
Every figure here is taken with a warm kernel cache: ``setup_cache`` runs the same statements once in
a child process first, so the compiled kernels are on disk, as they are for a user's second run.

The targets (issue 19) compare with ``timeraw_import_numpy``:

- ``timeraw_import_fastlayers`` at most ``import numpy`` + 30 ms (``timeraw_import_fastlayers_after_numpy``
  is that margin measured directly: numpy is imported in the untimed setup);
- ``timeraw_first_predict`` (import, ``TwoLayerNet(784, 50, 10, dtype=float32)``, one ``predict`` of
  one row) at most ``import numpy`` + 150 ms.

Issue 29: ``timeraw_first_gradient`` (the same net, one ``gradient`` of 100 rows: the first kernel
calls, so Numba's start-up) at most ``timeraw_import_fastlayers`` + 200 ms (not reached yet:
docs/PERFORMANCE.md, "Start-up and compilation").

``track_import_maxrss_*`` is the peak resident memory of a child that imports the module and exits
(its own ``ru_maxrss``, so the interpreter's baseline is included: compare the two).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

IMPORT_NUMPY = "import numpy"
IMPORT_FASTLAYERS = "import fastlayers"
FIRST_PREDICT = """
import numpy as np
from fastlayers import TwoLayerNet
net = TwoLayerNet(784, 50, 10, dtype=np.float32, seed=0)
net.predict(np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32))
"""
FIRST_GRADIENT = """
import numpy as np
from fastlayers import TwoLayerNet
net = TwoLayerNet(784, 50, 10, dtype=np.float32, seed=0)
x = np.random.default_rng(0).standard_normal((100, 784)).astype(np.float32)
net.gradient(x, np.arange(100) % 10)
"""
FIRST_RELU = """
import numpy as np
import fastlayers
fastlayers.Relu().forward(np.random.default_rng(0).standard_normal((1, 50)).astype(np.float32))
"""
MAXRSS = """
import resource
{statement}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _child(code: str, timeout: float) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


class Startup:
    """One fresh interpreter per sample; the kernel cache is warmed once per run by ``setup_cache``."""

    def setup_cache(self):
        # compiles (or loads) every kernel the statements below use and writes them to Numba's cache;
        # returns None, so the benchmarks take no cache argument
        _child(FIRST_RELU + FIRST_PREDICT + FIRST_GRADIENT, timeout=600)

    setup_cache.timeout = 900

    def timeraw_import_numpy(self):
        return IMPORT_NUMPY

    def timeraw_import_fastlayers(self):
        return IMPORT_FASTLAYERS

    def timeraw_import_fastlayers_after_numpy(self):
        return IMPORT_FASTLAYERS, IMPORT_NUMPY

    def timeraw_first_predict(self):
        return FIRST_PREDICT

    def timeraw_first_gradient(self):
        return FIRST_GRADIENT

    def timeraw_first_relu(self):
        return FIRST_RELU

    def track_import_maxrss_numpy(self):
        return int(_child(MAXRSS.format(statement=IMPORT_NUMPY), timeout=300)) / 1024

    def track_import_maxrss_fastlayers(self):
        return int(_child(MAXRSS.format(statement=IMPORT_FASTLAYERS), timeout=300)) / 1024

    track_import_maxrss_numpy.unit = track_import_maxrss_fastlayers.unit = "MiB"
