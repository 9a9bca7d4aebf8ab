"""Atomic file writes: a temporary file beside the target, fsync, rename, fsync the directory.
An interrupted write never leaves a partial file under the final name."""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Yield a file object opened on a temporary file; on success it replaces `path`."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):  # said of the folder asked for, not of our temporary file in it
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # what open() would have given it, not mkstemp's 0600
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
