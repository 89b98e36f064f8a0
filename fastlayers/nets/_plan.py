"""Plans: a dense net's ``predict``, ``loss`` and ``gradient`` as one compiled call.

A plan is made once per net, input shape and dtype, for nets whose layers are Affine layers with
ReLU or Sigmoid between them and a SoftmaxWithLoss after them (``TwoLayerNet``, ``MultiLayerNet``,
``MultiLayerNetExtend`` without batch normalization and dropout), and whose products are small
(:data:`SMALL_MACS`): there the Python around a dozen layer calls costs more than the arithmetic.
It calls the kernels of :mod:`fastlayers._kernels.dense`, whose products are register tiles that
beat a BLAS call at these sizes (docs/PERFORMANCE.md, "Plans").

A plan holds the buffers of the pass (activations, softmax, gradients) and reuses them while nobody
but the plan and the layers it publishes them to holds them; a buffer someone kept is replaced by a
new one, as the layers' own calls do (:func:`fastlayers.functional._checks.reusable`).

Every call checks again what the caller may have changed since the last one: the net's layer
objects, each layer's ``W`` and ``b``, ``x``, the labels' array and the published buffers. Python
checks what converting the arguments relies on (each array's type, dtype and number of dimensions,
and the buffers' reference counts and write flags); the kernel checks every array's shape, strides
and alignment, and the labels' values, before it writes anything. Anything unusual makes the call
return None, having done nothing, and the net walks its layers (:mod:`._walk`), the general path,
which names what is wrong. (A kernel that refuses a layout is called once more after every
published buffer of the wrong shape or layout has been replaced: the caller may have reshaped one
in place through a layer.) After a call every layer holds what its own calls would have left (``Affine.x``,
``original_x_shape``, ``dW``, ``db``; ``Relu.out``/``Sigmoid.out``; ``SoftmaxWithLoss.loss``, ``y``
(read-only) and ``t``), and results equal the layer-by-layer path's up to the order of the additions
inside the products. A plan runs one call at a time: a thread that finds it busy takes the general
path.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from .. import _backend
from .._kernels import _threads, lazy
from ..layers.core import Affine, Relu, Sigmoid, SoftmaxWithLoss

_dense = lazy("dense")
_numba = lazy("_numba")

#: Largest number of multiply-adds of one forward pass that a plan serves (measured against the
#: layer walk with BLAS products: docs/PERFORMANCE.md, "Plans").
SMALL_MACS = 1 << 20
#: Plans kept per net (one per input shape and dtype: a server sees a few batch sizes); the oldest goes first.
KEEP = 16

_CODES = {Relu: 1, Sigmoid: 2}
_NEED = 0x1 | 0x100 | 0x400  # NumPy's flag bits: C-contiguous, aligned, writeable
_getrefcount = sys.getrefcount
_ndarray = np.ndarray
_modules = sys.modules
_REFS = 2  # getrefcount's own argument and the plan's list
_I64 = np.dtype(np.int64)
_F64 = np.dtype(np.float64)
_context_backend = _backend._backend_var.get
_KERNELS = {"predict": "net_forward", "loss": "net_loss", "gradient": "net_gradient"}


def _fits(a, dtype: np.dtype, shape: tuple) -> bool:
    return type(a) is np.ndarray and a.dtype is dtype and a.shape == shape and a.flags.num & _NEED == _NEED


def _arrays(args: tuple):
    """The arrays among ``args`` and inside its tuples."""
    for a in args:
        if isinstance(a, tuple):
            yield from a
        elif isinstance(a, np.ndarray):
            yield a


class DensePlan:
    """The buffers, checks and compiled entry points of one net's calls for one input shape and
    dtype. ``lock`` is held while a call runs."""

    def __init__(self, layers: list, last: SoftmaxWithLoss, shape: tuple, dtype: np.dtype) -> None:
        self.layers, self.last = layers, last
        self.shape, self.dtype = shape, dtype
        self.affines = layers[0::2]
        self.activations = layers[1::2]
        n = shape[0]
        widths = [shape[1]] + [a.W.shape[1] for a in self.affines]
        self.first, self.last_affine = self.affines[0], self.affines[-1]
        # (the Affine after each activation, the activation)
        self.hidden = list(zip(self.affines[1:], self.activations, strict=True))
        self.acts = np.array([_CODES[type(a)] for a in self.activations] + [0], np.int64)
        self.macs = n * sum(a.W.size for a in self.affines)
        self.scale = dtype.type(1) / dtype.type(n)
        L = self.L = len(self.affines)
        e = np.empty
        # buffers, in one list: outs (L), dWs (L), dbs (L), y, then the private ones: grads (L),
        # losses. ``published``: how many layer attributes each public one is handed to
        self.bufs = (
            [e((n, m), dtype) for m in widths[1:]]
            + [e(a.W.shape, dtype) for a in self.affines]
            + [e(m, dtype) for m in widths[1:]]
            + [e((n, widths[-1]), dtype)]
        )
        # outs[l]: the activation's out and the next Affine's x; the scores: the last Affine's _out;
        # dW, db: the Affine's; y is published as a read-only view (``y_view``), which holds one
        # more reference to it. Each of the first 3L is also held once by the tuples that
        # ``_tuples`` keeps (outs, dWs, dbs).
        self.limits = [_REFS + 2 + 1] * (L - 1) + [_REFS + 1 + 1] + [_REFS + 1 + 1] * (2 * L) + [_REFS + 1]
        self.shapes = [b.shape for b in self.bufs]
        self.ndims = [b.ndim for b in self.bufs]
        self.y_view = self._frozen(self.bufs[-1])
        self._tuples()
        self.grads = tuple(e((n, m), dtype) for m in widths[1:])
        self.losses = e(n, dtype)
        self.WTs = (e((1, 1), dtype), *(e((m, d), dtype) for d, m in zip(widths[1:-1], widths[2:], strict=True)))
        self.entries: dict = {}
        self.lock = threading.Lock()

    @staticmethod
    def _frozen(y: np.ndarray) -> np.ndarray:
        view = y.view()
        view.flags.writeable = False
        return view

    def _ready(self, upto: int, strict: bool = False) -> tuple | None:
        """(Ws, bs) as the layers hold them now, the first ``upto`` buffers made fit for the call
        (:meth:`_fresh`, run only when one of them needs it); None, having replaced nothing, when a
        weight or bias is not an ndarray of the plan's dtype and number of dimensions (what the
        entry points' conversion relies on: their shapes, strides and alignment are the kernel's to
        check). One pass, inline: this runs at every call (docs/PERFORMANCE.md, "Plans")."""
        dt, nd = self.dtype, _ndarray
        Ws, bs = [], []
        for a in self.affines:
            W, b = a.W, a.b
            if (
                type(W) is not nd
                or type(b) is not nd
                or W.dtype is not dt
                or b.dtype is not dt
                or W.ndim != 2
                or b.ndim != 1
            ):
                return None
            Ws.append(W)
            bs.append(b)
        if strict:
            self._fresh(upto, True)
        else:
            bufs, limits, ndims = self.bufs, self.limits, self.ndims
            for i in range(upto):
                b = bufs[i]  # the same test as _fresh's, with the same references
                if _getrefcount(b) > limits[i] + 1 or b.dtype is not dt or b.ndim != ndims[i] or not b.flags.writeable:
                    self._fresh(upto)
                    break
        return tuple(Ws), tuple(bs)

    def _call(self, mode: str, args: tuple):
        """Run ``mode``'s kernel on ``args``: small calls through the serial twin's entry point
        (compiled for the types of the first call's arguments; later calls' arrays have the same
        dtypes and dimensions, checked above, and the kernel checks their shapes and layout), larger
        ones through the launcher. Arguments that are not all C-contiguous, aligned and writeable
        reach neither (``BAD_LAYOUT``): the kernels are compiled for those types alone."""
        entry = self.entries.get(mode)
        if entry is not None:
            return entry(*args)
        if not all(_fits(a, a.dtype, a.shape) for a in _arrays(args)):
            return _dense.BAD_LAYOUT
        kernel = getattr(_dense, _KERNELS[mode])
        size = self.macs * (3 if mode == "gradient" else 1)
        if size >= kernel.parallel_min:
            return _threads.launch(kernel, size, *args)
        entry = self.entries[mode] = _numba.entry_point(kernel.serial, args)
        return entry(*args)

    def _tuples(self) -> None:
        """The tuples of buffers that the calls pass (``outs``, ``dWs``, ``dbs``), made again
        whenever a buffer is replaced."""
        bufs, L = self.bufs, self.L
        self.outs = tuple(bufs[:L])
        self.dWs, self.dbs = tuple(bufs[L : 2 * L]), tuple(bufs[2 * L : 3 * L])

    def _fresh(self, upto: int, strict: bool = False) -> None:
        """Replace every buffer among the first ``upto`` that someone but the plan and the layers
        it published it to holds (it is theirs now), or that was changed in place through a layer
        (made read-only, or given another dtype or number of dimensions, which the entry points'
        conversion relies on); ``strict``: also one of another shape or layout (reshaped or resized
        in place: the kernels refuse those)."""
        bufs, limits, ndims, dt = self.bufs, self.limits, self.ndims, self.dtype
        replaced = False
        for i in range(upto):
            b = bufs[i]  # one more reference than the limits count
            if (
                _getrefcount(b) > limits[i] + 1
                or b.dtype is not dt
                or b.ndim != ndims[i]
                or not b.flags.writeable
                or (strict and not _fits(b, dt, self.shapes[i]))
            ):
                bufs[i] = np.empty(self.shapes[i], dt)
                replaced = True
        if replaced:
            self._tuples()

    def predict(self, xshape: tuple, x2, strict: bool = False):
        """The scores of ``x2`` (the batch of shape ``xshape`` as rows) by the compiled forward
        pass, or None when the weights do not fit."""
        weights = self._ready(self.L, strict)
        if weights is None:
            return None
        outs = self.outs
        entry = self.entries.get("predict")
        if entry is not None:
            code = entry(x2, *weights, self.acts, outs)
        else:
            code = self._call("predict", (x2, *weights, self.acts, outs))
        if code == _dense.BAD_LAYOUT:
            return None if strict else self.predict(xshape, x2, True)
        self._publish(xshape, x2, outs)
        return outs[-1]

    def _publish(self, xshape: tuple, x2, outs: tuple) -> None:
        """Leave every layer's attributes as its own forward would."""
        first = self.first
        first.x = x2
        first.original_x_shape = xshape
        for (a, act), h in zip(self.hidden, outs):  # noqa: B905 - outs[-1]: below
            a.x = h
            a.original_x_shape = h.shape
            act.out = h
        self.last_affine._out = outs[-1]

    def run(self, xshape: tuple, x2, t, mode: str, strict: bool = False):
        """The compiled call: ``mode`` "loss" (returns the loss) or "gradient" (returns True, having
        left every Affine's ``dW`` and ``db`` as its backward would). None when the weights or the
        labels do not fit or a label lies outside the classes (the caller takes the general path)."""
        # The softmax buffer, private but reachable as the view's base, is checked as the published
        # buffers are: someone holding it (labels made a view of it would change as the kernel
        # writes the softmax) or changing it in place gets it replaced.
        weights = self._ready(3 * self.L + 1, strict)
        if weights is None:
            return None
        Ws, bs = weights
        bufs = self.bufs
        if _getrefcount(self.y_view) > _REFS + 1:  # someone holds the published softmax: it is theirs
            bufs[-1] = np.empty(self.shapes[-1], self.dtype)
        y = bufs[-1]
        if self.y_view.base is not y:
            self.y_view = self._frozen(y)
        outs = self.outs
        if mode == "loss":
            args = (x2, Ws, bs, self.acts, outs, t, y, self.losses)
        else:
            args = (x2, Ws, bs, self.acts, outs, t, y, self.losses, self.grads, self.dWs, self.dbs,
                    self.WTs, self.scale)  # fmt: skip
        entry = self.entries.get(mode)
        total = entry(*args) if entry is not None else self._call(mode, args)
        if total < 0:
            return None if strict or total != _dense.BAD_LAYOUT else self.run(xshape, x2, t, mode, True)
        self._publish(xshape, x2, outs)
        last = self.last
        loss = self.dtype.type(total / x2.shape[0])
        last._fused = None
        last.loss, last.y, last.t = loss, self.y_view, t
        if mode == "loss":
            return loss
        for a, dW, db in zip(self.affines, self.dWs, self.dbs, strict=True):
            a.dW, a.db = dW, db
        return True


