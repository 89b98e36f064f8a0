"""The registry of kernel twins: for every compiled kernel, its NumPy twin and a maker of arguments.

Each entry of :data:`CASES` is named like the kernel (``_numba.ALL_TWINS``; a test holds the two sets
equal, so a kernel cannot be added without its twin) and gives:

- ``twin``: a NumPy function with the kernel's signature and effect (writes the same outputs, returns
  the same value);
- ``make(dtype, size, rng)``: the kernel's arguments for one size (``size`` is the number of elements
  of the main input, about; row kernels take ``rows x cols`` shapes from it);
- ``tol``: how close the kernel must be to the twin (a kind of ``conftest.assert_close``).

The NumPy twins follow the order of operations of the kernels where that makes them bit-identical
(the bias gradient adds rows in order); elsewhere the tolerance says why they may differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastlayers import reference

#: sizes of the main input: one element, odd sizes around BLOCK, and one past every parallel threshold
FLAT_SIZES = [1, 7, 8191, 8193, 300_007]
#: row kernels: (rows, columns)
ROW_SHAPES = [(1, 1), (3, 7), (301, 257), (1031, 300)]


@dataclass(frozen=True)
class Case:
    twin: Callable
    make: Callable
    tol: str
    rows: bool = False  # sized by ROW_SHAPES instead of FLAT_SIZES


def _flat(n, dtype, rng, k=1, positive=False):
    arrays = [(3 * rng.standard_normal(n)).astype(dtype) for _ in range(k)]
    return [np.abs(a) for a in arrays] if positive else arrays


def _rows(shape, dtype, rng):
    return (3 * rng.standard_normal(shape)).astype(dtype)


def _probs(shape, dtype, rng):
    p = rng.random(shape).astype(dtype) + dtype(0.01)
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


def _labels(shape, rng):
    return rng.integers(0, shape[1], shape[0])


def _unary_twin(ref):
    def twin(x, out):
        out[...] = ref(x)

    return twin


def _binary_twin(ref):
    def twin(dout, y, out):
        out[...] = ref(dout, y)

    return twin


def _bias_add(out, b):
    out += b


def _bias_grad(dout, db):
    db[...] = dout[0]
    for row in dout[1:]:  # rows in order, as the kernel adds them
        db += row


def _bias_relu(out, b):
    out[...] = reference.relu_forward(out + b)


def _bias_sigmoid(out, b):
    out[...] = reference.sigmoid_forward(out + b)


def _activation_grad_bias(ref):
    def twin(dout, y, dh, db):
        dh[...] = ref(dout, y)
        _bias_grad(dh, db)

    return twin


def _softmax(x, y):
    y[...] = reference.softmax(x)


def _xent(x, t, y, losses, with_grad, grad, scale):
    logp = reference.log_softmax(x)
    losses[...] = -logp[np.arange(x.shape[0]), t] if t.ndim == 1 else -(t * logp).sum(axis=1)
    y[...] = reference.softmax(x)
    if with_grad:
        _xent_grad(y, t, scale, grad)
    return losses.astype(np.float64).sum()


def _xent_grad(y, t, scale, out):
    target = t
    if t.ndim == 1:
        target = np.zeros_like(y)
        target[np.arange(y.shape[0]), t] = 1
    out[...] = (y - target) * scale


def _cross_entropy(y, t, losses):
    with np.errstate(divide="ignore"):
        if t.ndim == 1:
            losses[...] = -np.log(y[np.arange(y.shape[0]), t])
        else:
            losses[...] = -(t * np.log(np.where(t != 0, y, 1))).sum(axis=1)
    return losses.astype(np.float64).sum()


def _scalars(dtype, *values):
    return [dtype(v) for v in values]


CASES: dict[str, Case] = {
    "copy": Case(_unary_twin(np.copy), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "exact"),
    "relu_forward": Case(
        _unary_twin(reference.relu_forward), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "exact"
    ),
    "relu_backward": Case(
        _binary_twin(reference.relu_backward), lambda dt, n, rng: [*_flat(n, dt, rng, 2), np.empty(n, dt)], "exact"
    ),
    "sigmoid_forward": Case(
        _unary_twin(reference.sigmoid_forward), lambda dt, n, rng: [*_flat(n, dt, rng), np.empty(n, dt)], "ulp"
    ),
    "sigmoid_backward": Case(
        _binary_twin(reference.sigmoid_backward), lambda dt, n, rng: [*_flat(n, dt, rng, 2), np.empty(n, dt)], "ulp"
    ),
    "bias_add": Case(_bias_add, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "exact", rows=True),
    "bias_grad": Case(_bias_grad, lambda dt, s, rng: [_rows(s, dt, rng), np.empty(s[1], dt)], "exact", rows=True),
    "bias_relu": Case(_bias_relu, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "exact", rows=True),
    "bias_sigmoid": Case(
        _bias_sigmoid, lambda dt, s, rng: [_rows(s, dt, rng), _rows(s[1:], dt, rng)], "ulp", rows=True
    ),
    "relu_grad_bias": Case(
        _activation_grad_bias(reference.relu_backward),
        lambda dt, s, rng: [_rows(s, dt, rng), _rows(s, dt, rng), np.empty(s, dt), np.empty(s[1], dt)],
        "exact",
        rows=True,
    ),
    "sigmoid_grad_bias": Case(
        _activation_grad_bias(reference.sigmoid_backward),
        lambda dt, s, rng: [_rows(s, dt, rng), _probs(s, dt, rng), np.empty(s, dt), np.empty(s[1], dt)],
        "row",
        rows=True,
    ),
    "softmax": Case(_softmax, lambda dt, s, rng: [_rows(s, dt, rng), np.empty(s, dt)], "row", rows=True),
    "softmax_xent_labels": Case(
        _xent,
        lambda dt, s, rng: [
            _rows(s, dt, rng),
            _labels(s, rng),
            np.empty(s, dt),
            np.empty(s[0], dt),
            True,
            np.empty(s, dt),
            dt(1 / s[0]),
        ],
        "row",
        rows=True,
    ),  # fmt: skip
    "softmax_xent_probs": Case(
        _xent,
        lambda dt, s, rng: [
            _rows(s, dt, rng),
            _probs(s, dt, rng),
            np.empty(s, dt),
            np.empty(s[0], dt),
            True,
            np.empty(s, dt),
            dt(1 / s[0]),
        ],
        "row",
        rows=True,
    ),  # fmt: skip
    "xent_grad_labels": Case(
        _xent_grad,
        lambda dt, s, rng: [_probs(s, dt, rng), _labels(s, rng), dt(0.5), np.empty(s, dt)],
        "exact",
        rows=True,
    ),
    "xent_grad_probs": Case(
        _xent_grad,
        lambda dt, s, rng: [_probs(s, dt, rng), _probs(s, dt, rng), dt(0.5), np.empty(s, dt)],
        "exact",
        rows=True,
    ),
    "cross_entropy_labels": Case(
        _cross_entropy,
        lambda dt, s, rng: [_probs(s, dt, rng), _labels(s, rng), np.empty(s[0], dt)],
        "ulp",
        rows=True,
    ),
    "cross_entropy_probs": Case(
        _cross_entropy,
        lambda dt, s, rng: [_probs(s, dt, rng), _probs(s, dt, rng), np.empty(s[0], dt)],
        "row",
        rows=True,
    ),
    # optimizer updates: "row" (relative to the largest value), as p - lr * g may cancel and the
    # kernel may fuse the multiply and the subtraction (one rounding fewer than NumPy)
    "sgd": Case(reference.sgd, lambda dt, n, rng: [*_flat(n, dt, rng, 2), dt(0.1)], "row"),
    "momentum": Case(reference.momentum, lambda dt, n, rng: [*_flat(n, dt, rng, 3), *_scalars(dt, 0.1, 0.9)], "row"),
    "adagrad": Case(
        reference.adagrad,
        lambda dt, n, rng: [
            *_flat(n, dt, rng),
            *_flat(n, dt, rng, 1, positive=True),
            *_flat(n, dt, rng),
            *_scalars(dt, 0.1, 1e-7),
        ],
        "row",
    ),  # fmt: skip
    "adam": Case(
        reference.adam,
        lambda dt, n, rng: [
            *_flat(n, dt, rng, 2),
            *_flat(n, dt, rng, 1, positive=True),
            *_flat(n, dt, rng),
            *_scalars(dt, 0.01, 0.9, 0.999, 1e-7),
        ],
        "row",
    ),  # fmt: skip
}


def sizes(case: Case) -> list:
    return ROW_SHAPES if case.rows else FLAT_SIZES
