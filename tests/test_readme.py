"""The README's example runs, and CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
