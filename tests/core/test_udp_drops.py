"""A UDP source's kernel drops, read without a datagram, counted once; a stop drains.

Over real loopback UDP into a small socket buffer that nobody reads: the
socket's drop count is read on request (``WindowStream.poll_source``, the
statistics path's call) as well as from each datagram (SO_RXQ_OVFL), and
the two together count every drop exactly once; after ``stop()`` the reader
still hands over the datagrams its socket held.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spead_packets import sim_packets

from daqd import _spead

pytestmark = pytest.mark.network

W1 = sim_packets("W1", 3000)


def small_receiver() -> tuple[socket.socket, _spead.UdpReader]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock, _spead.UdpReader(sock, gro=False, timeout_ms=20)


def drain(stream: _spead.HeapStream, reader: _spead.UdpReader) -> None:
    """Receive until the socket has nothing more (a stop makes the reader end there)."""
    reader.stop()
    while stream.process(reader) >= 0:
        stream.pop_ready()


def test_drops_are_read_without_a_datagram_and_counted_once():
    sock, reader = small_receiver()
    stream = _spead.HeapStream()
    assert reader.drops_readable
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        for data in W1[:1000]:
            out.send(data)
        # Nothing received yet, and no datagram after the drops: only a poll sees them.
        polled = stream.poll_source(reader)
        assert polled > 0
        assert stream.stats()["packets_dropped_socket_buffer"] == polled
        assert stream.poll_source(reader) == 0            # counted once
        # Room is made, and more is sent and dropped: these drops come with the
        # next datagrams (SO_RXQ_OVFL) and with the polls, and count once.
        for _ in range(3):
            stream.process(reader)
        for data in W1[1000:]:
            out.send(data)
        stream.poll_source(reader)
        drain(stream, reader)
        stream.poll_source(reader)
    stats = stream.stats()
    assert stats["packets"] + stats["packets_dropped_socket_buffer"] == len(W1)
    assert stats["packets_dropped_socket_buffer"] > polled


def test_a_stopped_reader_hands_over_what_its_socket_held():
    sock, reader = small_receiver()
    stream = _spead.HeapStream()
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        for data in W1[:10]:
            out.send(data)
        reader.stop()                   # before a single fill()
        drain(stream, reader)
    assert stream.stats()["packets"] == 10


def test_a_closed_reader_is_not_polled():
    sock, reader = small_receiver()
    stream = _spead.HeapStream()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        for data in W1[:1000]:
            out.send(data)
    reader.close()
    assert stream.poll_source(reader) == 0
    assert stream.poll_source(_spead.ByteListReader([])) == 0


@pytest.mark.parametrize("gro", [False, True])
def test_drop_baseline_is_taken_when_the_reader_is_made(gro):
    """Drops on the socket before the reader existed are not counted as its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        for data in W1[:1000]:
            out.send(data)
        reader = _spead.UdpReader(sock, gro=gro, timeout_ms=20)
        stream = _spead.HeapStream()
        assert stream.poll_source(reader) == 0
        drain(stream, reader)
        stats = stream.stats()
    assert 0 < stats["packets"] < 1000
    assert stats["packets_dropped_socket_buffer"] == 0
