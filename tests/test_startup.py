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


def test_scalar_parameters_are_updated_without_numba():
    """The chapter 6 two-parameter example (Python floats in ``params``) loads no kernel."""
    found = python(
        "import fastlayers as fl\n"
        "for opt in (fl.SGD(0.95), fl.Momentum(0.1), fl.Nesterov(0.1), fl.AdaGrad(1.5), fl.RMSprop(0.1),\n"
        "            fl.Adam(0.3)):\n"
        "    params = {'x': -7.0, 'y': 2.0}\n"
        "    for _ in range(30):\n"
        "        opt.update(params, {'x': params['x'] / 10.0, 'y': 2.0 * params['y']})\n"
        "extra = {'x': float(params['x'])}\n" + LOADED
    )
    assert found["numba"] is False and found["llvmlite"] is False and found["kernels"] == []
    assert abs(found["x"]) < 7


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
def test_small_predict_waits_for_no_numba_and_equals_the_kernels(dtype):
    """A one-to-few-row predict before any kernel is loaded runs its products on NumPy's BLAS and the
    bias add and ReLU as NumPy ufuncs (no Numba start-up); after preload the net's plan gives the same
    values up to the order of the additions inside the products, NaN and the sign of zeros included.
    A larger batch loads the kernels."""
    code = (
        "import sys, numpy as np, fastlayers as fl\n"
        f"dt = np.{dtype}\n"
        "net = fl.MultiLayerNet(30, [40, 20], 5, dtype=dt, seed=3)\n"
        "rng = np.random.default_rng(0)\n"
        "xs = [rng.standard_normal((n, 30)).astype(dt) for n in (1, 3, 8)]\n"
        "xs[1][0, 4] = np.nan\n"
        "net.params['b1'][:3] = -0.0; xs[2][:, :] = 0.0\n"
        "before = [net.predict(x).copy() for x in xs]\n"
        "small_loaded = 'numba' in sys.modules\n"
        "fl.preload((np.dtype(dt).name,))\n"
        "after = [net.predict(x).copy() for x in xs]\n"
        "eps = 64 * np.finfo(dt).eps\n"
        "same = all(np.allclose(a, b, rtol=eps, atol=eps, equal_nan=True) for a, b in zip(before, after))\n"
        "same = same and all((np.signbit(a) == np.signbit(b)).all() for a, b in zip(before, after))\n"
        "extra = {'small_loaded': small_loaded, 'same': bool(same)}\n" + LOADED
    )
    found = python(code)
    assert found["small_loaded"] is False and found["same"] is True
    found = python(
        f"import numpy as np, fastlayers as fl; fl.TwoLayerNet(30, 50, 5, dtype=np.{dtype})"
        f".predict(np.ones((200, 30), np.{dtype}));" + LOADED
    )
    assert found["numba"] is True and "affine" in found["kernels"]


def test_the_small_calls_load_the_kernels_themselves_after_ufunc_calls():
    """A process that answers only small predicts and never calls ``preload()`` runs them on NumPy's
    ufuncs for ``UFUNC_CALLS`` Affine calls; the next one loads the kernels, and later calls run on them
    (with the plans) and give the same values up to the order of additions inside the products."""
    code = (
        "import sys, numpy as np, fastlayers as fl\n"
        "from fastlayers.functional import affine\n"
        "affine.UFUNC_CALLS = 10  # two Affine layers a predict: 5 predicts\n"
        "net = fl.TwoLayerNet(30, 20, 5, dtype=np.float32, seed=1)\n"
        "x = np.random.default_rng(0).standard_normal((1, 30)).astype(np.float32)\n"
        "first = [net.predict(x).copy() for _ in range(5)]\n"
        "before = 'numba' in sys.modules\n"
        "later = [net.predict(x).copy() for _ in range(3)]\n"
        "same = all(np.allclose(a, first[0], rtol=1e-5, atol=1e-5) for a in first + later)\n"
        "extra = {'before': before, 'same': bool(same), 'planned': bool(net.__dict__.get('_plans'))}\n" + LOADED
    )
    found = python(code)
    assert found["before"] is False and found["numba"] is True and "affine" in found["kernels"]
    assert found["same"] and found["planned"]


