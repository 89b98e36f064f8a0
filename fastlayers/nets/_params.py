"""Parameter files in the classic format (a pickled dict of NumPy arrays), written and read for
every net; reading accepts arrays and plain containers only."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike

import numpy as np

from .._files import atomic_write


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, their dtypes and plain containers, nothing else (a pickle can run
    any code on load; a parameter file needs none)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how protocol 2 writes the bytes of an array
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a parameter file holds arrays only; refusing {module}.{name}")


def load_param_file(file_name: str | PathLike) -> dict[str, np.ndarray]:
    """The dict of arrays in a classic parameter file (a pickled dict of NumPy arrays).

    Raises
    ------
    pickle.UnpicklingError
        The file holds anything but arrays and plain containers.
    ValueError
        It is not a dict of arrays keyed by strings.
    """
    with open(file_name, "rb") as f:
        data = _SafeUnpickler(f).load()
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in data.items()):
        raise ValueError(f"{file_name} does not hold a dict of arrays keyed by name")
    return data


def save_param_file(params: Mapping[str, np.ndarray], file_name: str | PathLike) -> None:
    """Write ``params`` as the classic code does (a pickled dict of arrays), atomically: a process
    killed during the save leaves the old file or the new one (:func:`fastlayers._files.atomic_write`)."""
    data = pickle.dumps(dict(params))
    atomic_write(file_name, lambda fh: fh.write(data))


class SavesParams:
    """``save_params`` for a net with a ``params`` dict of arrays."""

    params: dict

    def save_params(self, file_name: str | PathLike = "params.pkl") -> None:
        """Write ``params`` as the classic code does: a pickled dict of arrays. The write is atomic:
        a temporary file in the same folder, flushed and fsynced, then renamed over ``file_name``, so
        a crash or a full disk during the save leaves the previous file intact.

        Parameters
        ----------
        file_name : str or path, default "params.pkl"
        """
        save_param_file(self.params, file_name)
