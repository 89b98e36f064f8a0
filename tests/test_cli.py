"""The command line end to end, on short runs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fastlayers.__main__ import main

from .conftest import compiled_only
from .test_datasets import make_mnist


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastlayers", *args], capture_output=True, text=True, timeout=timeout)


def test_train_digits_compare_and_plot(tmp_path):
    png = tmp_path / "curves.png"
    res = run("train", "--epochs", "3", "--compare", "--plot", str(png), "--no-progress")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "[numba] epoch   3" in out and "[numpy] epoch   3" in out
    assert "compare: median epoch" in out and "speed-up" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_train_mnist_format_multi_sigmoid(tmp_path, capsys):
    make_mnist(tmp_path, n_train=40, n_test=10)
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--net", "multi", "--hidden", "8,6",
                 "--activation", "sigmoid", "--optimizer", "momentum", "--epochs", "2", "--batch-size", "16",
                 "--backend", "numpy", "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "40 train / 10 test, 36 features" in out and "[numpy] epoch   2" in out


def test_train_convnet_on_digit_images(capsys):
    code = main(["train", "--net", "convnet", "--epochs", "2", "--hidden", "20", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "1437 train / 360 test, 1x8x8 images" in out and "net: convnet [20]" in out and "[numba] epoch   2" in out


def test_train_multi_with_dropout_and_batchnorm(capsys):
    code = main(["train", "--net", "multi", "--hidden", "40,20", "--dropout", "0.2", "--batchnorm", "--optimizer",
                 "rmsprop", "--epochs", "3", "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "dropout 0.2, batch norm; optimizer: rmsprop" in out
    assert float(out.split("done: test accuracy ")[1].split(",")[0]) > 0.8


@pytest.mark.slow
def test_train_convnet_reaches_097_with_the_defaults(capsys):
    """The issue's bar for ``python -m fastlayers train --net convnet`` (30 epochs of Adam, about 10 s)."""
    assert main(["train", "--net", "convnet", "--no-progress"]) == 0
    accuracy = float(capsys.readouterr().out.split("done: test accuracy ")[1].split(",")[0])
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "mnist"], "--dataset mnist needs --data-dir DIR"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir: no such directory"),
        (["--hidden", "0"], "argument --hidden: --hidden sizes must be positive, got '0'"),
        (["--hidden", "100,50"], "--net two has one hidden layer, got --hidden 100,50 (use --net multi)"),
        (["--net", "convnet", "--hidden", "100,50"], "--net convnet has one hidden layer, got --hidden 100,50"),
        (["--net", "deep", "--hidden", "100,50"], "--net deep has one hidden layer, got --hidden 100,50"),
        (["--save", "/nonexistent/p.pkl"], "--save /nonexistent/p.pkl: the folder /nonexistent does not exist"),
        (["--checkpoint", "/nonexistent/ck.npz"], "--checkpoint /nonexistent/ck.npz: the folder /nonexistent does"),
        (["--checkpoint", "/"], "--checkpoint /: is a folder, not a file"),
        (["--checkpoint", "ck.npz", "--checkpoint-every", "0"], "argument --checkpoint-every: must be >= 1, got 0"),
        (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint FILE (or --resume FILE)"),
        (["--resume", "/nonexistent/ck.npz"], "--resume /nonexistent/ck.npz: no such file"),
        (["--checkpoint", "ck.npz", "--compare"], "--checkpoint and --resume train one backend: leave out --compare"),
        (["--checkpoint", "ck.npz", "--checkpoint-every", "3", "--scheduler", "local:2"], "an epoch is one graph"),
        (["--plot", "/nonexistent/x.png"], "--plot /nonexistent/x.png: the folder /nonexistent does not exist"),
        (["--plot", "curves.txt"], "the file name must end in .png, .pdf or .svg"),
        (["--batch-size", "x"], "argument --batch-size: expected a positive integer, got 'x'"),
        (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
        (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
        (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
        (["--dropout", "1.5", "--net", "multi"], "argument --dropout: must be in [0, 1), got 1.5"),
        (["--batchnorm"], "--dropout and --batchnorm go with --net multi, not --net two"),
    ],
)
def test_train_mistakes_are_one_line_errors_before_any_work(args, message, capsys):
    """Exit 2 with one error line, no traceback, before any data is loaded."""
    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    assert exc.value.code == 2
    err = capsys.readouterr()
    last = err.err.strip().splitlines()[-1]
    assert last.startswith("python -m fastlayers train: error: ") and message in last, err.err
    assert "Traceback" not in err.err and err.out == ""  # nothing ran: no "data:" line


def _train_error(capsys, *args) -> str:
    """The one line a mistaken ``train`` prints, after checking exit 2 and that nothing ran."""
    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert "Traceback" not in err.err and err.out == ""
    lines = err.err.strip().splitlines()
    assert len(lines) == 1, err.err
    return lines[0]


def test_resume_mistakes_are_one_line_errors_and_write_nothing(tmp_path, capsys, monkeypatch):
    """--resume of a damaged, truncated or foreign file, or with options that contradict the
    checkpoint, or fewer epochs than it finished: one line, exit 2, and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ck.npz"
    assert main(["train", "--epochs", "2", "--no-progress", "--checkpoint", str(ck), "--lr", "0.01"]) == 0
    capsys.readouterr()
    good = ck.read_bytes()
    line = _train_error(capsys, "--resume", str(ck), "--lr", "0.02", "--net", "multi", "--optimizer", "adam")
    assert line.endswith(
        f"--resume {ck}: options that contradict the checkpoint: --net multi (the checkpoint has --net two); "
        "--lr 0.02 (the checkpoint has --lr 0.01)"
    )
    line = _train_error(capsys, "--resume", str(ck), "--epochs", "1")
    assert line.endswith(f"--epochs 1: the checkpoint {ck} has already finished 2 epochs")
    assert ck.read_bytes() == good
    for name, content in [("truncated.npz", good[: len(good) // 3]), ("text.npz", b"not a checkpoint")]:
        bad = tmp_path / name
        bad.write_bytes(content)
        line = _train_error(capsys, "--resume", str(bad))
        assert f"--resume {bad} is not a readable fastlayers checkpoint" in line
        assert bad.read_bytes() == content  # never overwritten by the failed attempt
    np.savez(tmp_path / "foreign.npz", x=np.zeros(2))
    assert "without fastlayers' metadata" in _train_error(capsys, "--resume", str(tmp_path / "foreign.npz"))
    (tmp_path / "notes.txt").write_text("mine")
    line = _train_error(capsys, "--checkpoint", str(tmp_path / "notes.txt"))
    assert "exists and is not a fastlayers checkpoint; refusing to overwrite it" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["ck.npz", "foreign.npz", "notes.txt", "text.npz", "truncated.npz"]


def test_resume_takes_the_options_from_the_checkpoint_and_may_train_longer(tmp_path, capsys):
    """--resume alone brings back every run option; options given again that agree are fine;
    --epochs may be raised; the result equals the longer run from the start."""
    ck, a, b = tmp_path / "ck.npz", tmp_path / "a.pkl", tmp_path / "b.pkl"
    opts = ["--net", "multi", "--hidden", "20,10", "--dropout", "0.1", "--optimizer", "nesterov", "--dtype", "float64",
            "--batch-size", "50", "--seed", "3", "--no-progress"]  # fmt: skip
    assert main(["train", *opts, "--epochs", "2", "--checkpoint", str(ck)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(ck), "--epochs", "4", "--net", "multi", "--save", str(a)]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "2 epochs done" in out and "epoch   3" in out and "epoch   1 " not in out
    assert main(["train", *opts, "--epochs", "4", "--save", str(b)]) == 0
    from fastlayers.nets._params import load_param_file

    want, got = load_param_file(b), load_param_file(a)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_train_deep_net_on_digits_save_and_predict(tmp_path):
    """--net deep: the chapter 8 net sized to the 8x8 digits (planes 8 -> 4 -> 3 -> 1), trained,
    saved, and reloaded by predict."""
    params = tmp_path / "deep.pkl"
    res = run("train", "--net", "deep", "--epochs", "3", "--no-progress", "--save", str(params))
    assert res.returncode == 0, res.stderr
    trained = float(re.search(r"done: test accuracy ([0-9.]+)", res.stdout).group(1))
    assert trained > 0.5
    res = run("predict", "--params", str(params), "--net", "deep")
    assert res.returncode == 0, res.stderr
    assert float(re.search(r"accuracy ([0-9.]+)", res.stdout).group(1)) == pytest.approx(trained, abs=1e-4)


def test_predict_with_a_damaged_parameter_file_is_one_line(tmp_path):
    bad = tmp_path / "p.pkl"
    bad.write_bytes(b"\x80\x04\x95garbage")
    res = run("predict", "--params", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"python -m fastlayers predict: error: --params {bad}: not a readable parameter file (damaged or of another "
        f"format: {res.stderr.split('format: ', 1)[1].strip()}"
    ]
    res = run("predict", "--params", str(tmp_path / "missing.pkl"))
    assert res.returncode == 2 and res.stderr.strip().endswith("missing.pkl: no such file")


def test_version_and_help_show_defaults():
    from fastlayers import __version__

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"fastlayers {__version__}"
    res = run("train", "--help")
    assert res.returncode == 0
    assert "(default: 32)" in res.stdout and "(default: adam)" in res.stdout and "``" not in res.stdout
    assert "``" not in run("--help").stdout


def test_gradcheck_command():
    res = run("gradcheck")
    assert res.returncode == 0, res.stderr
    assert "TwoLayerNet(20, 10, 5)" in res.stdout and "W1:" in res.stdout and res.stdout.rstrip().endswith("OK")


@compiled_only
def test_info_command():
    res = run("info", "--json", "--kernels")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["threading_layer"] in ("tbb", "omp", "workqueue") and data["numba_loaded"]
    assert data["numba_num_threads"] >= 1 and data["backend"] == "numba"
    table = run("info", "--kernels")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["fastlayers", data["fastlayers"]]
    assert any(line.startswith("threading_layer") and line.split()[-1] == data["threading_layer"] for line in lines)
    assert "{" not in table.stdout and "parallel from" in table.stdout  # a table, not raw dicts


@pytest.mark.slow
def test_bench_command_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    res = run("bench", "--sizes", "small", "--layers", "relu", "softmax_loss", "affine", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "relu" in res.stdout and "100x50" in res.stdout and "speed-up" in res.stdout
    data = json.loads(out.read_text())
    rows = {r["layer"]: r for r in data["rows"]}
    assert set(rows) == {"relu", "softmax_loss", "affine"}
    for row in rows.values():
        assert row["fastlayers_us"] > 0 and row["reference_us"] > 0 and row["limit_us"] > 0
    assert rows["relu"]["limit"] == "copy" and rows["relu"]["gbps"] > 0
    assert rows["affine"]["limit"] == "3 GEMMs"
    assert data["machine"]["threading_layer"] in ("tbb", "omp", "workqueue")
    # the header names the machine; every median comes with its range and its number of batches
    assert res.stdout.startswith("CPU: ") and "BLAS: " in res.stdout.splitlines()[0]
    assert data["machine"]["cpu"] and data["machine"]["blas"]
    for row in rows.values():
        assert row["numpy_us"] > 0 and row["samples"] >= 9
        for name in ("fast", "ref", "numpy", "limit"):
            low, high = row["spread_us"][name]
            assert 0 < low <= high
        low, high = row["spread_us"]["fast"]
        assert low <= row["fastlayers_us"] <= high


@pytest.mark.slow
def test_bench_step_row_against_torch_sequential():
    """The training-step row: fastlayers' TwoLayerNet gradient + SGD update, its reference and
    idiomatic NumPy; with PyTorch installed, an nn.Sequential + torch.optim.SGD doing the same."""
    from fastlayers import bench

    (row,) = bench.run("float32", ["step"], "small", torch_compile=False)
    assert row.layer == "step" and row.shape == "32x64x50x10"
    assert row.fastlayers_us > 0 and row.reference_us > 0 and row.numpy_us > 0
    if importlib.util.find_spec("torch") is not None:
        assert row.torch_us > 0 and row.vs_torch > 0


def test_warmup_command():
    res = run("warmup", "--dtypes", "float32")
    assert res.returncode == 0, res.stderr
    assert "float32:" in res.stdout and "compiled functions" in res.stdout


@compiled_only
def test_progress_is_honest_in_a_piped_log(tmp_path):
    """Piped (not a terminal): no bar fragments, one line per epoch; a cold cache says it compiles."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fastlayers", "train", "--epochs", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "compiling the kernels this run uses" in first.stdout
    assert "%|" not in first.stderr + first.stdout, "tqdm should hide itself when not writing to a terminal"
    assert first.stdout.count("[numba] epoch") == 3
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0 and "compiling" not in second.stdout


def test_bench_roofline_of_the_convolutions_and_the_deep_convnet_step():
    """The convolution rows and the convnets' steps are judged against the large-product rate measured
    in the same run: achieved GFLOP/s, its share of that rate, and the time the products' FLOPs take
    at it; the FLOPs are those of the products (DeepConvNet's counted here by hand)."""
    from fastlayers import _table, bench

    rate = bench.gemm_rate("float32", n=256, repeats=3)
    assert rate > 1e8
    inputs = _table.CASES["deep_convnet_step"].inputs((2, 1, 28, 28), np.dtype(np.float32), np.random.default_rng(0))
    per_image = [  # (output values, multiply-adds per value) of each product layer, forward
        (16 * 28 * 28, 1 * 9), (16 * 28 * 28, 16 * 9), (32 * 14 * 14, 16 * 9), (32 * 16 * 16, 32 * 9),
        (64 * 8 * 8, 32 * 9), (64 * 8 * 8, 64 * 9), (50, 64 * 4 * 4), (10, 50),
    ]  # fmt: skip
    want = 2 * 2 * sum(v * k * (2 if i == 0 else 3) for i, (v, k) in enumerate(per_image))
    assert _table.CASES["deep_convnet_step"].flops(inputs) == want
    case = _table.CASES["conv_forward"]
    shape = (3, 2, 9, 8, 4, 3, 2, 1)
    row = bench.bench_case(case, shape, np.float32, None, rate=rate)
    flops = 2 * 3 * 4 * 9 * 9 * (2 * 3 * 2)  # N * FN * OH * OW * (C * FH * FW), OW = 8 + 2 - 2 + 1
    assert row.limit == "GEMM rate" and row.gemm_gflops == pytest.approx(rate / 1e9)
    assert row.limit_us == pytest.approx(flops / rate * 1e6)
    assert row.gflops == pytest.approx(flops / row.fastlayers_us / 1e3)
    assert row.peak_fraction == pytest.approx(row.gflops / row.gemm_gflops)
    assert "GFLOP/s" in bench.format_table([row]) and "%GEMM" in bench.format_table([row])


def test_bench_reports_each_row(capsys):
    from fastlayers.__main__ import main

    assert main(["bench", "--sizes", "small", "--layers", "relu", "sigmoid"]) == 0
    err = capsys.readouterr().err
    assert "bench: row 1/2: relu 100x50" in err and "bench: row 2/2: sigmoid 100x50" in err


@pytest.mark.parametrize("net", [["--net", "two"], ["--net", "multi", "--hidden", "40,30"], ["--net", "convnet"]])
def test_train_save_then_predict(tmp_path, net):
    """``train --save`` writes the parameters; ``predict --params`` with the same net options rebuilds
    the net and gets the test accuracy train reported; ``--out`` holds the predicted classes."""
    params, out = tmp_path / "params.pkl", tmp_path / "classes.npy"
    res = run("train", "--epochs", "2", "--no-progress", "--save", str(params), *net)
    assert res.returncode == 0, res.stderr
    trained = float(re.search(r"done: test accuracy ([0-9.]+)", res.stdout).group(1))
    res = run("predict", "--params", str(params), "--out", str(out), *net)
    assert res.returncode == 0, res.stderr
    assert float(re.search(r"accuracy ([0-9.]+)", res.stdout).group(1)) == pytest.approx(trained, abs=1e-4)
    classes = np.load(out)
    assert classes.dtype.kind == "i" and classes.ndim == 1 and classes.min() >= 0 and classes.max() <= 9
    # other net options than at training: a clear error, not a traceback
    res = run("predict", "--params", str(params), "--net", "multi", "--hidden", "7")
    assert res.returncode != 0 and "error:" in res.stderr and "Traceback" not in res.stderr


def _imports_of(module: str) -> set[str]:
    """The absolute names of the modules ``fastlayers/<module>.py`` imports anywhere in its source
    (``from . import x`` counts as ``fastlayers.x``)."""
    import ast
    from pathlib import Path

    import fastlayers

    path = Path(fastlayers.__file__).parent / f"{module}.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "fastlayers" if node.level else ""
            base = ".".join(filter(None, [base, node.module]))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["dask", "_info"])
def test_no_import_cycle_with_the_command_line(module):
    """``info`` lives in ``fastlayers._info``: ``fastlayers.dask`` (which ``__main__`` imports for
    ``--scheduler``) and ``_info`` import nothing from ``fastlayers.__main__``."""
    assert "fastlayers.dask" in _imports_of("__main__") and "fastlayers._info" in _imports_of("dask")
    imports = _imports_of(module)
    assert not any(name == "fastlayers.__main__" or name.startswith("fastlayers.__main__.") for name in imports)
    import fastlayers.__main__ as cli
    from fastlayers import _info

    assert cli.info is _info.info and cli.format_info is _info.format_info


def test_bench_times_blas_entries_apart_from_ours():
    """In a row with matrix products, the reference path, idiomatic NumPy and the limit (all on
    NumPy's BLAS) and PyTorch are timed in runs of their own, never between two batches of
    fastlayers; rows without products keep them round-robin. The order of the batches is checked,
    not their times."""
    from fastlayers import _table, bench

    for name in ("affine", "two_layer", "predict", "step", "conv", "conv_forward", "deep_convnet_step"):
        assert {"ref", "numpy", "limit", "torch"} <= set(bench.apart_entries(_table.CASES[name])), name
    for name in ("relu", "softmax_loss", "pool", "dropout", "batchnorm", "nesterov"):
        assert bench.apart_entries(_table.CASES[name]) == bench.TORCH_ENTRIES, name

    log: list[str] = []
    entries = {name: ((lambda name=name: log.append(name)), None) for name in ("fast", "ref", "numpy", "torch")}
    samples = bench.interleaved_samples(entries, min_batch=0.0, rounds=4, blocks=2, apart=("ref", "numpy", "torch"))
    assert all(len(samples[name]) == 4 for name in entries)
    # one call per batch once calibrated (min_batch 0): runs of each entry, fast's between the others'
    runs = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    timed = runs[4:]  # after the calibration calls of the four entries
    assert timed == ["fast", "ref", "numpy", "torch"] * 2, runs
    log.clear()
    bench.interleaved_samples(entries, min_batch=0.0, rounds=2, blocks=1, apart=("torch",))
    runs = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert runs[4:] == ["fast", "ref", "numpy", "fast", "ref", "numpy", "torch"], runs
