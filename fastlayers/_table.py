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
  and writes), ``"3 GEMMs"``, or ``"GEMM rate"`` (with ``flops(inputs)``, the floating-point
  operations of the products the call does: the time they take at the rate NumPy's BLAS reaches on
  a large product, measured in the same run); ``kind``: ``"layer"``, ``"forward"`` (a layer's
  forward pass alone: ``forward``, ``backward`` and both are that pass), ``"net"`` (a stack of
  layers), ``"step"`` (a training step: gradient and optimizer update) or ``"update"`` (one
  optimizer update of one parameter array: ``forward``, ``backward`` and both are that update);
- ``random``: the layer draws random numbers (dropout): its results are checked against its own
  mask, not against ``numpy``'s, which draws its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import layers, nets, optim
from ._backend import use_backend

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
    random: bool = False
    flops: Callable[[Inputs], int] | None = None

    def run(self, layer: object, inputs: Inputs) -> tuple:
        """Forward then backward; the results of both, flattened into one tuple (an ``update`` or
        ``forward`` entry: the one call's result)."""
        forward, backward, _ = self.calls(layer, inputs)
        if self.kind in ("update", "forward"):
            return (forward(),)
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
# inference of the two-layer net at served batch sizes (the per-call floor)
# --------------------------------------------------------------------------------------------
def _predict_build(a: Inputs):
    return _step_build(a)[0]


def _predict_calls(net, a: Inputs) -> tuple:
    x = a["x"]
    predict = net.predict
    return (lambda: predict(x)), (lambda: ()), (lambda: predict(x))


def _predict_numpy(a: Inputs) -> tuple:
    return (np.maximum(a["x"] @ a["W1"] + a["b1"], 0) @ a["W2"] + a["b2"],)


def _predict_torch(torch, a: Inputs):
    d, h = a["W1"].shape
    dtype = torch.from_numpy(a["x"][:0]).dtype
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, a["W2"].shape[1])).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(a["W1"].T.copy()))
        model[0].bias.copy_(torch.from_numpy(a["b1"]))
        model[2].weight.copy_(torch.from_numpy(a["W2"].T.copy()))
        model[2].bias.copy_(torch.from_numpy(a["b2"]))
    x = torch.from_numpy(a["x"])

    def predict():
        with torch.inference_mode():
            return model(x).numpy()

    return predict, (lambda: ()), predict


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
    return _torch_training_step(torch, torch.compile(model) if compile else model, opt, a)


def _torch_training_step(torch, model, opt, a: Inputs) -> tuple:
    """(forward, step, step): the cross-entropy of ``model`` (or its compiled form) on ``a``'s
    inputs and labels, and one step of ``opt`` on it."""
    loss_fn = torch.nn.CrossEntropyLoss()
    x, t = torch.from_numpy(a["x"]), torch.from_numpy(a["t"])

    def forward():
        return loss_fn(model(x), t)

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


# --------------------------------------------------------------------------------------------
# PyTorch through autograd: an operator on ``x`` (and parameters), backward from ``dout``
# --------------------------------------------------------------------------------------------
def _autograd_calls(x, dout, op, params=(), with_dx: bool = True) -> tuple:
    """``(forward, backward, forward_backward)`` of ``op(x)`` through PyTorch's autograd, the
    gradient of ``x`` taken when ``with_dx``; ``params`` (leaf tensors) have their gradients reset
    before each forward+backward."""

    def forward():
        xx = x.detach().requires_grad_(with_dx)
        return xx, op(xx)

    _, y = forward()

    def forward_backward():
        for p in params:
            p.grad = None
        xx, out = forward()
        out.backward(dout)
        return xx.grad

    return (lambda: forward()[1]), (lambda: y.backward(dout, retain_graph=True)), forward_backward


