"""The daemon's pidfile: one daemon per pidfile, found again by ``daqd stop``/``status``.

The pidfile holds the daemon's pid followed by a newline.  The daemon keeps an
exclusive `flock(2)` on it for its whole life, and the lock, not the file's
existence, says whether a daemon is running: the kernel drops the lock when
the process dies however it dies, so a pidfile left by a crashed or SIGKILLed
daemon is recognised as stale and replaced.

flock and not lockf/fcntl locks: POSIX record locks belong to the process and
vanish when *any* descriptor of the file is closed, so a `read_pid` in the
daemon itself would silently unlock it.  flock locks belong to the open file
description (O_CLOEXEC keeps them out of programs the daemon executes; a child
made by a bare ``fork`` shares them).

Taking the pidfile (`PidFile.acquire`):

1. open (creating) the pidfile and take its lock without waiting; if another
   process holds it, refuse with `DaemonAlreadyRunning`;
2. check that the locked inode is still the one at the path (a previous owner
   may have removed it meanwhile), else start again;
3. write our pid into a new file beside it, lock that too, and rename it over
   the pidfile: readers see the old content or the new, never a partial one;
4. let the old inode (and its lock) go.

A process that opened the old inode before the rename and locks it afterwards
fails step 2 and starts again on the new, locked, inode.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import structlog

from daqd.errors import UsageProblem

__all__ = ["DaemonAlreadyRunning", "PidFile", "PidFileError", "read_pid", "wait_until_released"]

log = structlog.get_logger("daqd.pidfile")

# How long a reader waits for a starting daemon to write its pid.
_SETTLE_SECONDS = 1.0
_RETRY_SECONDS = 0.01


class PidFileError(UsageProblem):
    """The pidfile cannot be created or taken (one line, exit status 2)."""


class DaemonAlreadyRunning(PidFileError):
    """Another live daemon holds the pidfile.

    Parameters
    ----------
    path
        The pidfile.
    pid
        The running daemon's pid, or None if it could not be read.
    """

    def __init__(self, path: str | os.PathLike[str], pid: int | None):
        self.path = str(path)
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "a process whose pid could not be read"
        super().__init__(f"daqd is already running as {who} (pidfile {self.path})")


class PidFile:
    """An exclusive, locked pidfile held for the daemon's life.

    Take it after the daemon has detached (the pid written is the caller's)
    and before anything else starts; release it last.  As a context manager
    it is acquired on entry and released on exit.

    Parameters
    ----------
    path
        The pidfile; missing directories are created.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the pidfile."""
        return self._fd is not None

    def acquire(self) -> None:
        """Create the pidfile with our pid and lock it, replacing a stale one.

        Raises
        ------
        DaemonAlreadyRunning
            A live daemon holds the pidfile; the message names it and its pid.
        PidFileError
            The pidfile or its directory cannot be created or written.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this process")
        try:
            # A directory made here is the daemon's own (0700): its control socket
            # may live beside the pidfile, and must be reachable by this user only.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd, stale = self._take()
        except OSError as exc:
            raise PidFileError(
                f"cannot create the pidfile {self.path}: {exc.strerror or exc}"
            ) from None
        if stale:
            log.warning("replaced a stale pidfile left by a daemon that is gone",
                        pidfile=str(self.path), stale_content=stale)

    def release(self) -> None:
        """Remove the pidfile (if it is still ours) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _is_current(fd, self.path):
                self.path.unlink()
        except OSError as exc:
            log.warning("cannot remove the pidfile", pidfile=str(self.path),
                        error=exc.strerror or str(exc))
        finally:
            os.close(fd)

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _take(self) -> tuple[int, str]:
        """Do steps 1-4 of the module docstring; return the locked fd and any stale content."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = read_pid(self.path)
                # None: the holder let go meanwhile (it exited, or a reader held a
                # shared lock for an instant); try again, for a while.
                if pid is None and time.monotonic() < deadline:
                    time.sleep(_RETRY_SECONDS)
                    continue
                raise DaemonAlreadyRunning(self.path, pid) from None
            try:
                if not _is_current(fd, self.path):
                    continue
                stale = _read(fd).strip()
                os.ftruncate(fd, 0)          # readers of this inode now see "starting"
                return self._write_new(), stale
            finally:
                os.close(fd)

    def _write_new(self) -> int:
        """Write our pid into a new locked file and rename it over the pidfile."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.rename(temporary, self.path)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return fd


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """Return the pid of the live daemon holding a pidfile.

    Parameters
    ----------
    path
        The pidfile.

    Returns
    -------
    int or None
        The pid written in the pidfile while its lock is held; None when there
        is no pidfile or nobody holds its lock (no daemon, or a stale file
        left by a crash).  A daemon in the middle of starting is waited for,
        briefly.
    """
    path = Path(path)
    deadline = time.monotonic() + _SETTLE_SECONDS
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            content = _read(fd)
            current = _is_current(fd, path)
        finally:
            os.close(fd)
        pid = _parse_pid(content)
        if current:
            if not held:
                return None
            if pid is not None and (_alive(pid) or time.monotonic() >= deadline):
                return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(_RETRY_SECONDS)


def wait_until_released(path: str | os.PathLike[str], timeout: float) -> bool:
    """Wait until no daemon holds the pidfile (for ``daqd stop`` after SIGTERM).

    Parameters
    ----------
    path
        The pidfile.
    timeout
        Seconds to wait at most.

    Returns
    -------
    bool
        True once the pidfile is free, False if it is still held at the timeout.
    """
    deadline = time.monotonic() + timeout
    while read_pid(path) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _read(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace")


def _parse_pid(content: str) -> int | None:
    text = content.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open file is still the one the path names."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
