"""A byte stream's decoded headers, and the one pass over a packet's pointers (issue 16).

A ``ByteStreamReader`` decodes every packet to cut it out of the stream and hands
the headers to the stream with the packets, so the window does not decode them
again; ``decode_packet`` gathers in its one pass what a chunk stream needs of the
pointers (largest address, stop item, which pointers are other immediates), so a
heap's later packets are not scanned again and its first packet only at those.
Each case runs the same packets through spead2 4.5.1's ``ChunkRingStream``,
through daqd with packets the stream decodes itself (``ByteListReader``) and with
headers the reader decoded (``ByteStreamReader`` over the bytes, and over a
file; ``TcpServerReader`` behind a ``tcp://`` source on 127.0.0.1, spead2's
``TcpStream`` sending the heaps spead2 built, a socket the hand-made packets);
the chunks and counters must agree.  The cases are the ones the faster
paths treat apart: more than 64 pointers, the placement item past the 64th,
pointers spread over a heap's packets, and a placement on a packet-structure
item (HEAP_CNT).  The placement's shifts (a power-of-two timestamp_step or
heaps_per_chunk, in place of a division) are checked against spead2's
placement, which divides.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

import numpy as np
import pytest
import spead2
import spead2.send

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_chunks as sc
import spead2_helpers as h
from spead_packets import heap_packets, stop_heap

from daqd import _spead
from daqd.recv.sources import open_source

HEAP_BYTES = 1024
HEAPS_PER_CHUNK = 10
POSITION_ID, PAYLOAD_ID, FILLER_ID = 0x1000, 0x1001, 0x2000
LAYOUT = {"timestamp_item": POSITION_ID, "timestamp_step": 1,
          "heaps_per_chunk": HEAPS_PER_CHUNK, "heap_bytes": HEAP_BYTES}
STREAM = {"max_chunks": 4, "max_heaps": 16}
# Counters that depend on how packets are batched, not on what they are.
BATCHING = ("batches", "max_batch")
# A tcp:// source: once=1, the stream ends with its one sender; a sender
# silent for so long is closed (a bounded wait if it stalls).
TCP_SOURCE = "tcp://127.0.0.1:0?once=1&idle_timeout=20"


def payload(position: int) -> np.ndarray:
    return ((np.arange(HEAP_BYTES) + position) & 0xFF).astype(np.uint8)


def many_item_heaps(positions, fillers: int) -> list:
    """spead2's send heaps with `fillers` immediate items ahead of the position, and the end."""
    ig = spead2.send.ItemGroup()
    for k in range(fillers):
        ig.add_item(FILLER_ID + k, f"filler{k}", "", (), format=[("u", 32)])
    ig.add_item(POSITION_ID, "position", "", (), format=[("u", 32)])
    ig.add_item(PAYLOAD_ID, "payload", "", (HEAP_BYTES,), dtype=np.uint8)
    heaps = []
    for i in positions:
        for k in range(fillers):
            ig[FILLER_ID + k].value = k
        ig["position"].value = i
        ig["payload"].value = payload(i)
        heaps.append(ig.get_heap(descriptors="none", data="all"))
    heaps.append(ig.get_end())
    return heaps


def heap_bytes(heaps: list, max_packet_size: int = 9000, repeat_pointers: bool = False) -> bytes:
    """The bytes spead2 sends for `heaps` (its BytesStream; its TcpStream sends the same)."""
    return h.spead2_stream_bytes(heaps, max_packet_size=max_packet_size,
                                 repeat_pointers=repeat_pointers)


