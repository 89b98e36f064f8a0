"""Names of a package imported at their first use (PEP 562), so that ``import fastlayers`` does not
pay for the layer families a program never uses (the convolution and training families)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def attributes(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for ``package``: each name in ``names`` is
    imported from its module (``names[name]``, relative to ``package``) at its first read, then kept
    in the package as a plain attribute."""

    def getattr_(name: str) -> object:
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return getattr_, dir_
