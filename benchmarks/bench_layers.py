"""Every layer of the table of layers (``fastlayers._table.CASES``): forward, backward, both, and peak
memory, per shape, dtype and backend; and every training step of the table (``time_backward`` is the
step: gradient and update). One suite class per entry, named after it; adding a layer to the table
adds its suite here.

``AffineGemms.time_three_gemms`` is Affine's yardstick: its three matrix products alone, into
preallocated outputs (BLAS through NumPy), the cost below which the layer cannot go.
"""

from __future__ import annotations

import numpy as np

from fastlayers._table import CASES

from .common import BACKENDS, DTYPES, _BackendSuite, dims, torch_or_skip


def _suite(case):
    class Suite(_BackendSuite):
        params = [["x".join(map(str, s)) for s in case.sizes], DTYPES, BACKENDS]
        param_names = ["shape", "dtype", "backend"]

        def setup(self, shape, dtype, backend):
            inputs = case.inputs(dims(shape), np.dtype(dtype), np.random.default_rng(0))
            if backend == "torch":
                self.forward, self.backward, self.forward_backward = case.torch(torch_or_skip(), inputs)
                return
            self._enter(backend)
            self.forward, self.backward, self.forward_backward = case.calls(case.build(inputs), inputs)
            self.forward_backward()  # compile (or load from the cache) before timing

    Suite.__name__ = Suite.__qualname__ = case.title
    Suite.__doc__ = f"{case.title}: forward, backward, both, and peak memory."
    return Suite


for _case in CASES.values():
    if _case.kind in ("layer", "forward", "step", "update"):
        globals()[_case.title] = _suite(_case)


class AffineGemms:
    """The yardstick of Affine: the three products alone, whatever the backend."""

    params = [["x".join(map(str, s)) for s in CASES["affine"].sizes], DTYPES]
    param_names = ["shape", "dtype"]

    def setup(self, shape, dtype):
        a = CASES["affine"].inputs(dims(shape), np.dtype(dtype), np.random.default_rng(0))
        self.x, self.W, self.dout = a["x"], a["W"], a["dout"]
        self.out = np.empty_like(self.dout)
        self.dx = np.empty_like(self.x)
        self.dW = np.empty_like(self.W)

    def time_three_gemms(self, shape, dtype):
        np.matmul(self.x, self.W, out=self.out)
        np.matmul(self.dout, self.W.T, out=self.dx)
        np.matmul(self.x.T, self.dout, out=self.dW)
