"""Kernel-level checks: every kernel against its NumPy twin (the registry in ``kernel_cases``), the
vectorizable exp, the SIMD row reductions, the compile flags, and the kernel inventory."""

from __future__ import annotations

import copy
import inspect
import os

import numpy as np
import pytest
from numba import njit

from fastlayers._kernels import MODULES, _numba, elementwise, load_all
from fastlayers._kernels import loss as softmax
from fastlayers._kernels._math import exp_nonpos
from fastlayers._kernels._numba import row_max, row_sum

from .conftest import DTYPES, assert_close, compiled_only
from .kernel_cases import (
    CASES,
    DIRECT_CASES,
    LANES_CASES,
    _make_direct,
    _make_direct_lanes,
    _make_dw_lanes,
    sizes,
)

ALL_KERNELS = list(load_all())  # every kernel module, imported


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_its_numpy_twin(name, dtype, twin):
    """Each twin of each kernel against its NumPy twin, at every size of the registry: same outputs
    (within the entry's tolerance), same return value, inputs untouched."""
    case = CASES[name]
    for i, size in enumerate(sizes(case)):
        args = case.make(dtype, size, np.random.default_rng(i))
        # deep copies keep arrays shared between arguments shared (a whole-net kernel's tuples)
        mine, want = copy.deepcopy(args), copy.deepcopy(args)
        got_value = getattr(_numba_kernel(name), twin)(*mine)
        want_value = case.twin(*want)
        n = size[1] if case.rows else case.n(size)
        for a, b in zip(_flatten(mine), _flatten(want), strict=True):
            if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                assert_close(a, b, case.tol, n=n)
            elif isinstance(a, np.ndarray):  # labels: inputs, untouched
                np.testing.assert_array_equal(a, b)
        if want_value is not None:
            terms = n if name.startswith("net_") else np.size(args[0])  # a whole net: as its arrays
            assert_close(dtype(got_value), dtype(want_value), "sum", n=terms)


#: the plain optimizer kernels and the position of their gradient ``g``
OPTIMIZER_GRADIENT = {"sgd": 1, "momentum": 2, "nesterov": 2, "rmsprop": 2, "adagrad": 2, "adam": 3}


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("name", sorted(OPTIMIZER_GRADIENT))
def test_optimizer_kernels_read_float32_gradients_of_float64_parameters(name, twin):
    """A float32 ``g`` with float64 parameters and state (float32 gradients of float64 parameters):
    each element is converted exactly as it is read, so the results are those of the kernel and of
    the NumPy twin on ``g.astype(float64)``, within the entry's tolerance (not bit for bit: the
    compiler may contract a multiply-add differently in the two signatures, as the bounds-checked
    build does); ``g`` untouched."""
    case, at = CASES[name], OPTIMIZER_GRADIENT[name]
    kernel = getattr(_numba_kernel(name), twin)
    for i, size in enumerate(sizes(case)):
        args = case.make(np.float64, size, np.random.default_rng(i))
        g32 = args[at].astype(np.float32)
        mixed, wide, want = (copy.deepcopy(args) for _ in range(3))
        mixed[at], wide[at], want[at] = g32.copy(), g32.astype(np.float64), g32.astype(np.float64)
        kernel(*mixed)
        kernel(*wide)
        case.twin(*want)
        np.testing.assert_array_equal(mixed[at], g32)
        for a, b, c in zip(mixed, wide, want, strict=True):
            if isinstance(a, np.ndarray) and a is not mixed[at]:
                assert a.dtype == np.float64
                assert_close(a, b, case.tol, n=case.n(size))
                assert_close(a, c, case.tol, n=case.n(size))


def _flatten(args: list) -> list:
    """The arguments with the arrays of tuple arguments listed in their place."""
    return [a for arg in args for a in (arg if isinstance(arg, tuple) else (arg,))]


def _numba_kernel(name: str):
    return next(k for k in _numba.ALL_TWINS if k.name == name)


