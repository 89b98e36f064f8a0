"""Dropout: the classic semantics, the counter-based generator (bits equal to the NumPy twin and to
Random123's published answers), the statistics of the masks, reproducibility after
``np.random.seed``, independence of the thread count, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import functional as F
from fastlayers import reference as R
from fastlayers._kernels import dropout as K

from .conftest import DTYPES

#: elements of the statistical tests (fewer when the kernels run as Python: NUMBA_DISABLE_JIT=1)
N_DRAWS = 1 << 13 if fl._kernels._numba.DISABLED else 1 << 20


def test_philox_known_answers():
    """Random123's known-answer vectors for philox4x32_10 (counter words beyond the first two are 0
    here, as in every fastlayers call)."""
    np.testing.assert_array_equal(R.philox4x32([0], 0, 0)[0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8])
    words = K.philox(np.uint32(0), np.uint32(0), np.uint32(0), np.uint32(0))
    np.testing.assert_array_equal(np.array(words, np.uint32), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8])
    # the compiled helper and the NumPy twin on other counters and keys
    for g, k0, k1 in ((5, 1, 2), (2**33 + 7, 0xFFFFFFFF, 12345)):
        got = K.philox(np.uint32(g & 0xFFFFFFFF), np.uint32(g >> 32), np.uint32(k0), np.uint32(k1))
        np.testing.assert_array_equal(np.array(got, np.uint32), R.philox4x32([g], k0, k1)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 5), (7, 1001), (256, 1024)])
def test_layer_is_the_classic_dropout(shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    layer = fl.Dropout(0.3)
    out = layer.forward(x)
    assert out.dtype == dtype and layer.mask.dtype == np.bool_ and layer.mask.shape == x.shape
    np.testing.assert_array_equal(out, x * layer.mask)  # no rescaling: the classic form
    dout = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(layer.backward(dout), dout * layer.mask)
    np.testing.assert_array_equal(layer.forward(x, train_flg=False), x * dtype(0.7))
    assert layer.forward(x, train_flg=0).dtype == dtype  # any falsy flag is test mode


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_same_masks_after_np_random_seed_on_both_backends(backend):
    x = np.ones((64, 257))
    masks = []
    for _ in range(2):
        np.random.seed(1234)  # noqa: NPY002 - the classic global generator
        with fl.use_backend(backend):
            layer = fl.Dropout(0.5)
            layer.forward(x)
            masks.append(layer.mask.copy())
            layer.forward(x)
            masks.append(layer.mask.copy())
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[3])
    assert not np.array_equal(masks[0], masks[1])  # a new mask at every call
    np.random.seed(1234)  # noqa: NPY002 - the classic global generator
    with fl.use_backend("numba" if backend == "numpy" else "numpy"):
        other = fl.Dropout(0.5)
        other.forward(x)
    np.testing.assert_array_equal(other.mask, masks[0])  # the two backends draw the same bits


def test_masks_do_not_depend_on_the_thread_count():
    x = np.ones(N_DRAWS, np.float32)
    out = {}
    for threads in (fl.get_num_threads(), 1):
        fl.set_num_threads(threads)
        try:
            out[threads] = F.dropout_forward(x, 0.5, key=(11, 22))[1]
        finally:
            fl.set_num_threads(fl._kernels._threads.num_threads_limit())
    a, b = out.values()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9])
def test_kept_fraction_and_independence(ratio):
    """The kept fraction is 1 - ratio within 5 standard deviations; neighbouring elements, elements
    of the same counter, and the same element in two calls are uncorrelated."""
    n = N_DRAWS
    _, m1 = F.dropout_forward(np.ones(n), ratio, key=(1, 2))
    _, m2 = F.dropout_forward(np.ones(n), ratio, key=(3, 4))
    p = 1 - ratio
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(m1.mean() - p) <= 5 * sd + 1e-12
    if 0 < ratio:
        a, b = m1.astype(float), m2.astype(float)
        for u, v in ((a[:-1], a[1:]), (a[::4], a[1::4]), (a, b)):  # neighbours, lanes of one counter, two calls
            corr = np.corrcoef(u, v)[0, 1]
            assert abs(corr) < 5 / np.sqrt(u.size), corr
    # and the draws themselves are uniform: each 32-bit draw's top 4 bits, chi-square over 16 bins
    bins = np.bincount(R.dropout_draws(1 << 16, 5, 6) >> 28, minlength=16)
    chi2 = ((bins - bins.mean()) ** 2 / bins.mean()).sum()
    assert chi2 < 50  # 15 degrees of freedom: p < 1e-5 above 50


def test_nan_and_inf_stay_nan_when_dropped():
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 1000)
    for backend in ("numba", "numpy"):
        with fl.use_backend(backend):
            out, mask = F.dropout_forward(x, 0.5, key=(7, 8))
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(out, x * mask)


def test_backward_with_a_replaced_mask():
    layer = fl.Dropout(0.5)
    x = np.ones((4, 5))
    layer.forward(x)
    layer.mask = np.full((4, 5), 0.25)  # any real array of the same shape: dout * mask, as classic
    np.testing.assert_array_equal(layer.backward(np.ones((4, 5))), np.full((4, 5), 0.25))
    layer.mask = np.ones((5, 4), bool)
    with pytest.raises(ValueError, match=r"mask has shape \(5, 4\) but dout has shape \(4, 5\)"):
        layer.backward(np.ones((4, 5)))
    layer.mask[...] = False  # refilled in place: backward uses it as it is
    layer.mask = layer.mask.T.copy()
    np.testing.assert_array_equal(layer.backward(np.ones((4, 5))), np.zeros((4, 5)))


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: fl.Dropout(1.0), ValueError, r"dropout_ratio must be in \[0, 1\), got 1.0"),
        (lambda: fl.Dropout(-0.1), ValueError, r"dropout_ratio must be in \[0, 1\)"),
        (lambda: fl.Dropout(float("nan")), ValueError, r"dropout_ratio must be in \[0, 1\)"),
        (lambda: fl.Dropout("0.5"), TypeError, "dropout_ratio must be a number"),
        (lambda: fl.Dropout(None), TypeError, "dropout_ratio must be a number"),
        (lambda: fl.Dropout().backward(np.ones(3)), ValueError, "before a training forward"),
        (lambda: F.dropout_forward(np.ones(3), 0.5, key=(1,)), TypeError, "key must be a pair"),
        (lambda: F.dropout_forward(np.ones(3), 0.5, key=(1, 2**32)), ValueError, "key must be a pair"),
        (lambda: F.dropout_forward(np.ones(3, complex)), TypeError, "x has dtype complex128"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_ratio_changed_after_construction_is_checked():
    layer = fl.Dropout(0.5)
    layer.dropout_ratio = 2
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\), got 2"):
        layer.forward(np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_test_mode_results_are_recycled_only_when_dropped(dtype):
    """Test mode (``x * (1 - ratio)``) writes into its previous result when nobody holds it, never
    into one the caller keeps; non-contiguous and integer input take the general path."""
    x = np.random.default_rng(2).standard_normal((128, 100)).astype(dtype)
    layer = fl.Dropout(0.25)
    first = layer.forward(x, train_flg=False)
    np.testing.assert_array_equal(first, x * dtype(0.75))
    kept = first.copy()
    second = layer.forward(2 * x, train_flg=False)
    assert second is not first
    np.testing.assert_array_equal(first, kept)
    address = second.__array_interface__["data"][0]
    del second
    third = layer.forward(x, train_flg=False)
    assert third.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(third, x * dtype(0.75))
    np.testing.assert_array_equal(layer.forward(x.T, train_flg=False), x.T * dtype(0.75))
    assert layer.forward(np.arange(6).reshape(2, 3), train_flg=False).dtype == np.float64
