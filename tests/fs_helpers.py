"""A real file system that is full: a small tmpfs, mounted for a test.

Mounting needs root (or CAP_SYS_ADMIN); where it is refused the test is
skipped with the reason.  The mount is lazily unmounted at the end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of `size` on `mount_point` (created) for the block's duration."""
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)


def fill_up(directory: Path, room: int = 0) -> Path:
    """Fill the file system of `directory` with a ballast file, leaving about `room` bytes."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"\0" * (64 << 10)
        for _ in range(1 << 20):            # bounded: 64 GiB at most
            left = shutil.disk_usage(directory).free - room
            if left <= 0:
                break
            try:
                os.write(fd, block[:left])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return ballast
