"""Crash-safe file writes shared by the vector store and the fingerprint
index: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike,
    content: bytes | str | Callable[[BinaryIO], None],
    suffix: str = "",
    mode: int = 0o644,
) -> None:
    """Create or replace ``path`` atomically: write ``content`` (bytes, text
    as UTF-8, or a function that writes into the open binary file) into a
    temporary file beside it, fsync, rename. On any failure the temporary
    file goes and ``path`` is untouched. The file gets ``mode``."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-", suffix=suffix, dir=os.path.dirname(path) or "."
    )
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
