"""Command line: ``python -m fastlayers {train, predict, gradcheck, bench, tune, warmup, info}``."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import sys
import time

import numpy as np

from . import _gemm
from ._files import atomic_write
from ._info import format_info, info
from ._table import CASES

#: Learning rates that train the default two-layer net on digits well, per optimizer.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "rmsprop": 0.005, "adam": 0.005}


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes sizes like 50 or 100,50, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


#: the options that describe a training run: a checkpoint keeps them, and ``--resume`` takes them
#: from it (given again, they must agree); ``--epochs`` may be raised, ``--checkpoint-every`` changed
RUN_OPTIONS = ("dataset", "data_dir", "net", "hidden", "activation", "optimizer", "dropout", "batchnorm", "lr",
               "batch_size", "seed", "dtype", "backend")  # fmt: skip


def _given_options(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv) -> set[str]:
    """The ``train`` options given on the command line (not left at their defaults): ``argv`` parsed
    again with every default of ``sub`` replaced by a marker."""
    marker = object()
    saved = [(action, action.default) for action in sub._actions]
    try:
        for action, _ in saved:
            action.default = marker
        again = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return {dest for dest, value in vars(again).items() if value is not marker}


def _option_text(dest: str, value) -> str:
    flag = "--" + dest.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"{flag} left at its default"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"{flag} {value}"


def _run_options(args) -> dict:
    """The run's options as plain values (what a checkpoint keeps)."""
    out = {dest: getattr(args, dest) for dest in RUN_OPTIONS}
    out["data_dir"] = None if args.data_dir is None else os.path.abspath(args.data_dir)
    out["epochs"] = args.epochs
    out["checkpoint_every"] = args.checkpoint_every
    return out


def _apply_resume(parser: argparse.ArgumentParser, args, given: set[str]) -> None:
    """``--resume FILE``: the run's options from the checkpoint, after checking that the options given
    again agree with them; ``args.resume`` becomes the loaded checkpoint."""
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(args.resume)
    except CheckpointError as exc:
        parser.error(f"--resume {exc}")
    saved = ckpt.options
    dask_run = ckpt.meta["run"].get("trainer") == "fastlayers.dask.fit"
    if dask_run != bool(args.scheduler):
        parser.error(
            f"--resume {args.resume}: a checkpoint of a Dask run continues on Dask: give --scheduler"
            if dask_run
            else f"--resume {args.resume}: an in-process run continues in process: leave out --scheduler"
        )
    if not all(dest in saved for dest in RUN_OPTIONS):
        parser.error(
            f"--resume {args.resume}: this checkpoint was not written by the command line (it keeps no run "
            "options); continue it from code with fastlayers.train.fit(..., resume=...)"
        )
    mine = _run_options(args)
    differ = [
        f"{_option_text(dest, mine[dest])} (the checkpoint has {_option_text(dest, saved[dest])})"
        for dest in RUN_OPTIONS
        if dest in given and mine[dest] != saved[dest]
    ]
    if differ:
        parser.error(f"--resume {args.resume}: options that contradict the checkpoint: {'; '.join(differ)}")
    for dest in RUN_OPTIONS:
        setattr(args, dest, saved[dest])
    done = ckpt.epochs_done
    if "epochs" in given:
        if args.epochs < done:
            parser.error(f"--epochs {args.epochs}: the checkpoint {args.resume} has already finished {done} epochs")
    else:
        args.epochs = max(saved["epochs"], done)
    if "checkpoint_every" not in given:
        args.checkpoint_every = saved.get("checkpoint_every")
    if args.checkpoint is None:
        args.checkpoint = args.resume  # carry on checkpointing into the same file
    args.resume = ckpt


