"""The systemd notify protocol, with no dependency on libsystemd.

A service started with ``Type=notify`` tells systemd about itself by sending
datagrams of newline-separated ``KEY=VALUE`` assignments to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (sd_notify(3)): ``READY=1`` once it serves,
``STATUS=...`` a one-line summary for ``systemctl status``, ``RELOADING=1``,
``STOPPING=1``, ``WATCHDOG=1`` keep-alives, ``EXTEND_TIMEOUT_USEC=`` while a
long drain runs and ``MAINPID=``.  A name starting with ``@`` is in Linux's
abstract namespace.  Outside systemd the variable is unset and every call is a
no-op.

Notification is best effort: a socket error is logged once and counted, never
raised into the daemon (a missed STATUS line must not stop data acquisition).

The watchdog (``WatchdogSec=`` in the unit) is fed by `Watchdog`, a thread
that sends ``WATCHDOG=1`` only while every watched thread (receive threads
and flushers) shows a life sign, so that a wedged one gets the daemon
restarted while an idle one does not.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from daqd.service.threads import ThreadOwner

__all__ = ["Notifier", "Watchdog", "notify", "watchdog_interval"]

log = structlog.get_logger("daqd.sdnotify")


class Notifier:
    """Sends notifications to the socket systemd named in ``$NOTIFY_SOCKET``.

    Parameters
    ----------
    address
        The socket: a filesystem path, or ``@name`` for the abstract
        namespace.  ``None`` reads ``$NOTIFY_SOCKET``; an empty or unset
        value makes every call a no-op.
    unset_environment
        Remove ``NOTIFY_SOCKET`` from ``os.environ`` (sd_notify's
        ``unset_environment``), so that processes this one starts do not
        notify systemd on its behalf.

    Attributes
    ----------
    send_errors : int
        Datagrams that could not be sent (only the first is logged).
    """

    def __init__(self, address: str | None = None, *, unset_environment: bool = False):
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        self.address = address
        self.send_errors = 0
        self._target: str | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        if address.startswith("@"):
            self._target = "\0" + address[1:]
        elif address.startswith("/"):
            self._target = address
        elif address:
            # vsock: (systemd 254+) and anything newer are not spoken here.
            self._failed(f"unsupported NOTIFY_SOCKET address {address!r}")

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (False outside systemd)."""
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` assignments.

        Parameters
        ----------
        *assignments
            Lines such as ``"READY=1"`` and ``"STATUS=receiving"``; they
            travel together, so systemd applies them at once.

        Returns
        -------
        bool
            True if the datagram was sent; False when disabled or on a socket
            error (logged the first time, counted in `send_errors`).
        """
        if self._target is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._socket.sendto(message, self._target)
        except OSError as exc:
            self._failed(f"cannot notify systemd at {self.address}: {exc.strerror or exc}")
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Say that start-up has finished (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *self._status_lines(status))

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.notify(*self._status_lines(text))

    def reloading(self) -> bool:
        """Say that a reload began; send `ready` when it has finished."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        """Say that shutdown began (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *self._status_lines(status))

    def watchdog(self) -> bool:
        """Feed the service watchdog once (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for this much more time to finish starting or stopping (a long drain)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1e6))}")

    def mainpid(self, pid: int | None = None) -> bool:
        """Tell systemd which process is the service's main process (default: this one)."""
        return self.notify(f"MAINPID={os.getpid() if pid is None else pid}")

    def close(self) -> None:
        """Close the socket; later calls open it again."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    @staticmethod
    def _status_lines(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.splitlines()),)

    def _failed(self, message: str) -> None:
        self.send_errors += 1
        if self.send_errors == 1:
            log.warning("sd_notify failed; further failures are only counted", error=message)


_default_notifier: Notifier | None = None


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to ``$NOTIFY_SOCKET``; a no-op outside systemd.

    Uses one module-wide `Notifier`, created from the environment on first use.

    Parameters
    ----------
    *assignments
        Lines such as ``"READY=1"``, ``"STATUS=..."``, ``"STOPPING=1"``.

    Returns
    -------
    bool
        True if the datagram was sent.
    """
    global _default_notifier
    if _default_notifier is None:
        _default_notifier = Notifier()
    return _default_notifier.notify(*assignments)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return the watchdog timeout systemd expects us to honour (sd_watchdog_enabled(3)).

    Parameters
    ----------
    environ
        The environment to read (default `os.environ`).

    Returns
    -------
    float or None
        ``$WATCHDOG_USEC`` in seconds, or None when it is unset, not a positive
        integer, or when ``$WATCHDOG_PID`` is set and names another process
        (the variables were inherited, not meant for us).
    """
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1e6


#: A heartbeat: one counter per watched thread, by name (or by position), or one for all.
Heartbeat = int | Sequence[int] | Mapping[str, int]


class Watchdog(ThreadOwner):
    """Feeds the systemd watchdog while every watched thread shows progress.

    A thread checks `progress` every half `interval` and sends ``WATCHDOG=1``
    only if each heartbeat counter changed since the previous check.  Each
    watched thread (the daemon's receive threads and flushers) increments its
    counter once per loop iteration, *including an iteration that ends in a
    poll timeout*, so an idle but healthy thread (no traffic) still feeds the
    watchdog, while a thread wedged in a call that never returns stops its
    counter and, after ``WatchdogSec``, systemd restarts the daemon.  Packet
    counters are the wrong heartbeat: they stop whenever the sender does.

    Parameters
    ----------
    notifier
        Where ``WATCHDOG=1`` goes.
    interval
        The watchdog timeout in seconds (`watchdog_interval`); checks run at
        half of it, as sd_watchdog_enabled(3) advises.
    progress
        Returns the heartbeat: a mapping of thread name to counter (every
        name present at two checks in a row must advance; a name that goes
        away, e.g. an ended source, is no longer watched), a sequence (names
        are the positions) or a single int.  An exception from it counts as
        no progress.

    Attributes
    ----------
    checks : int
        Checks made so far.
    pings : int
        ``WATCHDOG=1`` sent.
    withheld : int
        Checks that found a stalled heartbeat and sent nothing.
    stalled : list of str
        The names whose counters did not advance at the last check (empty
        while the watchdog is fed).
    """

    def __init__(self, notifier: Notifier, interval: float, progress: Callable[[], Heartbeat]):
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, not {interval!r}")
        self.notifier = notifier
        self.interval = interval
        self.progress = progress
        self.checks = 0
        self.pings = 0
        self.withheld = 0
        self.stalled: list[str] = []
        self._last: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the current heartbeat as the baseline and start the feeding thread."""
        if self._thread is not None:
            raise RuntimeError("the watchdog is already running")
        if isinstance(self.progress(), bool):
            raise TypeError("progress must return heartbeat counters, not a bool")
        self._last = self._read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the feeding thread (before draining: a drain is not a wedge)."""
        self._stop.set()
        self._join_thread(timeout)

    def check(self) -> bool:
        """Compare the heartbeat with the previous check's; feed the watchdog if all advanced.

        Returns
        -------
        bool
            True if ``WATCHDOG=1`` was sent.
        """
        self.checks += 1
        current = self._read()
        previous, self._last = self._last, current
        before = previous or {}
        common = [name for name in current if name in before]
        stalled = [name for name in common if current[name] == before[name]]
        if common and not stalled:
            if self.stalled:
                log.info("heartbeats advance again; feeding the watchdog", resumed=self.stalled)
                self.stalled = []
            self.pings += 1
            self.notifier.watchdog()
            return True
        self.withheld += 1
        if stalled and stalled != self.stalled:
            log.warning("heartbeat stalled; not feeding the systemd watchdog",
                        stalled=stalled, interval=self.interval)
        self.stalled = stalled
        return False

    def _read(self) -> dict[str, int]:
        try:
            value = self.progress()
        except Exception as exc:  # the daemon's callable must not kill the watchdog thread
            log.warning("watchdog progress check failed", error=repr(exc))
            return {}
        if isinstance(value, int):
            return {"0": value}
        if isinstance(value, Mapping):
            return {str(name): int(count) for name, count in value.items()}
        return {str(i): count for i, count in enumerate(value)}

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 2):
            self.check()
