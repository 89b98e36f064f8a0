"""The checked functions: validation, the dtype rule, allocation with optional ``out=`` buffers, and
the backend choice, in front of the kernels.

Every public function validates its arguments in Python (Numba does not bounds-check), then runs
either a compiled kernel from :mod:`fastlayers._kernels` (backend ``"numba"``) or its twin in
:mod:`fastlayers.reference` (backend ``"numpy"``). Caller arrays are never modified, except an
``out=`` buffer given on purpose.

The modules mirror :mod:`fastlayers._kernels`: :mod:`.elementwise` (ReLU, Sigmoid), :mod:`.affine`,
:mod:`.loss` (softmax and the cross-entropy losses), :mod:`.conv` (convolution, max pooling,
im2col/col2im), :mod:`.dropout`, :mod:`.batchnorm`, and :mod:`._checks` (the dtype rule, the argument checks and the
gates of the fast paths), which the others share.

The dtype rule is NumPy's (see :mod:`fastlayers.functional._checks`): each function computes in,
and returns, the dtype the classic NumPy expression gives for the same operands (float16 computed
and returned as float32; integer-only operands computed in float64). Which operands count is said
per function.

Layouts: C-contiguous inputs take the fast path; Fortran-ordered inputs are processed in their own
order (and give Fortran-ordered outputs); other strided views are copied to C order first.

``out=`` buffers must have the exact shape and dtype of the result and be writeable. An ``out`` that
shares memory with any input (targets included) gives the same result as a separate buffer: where
the kernel allows it, an ``out`` that is exactly an input is written in place, and any other overlap
is computed through a temporary. (Affine's buffers that overlap an input are refused with
``ValueError`` instead: a product cannot be written over its own operand.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .affine import affine_backward, affine_forward
from .elementwise import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward
from .loss import cross_entropy_error, softmax, softmax_cross_entropy_backward, softmax_cross_entropy_forward

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from .batchnorm import batch_norm_backward, batch_norm_test, batch_norm_train
    from .conv import col2im, conv_backward, conv_forward, im2col, max_pool_backward, max_pool_forward
    from .dropout import dropout_backward, dropout_forward, dropout_scale

# the chapter 6-7 families are imported at their first use
__getattr__, __dir__ = _lazy.attributes(
    __name__,
    {
        **dict.fromkeys(["batch_norm_backward", "batch_norm_test", "batch_norm_train"], ".batchnorm"),
        **dict.fromkeys(
            ["col2im", "conv_backward", "conv_forward", "im2col", "max_pool_backward", "max_pool_forward"], ".conv"
        ),
        **dict.fromkeys(["dropout_backward", "dropout_forward", "dropout_scale"], ".dropout"),
    },
)

__all__ = [
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "affine_forward",
    "affine_backward",
    "softmax",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "cross_entropy_error",
    "conv_forward",
    "conv_backward",
    "max_pool_forward",
    "max_pool_backward",
    "im2col",
    "col2im",
    "dropout_forward",
    "dropout_backward",
    "dropout_scale",
    "batch_norm_train",
    "batch_norm_test",
    "batch_norm_backward",
]
