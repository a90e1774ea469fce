"""The compiled TCP server reader behind ``tcp://``: real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_helpers import free_port
from spead_packets import sim_packets

from daqd import _spead
from daqd.recv.sources import open_source

pytestmark = pytest.mark.network


class Served:
    """A tcp:// source and a heap stream fed from it."""

    def __init__(self, query: str = ""):
        self.port = free_port(socket.SOCK_STREAM)
        self.source = open_source(f"tcp://127.0.0.1:{self.port}{query}")
        self.stream = _spead.HeapStream(max_heaps=4)
        self.heaps: list = []

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def until(self, check, timeout: float = 10.0) -> int:
        """Process until `check(stats)`; the last process() result."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.stream.process(self.source.reader)
            self.heaps += self.stream.pop_ready()
            if check(self.stream.stats()) or rc < 0:
                return rc
            assert time.monotonic() < deadline, self.stream.stats()

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


def test_a_packet_never_spans_peers(served):
    """Peer A's packet arrives in two halves with peer B's packet in between."""
    a_packet, b_packet = sim_packets("W1", 2)
    a, b = served.connect(), served.connect()
    served.until(lambda s: s["tcp_connections_accepted"] == 2)
    a.sendall(a_packet[:3000])
    b.sendall(b_packet)
    served.until(lambda s: s["packets"] == 1)
    a.sendall(a_packet[3000:])
    served.until(lambda s: s["packets"] == 2)
    stats = served.stream.stats()
    assert stats["heaps_complete"] == 2
    assert stats["stream_bytes_skipped"] == 0
    assert sorted(served.source.reader.peers().values()) == [len(a_packet), len(b_packet)]
    a.close()
    b.close()
    served.until(lambda s: s["tcp_connections_closed"] == 2)


def test_a_peer_closing_mid_packet_counts_the_cut_bytes_and_others_go_on(served):
    packets = sim_packets("W1", 3)
    a, b = served.connect(), served.connect()
    a.sendall(packets[0] + packets[1][:100])
    a.close()
    served.until(lambda s: s["tcp_connections_closed"] == 1)
    stats = served.stream.stats()
    assert stats["tcp_bytes_truncated"] == 100
    assert stats["packets_rejected_too_short"] + stats["packets_rejected_payload_length"] == 1
    b.sendall(packets[2])
    served.until(lambda s: s["heaps_complete"] == 2)
    events = served.source.reader.take_events()
    assert [e[0] for e in events] == ["accepted", "accepted", "closed"]
    assert events[-1][2] == len(packets[0]) + 100
    b.close()


def test_peers_beyond_the_limit_make_the_idlest_give_way(served):
    """All come at once, none sends: the one too many evicts one of them."""
    conns = [served.connect() for _ in range(_spead.TCP_MAX_PEERS + 1)]
    served.until(lambda s: s["tcp_connections_accepted"] == _spead.TCP_MAX_PEERS + 1)
    stats = served.stream.stats()
    assert stats["tcp_connections_evicted"] == 1
    assert stats["tcp_connections_refused"] == 0
    assert len(served.source.reader.peers()) == _spead.TCP_MAX_PEERS
    for c in conns:
        c.close()
    served.until(lambda s: s["tcp_connections_closed"] == _spead.TCP_MAX_PEERS)
    again = served.connect()                # slots free again: served
    served.until(lambda s: s["tcp_connections_accepted"] == _spead.TCP_MAX_PEERS + 2)
    assert served.stream.stats()["tcp_connections_evicted"] == 1
    again.close()


def test_once_serves_one_peer_and_ends_with_it():
    s = Served("?once=1")
    try:
        first = s.connect()
        s.until(lambda st: st["tcp_connections_accepted"] == 1)
        with pytest.raises(ConnectionRefusedError):
            s.connect()                     # the listener closed, as spead2's acceptor
        first.sendall(b"".join(sim_packets("W1", 3)))
        first.close()
        assert s.until(lambda st: False) == -1
        assert len(s.heaps) == 3
    finally:
        s.close()


def test_idle_peers_in_every_slot_do_not_lock_out_a_sender(served):
    """Sixteen idle connections, then a real sender: the idlest peer is evicted for it."""
    first = served.connect()
    served.until(lambda s: s["tcp_connections_accepted"] == 1)
    first.sendall(sim_packets("W1", 1)[0][:100])        # a partial packet, then silence
    served.until(lambda s: s["tcp_bytes_received"] == 100)
    idle = [first] + [served.connect() for _ in range(_spead.TCP_MAX_PEERS - 1)]
    served.until(lambda s: s["tcp_connections_accepted"] == _spead.TCP_MAX_PEERS)
    sender = served.connect()
    sender.sendall(b"".join(sim_packets("W1", 10)))
    sender.close()
    served.until(lambda s: s["heaps_complete"] == 10 and s["tcp_connections_closed"] == 1)
    stats = served.stream.stats()
    assert stats["tcp_connections_accepted"] == _spead.TCP_MAX_PEERS + 1
    assert stats["tcp_connections_refused"] == 0
    assert stats["tcp_connections_evicted"] == 1
    assert stats["tcp_bytes_truncated"] == 100          # the evicted peer's partial packet
    events = served.source.reader.take_events()
    assert [e[0] for e in events][-3:] == ["evicted", "accepted", "closed"]
    assert events[-3][2] == 100
    first.settimeout(10)
    try:
        assert first.recv(1) == b""                     # the evicted one: closed by us
    except ConnectionResetError:
        pass                                            # (or reset: its bytes went unread)
    for c in idle:
        c.close()


def test_a_peer_idle_for_idle_timeout_is_closed_and_counted():
    s = Served("?idle_timeout=0.2")
    try:
        idle = s.connect()
        s.until(lambda st: st["tcp_connections_accepted"] == 1)
        idle.sendall(sim_packets("W1", 1)[0][:100])
        s.until(lambda st: st["tcp_connections_idle_closed"] == 1)
        stats = s.stream.stats()
        assert stats["tcp_bytes_truncated"] == 100
        assert stats["tcp_connections_closed"] == 0
        assert s.source.reader.peers() == {}
        sender = s.connect()                # the source goes on serving
        sender.sendall(b"".join(sim_packets("W1", 3)))
        sender.close()
        s.until(lambda st: st["heaps_complete"] == 3 and st["tcp_connections_closed"] == 1)
        assert [e[0] for e in s.source.reader.take_events()] == [
            "accepted", "idle closed", "accepted", "closed"]
        idle.close()
    finally:
        s.close()


def test_once_ends_when_its_one_peer_is_closed_for_idleness():
    s = Served("?once=1&idle_timeout=0.2")
    try:
        idle = s.connect()
        assert s.until(lambda st: False) == -1      # the source ended with its one peer
        stats = s.stream.stats()
        assert stats["tcp_connections_idle_closed"] == 1
        idle.close()
    finally:
        s.close()


def test_a_batch_takes_more_than_64_buffered_packets(served):
    """``tcp://`` batches hold what is buffered, up to `sources.TCP_BATCH`, not 64 packets.

    200 W2 packets (about 216 KB) are all sent and the peer closed before the
    reader looks; its first read then takes them at once (up to 256 KiB), and
    the first batch cut from it holds every whole packet read.
    """
    from daqd.recv.sources import TCP_BATCH

    packets = sim_packets("W2", 200)
    peer = served.connect()
    peer.sendall(b"".join(packets))
    peer.close()
    served.until(lambda s: s["packets"] == len(packets))
    stats = served.stream.stats()
    assert 64 < stats["max_batch"] <= TCP_BATCH, stats
    assert stats["batches"] < len(packets) / 64, stats
