"""Training that survives, end to end in real processes: writers killed with SIGKILL mid-save leave
a whole file (the old one or the new one); ``train`` killed at random moments and resumed ends with
the parameters of the run never interrupted, bit for bit, for every net of the CLI and both dtypes;
Ctrl-C and SIGTERM write a checkpoint, say how to resume in one line and exit 130 / 143."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fastlayers.checkpoint import load_checkpoint
from fastlayers.nets._params import load_param_file

pytestmark = pytest.mark.slow

RNG = random.Random(20261206)  # the kill moments: random, and the same in every run of the tests


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastlayers", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fastlayers.checkpoint import write_checkpoint
    from fastlayers.nets._params import save_param_file

    path, kind = sys.argv[1], sys.argv[2]
    versions = [{"W": np.full((700, 1000), float(v)), "b": np.full(1000, float(v))} for v in (1, 2)]
    meta = {"net": {}, "optimizer": {}, "run": {}, "position": {}, "batch_rng": {}, "np_random": {},
            "history": []}

    def save(params):
        if kind == "params":
            save_param_file(params, path)
        else:
            write_checkpoint(path, meta, {f"param/{k}": v for k, v in params.items()})

    save(versions[0])
    print("ready", flush=True)
    i = 1
    while True:
        save(versions[i % 2])
        i += 1
    """
)


@pytest.mark.parametrize("kind,kills", [("params", 25), ("checkpoint", 15)])
def test_a_writer_killed_mid_save_leaves_a_whole_file(kind, kills, tmp_path):
    """A process that saves 5.6 MB files in a loop (alternating all-ones and all-twos parameters) is
    killed with SIGKILL at a random moment, again and again: the file under the target's name always
    loads and holds one version whole; temporary files left behind are the writer's dot-files."""
    path = tmp_path / ("p.pkl" if kind == "params" else "ck.npz")
    seen = set()
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), kind], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(RNG.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        if kind == "params":
            data = load_param_file(path)
        else:
            data = {k.split("/", 1)[1]: v for k, v in load_checkpoint(path).arrays.items()}
        assert set(data) == {"W", "b"}
        value = float(data["W"].flat[0])
        assert value in (1.0, 2.0)
        assert np.all(data["W"] == value) and np.all(data["b"] == value)
        seen.add(value)
    assert seen == {1.0, 2.0}  # the kills landed while both versions were being written
    leftovers = [f for f in os.listdir(tmp_path) if f != path.name]
    assert all(f.startswith(f".{path.name}.") and f.endswith(".tmp") for f in leftovers), leftovers


CONFIGS = {
    "two": ["--net", "two", "--epochs", "40"],
    "multi-dropout-batchnorm": [
        "--net",
        "multi",
        "--hidden",
        "40,30",
        "--dropout",
        "0.2",
        "--batchnorm",
        "--epochs",
        "8",
    ],  # fmt: skip
    "convnet": ["--net", "convnet", "--epochs", "6"],
    "deep": ["--net", "deep", "--epochs", "4"],
}


def _stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_killed_at_random_moments_resumes_to_the_same_parameters(name, dtype, tmp_path):
    """``train --checkpoint --checkpoint-every 7`` killed with SIGKILL three times, each time at a random
    moment after it wrote a checkpoint of its own, then resumed to the end: its ``--save`` file equals
    the uninterrupted run's, bit for bit (same machine, same thread count). 8 configurations x 3 kills."""
    options = [*CONFIGS[name], "--dtype", dtype, "--no-progress"]
    ref = tmp_path / "ref.pkl"
    code, out, err = _finish(_cli("train", *options, "--save", str(ref)))
    assert code == 0, err
    ck, final = tmp_path / "ck.npz", tmp_path / "final.pkl"
    kills = 0
    while kills < 3:
        resume = (
            ["--resume", str(ck)] if ck.exists() else [*options, "--checkpoint", str(ck), "--checkpoint-every", "7"]
        )
        before = _stamp(ck)
        proc = _cli("train", *resume, "--save", str(final))
        deadline = time.monotonic() + 120
        while _stamp(ck) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(RNG.uniform(0.0, 0.04))
        if proc.poll() is not None:
            _finish(proc)
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        _finish(proc)
        kills += 1
    assert kills == 3, f"the run finished after {kills} kills; make it longer"
    code, out, err = _finish(_cli("train", "--resume", str(ck), "--save", str(final)))
    assert code == 0, err
    assert "resuming" in out
    want, got = load_param_file(ref), load_param_file(final)
    assert set(want) == set(got)
    for key in want:
        assert got[key].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert load_checkpoint(ck).epochs_done == int(CONFIGS[name][CONFIGS[name].index("--epochs") + 1])


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_write_a_checkpoint_and_say_how_to_resume(sig, code, tmp_path):
    options = ["--net", "multi", "--hidden", "30", "--dropout", "0.1", "--epochs", "25", "--no-progress"]
    ref = tmp_path / "ref.pkl"
    assert _finish(_cli("train", *options, "--save", str(ref)))[0] == 0
    ck = tmp_path / "ck.npz"
    proc = _cli("train", *options, "--checkpoint", str(ck))
    while not ck.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    rc, out, err = _finish(proc)
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"interrupted by {name} at epoch ")
    assert f"checkpoint written to {ck}; continue with: python -m fastlayers train --resume {ck}" in lines[0]
    epochs_done = load_checkpoint(ck).epochs_done
    assert epochs_done < 25
    final = tmp_path / "final.pkl"
    rc, out, err = _finish(_cli("train", "--resume", str(ck), "--save", str(final)))
    assert rc == 0, err
    want, got = load_param_file(ref), load_param_file(final)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_ctrl_c_without_a_checkpoint_says_nothing_was_saved(tmp_path):
    proc = _cli("train", "--epochs", "100000", "--no-progress")
    for line in proc.stdout:  # the first epoch's line: training has started
        if "epoch" in line and "loss" in line:
            break
    proc.send_signal(signal.SIGINT)
    rc, _, err = _finish(proc)
    assert rc == 130 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "nothing saved (give --checkpoint FILE" in err
