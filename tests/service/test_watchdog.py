"""The systemd watchdog follows the receive threads and the flushers (issue 12, watchdog).

The real daemon is started as systemd would start it with ``WatchdogSec=``:
``NOTIFY_SOCKET`` names a datagram socket this test reads, ``WATCHDOG_USEC``
the timeout.  While healthy it sends ``WATCHDOG=1``; once its flusher is
wedged for real (a flush predicate that never returns, as a write to a hung
disk would not: tests/stall_flusher.py) the pings stop, so systemd would
restart it, and its log says which stream and thread stalled, repeated each
statistics interval so the last line before the restart names it.  A receive
thread blocked in the buffer's put (when_full = "block" behind that flusher)
is named too, and a stop sends STOPPING=1 (issue 18).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    control,
    daemon_toml,
    free_port,
    sinks_toml,
    toml_table,
    udp_stream_toml,
    wait_until,
    write_config,
)
from spead_packets import sim_packets
from stall_flusher import SPEC, stall_environment

pytestmark = pytest.mark.network

WATCHDOG_USEC = 2_000_000          # checks every second (idle loops poll every 0.2 s)
STALLED = "adc0:flusher"


def pings(sock: socket.socket, until: Callable[[int], bool], timeout: float = 20.0) -> int:
    """Count WATCHDOG=1 datagrams until ``until(count)`` holds (checked after each
    datagram and every 0.1 s); fails after `timeout`, an upper bound only."""
    count = 0
    deadline = time.monotonic() + timeout
    while not until(count):
        assert time.monotonic() < deadline, f"{count} pings and still waiting"
        sock.settimeout(0.1)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        count += "WATCHDOG=1" in message.splitlines()
    return count


def withheld(daemon: DaemonProcess) -> int:
    """Watchdog checks that sent nothing, as the daemon last logged them."""
    lines = [e for e in daemon.events if e.get("event") == "watchdog withheld: threads stalled"]
    return lines[-1]["withheld"] if lines else 0


def last_event(daemon: DaemonProcess) -> dict:
    return next(e for e in reversed(daemon.events) if isinstance(e, dict))


def test_a_wedged_flusher_stops_the_watchdog_pings_and_the_log_names_it(tmp_path):
    port = free_port()
    marker = tmp_path / "stall"
    cfg = write_config(tmp_path, daemon_toml(tmp_path) + udp_stream_toml("adc0", port)
                       + buffer_toml(kind="fifo", capacity=64, when_full="block",
                                     flush_count=8, flush_interval=1.0, flush_custom=[SPEC])
                       + sinks_toml(tmp_path, "text"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env = {**stall_environment(marker), "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = DaemonProcess(cfg, env=env)
    try:
        daemon.ready()
        pings(notify, lambda n: n >= 2)                      # healthy: fed each check
        marker.touch()
        wait_until(Path(f"{marker}.entered").exists, 10, "the flusher wedged")
        stalled = daemon.wait_event("heartbeat stalled; not feeding the systemd watchdog")
        assert stalled["stalled"] == [STALLED]
        notify.settimeout(0.1)
        with contextlib.suppress(TimeoutError):              # what was sent before
            while True:
                notify.recv(4096)
        # Three more checks by the daemon's own count, and not one ping among them.
        start = withheld(daemon)
        assert pings(notify, lambda n: n > 0 or withheld(daemon) >= start + 3) == 0
        wait_until(lambda: last_event(daemon)["event"] == "watchdog withheld: threads stalled",
                   10, "the withheld line last")
        assert last_event(daemon)["stalled"] == [STALLED]
        marker.unlink()                                      # the flusher comes back
        pings(notify, lambda n: n >= 2)
        assert daemon.stop() == 0
    finally:
        daemon.close()
        notify.close()
    resumed = [e for e in daemon.events if e.get("event", "").startswith("heartbeats advance")]
    assert resumed and resumed[0]["resumed"] == [STALLED]
    # the idle receive thread (no traffic at all) never counted as stalled
    assert {name for e in daemon.events if e.get("event", "").startswith("heartbeat stalled")
            for name in e["stalled"]} == {STALLED}


CAPACITY = 16          # records the buffer holds before a put blocks


def notifications(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    """Every assignment received until `wanted` is among them (fails after `timeout`)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        assert time.monotonic() < deadline, f"no {wanted} within {timeout} s: {seen[-10:]}"
        sock.settimeout(0.1)
        try:
            seen += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            continue
    return seen


def test_a_receive_thread_blocked_in_put_stops_the_pings_and_stop_says_stopping(tmp_path):
    """The receive thread itself wedges: heap mode, when_full = "block" with a long
    block_timeout, and a wedged flusher, so the thread waits in the buffer's put once the
    buffer is full.  The watchdog names it beside the flusher; once the flusher comes
    back both advance again, and SIGTERM sends STOPPING=1 before the daemon exits 0."""
    port = free_port(socket.SOCK_STREAM)
    receiver = f"adc0:tcp://127.0.0.1:{port}"
    marker = tmp_path / "stall"
    stream = toml_table("stream", array=True, name="adc0", sources=[f"tcp://127.0.0.1:{port}"])
    cfg = write_config(tmp_path, daemon_toml(tmp_path) + stream
                       + buffer_toml(kind="fifo", capacity=CAPACITY, when_full="block",
                                     block_timeout=3600.0, flush_count=8, flush_interval=1.0,
                                     flush_custom=[SPEC])
                       + sinks_toml(tmp_path, "text", header=False))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env = {**stall_environment(marker), "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = DaemonProcess(cfg, env=env)
    sender = None
    total = 4 * CAPACITY
    try:
        endpoint = daemon.ready()["control"]
        pings(notify, lambda n: n >= 2)
        marker.touch()
        wait_until(Path(f"{marker}.entered").exists, 10, "the flusher wedged")
        sender = socket.create_connection(("127.0.0.1", port), timeout=10)
        sender.sendall(b"".join(sim_packets("W2", total)))      # one packet per heap

        def both_stalled() -> bool:
            return any(set(e.get("stalled", ())) == {STALLED, receiver} for e in daemon.events
                       if e.get("event") == "heartbeat stalled; not feeding the systemd watchdog")

        wait_until(both_stalled, 20, "the receive thread and the flusher named as stalled")
        buffer = control(endpoint, {"command": "status"})["streams"]["adc0"]["buffer"]
        assert buffer["records_accepted"] == CAPACITY         # the thread waits in put
        notify.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            while True:
                notify.recv(4096)
        start = withheld(daemon)
        assert pings(notify, lambda n: n > 0 or withheld(daemon) >= start + 3) == 0
        marker.unlink()
        pings(notify, lambda n: n >= 2)
        wait_until(lambda: control(endpoint, {"command": "status"})["streams"]["adc0"]["buffer"]
                   ["records_accepted"] == total, 20, "every heap accepted")
        daemon.signal(signal.SIGTERM)
        notifications(notify, "STOPPING=1")
        assert daemon.wait() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()
        notify.close()
    resumed = [e for e in daemon.events if e.get("event", "").startswith("heartbeats advance")]
    assert resumed and set(resumed[-1]["resumed"]) == {STALLED, receiver}