# Numba's BLAS check: ``numba.np.arraymath`` imports ``scipy.linalg`` at import only to set
# ``_HAVE_BLAS``; ``_threads.before_compiling`` imports that module with ``scipy.linalg`` hidden from its own
# thread and makes the check run on first use (docs/PERFORMANCE.md, "Start-up").
FIRST_GRADIENT = (
    "import sys, numpy as np, fastlayers as fl\n"
    "net = fl.TwoLayerNet(784, 50, 10, dtype=np.float32, seed=0)\n"
    "x = np.random.default_rng(0).standard_normal((100, 784)).astype(np.float32)\n"
    "grads = net.gradient(x, np.arange(100) % 10)\n"
    "digest = __import__('hashlib').sha256(b''.join(grads[k].tobytes() for k in sorted(grads))).hexdigest()\n"
    "linalg_after_gradient = 'scipy.linalg' in sys.modules\n"
)
USER_NJIT = (
    "from numba import njit\n"
    "a = np.arange(6.0).reshape(2, 3)\n"
    "dot = njit(lambda a, b: np.dot(a, b))(a, a.T).tolist()\n"
    "corr = njit(lambda a, b: np.correlate(a, b))(np.arange(5.0), np.arange(3.0)).tolist()\n"
    "import numba.np.arraymath as am\n"
    "extra = {'digest': digest, 'linalg_after_gradient': linalg_after_gradient, 'dot': dot, 'corr': corr,"
    " 'have_blas': bool(am._HAVE_BLAS), 'linalg_at_end': 'scipy.linalg' in sys.modules}\n"
)
# scipy as if it were not installed: a finder that refuses it, before anything imports it
NO_SCIPY = (
    "import sys\n"
    "class NoScipy:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'scipy' or name.startswith('scipy.'):\n"
    "            raise ModuleNotFoundError(name, name=name)\n"
    "sys.meta_path.insert(0, NoScipy())\n"
)


def test_first_kernel_call_does_not_import_scipy_linalg_and_a_users_njit_still_has_blas():
    """The first gradient loads Numba without ``scipy.linalg``; afterwards a user's own jitted
    ``np.dot`` compiles (importing ``scipy.linalg`` then) and Numba's ``_HAVE_BLAS`` reads True."""
    found = python(FIRST_GRADIENT + USER_NJIT + LOADED)
    assert found["numba"] is True and found["linalg_after_gradient"] is False
    assert found["dot"] == [[5.0, 14.0], [14.0, 50.0]] and found["corr"] == [5.0, 8.0, 11.0]
    if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
        assert found["have_blas"] is True and found["linalg_at_end"] is True


def test_cached_kernels_load_without_numbas_compiler_set_up_and_compiling_still_works():
    """With a warm cache, kernels load without a refresh of Numba's target context
    (``_numba._TolerantCache``: none of the implementation modules that the refresh imports, such as
    ``numba.typed.typeddict``, is loaded); a user's function compiled afterwards gets the full set-up,
    and a gradient has the same bits as in a process where that set-up ran before it. (Each process
    loads Numba with a first ReLU, so that the gradient's products run on the kernels in both.)"""
    relu = "import numpy as np, fastlayers as fl\nfl.Relu().forward(np.ones((2, 3), np.float32))\n"
    set_up = "from numba import njit\nnjit(lambda a: a.sum())(np.ones(3))\n"
    probe = "extra = {'digest': digest, 'typed': 'numba.typed.typeddict' in sys.modules}\n"
    after = "typed_after_gradient = [m in sys.modules for m in ('numba.typed.typeddict', 'numba.np.arraymath')]\n"
    python(relu + FIRST_GRADIENT + probe + LOADED)  # the kernels compiled and cached, if they were not
    light = python(relu + FIRST_GRADIENT + after
                   + USER_NJIT + "extra.update(typed=typed_after_gradient, typed_at_end='numba.typed.typeddict'"
                   " in sys.modules)\n" + LOADED)  # fmt: skip
    refreshed = python(relu + set_up + FIRST_GRADIENT + probe + LOADED)
    assert light["dot"] == [[5.0, 14.0], [14.0, 50.0]] and light["corr"] == [5.0, 8.0, 11.0]
    assert light["digest"] == refreshed["digest"]
    jit, cache = (os.environ.get(name, "0") in ("", "0") for name in ("NUMBA_DISABLE_JIT", "FASTLAYERS_NO_CACHE"))
    if jit and cache:
        assert light["typed"] == [False, False], "the first gradient refreshed Numba's target context"
        assert light["typed_at_end"] is True and refreshed["typed"] is True


# Numba's ``_ensure_critical_deps`` imports SciPy only to refuse a version below 1.0;
# ``_threads.load_numba`` imports Numba with ``scipy`` hidden from that import
SCIPY_AFTER = "scipy_after_gradient = 'scipy' in sys.modules\n"
USER_SCIPY = (
    "import scipy, scipy.special\n"
    "extra = {'digest': digest, 'scipy_after_gradient': scipy_after_gradient, 'user_scipy': scipy.__version__,"
    " 'gamma': float(scipy.special.gamma(5.0)), 'finders': [type(f).__name__ for f in sys.meta_path]}\n"
)


