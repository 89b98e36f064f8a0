"""What every classic net computes the same way: its scores, its loss, its gradients by
backpropagation and by central differences. The dense nets (:mod:`.dense`) and the convolutional
ones (:mod:`.conv`) keep their public methods (their signatures and docstrings are the classic
ones) and hand each call to :class:`LayerNet`, which differs between them only by the hooks below.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .. import _gemm
from ..gradient import numerical_gradient
from ..layers.core import SoftmaxWithLoss
from . import _plan, _walk
from ._params import SavesParams


class LayerNet(SavesParams):
    """Scores, loss and gradients of a net that walks a list of layers into a ``last_layer``.

    The hooks:

    - ``_planned``: whether the plans (:mod:`._plan`) are asked first (the dense nets; the
      convolutional ones never pay for them);
    - ``_beside_kernels``: whether the walk runs inside :func:`fastlayers._gemm.beside_parallel_kernels`
      (the convolutional nets: their Affine products run between convolution kernels);
    - :meth:`_layer_list`: the layers, in order;
    - :meth:`_training_loss`: the loss that ``gradient`` and ``numerical_gradient`` differentiate
      (its training flag);
    - :meth:`_penalty`: the weight decay term of the loss;
    - :meth:`_grads`: the gradient dict after a backward walk.
    """

    params: dict[str, np.ndarray]
    last_layer: SoftmaxWithLoss
    _planned: bool = False
    _beside_kernels: bool = False

    def _layer_list(self) -> list:
        """The layers, in order."""
        return list(self.layers.values())  # type: ignore[attr-defined]

    def _training_loss(self, x: ArrayLike, t: ArrayLike) -> np.floating:
        """The loss that :meth:`_gradient` and :meth:`_numerical_gradient` differentiate."""
        return self.loss(x, t)  # type: ignore[attr-defined]

    def _penalty(self) -> float:
        """The weight decay term added to the loss."""
        return 0.0

    def _grads(self) -> dict[str, np.ndarray]:
        """The gradients keyed like ``params``, once the layers have been walked backward."""
        raise NotImplementedError

    def _predict(self, x: ArrayLike, train_flg: bool = False) -> np.ndarray:
        """Scores before the softmax: the plan's answer (small dense nets: one compiled call), else
        ``x`` walked through the layers."""
        if self._planned:
            out = _plan._call(self, x, None, "predict")
            if out is not None:
                return out
        if not self._beside_kernels:
            return _walk.forward(self._layer_list(), x, bool(train_flg))
        with _gemm.beside_parallel_kernels():  # the Affine layers' products between convolution kernels
            return _walk.forward(self._layer_list(), x, bool(train_flg))

    def _loss(self, x: ArrayLike, t: ArrayLike, train_flg: bool = False) -> np.floating:
        """Mean softmax cross-entropy of ``predict`` in the mode ``train_flg``, plus :meth:`_penalty`."""
        loss = _plan._call(self, x, t, "loss") if self._planned else None
        if loss is None:
            # predict(x) in test mode: TwoLayerNet's and MultiLayerNet's predict take no flag
            scores = self.predict(x, train_flg) if train_flg else self.predict(x)  # type: ignore[attr-defined]
            loss = self.last_layer.forward(scores, t)
        penalty = self._penalty()
        return loss + loss.dtype.type(penalty) if penalty else loss

    def _gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """:meth:`_grads` after the plan's gradient call, else after :meth:`_training_loss` and a
        backward walk."""
        if not self._planned or _plan._call(self, x, t, "gradient") is None:
            self._training_loss(x, t)
            if not self._beside_kernels:
                _walk.backward(self._layer_list(), self.last_layer.backward(1))
            else:
                with _gemm.beside_parallel_kernels():
                    _walk.backward(self._layer_list(), self.last_layer.backward(1))
        return self._grads()

    def _numerical_gradient(self, x: ArrayLike, t: ArrayLike) -> dict[str, np.ndarray]:
        """Central differences of :meth:`_training_loss`, keyed like ``params``."""
        return {key: numerical_gradient(lambda _: self._training_loss(x, t), p) for key, p in self.params.items()}
