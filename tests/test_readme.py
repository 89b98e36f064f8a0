"""The README's example runs, and CI runs the README's test command verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import project_copy

ROOT = Path(__file__).resolve().parents[1]


def test_usage_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["loss"].dtype == np.float32
    assert namespace["dx"].shape == (100, 784)
    np.testing.assert_allclose(namespace["loss"], namespace["same"], rtol=1e-6)


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert any("fastlayers train" in c for c in commands)


def test_installed_package_wins_over_a_clone_folder_named_fastlayers(tmp_path):
    """The main-job command installs the package (not editable), so running from the parent of a
    clone named ``fastlayers`` imports the package, not the clone folder as a namespace package."""
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(project_copy(tmp_path / "source"))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    parent = tmp_path / "parent"
    (parent / "fastlayers").mkdir(parents=True)  # the clone folder: no __init__.py at its top
    (parent / "fastlayers" / "pyproject.toml").write_text("")
    env = dict(os.environ, PYTHONPATH=str(site))
    code = "import fastlayers as fl; print(fl.__version__, fl.Relu.__name__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=parent, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split() == [fl_version(), "Relu"], res.stderr[-2000:]


def fl_version() -> str:
    import fastlayers

    return fastlayers.__version__


def test_one_source_for_the_version():
    import importlib.metadata

    import fastlayers

    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert fastlayers.__version__ == importlib.metadata.version("fastlayers") == declared
    assert f"## [{declared}]" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
