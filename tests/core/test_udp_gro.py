"""UDP GRO in ``_spead.UdpReader``: runs of datagrams arrive as one message, cut up in daqd.

Over real loopback UDP, with the GSO sender (whose messages loopback hands
whole to a socket that asked for UDP_GRO): the reader must give exactly the
datagrams sent, in order, with and without GRO; a message with more
datagrams than a batch holds must carry over into the next batches; a short
last datagram, datagrams longer than ``max_packet_size`` and drops at a full
socket buffer must be handled and counted.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from udp_helpers import (
    HAVE_GRO,
    HAVE_GSO,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    workload_stream,
)

from daqd import _spead
from daqd.errors import UsageProblem
from daqd.recv.sources import open_source
from daqd.recv.workloads import WORKLOADS, udp_batch

pytestmark = pytest.mark.network
needs_gso_gro = pytest.mark.skipif(not (HAVE_GSO and HAVE_GRO),
                                   reason="the kernel lacks UDP GSO or GRO")


def receiver(gro: bool = True, **options) -> tuple[socket.socket, _spead.UdpReader]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock, _spead.UdpReader(sock, gro=gro, timeout_ms=50, **options)


def read_all(reader: _spead.UdpReader, expected: int, seconds: float = 5.0
             ) -> tuple[list[bytes], dict[str, int], list[int]]:
    """Batches until `expected` packets arrived or no more come; packets, counters, sizes."""
    packets: list[bytes] = []
    totals: dict[str, int] = {}
    sizes = []
    deadline = time.monotonic() + seconds
    idle = 0
    while len(packets) < expected and time.monotonic() < deadline and idle < 4:
        got = reader.read_batch()
        assert got is not None
        batch, stats = got
        idle = 0 if batch or any(stats.values()) else idle + 1
        if batch:
            sizes.append(len(batch))
        packets += batch
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
    return packets, totals, sizes


def send_gso(sock: socket.socket, dest, payload: bytes, segment: int) -> None:
    """One sendmsg of `payload`, cut by the kernel into datagrams of `segment` bytes."""
    sock.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", segment))], 0, dest)


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
@pytest.mark.parametrize("workload, heaps", [("W1", 24), ("W2", 180), ("W3", 3)])
def test_same_datagrams_with_and_without_gro(workload, heaps, gro):
    per_heap = WORKLOADS[workload].packets_per_heap
    sock, reader = receiver(gro)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        assert reader.gro == (gro and HAVE_GRO)
        out.connect(sock.getsockname())
        _spead.send(_spead.SimReader(workload, heaps=heaps, batch=udp_batch(workload) + 3),
                    out.fileno(), "udp", gso=True)
        packets, stats, sizes = read_all(reader, heaps * per_heap)
    assert b"".join(packets) == bytes(workload_stream(workload, heaps))
    assert stats["packets_rejected_truncated"] == stats["packets_dropped_socket_buffer"] == 0
    assert max(sizes) <= 64                 # never more than a batch of packets


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
def test_empty_datagram_is_a_packet_for_the_decoder_to_count(gro):
    sock, reader = receiver(gro)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.sendto(b"", sock.getsockname())
        out.sendto(b"x" * 100, sock.getsockname())
        packets, stats, _ = read_all(reader, 2)
    assert packets == [b"", b"x" * 100]
    assert stats["packets_rejected_truncated"] == 0


@needs_gso_gro
def test_kernel_hands_gso_messages_whole_to_a_gro_socket():
    """The premise of the tests below: loopback keeps a GSO message whole for UDP_GRO."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(SOL_UDP, UDP_GRO, 1)
        rx.settimeout(2.0)
        send_gso(tx, rx.getsockname(), bytes(60 * 1080), 1080)
        data, ancillary, _, _ = rx.recvmsg(1 << 16, 64)
    assert len(data) == 60 * 1080
    assert [(level, kind, struct.unpack("i", value)[0]) for level, kind, value in ancillary] \
        == [(SOL_UDP, UDP_GRO, 1080)]


