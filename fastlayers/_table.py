"""One table of the layers: what the reference tests, ``python -m fastlayers bench``, the asv suites
and ``python -m fastlayers warmup`` run for each layer, so that adding a layer means adding its
kernel, its checked function (with its NumPy twin in :mod:`fastlayers.reference`), its class, and one
entry here.

Each :class:`Case` gives:

- ``inputs(shape, dtype, rng)``: the arrays of one forward+backward call, by name;
- ``build(inputs)``: a new layer (or stack) object for them;
- ``calls(layer, inputs)``: callables ``(forward, backward, forward_backward)`` making the classic
  API's calls on ``layer`` (``backward`` after a first ``forward``); :meth:`Case.run` does forward
  then backward and returns the results;
- ``numpy(inputs)``: the same results in idiomatic NumPy (the classic expressions);
- ``torch(torch, inputs)``: callables ``(forward, backward, forward_backward)`` doing the same work
  with PyTorch's CPU operators (``backward`` after a first ``forward``), or None where there is none;
- ``sizes``: shapes to time, the classic one first; ``shape_for(n)``: a shape of about ``n``
  elements (to reach a kernel's parallel threshold);
- ``limit``: the hardware yardstick, ``"copy"`` (with ``bytes_moved(inputs)``, what the layer reads
  and writes) or ``"3 GEMMs"``; ``kind``: ``"layer"``, ``"net"`` (a stack of layers) or ``"step"``
  (a training step: gradient and optimizer update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import layers, nets, optim

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    inputs: Callable[[tuple, np.dtype, np.random.Generator], Inputs]
    build: Callable[[Inputs], object]
    calls: Callable[[object, Inputs], tuple[Callable[[], object], ...]]
    numpy: Callable[[Inputs], tuple]
    torch: Callable[[object, Inputs], tuple[Callable[[], object], ...]] | None
    sizes: list[tuple[int, ...]]
    shape_for: Callable[[int], tuple[int, ...]]
    limit: str
    bytes_moved: Callable[[Inputs], int] | None = None
    kind: str = "layer"

    def run(self, layer: object, inputs: Inputs) -> tuple:
        """Forward then backward; the results of both, flattened into one tuple."""
        forward, backward, _ = self.calls(layer, inputs)
        out = forward()
        grads = backward()
        return (out, *grads) if isinstance(grads, tuple) else (out, grads)


def _normal(rng: np.random.Generator, shape: tuple, dtype, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


# --------------------------------------------------------------------------------------------
# ReLU and Sigmoid
# --------------------------------------------------------------------------------------------
def _activation_inputs(shape, dtype, rng) -> Inputs:
    return {"x": _normal(rng, shape, dtype), "dout": _normal(rng, shape, dtype)}


def _activation_calls(layer, a: Inputs) -> tuple:
    x, dout = a["x"], a["dout"]
    return (
        (lambda: layer.forward(x)),
        (lambda: layer.backward(dout)),
        (lambda: (layer.forward(x), layer.backward(dout))),
    )


def _relu_numpy(a: Inputs) -> tuple:
    y = np.maximum(a["x"], 0)
    return y, np.where(a["x"] > 0, a["dout"], 0).astype(a["dout"].dtype)


def _sigmoid_numpy(a: Inputs) -> tuple:
    y = 1 / (1 + np.exp(-a["x"]))
    return y, a["dout"] * (1 - y) * y


def _activation_torch(forward: str, backward: str, *extra):
    """PyTorch's operators for an activation: ``torch.<forward>`` and ``torch.ops.aten.<backward>``."""

    def make(torch, a: Inputs):
        x, dout = torch.from_numpy(a["x"]), torch.from_numpy(a["dout"])
        fwd, bwd = getattr(torch, forward), getattr(torch.ops.aten, backward)
        y = fwd(x)
        return (lambda: fwd(x)), (lambda: bwd(dout, y, *extra)), (lambda: bwd(dout, fwd(x), *extra))

    return make


def _five_passes(a: Inputs) -> int:
    return 5 * a["x"].nbytes  # forward: read x, write y; backward: read dout and y, write dx


_ELEMENTWISE_SIZES = [(100, 50), (256, 1024), (1024, 4096)]


