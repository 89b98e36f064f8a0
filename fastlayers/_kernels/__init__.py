"""Numba kernels and nothing else.

Every kernel takes arrays and scalars only, never validates and never allocates what the caller can
give it: validation and allocation happen in :mod:`fastlayers.functional`, whose modules mirror these.
Each kernel exists twice, built from one Python function by :func:`._numba.twins`: a serial version
for small inputs and a ``parallel=True`` version whose outer loop is a ``prange``; each module names
the size from which its parallel twins run, beside its kernels.

Modules: ``elementwise`` (ReLU, Sigmoid, and the ``copy`` yardstick), ``affine`` (bias add, bias
gradient), ``loss`` (softmax, cross-entropy loss and gradient), ``optim`` (optimizer updates),
``_math`` (a vectorizable exp), ``_blocks`` (the block pattern of the flat kernels), ``_numba`` (compile
flags, the twin builder, the cache fallback, and the helpers compiled in a special way), ``_threads``
(threading layer and launch policy). Every kernel is listed in ``_numba.ALL_TWINS``.
"""
