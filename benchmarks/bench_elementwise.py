"""ReLU and Sigmoid layers: forward, backward, both, and peak memory."""

from __future__ import annotations

import fastlayers

from .common import BACKENDS, DTYPES, ELEMENTWISE_SHAPES, _BackendSuite, data, dims, torch_or_skip


class _Elementwise(_BackendSuite):
    params = [ELEMENTWISE_SHAPES, DTYPES, BACKENDS]
    param_names = ["shape", "dtype", "backend"]
    layer_class = None
    torch_ops = None  # (forward, backward) names in torch / torch.ops.aten

    def setup(self, shape, dtype, backend):
        self.x = data(dims(shape), dtype)
        self.dout = data(dims(shape), dtype, seed=1)
        if backend == "torch":
            torch = torch_or_skip()
            fwd, bwd = self.torch_ops
            tx, td = torch.from_numpy(self.x), torch.from_numpy(self.dout)
            fwd, bwd = getattr(torch, fwd), getattr(torch.ops.aten, bwd)
            extra = (0,) if self.torch_ops[1] == "threshold_backward" else ()
            self.y = fwd(tx)
            self.forward = lambda: fwd(tx)
            self.backward = lambda: bwd(td, self.y, *extra)
            self.forward_backward = lambda: bwd(td, fwd(tx), *extra)
            return
        self._enter(backend)
        layer = self.layer_class()
        layer.forward(self.x)
        self.forward = lambda: layer.forward(self.x)
        self.backward = lambda: layer.backward(self.dout)
        self.forward_backward = lambda: (layer.forward(self.x), layer.backward(self.dout))
        self.forward_backward()  # compile (or load from the cache) before timing


class Relu(_Elementwise):
    layer_class = fastlayers.Relu
    torch_ops = ("relu", "threshold_backward")


class Sigmoid(_Elementwise):
    layer_class = fastlayers.Sigmoid
    torch_ops = ("sigmoid", "sigmoid_backward")
