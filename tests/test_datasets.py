"""The IDX loader on small files written here, and the digits data set."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from fastlayers import datasets
from fastlayers.datasets import MNIST_FILES, load_digits, load_mnist, read_idx


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist(tmp_path, compress=True, n_train=12, n_test=5, side=6):
    rng = np.random.default_rng(0)
    sets = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, arr in sets.items():
        write_idx(tmp_path / MNIST_FILES[key], arr, compress)
    return sets


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_options(tmp_path, compress):
    sets = make_mnist(tmp_path, compress)
    (x, t), (xt, tt) = load_mnist(tmp_path)
    assert x.shape == (12, 36) and x.dtype == np.float32 and xt.shape == (5, 36)
    np.testing.assert_allclose(x, sets["train_images"].reshape(12, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(t, sets["train_labels"])
    assert t.dtype == np.int64
    (x, t), _ = load_mnist(tmp_path, normalize=False, flatten=False, one_hot_label=True, dtype=np.float64)
    assert x.shape == (12, 1, 6, 6) and x.max() > 1 and x.dtype == np.float64
    assert t.shape == (12, 10) and np.all(t.sum(axis=1) == 1)
    np.testing.assert_array_equal(t.argmax(axis=1), sets["train_labels"])


def test_read_idx_int32(tmp_path):
    arr = np.arange(-3, 9, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "a", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    make_mnist(tmp_path, compress=False)
    (tmp_path / MNIST_FILES["train_labels"]).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0c" + b"\x01" * 5)
    with pytest.raises(ValueError, match=r"header says shape \(12,\) \(12 bytes\) but 5 bytes follow"):
        load_mnist(tmp_path)
    (tmp_path / MNIST_FILES["train_labels"]).write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(tmp_path)
    (tmp_path / (MNIST_FILES["test_images"] + ".gz")).write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(ValueError, match="cannot be read as IDX"):
        read_idx(tmp_path / (MNIST_FILES["test_images"] + ".gz"))


def test_mismatched_counts(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES["test_labels"], np.zeros(4, np.uint8), compress=True)
    with pytest.raises(ValueError, match="test has 5 images but 4 labels"):
        load_mnist(tmp_path)


def test_digits_split_is_fixed():
    (x, t), (xt, tt) = load_digits()
    assert x.shape == (1437, 64) and xt.shape == (360, 64) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and set(np.unique(t)) == set(range(10))
    (x2, t2), _ = load_digits()
    np.testing.assert_array_equal(t, t2)
    (xo, to), _ = load_digits(one_hot_label=True, flatten=False)
    assert xo.shape == (1437, 1, 8, 8) and to.shape == (1437, 10)


@pytest.fixture
def idx_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving MNIST-format files written here; counts the requests."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    sets = make_mnist(served, compress=True)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    hashes = {p.name: "md5:" + hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    try:
        yield url, hashes, sets, requests
    finally:
        server.shutdown()
        server.server_close()


def test_load_mnist_downloads_checks_and_caches(idx_server, tmp_path, monkeypatch):
    pytest.importorskip("pooch", reason="downloads need pooch (the train extra)")
    url, hashes, sets, requests = idx_server
    monkeypatch.setitem(datasets.SOURCES, "local", (url, hashes))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (x, t), (xt, tt) = load_mnist(download=True, kind="local")
    assert len(requests) == 4 and x.shape == (12, 36) and tt.shape == (5,)
    np.testing.assert_array_equal(t, sets["train_labels"])
    assert list((tmp_path / "cache" / "fastlayers" / "local").glob("*.gz")), "kept in the user cache directory"
    load_mnist(download=True, kind="local")
    assert len(requests) == 4, "the second call reads the cached files"
    target = tmp_path / "mine"
    (x2, _), _ = load_mnist(target, download=True, kind="local")
    assert len(requests) == 8 and (target / "t10k-labels-idx1-ubyte.gz").is_file()
    np.testing.assert_array_equal(x2, x)


def test_load_mnist_download_refuses_a_wrong_file(idx_server, tmp_path, monkeypatch):
    pytest.importorskip("pooch", reason="downloads need pooch (the train extra)")
    url, hashes, _, _ = idx_server
    bad = dict(hashes, **{"train-labels-idx1-ubyte.gz": "md5:" + "0" * 32})
    monkeypatch.setitem(datasets.SOURCES, "local", (url, bad))
    with pytest.raises(ValueError, match="hash"):
        load_mnist(tmp_path / "d", download=True, kind="local")


def test_load_mnist_download_without_network(tmp_path, monkeypatch):
    pytest.importorskip("pooch", reason="downloads need pooch (the train extra)")
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(datasets.SOURCES, "local", (f"http://127.0.0.1:{port}/", {"x.gz": "md5:" + "0" * 32}))
    with pytest.raises(ConnectionError, match=r"could not download .*x\.gz.*pass it as data_dir"):
        load_mnist(tmp_path / "d", download=True, kind="local")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_mnist(download=True, kind="cifar")
    with pytest.raises(ValueError, match="needs data_dir, or download=True"):
        load_mnist()
