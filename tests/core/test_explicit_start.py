"""``explicit_start`` (spead2's ``StreamConfig.explicit_start``) against spead2 4.5.1.

A stream made with it takes no packet until ``start()``.  spead2 4.5.1 also
defers binding its UDP socket to the start (datagrams sent before it find no
socket and are lost); daqd binds at once, so that a port in use is refused at
startup, and what is sent meanwhile waits in the socket's buffer (the kernel
drops what does not fit, and daqd counts those drops).  After the start both
yield the same heaps from what reached them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import pytest
import spead2
import spead2.recv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_helpers as h
from daemon_helpers import free_port
from spead2_senders import heap_packets

from daqd import _spead
from daqd.recv.sources import open_source

logging.getLogger("spead2").setLevel(logging.CRITICAL)

pytestmark = pytest.mark.network

HEAPS = 6


def heaps_packets(first: int, n: int) -> list[bytes]:
    """Heaps `first` .. `first + n - 1`, three packets each (as spead2 sends them)."""
    return [p for cnt in range(first, first + n) for p in heap_packets(cnt, 600)]


def send(port: int, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))


def test_explicit_start_matches_spead2():
    """Nothing is taken before the start; after it, spead2 yields the heaps sent after
    the start, daqd those and the ones that waited in its socket, each as spead2
    decodes them."""
    before = heaps_packets(1, HEAPS)
    after = heaps_packets(HEAPS + 1, HEAPS) + [_spead.stop_packet(2 * HEAPS + 1)]
    port = free_port()
    ref = spead2.recv.Stream(h.THREAD_POOL, spead2.recv.StreamConfig(explicit_start=True),
                             spead2.recv.RingStreamConfig(heaps=64, contiguous_only=False))
    ref.add_udp_reader(port, bind_hostname="127.0.0.1", buffer_size=1 << 20)
    send(port, before)
    assert ref.stats["packets"] == 0
    ref.start()
    collect = h.start_collecting_spead2(ref)
    send(port, after)
    assert collect() == h.spead2_decode_packets(after)[0]

    source = open_source("udp://127.0.0.1:0", socket_buffer=1 << 20)
    try:
        stream = _spead.HeapStream(explicit_start=True)
        port = source.sock.getsockname()[1]
        send(port, before)
        assert stream.process(source.reader) == 0       # nothing taken before the start
        assert stream.stats()["packets"] == 0 and not stream.started
        stream.start()
        send(port, after)
        got = [h.daqd_record(x) for x in stream.run(source.reader)]
    finally:
        source.close()
    assert got == h.spead2_decode_packets(before + after)[0]
    assert [r["cnt"] for r in got] == list(range(1, 2 * HEAPS + 1))


def test_before_the_start_the_socket_buffer_bounds_and_drops_are_counted():
    """More than the socket buffer holds is sent before the start: the kernel's drops
    are counted (poll_source, as the daemon's statistics path does), and what is taken
    after the start plus what was dropped is what was sent."""
    packets = heaps_packets(1, 200)
    source = open_source("udp://127.0.0.1:0", socket_buffer=1 << 16)
    try:
        stream = _spead.ChunkStream(explicit_start=True, heap_bytes=1024)
        send(source.sock.getsockname()[1], packets)
        assert stream.process(source.reader) == 0
        dropped = stream.poll_source(source.reader)
        assert dropped > 0
        stream.start()
        source.reader.stop()                # hand over what the socket holds, then end
        while stream.process(source.reader) >= 0:
            pass
        stream.finish()
        stats = stream.stats()
    finally:
        source.close()
    assert stats["packets_dropped_socket_buffer"] == dropped
    assert 0 < stats["packets"] < len(packets)
    assert stats["packets"] + dropped == len(packets)


def test_running_a_stream_before_its_start_is_refused():
    """run()/add_packets()/chunks() would wait forever for a start nobody can give."""
    packets = heaps_packets(1, 1)
    with pytest.raises(RuntimeError, match="explicit_start: call start"):
        _spead.HeapStream(explicit_start=True).add_packets(packets)
    with pytest.raises(RuntimeError, match="explicit_start: call start"):
        _spead.ChunkStream(explicit_start=True).add_packets(packets)
    with pytest.raises(RuntimeError, match="explicit_start: call start"):
        next(_spead.ChunkStream(explicit_start=True).chunks(_spead.ByteListReader(packets)))
    stream = _spead.HeapStream(explicit_start=True)
    stream.start()
    assert [heap.cnt for heap in stream.add_packets(packets)] == [1]
