"""The asv dashboard: a quick ``asv run -E existing`` on a subset, ``asv publish``, the offline
JavaScript, and the page and one benchmark graph rendered in headless Chromium (with a screenshot);
and the dashboard with history: ``history`` over two commits in an asv-managed virtualenv, rendered,
with a plotted series of two points."""

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
from asv_dashboard import chromium, history_commits  # noqa: E402

GIT = ["git", "-c", "user.name=fastlayers tests", "-c", "user.email=tests@fastlayers.invalid"]


def _needs_browser_and_asv():
    needs = {"chromium": chromium(), "npm": shutil.which("npm"), "asv": importlib.util.find_spec("asv")}
    missing = [name for name, found in needs.items() if not found]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {missing} (.ci/run installs them)")
        pytest.skip(f"needs {missing}: apt-get install chromium npm; pip install asv")


def _two_commit_repo(path: Path) -> Path:
    """A repository on ``main`` whose two commits hold this checkout's files (tracked or new, as they are
    on disk): independent of this clone's depth and of what its last commits changed."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    for args in (
        ["init", "-q"],
        ["symbolic-ref", "HEAD", "refs/heads/main"],
        ["add", "-A"],
        ["commit", "-q", "-m", "first"],
        ["commit", "-q", "--allow-empty", "-m", "second"],
    ):
        subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)
    return path


def test_history_refuses_a_shallow_clone_and_a_branch_without_tags(tmp_path):
    repo = _two_commit_repo(tmp_path / "repo")
    assert len(history_commits(repo, "main", 2)) == 2
    assert len(history_commits(repo, "main", 5)) == 2  # a full history shorter than asked: all of it
    with pytest.raises(SystemExit, match="no tag is reachable from main"):
        history_commits(repo, "main", tags=True)
    subprocess.run([*GIT, "tag", "v0.1.0", "main~1"], cwd=repo, check=True)
    assert history_commits(repo, "main", tags=True) == [
        subprocess.run(["git", "rev-parse", "main~1"], cwd=repo, capture_output=True, text=True).stdout.strip()
    ]
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", repo.as_uri(), str(shallow)], check=True)
    with pytest.raises(SystemExit, match=r"shallow clone: main has 1 of the 2 commits.*git fetch --unshallow"):
        history_commits(shallow, "main", 2)


@pytest.mark.slow  # an asv-managed virtualenv (made once, kept in .asv/env), two builds, Chromium: ~30 s
def test_dashboard_history_graph_has_two_points(tmp_path):
    """``history`` over two commits, run from another directory: asv builds and installs each commit in
    its own virtualenv, publishes, and the graph page, rendered in headless Chromium, plots a series
    with a point per commit (read from flot's plot by the page's own JavaScript)."""
    _needs_browser_and_asv()
    repo = _two_commit_repo(tmp_path / "repo")
    shot = tmp_path / "history.png"
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "asv_dashboard.py"), "history", "--repo", str(repo), "--commits", "2",
         "--bench", r"bench_layers\.Relu\.time_forward(?!_)", "--quick", "--check", "--screenshot", str(shot),
         "--env-dir", str(ROOT / ".asv" / "env"), "--results-dir", str(tmp_path / "results"),
         "--html-dir", str(tmp_path / "html")],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["commits"] == 2
    check = found["check"]
    assert check["graph"] == "bench_layers.Relu.time_forward" and check["canvases"] >= 2
    assert check["published_points"] == 2 and check["max_points"] == 2
    assert shot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # asv, npm and headless Chromium: about 25 s
def test_dashboard_renders_in_headless_chromium(tmp_path):
    _needs_browser_and_asv()
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
