"""``daqd start`` and ``daqd stop``: the daemon in the background, through its pidfile.

``start`` runs ``daqd run`` as a detached process (new session, standard
streams to a log file) and waits for it to report ready with the systemd
notify protocol on a private socket, the same READY=1 that systemd waits for;
if the daemon exits first, its last log lines say why.  ``stop`` sends
SIGTERM to the pid in the pidfile and waits until the daemon has drained and
released the pidfile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daqd.config import Config
from daqd.errors import UsageProblem
from daqd.service.pidfile import DaemonAlreadyRunning, read_pid, wait_until_released


class DaemonFailed(RuntimeError):
    """The background daemon exited or hung before it was ready."""


def default_log_file(config: Config) -> Path:
    """Where a background daemon's log goes unless told otherwise: beside its pidfile."""
    return Path(config.daemon.pidfile).with_suffix(".log")


def start(config: Config, log_file: Path, timeout: float = 30.0,
          extra_args: tuple[str, ...] = ()) -> int:
    """Start ``daqd run`` in the background; return its pid once it is ready.

    Raises
    ------
    DaemonAlreadyRunning
        A live daemon holds the configuration's pidfile.
    DaemonFailed
        The daemon exited, or did not report ready within `timeout` (then it
        is killed).
    """
    pid = read_pid(config.daemon.pidfile)
    if pid is not None:
        raise DaemonAlreadyRunning(config.daemon.pidfile, pid)
    # The daemon's own directory (0700), as the pidfile makes it.
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="daqd-start-") as tmp:
        address = os.path.join(tmp, "notify")
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ready.bind(address)
        env = dict(os.environ, NOTIFY_SOCKET=address)
        env.pop("WATCHDOG_USEC", None)
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daqd", "run", "--config",
                 str(Path(config.path).resolve()), "--log-format", "json", *extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, close_fds=True)
        try:
            _wait_ready(ready, proc, timeout, log_file)
        finally:
            ready.close()
    return proc.pid


def _wait_ready(ready: socket.socket, proc: subprocess.Popen, timeout: float,
                log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    ready.settimeout(0.1)
    while True:
        try:
            message = ready.recv(4096).decode(errors="replace")
        except TimeoutError:
            message = ""
        if "READY=1" in message.split("\n"):
            return
        if proc.poll() is not None:
            raise DaemonFailed(f"the daemon exited with status {proc.returncode} before it "
                               f"was ready: {_last_line(log_file)}")
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            raise DaemonFailed(f"the daemon was not ready within {timeout:g} s and was "
                               f"killed; see {log_file}")


def _last_line(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {log_file})"
    return lines[-1] if lines else f"(nothing in {log_file})"


def stop(config: Config, timeout: float = 120.0) -> int | None:
    """Send SIGTERM to the daemon of `config` and wait until it has exited.

    Returns the pid stopped, or None if no daemon was running.

    Raises
    ------
    DaemonFailed
        The daemon still holds its pidfile after `timeout` seconds.
    """
    pid = read_pid(config.daemon.pidfile)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    except PermissionError:
        raise UsageProblem(f"{config.daemon.pidfile}: not allowed to signal pid {pid}") from None
    deadline = time.monotonic() + timeout
    if not wait_until_released(config.daemon.pidfile, timeout):
        raise DaemonFailed(f"pid {pid} has not exited {timeout:g} s after SIGTERM")
    # The pidfile is let go at the end of the drain; the process exits just after.
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise DaemonFailed(f"pid {pid} drained but has not exited {timeout:g} s "
                               "after SIGTERM")
        time.sleep(0.02)
    return pid


def _alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
