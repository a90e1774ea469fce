"""Kernel drops on a UDP source are counted without a further datagram, and at stop.

The daemon is frozen (SIGSTOP) while a real socket sends it more W1 datagrams
than its socket buffer holds, then thawed (SIGCONT) and sent nothing more.
The kernel reports the drops with a datagram only when one arrives after
them (SO_RXQ_OVFL); the daemon also reads the socket's drop count at every
statistics interval and at stop (SO_MEMINFO), so what it received plus what
it counted as dropped is what was sent.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    W1Sender,
    daemon_toml,
    free_port,
    last_messages,
    subscribed,
    toml_table,
    write_config,
)
from udp_helpers import HAVE_GRO, HAVE_GSO

from daqd import _spead

pytestmark = pytest.mark.network

SENT = 3000                     # W1 datagrams (8248 bytes each) sent while frozen
SOCKET_BUFFER = 1 << 20         # holds a few hundred of them


def frozen_burst_daemon(tmp_path: Path, gro: bool) -> tuple[DaemonProcess, Any, int]:
    """A heap-mode daemon on one small-buffered UDP source, ready, with a subscriber."""
    port = free_port()
    uri = f"udp://127.0.0.1:{port}" + ("" if gro else "?gro=0")
    config = daemon_toml(tmp_path, interval=0.2) + toml_table(
        "stream", array=True, name="adc0", sources=[uri], socket_buffer=SOCKET_BUFFER)
    daemon = DaemonProcess(write_config(tmp_path, config))
    ready = daemon.ready()
    return daemon, subscribed(ready["stats"]), port


def send_frozen(daemon: DaemonProcess, send: Any) -> None:
    """Freeze the daemon, `send()`, thaw it."""
    daemon.signal(signal.SIGSTOP)
    try:
        send()
    finally:
        daemon.signal(signal.SIGCONT)


def received_and_dropped(counters: dict[str, int]) -> int:
    return counters["packets"] + counters["packets_dropped_socket_buffer"]


def test_drops_are_counted_within_a_statistics_interval_without_more_data(tmp_path):
    daemon, sub, port = frozen_burst_daemon(tmp_path, gro=False)
    sender = W1Sender(port, heaps=SENT)
    try:
        send_frozen(daemon, lambda: sender.send(SENT))
        # Nothing more is sent: the drops show at the next statistics intervals.
        _, message = sub.until(lambda topic, m: topic == "stats.adc0"
                               and received_and_dropped(m["counters"]) == SENT, timeout=10)
        counters = message["counters"]
        assert 0 < counters["packets"] < SENT
        assert counters["packets"] == counters["heaps_complete"]
        source = message["sources"][f"udp://127.0.0.1:{port}?gro=0"]
        assert source["packets_dropped_socket_buffer"] == counters[
            "packets_dropped_socket_buffer"]
        assert daemon.stop() == 0
    finally:
        sender.close()
        sub.close()
        daemon.close()


def test_drops_are_in_the_final_statistics_and_log_line_after_an_immediate_stop(tmp_path):
    """SIGTERM right after the thaw: the queued datagrams are still received, the
    drops still counted, and the last statistics message and log line say so."""
    daemon, sub, port = frozen_burst_daemon(tmp_path, gro=False)
    sender = W1Sender(port, heaps=SENT)
    try:
        def send_then_stop() -> None:
            sender.send(SENT)
            daemon.signal(signal.SIGTERM)   # delivered on SIGCONT, with the thaw

        send_frozen(daemon, send_then_stop)
        assert daemon.wait() == 0
        final = last_messages(sub)["stats.adc0"]["counters"]
        assert received_and_dropped(final) == SENT
        assert 0 < final["packets_dropped_socket_buffer"] < SENT
        stopped = daemon.events[-1]
        assert stopped["event"] == "stopped"
        assert received_and_dropped(stopped["adc0"]) == SENT
        assert stopped["adc0"]["packets_dropped_socket_buffer"] == final[
            "packets_dropped_socket_buffer"]
    finally:
        sender.close()
        sub.close()
        daemon.close()


@pytest.mark.skipif(not (HAVE_GRO and HAVE_GSO), reason="needs UDP GSO and GRO (Linux >= 5.0)")
def test_with_gro_one_count_is_one_dropped_message_of_datagrams(tmp_path):
    """With GRO (the default) a GSO sender's message of up to 64 KiB arrives, and is
    dropped, whole: W1's 8248-byte datagrams go 7 to a message, so each count is 1 to 7
    datagrams (docs/monitoring.md)."""
    daemon, sub, port = frozen_burst_daemon(tmp_path, gro=True)
    try:
        def send_gso() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                out.connect(("127.0.0.1", port))
                _spead.send(_spead.SimReader("W1", heaps=SENT), out.fileno(), "udp", gso=True)

        send_frozen(daemon, send_gso)
        assert daemon.stop() == 0
        final = last_messages(sub)["stats.adc0"]["counters"]
        received, drops = final["packets"], final["packets_dropped_socket_buffer"]
        lost = SENT - received
        assert lost > 0 and drops > 0
        assert drops <= lost <= 7 * drops
        print(f"GRO: {SENT} sent, {received} received, {lost} lost, {drops} drops counted")
    finally:
        sub.close()
        daemon.close()