class Spead2TcpSender:
    """spead2's ``TcpStream`` sending `heaps` to 127.0.0.1:`port`, as a tcp:// sender."""

    def __init__(self, heaps: list, max_packet_size: int = 9000, repeat_pointers: bool = False):
        self.heaps = heaps
        self.config = spead2.send.StreamConfig(max_packet_size=max_packet_size)
        self.repeat_pointers = repeat_pointers

    def connect(self, port: int):
        """Connect (the listener's backlog takes it); return what sends and closes."""
        stream = spead2.send.TcpStream(h.THREAD_POOL, [("127.0.0.1", port)], self.config)

        def send() -> None:
            nonlocal stream
            try:
                for heap in self.heaps:
                    heap.repeat_pointers = self.repeat_pointers
                    stream.send_heap(heap)
            finally:
                del stream              # closes the connection: the once=1 source ends

        return send


class SocketSender:
    """A plain socket writing `data` to 127.0.0.1:`port` and closing, as a tcp:// sender."""

    def __init__(self, data: bytes):
        self.data = data

    def connect(self, port: int):
        """Connect (the listener's backlog takes it); return what sends and closes."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)

        def send() -> None:
            with sock:
                sock.sendall(self.data)

        return send


def daqd_tcp_run(sender, **kwargs):
    """daqd's chunks and counters through a tcp:// source, `sender` sending from a thread."""
    source = open_source(TCP_SOURCE)
    errors: list[BaseException] = []

    def run(send) -> None:
        try:
            send()
        except BaseException as exc:    # re-raised below, in the test
            errors.append(exc)

    thread = threading.Thread(target=run, args=(sender.connect(source.address[1]),))
    thread.start()
    try:
        result = sc.daqd_chunk_receive(reader=source.reader, **kwargs)
    finally:
        source.close()
        thread.join(30)
    assert not thread.is_alive(), "the sender did not finish"
    if errors:
        raise errors[0]
    assert result[1]["tcp_connections_accepted"] == 1
    return result


def daqd_runs(packets: list[bytes], tmp_path, sender, **kwargs):
    """daqd's chunks and counters: stream-decoded, reader-decoded from memory, from a
    file and from `sender` over TCP."""
    list_run = sc.daqd_chunk_receive(packets, batch=len(packets), **kwargs)
    data = b"".join(packets)
    memory_run = sc.daqd_chunk_receive(reader=_spead.ByteStreamReader(data), **kwargs)
    path = tmp_path / "packets.spead"
    path.write_bytes(data)
    with open(path, "rb") as f:
        file_run = sc.daqd_chunk_receive(reader=_spead.ByteStreamReader(f.fileno()), **kwargs)
    tcp_run = daqd_tcp_run(sender or SocketSender(data), **kwargs)
    return list_run, memory_run, file_run, tcp_run


def same_counters(stats: dict, other: dict) -> bool:
    """Whether two runs counted alike, but for batching and the TCP connection's own."""
    def kept(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in BATCHING and not k.startswith("tcp_")}
    return kept(stats) == kept(other)


def check(packets: list[bytes], tmp_path, sender=None, **kwargs) -> tuple[list, dict]:
    """Every daqd path agrees with spead2 and with each other; daqd's chunks and counters.

    `sender` sends the packets over TCP (default: a socket writing their bytes).
    """
    s2_kwargs, dq_kwargs = sc.split_kwargs(kwargs)
    ref, s2_stats = sc.spead2_chunk_receive(packets, **s2_kwargs)
    runs = daqd_runs(packets, tmp_path, sender, **dq_kwargs)
    first_chunks, first_stats = runs[0]
    for chunks, stats in runs:
        sc.assert_chunks_match(chunks, ref)
        assert sc.counter_mismatches(stats, s2_stats) == {}
        assert same_counters(stats, first_stats)
    return first_chunks, first_stats


def placed_positions(chunks) -> list[int]:
    return [c["chunk_id"] * HEAPS_PER_CHUNK + int(s)
            for c in chunks for s in np.flatnonzero(c["present"].reshape(-1))]


