"""Publish the asv dashboard so that it works offline, and check it in a real (headless) browser.

asv 0.6 writes an ``index.html`` that loads jQuery, flot, bootstrap and three small plugins from
CDNs; on a machine without internet access the page shows only "external dependencies failed to
load". ``vendor`` fetches the same libraries through npm (``npm pack``, the npm client's own
registry) into a cache, copies them next to the page and points the page at the copies.

``history`` runs the suites over the last N commits of ``main`` (or its release tags) in asv-managed
virtualenvs, skipping commits already measured, then publishes, vendors and (with ``--check``)
renders the dashboard, so that every graph is a line.

Usage (from any directory)::

    python tools/asv_dashboard.py history [--commits N | --tags] [--bench REGEX] [--check]
    python tools/asv_dashboard.py vendor [--html-dir .asv/html]
    python tools/asv_dashboard.py check [--html-dir .asv/html] [--screenshot dashboard.png] [--min-points 2]
    python tools/asv_dashboard.py serve [--html-dir .asv/html] [--port 8080]
    python tools/asv_dashboard.py quick [--screenshot dashboard.png]   # run a small subset, publish,
                                                                       # vendor and check, in a temp dir
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: file name in asv's page -> (npm package@version, path inside the package)
VENDORED = {
    "jquery-3.3.1.min.js": ("jquery@3.3.1", "package/dist/jquery.min.js"),
    "jquery.flot.min.js": ("flot@0.8.3", "package/jquery.flot.js"),
    "jquery.flot.time.min.js": ("flot@0.8.3", "package/jquery.flot.time.js"),
    "jquery.flot.selection.min.js": ("flot@0.8.3", "package/jquery.flot.selection.js"),
    "jquery.flot.categories.min.js": ("flot@0.8.3", "package/jquery.flot.categories.js"),
    "jquery.flot.orderBars.js": ("flot-orderbars@1.0.0", "package/js/jquery.flot.orderBars.js"),
    "stupidtable.min.js": ("stupid-table-plugin@1.1.3", "package/stupidtable.min.js"),
    "md5.min.js": ("blueimp-md5@2.19.0", "package/js/md5.min.js"),
    "bootstrap.min.js": ("bootstrap@3.1.1", "package/dist/js/bootstrap.min.js"),
    "bootstrap.min.css": ("bootstrap@3.1.1", "package/dist/css/bootstrap.min.css"),
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def _npm_file(spec: str, inner: str, cache: Path) -> bytes:
    cache.mkdir(parents=True, exist_ok=True)
    name = spec.replace("@", "-").replace("/", "-") + ".tgz"
    tgz = cache / name
    if not tgz.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to fetch the dashboard's JavaScript (apt-get install npm)")
        out = subprocess.run([npm, "pack", spec, "--silent"], cwd=cache, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise SystemExit(f"npm pack {spec} failed: {out.stderr[-2000:]}")
        produced = cache / out.stdout.strip().splitlines()[-1]
        produced.rename(tgz)
    with tarfile.open(tgz) as tar:
        member = tar.extractfile(inner)
        if member is None:
            raise SystemExit(f"{inner} not found in {spec}")
        return member.read()


def vendor(html_dir: Path, cache: Path | None = None) -> list[str]:
    """Copy the dashboard's external scripts and styles next to it; rewrite the pages to use them."""
    cache = cache or ROOT / ".asv" / "vendor-cache"
    (html_dir / "vendor").mkdir(exist_ok=True)
    rewritten = []
    for page in html_dir.glob("*.html"):
        text = page.read_text()

        def local(tag: re.Match) -> str:
            url = re.search(r'(src|href)="https?://[^"]*/([^/"]+)"', tag.group(0))
            if url is None or url.group(2) not in VENDORED:
                return tag.group(0)
            basename = url.group(2)
            target = html_dir / "vendor" / basename
            if not target.exists():
                target.write_bytes(_npm_file(*VENDORED[basename], cache))
            # the tag's integrity hash is the CDN build's; ours is the npm file's, hashed here
            digest = base64.b64encode(hashlib.sha384(target.read_bytes()).digest()).decode()
            new = tag.group(0).replace(url.group(0), f'{url.group(1)}="vendor/{basename}"')
            return re.sub(r'integrity="[^"]*"', f'integrity="sha384-{digest}"', new)

        new = re.sub(r"<(?:script|link)\b[^>]*>", local, text)
        if new != text:
            page.write_text(new)
            rewritten.append(page.name)
    return rewritten


