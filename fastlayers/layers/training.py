"""The layers of the classic code's training chapter: ``Dropout`` (and, below, batch normalization),
on the compiled kernels.

``Dropout`` keeps the classic semantics, on which the classic nets rely: in training ``x * mask``
with no rescaling (not "inverted" dropout), at test time ``x * (1 - dropout_ratio)``. Its masks come
from fastlayers' own counter-based generator keyed from NumPy's global generator
(:mod:`fastlayers.functional.dropout`): reproducible after ``np.random.seed``, the same for any
thread count, but not bit for bit the masks ``np.random.rand(...) > ratio`` would give.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..functional import dropout as D
from ..functional._checks import as_array, compute_dtype, numpy_backend, reusable


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
            return D.dropout_scale(x, ratio)
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