@njit(error_model="numpy")
def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_one_and_a_half_ulp(dtype):
    x = np.linspace(-800, 0, 400_001).astype(dtype)
    out = np.empty_like(x)
    _exp_loop(x, out)
    want = np.exp(x.astype(np.float64))
    normal = want > np.finfo(dtype).tiny
    ulp = np.abs(out[normal] - want[normal]) / np.spacing(want[normal].astype(dtype)).astype(np.float64)
    assert ulp.max() <= 1.5  # of the exact value; a correctly rounded exp would be 0.5
    # subnormal results: off by at most one subnormal step; below the underflow point exactly 0
    sub = ~normal
    assert np.all(np.abs(out[sub] - want[sub]) <= np.finfo(dtype).smallest_subnormal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_special_values(dtype):
    x = np.array([0.0, -0.0, -np.inf, np.nan, -1e30, -1e-30], dtype)
    out = np.empty_like(x)
    _exp_loop(x, out)
    assert out[0] == 1 and out[1] == 1 and out[2] == 0 and np.isnan(out[3]) and out[4] == 0 and out[5] == 1
    assert out.dtype == dtype


def test_inventory():
    """Every kernel has an entry in the registry of twins, and every entry is a kernel."""
    names = [k.name for k in ALL_KERNELS]
    assert len(names) == len(set(names))
    assert set(names) == set(CASES)
    assert {k.module for k in ALL_KERNELS} == set(MODULES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 8191, 8193, 300_007])
def test_copy_kernel(dtype, n):
    """The benchmarks' yardstick, against its NumPy twin ``np.copyto``."""
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    for twin in (elementwise.copy.serial, elementwise.copy.parallel):
        out = np.empty_like(x)
        twin(x, out)
        np.testing.assert_array_equal(out, x)


@compiled_only
@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=lambda k: k.name)
def test_kernel_flags(kernel):
    """One set of flags for all: numpy error model, fastmath limited to FMA contraction (never nnan,
    ninf or reassoc), parallel twin really parallel."""
    source = inspect.getsource(kernel.py_func)
    assert "prange(" in source
    for twin, parallel in ((kernel.serial, False), (kernel.parallel, True)):
        opts = twin.targetoptions
        assert opts.get("error_model") == "numpy"
        assert set(opts.get("fastmath")) == {"contract"}
        assert bool(opts.get("parallel")) is parallel
        assert twin.py_func.__qualname__.endswith(("_parallel_" if parallel else "_serial_") + _numba.TAG)


def test_no_kernel_sets_its_own_flags():
    import pathlib

    for path in pathlib.Path(_numba.__file__).parent.glob("*.py"):
        if path.name == "_numba.py":
            continue
        text = path.read_text()
        assert "fastmath" not in text, path
        assert "@njit" not in text and "numba.njit" not in text, path
        if path.name == "_threads.py":  # the launch policy: numba's public threading calls only
            continue
        # Numba's machinery stays in _numba.py: kernel modules take only prange from numba
        imports = [
            line for line in text.splitlines() if line.startswith(("from numba", "import numba", "from llvmlite"))
        ]
        assert all(line == "from numba import prange" for line in imports), (path, imports)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_copy_label_bounds_and_labels_equal(n, dtype):
    """The one-pass label copy and check, and the label comparison, against their NumPy twins:
    ``out[:] = t; (out.min(), out.max())`` and ``np.array_equal``; strided labels included."""
    info = np.iinfo(dtype)
    t = np.random.default_rng(n).integers(max(info.min, -(2**40)), min(info.max, 2**40), 2 * n).astype(dtype)[::2]
    out = np.empty(n, np.int64)
    assert softmax.copy_label_bounds(t, out) == (t.min(), t.max())
    np.testing.assert_array_equal(out, t)
    assert softmax.labels_equal(t, out)
    if n > 1:
        changed = out.copy()
        changed[-1] += 1
        assert not softmax.labels_equal(t, changed)


@njit(error_model="numpy")
def _row_reductions(x, sums, maxes):
    for i in range(x.shape[0]):
        sums[i] = row_sum(x[i])
        maxes[i] = row_max(x[i])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 2, 7, 15, 16, 17, 63, 64, 65, 1000, 4099])
def test_row_reductions_against_numpy(dtype, c):
    """The SIMD-lane sum and max, against their NumPy twins x.sum(1) and x.max(1) (max exactly),
    on lengths around the vector width, on contiguous rows and on strided ones (bit-identical)."""
    x = (3 * np.random.default_rng(c).standard_normal((6, 2 * c))).astype(dtype)
    for view in (x[:, :c], x[:, ::2], np.asfortranarray(x[:, :c])):
        sums, maxes = np.empty(6, dtype), np.empty(6, dtype)
        _row_reductions(view, sums, maxes)
        exact = view.astype(np.float64).sum(1)
        scale = np.abs(view.astype(np.float64)).sum(1)  # rounding error grows with the sum of |x|
        assert np.all(np.abs(sums - exact) <= c * np.finfo(dtype).eps * scale)
        np.testing.assert_array_equal(maxes, view.max(1))
        c_sums, c_maxes = np.empty_like(sums), np.empty_like(maxes)
        _row_reductions(np.ascontiguousarray(view), c_sums, c_maxes)
        np.testing.assert_array_equal(sums, c_sums)
        np.testing.assert_array_equal(maxes, c_maxes)
        assert sums.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_reductions_special_values(dtype):
    """The sum propagates NaN and inf; NaN never wins the max (the softmax detects NaN by the sum)."""
    x = np.zeros((3, 100), dtype)
    x[0, 37] = np.nan
    x[1, 99] = np.inf
    x[2, :] = -np.inf
    sums, maxes = np.empty(3, dtype), np.empty(3, dtype)
    _row_reductions(x, sums, maxes)
    assert np.isnan(sums[0]) and maxes[0] == 0
    assert sums[1] == np.inf and maxes[1] == np.inf
    assert sums[2] == -np.inf and maxes[2] == -np.inf


