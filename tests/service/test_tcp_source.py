"""A ``tcp://`` source is a server: the real daemon, real TCP peers on 127.0.0.1.

A peer that connects and closes does not end the daemon; the listener serves
the next sender, and several at once, each peer's bytes cut into packets on
their own; ``?once=1`` keeps spead2's one-connection behaviour.
"""

import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    chunk_stream_config,
    control,
    daemon_toml,
    free_port,
    sinks_toml,
    toml_table,
    w1_payloads,
    wait_until,
    write_config,
)

from daqd import _spead
from daqd.service.stream_runner import BOUNDARY_REOPEN_INTERVAL, EVENT_LINES
from daqd.sinks.binary import load as load_binary
from daqd.sinks.binary import read_header
from daqd.tools.simulate import simulate

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8


def tcp_chunk_config(tmp: Path, uri: str) -> Path:
    """One W1 chunk-mode stream on `uri`, binary files under tmp/data."""
    port = free_port()
    text = chunk_stream_config(tmp, port=port, sinks=sinks_toml(tmp, "binary"))
    return write_config(tmp, text.replace(f"udp://127.0.0.1:{port}", uri))


def source_stats(endpoint: str, uri: str) -> dict:
    return control(endpoint, {"command": "status"})["streams"]["adc0"]["sources"][uri]


def w1_packets(heaps: int) -> list[bytes]:
    reader = _spead.SimReader("W1", heaps=heaps)
    out: list[bytes] = []
    while (batch := reader.read_batch()) is not None:
        out.extend(batch[0])
    return out


def test_a_peer_that_closes_does_not_end_the_daemon_the_next_sender_is_served(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}"
    daemon = DaemonProcess(tcp_chunk_config(tmp_path, uri))
    heaps = 12 * HEAPS_PER_CHUNK
    try:
        endpoint = daemon.ready()["control"]
        # A peer connects and closes at once (a port scanner, a health check).
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        wait_until(lambda: daemon.proc.poll() is not None
                   or source_stats(endpoint, uri).get("tcp_connections_closed") == 1,
                   what="the first peer's close")
        assert daemon.proc.poll() is None, "the daemon ended with its first peer"
        # The real sender comes next: the listener is still there.
        sent = simulate(uri, "W1", heaps=heaps, rate=0.0, stop=False)
        assert sent["packets"] == heaps
        wait_until(lambda: source_stats(endpoint, uri)["tcp_connections_closed"] == 2,
                   what="the sender's close")
        status = control(endpoint, {"command": "status"})
        assert status["state"] == "running"
        stats = status["streams"]["adc0"]["sources"][uri]
        counters = status["streams"]["adc0"]["counters"]
        assert stats["tcp_connections_accepted"] == 2
        assert stats["tcp_bytes_received"] == heaps * (56 + 8192)
        assert stats["tcp_bytes_truncated"] == 0
        assert stats["peers"] == {}
        assert counters["packets"] == heaps and counters["chunk_heaps_placed"] == heaps
        assert daemon.stop() == 0
    finally:
        daemon.close()
    closed = [e for e in daemon.events if e.get("event") == "tcp peer closed"]
    assert [e["bytes"] for e in closed] == [0, heaps * (56 + 8192)]
    files = sorted((tmp_path / "data").glob("*.bin"))
    data = np.concatenate([load_binary(str(f))[1].reshape(-1, HEAPS_PER_CHUNK * 8192)
                           for f in files])
    expected = np.frombuffer(b"".join(w1_payloads(heaps)), np.uint8).reshape(data.shape[0], -1)
    np.testing.assert_array_equal(data, expected)


