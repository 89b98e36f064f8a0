"""Files a user keeps (parameters, checkpoints, predictions), written atomically.

:func:`atomic_write` writes into a temporary file in the target's own folder, flushes it and
``fsync``\\ s it, then replaces the target with one ``os.replace`` (a rename within one file system)
and ``fsync``\\ s the folder: a process killed at any moment, or a disk that fills up, leaves either
the old file or the new one under the target's name, never a mix. A temporary file left behind by a
killed writer is named ``.<target>.<random>.tmp`` and can be deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from os import PathLike
from typing import IO


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process's umask (read from
    /proc where it can be, as setting and resetting the umask is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable(path: str | PathLike, what: str) -> str | None:
    """Why ``path`` could not be written by :func:`atomic_write`, in one line, or None if it can:
    its folder must exist and be writable, and the path must not be a folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{what} {path}: the folder {folder} does not exist"
    if os.path.isdir(path):
        return f"{what} {path}: is a folder, not a file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{what} {path}: the folder {folder} is not writable"
    return None


def atomic_write(path: str | PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fh)`` (``fh`` a binary file open for writing), atomically.

    Parameters
    ----------
    path : str or path
        The target. Its folder must exist. An existing target keeps its permission bits; a new one
        gets those ``open`` would give it.
    write : callable
        Writes the whole content into ``fh``; it must not close it.

    Raises
    ------
    OSError
        The folder does not exist or is not writable, the disk is full, ...: the target is left
        as it was, and the temporary file is removed.
    """
    import tempfile  # not at import time: fastlayers' import stays light

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