#: Served as ``probe.js`` on the page ``PROBE_PAGE`` (asv's ``index.html`` with this script added):
#: once flot has drawn the benchmark's main graph, it writes what the plot holds (series and their
#: points with a value) into a ``<pre id="fastlayers-probe">``, which ``--dump-dom`` then shows.
PROBE_JS = """
(function () {
    var tries = 0;
    function report(found) {
        var pre = document.createElement("pre");
        pre.id = "fastlayers-probe";
        pre.textContent = JSON.stringify(found);
        document.body.appendChild(pre);
    }
    function look() {
        var plot = window.jQuery && window.jQuery("#main-graph").data("plot");
        var series = plot ? plot.getData() : [];
        if (series.length) {
            report({series: series.map(function (s) {
                return {label: String(s.label || ""), points: s.data.filter(function (p) {
                    return p && p[1] !== null && p[1] !== undefined && !isNaN(p[1]);
                }).length};
            })});
        } else if (++tries < 100) {
            setTimeout(look, 100);
        } else {
            report({series: [], error: "no flot plot in #main-graph"});
        }
    }
    window.addEventListener("load", function () { setTimeout(look, 0); });
})();
"""
PROBE_PAGE = "fastlayers-probe.html"


@contextlib.contextmanager
def serve(directory: Path, port: int = 0):
    """Serve ``directory`` on 127.0.0.1 (a free port unless one is given), with the probe page."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/" + PROBE_PAGE:
            page = (Path(self.directory) / "index.html").read_text()
            self._send(page.replace("</body>", '<script src="probe.js"></script></body>'), "text/html")
        elif path == "/probe.js":
            self._send(PROBE_JS, "application/javascript")
        else:
            super().do_GET()

    def _send(self, text: str, kind: str) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(url: str, extra: list[str], profile: Path) -> str:
    exe = chromium()
    if exe is None:
        raise SystemExit("no Chromium found (apt-get install chromium)")
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return out.stdout


def _published_points(html_dir: Path) -> dict[str, int]:
    """For each benchmark, the most commits with a value in one of its published graph files.

    A graph file (``graphs/<branch, machine, environment...>/<benchmark>.json``) holds one
    ``[revision, value]`` pair per commit; a parameterized benchmark's value is a list, one per
    combination of parameters, and counts when any of them is a number.
    """
    best: dict[str, int] = {}
    for path in (html_dir / "graphs").rglob("*.json"):
        try:
            pairs = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(pairs, list):
            continue
        n = 0
        for pair in pairs:
            value = pair[1] if isinstance(pair, list) and len(pair) == 2 else None
            if isinstance(value, list):
                value = next((v for v in value if v is not None), None)
            n += value is not None
        best[path.stem] = max(best.get(path.stem, 0), n)
    return best


def check(html_dir: Path, screenshot: Path | None = None, min_points: int = 1, graph_name: str | None = None) -> dict:
    """Render the dashboard's summary page and one benchmark graph in headless Chromium.

    The graph is ``graph_name``, or the published benchmark with the most commits measured (a
    ``bench_`` suite's first among equals). Its page is loaded with a probe script that reads the
    plot flot drew (the page's own data, through flot's API) and reports its series and their points.

    Returns what was found; raises SystemExit when the page or the graph did not render, or when no
    series of the graph has ``min_points`` points.
    """
    index = json.loads((html_dir / "index.json").read_text())
    benchmarks = sorted(index["benchmarks"])
    if not benchmarks:
        raise SystemExit("the published results hold no benchmark")
    published = _published_points(html_dir)
    if graph_name is None:
        graph_name = max(benchmarks, key=lambda b: (published.get(b, 0), b.startswith("bench_"), -benchmarks.index(b)))
    with tempfile.TemporaryDirectory() as profile, serve(html_dir) as url:
        summary = _browser(url, ["--dump-dom"], Path(profile))
        graph = _browser(f"{url}{PROBE_PAGE}#{graph_name}", ["--dump-dom"], Path(profile))
        if screenshot is not None:
            _browser(f"{url}#{graph_name}", ["--window-size=1400,1000", f"--screenshot={screenshot}"], Path(profile))
    problems = []
    if "failed to load" in summary or "airspeed velocity error" in summary:
        problems.append("the summary page reports JavaScript dependencies that failed to load")
    listed = [b for b in benchmarks if b in summary]
    if not listed:
        problems.append("the summary page lists no benchmark")
    canvases = len(re.findall(r'<canvas class="flot-(?:base|overlay)"', graph))
    if canvases < 2:
        problems.append(f"the graph page of {graph_name} drew no flot plot")
    probe = re.search(r'<pre id="fastlayers-probe">(.*?)</pre>', graph, re.S)
    plotted = (
        json.loads(html.unescape(probe.group(1))) if probe else {"series": [], "error": "the probe did not report"}
    )
    points = [s["points"] for s in plotted["series"]]
    if max(points, default=0) < min_points:
        problems.append(
            f"no series of the graph of {graph_name} has {min_points} points "
            f"({plotted.get('error') or f'series points: {points}'})"
        )
    result = {
        "benchmarks": len(benchmarks),
        "listed": len(listed),
        "graph": graph_name,
        "canvases": canvases,
        "published_points": published.get(graph_name, 0),
        "series": len(points),
        "max_points": max(points, default=0),
    }
    if problems:
        raise SystemExit("; ".join(problems) + f" ({result})")
    return result


def quick(screenshot: Path | None, bench: str, keep: Path | None = None) -> dict:
    """A small ``asv run -E existing`` in a temporary results directory, then publish, vendor, check."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(keep or tmp)
        conf = json.loads((ROOT / "asv.conf.json").read_text())
        conf.update(
            repo=str(ROOT),
            benchmark_dir=str(ROOT / "benchmarks"),
            results_dir=str(work / "results"),
            html_dir=str(work / "html"),
            env_dir=str(work / "env"),
            branches=["HEAD"],  # asv publish graphs only commits on the configured branches
        )
        conf_path = work / "asv.conf.json"
        conf_path.write_text(json.dumps(conf, indent=2))
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        asv = [sys.executable, "-m", "asv"]
        steps = [
            [*asv, "machine", "--yes", "--config", str(conf_path)],
            [*asv, "run", "--config", str(conf_path), "-E", f"existing:{sys.executable}", "--quick",
             "--set-commit-hash", head.stdout.strip(), "--bench", bench],
            [*asv, "publish", "--config", str(conf_path)],
        ]  # fmt: skip
        for step in steps:
            out = subprocess.run(step, cwd=ROOT, capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(step[2:4])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        vendor(work / "html")
        return check(work / "html", screenshot)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip()}")
    return out.stdout.strip()


def _resolve_branch(repo: Path, branch: str) -> str:
    """``branch``, or ``origin/<branch>`` where only the remote-tracking branch exists (a CI clone)."""
    for name in (branch, f"origin/{branch}"):
        ok = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{name}^{{commit}}"], cwd=repo, capture_output=True)
        if ok.returncode == 0:
            return name
    raise SystemExit(f"no branch {branch!r} (nor origin/{branch}) in {repo}")


def history_commits(repo: Path, branch: str, commits: int | None = None, tags: bool = False) -> list[str]:
    """The commits to measure, oldest first: the last ``commits`` on ``branch`` (first parents only,
    as asv draws the branch), or the commits of the tags reachable from it."""
    if tags:
        names = _git(repo, "tag", "--merged", branch, "--sort=creatordate").split()
        if not names:
            raise SystemExit(f"no tag is reachable from {branch}: tag the releases (git tag v0.1.0) or use --commits N")
        hashes = [_git(repo, "rev-list", "-n", "1", name) for name in names]
        return list(dict.fromkeys(hashes))
    assert commits is not None and commits >= 1
    hashes = _git(repo, "rev-list", "--first-parent", "-n", str(commits), branch).split()[::-1]
    if len(hashes) < commits and _git(repo, "rev-parse", "--is-shallow-repository") == "true":
        raise SystemExit(
            f"{repo} is a shallow clone: {branch} has {len(hashes)} of the {commits} commits asked for here. "
            f"Fetch the history first (git fetch --unshallow, or --deepen={commits}), or clone without --depth."
        )
    return hashes


def history(
    commits: int | None = 10,
    tags: bool = False,
    bench: str | None = None,
    branch: str = "main",
    repo: Path = ROOT,
    results_dir: Path | None = None,
    html_dir: Path | None = None,
    env_dir: Path | None = None,
    quick: bool = False,
    rerun: bool = False,
    check_page: bool = False,
    screenshot: Path | None = None,
) -> dict:
    """``asv run`` over the last ``commits`` commits of ``branch`` (or its tags) in asv-managed
    virtualenvs, then ``asv publish``, ``vendor`` and, with ``check_page``, ``check``.

    The run goes through a copy of the repository's ``asv.conf.json`` whose paths are absolute (so it
    works from any directory) and whose only branch is ``branch``; the results, the environments and
    the HTML default to those of ``asv.conf.json`` (``.asv/`` in the repository), so ``asv publish``,
    ``asv preview`` and ``asv continuous`` by hand see the same results. Commits with results for
    every selected benchmark on this machine are skipped (``--skip-existing``) unless ``rerun``.
    """
    repo = Path(repo).resolve()
    branch = _resolve_branch(repo, branch)
    hashes = history_commits(repo, branch, None if tags else commits, tags)
    conf = json.loads((repo / "asv.conf.json").read_text())
    base = repo
    dirs = {
        "results_dir": results_dir or base / conf["results_dir"],
        "html_dir": html_dir or base / conf["html_dir"],
        "env_dir": env_dir or base / conf["env_dir"],
    }
    conf.update({k: str(Path(v).resolve()) for k, v in dirs.items()})
    conf.update(repo=str(repo), benchmark_dir=str(repo / conf["benchmark_dir"]), branches=[branch])
    asv = [sys.executable, "-m", "asv"]
    with tempfile.TemporaryDirectory() as tmp:
        conf_path = Path(tmp) / "asv.conf.json"
        conf_path.write_text(json.dumps(conf, indent=2))
        hashfile = Path(tmp) / "commits.txt"
        hashfile.write_text("\n".join(hashes) + "\n")
        run = [*asv, "run", "--config", str(conf_path), f"HASHFILE:{hashfile}", "--show-stderr"]
        run += [] if rerun else ["--skip-existing"]
        run += ["--bench", bench] if bench else []
        run += ["--quick"] if quick else []
        machine = [*asv, "machine", "--yes", "--config", str(conf_path)]
        out = subprocess.run(machine, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
        if out.returncode != 0:
            raise SystemExit(f"asv machine failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        for step in (run, [*asv, "publish", "--config", str(conf_path)]):
            print("$", " ".join(step[2:]), flush=True)
            # asv run exits with 2 when a benchmark failed (on an old commit, a benchmark of an API it
            # did not have yet): the others are still saved and published
            out = subprocess.run(step, cwd=repo, timeout=24 * 3600, check=False)
            if out.returncode not in ((0, 2) if step is run else (0,)):
                raise SystemExit(f"{' '.join(step[2:4])} failed with exit status {out.returncode}")
    html_path = Path(conf["html_dir"])
    vendor(html_path)
    result = {"commits": len(hashes), "first": hashes[0][:12], "last": hashes[-1][:12], "html_dir": str(html_path)}
    if check_page or screenshot is not None:
        result["check"] = check(html_path, screenshot, min_points=min(len(hashes), 2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("history", help="run the suites over past commits, publish, vendor (and check)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--commits", type=int, default=10, metavar="N", help="the last N commits (default 10)")
    which.add_argument("--tags", action="store_true", help="the commits of the tags reachable from the branch")
    p.add_argument("--branch", default="main")
    p.add_argument("--bench", "-b", metavar="REGEX", help="only the benchmarks matching it (asv run --bench)")
    p.add_argument("--quick", action="store_true", help="one call per benchmark (asv run --quick): not for figures")
    p.add_argument("--rerun", action="store_true", help="measure again the commits that already have results")
    p.add_argument("--check", action="store_true", help="render it in headless Chromium (a graph with >= 2 points)")
    p.add_argument("--screenshot", type=Path, help="with --check: a PNG of the graph checked")
    p.add_argument("--repo", type=Path, default=ROOT, help="the git repository to measure (default: this one)")
    for name in ("results", "html", "env"):
        p.add_argument(f"--{name}-dir", type=Path, help=f"default: asv.conf.json's {name}_dir, in the repository")
    for name in ("vendor", "check", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--html-dir", type=Path, default=ROOT / ".asv" / "html")
        if name == "check":
            p.add_argument("--screenshot", type=Path)
            p.add_argument("--min-points", type=int, default=1, help="fail unless a series has this many points")
            p.add_argument("--graph", help="the benchmark whose graph to check (default: the most measured)")
        if name == "serve":
            p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("quick")
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--bench", default=r"Relu\.time_forward_backward")
    p.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if args.cmd == "history":
        if args.commits < 1:
            parser.error("--commits must be at least 1")
        dirs = {f"{n}_dir": getattr(args, f"{n}_dir") for n in ("results", "html", "env")}
        found = history(
            args.commits, args.tags, args.bench, args.branch, args.repo, **dirs,
            quick=args.quick, rerun=args.rerun, check_page=args.check, screenshot=args.screenshot,
        )  # fmt: skip
        print(json.dumps(found))
    elif args.cmd == "vendor":
        print("rewrote", ", ".join(vendor(args.html_dir)) or "nothing")
    elif args.cmd == "check":
        print(json.dumps(check(args.html_dir, args.screenshot, args.min_points, args.graph)))
    elif args.cmd == "serve":
        with serve(args.html_dir, args.port) as url:
            print(f"serving {args.html_dir} at {url} (Ctrl-C to stop)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    else:
        print(json.dumps(quick(args.screenshot, args.bench, args.keep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
