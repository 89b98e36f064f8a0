"""The IDX loader on small files written here, and the digits data set."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

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