def _check_writable_file(parser: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    from ._files import check_writable

    if path is not None:
        problem = check_writable(path, flag)
        if problem:
            parser.error(problem)


def _check_train_args(parser: argparse.ArgumentParser, args, given: set[str] | None = None) -> None:
    """Every mistake on the command line, found before any data is loaded or any epoch run."""
    if args.compare and (args.checkpoint or args.resume):
        parser.error("--checkpoint and --resume train one backend: leave out --compare")
    if args.scheduler and args.checkpoint_every:
        parser.error("--checkpoint-every: on Dask (--scheduler) an epoch is one graph; checkpoints come at its end")
    if args.checkpoint_every is not None and not (args.checkpoint or args.resume):
        parser.error("--checkpoint-every needs --checkpoint FILE (or --resume FILE)")
    if args.resume:
        _apply_resume(parser, args, given or set())
    _check_writable_file(parser, "--save", args.save)
    _check_writable_file(parser, "--checkpoint", args.checkpoint)
    resumed = args.resume.path if args.resume else None
    if args.checkpoint and os.path.exists(args.checkpoint) and args.checkpoint != resumed:
        from .checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(args.checkpoint)
        except CheckpointError:
            parser.error(
                f"--checkpoint {args.checkpoint}: the file exists and is not a fastlayers checkpoint; "
                "refusing to overwrite it"
            )
    if (args.dropout or args.batchnorm) and args.net != "multi":
        parser.error(f"--dropout and --batchnorm go with --net multi, not --net {args.net}")
    if args.net in ("two", "convnet", "deep") and len(args.hidden) != 1:
        parser.error(
            f"--net {args.net} has one hidden layer, got --hidden {','.join(map(str, args.hidden))} (use --net multi)"
        )
    if args.dataset == "mnist":
        if args.data_dir is None:
            parser.error("--dataset mnist needs --data-dir DIR holding the four IDX files (MNIST or Fashion-MNIST)")
        if not os.path.isdir(args.data_dir):
            parser.error(f"--data-dir {args.data_dir}: no such directory")
    if args.plot:
        _check_writable_file(parser, "--plot", args.plot)
        if not args.plot.lower().endswith((".png", ".pdf", ".svg")):
            parser.error(f"--plot {args.plot}: the file name must end in .png, .pdf or .svg")


def _load(args):
    from .datasets import load_digits, load_mnist

    dtype = np.dtype(args.dtype)
    flatten = args.net not in ("convnet", "deep")  # the convnets take images (N, 1, H, W)
    if args.dataset == "digits":
        return load_digits(seed=args.seed, dtype=dtype, flatten=flatten)
    if args.data_dir is None:
        raise SystemExit("--dataset mnist needs --data-dir DIR holding the four IDX files (MNIST or Fashion-MNIST)")
    try:
        return load_mnist(args.data_dir, dtype=dtype, flatten=flatten)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


def _progress_factory(enabled: bool):
    """One bar over the epochs; tqdm hides it by itself when stderr is not a terminal (a log file,
    a pipe), so piped logs hold only the per-epoch lines."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print("(tqdm not installed: no progress bar; pip install 'fastlayers[train]')", file=sys.stderr)
        return None
    return lambda it, desc: tqdm(it, desc=desc, unit="epoch", disable=None, leave=True, dynamic_ncols=True)


def _compile_notice(args) -> None:
    """Say so when the kernels will be compiled (a cold cache) rather than loaded."""
    if args.backend != "numba" and not args.compare:
        return
    from ._kernels import _numba, affine, dense, loss

    # kernels of every training run: the last Affine layer's bias add and the loss when it walks its
    # layers, the whole-net gradient when a plan serves it (dense nets at small sizes)
    kernels = (affine.bias_add, loss.softmax_xent_labels, dense.net_gradient)
    if all(_numba.is_cached(k.serial) is False for k in kernels):
        print(
            "compiling the kernels this run uses (first run with this version: a few seconds; cached afterwards)",
            flush=True,
        )


def _build(args, data):
    """The net the options describe, for ``data`` (as ``_load`` returns it)."""
    from .train import build_net

    (x_train, t_train), (x_test, t_test) = data
    n_classes = int(max(t_train.max(), t_test.max())) + 1
    size = x_train.shape[1:] if args.net in ("convnet", "deep") else x_train.shape[1]
    return build_net(args.net, size, args.hidden, n_classes, args.activation, x_train.dtype, args.seed,
                     args.dropout, args.batchnorm)  # fmt: skip


def _train_once(args, backend: str, data, progress, quiet: bool = False, keep: dict | None = None):
    from .train import OPTIMIZERS, fit

    (x_train, t_train), (x_test, t_test) = data
    net = _build(args, data)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    optimizer = OPTIMIZERS[args.optimizer](lr)
    if keep is not None:
        keep["net"] = net
    if not args.resume:
        np.random.seed(args.seed)  # noqa: NPY002 - the dropout layers draw their keys from the global generator

    def report(s):
        if not quiet:
            print(
                f"[{backend}] epoch {s.epoch:3d}  loss {s.loss:.4f}  train acc {s.train_acc:.4f}  "
                f"test acc {s.test_acc:.4f}  {s.examples_per_s:,.0f} examples/s",
                flush=True,
            )

    return fit(net, optimizer, (x_train, t_train), (x_test, t_test), args.epochs, args.batch_size, args.seed,
               backend=backend, progress=progress, on_epoch=report, checkpoint=args.checkpoint,
               checkpoint_every=args.checkpoint_every, resume=args.resume, options=_run_options(args))  # fmt: skip


def _plot(history, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastlayers[train]'") from None
    epochs = [e.epoch for e in history.epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [e.loss for e in history.epochs], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax2.plot(epochs, [e.train_acc for e in history.epochs], marker="o", label="train")
    ax2.plot(epochs, [e.test_acc for e in history.epochs], marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=100, format=os.path.splitext(path)[1][1:].lower()))
    plt.close(fig)
    print(f"plot written to {path}")


def cmd_train(args) -> int:
    from .checkpoint import CheckpointError
    from .train import Interrupted

    try:
        return _train_on_dask(args) if args.scheduler else _train(args)
    except CheckpointError as exc:  # a checkpoint that does not fit the run (most are caught before)
        print(f"python -m fastlayers train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        where = f"at epoch {stop.epoch}, step {stop.step}"
        if stop.checkpoint:
            print(f"interrupted by {name} {where}: checkpoint written to {stop.checkpoint}; continue with: "
                  f"python -m fastlayers train --resume {stop.checkpoint}", file=sys.stderr, flush=True)  # fmt: skip
        else:
            print(f"interrupted by {name} {where}: nothing saved (give --checkpoint FILE to be able to resume)",
                  file=sys.stderr, flush=True)  # fmt: skip
        return 128 + stop.signum
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C
        print("interrupted (SIGINT): stopped; files already written are complete", file=sys.stderr, flush=True)
        return 130


def _train(args) -> int:
    start = time.perf_counter()
    data = _load(args)
    (x_train, _), (x_test, _) = data
    shape = f"{x_train.shape[1]} features" if x_train.ndim == 2 else f"{'x'.join(map(str, x_train.shape[1:]))} images"
    print(
        f"data: {args.dataset}, {len(x_train)} train / {len(x_test)} test, {shape}, {x_train.dtype}; "
        f"net: {args.net} {args.hidden} {args.activation}"
        + (f", dropout {args.dropout}" if args.dropout else "")
        + (", batch norm" if args.batchnorm else "")
        + f"; optimizer: {args.optimizer}; "
        f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}"
    )
    if args.resume:
        pos = args.resume.position
        print(
            f"resuming {args.resume.path}: {args.resume.epochs_done} epochs done, epoch {pos['epoch']} at step "
            f"{pos['step']}" + (f"; checkpoints to {args.checkpoint}" if args.checkpoint else "")
        )
    elif args.checkpoint:
        every = f" and every {args.checkpoint_every} steps" if args.checkpoint_every else ""
        print(f"checkpoints to {args.checkpoint} at the end of every epoch{every}")
    _compile_notice(args)
    backends = ["numba", "numpy"] if args.compare else [args.backend]
    histories = {}
    kept: dict = {}
    for backend in backends:
        keep = kept if backend == backends[0] else None
        histories[backend] = _train_once(args, backend, data, _progress_factory(not args.no_progress), keep=keep)
    if args.save:
        kept["net"].save_params(args.save)
        print(f"parameters written to {args.save} (python -m fastlayers predict --params {args.save} ...)")
    main = histories[backends[0]]
    last = main.epochs[-1]
    print(
        f"done: test accuracy {last.test_acc:.4f}, train accuracy {last.train_acc:.4f}, final loss {last.loss:.4f}; "
        f"training {main.train_seconds:.2f} s on {backends[0]}, total {time.perf_counter() - start:.2f} s"
    )
    if args.compare:
        fast, ref = histories["numba"], histories["numpy"]
        # the first epoch includes loading compiled kernels: compare the median epoch
        t_fast = float(np.median([e.seconds for e in fast.epochs]))
        t_ref = float(np.median([e.seconds for e in ref.epochs]))
        print(
            f"compare: median epoch {t_fast * 1e3:.1f} ms (numba) vs {t_ref * 1e3:.1f} ms (numpy reference path): "
            f"speed-up {t_ref / t_fast:.2f}x; test accuracy {fast.epochs[-1].test_acc:.4f} vs "
            f"{ref.epochs[-1].test_acc:.4f}"
        )
    if args.compare:
        _compare_steps(args, data[0][0], data[0][1])
    if args.plot:
        _plot(main, args.plot)
    return 0


def _compare_steps(args, x_train: np.ndarray, t_train: np.ndarray) -> None:
    """One SGD step of the two-layer net at this run's sizes, timed the way a user would otherwise
    write it: fastlayers, idiomatic NumPy (``x @ W1 + b1``, ``np.maximum``, ...) and PyTorch eager
    (when installed), each in blocks of its own; medians over the blocks."""
    if args.net != "two":
        print("compare: the idiomatic NumPy and PyTorch steps are written for the two-layer net (--net two)")
        return
    from ._table import CASES

    case = CASES["step"]
    n = min(args.batch_size, len(x_train))
    shape = (n, x_train.shape[1], args.hidden[0], int(t_train.max()) + 1)
    inputs = case.inputs(shape, x_train.dtype, np.random.default_rng(0))
    inputs["x"][...] = x_train[:n]
    inputs["t"] = t_train[:n].astype(np.int64)
    step = case.calls(case.build(inputs), inputs)[2]
    times = {"fastlayers": _median_call(step), "idiomatic NumPy": _median_call(lambda: case.numpy(inputs))}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        times["PyTorch eager"] = _median_call(case.torch(torch, inputs)[2])
    ours = times["fastlayers"]
    parts = [f"{name} {t * 1e6:.1f} us ({ours / t:.2f}x)" for name, t in times.items() if name != "fastlayers"]
    print(
        f"compare: one SGD step at batch {n} ({'x'.join(map(str, shape[1:]))}, {x_train.dtype}): fastlayers "
        f"{ours * 1e6:.1f} us; " + "; ".join(parts) + " (fastlayers' time / theirs: below 1, fastlayers is faster)."
        " The speed-up above is against fastlayers' own NumPy reference path, written for clarity, not speed."
    )


def _median_call(call, blocks: int = 7, seconds: float = 0.05) -> float:
    """Median seconds per call of ``call`` over ``blocks`` blocks of about ``seconds`` each."""
    from .bench import _batch_size

    calls = _batch_size(call, seconds)
    per_call = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_call.append((time.perf_counter() - start) / calls)
    return float(np.median(per_call))


def _train_on_dask(args) -> int:
    """``train --scheduler``: the same net and optimizer, trained by ``fastlayers.dask.fit``."""
    if args.compare or args.backend != "numba":
        raise SystemExit("error: --scheduler trains on the numba backend; leave out --compare and --backend")
    try:
        from . import dask as fl_dask
    except ImportError as exc:
        raise SystemExit(f"error: {exc}") from None
    from .train import OPTIMIZERS

    data = _load(args)
    net = _build(args, data)
    optimizer = OPTIMIZERS[args.optimizer](args.lr if args.lr is not None else DEFAULT_LR[args.optimizer])
    if args.resume:
        print(f"resuming {args.resume.path}: {args.resume.epochs_done} epochs done; checkpoints to {args.checkpoint}")
    code = fl_dask.cli_train(args, data, net, optimizer, options=_run_options(args))
    if code == 0 and args.save:
        net.save_params(args.save)
        print(f"parameters written to {args.save}")
    return code


def cmd_predict(args) -> int:
    """``predict``: the net of these options with the parameters of ``--params``, on the test split
    (in process, or on a Dask cluster with ``--scheduler``): its accuracy, and its predicted classes
    written to ``--out`` when given."""
    data = _load(args)
    (_, _), (x_test, t_test) = data
    net = _build(args, data)
    try:
        net.load_params(args.params)
    except FileNotFoundError:
        args.parser.error(f"--params {args.params}: no such file")
    except IsADirectoryError:
        args.parser.error(f"--params {args.params}: is a folder, not a parameter file")
    except ValueError as exc:  # parameters of another net
        args.parser.error(f"--params {exc} (give predict the --net/--hidden/--dataset options used to train)")
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError) as exc:
        # what unpickling a damaged or foreign file raises
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        args.parser.error(
            f"--params {args.params}: not a readable parameter file (damaged or of another format: {why})"
        )
    start = time.perf_counter()
    if args.scheduler:
        try:
            from . import dask as fl_dask
        except ImportError as exc:
            raise SystemExit(f"error: {exc}") from None
        import dask.array as da

        try:
            client, cluster = fl_dask.connect(args.scheduler)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise SystemExit(f"error: {exc}") from None
        try:
            X = da.from_array(x_test, chunks=(max(1, len(x_test) // 8),) + x_test.shape[1:])
            scores = fl_dask.predict(net, X).compute()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        where = f"on {args.scheduler}"
    else:
        scores = net.predict(x_test)
        where = "in process"
    seconds = time.perf_counter() - start
    labels = scores.argmax(axis=1)
    accuracy = float(np.mean(labels == t_test))
    print(f"predict: {len(x_test)} test rows {where} in {seconds:.3f} s; accuracy {accuracy:.4f}")
    if args.out:
        atomic_write(args.out, lambda fh: np.save(fh, labels))
        print(f"predicted classes written to {args.out}")
    return 0


def cmd_gradcheck(args) -> int:
    from .nets import MultiLayerNet, TwoLayerNet, gradient_check

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, 20))
    t = rng.integers(0, 5, args.batch)
    nets = {
        "TwoLayerNet(20, 10, 5)": TwoLayerNet(20, 10, 5, weight_init_std=0.5, seed=args.seed),
        "MultiLayerNet(20, [10, 8], 5, relu)": MultiLayerNet(20, [10, 8], 5, seed=args.seed),
        "MultiLayerNet(20, [10, 8], 5, sigmoid)": MultiLayerNet(20, [10, 8], 5, "sigmoid", "sigmoid", seed=args.seed),
    }
    worst = 0.0
    for name, net in nets.items():
        diffs = gradient_check(net, x, t)
        print(name)
        for key, diff in diffs.items():
            print(f"  {key}: {diff:.3e}")
        worst = max(worst, *diffs.values())
    ok = worst < 1e-6
    print(f"worst mean absolute difference {worst:.3e}: {'OK' if ok else 'TOO LARGE'}")
    return 0 if ok else 1


def _blas_line(blas: list[dict]) -> str:
    return "; ".join(
        " ".join(str(d[k]) for k in ("internal_api", "version") if d.get(k))
        + (f" ({d['num_threads']} threads, {d.get('threading_layer')})" if d.get("num_threads") else "")
        for d in blas
    )


def _gemm_line(gemm: dict) -> str:
    by_library: dict[str, list[str]] = {}
    for key, name in gemm["choice"].items():
        by_library.setdefault(name, []).append(key)
    if len(by_library) == 1:
        return f"{next(iter(by_library))} for every product, chosen by {gemm['source']}"
    parts = "; ".join(f"{name} for {', '.join(keys)}" for name, keys in by_library.items())
    return f"{parts}, chosen by {gemm['source']}"


def cmd_bench(args) -> int:
    from . import bench

    def report(done: int, total: int, layer: str, shape: tuple) -> None:
        size = "x".join(map(str, shape))
        print(f"bench: row {done + 1}/{total}: {layer} {size} ...", file=sys.stderr, flush=True)

    machine = info()
    header = (
        f"CPU: {machine['cpu']} ({machine['cpu_count']} logical cores); BLAS: {_blas_line(machine['blas'])}; "
        f"numba {machine['numba']}, threading layer {machine['threading_layer']}, {machine['threads_in_use']} threads\n"
        f"GEMM: {_gemm_line(machine['gemm'])} (installed: {', '.join(machine['gemm_libraries'])})"
    )
    if args.json != "-":
        print(header, flush=True)
    rows = bench.run(args.dtype, args.layers, args.sizes, report=report, torch_compile=not args.no_torch_compile)
    if args.json is not None:
        text = json.dumps({"machine": machine, "rows": bench.as_dicts(rows)}, indent=2)
        if args.json == "-":
            print(text)
        else:
            atomic_write(args.json, lambda fh: fh.write((text + "\n").encode()))
            print(f"JSON written to {args.json}")
    if args.json != "-":
        print(bench.format_table(rows))
        print(
            "times: medians of n batches, forward+backward through each API (step rows: gradient and update;"
            " conv_forward: the forward pass alone); fl range: fastlayers' fastest and slowest batch; fl/x below 1:"
            " fastlayers is faster; GEMM rate: the products' FLOPs at the large-product rate of this run"
            f" ({rows[0].gemm_gflops if rows and rows[0].gemm_gflops else 0:.0f} GFLOP/s when measured), %GEMM:"
            " the achieved share of it"
        )
    return 0


def cmd_warmup(args) -> int:
    from ._kernels import _numba
    from ._table import warmup

    start = time.perf_counter()
    times = warmup(args.dtypes)
    total = time.perf_counter() - start
    for name, seconds in times.items():
        print(f"{name}: {seconds:.1f} s")
    print(
        f"{len(_numba.COMPILED)} compiled functions in {total:.1f} s (cache: {'on' if _numba.CACHE_ENABLED else 'off'})"
    )
    return 0


def cmd_tune(args) -> int:
    data = _gemm.tune(args.seconds)
    libraries = sorted({name for times in data["seconds"].values() for name in times}, key=_gemm.LIBRARIES.index)
    print(
        f"{'class/dtype, then its shapes (N x D x M)':<40}" + "".join(f"{name:>12}" for name in libraries) + "  chosen"
    )
    for key, times in data["seconds"].items():
        cells = "".join(f"{times[n] * 1e6:>10.1f}us" if n in times else f"{'-':>12}" for n in libraries)
        if key in data["choice"]:
            print(f"{key:<40}{cells}  {data['choice'][key]}")
        else:
            print(f"{'  ' + key.rsplit('/', 1)[1]:<40}{cells}")
    print("affine shapes: the three products of an Affine forward+backward; forward ones: x @ W alone")
    print(f"choice written to {_gemm.cache_file()} (FASTLAYERS_GEMM=<library> overrides it)")
    return 0


def cmd_info(args) -> int:
    if args.scheduler:
        from .dask import cli_info

        workers = cli_info(args.scheduler)
        if args.json:
            print(json.dumps(workers, indent=2))
        for address, data in ({} if args.json else workers).items():
            print(f"== worker {address}\n{format_info(data)}")
        return 0
    data = info(kernels=args.kernels)
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line on stderr (``prog: error: message``) and exit 2,
    without the usage block (``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (argparse's ArgumentDefaultsHelpFormatter shows it only
    for options with a help text, and shows None and False too)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = _Parser(
        prog="python -m fastlayers",
        description="fastlayers: the classic Deep Learning from Scratch layers on parallel Numba kernels.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"fastlayers {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,predict,gradcheck,bench,tune,warmup,info}"
    )

    def add(name: str, help: str):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", formatter_class=_Help)

    p = add("train", "train a network and report accuracy and speed")
    train_actions = p._actions
    p.add_argument(
        "--dataset", choices=["digits", "mnist"], default="digits", help="scikit-learn's 8x8 digits, or IDX files"
    )
    p.add_argument("--data-dir", help="directory with MNIST-format IDX files (MNIST or Fashion-MNIST)")
    p.add_argument(
        "--net",
        choices=["two", "multi", "convnet", "deep"],
        default="two",
        help="TwoLayerNet, MultiLayerNet, SimpleConvNet or DeepConvNet (the book's chapter 8 net)",
    )
    p.add_argument("--hidden", type=_hidden, default="50", help="hidden sizes, e.g. 50 or 100,50")
    p.add_argument("--activation", choices=["relu", "sigmoid"], default="relu", help="hidden activation (multi)")
    p.add_argument(
        "--optimizer",
        choices=["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"],
        default="adam",
        help="update rule",
    )
    p.add_argument(
        "--dropout", type=_ratio, default=0.0, metavar="RATIO", help="dropout after each hidden layer (multi)"
    )
    p.add_argument("--batchnorm", action="store_true", help="batch normalization before each activation (multi)")
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate (by default 0.1 for sgd, 0.05 for momentum and adagrad, 0.005 for adam)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="examples per step")
    p.add_argument("--epochs", type=_positive_int, default=30, help="passes over the training set")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the weights, the split, the batches and the dropout masks"
    )
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of data and weights")
    p.add_argument("--backend", choices=["numba", "numpy"], default="numba", help="compiled kernels or NumPy")
    p.add_argument("--compare", action="store_true", help="train on both backends and report the speed-up")
    p.add_argument("--plot", metavar="FILE.png", help="write loss and accuracy curves")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--scheduler",
        metavar="local:N|tcp://HOST:PORT",
        help="train data-parallel on Dask: a new local cluster of N workers, or an existing scheduler",
    )
    p.add_argument("--save", metavar="FILE.pkl", help="write the trained parameters (for predict)")
    p.add_argument(
        "--checkpoint",
        metavar="FILE.npz",
        help="write a checkpoint (parameters, optimizer, random states, position, history) at the end of every "
        "epoch and on Ctrl-C or SIGTERM, atomically",
    )
    p.add_argument(
        "--checkpoint-every", type=_positive_int, metavar="STEPS", help="also write the checkpoint every STEPS steps"
    )
    p.add_argument(
        "--resume",
        metavar="FILE.npz",
        help="continue the run of a checkpoint (its options; --epochs may be raised); checkpoints go on to it",
    )
    p.set_defaults(func=cmd_train)

    p = add("predict", "load trained parameters and predict the test split (in process or on Dask)")
    p.add_argument("--params", required=True, metavar="FILE.pkl", help="parameters written by train --save")
    p.add_argument("--out", metavar="FILE.npy", help="write the predicted classes")
    for action in train_actions:
        if action.dest in ("dataset", "data_dir", "net", "hidden", "activation", "dropout", "batchnorm", "seed",
                           "dtype", "scheduler"):  # fmt: skip
            p._add_action(action)
    p.set_defaults(func=cmd_predict, parser=p)

    p = add("gradcheck", "compare backprop with numerical gradients on small nets")
    p.add_argument("--seed", type=int, default=0, help="seed of the nets and the batch")
    p.add_argument("--batch", type=_positive_int, default=4, help="examples in the batch")
    p.set_defaults(func=cmd_gradcheck)

    p = add("bench", "time each layer against the reference, PyTorch and the hardware limit")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype timed")
    p.add_argument(
        "--layers",
        nargs="+",
        choices=list(CASES),
        help="rows to time (all by default)",
    )
    p.add_argument("--sizes", choices=["small", "all"], default="all", help="small: the classic sizes only")
    p.add_argument(
        "--no-torch-compile", action="store_true", help="skip torch.compile in the step rows (it compiles for minutes)"
    )
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write JSON (to stdout without FILE)")
    p.set_defaults(func=cmd_bench)

    p = add("warmup", "compile every kernel now (or load it from the cache) and time it")
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "float64"],
        default=["float32", "float64"],
        help="dtypes to compile for",
    )
    p.set_defaults(func=cmd_warmup)

    p = add("tune", "time every installed GEMM library here and keep the fastest per size class")
    p.add_argument("--seconds", type=float, default=0.3, help="time spent per library, size class and dtype")
    p.set_defaults(func=cmd_tune)

    p = add("info", "versions, threading layer, threads, BLAS, GEMM choice, cache")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--kernels", action="store_true", help="load Numba and the kernels: threading layer, thresholds, cache misses"
    )
    p.add_argument("--scheduler", metavar="local:N|tcp://HOST:PORT", help="report every worker of a Dask cluster")
    p.set_defaults(func=cmd_info)

    args = parser.parse_args(argv)
    if args.func is cmd_train:
        given = _given_options(parser, sub.choices["train"], argv) if args.resume else set()
        _check_train_args(sub.choices["train"], args, given)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