# --------------------------------------------------------------------------------------------
# Convolution: (N, C, H, W, FN, FH, FW, pad), stride 1
# --------------------------------------------------------------------------------------------
def _conv_inputs(shape, dtype, rng) -> Inputs:
    n, c, h, w, fn, fh, fw, pad = shape
    oh, ow = h + 2 * pad - fh + 1, w + 2 * pad - fw + 1
    return {
        "x": _normal(rng, (n, c, h, w), dtype),
        "W": _normal(rng, (fn, c, fh, fw), dtype, float(np.sqrt(2.0 / (c * fh * fw)))),
        "b": _normal(rng, (fn,), dtype, 0.1),
        "dout": _normal(rng, (n, fn, oh, ow), dtype),
    }


def _conv_build(a: Inputs):
    return layers.Convolution(a["W"], a["b"], 1, _conv_pad(a))


def _conv_calls(layer, a: Inputs, with_dx: bool = True) -> tuple:
    x, dout = a["x"], a["dout"]

    def backward():
        dx = layer._backward(dout, with_dx)
        return (dx, layer.dW, layer.db) if with_dx else (layer.dW, layer.db)

    return (lambda: layer.forward(x)), backward, (lambda: (layer.forward(x), backward()))


def _conv_pad(a: Inputs) -> int:
    return (a["W"].shape[2] - 1 - a["x"].shape[2] + a["dout"].shape[2]) // 2


def _conv_numpy(a: Inputs, with_dx: bool = True) -> tuple:
    """The convolution as NumPy users write it: windows by ``sliding_window_view``, ``tensordot``."""
    x, W, b, dout = a["x"], a["W"], a["b"], a["dout"]
    pad = _conv_pad(a)
    fh, fw = W.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (fh, fw), axis=(2, 3))  # (N, C, OH, OW, FH, FW)
    out = np.tensordot(win, W, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2) + b[:, None, None]
    dW = np.tensordot(dout, win, axes=([0, 2, 3], [0, 2, 3]))
    db = dout.sum(axis=(0, 2, 3))
    if not with_dx:
        return out, dW, db
    dwin = np.tensordot(dout, W, axes=([1], [0]))  # (N, OH, OW, C, FH, FW)
    dxp = np.zeros_like(xp)
    oh, ow = dout.shape[2:]
    for ky in range(fh):
        for kx in range(fw):
            dxp[:, :, ky : ky + oh, kx : kx + ow] += dwin[..., ky, kx].transpose(0, 3, 1, 2)
    return out, dxp[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]], dW, db


def _conv_torch(torch, a: Inputs, with_dx: bool = True):
    W, b = (torch.from_numpy(a[k].copy()).requires_grad_() for k in ("W", "b"))
    pad = _conv_pad(a)
    op = lambda x: torch.nn.functional.conv2d(x, W, b, 1, pad)  # noqa: E731
    return _autograd_calls(torch.from_numpy(a["x"]), torch.from_numpy(a["dout"]), op, (W, b), with_dx)


_CONV_SIZES = [(100, 1, 28, 28, 30, 5, 5, 0), (100, 16, 28, 28, 16, 3, 3, 1), (100, 32, 7, 7, 64, 3, 3, 1)]