def test_two_peers_sending_at_once_are_both_written_whole(tmp_path):
    """Heap mode: two senders interleave on one listener; every heap of each is written."""
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}"
    cfg = write_config(tmp_path, daemon_toml(tmp_path)
                       + toml_table("stream", array=True, name="adc0", sources=[uri])
                       + buffer_toml(kind="fifo", capacity=100000, when_full="block",
                                     flush_count=256, flush_interval=0.2)
                       + sinks_toml(tmp_path, "binary"))
    per_peer = 1500
    packets = w1_packets(2 * per_peer)
    halves = (b"".join(packets[:per_peer]), b"".join(packets[per_peer:]))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        peers = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in halves]
        wait_until(lambda: len(source_stats(endpoint, uri)["peers"]) == 2,
                   what="both peers connected")
        go = threading.Barrier(2)

        def send(sock: socket.socket, data: bytes) -> None:
            go.wait()
            # In pieces that split packets: only each peer's own bytes complete them.
            for i in range(0, len(data), 5000):
                sock.sendall(data[i:i + 5000])
            sock.close()

        threads = [threading.Thread(target=send, args=pair) for pair in zip(peers, halves,
                                                                             strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_until(lambda: source_stats(endpoint, uri)["tcp_connections_closed"] == 2,
                   timeout=30, what="both peers closed")
        stats = source_stats(endpoint, uri)
        counters = control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]
        assert counters["heaps_complete"] == 2 * per_peer
        assert counters["packets"] == 2 * per_peer
        assert sum(v for k, v in counters.items() if k.startswith("packets_rejected_")) == 0
        assert counters["stream_bytes_skipped"] == 0
        assert stats["tcp_bytes_received"] == sum(len(h) for h in halves)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    (path,) = sorted((tmp_path / "data").glob("*.bin"))
    meta = read_header(str(path))
    got = np.fromfile(path, np.uint8, offset=meta["header_bytes"]).reshape(-1, 8192)
    expected = np.frombuffer(b"".join(w1_payloads(2 * per_peer)), np.uint8).reshape(-1, 8192)
    assert len({row.tobytes() for row in expected}) == 2 * per_peer      # all distinct
    assert sorted(row.tobytes() for row in got) == sorted(row.tobytes() for row in expected)


def test_once_ends_the_source_when_its_one_peer_closes(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}?once=1"
    daemon = DaemonProcess(tcp_chunk_config(tmp_path, uri))
    heaps = 4 * HEAPS_PER_CHUNK
    try:
        daemon.ready()
        simulate(f"tcp://127.0.0.1:{port}", "W1", heaps=heaps, rate=0.0, stop=False)
        assert daemon.wait() == 0           # the source ended: the daemon drained and exited
    finally:
        daemon.close()
    ended = [e for e in daemon.events if e.get("event") == "draining"]
    assert ended and ended[0]["reason"] == "sources ended"
    files = sorted((tmp_path / "data").glob("*.bin"))
    assert sum(load_binary(str(f))[1].shape[0] for f in files) == heaps // HEAPS_PER_CHUNK


def heap_mode_config(tmp: Path, uri: str, interval: float = 0.2) -> Path:
    """One heap-mode stream on `uri`, binary files under tmp/data, nothing flushed by itself."""
    return write_config(tmp, daemon_toml(tmp, interval=interval)
                        + toml_table("stream", array=True, name="adc0", sources=[uri])
                        + buffer_toml(kind="fifo", capacity=100000, when_full="block",
                                      flush_count=100000, flush_interval=3600.0)
                        + sinks_toml(tmp, "binary"))


def heaps_written(tmp: Path) -> list[bytes]:
    """The heap payloads in the binary files under tmp/data, file after file."""
    out = []
    for path in sorted((tmp / "data").glob("*.bin")):
        data = path.read_bytes()[read_header(str(path))["header_bytes"]:]
        out += [data[i:i + 8192] for i in range(0, len(data), 8192)]
    return out


def told(events: list[dict], event: str) -> int:
    """How many times the log says `event` came: its lines, and the totals of its summaries.

    A run of `event` is its first lines, then summaries (``(repeated)``), ended
    by a ``(stopped)`` line whose ``total`` counts the whole run.
    """
    count = run = 0
    for e in events:
        name = e.get("event")
        if name == event:
            run += 1
        elif name == f"{event} (stopped)":
            count += e["total"]
            run = 0
    return count + run


def test_sixteen_idle_connections_do_not_lock_out_the_sender(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}"
    daemon = DaemonProcess(heap_mode_config(tmp_path, uri))
    idle: list[socket.socket] = []
    heaps = 10
    try:
        endpoint = daemon.ready()["control"]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5)
                for _ in range(_spead.TCP_MAX_PEERS)]
        wait_until(lambda: source_stats(endpoint, uri)["tcp_connections_accepted"]
                   == _spead.TCP_MAX_PEERS, what="16 idle peers")
        simulate(uri, "W1", heaps=heaps, rate=0.0, stop=False)
        wait_until(lambda: source_stats(endpoint, uri)["tcp_connections_closed"] == 1,
                   what="the sender served and closed")
        stats = source_stats(endpoint, uri)
        counters = control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]
        assert counters["heaps_complete"] == heaps
        assert stats["tcp_connections_accepted"] == _spead.TCP_MAX_PEERS + 1
        assert stats["tcp_connections_evicted"] == 1
        assert stats["tcp_connections_refused"] == 0
        assert len(stats["peers"]) == _spead.TCP_MAX_PEERS - 1
        assert daemon.stop() == 0
    finally:
        for c in idle:
            c.close()
        daemon.close()
    assert heaps_written(tmp_path) == w1_payloads(heaps)
    assert [e["event"] for e in daemon.events if e.get("event") == "tcp peer evicted"] == [
        "tcp peer evicted"]