def _misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` at an address that is not a multiple of its item size."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _strided(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` (2-D) whose rows are not contiguous: every other column of a wider array."""
    out = np.full((a.shape[0], 2 * a.shape[1]), np.nan, a.dtype)[:, ::2]
    out[...] = a
    return out


def _reshaped(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` with its axes' lengths swapped (the same number of dimensions), as a caller's
    in-place ``a.shape = ...`` leaves it."""
    return a.copy().reshape(a.shape[::-1])


#: (kernel argument position, item of a tuple or None, how the array is spoiled): each makes a
#: whole-net kernel refuse its arguments
_SPOILED = {
    "x strided": (0, None, _strided),
    "x misaligned": (0, None, _misaligned),
    "x rows": (0, None, lambda a: a[:-1].copy()),
    "W1 reshaped": (1, 1, _reshaped),
    "W0 rows": (1, 0, lambda a: a[:-1].copy()),
    "W1 rows": (1, 1, lambda a: a[:-1].copy()),
    "x empty": (0, None, lambda a: a[:0]),
    "W0 misaligned": (1, 0, _misaligned),
    "W1 strided": (1, 1, _strided),
    "b0 short": (2, 0, lambda a: a[:-1].copy()),
    "b1 strided": (2, 1, lambda a: np.repeat(a, 2)[::2]),
    "out0 strided": (4, 0, _strided),
    "out1 reshaped": (4, 1, _reshaped),
    "t short": (5, None, lambda a: a[:-1].copy()),
    "t strided": (5, None, lambda a: np.repeat(a, 2)[::2]),
    "y misaligned": (6, None, _misaligned),
    "losses short": (7, None, lambda a: a[:-1].copy()),
    "grad0 reshaped": (8, 0, _reshaped),
    "dW1 strided": (9, 1, _strided),
    "db1 short": (10, 1, lambda a: a[:-1].copy()),
    "WT1 reshaped": (11, 1, _reshaped),
}


@pytest.mark.parametrize("twin", ["serial", "parallel", "numpy"])
@pytest.mark.parametrize("mode", ["forward", "loss", "gradient"])
def test_whole_net_kernels_refuse_arrays_outside_their_contract(mode, twin):
    """The whole-net kernels check every array's shape, strides and alignment before they write
    anything (the plans leave those checks to them): called through an entry point compiled for the
    contract's types, as the plans call them, each spoiled array gets BAD_LAYOUT and nothing is
    written. The NumPy twins refuse the same."""
    from fastlayers import reference
    from fastlayers._kernels import dense

    name = f"net_{mode}"
    spec = (5, (7, 6, 3, 4), (1, 2))  # the registry's depth (its compiled code serves here), no square array
    good = CASES[name].make(np.float64, spec, np.random.default_rng(0))
    if twin == "numpy":
        kernel = getattr(reference, name)
    else:
        kernel = _numba.entry_point(getattr(getattr(dense, name), twin), tuple(good))
    assert kernel(*copy.deepcopy(good)) >= 0
    tried = 0
    for what, (pos, item, spoil) in _SPOILED.items():
        if pos >= len(good):
            continue
        args = copy.deepcopy(good)
        if item is None:
            args[pos] = spoil(args[pos])
        else:
            items = list(args[pos])
            items[item] = spoil(items[item])
            args[pos] = tuple(items)
        before = [a.copy() for a in _flatten(args) if isinstance(a, np.ndarray)]
        assert kernel(*args) == dense.BAD_LAYOUT, what
        after = [a for a in _flatten(args) if isinstance(a, np.ndarray)]
        for b, a in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=what)
        tried += 1
    assert tried >= 6


