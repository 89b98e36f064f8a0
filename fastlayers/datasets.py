"""Data for the training command: scikit-learn's 8x8 digits (no download) and MNIST-format IDX files.

Both loaders return ``(x_train, t_train), (x_test, t_test)`` as in the classic ``load_mnist``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["load_digits", "load_mnist", "read_idx", "SOURCES"]

#: File names of MNIST and Fashion-MNIST (the same for both); ``.gz`` or uncompressed.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}  # fmt: skip


def _finish(x: np.ndarray, t: np.ndarray, normalize: bool, flatten: bool, one_hot_label: bool, scale: float,
            dtype, image_shape: tuple) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    x = x.astype(dtype)
    if normalize:
        x /= dtype(scale)
    x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *image_shape)
    if one_hot_label:
        onehot = np.zeros((t.size, 10), dtype)
        onehot[np.arange(t.size), t] = 1
        return x, onehot
    return x, t.astype(np.int64)


def load_digits(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: DTypeLike = np.float32,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), split with a fixed seed.

    Parameters
    ----------
    normalize : scale pixel values (0..16) to [0, 1].
    flatten : rows of 64 values; otherwise (N, 1, 8, 8).
    one_hot_label : one-hot rows instead of integer labels.
    test_fraction : share of the images held out, stratified by class.
    seed : seed of the split.
    dtype : dtype of the images.

    Raises
    ------
    ImportError
        When scikit-learn is not installed (``pip install 'fastlayers[train]'``).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install 'fastlayers[train]'") from exc
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = _sk_load_digits()
    x_tr, x_te, t_tr, t_te = train_test_split(
        digits.images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    dt = np.dtype(dtype).type
    return (
        _finish(x_tr, t_tr, normalize, flatten, one_hot_label, 16.0, dt, (8, 8)),
        _finish(x_te, t_te, normalize, flatten, one_hot_label, 16.0, dt, (8, 8)),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its stored shape.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a name ending in ``.gz`` is decompressed.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the header is not IDX or the data is shorter or longer than the header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot be read as IDX ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] < 1:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: neither {stem}.gz nor {stem} found (expected the four MNIST-format files)")


#: Where ``load_mnist(download=True)`` fetches each data set, and the MD5 of each file (the checksums
#: published with the data sets and used by torchvision).
SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def _download(kind: str, data_dir: Path | None) -> Path:
    """Fetch the four files of ``kind`` with pooch (hashes checked, kept after the first time)."""
    if kind not in SOURCES:
        raise ValueError(f"kind must be one of {sorted(SOURCES)}, got {kind!r}")
    try:
        import pooch
    except ImportError as exc:
        raise ImportError("download=True needs pooch: pip install 'fastlayers[train]' (or pooch)") from exc
    base_url, hashes = SOURCES[kind]
    folder = Path(data_dir) if data_dir is not None else Path(pooch.os_cache("fastlayers")) / kind
    fetcher = pooch.create(path=folder, base_url=base_url, registry=hashes)
    for name in hashes:
        try:
            fetcher.fetch(name)
        except ValueError:  # pooch's hash mismatch: the file is not what the data set published
            raise
        except Exception as exc:  # requests' and urllib's network errors, without a traceback maze
            raise ConnectionError(
                f"could not download {base_url}{name} into {folder}: {type(exc).__name__}: {exc}. "
                f"Without network access, put the four files in a folder and pass it as data_dir."
            ) from None
    return folder


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    dtype: DTypeLike = np.float32,
    *,
    download: bool = False,
    kind: str = "mnist",
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST or Fashion-MNIST from the four IDX files in ``data_dir`` (``.gz`` or raw).

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``. With ``download``, where
        to put them (default: ``fastlayers/<kind>`` in the user cache directory).
    normalize : bool
        Scale pixels (0..255) to [0, 1].
    flatten : bool
        Rows of H*W values; otherwise (N, 1, H, W).
    one_hot_label : bool
        One-hot rows (10 classes) instead of integer labels.
    dtype : dtype of the images.
    download : bool, default False
        Fetch the files first when they are missing (needs ``pooch``; each file's MD5 is checked).
    kind : {"mnist", "fashion"}
        Which data set ``download`` fetches (see :data:`SOURCES`).

    Returns
    -------
    ((x_train, t_train), (x_test, t_test)), as the classic ``load_mnist``.

    Raises
    ------
    FileNotFoundError
        A missing directory or file (the message names it).
    ValueError
        A corrupt file, images and labels that do not match, a download whose hash does not match.
    ConnectionError
        ``download`` without network access (the message says what to do instead).
    ImportError
        ``download`` without pooch installed.
    """
    if download:
        data_dir = _download(kind, None if data_dir is None else Path(data_dir))
    elif data_dir is None:
        raise ValueError("load_mnist needs data_dir, or download=True")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    arrays = {key: read_idx(_find(data_dir, stem)) for key, stem in MNIST_FILES.items()}
    dt = np.dtype(dtype).type
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"{split} images must be 3-D and labels 1-D, got {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{split} has {len(images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{split} labels must be in 0..9, got {labels.min()}..{labels.max()}")
        out.append(_finish(images, labels, normalize, flatten, one_hot_label, 255.0, dt, images.shape[1:]))
    return tuple(out)
