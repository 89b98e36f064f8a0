"""Publish the asv dashboard so that it works offline, and check it in a real (headless) browser.

asv 0.6 writes an ``index.html`` that loads jQuery, flot, bootstrap and three small plugins from
CDNs; on a machine without internet access the page shows only "external dependencies failed to
load". ``vendor`` fetches the same libraries through npm (``npm pack``, the npm client's own
registry) into a cache, copies them next to the page and points the page at the copies.

Usage (from the repository root)::

    python tools/asv_dashboard.py vendor [--html-dir .asv/html]
    python tools/asv_dashboard.py check [--html-dir .asv/html] [--screenshot dashboard.png]
    python tools/asv_dashboard.py quick [--screenshot dashboard.png]   # run a small subset, publish,
                                                                       # vendor and check, in a temp dir
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
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


@contextlib.contextmanager
def serve(directory: Path):
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
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


def check(html_dir: Path, screenshot: Path | None = None) -> dict:
    """Render the dashboard's summary page and one benchmark graph in headless Chromium.

    Returns what was found; raises SystemExit when the page or the graph did not render.
    """
    index = json.loads((html_dir / "index.json").read_text())
    benchmarks = sorted(index["benchmarks"])
    if not benchmarks:
        raise SystemExit("the published results hold no benchmark")
    with_data = {p.stem for p in (html_dir / "graphs").rglob("*.json")}  # graphs/<params>/<benchmark>.json
    graph_name = next((b for b in benchmarks if b.startswith("bench_") and b in with_data), benchmarks[0])
    with tempfile.TemporaryDirectory() as profile, serve(html_dir) as url:
        summary = _browser(url, ["--dump-dom"], Path(profile))
        graph = _browser(f"{url}#{graph_name}", ["--dump-dom"], Path(profile))
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
    result = {"benchmarks": len(benchmarks), "listed": len(listed), "graph": graph_name, "canvases": canvases}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("vendor", "check"):
        p = sub.add_parser(name)
        p.add_argument("--html-dir", type=Path, default=ROOT / ".asv" / "html")
        if name == "check":
            p.add_argument("--screenshot", type=Path)
    p = sub.add_parser("quick")
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--bench", default=r"Relu\.time_forward_backward")
    p.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if args.cmd == "vendor":
        print("rewrote", ", ".join(vendor(args.html_dir)) or "nothing")
    elif args.cmd == "check":
        print(json.dumps(check(args.html_dir, args.screenshot)))
    else:
        print(json.dumps(quick(args.screenshot, args.bench, args.keep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
