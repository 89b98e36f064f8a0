"""Winograd F(2x2, 3x3) for 3x3 pad 1 stride 1 (H, W even), a measured experiment (not a code path
of fastlayers): input and output transforms in plain Numba loops (parallel over images), the 16
products (tiles x C) @ (C x FN) through NumPy's BLAS (batched matmul); against the direct kernel
(fastlayers' Convolution layer) and a float64 reference. Usage: ``python tools/winograd_experiment.py``.
Its transforms are naive; the point it measures is the products alone against the direct kernel."""

from __future__ import annotations

import functools
import time

import numpy as np
from numba import njit, prange

import fastlayers as fl


@njit(parallel=True, fastmath={"contract"}, error_model="numpy")
def in_transform(x, V):  # x (N, C, H, W); V (16, N*T, C), T = (H/2)*(W/2)
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    for i in prange(n):
        for ch in range(c):
            for ty in range(th):
                for tx in range(tw):
                    d = np.zeros((4, 4), x.dtype)
                    for a in range(4):
                        yy = 2 * ty - 1 + a
                        if 0 <= yy < h:
                            for b in range(4):
                                xx = 2 * tx - 1 + b
                                if 0 <= xx < w:
                                    d[a, b] = x[i, ch, yy, xx]
                    t = np.empty((4, 4), x.dtype)  # B^T d
                    for b in range(4):
                        t[0, b] = d[0, b] - d[2, b]
                        t[1, b] = d[1, b] + d[2, b]
                        t[2, b] = d[2, b] - d[1, b]
                        t[3, b] = d[1, b] - d[3, b]
                    tile = i * th * tw + ty * tw + tx
                    for a in range(4):  # (B^T d) B
                        V[a * 4 + 0, tile, ch] = t[a, 0] - t[a, 2]
                        V[a * 4 + 1, tile, ch] = t[a, 1] + t[a, 2]
                        V[a * 4 + 2, tile, ch] = t[a, 2] - t[a, 1]
                        V[a * 4 + 3, tile, ch] = t[a, 1] - t[a, 3]


@njit(parallel=True, fastmath={"contract"}, error_model="numpy")
def out_transform(M, b, out):  # M (16, N*T, FN); out (N, FN, H, W)
    n, fn, h, w = out.shape
    th, tw = h // 2, w // 2
    for i in prange(n):
        for ty in range(th):
            for tx in range(tw):
                tile = i * th * tw + ty * tw + tx
                for f in range(fn):
                    m = np.empty((4, 4), out.dtype)
                    for e in range(16):
                        m[e // 4, e % 4] = M[e, tile, f]
                    t = np.empty((2, 4), out.dtype)  # A^T m
                    for q in range(4):
                        t[0, q] = m[0, q] + m[1, q] + m[2, q]
                        t[1, q] = m[1, q] - m[2, q] - m[3, q]
                    for a in range(2):
                        out[i, f, 2 * ty + a, 2 * tx] = t[a, 0] + t[a, 1] + t[a, 2] + b[f]
                        out[i, f, 2 * ty + a, 2 * tx + 1] = t[a, 1] - t[a, 2] - t[a, 3] + b[f]


def filt(W):  # U (16, C, FN) = G g G^T
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], W.dtype)
    U = np.einsum("ak,fckl,bl->abcf", G, W, G)
    return np.ascontiguousarray(U.reshape(16, W.shape[1], W.shape[0]))


def winograd(x, W, b, V, M, out):
    in_transform(x, V)
    np.matmul(V, filt(W), out=M)
    out_transform(M, b, out)
    return out


def tmed(f, reps=15):
    time.sleep(0.1)
    f()
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return np.median(ts)


def main() -> None:
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for n, c, h, fn in [(100, 16, 28, 16), (100, 32, 14, 32), (100, 64, 8, 64)]:
            x = rng.standard_normal((n, c, h, h)).astype(dt)
            W = (rng.standard_normal((fn, c, 3, 3)) / np.sqrt(9 * c)).astype(dt)  # noqa: N806
            b = np.zeros(fn, dt)
            tiles = n * (h // 2) ** 2
            V, M = np.empty((16, tiles, c), dt), np.empty((16, tiles, fn), dt)  # noqa: N806
            out = np.empty((n, fn, h, h), dt)
            layer = fl.Convolution(W, b, 1, 1)
            ref = fl.Convolution(W.astype(np.float64), b.astype(np.float64), 1, 1).forward(x.astype(np.float64))
            scale = np.abs(ref).max()
            e_w = np.abs(winograd(x, W, b, V, M, out) - ref).max() / scale
            e_d = np.abs(layer.forward(x) - ref).max() / scale
            tw = tmed(functools.partial(winograd, x, W, b, V, M, out))
            td = tmed(functools.partial(layer.forward, x))
            t_in = tmed(functools.partial(in_transform, x, V))
            t_mm = tmed(functools.partial(np.matmul, V, filt(W), out=M))
            t_out = tmed(functools.partial(out_transform, M, b, out))
            print(
                f"{dt.__name__} {c}->{fn} {h}x{h}: winograd {tw * 1e3:.2f} ms (input transform {t_in * 1e3:.2f}, "
                f"products {t_mm * 1e3:.2f}, output transform {t_out * 1e3:.2f}), direct {td * 1e3:.2f} ms; "
                f"max error / max |y|: winograd {e_w:.1e}, direct {e_d:.1e}"
            )


if __name__ == "__main__":
    main()