class _Unplanned:
    """What a net's plans remember for layers and an input that no plan serves, so that the next
    call with the same layers does not examine them again."""

    lock = None

    def __init__(self, layers: list, last, shape: tuple, dtype: np.dtype) -> None:
        self.layers, self.last = layers, last
        self.shape, self.dtype = shape, dtype


def _make(layers: list, last, shape: tuple, dtype: np.dtype) -> DensePlan | None:
    """A plan for these layers, or None when they are not a dense stack a plan serves."""
    if type(last) is not SoftmaxWithLoss or len(layers) % 2 != 1:
        return None
    width = shape[1]
    macs = 0
    for i, layer in enumerate(layers):
        if i % 2 == 1:
            if type(layer) not in _CODES:
                return None
            continue
        if type(layer) is not Affine:
            return None
        W = layer.W
        if type(W) is not np.ndarray or W.ndim != 2 or W.shape[0] != width or not _fits(W, dtype, W.shape):
            return None
        if not _fits(layer.b, dtype, (W.shape[1],)):
            return None
        width = W.shape[1]
        macs += shape[0] * W.size
    if macs > SMALL_MACS:
        return None
    return DensePlan(layers, last, shape, dtype)


def _find(net, layers: list, shape: tuple, dtype: np.dtype):
    """The plan (or :class:`_Unplanned`) for ``net``'s ``layers`` and an input of ``shape`` and
    ``dtype``, made if need be, kept in ``net._plans`` and as ``net._hot``; None for an input no
    plan could serve."""
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or not dtype.isnative:
        return None
    plans = net.__dict__.get("_plans")
    if plans is None:
        plans = net.__dict__["_plans"] = {}
    key = (shape, dtype)
    plan = plans.get(key)
    if plan is None or plan.last is not net.last_layer or plan.layers != layers:
        plan = _make(layers, net.last_layer, shape, dtype) or _Unplanned(layers, net.last_layer, shape, dtype)
        if len(plans) >= KEEP:
            plans.pop(next(iter(plans)))
        plans[key] = plan
    net.__dict__["_hot"] = plan
    return plan


