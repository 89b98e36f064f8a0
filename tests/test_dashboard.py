"""The asv dashboard: a quick ``asv run -E existing`` on a subset, ``asv publish``, the offline
JavaScript, and the page and one benchmark graph rendered in headless Chromium (with a screenshot)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from asv_dashboard import chromium  # noqa: E402

pytestmark = pytest.mark.slow  # asv, npm and headless Chromium: about 25 s


def test_dashboard_renders_in_headless_chromium(tmp_path):
    needs = {"chromium": chromium(), "npm": shutil.which("npm"), "asv": importlib.util.find_spec("asv")}
    missing = [name for name, found in needs.items() if not found]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {missing} (.ci/run installs them)")
        pytest.skip(f"needs {missing}: apt-get install chromium npm; pip install asv")
    shot = tmp_path / "dashboard.png"
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "asv_dashboard.py"), "quick", "--screenshot", str(shot)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["listed"] == found["benchmarks"] > 0
    assert found["graph"] == "bench_layers.Relu.time_forward_backward" and found["canvases"] >= 2
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
