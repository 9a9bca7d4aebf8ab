"""Atomic writes: a temporary file (or folder) beside the target, fsync, rename, fsync the
directory. An interrupted write never leaves a partial file under the final name, nor the
temporary one."""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager, suppress


@contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Yield a file object opened on a temporary file; on success it replaces `path`."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):  # said of the folder asked for, not of our temporary file in it
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", directory)
    # The name is chosen before the file exists, so a Ctrl-C arriving at any moment after it
    # (even inside open()) finds a name to clean up; mkstemp would only say it on return.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.part")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str, folder: bool = False):
    """Yield a temporary path beside `path` for a writer that opens files itself (a library's
    writer; `folder`: a directory of files, created here); on success every file in it is
    fsynced and it replaces `path`, which must not be a folder already (a folder is not
    replaced: the rename would fail half-way or mix two exports)."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", directory)
    if os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, "already exists (remove it first)", path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.part")
    try:
        if folder:
            os.mkdir(tmp)
        yield tmp
        for f in ([os.path.join(tmp, n) for n in os.listdir(tmp)] if folder else []) + [tmp]:
            _fsync(f)
        os.replace(tmp, path)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    _fsync(directory)
