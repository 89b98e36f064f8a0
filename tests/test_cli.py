"""The command line end to end, on short runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastlayers.__main__ import main

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


def test_train_errors(tmp_path):
    res = run("train", "--dataset", "mnist")
    assert res.returncode != 0 and "--data-dir" in res.stderr
    res = run("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"))
    assert res.returncode != 0 and "does not exist" in res.stderr
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "0"])
    with pytest.raises(ValueError, match="--net two has exactly one hidden layer"):
        main(["train", "--hidden", "5,5", "--epochs", "1", "--no-progress"])


def test_gradcheck_command():
    res = run("gradcheck")
    assert res.returncode == 0, res.stderr
    assert "TwoLayerNet(20, 10, 5)" in res.stdout and "W1:" in res.stdout and res.stdout.rstrip().endswith("OK")


def test_info_command():
    res = run("info", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["threading_layer"] in ("tbb", "omp", "workqueue")
    assert data["numba_num_threads"] >= 1 and data["backend"] == "numba"


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


def test_warmup_command():
    res = run("warmup", "--dtypes", "float32")
    assert res.returncode == 0, res.stderr
    assert "float32:" in res.stdout and "compiled functions" in res.stdout