def _conv_shape_for(n: int) -> tuple:
    return (max(1, n // 64), 1, 8, 8, 2, 3, 3, 1)


def _conv_flops(a: Inputs, products: int = 1) -> int:
    """Floating-point operations of ``products`` convolution-sized products (forward: 1; the
    weight gradient and the input gradient: one more each): 2 * N * FN * OH * OW * C * FH * FW."""
    return products * 2 * a["dout"].size * (a["W"].size // a["W"].shape[0])


def _conv_forward_calls(layer, a: Inputs) -> tuple:
    def forward():
        return layer.forward(a["x"])

    return forward, forward, forward


def _conv_forward_numpy(a: Inputs) -> tuple:
    return _conv_numpy(a)[:1]


def _conv_forward_torch(torch, a: Inputs):
    W, b = (torch.from_numpy(a[k]) for k in ("W", "b"))
    x = torch.from_numpy(a["x"])
    pad = _conv_pad(a)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, W, b, 1, pad)

    return forward, forward, forward


# --------------------------------------------------------------------------------------------
# Pooling 2x2, stride 2: (N, C, H, W)
# --------------------------------------------------------------------------------------------
def _pool_inputs(shape, dtype, rng) -> Inputs:
    n, c, h, w = shape
    return {"x": _normal(rng, shape, dtype), "dout": _normal(rng, (n, c, h // 2, w // 2), dtype)}


def _pool_calls(layer, a: Inputs) -> tuple:
    x, dout = a["x"], a["dout"]
    return (
        (lambda: layer.forward(x)),
        (lambda: layer.backward(dout)),
        (lambda: (layer.forward(x), layer.backward(dout))),
    )


def _pool_numpy(a: Inputs) -> tuple:
    """2x2 max pooling as NumPy users write it: a reshape into windows, ``max`` and ``argmax``."""
    x, dout = a["x"], a["dout"]
    n, c, h, w = x.shape
    win = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // 2, w // 2, 4)
    arg = win.argmax(axis=-1)
    dwin = np.zeros(win.shape, dout.dtype)
    np.put_along_axis(dwin, arg[..., None], dout[..., None], axis=-1)
    dx = np.zeros_like(x)
    dx[:, :, : h // 2 * 2, : w // 2 * 2] = (
        dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2 * 2, w // 2 * 2)
    )
    return win.max(axis=-1), dx


def _pool_torch(torch, a: Inputs):
    op = lambda x: torch.nn.functional.max_pool2d(x, 2, 2)  # noqa: E731
    return _autograd_calls(torch.from_numpy(a["x"]), torch.from_numpy(a["dout"]), op)


def _pool_bytes(a: Inputs) -> int:
    # forward: read x, write the maxima and their one-byte indices; backward: read dout and the
    # indices, write dx
    return 2 * a["x"].nbytes + 2 * a["dout"].nbytes + 2 * a["dout"].size


# --------------------------------------------------------------------------------------------
# Dropout(0.5), training mode
# --------------------------------------------------------------------------------------------
def _dropout_calls(layer, a: Inputs) -> tuple:
    x, dout = a["x"], a["dout"]
    return (
        (lambda: layer.forward(x)),
        (lambda: layer.backward(dout)),
        (lambda: (layer.forward(x), layer.backward(dout))),
    )


def _dropout_numpy(a: Inputs) -> tuple:
    mask = np.random.rand(*a["x"].shape) > 0.5  # noqa: NPY002 - what the classic code writes
    return a["x"] * mask, a["dout"] * mask


def _dropout_torch(torch, a: Inputs):
    op = lambda x: torch.nn.functional.dropout(x, 0.5, training=True)  # noqa: E731
    return _autograd_calls(torch.from_numpy(a["x"]), torch.from_numpy(a["dout"]), op)


def _dropout_bytes(a: Inputs) -> int:
    # forward: read x, write out and the one-byte mask; backward: read dout and the mask, write dx
    return 4 * a["x"].nbytes + 2 * a["x"].size


# --------------------------------------------------------------------------------------------
# BatchNormalization, training mode: (N, D)
# --------------------------------------------------------------------------------------------
def _bn_inputs(shape, dtype, rng) -> Inputs:
    n, d = shape
    return {
        "x": _normal(rng, shape, dtype, 2.0) + dtype.type(1),
        "gamma": _normal(rng, (d,), dtype),
        "beta": _normal(rng, (d,), dtype),
        "dout": _normal(rng, shape, dtype),
    }


def _bn_calls(layer, a: Inputs) -> tuple:
    x, dout = a["x"], a["dout"]

    def backward():
        return layer.backward(dout), layer.dgamma, layer.dbeta

    return (lambda: layer.forward(x)), backward, (lambda: (layer.forward(x), backward()))


def _bn_numpy(a: Inputs) -> tuple:
    """The classic forward and the closed-form backward, as NumPy users write them."""
    x, gamma, beta, dout = a["x"], a["gamma"], a["beta"], a["dout"]
    n = x.shape[0]
    mu = x.mean(axis=0)
    xc = x - mu
    std = np.sqrt((xc**2).mean(axis=0) + x.dtype.type(1e-6))
    xn = xc / std
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xn).sum(axis=0)
    dx = (gamma / std) * (dout - dbeta / n - xn * (dgamma / n))
    return gamma * xn + beta, dx, dgamma, dbeta


def _bn_torch(torch, a: Inputs):
    gamma, beta = (torch.from_numpy(a[k].copy()).requires_grad_() for k in ("gamma", "beta"))
    rm, rv = torch.zeros_like(gamma.detach()), torch.ones_like(gamma.detach())
    op = lambda x: torch.nn.functional.batch_norm(x, rm, rv, gamma, beta, training=True, eps=1e-6)  # noqa: E731
    return _autograd_calls(torch.from_numpy(a["x"]), torch.from_numpy(a["dout"]), op, (gamma, beta))


def _bn_bytes(a: Inputs) -> int:
    # forward: read x, write out and xn; backward: read dout and xn (twice, per block in cache), write dx
    return 6 * a["x"].nbytes


# --------------------------------------------------------------------------------------------
# the two chapter 6 optimizers: one update of a (rows, cols) parameter
# --------------------------------------------------------------------------------------------
def _update_inputs(shape, dtype, rng) -> Inputs:
    return {"p": _normal(rng, shape, dtype), "g": _normal(rng, shape, dtype)}


def _update_calls(opt, a: Inputs) -> tuple:
    p, g = a["p"].copy(), a["g"]

    def step():
        opt.update({"p": p}, {"p": g})
        return p

    return step, step, step


def _nesterov_numpy(a: Inputs) -> tuple:
    p, g = a["p"].copy(), a["g"]
    v = np.zeros_like(p)
    p += 0.9 * 0.9 * v
    p -= (1 + 0.9) * 0.01 * g
    v *= 0.9
    v -= 0.01 * g
    return (p,)


def _rmsprop_numpy(a: Inputs) -> tuple:
    p, g = a["p"].copy(), a["g"]
    h = np.zeros_like(p)
    h *= 0.99
    h += (1 - 0.99) * g * g
    p -= 0.01 * g / (np.sqrt(h) + 1e-7)
    return (p,)


def _update_torch(name: str):
    def make(torch, a: Inputs):
        p = torch.from_numpy(a["p"].copy()).requires_grad_()
        p.grad = torch.from_numpy(a["g"])
        if name == "nesterov":
            opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.RMSprop([p], lr=0.01, alpha=0.99, eps=1e-7)
        return opt.step, opt.step, opt.step

    return make


def _update_bytes(a: Inputs) -> int:
    return 5 * a["p"].nbytes  # read p, g and the state; write p and the state


_UPDATE_SIZES = [(784, 50), (1024, 1024), (4096, 1024)]


# --------------------------------------------------------------------------------------------
# one Adam training step of SimpleConvNet: (N, C, H, W)
# --------------------------------------------------------------------------------------------
CONV_STEP_LR = 0.001


def _convnet_inputs(shape, dtype, rng) -> Inputs:
    n = shape[0]
    return {"x": _normal(rng, shape, dtype), "t": rng.integers(0, 10, n), "dtype": np.zeros(0, dtype)}


def _convnet_build(a: Inputs):
    c, h, w = a["x"].shape[1:]
    net = nets.SimpleConvNet(input_dim=(c, h, w), dtype=a["dtype"].dtype, seed=0)
    return net, optim.Adam(CONV_STEP_LR)


def _convnet_calls(built, a: Inputs) -> tuple:
    net, opt = built
    x, t = a["x"], a["t"]

    def backward():
        opt.update(net.params, net.gradient(x, t))
        return tuple(net.params[k] for k in sorted(net.params))

    return (lambda: net.loss(x, t)), backward, (lambda: opt.update(net.params, net.gradient(x, t)))


def _convnet_numpy(a: Inputs) -> tuple:
    """The same step written in plain NumPy: the book's own way (im2col, matrix products), which is
    fastlayers' reference path."""
    with use_backend("numpy"):
        built = _convnet_build(a)
        forward, backward, _ = _convnet_calls(built, a)
        return (forward(), *backward())


def _convnet_torch(torch, a: Inputs):
    net = _convnet_build(a)[0]
    p = net.params
    fn, c, fs, _ = p["W1"].shape
    nn = torch.nn
    dtype = torch.from_numpy(a["x"][:0]).dtype
    model = nn.Sequential(
        nn.Conv2d(c, fn, fs), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(p["W2"].shape[0], p["W2"].shape[1]), nn.ReLU(), nn.Linear(p["W3"].shape[0], p["W3"].shape[1]),
    ).to(dtype)  # fmt: skip
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(p["W1"]))
        model[0].bias.copy_(torch.from_numpy(p["b1"]))
        model[4].weight.copy_(torch.from_numpy(p["W2"].T.copy()))
        model[4].bias.copy_(torch.from_numpy(p["b2"]))
        model[6].weight.copy_(torch.from_numpy(p["W3"].T.copy()))
        model[6].bias.copy_(torch.from_numpy(p["b3"]))
    return _torch_training_step(torch, model, torch.optim.Adam(model.parameters(), lr=CONV_STEP_LR), a)


def _net_flops(net, x_shape: tuple) -> int:
    """Floating-point operations of the products of one training step of a convnet on a batch of
    ``x_shape``: each Convolution and Affine layer's forward product, its weight gradient and (but
    for the first layer, whose input gradient nobody needs) its input gradient."""
    from .layers.conv import Convolution

    x = np.zeros((1, *x_shape[1:]), net.params["W1"].dtype)
    total, first = 0, True
    for layer in net._layer_list():
        y = layer.forward(x, False) if type(layer).__name__ == "Dropout" else layer.forward(x)
        if isinstance(layer, Convolution):
            per_image = 2 * y.size * (layer.W.size // layer.W.shape[0])
        elif isinstance(layer, layers.Affine):
            per_image = 2 * layer.W.size
        else:
            per_image = 0
        if per_image:
            total += per_image * (2 if first else 3)
            first = False
        x = y
    return total * x_shape[0]


# --------------------------------------------------------------------------------------------
# one Adam training step of DeepConvNet (the book's chapter 8 net, dropout on): (N, C, H, W)
# --------------------------------------------------------------------------------------------
def _deep_build(a: Inputs):
    c, h, w = a["x"].shape[1:]
    net = nets.DeepConvNet(input_dim=(c, h, w), dtype=a["dtype"].dtype, seed=0)
    return net, optim.Adam(CONV_STEP_LR)


def _deep_calls(built, a: Inputs) -> tuple:
    """The step with the dropout masks' generator seeded first (NumPy's global one), so that the
    numba and numpy backends draw the same masks and can be compared."""
    net, opt = built
    x, t = a["x"], a["t"]

    def forward():
        np.random.seed(0)  # noqa: NPY002 - the dropout keys' generator
        return net.loss(x, t)  # in training mode: dropout on, as the classic DeepConvNet.loss

    def step():
        np.random.seed(0)  # noqa: NPY002
        opt.update(net.params, net.gradient(x, t))

    def backward():
        """The step; its gradients are what the two backends are compared on (Adam's first step
        is about ``lr * sign(g)``, which magnifies rounding where a gradient is near zero)."""
        np.random.seed(0)  # noqa: NPY002
        grads = net.gradient(x, t)
        opt.update(net.params, grads)
        return tuple(grads[k] for k in sorted(grads))

    return forward, backward, step


def _deep_numpy(a: Inputs) -> tuple:
    """The same step on fastlayers' reference path (the book's im2col design in NumPy)."""
    with use_backend("numpy"):
        built = _deep_build(a)
        forward, backward, _ = _deep_calls(built, a)
        return (forward(), *backward())


def _deep_torch(torch, a: Inputs):
    """DeepConvNet as ``nn.Sequential`` (the same layers, dropout 0.5 in the same two places, the
    same weights) with ``torch.optim.Adam``."""
    net = _deep_build(a)[0]
    p = net.params
    nn = torch.nn
    dtype = torch.from_numpy(a["x"][:0]).dtype
    convs = [net.layers[i] for i in net._PARAM_INDEX[:6]]
    mods: list = []
    for i, conv in enumerate(convs):
        fn, c, fh, fw = conv.W.shape
        mods += [nn.Conv2d(c, fn, (fh, fw), conv.stride, conv.pad), nn.ReLU()]
        if i % 2 == 1:
            mods.append(nn.MaxPool2d(2, 2))
    mods += [nn.Flatten(), nn.Linear(*p["W7"].shape), nn.ReLU(), nn.Dropout(0.5), nn.Linear(*p["W8"].shape),
             nn.Dropout(0.5)]  # fmt: skip
    model = nn.Sequential(*mods).to(dtype)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, m in enumerate(m for m in model if isinstance(m, nn.Conv2d)):
            m.weight.copy_(torch.from_numpy(p[f"W{i + 1}"]))
            m.bias.copy_(torch.from_numpy(p[f"b{i + 1}"]))
        for i, m in enumerate(linears):
            m.weight.copy_(torch.from_numpy(p[f"W{i + 7}"].T.copy()))
            m.bias.copy_(torch.from_numpy(p[f"b{i + 7}"]))
    model.train()
    return _torch_training_step(torch, model, torch.optim.Adam(model.parameters(), lr=CONV_STEP_LR), a)


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
            name="predict",
            title="Predict",
            inputs=_stack_inputs,
            build=_predict_build,
            calls=_predict_calls,
            numpy=_predict_numpy,
            torch=_predict_torch,
            sizes=[(1, 784, 50, 10), (8, 784, 50, 10), (100, 784, 50, 10)],
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
        Case(
            name="conv",
            title="Convolution",
            inputs=_conv_inputs,
            build=_conv_build,
            calls=_conv_calls,
            numpy=_conv_numpy,
            torch=_conv_torch,
            sizes=_CONV_SIZES,
            shape_for=_conv_shape_for,
            limit="GEMM rate",
            flops=lambda a: _conv_flops(a, 3),
        ),
        Case(
            name="conv_forward",
            title="ConvolutionForward",
            inputs=_conv_inputs,
            build=_conv_build,
            calls=_conv_forward_calls,
            numpy=_conv_forward_numpy,
            torch=_conv_forward_torch,
            sizes=_CONV_SIZES,
            shape_for=_conv_shape_for,
            limit="GEMM rate",
            kind="forward",
            flops=_conv_flops,
        ),
        Case(
            name="conv_first",
            title="ConvolutionFirstLayer",
            inputs=_conv_inputs,
            build=_conv_build,
            calls=lambda layer, a: _conv_calls(layer, a, with_dx=False),
            numpy=lambda a: _conv_numpy(a, with_dx=False),
            torch=lambda torch, a: _conv_torch(torch, a, with_dx=False),
            sizes=_CONV_SIZES[:1],
            shape_for=_conv_shape_for,
            limit="GEMM rate",
            flops=lambda a: _conv_flops(a, 2),
        ),
        Case(
            name="pool",
            title="Pooling",
            inputs=_pool_inputs,
            build=lambda a: layers.Pooling(2, 2, 2),
            calls=_pool_calls,
            numpy=_pool_numpy,
            torch=_pool_torch,
            sizes=[(100, 30, 24, 24), (100, 16, 28, 28), (100, 64, 8, 8)],
            shape_for=lambda n: (max(1, n // 64), 4, 4, 4),
            limit="copy",
            bytes_moved=_pool_bytes,
        ),
        Case(
            name="dropout",
            title="Dropout",
            inputs=_activation_inputs,
            build=lambda a: layers.Dropout(0.5),
            calls=_dropout_calls,
            numpy=_dropout_numpy,
            torch=_dropout_torch,
            sizes=[(100, 100), (256, 1024), (1024, 4096)],
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_dropout_bytes,
            random=True,
        ),
        Case(
            name="batchnorm",
            title="BatchNormalization",
            inputs=_bn_inputs,
            build=lambda a: layers.BatchNormalization(a["gamma"], a["beta"]),
            calls=_bn_calls,
            numpy=_bn_numpy,
            torch=_bn_torch,
            sizes=[(100, 100), (256, 1024), (1024, 4096)],
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_bn_bytes,
        ),
        Case(
            name="nesterov",
            title="NesterovUpdate",
            inputs=_update_inputs,
            build=lambda a: optim.Nesterov(),
            calls=_update_calls,
            numpy=_nesterov_numpy,
            torch=_update_torch("nesterov"),
            sizes=_UPDATE_SIZES,
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_update_bytes,
            kind="update",
        ),
        Case(
            name="rmsprop",
            title="RMSpropUpdate",
            inputs=_update_inputs,
            build=lambda a: optim.RMSprop(),
            calls=_update_calls,
            numpy=_rmsprop_numpy,
            torch=_update_torch("rmsprop"),
            sizes=_UPDATE_SIZES,
            shape_for=rows_of_4,
            limit="copy",
            bytes_moved=_update_bytes,
            kind="update",
        ),
        Case(
            name="convnet_step",
            title="ConvNetTrainingStep",
            inputs=_convnet_inputs,
            build=_convnet_build,
            calls=_convnet_calls,
            numpy=_convnet_numpy,
            torch=_convnet_torch,
            sizes=[(100, 1, 28, 28)],
            shape_for=lambda n: (max(1, n // 64), 1, 8, 8),
            limit="GEMM rate",
            kind="step",
            flops=lambda a: _net_flops(_convnet_build(a)[0], a["x"].shape),
        ),
        Case(
            name="deep_convnet_step",
            title="DeepConvNetTrainingStep",
            inputs=_convnet_inputs,
            build=_deep_build,
            calls=_deep_calls,
            numpy=_deep_numpy,
            torch=_deep_torch,
            sizes=[(100, 1, 28, 28)],
            shape_for=lambda n: (max(1, n // 64), 1, 8, 8),
            limit="GEMM rate",
            kind="step",
            flops=lambda a: _net_flops(_deep_build(a)[0], a["x"].shape),
        ),
    )
}


def warmup(dtypes=("float32", "float64")) -> dict[str, float]:
    """Compile (or load from the cache) every kernel, serial and parallel, for ``dtypes``.

    Runs every layer of the table of layers (:mod:`fastlayers._table`) forward and backward at a
    size below every parallel threshold and at one above them all, then what the layers do not
    reach (softmax, cross-entropy of probabilities, target rows, the optimizers, and for float64 the
    optimizers' float32 gradients). Returns seconds
    per dtype. Useful at image-build time, so that the first real call is fast.
    """
    from . import functional as F
    from ._kernels import load_all

    above = max(k.parallel_min for k in load_all())  # a size that runs every parallel twin
    times = {}
    for name in dtypes:
        dtype = np.dtype(name)
        start = time.perf_counter()
        for n in (4, above):  # one size below every threshold, one above
            for case in CASES.values():
                if case.kind in ("layer", "update"):
                    inputs = case.inputs(case.shape_for(n), dtype, np.random.default_rng(0))
                    case.run(case.build(inputs), inputs)
            # the table's convolutions have stride 1 (the direct kernels): stride 2 runs im2col's
            a = _conv_inputs(_conv_shape_for(n), dtype, np.random.default_rng(0))
            strided = layers.Convolution(a["W"], a["b"], 2, 1)
            strided.backward(np.ones_like(strided.forward(a["x"])))
            x = np.ones(rows_of_4(n), dtype)
            for target in (np.zeros(x.shape[0], np.int64), x):
                _, y = F.softmax_cross_entropy_forward(x, target)
                F.softmax_cross_entropy_backward(y, target)
                F.cross_entropy_error(y, target)
            F.softmax(x)
            every = (optim.SGD, optim.Momentum, optim.Nesterov, optim.AdaGrad, optim.RMSprop, optim.Adam)
            for opt in every:
                opt().update({"p": x.copy()}, {"p": x})
                if dtype == np.float64:  # float32 gradients of float64 parameters (the float32 policy)
                    opt().update({"p": x.copy()}, {"p": x.astype(np.float32)})
        times[name] = time.perf_counter() - start
    return times
