"""Winograd F(2x2, 3x3) for 3x3 stride 1 convolutions, a measured experiment (not a code path of
fastlayers), against the direct kernels (fastlayers' Convolution layer) and a float64 reference.

The input is zero-padded (one more row and column than the padding where the output's size is odd,
so that every 4x4 tile lies inside), transformed tile by tile into V (16, N, C, T) (T: tiles a
plane), multiplied position by position with the transformed filters U (16, FN, C), and the
products M (16, N, FN, T) transformed back into the output, bias added. Two routes for the 16
products, each timed:

- ``blas``: one batched ``numpy.matmul`` of U with V (NumPy's BLAS);
- ``lanes``: fastlayers' channel-lanes tile (``conv_direct_lanes``, the kernel of small planes),
  each position's product a 1x1 convolution of V's planes: the register tile that runs at the
  cores' FMA peak in the direct forward.

A third route, ``fused``, works image by image in a thread's own scratch (in its L2 cache): the
image zero-padded channels-last, the input transform with channels as its inner (vector) loop into
(16, T, C), the 16 products straight on the channel-lanes tile (tiles as its pixels, channels as its
terms, output channels in its lanes) into (16, T, FN), the output transform with channels inner,
then back to NCHW.

The transforms are plain Numba loops, parallel over planes. Usage: ``python
tools/winograd_experiment.py [float32|float64 ...]``; docs/PERFORMANCE.md, "Winograd", has the
figures and what they say.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from numba import njit, prange

import fastlayers as fl
from fastlayers._kernels import _threads
from fastlayers._kernels import conv as kconv
from fastlayers._kernels._numba import conv_lanes_tile_6
from fastlayers.functional import conv as fconv

#: (N, C, H, FN, pad): DeepConvNet's 3x3 layers, and the 7x7 planes of the convolution issue
SHAPES = [
    (100, 16, 28, 16, 1),
    (100, 16, 14, 32, 1),
    (100, 32, 14, 32, 2),
    (100, 32, 8, 64, 1),
    (100, 64, 8, 64, 1),
    (100, 32, 7, 64, 1),
]


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def in_row(d0, d1, d2, d3, v, e):
    """One row of B^T d times B, into v[e : e + 4]."""
    v[e] = d0 - d2
    v[e + 1] = d1 + d2
    v[e + 2] = d2 - d1
    v[e + 3] = d1 - d3


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def in_tile(p, r, s, v):
    """B^T d B of the 4x4 tile of the plane ``p`` at (r, s) into the 16 values ``v``, in registers."""
    a0, a1, a2, a3 = p[r, s], p[r, s + 1], p[r, s + 2], p[r, s + 3]
    b0, b1, b2, b3 = p[r + 1, s], p[r + 1, s + 1], p[r + 1, s + 2], p[r + 1, s + 3]
    c0, c1, c2, c3 = p[r + 2, s], p[r + 2, s + 1], p[r + 2, s + 2], p[r + 2, s + 3]
    d0, d1, d2, d3 = p[r + 3, s], p[r + 3, s + 1], p[r + 3, s + 2], p[r + 3, s + 3]
    in_row(a0 - c0, a1 - c1, a2 - c2, a3 - c3, v, 0)  # B^T d: rows a-c, b+c, c-b, b-d
    in_row(b0 + c0, b1 + c1, b2 + c2, b3 + c3, v, 4)
    in_row(c0 - b0, c1 - b1, c2 - b2, c3 - b3, v, 8)
    in_row(b0 - d0, b1 - d1, b2 - d2, b3 - d3, v, 12)


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def out_tile(m, bias):
    """A^T m A of a tile's 16 products ``m``, bias added: its (top-left, top-right, bottom-left,
    bottom-right) outputs."""
    a0, a1, a2, a3 = m[0] + m[4] + m[8], m[1] + m[5] + m[9], m[2] + m[6] + m[10], m[3] + m[7] + m[11]
    c0, c1, c2, c3 = m[4] - m[8] - m[12], m[5] - m[9] - m[13], m[6] - m[10] - m[14], m[7] - m[11] - m[15]
    return a0 + a1 + a2 + bias, a1 - a2 - a3 + bias, c0 + c1 + c2 + bias, c1 - c2 - c3 + bias


@njit(parallel=True, fastmath={"contract"}, error_model="numpy")
def in_transform(xp, th, tw, V):  # noqa: N803 - xp (N, C, >= 2th+2, >= 2tw+2) padded; V (16, N, C, th*tw)
    n, c = xp.shape[0], xp.shape[1]
    for job in prange(n * c):
        i, ch = job // c, job % c
        for ty in range(th):
            for tx in range(tw):
                in_tile(xp[i, ch], 2 * ty, 2 * tx, V[:, i, ch, ty * tw + tx])


@njit(parallel=True, fastmath={"contract"}, error_model="numpy")
def out_transform(M, b, th, tw, out):  # noqa: N803 - M (16, N, FN, th*tw); out (N, FN, OH, OW)
    n, fn, oh, ow = out.shape
    for job in prange(n * fn):
        i, f = job // fn, job % fn
        for ty in range(th):
            for tx in range(tw):
                y, x = 2 * ty, 2 * tx  # the pixels past OH and OW are left out
                y00, y01, y10, y11 = out_tile(M[:, i, f, ty * tw + tx], b[f])
                out[i, f, y, x] = y00
                if x + 1 < ow:
                    out[i, f, y, x + 1] = y01
                if y + 1 < oh:
                    out[i, f, y + 1, x] = y10
                    if x + 1 < ow:
                        out[i, f, y + 1, x + 1] = y11


@njit(parallel=True, fastmath={"contract"}, error_model="numpy")
def fused(x, pad, U, b, out, xt_s, V_s, M_s, yt_s, at_s, acc_s, koff):  # noqa: N803
    """The fused route: x (N, C, H, W), U (16, nblk, C, fc) the filters in the lanes tile's blocks,
    out (N, FN, OH, OW); the scratch arrays have one row per task (thread)."""
    n, c, h, w = x.shape
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    nblk, fc = U.shape[1], U.shape[3]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    tiles = th * tw
    uf = U.reshape(U.size)
    tasks = xt_s.shape[0]
    per = -(-n // tasks)
    for task in prange(tasks):
        xt, V, M, yt, at, acc = xt_s[task], V_s[task], M_s[task], yt_s[task], at_s[task], acc_s[task]
        vf = V.reshape(V.size)
        for i in range(task * per, min(n, (task + 1) * per)):
            xt[...] = 0
            for ch in range(c):  # channels last, zero-padded
                for r in range(h):
                    for s in range(w):
                        xt[r + pad, s + pad, ch] = x[i, ch, r, s]
            for ty in range(th):
                for tx in range(tw):
                    for ch in range(c):  # channels inner
                        in_tile(xt[:, :, ch], 2 * ty, 2 * tx, V[:, ty * tw + tx, ch])
            for e in range(16):  # M[e, t, f] = sum over channels of V[e, t, ch] * U[e, f, ch]
                for blk in range(nblk):
                    f0 = blk * fc
                    for t0 in range(0, tiles, 6):
                        for p in range(6):
                            at[p] = (e * tiles + min(t0 + p, tiles - 1)) * c
                        conv_lanes_tile_6(vf, at, koff, uf, (e * nblk + blk) * c * fc, acc)
                        for p in range(min(6, tiles - t0)):
                            for f in range(min(fc, fn - f0)):
                                M[e, t0 + p, f0 + f] = acc[p * fc + f]
            for ty in range(th):
                for tx in range(tw):
                    y, xx = 2 * ty, 2 * tx
                    for f in range(fn):  # channels inner, into the channels-last yt
                        y00, y01, y10, y11 = out_tile(M[:, ty * tw + tx, f], b[f])
                        yt[y, xx, f], yt[y, xx + 1, f], yt[y + 1, xx, f], yt[y + 1, xx + 1, f] = y00, y01, y10, y11
            for f in range(fn):  # back to NCHW
                for y in range(oh):
                    for xx in range(ow):
                        out[i, f, y, xx] = yt[y, xx, f]


def filters(W: np.ndarray) -> np.ndarray:  # noqa: N803
    """U (16, FN, C) = G g G^T for each filter g."""
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], W.dtype)  # noqa: N806
    U = np.einsum("ak,fckl,bl->abfc", G, W, G)  # noqa: N806
    return np.ascontiguousarray(U.reshape(16, W.shape[0], W.shape[1]))


class Winograd:
    """The buffers and scratch of one shape, and its three routes."""

    def __init__(self, shape: tuple, fn: int, pad: int, dtype: np.dtype) -> None:
        n, c, h, w = shape
        self.pad = pad
        self.oh, self.ow = h + 2 * pad - 2, w + 2 * pad - 2
        self.th, self.tw = (self.oh + 1) // 2, (self.ow + 1) // 2
        t = self.th * self.tw
        self.xp = np.zeros((n, c, 2 * self.th + 2, 2 * self.tw + 2), dtype)
        self.V = np.empty((16, n, c, t), dtype)
        self.M = np.empty((16, n, fn, 1, t), dtype)
        self.out = np.empty((n, fn, self.oh, self.ow), dtype)
        self.fc = fconv._lanes_block(np.dtype(dtype).itemsize)[0]
        self.nblk = -(-fn // self.fc)
        self.koff = np.arange(c, dtype=np.int64) * t  # a 1x1 "filter": channel j's plane
        threads = _threads.load_numba().get_num_threads()
        self.group = fconv.lanes_group(n, self.nblk, t, threads)
        tasks = -(-n // self.group) * self.nblk
        self.pof, self.tile = np.empty((tasks, 12), np.int64), np.empty((tasks, 6 * self.fc), dtype)
        self.zeros = np.zeros(fn, dtype)
        self.no_pool = (
            np.empty((0, 0, 0, 0), dtype),
            np.zeros((0, 0, 0, 0), np.uint8),
            np.empty((0, 0), dtype),
            np.zeros((0, 0), np.uint8),
        )
        self.macs = n * fn * t * c
        e = np.empty  # the fused route's scratch, a row per thread
        self.scratch = (
            e((threads, 2 * self.th + 2, 2 * self.tw + 2, c), dtype),
            e((threads, 16, t, c), dtype),
            e((threads, 16, t, fn), dtype),
            e((threads, 2 * self.th, 2 * self.tw, fn), dtype),
            e((threads, 6), np.int64),
            e((threads, 6 * self.fc), dtype),
            np.arange(c, dtype=np.int64),  # the terms: channel j at offset j
        )

    def blocks(self, U: np.ndarray) -> np.ndarray:  # noqa: N803
        """U's positions as the lanes kernel's filter blocks (16, nblk, C, fc), 0 past FN."""
        fn, c = U.shape[1], U.shape[2]
        wide = np.zeros((16, self.nblk * self.fc, c), U.dtype)
        wide[:, :fn] = U
        return np.ascontiguousarray(wide.reshape(16, self.nblk, self.fc, c).transpose(0, 1, 3, 2))

    def transform_in(self, x: np.ndarray) -> None:
        h, w, p = x.shape[2], x.shape[3], self.pad
        self.xp[:, :, p : p + h, p : p + w] = x
        in_transform(self.xp, self.th, self.tw, self.V)

    def products(self, route: str, U: np.ndarray, wr: np.ndarray) -> None:  # noqa: N803
        if route == "blas":
            np.matmul(U[:, None], self.V, out=self.M[:, :, :, 0, :])
            return
        for e in range(16):
            _threads.launch(
                kconv.conv_direct_lanes, self.macs, self.V[e], self.koff, wr[e], self.zeros, self.V.shape[3],
                False, self.group, self.pof, self.tile, self.M[e], *self.no_pool,
            )  # fmt: skip

    def transform_out(self, b: np.ndarray) -> np.ndarray:
        m = self.M.reshape(self.M.shape[0], self.M.shape[1], self.M.shape[2], self.M.shape[4])
        out_transform(m, b, self.th, self.tw, self.out)
        return self.out

    def __call__(self, route: str, x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:  # noqa: N803
        if route == "fused":
            fused(x, self.pad, self.blocks(filters(W)), b, self.out, *self.scratch)
            return self.out
        self.transform_in(x)
        U = filters(W)  # noqa: N806
        self.products(route, U, self.blocks(U) if route == "lanes" else U)
        return self.transform_out(b)


def median_time(f, reps: int = 15) -> float:
    f()
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def row(dt: np.dtype, n: int, c: int, h: int, fn: int, pad: int, rng: np.random.Generator) -> str:
    """One shape's figures: the direct forward, the transforms, each route whole and its products."""
    x = rng.standard_normal((n, c, h, h)).astype(dt)
    W = (rng.standard_normal((fn, c, 3, 3)) / np.sqrt(9 * c)).astype(dt)  # noqa: N806
    b = rng.standard_normal(fn).astype(dt)
    wino = Winograd(x.shape, fn, pad, dt)
    layer = fl.Convolution(W, b, 1, pad)
    ref = fl.Convolution(W.astype(np.float64), b.astype(np.float64), 1, pad).forward(x.astype(np.float64))
    scale = np.abs(ref).max()
    U = filters(W)  # noqa: N806
    operands = {"blas": U, "lanes": wino.blocks(U)}
    parts = [
        f"{dt} {c}->{fn} {h}x{h} pad {pad}: direct {median_time(lambda: layer.forward(x)) * 1e3:.2f} ms",
        f"(error {np.abs(layer.forward(x) - ref).max() / scale:.1e});",
        f"input transform {median_time(lambda: wino.transform_in(x)) * 1e3:.2f},",
        f"output transform {median_time(lambda: wino.transform_out(b)) * 1e3:.2f};",
    ]
    for route, wr in operands.items():
        error = np.abs(wino(route, x, W, b) - ref).max() / scale
        whole = median_time(lambda route=route: wino(route, x, W, b))
        alone = median_time(lambda route=route, wr=wr: wino.products(route, U, wr))
        parts.append(f"{route}: {whole * 1e3:.2f} ms, products {alone * 1e3:.2f} (error {error:.1e});")
    error = np.abs(wino("fused", x, W, b) - ref).max() / scale
    parts.append(f"fused: {median_time(lambda: wino('fused', x, W, b)) * 1e3:.2f} ms (error {error:.1e})")
    return " ".join(parts)


def main(argv: list[str]) -> None:
    rng = np.random.default_rng(0)
    for dt in [np.dtype(a) for a in argv] or [np.dtype(np.float64), np.dtype(np.float32)]:
        for shape in SHAPES:
            print(row(dt, *shape, rng), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
