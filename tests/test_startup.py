"""Start-up: ``import fastlayers`` loads no Numba; the reference backend, ``info``, argument checks and
their errors work without it; the first kernel call loads Numba and only the kernel modules it needs;
``FASTLAYERS_PRELOAD`` loads them all at import. Each check runs in a fresh interpreter. (Times are
benchmarks, not tests: ``tools/startup.py`` and the asv suite ``bench_startup``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KERNEL_MODULES = ("elementwise", "affine", "loss", "optim", "conv", "dropout", "batchnorm")


def python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned here."""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


LOADED = (
    "import json, sys; print(json.dumps({'numba': 'numba' in sys.modules, 'llvmlite': 'llvmlite' in sys.modules,"
    " 'kernels': sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('fastlayers._kernels.')"
    " and m.rsplit('.', 1)[1] in " + repr(KERNEL_MODULES) + "), **globals().get('extra', {})}))"
)


def test_import_loads_no_numba():
    found = python(
        "import sys, fastlayers; extra = {'version': fastlayers.__version__, 'families': sorted(m for m in"
        " sys.modules if m.endswith(('.conv', '.training', '.batchnorm', '.dropout')))};" + LOADED
    )
    assert found["numba"] is False and found["llvmlite"] is False and found["kernels"] == []
    assert found["version"] and found["families"] == []  # the chapter 6-7 families load at first use


def test_lazy_names_are_the_real_ones():
    found = python(
        "import fastlayers as fl; from fastlayers.layers.conv import Convolution;"
        " from fastlayers.nets import SimpleConvNet; from fastlayers.functional import dropout_forward;"
        " extra = {'same': fl.Convolution is Convolution and fl.SimpleConvNet is SimpleConvNet"
        " and fl.functional.dropout_forward is dropout_forward, 'listed': 'Dropout' in dir(fl)};" + LOADED
    )
    assert found["same"] and found["listed"]


def test_reference_backend_and_argument_checks_work_without_numba():
    code = (
        "import numpy as np, fastlayers as fl\n"
        "with fl.use_backend('numpy'):\n"
        "    net = fl.TwoLayerNet(6, 5, 3, dtype=np.float32)\n"
        "    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)\n"
        "    g = net.gradient(x, np.array([0, 1, 2, 0]))\n"
        "    fl.SGD().update(net.params, g)\n"
        "    y = fl.Relu().forward(x)\n"
        "errors = []\n"
        "for call in (lambda: fl.Affine(np.ones((3, 2)), np.ones(2)).forward(np.ones((4, 5))),\n"
        "             lambda: fl.SoftmaxWithLoss().forward(np.ones((4, 3)), np.zeros(5, int)),\n"
        "             lambda: fl.set_num_threads(0)):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as exc:\n"
        "        errors.append(str(exc))\n"
        "extra = {'errors': errors, 'finite': bool(np.isfinite(y).all())}\n" + LOADED
    )
    found = python(code)
    assert found["numba"] is False and found["kernels"] == []
    assert len(found["errors"]) == 3 and found["finite"]
    assert "x" in found["errors"][0] and "(4, 5)" in found["errors"][0]


def test_info_without_kernels_loads_no_numba():
    code = (
        "import contextlib, io\nfrom fastlayers.__main__ import main\nbuf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n    main(['info', '--json'])\n"
        "extra = {'info': __import__('json').loads(buf.getvalue())}\n" + LOADED
    )
    found = python(code)
    assert found["numba"] is False and found["info"]["numba_loaded"] is False
    assert found["info"]["threading_layer"] is None and found["info"]["numba"]


def test_first_kernel_call_loads_only_the_kernels_it_needs():
    found = python("import numpy as np, fastlayers as fl; fl.Relu().forward(np.ones((300, 300), np.float32));" + LOADED)
    assert found["numba"] is True and found["kernels"] == ["elementwise"]


@pytest.mark.parametrize("value, loaded", [("1", True), ("float32", True), ("0", False)])
def test_preload_at_import(value, loaded):
    found = python("import fastlayers;" + LOADED, FASTLAYERS_PRELOAD=value)
    assert found["numba"] is loaded
    assert found["kernels"] == (sorted(KERNEL_MODULES) if loaded else [])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_predict_waits_for_no_numba_and_equals_the_kernels_bit_for_bit(dtype):
    """A one-to-few-row predict before any kernel is loaded runs the bias add and ReLU as NumPy
    ufuncs (no Numba start-up); after preload the kernels give the same bits, NaN and -0.0 included.
    A larger batch loads the kernels."""
    code = (
        "import sys, numpy as np, fastlayers as fl\n"
        f"dt = np.{dtype}\n"
        "net = fl.MultiLayerNet(30, [40, 20], 5, dtype=dt, seed=3)\n"
        "rng = np.random.default_rng(0)\n"
        "xs = [rng.standard_normal((n, 30)).astype(dt) for n in (1, 3, 8)]\n"
        "xs[1][0, 4] = np.nan\n"
        "net.params['b1'][:3] = -0.0; xs[2][:, :] = 0.0\n"
        "before = [net.predict(x).tobytes() for x in xs]\n"
        "small_loaded = 'numba' in sys.modules\n"
        "fl.preload((np.dtype(dt).name,))\n"
        "after = [net.predict(x).tobytes() for x in xs]\n"
        "extra = {'small_loaded': small_loaded, 'same': before == after}\n" + LOADED
    )
    found = python(code)
    assert found["small_loaded"] is False and found["same"] is True
    found = python(
        f"import numpy as np, fastlayers as fl; fl.TwoLayerNet(30, 50, 5, dtype=np.{dtype})"
        f".predict(np.ones((200, 30), np.{dtype}));" + LOADED
    )
    assert found["numba"] is True and "affine" in found["kernels"]