def test_the_first_kernel_call_imports_no_scipy_and_a_user_still_can():
    """A first gradient from the cache leaves SciPy unimported (Numba's import would import it for
    a version check); the program imports SciPy afterwards as usual, and the bits are those of a
    program that imported SciPy before fastlayers (where nothing is hidden)."""
    pytest.importorskip("scipy")
    relu = "import numpy as np, fastlayers as fl\nfl.Relu().forward(np.ones((2, 3), np.float32))\n"
    python(relu + FIRST_GRADIENT + LOADED)  # the kernels compiled and cached, if they were not
    found = python(relu + FIRST_GRADIENT + SCIPY_AFTER + USER_SCIPY + LOADED)
    first = python("import scipy\n" + relu + FIRST_GRADIENT + SCIPY_AFTER + USER_SCIPY + LOADED)
    assert found["numba"] is True and found["digest"] == first["digest"]
    assert found["gamma"] == 24.0 and found["user_scipy"] == first["user_scipy"]
    assert "_HideFromThisThread" not in found["finders"]
    assert first["scipy_after_gradient"] is True
    if os.environ.get("FASTLAYERS_NO_CACHE", "0") in ("", "0") and os.environ.get("NUMBA_DISABLE_JIT", "0") in (
        "",
        "0",
    ):
        assert found["scipy_after_gradient"] is False


def test_a_numba_whose_import_needs_scipy_is_imported_again_with_nothing_hidden():
    """Should a module of Numba's import ever need SciPy beyond the version check (simulated: a
    loader that imports SciPy before running ``numba.core.config``), the hidden import fails and
    Numba is imported again with SciPy visible; the gradient is unchanged."""
    pytest.importorskip("scipy")
    code = (
        "import sys, importlib.machinery as m\n"
        "class Needy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name != 'numba.core.config':\n"
        "            return None\n"
        "        spec = m.PathFinder.find_spec(name, path)\n"
        "        inner = spec.loader\n"
        "        class Loader(m.SourceFileLoader):\n"
        "            def exec_module(self, module):\n"
        "                import scipy  # noqa\n"
        "                inner.exec_module(module)\n"
        "        spec.loader = Loader(inner.name, inner.path)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Needy())\n"
        + FIRST_GRADIENT
        + "extra = {'digest': digest, 'scipy': 'scipy' in sys.modules,"
        + " 'finders': [type(f).__name__ for f in sys.meta_path]}\n"
        + LOADED
    )
    plain = python(FIRST_GRADIENT + "extra = {'digest': digest}\n" + LOADED)
    found = python(code)
    assert found["numba"] is True and found["digest"] == plain["digest"] and found["scipy"] is True
    assert "_HideFromThisThread" not in found["finders"]


@pytest.mark.slow
def test_a_first_gradient_that_compiles_does_not_import_scipy_linalg(tmp_path):
    """With an empty kernel cache the first gradient compiles its kernels, and Numba's compiler
    set-up imports ``numba.np.arraymath`` then: through the guard, without ``scipy.linalg``; the
    gradient has the bits of the cached kernels'."""
    cached = python(FIRST_GRADIENT + "extra = {'digest': digest}\n" + LOADED)
    code = FIRST_GRADIENT + "extra = {'digest': digest, 'linalg': linalg_after_gradient}\n" + LOADED
    found = python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert found["digest"] == cached["digest"]
    if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
        assert found["linalg"] is False


def test_scipy_linalg_imported_first_is_left_alone_and_results_are_unchanged():
    """A program that imported ``scipy.linalg`` itself gets Numba's own check (nothing hidden), and the
    same gradient bit for bit as a program that did not."""
    plain = python(FIRST_GRADIENT + USER_NJIT + LOADED)
    found = python(
        "import scipy.linalg\n"
        + FIRST_GRADIENT
        + USER_NJIT
        + "import numba.np.arraymath as am\nextra['exact_bool'] = am._HAVE_BLAS is True\n"
        + LOADED
    )
    assert found["digest"] == plain["digest"]
    assert found["dot"] == plain["dot"] and found["corr"] == plain["corr"]
    if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
        assert found["exact_bool"] is True  # Numba's own value, not the deferred check