@pytest.mark.parametrize("fillers", [3, 58, 70], ids=["few", "64_pointers", "past_64"])
def test_position_among_many_pointers(fillers, tmp_path):
    """The placement item found wherever it is among a packet's pointers."""
    heaps = many_item_heaps(range(25), fillers)
    packets = h.split_packets(heap_bytes(heaps))
    chunks, stats = check(packets, tmp_path, Spead2TcpSender(heaps), **LAYOUT, **STREAM)
    assert placed_positions(chunks) == list(range(25))
    assert stats["chunk_heaps_present"] == 25
    for c in chunks:
        for slot in np.flatnonzero(c["present"].reshape(-1)):
            np.testing.assert_array_equal(
                c["data"][slot, 0], payload(c["chunk_id"] * HEAPS_PER_CHUNK + int(slot)))


@pytest.mark.parametrize(("repeat_pointers", "fillers"), [(False, 40), (True, 10)],
                         ids=["spread", "repeated"])
def test_pointers_spread_over_a_heaps_packets(repeat_pointers, fillers, tmp_path):
    """Small packets: a heap's pointers over several packets (or repeated in each);
    where the position is not in a heap's first packet the heap is not placed, by
    spead2's rule, on every path alike."""
    heaps = many_item_heaps(range(12), fillers)
    packets = h.split_packets(heap_bytes(heaps, 200, repeat_pointers))
    assert len(packets) > 3 * 12
    chunks, stats = check(packets, tmp_path, Spead2TcpSender(heaps, 200, repeat_pointers),
                          **LAYOUT, **STREAM)
    if repeat_pointers:
        assert stats["chunk_heaps_present"] == 12
    else:
        assert stats["chunk_heaps_rejected_no_timestamp"] == 12


def test_placement_on_heap_cnt(tmp_path):
    """timestamp_item HEAP_CNT: the placement reads a packet-structure item, which
    decode_packet does not mark among the other immediates."""
    packets = [p for cnt in range(1, 31)
               for p in heap_packets(cnt, [(PAYLOAD_ID, payload(cnt).tobytes())])]
    packets.append(stop_heap(31))
    layout = {"timestamp_item": 1, "timestamp_step": 1, "heaps_per_chunk": HEAPS_PER_CHUNK,
              "heap_bytes": HEAP_BYTES}
    (list_chunks, _), (memory_chunks, memory_stats), (file_chunks, _), (tcp_chunks, _) = \
        daqd_runs(packets, tmp_path, None, **layout, **STREAM)
    assert placed_positions(list_chunks) == list(range(1, 31))
    for chunks in (memory_chunks, file_chunks, tcp_chunks):
        assert placed_positions(chunks) == list(range(1, 31))
        for a, b in zip(chunks, list_chunks, strict=True):
            np.testing.assert_array_equal(a["data"], b["data"])
    assert memory_stats["chunk_heaps_present"] == 30


@pytest.mark.parametrize(("step", "per_chunk"), [(128, 16), (128, 10), (100, 16), (100, 10)],
                         ids=["shifts", "step_shift", "chunk_shift", "divisions"])
def test_placement_shifts_and_divisions(step, per_chunk, tmp_path):
    """Placement by shifts (a power-of-two timestamp_step or heaps_per_chunk) and by
    division agree with spead2's placement (Spead2Placement, which divides),
    misaligned timestamps included."""
    rng = np.random.default_rng(16)
    positions = np.sort(rng.choice(6 * per_chunk, size=3 * per_chunk, replace=False))
    packets = []
    for cnt, pos in enumerate(positions, start=1):
        ts = int(pos) * step + (int(rng.integers(1, step)) if cnt % 7 == 0 else 0)
        packets += heap_packets(cnt, [(POSITION_ID, ts), (PAYLOAD_ID, payload(cnt).tobytes())])
    packets.append(stop_heap(len(positions) + 1))
    layout = {"timestamp_item": POSITION_ID, "timestamp_step": step,
              "heaps_per_chunk": per_chunk, "heap_bytes": HEAP_BYTES}
    chunks, stats = check(packets, tmp_path, **layout, **STREAM)
    misaligned = len(positions) // 7
    assert stats["chunk_heaps_rejected_misaligned"] == misaligned
    assert stats["chunk_heaps_present"] == len(positions) - misaligned