def _call(net, x, t, mode: str):
    """The plan's answer for ``net`` and ``x`` (and labels ``t``), or None, having done nothing,
    when no plan serves the call: ``mode`` "predict" (the scores), "loss" (the loss, without weight
    decay) or "gradient" (True once every layer is left as its own backward would leave it; the net
    reads its gradients from the layers). A prediction before Numba is loaded is left to the walk, which
    answers small ones without waiting for Numba (ARCHITECTURE.md, "Loading")."""
    if type(x) is not _ndarray or (mode == "predict" and "numba" not in _modules):
        return None
    # x2's and t's shapes, strides and alignment are the kernel's to check (a batch that is not
    # C-contiguous is refused there, and walked)
    if mode != "predict" and (type(t) is not _ndarray or t.dtype is not _I64 or t.ndim != 1):
        return None
    shape = xshape = x.shape
    dtype = x.dtype
    layers = list(net.layers.values())
    plan = net.__dict__.get("_hot")  # the latest call's plan, most often this one's
    # a plan's shape is that of a 2-D batch with rows, so x is one when it has the hot plan's shape
    if (
        plan is not None
        and plan.shape == shape
        and plan.dtype is dtype
        and plan.last is net.last_layer
        and plan.layers == layers
    ):
        x2 = x
    else:
        if len(shape) != 2:
            if len(shape) < 2:
                return None
            x2 = x.reshape(shape[0], -1)
            shape = x2.shape
        else:
            x2 = x
        if shape[0] == 0:  # an empty batch: the walk says what is wrong
            return None
        plan = _find(net, layers, shape, dtype)
        if plan is None:
            return None
    lock = plan.lock
    if lock is None or (_context_backend() or _backend._default) != "numba":  # _backend.current(), inline
        return None
    if dtype is _F64 and _backend.is_float32():
        return None
    if not lock.acquire(False):  # without blocking
        return None
    try:
        return plan.predict(xshape, x2) if mode == "predict" else plan.run(xshape, x2, t, mode)
    finally:
        lock.release()
