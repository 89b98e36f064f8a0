"""Optimizers with the classic ``update(params, grads)`` interface, updating parameters in place.

Each parameter array is updated through a compiled kernel (:mod:`fastlayers._kernels.optim`), or its
NumPy twin in :mod:`fastlayers.reference` under the ``"numpy"`` backend. State (velocities, moment
estimates) is kept per parameter name, in the parameter's dtype. As the classic ``p -= lr * g``,
the update is written in the parameter's dtype whatever the gradient's: a float32 parameter with a
float64 gradient stays float32 (strict mode, see :func:`fastlayers.strict_dtypes`, refuses that
pair instead). Hyper-parameters are converted to the parameter's dtype. A gradient may be the
parameter itself; one that partly overlaps it is copied first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from . import _backend, reference
from ._kernels import lazy
from ._kernels._threads import launch
from .functional._checks import F32, F64, as_array, compute_dtype, fast_dtype, param_dtype, plain

_optim = lazy("optim")  # imported (with Numba) at the first kernel call
_numba = lazy("_numba")
_NEED = 0x1 | 0x100 | 0x400  # NumPy's flag bits: C-contiguous, aligned, writeable

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]


def _kind(value) -> str:
    return f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _is_real_scalar(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class _Optimizer:
    _state_names: tuple[str, ...] = ()
    _hyper: tuple[str, ...] = ("lr",)  # the constructor's arguments, kept as attributes of those names
    _kernel: str = ""  # the kernel's name in fastlayers._kernels.optim
    _reference = None

    def __init__(self) -> None:
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self._plan: _Plan | None = None  # how the latest common update ran (see _update_common)

    def __getstate__(self) -> dict:
        """The optimizer's state for pickle and copy: everything but its plan (its compiled entry
        points and views are made again at the next update)."""
        state = self.__dict__.copy()
        state["_plan"] = None
        return state

    def _steps_taken(self) -> int:
        return 0

    def _set_steps_taken(self, steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything :meth:`update` depends on, as plain data (copies), for saving and restoring.

        Returns
        -------
        dict
            ``{"optimizer": class name, "hyper": {argument: float}, "step": int, "state": {parameter
            key: {name: 1-D ndarray}}}``. ``hyper`` holds the constructor's arguments (``lr``,
            ``momentum``, ...); ``step`` the updates taken (Adam's bias correction, ``iter``; 0 for the
            others); ``state`` each parameter's moments (``v`` for Momentum and Nesterov, ``h`` for
            AdaGrad and RMSprop, ``m`` and ``v`` for Adam; none for SGD), flat, in the dtype the
            updates compute in. This form is stable: a later version reads what an earlier one wrote.
        """
        return {
            "optimizer": type(self).__name__,
            "hyper": {name: float(getattr(self, name)) for name in self._hyper},
            "step": self._steps_taken(),
            "state": {key: {name: a.copy() for name, a in st.items()} for key, st in self.state.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned: the hyper-parameters, the step count and the
        moments (copied). The next :meth:`update` then does what this optimizer's would have done.

        Parameters
        ----------
        state : mapping
            A :meth:`state_dict` of an optimizer of this class (its plain part may have gone through
            JSON).

        Raises
        ------
        TypeError
            ``state`` is of another optimizer class, or a moment is not a float ndarray.
        ValueError
            A missing entry, a hyper-parameter out of its range, a negative step count, moments of a
            parameter that are not 1-D arrays of one size and dtype, or another set of moment names.
        """
        try:
            name, hyper, step, moments = state["optimizer"], state["hyper"], state["step"], state["state"]
        except (KeyError, TypeError):
            raise ValueError("state must be a dict with 'optimizer', 'hyper', 'step' and 'state'") from None
        if name != type(self).__name__:
            raise TypeError(f"state is of a {name} optimizer, not {type(self).__name__}")
        if set(hyper) != set(self._hyper):
            raise ValueError(f"state['hyper'] must have {sorted(self._hyper)}, got {sorted(hyper)}")
        checked = type(self)(**{k: hyper[k] for k in self._hyper})  # each value checked as by the constructor
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state['step'] must be an integer >= 0, got {step!r}")
        restored = {}
        for key, st in dict(moments).items():
            if set(st) != set(self._state_names):
                raise ValueError(f"state['state'][{key!r}] must have {list(self._state_names)}, got {sorted(st)}")
            arrays = list(st.values())
            for a in arrays:
                if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
                    raise TypeError(f"state['state'][{key!r}] must hold float32 or float64 arrays, got {_kind(a)}")
            if any(a.ndim != 1 or a.shape != arrays[0].shape or a.dtype != arrays[0].dtype for a in arrays):
                raise ValueError(f"state['state'][{key!r}] must hold 1-D arrays of one size and dtype")
            restored[key] = {n: np.array(st[n], order="C", copy=True) for n in self._state_names}
        for k in self._hyper:
            setattr(self, k, getattr(checked, k))
        self._set_steps_taken(int(step))
        self.state = restored

    def _pairs(self, params: dict, grads: dict):
        """Validated (key, param, grad, dtype) quadruples; ``dtype`` is what the update computes in."""
        for key, p in params.items():
            if key not in grads:
                raise KeyError(f"grads has no entry {key!r} for params[{key!r}]")
            g = grads[key]
            # the common case: plain arrays of one float dtype, so nothing to convert and nothing
            # strict mode refuses
            dtype = fast_dtype(p)
            fast = dtype is not None and plain(g, dtype)
            if not fast:
                if not isinstance(p, np.ndarray) or p.dtype.kind != "f" or p.dtype.itemsize > 8:
                    raise TypeError(f"params[{key!r}] must be a float numpy array (float32 or float64), got {_kind(p)}")
                g = as_array(g, f"grads[{key!r}]")
            if g.shape != p.shape:
                raise ValueError(f"grads[{key!r}] has shape {g.shape} but params[{key!r}] has shape {p.shape}")
            if not p.flags.writeable:
                raise ValueError(f"params[{key!r}] is read-only")
            if fast:
                yield key, p, g, dtype
                continue
            if _backend.is_strict():
                compute_dtype(**{f"params[{key!r}]": p, f"grads[{key!r}]": g})
            # as NumPy's in-place ``p -= lr * g``: the update is written in p's dtype
            yield key, p, g, param_dtype(p)

    def _state_for(self, key: str, p: np.ndarray, dtype: np.dtype) -> list[np.ndarray]:
        st = self.state.get(key)
        if st is None or any(a.size != p.size or a.dtype != dtype for a in st.values()):
            st = self.state[key] = {name: np.zeros(p.size, dtype) for name in self._state_names}
        return [st[name] for name in self._state_names]

    def _apply(
        self, p: np.ndarray, g: np.ndarray, dtype: np.dtype, state: list[np.ndarray], scalars: tuple, twin: bool
    ) -> None:
        """Update ``p`` (with its ``state``) from ``g`` in ``dtype``; with ``twin``, or under the numpy
        backend, through the NumPy twin instead of the kernel."""
        scalars = tuple(dtype.type(s) for s in scalars)
        in_place = p.flags.c_contiguous and p.dtype == dtype
        flat = p.reshape(-1) if in_place else p.astype(dtype, order="C").reshape(-1)  # a view, or a copy written back
        # a gradient that partly overlaps the parameter would change as p is written; two arrays that
        # each own their memory cannot overlap (the common case: no overlap test needed)
        if in_place and g is not p and not (g.base is None and p.base is None) and np.may_share_memory(g, p):
            g = g.copy()
        reference_path = twin or _backend.current() == "numpy"
        if reference_path or not _float32_for_float64(g, dtype):
            g = np.ascontiguousarray(g, dtype=dtype)
        g = g.reshape(-1)  # else the kernel reads the float32 gradient as it is (no float64 copy)
        if reference_path:
            type(self)._reference(flat, *state, g, *scalars)
        else:
            launch(getattr(_optim, type(self)._kernel), p.size, flat, *state, g, *scalars)
        if not in_place:
            p[...] = flat.reshape(p.shape)

    def _update_common(self, params, grads) -> bool:
        """:meth:`update` for the common call, with the fewest checks; False, having done nothing,
        for any other. The common call: a dict of plain, writeable, aligned, C-contiguous float
        arrays of one dtype that the rule updates in it, each with a gradient in ``grads`` of its
        shape and dtype (aligned, writeable and C-contiguous too) that is itself or owns memory apart
        from it, on the numba backend. Every pair is checked before any is updated (as the general
        path does).

        The arrays are updated through a :class:`_Plan` (kept from the previous call while its
        checks pass), in groups of ``GROUP`` small arrays per kernel call."""
        if type(params) is not dict or type(grads) is not dict:
            return False
        plan = self._plan
        views = None if plan is None else plan.views(self, params, grads)
        if views is None:
            fresh = _Plan.build(params)
            if fresh is None:
                return False
            views = fresh.views(self, params, grads)
            if views is None:  # a gradient that does not fit: the general path, the plan kept
                return False
            plan = self._plan = fresh
            plan.bind(self)  # the state is bound once the first call's pairs all passed
        plan.run(self, *views)
        return True

    def update(self, params: dict[str, np.ndarray], grads: Mapping[str, ArrayLike]) -> None:
        """Update every array of ``params`` in place from the same-named entry of ``grads``.

        Parameters
        ----------
        params : dict of str to ndarray or real scalar
            Float arrays, updated in place (their dtype is kept). A real scalar (a Python or NumPy
            number, as in the classic code's two-parameter examples) is replaced by its updated value,
            a float64 scalar, as ``params[key] -= ...`` does; scalars are updated by the NumPy twin,
            with the classic code's operations and bits, so that such a program never loads the
            compiled kernels (and Numba).
        grads : mapping of str to array_like
            A gradient for every key of ``params``, of the same shape; it may be the parameter itself.
            A float32 gradient of a float64 parameter (the float32 policy's) is read as it is,
            without a float64 copy, and gives the update from that copy (to its last bits, but
            for a multiply-add that the compiler may contract in one case and not the other).

        Raises
        ------
        KeyError
            A parameter has no gradient.
        ValueError, TypeError
            A gradient of another shape or dtype than its parameter; a read-only parameter.
        """
        if self._update_common(params, grads):
            return
        scalars = self._step_scalars()
        numbers = {k: v for k, v in params.items() if _is_real_scalar(v)}
        arrays = {k: np.array(v, np.float64) if k in numbers else v for k, v in params.items()}
        for key, p, g, dtype in list(self._pairs(arrays, grads)):
            self._apply(p, g, dtype, self._state_for(key, p, dtype), scalars, key in numbers)
        for key in numbers:
            params[key] = arrays[key][()]


def _float32_for_float64(g: np.ndarray, dtype: np.dtype) -> bool:
    """Whether the kernels may read gradient ``g`` as it is for an update in ``dtype``: a float32
    gradient (native byte order, C-contiguous, aligned) of a float64 update, which the kernels
    convert element by element as they read it, exactly (:mod:`fastlayers._kernels.optim`)."""
    return dtype == F64 and plain(g, F32) and g.flags.aligned


class _Plan:
    """How an optimizer updates one dict of parameters: the arrays (by identity and key), their
    state, the groups of small arrays that share a kernel call and the compiled entry points of
    those calls. Built at a common update and used again while :meth:`views` accepts the next
    call's ``params`` and ``grads``.

    Memory safety: each call, :meth:`views` checks every parameter's and gradient's type, dtype,
    shape and layout (C-contiguous, aligned, writeable) and every state array's dtype, length and
    layout against the plan's, then makes the flat views that the kernels get; the state arrays go
    as they are. So the kernels read the memory the arrays have at that call, of the lengths just
    checked, even after a resize (``refcheck=False``) between calls, and each argument has the Numba
    type the plan's entry points were compiled for (:func:`fastlayers._kernels._numba.entry_point`).
    The other checks are about meaning (a replaced array, state replaced through
    ``optimizer.state``, a dtype changed in place, a parameter made read-only).
    """

    __slots__ = ("items", "params", "dtype", "states", "flat_state", "sizes", "groups", "singles", "pad", "kernel",
                 "raw", "scalars")  # fmt: skip

    @classmethod
    def build(cls, params: dict) -> _Plan | None:
        """The plan for ``params``, its state not bound yet (:meth:`bind`), or None when the call is
        not a common one (see :meth:`_Optimizer._update_common`)."""
        arrays = list(params.values())
        if not arrays:
            return None
        dtype = fast_dtype(arrays[0])  # a plain array the rule updates in its own dtype, numba backend
        if dtype is None:
            return None
        for p in arrays:
            if not plain(p, dtype) or p.flags.num & _NEED != _NEED:
                return None
        plan = cls()
        # (key, array, shape, whether it owns its memory) of each parameter, in the dict's order
        plan.items = [(k, p, p.shape, p.base is None) for k, p in params.items()]
        plan.params = arrays
        plan.dtype = dtype
        plan.sizes = [p.size for p in arrays]
        plan.flat_state = None
        plan.states = None
        plan.raw = plan.scalars = None
        plan.pad = tuple(np.empty(0, dtype) for _ in range(_optim.GROUP))
        return plan

    def bind(self, opt: _Optimizer) -> None:
        """Take (or create) the optimizer's state for each parameter, and make the groups: the
        arrays below the kernels' parallel threshold, ``GROUP`` per call in the dict's order; larger
        ones run alone (their own kernel call, parallel)."""
        names = opt._state_names
        keys = [item[0] for item in self.items]
        self.flat_state = [
            opt._state_for(k, p, self.dtype) if names else [] for k, p in zip(keys, self.params, strict=True)
        ]
        self.states = [opt.state.get(k) for k in keys] if names else None
        name = type(opt)._kernel
        self.kernel = (getattr(_optim, name + "_group"), getattr(_optim, name))
        width, big = _optim.GROUP, _optim.MEMORY_BOUND_MIN
        small = [i for i, n in enumerate(self.sizes) if n < big]
        self.singles = [i for i, n in enumerate(self.sizes) if n >= big]
        self.groups = []
        for lo in range(0, len(small), width):
            members = tuple(small[lo : lo + width])
            fill = self.pad[: width - len(members)]
            state = tuple(tuple(self.flat_state[i][j] for i in members) + fill for j in range(len(names)))
            # then: whether the group is every parameter in order (its tuples are the views'), and
            # the group's compiled entry point, made at its first serial call
            whole = members == tuple(range(len(self.sizes))) and not fill
            self.groups.append([members, sum(self.sizes[i] for i in members), fill, state, whole, None])

    def views(self, opt: _Optimizer, params: dict, grads: dict) -> tuple[list, list] | None:
        """Flat views of the parameters and gradients of this call, or None when ``params`` is not
        the plan's (the same arrays under the same keys, plain, writeable, of the plan's dtype and
        shape; the optimizer's state still the plan's, on the numba backend) or a gradient does not
        fit its parameter (a plain, aligned, writeable array of its dtype and shape, that is the
        parameter itself or owns memory apart from it)."""
        dtype = self.dtype
        if len(params) != len(self.items) or (_backend._backend_var.get() or _backend._default) != "numba":
            return None  # with the length equal, every key of the plan found below is every key
        if dtype.itemsize == 8 and _backend.is_float32():  # float64 computed in float32: the general path
            return None
        flat_p, flat_g = [], []
        for key, mine, shape, owns in self.items:
            p = params.get(key)
            g = grads.get(key)
            if p is not mine or p.dtype is not dtype or p.shape != shape or p.flags.num & _NEED != _NEED:
                return None
            if type(g) is not np.ndarray or g.dtype is not dtype or g.shape != shape or g.flags.num & _NEED != _NEED:
                return None
            if g is not p and not (owns and g.base is None):  # else they might overlap
                return None
            flat_p.append(p.ravel())  # views: both are C-contiguous
            flat_g.append(g.ravel())
        if self.states is not None:
            state = opt.state
            names = opt._state_names
            for (key, *_), size, st, arrays in zip(self.items, self.sizes, self.states, self.flat_state, strict=True):
                now = state.get(key)
                if now is not st:
                    return None
                for n, a in zip(names, arrays, strict=True):
                    if (
                        now.get(n) is not a
                        or a.dtype is not dtype
                        or a.shape != (size,)
                        or a.flags.num & _NEED != _NEED
                    ):
                        return None
        return flat_p, flat_g

    def run(self, opt: _Optimizer, flat_p: list, flat_g: list) -> None:
        """The update of every parameter, on the views :meth:`views` made for this call."""
        raw = opt._step_scalars()
        if raw != self.raw:  # converted again only when they change (Adam's: every step)
            self.raw, self.scalars = raw, tuple(map(self.dtype.type, raw))
        scalars = self.scalars
        group, single = self.kernel
        for entry in self.groups:
            members, size, fill, state, whole, call = entry
            if whole:
                ps, gs = tuple(flat_p), tuple(flat_g)
            else:
                ps = tuple([flat_p[i] for i in members]) + fill
                gs = tuple([flat_g[i] for i in members]) + fill
            if size >= group.parallel_min:
                launch(group, size, ps, *state, gs, *scalars)
                continue
            if call is None:  # every later call's arguments have these types (views' checks)
                call = entry[5] = _numba.entry_point(group.serial, (ps, *state, gs, *scalars))
            call(ps, *state, gs, *scalars)
        for i in self.singles:
            launch(single, self.sizes[i], flat_p[i], *self.flat_state[i], flat_g[i], *scalars)


class SGD(_Optimizer):
    """Stochastic gradient descent: ``p -= lr * g``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, > 0.
    """

    _kernel = "sgd"
    _reference = staticmethod(reference.sgd)

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")

    def _step_scalars(self) -> tuple:
        return (self.lr,)


class Momentum(_Optimizer):
    """Momentum SGD: ``v = momentum * v - lr * g; p += v``.

    Parameters
    ----------
    lr : float, default 0.01
    momentum : float in [0, 1), default 0.9
    """

    _state_names = ("v",)
    _hyper = ("lr", "momentum")
    _kernel = "momentum"
    _reference = staticmethod(reference.momentum)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")
        self.momentum = _fraction(momentum, "momentum")

    def _step_scalars(self) -> tuple:
        return (self.lr, self.momentum)


class Nesterov(_Optimizer):
    """Nesterov's accelerated gradient as the classic code has it now: the parameters move first,
    with the velocity as it was (``p += momentum * momentum * v``, ``p -= (1 + momentum) * lr * g``),
    then the velocity is updated (``v = momentum * v - lr * g``), the order of the classic code's fix
    "Fix Nesterov update function". Earlier fastlayers followed the older revision, which updates the
    velocity first: every step's result differs from that one's (see the CHANGELOG).

    Parameters
    ----------
    lr : float, default 0.01
    momentum : float in [0, 1), default 0.9
    """

    _state_names = ("v",)
    _hyper = ("lr", "momentum")
    _kernel = "nesterov"
    _reference = staticmethod(reference.nesterov)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")
        self.momentum = _fraction(momentum, "momentum")

    def _step_scalars(self) -> tuple:
        mu = self.momentum
        return (self.lr, mu, mu * mu, (1 + mu) * self.lr)


class RMSprop(_Optimizer):
    """RMSprop, the classic form: ``h = decay_rate * h + (1 - decay_rate) * g * g``, then
    ``p -= lr * g / (sqrt(h) + 1e-7)``.

    Parameters
    ----------
    lr : float, default 0.01
    decay_rate : float in [0, 1), default 0.99
    """

    _state_names = ("h",)
    _hyper = ("lr", "decay_rate")
    _kernel = "rmsprop"
    _reference = staticmethod(reference.rmsprop)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")
        self.decay_rate = _fraction(decay_rate, "decay_rate")

    def _step_scalars(self) -> tuple:
        return (self.lr, self.decay_rate, 1 - self.decay_rate, 1e-7)


class AdaGrad(_Optimizer):
    """AdaGrad: ``h += g * g; p -= lr * g / (sqrt(h) + eps)``.

    Parameters
    ----------
    lr : float, default 0.01
    eps : float, default 1e-7
    """

    _state_names = ("h",)
    _hyper = ("lr", "eps")
    _kernel = "adagrad"
    _reference = staticmethod(reference.adagrad)

    def __init__(self, lr: float = 0.01, eps: float = 1e-7) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")
        self.eps = _positive(eps, "eps")

    def _step_scalars(self) -> tuple:
        return (self.lr, self.eps)


class Adam(_Optimizer):
    """Adam (Kingma and Ba), in the classic form with the bias correction folded into the step size.

    Parameters
    ----------
    lr : float, default 0.001
    beta1, beta2 : float in [0, 1), defaults 0.9 and 0.999
    eps : float, default 1e-7
    """

    _state_names = ("m", "v")
    _hyper = ("lr", "beta1", "beta2", "eps")
    _kernel = "adam"
    _reference = staticmethod(reference.adam)

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7) -> None:
        super().__init__()
        self.lr = _positive(lr, "lr")
        self.beta1 = _fraction(beta1, "beta1")
        self.beta2 = _fraction(beta2, "beta2")
        self.eps = _positive(eps, "eps")
        self.iter = 0

    def _steps_taken(self) -> int:
        return self.iter

    def _set_steps_taken(self, steps: int) -> None:
        self.iter = steps

    def _step_scalars(self) -> tuple:
        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        return (lr_t, self.beta1, self.beta2, self.eps)