@pytest.mark.skipif(
    os.environ.get("NUMBA_BOUNDSCHECK") != "1", reason="the bounds-checked CI step sets NUMBA_BOUNDSCHECK=1"
)
def test_bounds_checking_is_on():
    """In the bounds-checked run, a kernel given a label outside the row (which the checks above it
    never let through) raises IndexError instead of writing past the row."""
    y = np.full((3, 4), 0.25)
    out = np.empty_like(y)
    with pytest.raises(IndexError):
        softmax.xent_grad_labels.serial(y, np.array([0, 1, 4]), 1.0, out)


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 65), (301, 257)])
def test_fused_affine_kernels_equal_the_unfused_ones(shape, dtype, twin):
    """The nets' fused kernels give bit for bit what the layers' kernels give one after the other."""
    from fastlayers._kernels import affine

    rng = np.random.default_rng(5)
    pre, b = (3 * rng.standard_normal(shape)).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    for fused, unfused, grad_fused, grad_unfused in (
        (affine.bias_relu, elementwise.relu_forward, affine.relu_grad_bias, elementwise.relu_backward),
        (affine.bias_sigmoid, elementwise.sigmoid_forward, affine.sigmoid_grad_bias, elementwise.sigmoid_backward),
    ):
        y = pre.copy()
        getattr(fused, twin)(y, b)
        want = pre.copy()
        getattr(affine.bias_add, twin)(want, b)
        getattr(unfused, twin)(want.ravel(), want.ravel())
        np.testing.assert_array_equal(y, want)
        dh, db = np.empty_like(dout), np.empty(shape[1], dtype)
        getattr(grad_fused, twin)(dout, y, dh, db)
        want_dh, want_db = np.empty_like(dout), np.empty(shape[1], dtype)
        getattr(grad_unfused, twin)(dout.ravel(), y.ravel(), want_dh.ravel())
        getattr(affine.bias_grad, twin)(want_dh, want_db)
        np.testing.assert_array_equal(dh, want_dh)
        np.testing.assert_array_equal(db, want_db)


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("kernel", "spec"),
    [("conv_direct", s) for s in DIRECT_CASES if s[-1]] + [("conv_direct_lanes", s) for s in LANES_CASES if s[-1]],
)
def test_pooling_in_the_direct_convolutions_pass_equals_the_pooling_kernel(kernel, spec, dtype, twin):
    """The direct convolutions' 2x2 pooling of their own output (NaN and infinities in the input)
    gives bit for bit what the pooling kernel gives on that output: the same maxima, the same
    indices."""
    from fastlayers._kernels import conv

    lanes = kernel == "conv_direct_lanes"
    args = (_make_direct_lanes if lanes else _make_direct)(dtype, spec, np.random.default_rng(7))
    xp = args[0]
    xp[0, 0, :5] = np.nan
    xp[-1, -1, 3:6] = np.inf
    getattr(getattr(conv, kernel), twin)(*args)
    out, pool, arg, rows_of = args[-5:-1]
    assert np.isnan(pool).any() and np.isinf(out).any()
    for rows in (1, 5, 0):  # the pooling kernel's tasks of several planes, and without scratch rows
        want, want_arg = np.full_like(pool, 7.0), np.full_like(arg, 9)
        vals, vidx = np.empty((rows, rows_of.shape[1]), dtype), np.empty((rows, rows_of.shape[1]), np.uint8)
        getattr(conv.maxpool_forward, twin)(out, 2, 2, 2, 0, want, want_arg, vals, vidx)
        np.testing.assert_array_equal(pool, want)
        np.testing.assert_array_equal(arg, want_arg)


