"""The public API carries its contract: a NumPy-style docstring and type hints on every public class,
method and function, and hints that a strict type checker accepts in real use."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastlayers as fl
from fastlayers import checkpoint, datasets, functional

ROOT = Path(__file__).resolve().parents[1]


def _public() -> dict[str, object]:
    found: dict[str, object] = {}
    modules = ((fl, fl.__all__), (functional, functional.__all__), (datasets, datasets.__all__),
               (checkpoint, checkpoint.__all__))  # fmt: skip
    for mod, names in modules:
        for name in names:
            if name.startswith("__"):
                continue
            obj = getattr(mod, name)
            if not callable(obj):
                continue  # data (datasets.SOURCES), documented where it is defined
            found[f"{mod.__name__}.{name}"] = obj
            if inspect.isclass(obj):
                for attr in dir(obj):
                    member = inspect.getattr_static(obj, attr)
                    if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                        found[f"{mod.__name__}.{name}.{attr}"] = member
    return found


PUBLIC = _public()


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_and_hints(name):
    obj = PUBLIC[name]
    func = obj.fget if isinstance(obj, property) else obj
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 20, f"{name} has no docstring"
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    if params and not isinstance(obj, property):
        assert "Parameters\n---" in doc, f"{name}: no Parameters section"
    for p in params:
        assert p.annotation is not inspect.Parameter.empty, f"{name}: parameter {p.name} has no type hint"
    if not inspect.isclass(func):
        assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type hint"


def test_package_is_marked_typed():
    assert (ROOT / "fastlayers" / "py.typed").is_file()


def test_mypy_strict_on_a_typed_usage_file():
    """A program written against the public API passes ``mypy --strict`` (fastlayers' own modules
    are followed silently: their hints are checked where the program uses them)."""
    if shutil.which("mypy") is None and not _has_module("mypy"):
        pytest.skip("mypy is not installed (it is in the test extra)")
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "tests/typing/usage.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_docstrings_state_contracts_not_timings():
    """Timing figures and the stories of how code got fast live in docs/PERFORMANCE.md, not in the
    package's docstrings and comments."""
    import re

    figure = re.compile(r"\d ?(us|µs|ms)\b|\d(\.\d+)?x (slower|faster)|\d+% (slower|faster)")
    for path in sorted((ROOT / "fastlayers").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("print(", "help=")) or "help=" in stripped:
                continue
            assert not figure.search(line), f"{path.relative_to(ROOT)}:{number}: {stripped}"
    assert (ROOT / "docs" / "PERFORMANCE.md").is_file()
    assert "docs/PERFORMANCE.md" in (ROOT / "README.md").read_text()