def rows_of_4(n: int) -> tuple[int, ...]:
    return (max(1, n // 4), 4)


# --------------------------------------------------------------------------------------------
# SoftmaxWithLoss
# --------------------------------------------------------------------------------------------
def _loss_inputs(shape, dtype, rng) -> Inputs:
    return {"x": _normal(rng, shape, dtype, 3.0), "t": rng.integers(0, shape[1], shape[0])}


def _loss_calls(layer, a: Inputs) -> tuple:
    x, t = a["x"], a["t"]
    return (lambda: layer.forward(x, t)), layer.backward, (lambda: (layer.forward(x, t), layer.backward()))


def _loss_numpy(a: Inputs) -> tuple:
    x, t = a["x"], a["t"]
    n = x.shape[0]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    loss = -np.log(y[np.arange(n), t]).mean()
    dx = y.copy()
    dx[np.arange(n), t] -= 1
    return loss, dx / n


def _loss_torch(torch, a: Inputs):
    t = torch.from_numpy(a["t"])

    def forward():
        x = torch.from_numpy(a["x"]).requires_grad_()
        return x, torch.nn.functional.cross_entropy(x, t)

    _, loss = forward()

    def forward_backward():
        x, loss = forward()
        loss.backward()
        return x.grad

    return forward, (lambda: loss.backward(retain_graph=True)), forward_backward


def _four_passes(a: Inputs) -> int:
    return 4 * a["x"].nbytes  # forward: read x, write y; backward: read y, write dx


# --------------------------------------------------------------------------------------------
# Affine
# --------------------------------------------------------------------------------------------
def _affine_inputs(shape, dtype, rng) -> Inputs:
    n, d, m = shape
    return {
        "x": _normal(rng, (n, d), dtype),
        "W": _normal(rng, (d, m), dtype, 0.05),
        "b": _normal(rng, (m,), dtype),
        "dout": _normal(rng, (n, m), dtype),
    }


def _affine_calls(layer, a: Inputs) -> tuple:
    x, dout = a["x"], a["dout"]

    def backward():
        return layer.backward(dout), layer.dW, layer.db

    return (lambda: layer.forward(x)), backward, (lambda: (layer.forward(x), layer.backward(dout)))


def _affine_numpy(a: Inputs) -> tuple:
    x, W, b, dout = a["x"], a["W"], a["b"], a["dout"]
    return x @ W + b, dout @ W.T, x.T @ dout, dout.sum(axis=0)


def _affine_torch(torch, a: Inputs):
    x, W, b, dout = (torch.from_numpy(a[k]) for k in ("x", "W", "b", "dout"))

    def forward():
        return torch.addmm(b, x, W)

    def backward():
        return dout @ W.T, x.T @ dout, dout.sum(0)

    return forward, backward, (lambda: (forward(), backward()))


# --------------------------------------------------------------------------------------------
# the classic two-layer stack (Affine, ReLU, Affine, SoftmaxWithLoss): forward and backward
# --------------------------------------------------------------------------------------------
def _stack_inputs(shape, dtype, rng) -> Inputs:
    n, d, h, c = shape
    return {
        "x": _normal(rng, (n, d), dtype),
        "t": rng.integers(0, c, n),
        "W1": _normal(rng, (d, h), dtype, 0.01),
        "b1": np.zeros(h, dtype),
        "W2": _normal(rng, (h, c), dtype, 0.01),
        "b2": np.zeros(c, dtype),
    }


def _stack_build(a: Inputs) -> list:
    return [layers.Affine(a["W1"], a["b1"]), layers.Relu(), layers.Affine(a["W2"], a["b2"]), layers.SoftmaxWithLoss()]


def _stack_calls(stack: list, a: Inputs) -> tuple:
    x, t = a["x"], a["t"]
    body, last = stack[:-1], stack[-1]

    def forward():
        h = x
        for layer in body:
            h = layer.forward(h)
        return last.forward(h, t)

    def backward():
        g = last.backward()
        for layer in reversed(body):
            g = layer.backward(g)
        return stack[0].dW, stack[0].db, stack[2].dW, stack[2].db

    return forward, backward, (lambda: (forward(), backward()))


def _stack_numpy(a: Inputs) -> tuple:
    x, t = a["x"], a["t"]
    pre = x @ a["W1"] + a["b1"]
    h = np.maximum(pre, 0)
    loss, dscores = _loss_numpy({"x": h @ a["W2"] + a["b2"], "t": t})
    dh = (dscores @ a["W2"].T) * (pre > 0)
    return loss, x.T @ dh, dh.sum(axis=0), h.T @ dscores, dscores.sum(axis=0)


def _stack_torch(torch, a: Inputs):
    x, t = torch.from_numpy(a["x"]), torch.from_numpy(a["t"])
    params = [torch.from_numpy(a[k].copy()).requires_grad_() for k in ("W1", "b1", "W2", "b2")]
    W1, b1, W2, b2 = params

    def forward():
        for p in params:
            p.grad = None
        hidden = torch.relu(torch.addmm(b1, x, W1))
        return torch.nn.functional.cross_entropy(torch.addmm(b2, hidden, W2), t)

    loss = forward()
    return forward, (lambda: loss.backward(retain_graph=True)), (lambda: forward().backward())


# --------------------------------------------------------------------------------------------
# one SGD training step of the two-layer net: forward, backward, update
# --------------------------------------------------------------------------------------------
STEP_LR = 0.1


def _step_build(a: Inputs):
    d, h = a["W1"].shape
    net = nets.TwoLayerNet(d, h, a["W2"].shape[1], dtype=a["W1"].dtype)
    for key in ("W1", "b1", "W2", "b2"):
        net.params[key][...] = a[key]  # the layers hold these arrays: fill them, do not replace them
    return net, optim.SGD(STEP_LR)


def _step_calls(built, a: Inputs) -> tuple:
    net, opt = built
    x, t = a["x"], a["t"]

    def backward():
        opt.update(net.params, net.gradient(x, t))
        return tuple(net.params[k] for k in ("W1", "b1", "W2", "b2"))

    return (lambda: net.loss(x, t)), backward, (lambda: opt.update(net.params, net.gradient(x, t)))


def _step_numpy(a: Inputs) -> tuple:
    loss, dW1, db1, dW2, db2 = _stack_numpy(a)
    grads = {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
    return (loss, *(a[k] - STEP_LR * grads[k] for k in ("W1", "b1", "W2", "b2")))


def _step_torch(torch, a: Inputs, compile: bool = False):
    d, h = a["W1"].shape
    c = a["W2"].shape[1]
    dtype = torch.from_numpy(a["x"][:0]).dtype
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, c)).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(a["W1"].T.copy()))
        model[0].bias.copy_(torch.from_numpy(a["b1"]))
        model[2].weight.copy_(torch.from_numpy(a["W2"].T.copy()))
        model[2].bias.copy_(torch.from_numpy(a["b2"]))
    opt = torch.optim.SGD(model.parameters(), lr=STEP_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, t = torch.from_numpy(a["x"]), torch.from_numpy(a["t"])
    run = torch.compile(model) if compile else model

    def forward():
        return loss_fn(run(x), t)

    def step():
        opt.zero_grad(set_to_none=True)
        forward().backward()
        opt.step()

    return forward, step, step


def step_torch_compile(torch, a: Inputs):
    """``torch.compile`` of the step's model (forward and backward compiled), or None where it fails."""
    try:
        calls = _step_torch(torch, a, compile=True)
        calls[2]()  # compiles now, so that a failure (no C++ compiler, say) is seen here
    except Exception:
        return None
    return calls


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            name="relu",
            title="Relu",
            inputs=_activation_inputs,
            build=lambda a: layers.Relu(),
            calls=_activation_calls,
            numpy=_relu_numpy,
            torch=_activation_torch("relu", "threshold_backward", 0),
            sizes=_ELEMENTWISE_SIZES,
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_five_passes,
        ),
        Case(
            name="sigmoid",
            title="Sigmoid",
            inputs=_activation_inputs,
            build=lambda a: layers.Sigmoid(),
            calls=_activation_calls,
            numpy=_sigmoid_numpy,
            torch=_activation_torch("sigmoid", "sigmoid_backward"),
            sizes=_ELEMENTWISE_SIZES,
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_five_passes,
        ),
        Case(
            name="softmax_loss",
            title="SoftmaxWithLoss",
            inputs=_loss_inputs,
            build=lambda a: layers.SoftmaxWithLoss(),
            calls=_loss_calls,
            numpy=_loss_numpy,
            torch=_loss_torch,
            sizes=[(100, 10), (256, 1000), (512, 32000)],
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_four_passes,
        ),
        Case(
            name="affine",
            title="Affine",
            inputs=_affine_inputs,
            build=lambda a: layers.Affine(a["W"], a["b"]),
            calls=_affine_calls,
            numpy=_affine_numpy,
            torch=_affine_torch,
            sizes=[(100, 784, 50), (256, 1024, 1000), (1024, 4096, 1024)],
            shape_for=lambda n: (max(1, n // 4), 4, 4),
            limit="3 GEMMs",
        ),
        Case(
            name="two_layer",
            title="TwoLayerStack",
            inputs=_stack_inputs,
            build=_stack_build,
            calls=_stack_calls,
            numpy=_stack_numpy,
            torch=_stack_torch,
            sizes=[(100, 784, 50, 10)],
            shape_for=lambda n: (max(1, n // 4), 4, 4, 3),
            limit="",
            kind="net",
        ),
        Case(
            name="step",
            title="TrainingStep",
            inputs=_stack_inputs,
            build=_step_build,
            calls=_step_calls,
            numpy=_step_numpy,
            torch=_step_torch,
            sizes=[(32, 64, 50, 10), (100, 784, 50, 10), (1000, 784, 100, 10)],
            shape_for=lambda n: (max(1, n // 4), 4, 4, 3),
            limit="",
            kind="step",
        ),
    )
}
