"""The layers of the classic code's training chapter, ``Dropout`` and ``BatchNormalization``, on the
compiled kernels.

``Dropout`` keeps the classic semantics, on which the classic nets rely: in training ``x * mask``
with no rescaling (not "inverted" dropout), at test time ``x * (1 - dropout_ratio)``. Its masks come
from fastlayers' own counter-based generator keyed from NumPy's global generator
(:mod:`fastlayers.functional.dropout`): reproducible after ``np.random.seed``, the same for any
thread count, but not bit for bit the masks ``np.random.rand(...) > ratio`` would give.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .. import reference
from ..functional import batchnorm as B
from ..functional import dropout as D
from ..functional._checks import REUSE_MIN_BYTES, as_array, compute_dtype, fast_dtype, numpy_backend, plain, reusable


class Dropout:
    """Dropout layer, the classic (non-inverted) form.

    Parameters
    ----------
    dropout_ratio : float in [0, 1), default 0.5
        Probability of dropping each element in training.

    Attributes
    ----------
    mask : ndarray of bool or None
        True where the latest training ``forward`` kept the element; ``backward`` multiplies by the
        mask as it is then (replace or refill it to change what ``backward`` does).

    Raises
    ------
    TypeError, ValueError
        ``dropout_ratio`` not a number in [0, 1).
    """

    def __init__(self, dropout_ratio: float = 0.5) -> None:
        self.dropout_ratio: float = D.check_ratio(dropout_ratio)
        self.mask: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._scaled: np.ndarray | None = None  # the latest test-mode result

    def forward(self, x: ArrayLike, train_flg: object = True) -> np.ndarray:
        """``x * mask`` with a fresh mask in training (any true ``train_flg``), else
        ``x * (1 - dropout_ratio)``.

        Parameters
        ----------
        x : array_like, any shape
        train_flg : truthy or falsy, default True

        Returns
        -------
        ndarray of ``x``'s shape in ``x``'s float dtype (integers as float64).

        Raises
        ------
        TypeError, ValueError
            ``dropout_ratio`` changed to something that is not a number in [0, 1); unsupported dtypes.
        """
        ratio = D.check_ratio(self.dropout_ratio)
        if not train_flg:
            out = D.scale_run(x, ratio, self, "_scaled")  # the common call: a plain float array
            if out is None:
                return D.dropout_scale(x, ratio)
            self._scaled = out
            return out
        x = as_array(x, "x")
        dtype = compute_dtype(x=x)
        if numpy_backend() or not (x.dtype == dtype and x.flags.c_contiguous):
            self._out, self.mask = D.dropout_forward(x, ratio)
            return self._out
        out = reusable(self, "_out", x.shape, dtype)
        mask = reusable(self, "mask", x.shape, np.dtype(np.bool_))
        self._out, self.mask = D.forward_run(x, ratio, None, out, mask)
        return self._out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """``dout * mask``, with the mask as it is now.

        Parameters
        ----------
        dout : array_like, shaped like the forward input

        Returns
        -------
        ndarray of ``dout``'s shape (dtype by NumPy's rule).

        Raises
        ------
        ValueError
            ``backward`` before a training ``forward``; ``dout`` and ``mask`` of different shapes.
        """
        if self.mask is None:
            raise ValueError("Dropout.backward called before a training forward (train_flg=True)")
        dout = as_array(dout, "dout")
        buf = None
        if type(self.mask) is np.ndarray and self.mask.dtype == np.bool_ and self.mask.shape == dout.shape:
            buf = reusable(self, "_dx", dout.shape, compute_dtype(dout=dout))
        self._dx = D.dropout_backward(dout, self.mask, out=buf)
        return self._dx


def _batch_mismatch(dout_shape: tuple, xn_shape: tuple, rows_shape: tuple) -> str:
    return f"dout has shape {dout_shape} but the training forward's batch (xn) has shape {xn_shape}"


class BatchNormalization:
    """Batch normalization, the classic form: per feature over the batch, a 4-D input normalised per
    element of C*H*W (``x.reshape(N, -1)``), biased batch variance, epsilon ``10e-7`` (1e-6).

    Parameters
    ----------
    gamma, beta : ndarray of D values
        Scale and shift, kept by reference (optimizers update them in place).
    momentum : float in [0, 1], default 0.9
    running_mean, running_var : ndarray of D values, optional
        Created as zeros at the first ``forward`` when not given, in the compute dtype (NumPy's rule
        for ``x``, ``gamma`` and ``beta``; the classic code makes them float64, which is what the
        classic float64 ``gamma`` gives here too). Each training ``forward`` replaces them with new
        arrays ``momentum * old + (1 - momentum) * batch``.

    Attributes
    ----------
    input_shape, batch_size : the latest input's shape and, after a training forward, its N
    xn, std : the normalised batch (N, D) and ``sqrt(var + 1e-6)`` (D,) of the latest training forward
    xc : ``xn * std`` (the centred batch), computed when read
    dgamma, dbeta : set by :meth:`backward`

    Raises
    ------
    ValueError
        ``momentum`` outside [0, 1].
    """

    def __init__(
        self,
        gamma: np.ndarray,
        beta: np.ndarray,
        momentum: float = 0.9,
        running_mean: np.ndarray | None = None,
        running_var: np.ndarray | None = None,
    ) -> None:
        self.gamma = gamma
        self.beta = beta
        self.momentum: float = B.check_momentum(momentum)
        self.running_mean = running_mean
        self.running_var = running_var
        self.input_shape: tuple[int, ...] | None = None
        self.batch_size: int | None = None
        self.xn: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @property
    def xc(self) -> np.ndarray | None:
        """The centred batch ``x - mean`` of the latest training forward, as ``xn * std``."""
        if self.xn is None or self.std is None:
            return None
        return self.xn * self.std

    def forward(self, x: ArrayLike, train_flg: object = True) -> np.ndarray:
        """Normalise ``x`` with the batch statistics (training, any true ``train_flg``; the running
        statistics are updated) or with the running ones (test).

        Parameters
        ----------
        x : array_like, shape (N, D) or (N, C, H, W) (or any (N, ...))
        train_flg : truthy or falsy, default True

        Returns
        -------
        ndarray shaped like ``x``, in the dtype NumPy gives for ``x``, ``gamma`` and ``beta``.

        Raises
        ------
        ValueError
            ``x`` of fewer than 2 dimensions or empty; ``gamma``, ``beta`` or the running statistics
            not of D values (for 4-D input, D = C*H*W, named in the message); ``momentum`` changed to
            something outside [0, 1].
        TypeError
            Unsupported dtypes.
        """
        out = self._forward_common(x, train_flg)
        if out is not None:
            return out
        x = as_array(x, "x")
        B.as_rows(x)  # a bad x is named before a bad momentum, as the functions do it
        momentum = B.check_momentum(self.momentum)
        x, x2, g, b = B.operands(x, self.gamma, self.beta)
        dtype = x2.dtype
        n, d = x2.shape
        if self.running_mean is None:
            self.running_mean, self.running_var = np.zeros(d, dtype), np.zeros(d, dtype)
        rm = B._feature(self.running_mean, "running_mean", d, x.shape, dtype)
        rv = B._feature(self.running_var, "running_var", d, x.shape, dtype)
        self.input_shape = x.shape
        fast = not numpy_backend()
        if not train_flg:
            if not fast:
                return reference.batchnorm_test(x2, g, b, rm, rv).reshape(x.shape)
            return B.infer_run(x2, g, b, rm, rv).reshape(x.shape)
        if fast:
            out = reusable(self, "_out", (n, d), dtype)
            xn = reusable(self, "xn", (n, d), dtype)
            self._out, self.xn, self.std, self.running_mean, self.running_var = B.train_run(
                x2, g, b, momentum, rm, rv, out, xn
            )
        else:
            out, self.xn, self.std, m_new, v_new = reference.batchnorm_train(x2, g, b, dtype.type(momentum), rm, rv)
            self._out, self.running_mean, self.running_var = out, m_new.astype(dtype), v_new.astype(dtype)
        self.batch_size = n
        return self._out.reshape(x.shape)

    def _forward_common(self, x, train_flg: object) -> np.ndarray | None:
        """:meth:`forward` for the common call, with the fewest checks; None, having done nothing,
        for any other. The common call: ``x`` a plain (N, D) float array with N >= 1 on the numba
        backend (:func:`~fastlayers.functional._checks.fast_dtype`), ``gamma``, ``beta`` and the
        running statistics (or none yet) plain (D,) arrays of its dtype, ``momentum`` a float in
        [0, 1]. The kernels read only these arrays, at the shapes checked here."""
        dtype = fast_dtype(x)
        if dtype is None or x.ndim != 2:
            return None
        n, d = x.shape
        g, b, rm, rv = self.gamma, self.beta, self.running_mean, self.running_var
        momentum = self.momentum
        if n == 0 or type(momentum) is not float or not 0.0 <= momentum <= 1.0:
            return None
        shape = (d,)
        if not (plain(g, dtype) and plain(b, dtype) and g.shape == shape and b.shape == shape):
            return None
        if rm is not None and not (plain(rm, dtype) and plain(rv, dtype) and rm.shape == shape and rv.shape == shape):
            return None
        if rm is None:  # created at the first forward, as the general path does
            self.running_mean, self.running_var = rm, rv = np.zeros(d, dtype), np.zeros(d, dtype)
        self.input_shape = x.shape
        if not train_flg:
            return B.infer_run(x, g, b, rm, rv)
        big = n * d * dtype.itemsize >= REUSE_MIN_BYTES  # smaller results are never reused: skip the gate
        out = reusable(self, "_out", (n, d), dtype) if big else None
        xn = reusable(self, "xn", (n, d), dtype) if big else None
        self._out, self.xn, self.std, self.running_mean, self.running_var = B.train_run(
            x, g, b, momentum, rm, rv, out, xn
        )
        self.batch_size = n
        return self._out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """Gradients from ``xn``, ``std`` and ``gamma`` as they are now (the fused closed form).

        Parameters
        ----------
        dout : array_like, shaped like the training forward's input

        Returns
        -------
        dx : ndarray shaped like ``dout``; also sets ``dgamma`` and ``dbeta`` (D,).

        Raises
        ------
        ValueError
            ``backward`` before a training ``forward``; ``dout`` that does not match ``xn``;
            ``gamma`` or ``std`` changed into arrays of another size.
        """
        if self.xn is None:
            raise ValueError("BatchNormalization.backward called before a training forward (train_flg=True)")
        xn, g, std = self.xn, self.gamma, self.std
        dtype = fast_dtype(dout)
        if (  # the common call: plain arrays of one dtype, dout (N, D) shaped like xn, gamma and std (D,)
            dtype is not None
            and dout.ndim == 2
            and plain(xn, dtype)
            and plain(g, dtype)
            and plain(std, dtype)
            and xn.shape == dout.shape
            and g.shape == std.shape == (dout.shape[1],)
        ):
            big = dout.size * dtype.itemsize >= REUSE_MIN_BYTES
            dx = reusable(self, "_dx", dout.shape, dtype) if big else None
            self._dx, self.dgamma, self.dbeta = B.backward_run(dout, xn, g, std, dx)
            return self._dx
        dout, d2, xn, g, s = B.backward_operands(dout, self.xn, self.gamma, self.std, _batch_mismatch)
        dtype = d2.dtype
        if numpy_backend():
            dx, self.dgamma, self.dbeta = reference.batchnorm_backward(d2, xn, g, s)
        else:
            dx, self.dgamma, self.dbeta = B.backward_run(d2, xn, g, s, reusable(self, "_dx", d2.shape, dtype))
        self._dx = dx
        return dx.reshape(dout.shape)
