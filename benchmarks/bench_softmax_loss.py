"""SoftmaxWithLoss: forward (softmax + mean cross-entropy), backward, both, and peak memory."""

from __future__ import annotations

import numpy as np

import fastlayers

from .common import BACKENDS, DTYPES, SOFTMAX_SHAPES, _BackendSuite, data, dims, torch_or_skip


class SoftmaxWithLoss(_BackendSuite):
    params = [SOFTMAX_SHAPES, DTYPES, BACKENDS]
    param_names = ["shape", "dtype", "backend"]

    def setup(self, shape, dtype, backend):
        n, c = dims(shape)
        self.x = data((n, c), dtype, scale=3.0)
        self.t = np.random.default_rng(2).integers(0, c, n)
        if backend == "torch":
            torch = torch_or_skip()
            tt = torch.from_numpy(self.t)
            ce = torch.nn.functional.cross_entropy

            def forward():
                tx = torch.from_numpy(self.x).requires_grad_()
                return tx, ce(tx, tt)

            def forward_backward():
                tx, loss = forward()
                loss.backward()
                return tx.grad

            self._tx, self._loss = forward()
            self.forward = forward
            self.backward = lambda: self._loss.backward(retain_graph=True)
            self.forward_backward = forward_backward
            return
        self._enter(backend)
        layer = fastlayers.SoftmaxWithLoss()
        layer.forward(self.x, self.t)
        self.forward = lambda: layer.forward(self.x, self.t)
        self.backward = lambda: layer.backward()
        self.forward_backward = lambda: (layer.forward(self.x, self.t), layer.backward())
        self.forward_backward()
