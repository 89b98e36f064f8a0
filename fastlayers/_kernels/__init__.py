"""Numba kernels and nothing else.

Every kernel takes arrays and scalars only, never validates and never allocates what the caller can
give it: validation and allocation happen in :mod:`fastlayers.functional`. Each kernel exists twice,
built from one Python function by :func:`fastlayers._kernels._jit.twins`: a serial version for small
inputs and a ``parallel=True`` version whose outer loop is a ``prange``.

Modules: ``elementwise`` (ReLU, Sigmoid), ``affine`` (bias add, bias gradient), ``loss`` (softmax,
cross-entropy loss and gradient), ``_math`` (a vectorizable exp), ``_reduce`` (row sum and max in SIMD
lanes), ``_jit`` (compile flags and the cache fallback), ``_threads`` (threading layer and launch
policy).
"""
