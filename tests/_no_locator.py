"""A Numba cache locator that never finds a location: what a read-only install with a read-only
home looks like to Numba. Used through ``NUMBA_CACHE_LOCATOR_CLASSES=tests._no_locator.NoLocator``."""

from numba.core.caching import _CacheLocator


class NoLocator(_CacheLocator):
    @classmethod
    def from_function(cls, py_func, py_file):
        return None
