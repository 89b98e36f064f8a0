"""Affine layer: forward (GEMM + bias), backward (two GEMMs + bias gradient), both, peak memory.

``AffineGemms.time_three_gemms`` is the yardstick: the layer's three matrix products alone, into preallocated
outputs (BLAS through NumPy), the cost below which the layer cannot go.
"""

from __future__ import annotations

import numpy as np

import fastlayers

from .common import AFFINE_SHAPES, BACKENDS, DTYPES, _BackendSuite, data, dims, torch_or_skip


class Affine(_BackendSuite):
    params = [AFFINE_SHAPES, DTYPES, BACKENDS]
    param_names = ["shape", "dtype", "backend"]

    def setup(self, shape, dtype, backend):
        n, d, m = dims(shape)
        self.x = data((n, d), dtype)
        self.W = data((d, m), dtype, seed=1, scale=0.05)
        self.b = data((m,), dtype, seed=2)
        self.dout = data((n, m), dtype, seed=3)
        if backend == "torch":
            torch = torch_or_skip()
            tx, tW, tb, td = (torch.from_numpy(a) for a in (self.x, self.W, self.b, self.dout))
            self.forward = lambda: torch.addmm(tb, tx, tW)
            self.backward = lambda: (td @ tW.T, tx.T @ td, td.sum(0))
            self.forward_backward = lambda: (self.forward(), self.backward())
            return
        self._enter(backend)
        layer = fastlayers.Affine(self.W, self.b)
        layer.forward(self.x)
        self.forward = lambda: layer.forward(self.x)
        self.backward = lambda: layer.backward(self.dout)
        self.forward_backward = lambda: (layer.forward(self.x), layer.backward(self.dout))
        self.forward_backward()


class AffineGemms:
    """The yardstick: the three products alone, whatever the backend."""

    params = [AFFINE_SHAPES, DTYPES]
    param_names = ["shape", "dtype"]

    def setup(self, shape, dtype):
        n, d, m = dims(shape)
        self.x = data((n, d), dtype)
        self.W = data((d, m), dtype, seed=1, scale=0.05)
        self.dout = data((n, m), dtype, seed=3)
        self.out = np.empty((n, m), dtype)
        self.dx = np.empty((n, d), dtype)
        self.dW = np.empty((d, m), dtype)

    def time_three_gemms(self, shape, dtype):
        np.matmul(self.x, self.W, out=self.out)
        np.matmul(self.dout, self.W.T, out=self.dx)
        np.matmul(self.x.T, self.dout, out=self.dW)