@needs_gso_gro
def test_message_larger_than_the_batch_carries_over():
    """60 datagrams in one message, 4 packets per batch: 15 batches, in order, none lost."""
    sock, reader = receiver(batch=4)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        _spead.send(_spead.SimReader("W2", heaps=180, batch=60), out.fileno(), "udp",
                    gso=True)
        packets, stats, sizes = read_all(reader, 180)
    assert b"".join(packets) == bytes(workload_stream("W2", 180))
    assert sizes == [4] * 45
    assert stats["packets_rejected_truncated"] == 0


@needs_gso_gro
def test_short_last_datagram():
    payload = bytes(range(256)) * 13 + b"tail"          # 3 x 1000 + 332 bytes
    sock, reader = receiver()
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        send_gso(out, sock.getsockname(), payload, 1000)
        packets, _, sizes = read_all(reader, 4)
    assert [len(p) for p in packets] == [1000, 1000, 1000, len(payload) - 3000]
    assert b"".join(packets) == payload
    assert sizes == [4]


@needs_gso_gro
def test_datagrams_longer_than_max_packet_size_are_counted():
    sock, reader = receiver(max_packet_size=512)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        dest = sock.getsockname()
        send_gso(out, dest, bytes(10 * 1080), 1080)     # one GRO message of 10
        out.sendto(bytes(2000), dest)                   # one plain datagram
        send_gso(out, dest, bytes(3 * 500), 500)        # 3 that fit
        packets, stats, _ = read_all(reader, 3)
    assert [len(p) for p in packets] == [500] * 3
    assert stats["packets_rejected_truncated"] == 11


@needs_gso_gro
def test_drops_at_a_full_socket_buffer_are_counted():
    """The kernel counts a dropped GRO message once: 1 to 64 datagrams per drop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    sock.bind(("127.0.0.1", 0))
    reader = _spead.UdpReader(sock, gro=True, timeout_ms=50)
    heaps = 2000                                        # about 2.2 MB of W2, unread
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        _spead.send(_spead.SimReader("W2", heaps=heaps, batch=60), out.fileno(), "udp",
                    gso=True)
        packets, stats, _ = read_all(reader, heaps)
    lost = heaps - len(packets)
    drops = stats["packets_dropped_socket_buffer"]
    assert lost > 0 and drops > 0
    assert drops <= lost <= 64 * drops


def test_source_uri_gro_switch():
    on = open_source("udp://127.0.0.1:0")
    off = open_source("udp://127.0.0.1:0?gro=0")
    try:
        assert on.reader.gro == HAVE_GRO and not off.reader.gro
        assert any("UDP_GRO" in w for w in on.warnings) == (not HAVE_GRO)
    finally:
        on.reader.close()
        off.reader.close()
    with pytest.raises(UsageProblem, match=r"gro='maybe' must be 1 or 0"):
        open_source("udp://127.0.0.1:0?gro=maybe")


@needs_gso_gro
def test_stop_still_hands_over_datagrams_already_received():
    """After stop(), the rest of a message already taken from the kernel comes first."""
    sock, reader = receiver(batch=4)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(sock.getsockname())
        _spead.send(_spead.SimReader("W2", heaps=60, batch=60), out.fileno(), "udp", gso=True)
        first, _, _ = read_all(reader, 4)
        reader.stop()
        rest = []
        while (got := reader.read_batch()) is not None:
            rest += got[0]
    assert len(first) == 4
    assert b"".join(first + rest) == bytes(workload_stream("W2", 60))


@needs_gso_gro
@pytest.mark.parametrize("batch, max_packet_size, messages", [
    (64, 9200, 8), (64, 1500, 1), (4, 9200, 1), (512, 9200, 71),
])
def test_gro_slots_take_no_more_bytes_than_a_batch_without(batch, max_packet_size, messages):
    """With GRO a recvmmsg takes at most the bytes of `batch` datagrams (64 KiB slots).

    So the datagrams are still in the core's cache when they are copied to
    their chunks (64 slots of 64 KiB spilled it); at least one slot.
    """
    sock, reader = receiver(batch=batch, max_packet_size=max_packet_size)
    plain_sock, plain = receiver(False, batch=batch, max_packet_size=max_packet_size)
    with sock, plain_sock:
        assert reader.gro and reader.messages == messages
        assert messages * 65536 <= max(65536, batch * (max_packet_size + 1))
        assert plain.messages == batch
