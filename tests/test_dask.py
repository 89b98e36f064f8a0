"""fastlayers.dask on the threaded scheduler and on a real cluster: a ``distributed.LocalCluster`` of
worker processes on 127.0.0.1 (no mocks). Every cluster is closed in a ``finally``, every wait has
a timeout, and the cluster tests share one two-worker cluster (module scope)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastlayers as fl

da = pytest.importorskip("dask.array", reason='pip install "fastlayers[dask]"')
distributed = pytest.importorskip("distributed")
fd = pytest.importorskip("fastlayers.dask")

WAIT = 120  # seconds any one cluster call may take before the test fails


def _data(n=600, d=12, k=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    t = (x[:, :k].argmax(axis=1) + (rng.random(n) < 0.1)) % k  # learnable, with some noise
    return x, t


def _digits():
    (x_train, t_train), (x_test, t_test) = fl.load_digits(seed=0, dtype=np.float64)
    return x_train, t_train, x_test, t_test


# --- the module and the package -------------------------------------------------------------


def test_import_fastlayers_does_not_import_dask():
    code = "import sys, fastlayers; bad = [m for m in ('dask', 'distributed') if m in sys.modules]; print(bad)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_missing_dask_is_an_import_error_naming_the_extra():
    code = "import sys; sys.modules['dask'] = None\nimport fastlayers.dask"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "ImportError" in res.stderr and 'pip install "fastlayers[dask]"' in res.stderr


# --- the threaded scheduler (one process) ---------------------------------------------------


def _net(kind, dtype):
    conv = {"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1}
    return {
        "two": lambda: (fl.TwoLayerNet(12, 9, 4, weight_init_std=0.3, dtype=dtype, seed=1), (12,)),
        "multi": lambda: (fl.MultiLayerNet(12, [9, 7], 4, activation="sigmoid", dtype=dtype, seed=2), (12,)),
        "extend": lambda: (
            fl.MultiLayerNetExtend(12, [9], 4, use_dropout=True, use_batchnorm=True, dtype=dtype, seed=3),
            (12,),
        ),
        "simpleconv": lambda: (fl.SimpleConvNet((1, 8, 8), conv, 10, 4, dtype=dtype, seed=4), (1, 8, 8)),
        "deepconv": lambda: (
            fl.DeepConvNet((1, 12, 12), hidden_size=8, output_size=4, dtype=dtype, seed=5),
            (1, 12, 12),
        ),
    }[kind]()


@pytest.mark.parametrize("kind", ["two", "multi", "extend", "simpleconv", "deepconv"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_equals_in_process_on_threads(kind, dtype):
    net, shape = _net(kind, dtype)
    x = np.random.default_rng(7).standard_normal((53, *shape)).astype(dtype)
    chunks = (17, *[max(1, s // 2) for s in shape])  # rows in 4 blocks, the other axes split too
    X = da.from_array(x, chunks=chunks)
    y = fd.predict(net, X)
    want = net.predict(x)
    assert y.dtype == want.dtype and y.shape == want.shape
    assert y.chunks == (X.chunks[0], (want.shape[1],))
    got = y.compute(scheduler="threads")
    eps = float(np.finfo(want.dtype).eps)  # blocks of other sizes may take other summation paths
    np.testing.assert_allclose(got, want, rtol=64 * eps, atol=64 * eps * float(np.abs(want).max()))
    proba = fd.predict_proba(net, X).compute(scheduler="threads")
    np.testing.assert_allclose(proba, fl.softmax(want), rtol=1e-5, atol=1e-7)
    t = np.argmax(want, axis=1)
    t[::3] = (t[::3] + 1) % want.shape[1]
    assert fd.accuracy(net, X, da.from_array(t, chunks=17)) == pytest.approx(net.accuracy(x, t))


def test_fit_on_threads_equals_reference_fit():
    x, t = _data()
    X, T = da.from_array(x, chunks=200), da.from_array(t, chunks=200)
    net, opt = fl.MultiLayerNet(12, [10], 4, seed=0), fl.Adam(0.01)
    net2, opt2 = copy.deepcopy(net), copy.deepcopy(opt)
    history = fd.fit(net, opt, X, T, epochs=3, batch_size=30, seed=5)
    losses = fd.reference_fit(net2, opt2, x, t, X.chunks[0], 3, 30, seed=5)
    assert history.steps_per_epoch == 20 and len(history.step_losses) == 60
    np.testing.assert_allclose(history.step_losses, losses, rtol=1e-12)
    for key in net.params:
        np.testing.assert_allclose(net.params[key], net2.params[key], rtol=1e-10, atol=1e-13)
    assert opt.iter == opt2.iter == 60


def test_local_sgd_accuracy_against_sync():
    """Local SGD (4 local steps, then an average) on 4 blocks of the digits, against synchronous SGD
    on the same global batches: within 3 points of test accuracy after 5 epochs (measured: see
    the README's figures)."""
    x_train, t_train, x_test, t_test = _digits()
    X, T = da.from_array(x_train, chunks=360), da.from_array(t_train, chunks=360)
    results = {}
    for mode in ("sync", "local"):
        net = fl.TwoLayerNet(64, 50, 10, seed=0)
        fd.fit(net, fl.SGD(0.5), X, T, epochs=5, batch_size=40, mode=mode, local_steps=4)
        results[mode] = net.accuracy(x_test, t_test)
    assert results["sync"] > 0.9
    assert results["local"] > results["sync"] - 0.03, results


def test_bad_input_before_anything_is_submitted():
    net = fl.TwoLayerNet(12, 9, 4, seed=1)
    x, t = _data()
    with pytest.raises(TypeError, match=r"X must be a dask.array.Array .* got numpy.ndarray"):
        fd.predict(net, x)
    with pytest.raises(TypeError, match="t must be a dask.array.Array"):
        fd.fit(net, fl.SGD(), da.from_array(x, chunks=100), t, 1, 10)
    X = da.from_array(x, chunks=100)
    with pytest.raises(ValueError, match=r"t and X must have the same row chunks, got \(150, 150, 150, 150\)"):
        fd.fit(net, fl.SGD(), X, da.from_array(t, chunks=150), 1, 10)
    with pytest.raises(ValueError, match="t has 599 rows but X has 600"):
        fd.accuracy(net, X, da.from_array(t[:-1], chunks=100))
    with pytest.raises(ValueError, match="batch_size must be from 6"):
        fd.fit(net, fl.SGD(), X, da.from_array(t, chunks=100), 1, 5)
    with pytest.raises(ValueError, match="13 features per row"):  # the net's own message, on a probe row
        fd.predict(net, da.from_array(np.zeros((10, 13)), chunks=5))
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        fd.fit(net, fl.SGD(), X, da.from_array(t, chunks=100), 1, 10, client="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="batch normalization"):
        fd.fit(fl.MultiLayerNetExtend(12, [5], 4, use_batchnorm=True), fl.SGD(), X, da.from_array(t, chunks=100), 1, 10)
    with pytest.raises(ValueError, match="mode must be"):
        fd.fit(net, fl.SGD(), X, da.from_array(t, chunks=100), 1, 10, mode="async")


def test_batch_plan_adds_up():
    shares, steps = fd.batch_plan([100, 50, 0, 7], 31)
    assert sum(shares) == 31 and shares[2] == 0 and min(s for s in shares if s) >= 1
    assert steps == min(n // m for n, m in zip([100, 50, 0, 7], shares, strict=True) if m)
    rows = fd.global_batch([100, 50, 0, 7], 31, 0, 1, 2)
    assert len(rows) == len(set(rows)) == 31 and rows.max() < 157


def test_unreachable_scheduler_fails_in_time_naming_it():
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"tcp://127.0.0.1:9 within 2 s"):
        fd.connect("tcp://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - start < 30
    with pytest.raises(ValueError, match="local:N"):
        fd.connect("local:zero")


# --- a real cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each, on 127.0.0.1, shared by the tests below."""
    cluster = fd.local_cluster(2, 1)
    try:
        with distributed.Client(cluster, timeout=WAIT) as c:
            c.wait_for_workers(2, timeout=WAIT)
            yield c
    finally:
        cluster.close(timeout=30)


#: the caller's NUMBA_NUM_THREADS before any cluster was made
CALLER_NUMBA_THREADS = os.environ.get("NUMBA_NUM_THREADS")
CALLER_THREAD_VARIABLES = {name: os.environ.get(name) for name in fd.THREAD_VARIABLES}


@pytest.mark.slow
def test_cluster_leaves_the_callers_numba_alone(client):
    """The nanny writes its pre-spawn variables into the caller's environment; NUMBA_NUM_THREADS
    is not among them (Numba re-reads it at each compilation and raises when it changed), so the
    caller still compiles kernels after making clusters of any thread count."""
    two = fd.local_cluster(1, 2)
    try:
        assert os.environ.get("NUMBA_NUM_THREADS") == CALLER_NUMBA_THREADS
        assert {name: os.environ.get(name) for name in fd.THREAD_VARIABLES} == CALLER_THREAD_VARIABLES
        for dtype in (np.float32, np.float64):  # new signatures: compiled or loaded now
            x = np.random.default_rng(0).standard_normal((700, 700)).astype(dtype)
            np.testing.assert_array_equal(fl.relu(x), np.maximum(x, 0))
    finally:
        two.close(timeout=30)


@pytest.mark.slow
def test_cluster_predict_equals_in_process_and_ships_the_net_once_per_worker(client):
    net = fl.MultiLayerNet(20, [300, 50], 10, seed=0)  # about 150 kB of parameters
    x = np.random.default_rng(0).standard_normal((2000, 20))
    X = da.from_array(x, chunks=(50, 10))  # 40 row blocks, features split too
    y = fd.predict(net, X)
    got = client.compute(y).result(timeout=WAIT)
    want = net.predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * float(np.abs(want).max()))
    counts = client.run(fd.arrivals, y.fastlayers_token)
    assert sorted(counts.values()) in ([0, 1], [1, 1]), counts  # at most once per worker, for 40 tasks
    # the net is in the graph once, whatever the number of blocks
    nbytes = sum(v.nbytes for v in net.params.values())
    sizes = {}
    for rows in (1000, 20):
        g = fd.predict(net, da.zeros((2000, 20), chunks=rows)).__dask_graph__()
        sizes[rows] = len(pickle.dumps(dict(g)))
    assert sizes[20] < 1.5 * nbytes and sizes[20] - sizes[1000] < 0.2 * nbytes, (sizes, nbytes)


@pytest.mark.slow
def test_cluster_gradient_of_a_global_batch_equals_in_process(client):
    x, t = _data(n=1000)
    net = fl.TwoLayerNet(12, 9, 4, weight_init_std=0.3, seed=1)
    grads = fd.gradient(net, da.from_array(x, chunks=130), da.from_array(t, chunks=130), client, timeout=WAIT)
    want = net.gradient(x, t)
    assert set(grads) == set(want)
    for key in want:
        np.testing.assert_allclose(grads[key], want[key], rtol=1e-10, atol=1e-15)


def _train(client, x, t, epochs=3, on_epoch=None):
    X, T = da.from_array(x, chunks=720), da.from_array(t, chunks=720)
    net, opt = fl.TwoLayerNet(64, 50, 10, seed=0), fl.Adam(0.005)
    history = fd.fit(net, opt, X, T, epochs, batch_size=32, client=client, seed=1, timeout=WAIT, on_epoch=on_epoch)
    return net, opt, history, X.chunks[0]


@pytest.fixture(scope="module")
def trained(client):
    x_train, t_train, x_test, t_test = _digits()
    return _train(client, x_train, t_train), (x_train, t_train, x_test, t_test)


@pytest.mark.slow
def test_cluster_training_equals_single_process_and_reaches_its_accuracy(client, trained):
    (net, opt, history, chunks), (x_train, t_train, x_test, t_test) = trained
    ref, ref_opt = fl.TwoLayerNet(64, 50, 10, seed=0), fl.Adam(0.005)
    losses = fd.reference_fit(ref, ref_opt, x_train, t_train, chunks, 3, 32, seed=1)
    np.testing.assert_allclose(history.step_losses, losses, rtol=1e-10)
    for key in ref.params:
        np.testing.assert_allclose(net.params[key], ref.params[key], rtol=1e-9, atol=1e-12)
    acc, ref_acc = net.accuracy(x_test, t_test), ref.accuracy(x_test, t_test)
    assert acc == ref_acc and acc > 0.85
    # and the usual in-process loop (train.fit: its own shuffling) reaches the same accuracy
    from fastlayers.train import fit as fit_in_process

    plain = fl.TwoLayerNet(64, 50, 10, seed=0)
    fit_in_process(plain, fl.Adam(0.005), (x_train, t_train), (x_test, t_test), 3, 32, seed=1)
    assert acc >= plain.accuracy(x_test, t_test) - 0.03
    counts = client.run(fd.arrivals, history.token)
    assert all(c <= 1 for c in counts.values()), counts


@pytest.mark.slow
def test_cluster_fit_keeps_the_net_on_the_workers_between_epochs(client):
    """The Active Memory Manager drops the replicas of a key no task waits for; run between epochs
    (in ``on_epoch``), it finds the next epoch's tasks already waiting for the net, which so reaches
    each worker once in the whole run."""
    x, t = _data(n=800)
    X, T = da.from_array(x, chunks=200), da.from_array(t, chunks=200)
    net, opt = fl.TwoLayerNet(12, 9, 4, weight_init_std=0.3, seed=1), fl.SGD(0.1)

    def reduce_replicas(record):
        client.amm.run_once()

    history = fd.fit(net, opt, X, T, 4, batch_size=40, client=client, seed=2, timeout=WAIT, on_epoch=reduce_replicas)
    counts = client.run(fd.arrivals, history.token)
    assert sorted(counts.values()) == [1, 1], counts
    ref, ref_opt = fl.TwoLayerNet(12, 9, 4, weight_init_std=0.3, seed=1), fl.SGD(0.1)
    losses = fd.reference_fit(ref, ref_opt, x, t, X.chunks[0], 4, 40, seed=2)
    np.testing.assert_allclose(history.step_losses, losses, rtol=1e-10)


@pytest.mark.slow
def test_cluster_worker_killed_mid_training_gives_the_same_parameters(client, trained):
    (net, _, history, _), (x_train, t_train, _, _) = trained
    before = set(client.scheduler_info()["workers"])
    victim = sorted(before)[0]
    killed = threading.Event()

    def kill_soon(record):
        if record.epoch == 1:  # during the second epoch's graph

            def kill():
                client.run(os._exit, 1, workers=[victim], on_error="ignore")  # no answer comes back
                killed.set()

            threading.Timer(0.1, kill).start()

    again, _, history2, _ = _train(client, x_train, t_train, on_epoch=kill_soon)
    assert killed.wait(30)
    assert history2.epochs[1].seconds > 0.1, "the kill came after the second epoch"
    client.wait_for_workers(2, timeout=WAIT)  # the nanny restarted it
    assert set(client.scheduler_info()["workers"]) != before
    for key in net.params:
        np.testing.assert_array_equal(again.params[key], net.params[key])
    assert history2.step_losses == history.step_losses


@pytest.mark.slow
def test_cluster_threads_follow_the_workers_nthreads(client):
    info = fd.worker_info(client)
    assert len(info) == 2
    for data in info.values():
        assert data["threading_layer"] == "tbb"
        assert data["numba_num_threads"] == 1 and data["worker_nthreads"] == 1
        assert data["environ"]["OPENBLAS_NUM_THREADS"] == "1"
        assert all(lib["num_threads"] == 1 for lib in data["blas"] if lib.get("num_threads"))


@pytest.mark.slow
def test_worker_with_two_threads_runs_the_parallel_kernels_without_hanging():
    """A cluster we are given (not started by local_cluster): Numba's threads are the machine's,
    each task sets its own to the worker's nthreads; two tasks at once launch parallel kernels."""
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                                       silence_logs=40)  # fmt: skip
    try:
        with distributed.Client(cluster, timeout=WAIT) as c:
            net = fl.TwoLayerNet(784, 100, 10, dtype=np.float32, seed=0)
            X = da.random.default_rng(0).standard_normal((4000, 784), dtype=np.float32, chunks=(1000, 784))
            T = da.arange(4000, chunks=1000) % 10
            X, T = c.persist([X, T])  # made on the worker
            x, t = c.compute([X, T], sync=True)
            got = c.compute(fd.predict(net, X)).result(timeout=WAIT)
            np.testing.assert_allclose(got, net.predict(x), rtol=1e-5, atol=1e-6)
            grads = fd.gradient(net, X, T, c, timeout=WAIT)
            np.testing.assert_allclose(grads["W1"], net.gradient(x, t)["W1"], rtol=1e-3, atol=1e-6)
            (data,) = fd.worker_info(c).values()
            assert data["worker_nthreads"] == 2 and data["task_threads"] == min(2, data["numba_num_threads"])
            assert data["threading_layer"] == "tbb"
    finally:
        cluster.close(timeout=30)


@pytest.mark.slow
def test_worker_that_cannot_import_fastlayers_is_named(client):
    victim = sorted(client.scheduler_info()["workers"])[1]
    hide = "import sys; sys._fl_saved = {k: sys.modules.pop(k, None) for k in ('fastlayers', 'fastlayers.dask')}; "
    hide += "sys.modules['fastlayers'] = None"
    restore = "import sys; sys.modules.pop('fastlayers', None); sys.modules.update(sys._fl_saved)"
    client.run(exec, hide, workers=[victim])
    try:
        with pytest.raises(RuntimeError, match=f"1 of 2 Dask workers cannot import fastlayers.dask .*{victim}"):
            fd.fit(fl.TwoLayerNet(4, 3, 2), fl.SGD(), da.zeros((8, 4), chunks=4), da.zeros(8, int, chunks=4), 1, 4,
                   client)  # fmt: skip
    finally:
        client.run(exec, restore, workers=[victim])
    assert len(fd.check_workers(client)) == 2


@pytest.mark.slow
def test_cli_train_on_a_local_cluster_and_a_bad_address(tmp_path):
    params = tmp_path / "params.pkl"
    cmd = [sys.executable, "-m", "fastlayers", "train", "--scheduler", "local:2", "--epochs", "2", "--no-progress"]
    res = subprocess.run([*cmd, "--save", str(params)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "dask: local:2, 2 workers" in res.stdout and "[dask] epoch   2" in res.stdout
    accuracy = float(res.stdout.split("done: test accuracy ")[1].split(",")[0])
    assert accuracy > 0.85
    # predict with the saved parameters, on a cluster and in process: the same accuracy
    predict = [sys.executable, "-m", "fastlayers", "predict", "--params", str(params)]
    for where in (["--scheduler", "local:2"], []):
        res = subprocess.run([*predict, *where], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert float(res.stdout.split("accuracy ")[1].split()[0]) == pytest.approx(accuracy, abs=1e-4)
    cmd[5] = "tcp://127.0.0.1:9"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "could not reach the Dask scheduler at tcp://127.0.0.1:9" in res.stderr


def test_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """fd.fit with checkpoint= for 2 epochs, then resume= to 4: the parameters, optimizer state and
    losses of 4 epochs in one go, bit for bit (the batches are a function of seed, epoch, step and
    block; the tree reduction adds in a fixed order). Mismatched runs are refused."""
    from fastlayers.checkpoint import CheckpointError, load_checkpoint

    x, t = _data()
    X, T = da.from_array(x, chunks=200), da.from_array(t, chunks=200)
    for mode in ("sync", "local"):
        ref_net, ref_opt = fl.MultiLayerNet(12, [10], 4, seed=0), fl.Adam(0.01)
        ref = fd.fit(ref_net, ref_opt, X, T, epochs=4, batch_size=30, seed=5, mode=mode, local_steps=3)
        ck = tmp_path / f"{mode}.npz"
        net, opt = fl.MultiLayerNet(12, [10], 4, seed=0), fl.Adam(0.01)
        fd.fit(net, opt, X, T, epochs=2, batch_size=30, seed=5, mode=mode, local_steps=3, checkpoint=ck)
        assert load_checkpoint(ck).epochs_done == 2
        net2, opt2 = fl.MultiLayerNet(12, [10], 4, seed=1), fl.Adam(0.5)
        hist = fd.fit(net2, opt2, X, T, epochs=4, batch_size=30, seed=5, mode=mode, local_steps=3, resume=ck,
                      checkpoint=ck)  # fmt: skip
        assert [e.epoch for e in hist.epochs] == [1, 2, 3, 4]
        assert hist.step_losses == ref.step_losses
        for key in ref_net.params:
            np.testing.assert_array_equal(net2.params[key], ref_net.params[key])
        assert opt2.iter == ref_opt.iter and opt2.lr == 0.01
        assert load_checkpoint(ck).epochs_done == 4
    with pytest.raises(CheckpointError, match="written with seed 5, this run has 6"):
        fd.fit(fl.MultiLayerNet(12, [10], 4), fl.Adam(), X, T, epochs=5, batch_size=30, seed=6, mode="local",
               local_steps=3, resume=ck)  # fmt: skip
    with pytest.raises(CheckpointError, match="row_chunks"):
        X2, T2 = da.from_array(x, chunks=300), da.from_array(t, chunks=300)
        fd.fit(fl.MultiLayerNet(12, [10], 4), fl.Adam(), X2, T2, epochs=5, batch_size=30, seed=5, mode="local",
               local_steps=3, resume=ck)  # fmt: skip
    from fastlayers.train import fit

    with pytest.raises(CheckpointError, match="was written by fastlayers.dask.fit: resume it with that"):
        fit(fl.MultiLayerNet(12, [10], 4), fl.Adam(), (x, t), (x, t), 5, 30, 5, resume=ck)


@pytest.mark.slow
def test_cli_dask_run_interrupted_and_resumed(tmp_path):
    """train --scheduler local:2 --checkpoint: SIGTERM to the coordinating process after its first
    checkpoint stops it when the epoch in flight is done, with the checkpoint and one line (exit 143);
    --resume on a new local cluster of 2 workers ends where the uninterrupted run ends."""
    import signal

    base = [sys.executable, "-m", "fastlayers", "train", "--scheduler", "local:2", "--epochs", "4", "--no-progress"]
    ref, final, ck = tmp_path / "ref.pkl", tmp_path / "final.pkl", tmp_path / "ck.npz"
    res = subprocess.run([*base, "--save", str(ref)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    proc = subprocess.Popen([*base, "--checkpoint", str(ck)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and f"--resume {ck}" in err
    assert not _our_tracebacks(err), err
    res = subprocess.run([sys.executable, "-m", "fastlayers", "train", "--resume", str(ck), "--scheduler", "local:2",
                          "--save", str(final)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    want, got = pickle.loads(ref.read_bytes()), pickle.loads(final.read_bytes())
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    res = subprocess.run([sys.executable, "-m", "fastlayers", "train", "--resume", str(ck)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "a checkpoint of a Dask run continues on Dask: give --scheduler" in res.stderr


def _our_tracebacks(err: str) -> list[str]:
    """The tracebacks in ``err`` that pass through fastlayers' own code (none when it stopped as it
    should). The local cluster's workers and nannies share the process's stderr, and distributed may
    log a closed connection with its traceback while the cluster goes down (seen once in a full
    suite run: ``distributed/comm/tcp.py``, ``read``); such a record is distributed's, not a crash of
    the run, so only tracebacks with a frame in fastlayers count."""
    package = f'File "{os.path.dirname(os.path.abspath(fl.__file__))}{os.sep}'
    blocks = err.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if package in b]


def test_our_tracebacks_tells_ours_from_distributeds():
    package = os.path.dirname(os.path.abspath(fl.__file__))
    theirs = 'x\nTraceback (most recent call last):\n  File "/v/distributed/comm/tcp.py", line 226, in read\n'
    ours = f'Traceback (most recent call last):\n  File "{package}{os.sep}dask.py", line 1, in fit\nKeyError: 1\n'
    assert _our_tracebacks(theirs) == [] and len(_our_tracebacks(theirs + ours)) == 1
