"""The convolutional layers of the classic code, ``Convolution`` and ``Pooling``, on the compiled
kernels (:mod:`fastlayers.functional.conv`).

Each keeps the classic constructor, ``forward``/``backward`` signatures and public attributes. The
classic intermediate arrays that the kernels do not need (``col``, ``col_W``, ``arg_max``) are
computed on demand, in the classic layouts, from what the layer keeps.

Departures from the classic code, on purpose:

- results are computed in the dtype NumPy's rule gives for the operands (float32 stays float32; the
  book's float64 filters give float64), where the classic ``im2col`` makes everything float64;
- the output is a C-contiguous NCHW array (the classic code returns a transposed view of the same
  values);
- ``Pooling`` with ``pad > 0`` pads with -inf (padding never wins) and sizes its output with the pad
  (the classic formula ignores it and fails).

Memory safety: ``backward`` (and ``col``) work from the layer's private copy of the input, taken by
``forward`` (so a caller's later change to ``x`` is not seen, as the classic layer, which keeps its
column matrix, does not see it), and from ``W`` as it is then, checked to have the shape ``forward``
saw; the pooling indices are private (``arg_max`` is a fresh array, so
changing it changes nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..functional import conv as C
from ..functional._checks import as_array, compute_dtype, convert, numpy_backend, plain, reusable
from .core import Relu, _need_forward


class Convolution:
    """Convolution layer: ``forward(x)`` is the cross-correlation of ``x`` with the filters ``W``, plus ``b``.

    Parameters
    ----------
    W : ndarray, shape (FN, C, FH, FW)
    b : ndarray, shape (FN,)
        Kept by reference (``self.W``, ``self.b``), so optimizers that update them in place are seen
        by the layer; replacing them between calls is allowed, and checked at the next call.
    stride : int >= 1, default 1
    pad : int >= 0, default 0
        Zeros added on each side of every input plane.

    Attributes
    ----------
    x : ndarray (N, C, H, W)
        The latest input, as given (converted to an array).
    dW, db : ndarray
        Parameter gradients, set by :meth:`backward`.
    col, col_W : ndarray
        The classic column matrix of ``x`` (N*OH*OW, C*FH*FW) and ``W.reshape(FN, -1).T``, computed
        when read.

    Raises
    ------
    TypeError
        ``W`` or ``b`` not numpy arrays; a non-integer ``stride`` or ``pad``.
    ValueError
        ``stride`` < 1 or ``pad`` < 0.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0) -> None:
        if not isinstance(W, np.ndarray) or not isinstance(b, np.ndarray):
            raise TypeError(f"W and b must be numpy arrays, got {type(W).__name__} and {type(b).__name__}")
        self.W: np.ndarray = W
        self.b: np.ndarray = b
        self.stride: int = C._int(stride, "stride", 1)
        self.pad: int = C._int(pad, "pad", 0)
        self.x: np.ndarray | None = None
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None
        self._ws = C.Workspace()
        self._xc: np.ndarray | None = None  # the forward's input in the compute dtype (numpy backend)
        self._out: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @property
    def col(self) -> np.ndarray | None:
        """The classic column matrix (N*OH*OW, C*FH*FW) of the latest input as ``forward`` saw it
        (as the classic layer keeps it), computed when read from the layer's private copy."""
        if self._out is None:
            return None
        geo = self._ws.geo
        seen = self._xc if self._xc is not None else self._seen_input()
        return C.im2col(seen, geo.fh, geo.fw, geo.stride, geo.pad)

    @property
    def col_W(self) -> np.ndarray:  # noqa: N802 - the classic name
        """``W.reshape(FN, -1).T``: the filters as the classic product's right operand (a view)."""
        return self.W.reshape(self.W.shape[0], -1).T

    def _seen_input(self) -> np.ndarray:
        """The input as ``forward`` saw it, from the padded copy of the numba path."""
        geo = self._ws.geo
        hp = geo.h + 2 * geo.pad
        planes = self._ws.xp[:, :, : hp * geo.wp].reshape(geo.n, geo.c, hp, geo.wp)
        return planes[:, :, geo.pad : geo.pad + geo.h, geo.pad : geo.pad + geo.w]

    def forward(self, x: ArrayLike) -> np.ndarray:
        """The convolution of ``x``.

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)

        Returns
        -------
        ndarray, shape (N, FN, OH, OW) with ``OH = (H + 2*pad - FH) // stride + 1`` (likewise OW),
        C-contiguous, in the dtype NumPy gives for ``x``, ``W`` and ``b``.

        Raises
        ------
        ValueError
            ``x`` not 4-D, channels that differ from ``W``'s, ``b`` not (FN,), a filter larger than
            the padded input, an empty batch, ``stride``/``pad`` out of range.
        TypeError
            Unsupported dtypes; a non-integer ``stride`` or ``pad``.
        """
        return self._forward(x, relu=False)

    def _forward(self, x: ArrayLike, relu: bool) -> np.ndarray:
        """:meth:`forward`, through ReLU with ``relu``."""
        return self._run(x, relu, None)[0]

    def _run(self, x: ArrayLike, relu: bool, pool: Pooling | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(:meth:`_forward`'s output, None), or with ``pool`` (a 2x2, stride 2, unpadded Pooling
        after the ReLU, from :func:`conv_relu_pool_forward`) when the direct kernel serves the
        call, (output, pooled output): the pooling done in the kernel's pass and ``pool`` left as
        its own ``forward`` of the output would leave it. ``pool`` is untouched otherwise."""
        x, W, b, geo = C.prepare(x, self.W, self.b, self.stride, self.pad)
        dtype = W.dtype
        if numpy_backend():
            self._xc = np.array(x, dtype=dtype)  # a private copy: backward sees x as forward did
            out = C.reference.conv_forward(self._xc, W, b, geo.stride, geo.pad)
            if relu:
                out = C.reference.relu_forward(out)
            self._ws.geo = geo
            fused = None
        else:
            self._xc = None
            buf = reusable(self, "_out", geo.out_shape, dtype)
            fused = None
            if pool is not None and C.pool_fuses(geo, dtype):
                fused = pool._buffers((geo.n, geo.fn, geo.oh // 2, geo.ow // 2), dtype, np.dtype(np.uint8))
            out = C.forward_run(x, W, b, geo, buf, relu, self._ws, fused)
            if fused is not None:
                pool.x, pool._out, pool._arg = out, *fused
                pool._geo = C.pool_geometry(out.shape, 2, 2, 2, 0)
        self.x = x
        self._out = out
        return out, (None if fused is None else fused[0])

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """Gradients of the layer.

        Parameters
        ----------
        dout : array_like, shape (N, FN, OH, OW)
            Upstream gradient.

        Returns
        -------
        dx : ndarray shaped like the forward input, in the forward's compute dtype; also sets
            ``dW`` (shaped like ``W``) and ``db`` (FN,).

        Raises
        ------
        ValueError
            ``backward`` before ``forward``; ``dout`` of another shape than the output; ``W``
            replaced by an array of another shape since ``forward``.
        TypeError
            Unsupported dtypes.
        """
        return self._backward(dout, with_dx=True)

    def _backward(self, dout: ArrayLike, with_dx: bool, relu_out: np.ndarray | None = None, pool_arg=None):
        """:meth:`backward`, with ReLU's mask from ``relu_out`` (the fused walk), and, with
        ``pool_arg`` (the private indices of a 2x2 pooling after that ReLU, checked by
        :func:`conv_relu_pool_backward`), from the pooling's upstream gradient ``dout``."""
        _need_forward(self, self.x)
        geo = self._ws.geo
        W = as_array(self.W, "W")
        want = (geo.fn, geo.c, geo.fh, geo.fw)
        if W.shape != want:
            raise ValueError(f"W has shape {W.shape} but forward ran with filters of shape {want}")
        dout = as_array(dout, "dout")
        if pool_arg is None and dout.shape != geo.out_shape:
            raise ValueError(f"dout has shape {dout.shape} but the forward output has shape {geo.out_shape}")
        dtype = self._out.dtype
        W = convert(W, dtype)
        dout = np.ascontiguousarray(convert(dout, dtype))
        if pool_arg is None and (numpy_backend() or self._xc is not None):
            xc = self._xc if self._xc is not None else self._seen_input()
            if relu_out is not None:
                dout = C.reference.relu_backward(dout, relu_out)
            dx, self.dW, self.db = C.reference.conv_backward(dout, xc, W, geo.stride, geo.pad)
        else:
            dx = reusable(self, "_dx", (geo.n, geo.c, geo.h, geo.w), dtype) if with_dx else None
            dW = reusable(self, "dW", W.shape, dtype)
            db = reusable(self, "db", (geo.fn,), dtype)
            if pool_arg is not None:
                run = C.pooled_backward_run(dout, pool_arg, relu_out, W, self._ws, with_dx, dx, dW, db)
            else:
                relu = relu_out is not None
                run = C.backward_run(dout, relu_out if relu else None, W, self._ws, with_dx, relu, dx, dW, db)
            dx, self.dW, self.db = run
        if with_dx:
            self._dx = dx
        return dx


class Pooling:
    """Max pooling layer over windows of ``pool_h`` x ``pool_w``.

    Parameters
    ----------
    pool_h, pool_w : int >= 1
    stride : int >= 1, default 2
    pad : int, default 0
        Positions added on each side of every plane; they never win (-inf). Must be smaller than the
        window.

    Attributes
    ----------
    x : ndarray (N, C, H, W)
        The latest input.
    arg_max : ndarray of int64, shape (N*OH*OW*C,)
        The classic layout of each window's maximum (window-local index ``ky * pool_w + kx``, rows
        in the order (n, oh, ow, c)), computed when read from the layer's private indices.

    Raises
    ------
    TypeError, ValueError
        Arguments that are not integers in range.
    """

    def __init__(self, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0) -> None:
        self.pool_h: int = C._int(pool_h, "pool_h", 1)
        self.pool_w: int = C._int(pool_w, "pool_w", 1)
        self.stride: int = C._int(stride, "stride", 1)
        self.pad: int = C._int(pad, "pad", 0)
        self.x: np.ndarray | None = None
        self._arg: np.ndarray | None = None
        self._geo: Any = None
        self._out: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @property
    def arg_max(self) -> np.ndarray | None:
        """Each window's maximum in the classic layout (a fresh array; changing it changes nothing)."""
        if self._arg is None:
            return None
        return self._arg.transpose(0, 2, 3, 1).reshape(-1).astype(np.int64)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """The maximum of every window.

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)

        Returns
        -------
        ndarray, shape (N, C, OH, OW) with ``OH = (H + 2*pad - pool_h) // stride + 1`` (likewise
        OW), C-contiguous, in ``x``'s float dtype (float16 as float32, integers as float64).

        Raises
        ------
        ValueError
            ``x`` not 4-D, a window larger than the padded input, ``pad`` not smaller than the window.
        TypeError
            Unsupported dtypes.
        """
        x = as_array(x, "x")
        xc, geo = C.pool_prepare(x, self.pool_h, self.pool_w, self.stride, self.pad)
        dtype = xc.dtype
        if numpy_backend():
            out, arg = C.reference.maxpool_forward(xc, geo.fh, geo.fw, geo.stride, geo.pad)
            arg = arg.astype(C._arg_dtype(geo))
        else:
            buffers = self._buffers((geo.n, geo.c, geo.oh, geo.ow), dtype, C._arg_dtype(geo))
            out, arg = C.pool_forward_run(xc, geo, *buffers)
        self.x, self._arg, self._geo, self._out = x, arg, geo, out
        return out

    def _buffers(self, shape: tuple, dtype: np.dtype, arg_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(output, indices) for a forward into ``shape``: the layer's own arrays where they can be
        reused (the indices are private; the output only while nobody else holds it), else new."""
        arg = self._arg
        if arg is None or arg.shape != shape or arg.dtype != arg_dtype:
            arg = np.empty(shape, arg_dtype)
        out = reusable(self, "_out", shape, dtype)
        return (np.empty(shape, dtype) if out is None else out), arg

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """The gradient: each ``dout`` value goes to its window's maximum (overlapping windows add up).

        Parameters
        ----------
        dout : array_like, shape (N, C, OH, OW)

        Returns
        -------
        ndarray shaped like the forward input, in ``dout``'s float dtype.

        Raises
        ------
        ValueError
            ``backward`` before ``forward``; ``dout`` of another shape than the output.
        """
        _need_forward(self, self._arg)
        geo = self._geo
        dout = as_array(dout, "dout")
        shape = (geo.n, geo.c, geo.oh, geo.ow)
        if dout.shape != shape:
            raise ValueError(f"dout has shape {dout.shape} but the forward output has shape {shape}")
        dout = np.ascontiguousarray(convert(dout, compute_dtype(dout=dout)))
        if numpy_backend():
            dx = C.reference.maxpool_backward(
                dout, self._arg, (geo.n, geo.c, geo.h, geo.w), geo.fh, geo.fw, geo.stride, geo.pad
            )
        else:
            buf = reusable(self, "_dx", (geo.n, geo.c, geo.h, geo.w), dout.dtype)
            dx = C.pool_backward_run(dout, self._arg, geo, buf)
        self._dx = dx
        return dx


# --------------------------------------------------------------------------------------------
# a Convolution layer and the ReLU after it, fused (used by the nets)
# --------------------------------------------------------------------------------------------
def conv_relu_forward(conv: Convolution, relu: Relu, x) -> np.ndarray:
    """``relu.forward(conv.forward(x))`` with the bias add and ReLU in the pass that writes the
    output, leaving ``conv.x`` and ``relu.out`` as the two calls would."""
    relu.out = conv._forward(x, relu=True)
    return relu.out


def conv_relu_pool_forward(conv: Convolution, relu: Relu, pool: Pooling, x) -> np.ndarray:
    """``pool.forward(relu.forward(conv.forward(x)))`` for the nets' Convolution -> ReLU -> Pooling:
    when the pooling is the classic 2x2, stride 2, unpadded one and the direct kernel serves the
    convolution, each output plane is pooled in the kernel's pass, while it is in cache; otherwise
    the pooling's own forward runs after. ``conv.x``, ``relu.out`` and ``pool``'s input, output and
    indices are left as the three calls would leave them."""
    classic = (pool.pool_h, pool.pool_w, pool.stride, pool.pad) == (2, 2, 2, 0)
    relu.out, pooled = conv._run(x, True, pool if classic else None)
    return pool.forward(relu.out) if pooled is None else pooled


def conv_relu_backward(conv: Convolution, relu: Relu, dout, with_dx: bool) -> np.ndarray | None:
    """``conv.backward(relu.backward(dout))`` with ReLU's mask applied as ``dout`` is laid out for
    the products; without ``with_dx`` the input gradient is not computed (None)."""
    _need_forward(relu, relu.out)
    y = relu.out
    out = conv._out
    if not (plain(y, out.dtype) and y.shape == out.shape):  # replaced since forward: the two calls
        dh = relu.backward(dout)
        return conv._backward(dh, with_dx)
    return conv._backward(dout, with_dx, relu_out=y)


def conv_relu_pool_backward(conv: Convolution, relu: Relu, pool: Pooling, dout, with_dx: bool):
    """``conv.backward(relu.backward(pool.backward(dout)))`` for the nets' Convolution -> ReLU ->
    2x2 Pooling (stride 2, no padding): the pooling's and the ReLU's backward passes happen as the
    gradient is laid out for the convolution's, and the full-size gradients between them are never
    written. The same operations on the same state (the pooling's indices, ``relu.out``, the
    convolution's input), so the same results; ``conv`` is left with ``dW`` and ``db`` (and its
    input gradient, returned, with ``with_dx``; None without). False, having done nothing, for any
    other call (the layers' own calls then run, and raise what they raise)."""
    out, arg, geo, y = conv._out, pool._arg, pool._geo, relu.out
    if (
        numpy_backend()
        or out is None
        or conv._xc is not None
        or arg is None
        or type(dout) is not np.ndarray
        or (geo.fh, geo.fw, geo.stride, geo.pad) != (2, 2, 2, 0)
        or (geo.n, geo.c, geo.h, geo.w) != out.shape
        or arg.dtype != np.uint8
        or dout.dtype != out.dtype
        or dout.shape != arg.shape
        or not (plain(y, out.dtype) and y.shape == out.shape)
        or not C.direct_backward_serves(conv._ws, out.dtype, with_dx)
    ):
        return False
    return conv._backward(dout, with_dx, relu_out=y, pool_arg=arg)
