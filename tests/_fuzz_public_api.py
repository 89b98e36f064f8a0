"""Fuzz every public function and layer: each call returns what the reference path returns, or
raises ValueError/TypeError. Run by ``test_fuzz.py`` in a subprocess, so a crash fails the test.

Not collected by pytest directly (the name does not start with ``test_``).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastlayers as fl
from fastlayers import functional as F

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64, np.object_]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-310, 5e-324, 1.0, -1.0, 88.0, -104.0]


@st.composite
def arrays(draw, min_dims=0, max_dims=3):
    """An array, list or scalar of any dtype, shape (0-size and huge-and-thin included) and layout."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=7),
            st.sampled_from([(1, 300_001), (300_001, 1), (2, 0), (0,), ()]),
        )
    )
    if dtype is np.object_:
        a = np.empty(shape, object)
        a[...] = draw(st.sampled_from([1.5, "a", None]))
    else:
        base = np.asarray(draw(st.sampled_from(SPECIAL + [3.25, -2.5])))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # casting inf/nan to int is part of the fuzz
            vals = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e3, 1e-30]))
            if vals.size:
                flat = vals.reshape(-1)
                flat[rng.integers(0, flat.size, max(1, flat.size // 5))] = base
            a = vals.astype(dtype)
    form = draw(st.sampled_from(["C", "F", "strided", "list", "scalar"]))
    if form == "F":
        a = np.asfortranarray(a)
    elif form == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif form == "list":
        return a.tolist()
    elif form == "scalar" and a.size:
        v = a.reshape(-1)[0]
        return v.item() if isinstance(v, np.generic) else v
    return a


def labels_or_rows(draw, n_rows: int, n_cls: int):
    kind = draw(st.sampled_from(["labels", "bad_labels", "rows", "random"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "labels":
        return rng.integers(0, max(n_cls, 1), n_rows)
    if kind == "bad_labels":
        return rng.choice(np.array([-1, n_cls, 2**40, -(2**40)]), max(n_rows, 1))
    if kind == "rows":
        rows = np.zeros((n_rows, n_cls))
        if n_cls:
            rows[np.arange(n_rows), rng.integers(0, n_cls, n_rows)] = 1
        return rows
    return draw(arrays(max_dims=2))


def same_as_reference(fn, *args):
    """Call ``fn`` on both backends: the same ValueError/TypeError, or the same values."""
    results = []
    for backend in ("numba", "numpy"):
        with fl.use_backend(backend):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the reference may warn (overflow in exp of huge values)
                    results.append(("ok", fn(*args)))
            except (ValueError, TypeError) as exc:
                results.append(("error", type(exc)))
    (kind_a, a), (kind_b, b) = results
    assert kind_a == kind_b, (results, args)
    if kind_a == "error":
        assert a is b
        return
    flat_a = a if isinstance(a, tuple) else (a,)
    flat_b = b if isinstance(b, tuple) else (b,)
    for u, v in zip(flat_a, flat_b, strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        with np.errstate(invalid="ignore", over="ignore"):
            scale = np.nanmax(np.abs(v[np.isfinite(v)]), initial=1.0) if v.size else 1.0
            tol = 1e-3 if u.dtype == np.float32 else 1e-9
            ok = np.isclose(u, v, rtol=tol, atol=tol * scale, equal_nan=True) | ((u == v) & ~np.isfinite(v))
        assert np.all(ok), (fn, args, u, v)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@SETTINGS
@given(st.data())
def test_elementwise(data):
    x = data.draw(arrays())
    y = data.draw(st.one_of(st.just(x), arrays()))
    for fn in (F.relu_forward, F.sigmoid_forward):
        same_as_reference(fn, x)
    for fn in (F.relu_backward, F.sigmoid_backward):
        same_as_reference(fn, x, y)


@SETTINGS
@given(st.data())
def test_softmax_and_losses(data):
    x = data.draw(arrays(max_dims=3))
    shape = np.shape(x)
    n_rows = shape[0] if len(shape) >= 1 else 1
    n_cls = shape[1] if len(shape) == 2 else (shape[0] if len(shape) == 1 else 1)
    t = labels_or_rows(data.draw, n_rows if len(shape) == 2 else 1, n_cls)
    same_as_reference(F.softmax, x)
    same_as_reference(F.softmax_cross_entropy_forward, x, t)
    same_as_reference(F.softmax_cross_entropy_backward, x, t, data.draw(st.sampled_from([1.0, 0.5, "x", None])))
    same_as_reference(F.cross_entropy_error, x, t)


@SETTINGS
@given(st.data())
def test_affine(data):
    x = data.draw(arrays(min_dims=0, max_dims=4))
    W = data.draw(arrays(min_dims=0, max_dims=3))
    b = data.draw(arrays(min_dims=0, max_dims=2))
    same_as_reference(F.affine_forward, x, W, b)
    dout = data.draw(arrays(max_dims=3))
    same_as_reference(F.affine_backward, dout, x, W)


@SETTINGS
@given(st.data())
def test_layers(data):
    x = data.draw(arrays())
    for cls in (fl.Relu, fl.Sigmoid):
        layer = cls()
        same_as_reference(layer.forward, x)
        same_as_reference(layer.backward, x)
    W, b = data.draw(arrays(max_dims=2)), data.draw(arrays(max_dims=1))
    try:
        affine = fl.Affine(W, b)
    except TypeError:
        return
    same_as_reference(affine.forward, x)


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", "error"]))
