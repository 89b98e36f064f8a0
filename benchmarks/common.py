"""Shared pieces of the asv suites: seeded data, sizes, and the backend switch.

Backends: ``numba`` (fastlayers' kernels), ``numpy`` (fastlayers' reference path, the same layer
classes) and ``torch`` (PyTorch's CPU operators for the same work; the combination is skipped, the
asv way, by raising NotImplementedError in ``setup`` when PyTorch is not importable).
"""

from __future__ import annotations

import fastlayers

BACKENDS = ["numba", "numpy", "torch"]
DTYPES = ["float32", "float64"]


def dims(shape: str) -> tuple[int, ...]:
    return tuple(int(s) for s in shape.split("x"))


def torch_or_skip():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("PyTorch is not installed") from None
    torch.set_num_threads(fastlayers.get_num_threads())
    return torch


class _BackendSuite:
    """Base class: ``setup`` switches the fastlayers backend and sets ``self.forward``,
    ``self.backward`` and ``self.forward_backward`` (callables); ``teardown`` switches back.

    Its name starts with an underscore so that asv does not collect it as a suite of its own (it
    did, from every module that imports it, and each of its benchmarks failed for want of a setup).
    """

    def time_forward(self, *params):
        self.forward()

    def time_backward(self, *params):
        self.backward()

    def time_forward_backward(self, *params):
        self.forward_backward()

    def peakmem_forward_backward(self, *params):
        self.forward_backward()

    def _enter(self, backend: str) -> None:
        self._backend_ctx = fastlayers.use_backend(backend if backend != "torch" else "numba")

    def teardown(self, *params) -> None:
        ctx = getattr(self, "_backend_ctx", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)
            self._backend_ctx = None