def test_without_scipy_the_kernels_and_numbas_fallbacks_work():
    """Without SciPy the first gradient gives the same result, ``_HAVE_BLAS`` reads False (Numba's
    own answer) and Numba's non-BLAS paths (``np.correlate``) still compile."""
    plain = python(FIRST_GRADIENT + USER_NJIT + LOADED)
    code = (
        NO_SCIPY
        + FIRST_GRADIENT
        + "from numba import njit\n"
        + "corr = njit(lambda a, b: np.correlate(a, b))(np.arange(5.0), np.arange(3.0)).tolist()\n"
        + "import numba.np.arraymath as am\n"
        + "extra = {'digest': digest, 'corr': corr, 'have_blas': bool(am._HAVE_BLAS),"
        + " 'scipy': 'scipy' in sys.modules}\n"
        + LOADED
    )
    found = python(code)
    assert found["scipy"] is False and found["digest"] == plain["digest"]
    assert found["corr"] == [5.0, 8.0, 11.0] and found["have_blas"] is False


def test_scipy_linalg_is_hidden_from_the_loading_thread_only():
    """While one thread prepares Numba's compiler, another thread's ``import scipy.linalg`` succeeds.
    The loading thread waits inside the execution of ``numba.np.arraymath`` (not inside a finder,
    which runs under the interpreter's global import lock and would hold the other thread back)."""
    code = (
        "import sys, threading, numpy as np, importlib.machinery as m\n"
        "from fastlayers._kernels import _threads\n"
        "seen = {}\n"
        "started, release = threading.Event(), threading.Event()\n"
        "def other():\n"
        "    if started.wait(60):\n"
        "        import scipy.linalg\n"
        "        seen['other'] = hasattr(scipy.linalg, 'solve')\n"
        "    release.set()\n"
        "class Probe:  # holds the loading thread inside its hidden import until the other one is done\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name != 'numba.np.arraymath' or started.is_set():\n"
        "            return None\n"
        "        spec = m.PathFinder.find_spec(name, path)\n"
        "        inner = spec.loader\n"
        "        class Loader(m.SourceFileLoader):\n"
        "            def exec_module(self, module):\n"
        "                names = [type(f).__name__ for f in sys.meta_path]\n"
        "                seen['loader_hidden'] = '_HideFromThisThread' in names\n"
        "                started.set()\n"
        "                seen['in_time'] = release.wait(60)\n"
        "                inner.exec_module(module)\n"
        "        spec.loader = Loader(inner.name, inner.path)\n"
        "        return spec\n"
        "t = threading.Thread(target=other); t.start()\n"
        "sys.meta_path.insert(0, Probe())\n"
        "_threads.before_compiling(); started.set(); t.join(60)\n"
        "extra = {'other': seen.get('other'), 'loader_hidden': seen.get('loader_hidden'),"
        " 'in_time': seen.get('in_time'), 'finders': [type(f).__name__ for f in sys.meta_path]}\n" + LOADED
    )
    found = python(code)
    assert found["numba"] is True and found["other"] is True
    assert "_HideFromThisThread" not in found["finders"]  # removed after the import
    if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
        # the other thread imported while the guard was in place, and without waiting for the loader
        assert found["loader_hidden"] is True and found["in_time"] is True


def test_an_arraymath_that_needs_scipy_linalg_is_imported_again_with_nothing_hidden():
    """Should ``numba.np.arraymath`` ever need ``scipy.linalg`` outside its BLAS check (simulated
    here: a loader that imports it first), the guard's import fails and is made again unguarded."""
    code = (
        "import sys, importlib.machinery as m\n"
        "class Needy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name != 'numba.np.arraymath':\n"
        "            return None\n"
        "        spec = m.PathFinder.find_spec(name, path)\n"
        "        inner = spec.loader\n"
        "        class Loader(m.SourceFileLoader):\n"
        "            def exec_module(self, module):\n"
        "                import scipy.linalg  # noqa\n"
        "                inner.exec_module(module)\n"
        "        spec.loader = Loader(inner.name, inner.path)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Needy())\n"
        + FIRST_GRADIENT
        + "import numba.np.arraymath as am\n"
        + "extra = {'digest': digest, 'exact_bool': am._HAVE_BLAS is True,"
        + " 'finders': [type(f).__name__ for f in sys.meta_path]}\n"
        + LOADED
    )
    plain = python(FIRST_GRADIENT + USER_NJIT + LOADED)
    found = python(code)
    assert found["digest"] == plain["digest"] and "_HideFromThisThread" not in found["finders"]
    if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
        assert found["exact_bool"] is True  # Numba's own check ran, scipy.linalg visible
