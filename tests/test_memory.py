"""No hidden temporaries: the peak memory of a forward+backward is its outputs and gradients.

NumPy reports its allocations to ``tracemalloc``; the kernels allocate nothing. For each layer, after
a warm-up call of the same shapes (compilation allocates), the peak traced during one forward and
one backward must not exceed the bytes of what the calls return or keep (outputs, gradients,
``SoftmaxWithLoss``'s one loss per row, the per-thread panels of a product with a transposed
operand) plus 64 KiB for Python objects.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastlayers as fl

N, D, M = 512, 1024, 256
SLACK = 64 * 1024


def peak_of(run) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        results = run()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del results
    return peak


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "affine", "softmax_loss"])
def test_peak_is_outputs_and_gradients(name, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    if name in ("relu", "sigmoid"):
        make = fl.Relu if name == "relu" else fl.Sigmoid
        dout = rng.standard_normal((N, D)).astype(dtype)

        def run():
            layer = make()
            return layer.forward(x), layer.backward(dout)

        expected = 2 * x.nbytes
    elif name == "affine":
        W = rng.standard_normal((D, M)).astype(dtype)
        b = rng.standard_normal(M).astype(dtype)
        dout = rng.standard_normal((N, M)).astype(dtype)

        def run():
            layer = fl.Affine(W, b)
            return layer.forward(x), layer.backward(dout), layer.dW, layer.db

        expected = (N * M + N * D + D * M + M) * itemsize
        # dout @ W.T on the tiles packs W.T a column panel at a time, one panel of M rows of
        # PANEL_BYTES per thread (_kernels/dense.matmul_nt), instead of copying W.T whole
        from fastlayers._kernels import _threads, dense

        expected += _threads.load_numba().get_num_threads() * M * dense.PANEL_BYTES
    else:
        t = rng.integers(0, D, N)

        def run():
            layer = fl.SoftmaxWithLoss()
            return layer.forward(x, t), layer.y, layer.backward()

        expected = 2 * x.nbytes + N * itemsize  # y, dx, and the per-row losses averaged into the loss
    run()  # warm-up: compile or load the kernels
    peak = peak_of(run)
    assert peak <= expected + SLACK, f"peak {peak} bytes, outputs and gradients {expected} bytes"
    assert peak >= expected * 0.99  # the measurement sees the outputs at all


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolution_needs_less_than_the_classic_column_matrix(dtype):
    """DeepConvNet's first 3x3 convolution (100x16x28x28 to 16 channels, pad 1): beyond the outputs
    and gradients, forward+backward needs less scratch memory than the classic code's column matrix
    alone (N*OH*OW x C*9 float64, 90 MB), which the classic layer keeps between the two calls."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 16, 28, 28)).astype(dtype)
    W = (0.1 * rng.standard_normal((16, 16, 3, 3))).astype(dtype)
    b = np.zeros(16, dtype)
    dout = rng.standard_normal((100, 16, 28, 28)).astype(dtype)
    fl.Convolution(W, b, 1, 1).forward(x[:2])  # compile (or load) the kernels first

    def run():
        layer = fl.Convolution(W, b, 1, 1)
        return layer, layer.forward(x), layer.backward(dout)

    classic_col = 100 * 28 * 28 * 16 * 9 * 8
    results = 2 * x.nbytes + W.nbytes + b.nbytes  # out, dx, dW, db
    peak = peak_of(run)
    assert peak - results < classic_col, (peak, results, classic_col)
    scratch, col = (peak - results) / 1e6, classic_col / 1e6
    print(f"\n{np.dtype(dtype).name}: scratch {scratch:.1f} MB against the classic column matrix's {col:.1f} MB")
