"""Run the scripts of "Deep Learning from Scratch" with the book's layers and with fastlayers' swapped in.

The book's repository (``oreilly-japan/deep-learning-from-scratch``) is not part of fastlayers; point
this tool at a checkout of it. It copies the checkout twice into a work folder:

- ``book``: unchanged;
- ``fastlayers``: one import line appended to ``common/layers.py`` (the layer classes fastlayers
  has), to ``common/util.py`` (``im2col``, ``col2im``), to ``common/optimizer.py`` (the six
  optimizers) and to ``ch05/layer_naive.py`` (``MulLayer``, ``AddLayer``), so every script that uses
  them runs on ours.

MNIST cannot be downloaded here, so both copies get a stand-in ``dataset/mnist.pkl`` in the format the
book's ``load_mnist`` reads (uint8 images of 784 pixels, uint8 labels): scikit-learn's 8x8 digits,
upsampled to 28x28 by nearest neighbour, 1,500 for training and 297 for testing (1,500 so that the
scripts' ``train_size / batch_size`` epochs come out whole).

Usage::

    python tools/book.py BOOK_DIR --time ch05/train_neuralnet.py --repeat 3
    python tools/book.py BOOK_DIR --run ch05/gradient_check.py
    python tools/book.py BOOK_DIR --time ch08/train_deepnet.py --repeat 1 --replace epochs=20 epochs=2

``--replace OLD NEW`` (repeatable) edits the timed script the same way in both copies, to shorten a
long run; the tool prints what it changed.

Scripts run with ``MPLBACKEND=Agg`` (``plt.show()`` does nothing) and the caller's Python.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TRAIN = 1500
SWAPS = {
    "common/layers.py": "from fastlayers import Relu, Sigmoid, Affine, SoftmaxWithLoss, Dropout, BatchNormalization, "
    "Convolution, Pooling",
    "common/optimizer.py": "from fastlayers import SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam",
    "common/util.py": "from fastlayers import im2col, col2im",
    "ch05/layer_naive.py": "from fastlayers import MulLayer, AddLayer",
}


def digits_as_mnist() -> dict:
    """scikit-learn's digits in the layout of the book's ``mnist.pkl`` (28x28 uint8 images)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = (np.arange(28) * 8) // 28  # nearest-neighbour upsampling of the 8x8 images
    images = digits.images[:, rows][:, :, rows]  # (1797, 28, 28), values 0..16
    images = np.round(images * (255 / 16)).astype(np.uint8).reshape(len(images), 784)
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    return {
        "train_img": images[:TRAIN],
        "train_label": labels[:TRAIN],
        "test_img": images[TRAIN:],
        "test_label": labels[TRAIN:],
    }


def edit(trees: dict[str, Path], script: str, replacements: list[list[str]]) -> None:
    """Apply each ``(OLD, NEW)`` of ``replacements`` to ``script`` in every copy (each OLD must occur)."""
    for tree in trees.values():
        path = Path(tree) / script
        text = path.read_text(encoding="utf-8")
        for old, new in replacements:
            if old not in text:
                raise SystemExit(f"--replace {old!r}: not in {script}")
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    for old, new in replacements:
        print(f"{script}: {old!r} replaced by {new!r} in both copies")


def prepare(book_dir: Path, work: Path) -> dict[str, Path]:
    """Two copies of the book under ``work``: ``{"book": ..., "fastlayers": ...}``."""
    book_dir = Path(book_dir)
    if not (book_dir / "common" / "layers.py").is_file():
        raise SystemExit(f"{book_dir} is not a checkout of deep-learning-from-scratch (no common/layers.py)")
    data = pickle.dumps(digits_as_mnist(), protocol=4)
    trees = {}
    for name in ("book", "fastlayers"):
        tree = Path(work) / name
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(book_dir, tree, ignore=shutil.ignore_patterns(".git", "*.pkl", "__pycache__"))
        (tree / "dataset" / "mnist.pkl").write_bytes(data)
        if name == "fastlayers":
            for rel, line in SWAPS.items():
                with open(tree / rel, "a", encoding="utf-8") as f:
                    f.write(f"\n{line}\n")
        trees[name] = tree
    return trees


def run(tree: Path, script: str, timeout: float = 900) -> tuple[str, float]:
    """Run ``script`` (e.g. ``ch05/train_neuralnet.py``) in its own folder; (stdout, seconds)."""
    path = Path(tree) / script
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, path.name], cwd=path.parent, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{tree.name}/{script} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("book_dir", type=Path, help="a checkout of oreilly-japan/deep-learning-from-scratch")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fastlayers-book"), help="where the copies go")
    parser.add_argument("--run", metavar="SCRIPT", help="run SCRIPT in both copies and print its output")
    parser.add_argument("--time", metavar="SCRIPT", help="time SCRIPT in both copies, alternating")
    parser.add_argument("--repeat", type=int, default=3, help="runs per copy for --time")
    parser.add_argument("--replace", action="append", default=[], nargs=2, metavar=("OLD", "NEW"),
                        help="edit the --time/--run script in both copies (e.g. to shorten a run)")  # fmt: skip
    args = parser.parse_args(argv)
    trees = prepare(args.book_dir, args.work)
    if args.replace:
        edit(trees, args.time or args.run, args.replace)
    if args.run:
        for name, tree in trees.items():
            out, sec = run(tree, args.run)
            print(f"--- {name} ({sec:.1f} s)\n{out}")
    if args.time:
        times: dict[str, list[float]] = {name: [] for name in trees}
        run(trees["fastlayers"], args.time)  # compiles what is not cached yet
        for _ in range(args.repeat):
            for name, tree in trees.items():  # alternated, whole processes
                times[name].append(run(tree, args.time)[1])
        med = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            print(f"{name:10s} median {med[name]:.2f} s  runs {', '.join(f'{v:.2f}' for v in t)}")
        print(f"ratio fastlayers/book {med['fastlayers'] / med['book']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