def test_many_connections_log_a_handful_of_lines_and_summaries_that_count_them(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}"
    daemon = DaemonProcess(heap_mode_config(tmp_path, uri, interval=60.0))
    attempts = 300
    try:
        endpoint = daemon.ready()["control"]
        for _ in range(attempts):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        def ended(s: dict) -> int:
            # A burst may fill every slot with peers that came in the same poll:
            # then the one too many is refused (none of them is idle yet).
            return (s["tcp_connections_closed"] + s["tcp_connections_refused"]
                    + s["tcp_connections_evicted"])

        wait_until(lambda: ended(source_stats(endpoint, uri)) == attempts,
                   timeout=60, what="every peer ended")
        stats = source_stats(endpoint, uri)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert stats["tcp_connections_accepted"] + stats["tcp_connections_refused"] == attempts
    assert stats["peers"] == {}
    # Per kind (accepted, closed, evicted): the first 3, a summary per statistics
    # interval (60 s: none is due within the test) and the last line.
    lines = [e for e in daemon.events if str(e.get("event")).startswith("tcp peer")]
    assert len(lines) <= 3 * (EVENT_LINES + 2), [e["event"] for e in lines]
    assert told(daemon.events, "tcp peer accepted") == stats["tcp_connections_accepted"]
    assert told(daemon.events, "tcp peer closed") == stats["tcp_connections_closed"]
    assert told(daemon.events, "tcp peer evicted") == stats["tcp_connections_evicted"]


def test_many_stop_heaps_give_a_bounded_number_of_lines_and_files(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    uri = f"tcp://127.0.0.1:{port}"
    daemon = DaemonProcess(heap_mode_config(tmp_path, uri, interval=60.0))
    captures = 100
    packets = w1_packets(captures)
    try:
        endpoint = daemon.ready()["control"]
        sender = socket.create_connection(("127.0.0.1", port), timeout=5)
        start = time.monotonic()
        for i, packet in enumerate(packets):
            # A heap, then a stop heap: a capture boundary each, as they come.
            sender.sendall(packet + _spead.stop_packet(1_000_000 + i))
            wait_until(lambda n=i + 1: control(endpoint, {"command": "status"})["streams"][
                "adc0"]["counters"]["stop_heaps"] == n, what=f"stop heap {i + 1}")
        elapsed = time.monotonic() - start
        sender.close()
        counters = control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]
        assert counters["stop_heaps"] == captures
        assert counters["heaps_complete"] == captures
        assert daemon.stop() == 0
    finally:
        daemon.close()
    boundary = [e for e in daemon.events if str(e.get("event")).startswith("capture boundary")]
    assert len(boundary) <= EVENT_LINES + 2, [e["event"] for e in boundary]
    assert told(daemon.events, "capture boundary") == captures
    # At most one new file per BOUNDARY_REOPEN_INTERVAL of boundaries, plus the first.
    files = list((tmp_path / "data").glob("*.bin"))
    assert len(files) <= 2 + elapsed / BOUNDARY_REOPEN_INTERVAL, len(files)
    assert counters["boundary_reopens_skipped"] >= captures - len(files)
    assert heaps_written(tmp_path) == w1_payloads(captures)     # every heap, in order
