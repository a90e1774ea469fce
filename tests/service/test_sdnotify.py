"""The systemd notify protocol against a real AF_UNIX datagram socket (path and abstract)."""

import os
import socket
import threading
import time
import uuid

import pytest

from daqd.service import sdnotify
from daqd.service.sdnotify import Notifier, Watchdog, watchdog_interval

WAIT = 10.0          # upper bound of every wait; never a speed requirement


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """A bound datagram socket standing in for systemd; yields (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"daqd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(WAIT)
    yield address, sock
    sock.close()


def pending(sock):
    """Datagrams already queued on the socket (sendto to a local socket is synchronous)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(WAIT)


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.005)


def test_each_notification_is_one_datagram_systemd_can_parse(notify_socket):
    address, sock = notify_socket
    n = Notifier(address)
    assert n.enabled
    assert n.ready("receiving 2 streams")
    assert sock.recv(4096) == b"READY=1\nSTATUS=receiving 2 streams"
    assert n.status("line one\nline two")
    assert sock.recv(4096) == b"STATUS=line one line two"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.mainpid(1234)
    assert sock.recv(4096) == b"MAINPID=1234"
    n.mainpid()
    assert sock.recv(4096) == f"MAINPID={os.getpid()}".encode()
    n.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].partition("=")[2]) > 0
    assert n.send_errors == 0
    n.close()
    assert n.notify("READY=1")          # reopens after close
    assert sock.recv(4096) == b"READY=1"


def test_module_notify_follows_the_environment(notify_socket, monkeypatch):
    address, sock = notify_socket
    monkeypatch.setattr(sdnotify, "_default_notifier", None)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.notify("READY=1", "STATUS=up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_everything_is_a_quiet_no_op(monkeypatch, json_logs):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sdnotify, "_default_notifier", None)
    assert not sdnotify.notify("READY=1")
    n = Notifier()
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping()
    assert n.send_errors == 0 and json_logs() == []


def test_unset_environment_keeps_children_from_notifying(notify_socket, monkeypatch):
    address, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    n = Notifier(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"


def test_socket_errors_are_logged_once_and_never_raised(tmp_path, json_logs):
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not n.status("still fine")
    assert n.send_errors == 3
    warnings = [e for e in json_logs() if e["logger"] == "daqd.sdnotify"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "nobody-listens.sock" in warnings[0]["error"]


def test_an_address_of_unknown_kind_disables_notification_with_one_warning(json_logs):
    n = Notifier("vsock:2:1234")
    assert not n.enabled and not n.ready()
    assert [e["level"] for e in json_logs()] == ["warning"]


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "{pid}"}, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),   # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_honours_watchdog_pid(environ, expected):
    environ = {k: v.format(pid=os.getpid()) for k, v in environ.items()}
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0


def test_each_check_feeds_only_if_every_reader_heartbeat_advanced(notify_socket):
    address, sock = notify_socket
    heartbeats = [0, 0]
    dog = Watchdog(Notifier(address), 10.0, lambda: list(heartbeats))
    dog._last = dog._read()             # the baseline start() would take
    heartbeats[:] = [1, 1]
    assert dog.check() and pending(sock) == ["WATCHDOG=1"]
    heartbeats[0] += 1                  # reader 1 wedged
    assert not dog.check() and pending(sock) == []
    assert not dog.check() and pending(sock) == []    # reader 0 stalls too now
    heartbeats[:] = [5, 5]              # both alive again
    assert dog.check() and pending(sock) == ["WATCHDOG=1"]
    assert (dog.checks, dog.pings, dog.withheld) == (4, 2, 2)


def test_named_heartbeats_say_which_thread_stalled_and_ended_threads_leave(notify_socket):
    address, sock = notify_socket
    beats = {"adc0:udp://127.0.0.1:7148": 0, "adc0:flusher": 0}
    dog = Watchdog(Notifier(address), 10.0, lambda: dict(beats))
    dog._last = dog._read()
    beats["adc0:udp://127.0.0.1:7148"] += 1              # the flusher is wedged
    assert not dog.check() and dog.stalled == ["adc0:flusher"] and pending(sock) == []
    beats["adc0:flusher"] += 1
    beats["adc0:udp://127.0.0.1:7148"] += 1
    assert dog.check() and dog.stalled == [] and pending(sock) == ["WATCHDOG=1"]
    del beats["adc0:udp://127.0.0.1:7148"]               # a finite source ended
    beats["adc0:flusher"] += 1
    assert dog.check() and pending(sock) == ["WATCHDOG=1"]


def test_a_failing_progress_callable_withholds_without_killing_the_watchdog(notify_socket):
    address, sock = notify_socket
    state = {"fail": True, "beat": 0}

    def progress():
        if state["fail"]:
            raise RuntimeError("snapshot broken")
        state["beat"] += 1
        return state["beat"]

    dog = Watchdog(Notifier(address), 10.0, progress)
    assert not dog.check() and pending(sock) == []
    state["fail"] = False
    assert not dog.check()              # a fresh baseline after the failure
    assert dog.check() and pending(sock) == ["WATCHDOG=1"]


def test_a_bool_is_refused_as_a_heartbeat(notify_socket):
    dog = Watchdog(Notifier(notify_socket[0]), 1.0, lambda: True)
    with pytest.raises(TypeError):
        dog.start()
    with pytest.raises(ValueError):
        Watchdog(Notifier(notify_socket[0]), 0, lambda: 0)


class PollingReader:
    """A reader thread polling an idle UDP socket, beating its heart on every poll timeout."""

    def __init__(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.01)
        self.heartbeat = 0
        self.unwedged = threading.Event()
        self.unwedged.set()
        self.parked = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopped.is_set():
            if not self.unwedged.is_set():  # stuck here, as a wedged reader is
                self.parked.set()
                self.unwedged.wait()
                self.parked.clear()
            try:
                self.udp.recv(9000)
            except TimeoutError:
                pass
            self.heartbeat += 1

    def close(self):
        self.stopped.set()
        self.unwedged.set()
        self.thread.join(WAIT)
        self.udp.close()


def test_watchdog_thread_feeds_an_idle_reader_and_starves_a_wedged_one(notify_socket):
    address, sock = notify_socket
    reader = PollingReader()
    reader.thread.start()
    dog = Watchdog(Notifier(address), 0.1, lambda: [reader.heartbeat])
    try:
        with dog:
            # no traffic at all, but the reader polls: the watchdog is fed
            assert sock.recv(4096) == b"WATCHDOG=1"
            assert sock.recv(4096) == b"WATCHDOG=1"
            reader.unwedged.clear()
            wait_for(reader.parked.is_set)
            # the check after the reader's last beat may still feed; none after that
            checks = dog.checks
            wait_for(lambda: dog.checks >= checks + 2)
            pending(sock)
            checks, withheld = dog.checks, dog.withheld
            wait_for(lambda: dog.checks >= checks + 3)
            assert pending(sock) == []
            assert dog.withheld >= withheld + 3
            reader.unwedged.set()
            assert sock.recv(4096) == b"WATCHDOG=1"
        checks = dog.checks
        time.sleep(0.2)                 # stopped: no more checks, no more datagrams
        assert dog.checks == checks
    finally:
        reader.close()