def _one_past(args):
    """The term offset that takes the last pixel of a plane exactly one past its image's planes."""
    xp, wp, out = args[0], args[4], args[9]
    return xp.shape[1] * xp.shape[2] - ((out.shape[2] - 1) * wp + out.shape[3] - 1)


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_lanes_kernel_writes_nothing_outside_its_contract(dtype, twin):
    """The channel-lanes convolution checks what its reads and writes rest on before it writes: a
    term reaching one past the image's planes, a negative term, terms and filters of different
    counts, blocks of another width or too few for the channels, scratch too small in either
    dimension, no images in a task's group, output rows wider than the padded ones, an empty plane,
    an output of another batch size, a bias too short."""
    from fastlayers._kernels import conv

    kernel = getattr(conv.conv_direct_lanes, twin)

    def put(i, value):
        return lambda a: a.__setitem__(i, value(a))

    spoils = {
        "term one past the planes": lambda a: a[1].__setitem__(-1, _one_past(a)),
        "negative term": lambda a: a[1].__setitem__(0, -1),
        "too few terms": put(1, lambda a: a[1][:-1].copy()),
        "narrow blocks": put(2, lambda a: np.ascontiguousarray(a[2][:, :, :-8])),
        "too few blocks": put(9, lambda a: np.full((2, 65, 7, 7), np.nan, a[9].dtype)),
        "no images in a group": put(6, lambda a: 0),
        "short pof rows": put(7, lambda a: a[7][:, :11].copy()),
        "few pof rows": put(7, lambda a: a[7][:-1].copy()),
        "short tile rows": put(8, lambda a: a[8][:, : 6 * a[2].shape[2] - 1].copy()),
        "few tile rows": put(8, lambda a: a[8][:-1].copy()),
        "rows wider than wp": put(4, lambda a: a[9].shape[3] - 1),
        "empty plane": put(9, lambda a: np.full((2, 64, 0, 7), np.nan, a[9].dtype)),
        "another batch size": put(9, lambda a: np.full((1, 64, 7, 7), np.nan, a[9].dtype)),
        "short bias": put(3, lambda a: a[3][:-1].copy()),
    }
    assert LANES_CASES[0][:5] == (2, 32, 7, 7, 64)  # the shapes the spoils above assume
    for name, spoil in spoils.items():
        args = _make_direct_lanes(dtype, LANES_CASES[0], np.random.default_rng(3))
        spoil(args)
        kernel(*args)
        assert np.isnan(args[9]).all(), name
    args = _make_direct_lanes(dtype, LANES_CASES[0], np.random.default_rng(3))
    args[0][np.isnan(args[0])] = 0  # finite past the padded planes, where the far term reads
    args[1][-1] = _one_past(args) - 1  # the farthest term still inside: served
    kernel(*args)
    assert not np.isnan(args[9]).any()  # every output written


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_filter_gradient_lanes_kernel_writes_nothing_outside_its_contract(dtype, twin):
    """The filter gradient with filters in the lanes checks what its reads and writes rest on before
    it writes: a term reaching one past the image's planes, a pixel one past its gradient plane,
    negative offsets, too few term rows or rows of another width, another pixel count or batch
    size, scratch rows narrower than the filter blocks, no scratch image, accumulators too small in
    either dimension."""
    from fastlayers._kernels import conv

    kernel = getattr(conv.conv_dw_lanes, twin)
    spec = (2, 32, 7, 7, 64, 3, 3, 1, 6)  # DeepConvNet's last layers' planes; begin and end both on

    def put(i, value):
        return lambda a: a.__setitem__(i, value(a))

    size = lambda a: a[2].shape[1] * a[2].shape[2]  # noqa: E731  (the elements of an image's planes)
    lanes = _numba.VECTOR_BYTES // np.dtype(dtype).itemsize
    spoils = {
        "term one past the planes": lambda a: a[3].__setitem__((0, 0), size(a) - int(a[4].max())),
        "pixel one past its gradient plane": lambda a: a[4].__setitem__(-1, a[0].shape[2] - a[1]),
        "negative pixel": lambda a: a[4].__setitem__(0, -1),
        "negative term": lambda a: a[3].__setitem__((0, 1), -1),
        "negative start": put(1, lambda a: -1),
        "too few term rows": put(3, lambda a: a[3][:-1].copy()),
        "term rows of 5": put(3, lambda a: a[3][:, :5].copy()),
        "another pixel count": put(4, lambda a: a[4][:-1].copy()),
        "narrow scratch rows": put(5, lambda a: a[5][:, :, : a[5].shape[2] - 1].copy()),
        "no scratch image": put(5, lambda a: a[5][:0].copy()),
        "another batch size": put(2, lambda a: a[2][:1].copy()),
        "few acc rows": put(6, lambda a: a[6][:-1].copy()),
        "short acc rows": put(6, lambda a: a[6][:, : _numba.TILE_ACCUMULATORS * lanes - 1].copy()),
    }
    for name, spoil in spoils.items():
        args = _make_dw_lanes(dtype, spec, np.random.default_rng(3))
        assert args[8] and args[9]  # begin and end: the accumulators zeroed, dw written
        spoil(args)
        acc = args[6].copy()
        kernel(*args)
        assert np.isnan(args[7]).all() and np.isnan(args[5]).all(), name
        np.testing.assert_array_equal(args[6], acc, err_msg=name)
    args = _make_dw_lanes(dtype, spec, np.random.default_rng(3))
    args[3][0, 0] = size(args) - 1 - int(args[4].max())  # the farthest read still inside: served
    kernel(*args)
    assert not np.isnan(args[7]).any()
