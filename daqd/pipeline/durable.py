"""Making what was written durable: the one fsync helper of files and directories.

Used by the write-ahead log (its compaction) and the sinks (files before they
are published, their directory entries after).
"""

from __future__ import annotations

import os


def fsync_path(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Fsync the file (or, with `directory`, the directory) at `path` by name."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory_of(path: str | os.PathLike[str]) -> None:
    """Make the directory entries of `path`'s directory durable (after a create or rename)."""
    fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)
