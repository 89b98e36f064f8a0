"""Threads, processes, the compilation cache, installs, determinism and memory.

Anything that can abort or hang runs in a subprocess with a time limit, so that a crash fails the
test instead of killing the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fastlayers as fl

from .conftest import compiled_only, project_copy

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["tbb", "omp", "workqueue"]


def run_python(args, env=None, timeout=300, cwd=ROOT, user=None):
    full_env = dict(os.environ)
    full_env.pop("NUMBA_THREADING_LAYER", None)
    full_env.update(env or {})
    cmd = [sys.executable, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    try:
        return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args} hung for {timeout} s: {exc.stdout!r} {exc.stderr!r}")


def scenario(name, layer):
    res = run_python(["-m", "tests._scenarios", name], {"NUMBA_THREADING_LAYER": layer})
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("layer", LAYERS)
def test_eight_threads_every_layer(layer):
    """8 threads x 100 forward/backward passes through every layer equal the single-threaded result.
    With ``workqueue`` this aborted the process (exit 134) before launches were serialized."""
    out = scenario("threads", layer)
    assert f"layer {layer}: 8 threads x 100 calls, equal: True" in out


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_after_parent_ran_kernels(layer):
    """A forked child computes right after its parent ran parallel kernels. With ``omp`` the child was
    killed by libgomp before forked children were switched to the serial twins."""
    assert "fork: 4 tasks in 2 children, equal: True" in scenario("fork", layer)


def test_spawn():
    assert "spawn: 4 tasks in 2 children, equal: True" in scenario("spawn", "tbb")


def test_thread_pool_in_process():
    from concurrent.futures import ThreadPoolExecutor

    from tests._scenarios import forward_backward, make_inputs, same

    inp = make_inputs(1)
    expected = forward_backward(inp)
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda _: same(forward_backward(inp), expected), range(16)))


@compiled_only
def test_default_layer_is_tbb():
    res = run_python(["-m", "fastlayers", "info", "--json", "--kernels"])
    assert '"threading_layer": "tbb"' in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------
# compilation cache and installs
# ---------------------------------------------------------------------------------------------
SMOKE = (
    "import numpy as np, fastlayers as fl, fastlayers._kernels._numba as j;"
    "x = np.linspace(-3, 3, 12).reshape(3, 4);"
    "assert fl.relu(x).min() == 0 and abs(fl.sigmoid(np.zeros(1))[0] - 0.5) < 1e-15;"
    "print('ok', fl.SoftmaxWithLoss().forward(x, np.array([0, 1, 2])), len(j.UNCACHED), len(j.COMPILED))"
)


@pytest.mark.slow
def test_no_cache_location_still_imports():
    """Numba raises at decoration when it finds no cache location; import must still work."""
    # Numba's list of locators replaced in the child (NUMBA_CACHE_LOCATOR_CLASSES does the same, but
    # only from numba 0.61 on; the list is there in every supported version)
    no_locator = "import numba.core.caching as c; from tests._no_locator import NoLocator;"
    no_locator += "c.CacheImpl._locator_classes = [NoLocator];"
    res = run_python(["-W", "error", "-c", no_locator + SMOKE])
    assert res.returncode == 0, res.stderr
    n_uncached, n_compiled = (int(v) for v in res.stdout.split()[-2:])
    assert n_compiled > 0 and n_uncached == n_compiled  # every function compiled fell back to no caching
    normal = run_python(["-c", SMOKE])
    assert normal.returncode == 0 and normal.stdout.split()[-2] == "0"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_read_only_install_and_home(tmp_path):
    """A copy of the package that its user cannot write, with an unwritable home directory."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fastlayers", site / "fastlayers", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(site), "HOME": str(tmp_path / "home"), "NUMBA_CACHE_DIR": "", "XDG_CACHE_HOME": ""}
    (tmp_path / "home").mkdir()
    if os.geteuid() == 0:  # root writes anywhere: run as nobody, who can write none of this
        if shutil.which("setpriv") is None:
            pytest.fail("running as root without setpriv: cannot drop privileges for this test")
        os.chmod(tmp_path, 0o755)
        probe = run_python(["-c", "import numpy, numba"], env, cwd=tmp_path, user=65534)
        if probe.returncode != 0:  # the interpreter or its packages live where nobody cannot read them
            pytest.skip(
                f"user nobody cannot run this Python with numpy and numba at all: {probe.stderr.strip()[-300:]}"
            )
        res = run_python(["-W", "error", "-c", SMOKE], env, cwd=tmp_path, user=65534)
    else:
        for path in [site, tmp_path / "home", *site.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        res = run_python(["-W", "error", "-c", SMOKE], env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")
    assert not list(site.rglob("*.nbi"))


@pytest.mark.slow
def test_damaged_cache_is_rebuilt(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_python(["-c", SMOKE], env).returncode == 0
    indexes = list(tmp_path.rglob("*.nbi"))
    assert indexes
    for path in indexes:
        path.write_bytes(path.read_bytes()[:10])  # truncated
    for path in tmp_path.rglob("*.nbc"):
        path.write_bytes(b"garbage")
    res = run_python(["-W", "error", "-c", SMOKE], env)
    assert res.returncode == 0, res.stderr
    res = run_python(["-c", SMOKE], {**env, "NUMBA_DEBUG_CACHE": "1"})  # and the cache works again
    assert res.returncode == 0 and "data loaded" in res.stdout + res.stderr


@pytest.mark.slow
def test_two_processes_compile_into_empty_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_THREADING_LAYER", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SMOKE], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
        assert out.startswith(b"ok")


@pytest.mark.slow
def test_wheel_has_no_cache_files_and_works(tmp_path):
    # the copy is given cache files of each kind, which the wheel must leave out
    source = project_copy(tmp_path / "source")
    cache = source / "fastlayers" / "_kernels" / "__pycache__"
    cache.mkdir()
    for name in ("relu_forward-10.py311.nbi", "relu_forward-10.py311.1.nbc", "elementwise.cpython-311.pyc"):
        (cache / name).write_bytes(b"\0" * 64)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fastlayers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastlayers/_kernels/elementwise.py" in names
    assert "fastlayers/py.typed" in names, "type checkers read the package's hints"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert not [n for n in names if n.endswith((".nbi", ".nbc", ".pyc"))]
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    res = run_python(["-c", SMOKE], {"PYTHONPATH": str(tmp_path / "site"), "NUMBA_CACHE_DIR": str(tmp_path / "c")},
                     cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "site/fastlayers" in run_python(["-c", "import fastlayers; print(fastlayers.__file__)"],
                                           {"PYTHONPATH": str(tmp_path / "site")}, cwd=tmp_path).stdout  # fmt: skip


# ---------------------------------------------------------------------------------------------
# determinism and memory
# ---------------------------------------------------------------------------------------------
def test_bit_identical_across_runs_and_thread_counts():
    from tests._scenarios import forward_backward, make_inputs, same

    inp = make_inputs(2)
    first = forward_backward(inp)
    assert same(forward_backward(inp), first)
    n = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        assert same(forward_backward(inp), first)
    finally:
        fl.set_num_threads(n)


LEAK = """
import numpy as np, fastlayers as fl
from tests._scenarios import forward_backward
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
rng = np.random.default_rng(0)
inp = {"x": rng.standard_normal((100, 784)), "W": 0.01 * rng.standard_normal((784, 50)),
       "b": np.zeros(50), "t": rng.integers(0, 50, 100)}
layer = fl.SoftmaxWithLoss()
def step(i):
    forward_backward(inp)
    if i % 100 == 0:  # a failed call in between must leave the layer usable
        try:
            layer.forward(inp["x"][:, :50], inp["t"] + 50)
        except ValueError:
            pass
        layer.forward(inp["x"][:, :50], inp["t"])
for i in range(1000):
    step(i)
before = rss_mb()
for i in range(10_000):
    step(i)
after = rss_mb()
print(f"rss {before:.1f} MB -> {after:.1f} MB")
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_no_leak_over_ten_thousand_calls():
    res = run_python(["-c", LEAK], timeout=600)
    assert res.returncode == 0, res.stderr
    before, after = (float(v) for v in res.stdout.split()[1::3][:2])
    print(res.stdout)
    assert after - before < 5.0, res.stdout


FORK_WHILE_LOCKED = """
import os, threading, numpy as np
import fastlayers as fl
from fastlayers._kernels import _threads
x, W, b = np.ones((4, 3)), np.ones((3, 2)), np.zeros(2)
held = threading.Event()
release = threading.Event()
def holder():
    with _threads.BLAS_LOCK:  # another thread is inside a matrix product when the process forks
        held.set()
        release.wait()
t = threading.Thread(target=holder)
t.start()
held.wait()
pid = os.fork()
if pid == 0:
    out = fl.Affine(W, b).forward(x)  # would wait forever on the inherited, held lock
    os._exit(0 if out[0, 0] == 3 else 1)
release.set()
t.join()
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_another_thread_holds_the_blas_lock():
    res = run_python(["-W", "ignore::DeprecationWarning", "-c", FORK_WHILE_LOCKED], timeout=120)
    assert res.returncode == 0 and "child exit 0" in res.stdout, res.stdout + res.stderr
