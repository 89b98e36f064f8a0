"""A Numba cache locator that never finds a location: what a read-only install with a read-only
home looks like to Numba. ``test_reliability`` puts it in place of Numba's locators in a child process."""

from numba.core.caching import _CacheLocator


class NoLocator(_CacheLocator):
    @classmethod
    def from_function(cls, py_func, py_file):
        return None
