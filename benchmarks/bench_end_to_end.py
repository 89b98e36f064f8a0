"""A forward+backward pass of the classic 784-50-10 two-layer stack, batch 100, and a training step."""

from __future__ import annotations

import numpy as np

from fastlayers.nets import TwoLayerNet
from fastlayers.optim import SGD

from .common import BACKENDS, DTYPES, _BackendSuite, torch_or_skip


class TwoLayerStack(_BackendSuite):
    time_forward = time_backward = None  # the stack is timed as a whole
    params = [DTYPES, BACKENDS]
    param_names = ["dtype", "backend"]

    def setup(self, dtype, backend):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((100, 784)).astype(dtype)
        self.t = rng.integers(0, 10, 100)
        if backend == "torch":
            torch = torch_or_skip()
            tx, tt = torch.from_numpy(self.x), torch.from_numpy(self.t)
            params = [
                torch.from_numpy((0.01 * rng.standard_normal(s)).astype(dtype)).requires_grad_()
                for s in ((784, 50), (50,), (50, 10), (10,))
            ]
            W1, b1, W2, b2 = params

            def step():
                for p in params:
                    p.grad = None
                h = torch.relu(torch.addmm(b1, tx, W1))
                torch.nn.functional.cross_entropy(torch.addmm(b2, h, W2), tt).backward()

            self.forward_backward = step
            self.train_step = step
            return
        self._enter(backend)
        self.net = TwoLayerNet(784, 50, 10, dtype=dtype, seed=0)
        self.opt = SGD(0.1)
        self.forward_backward = lambda: self.net.gradient(self.x, self.t)
        self.train_step = lambda: self.opt.update(self.net.params, self.net.gradient(self.x, self.t))
        self.train_step()

    def time_train_step(self, dtype, backend):
        self.train_step()


class Import:
    """Cost of ``import fastlayers`` in a fresh interpreter (warm kernel cache)."""

    def timeraw_import(self):
        return "import fastlayers"
