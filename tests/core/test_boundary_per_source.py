"""Capture boundaries per source: the chunk streams of one source (`boundary_key`) count as one.

The daemon's ``threads`` give one source several sockets, each its own
ChunkStream; a stop heap reaches only the socket of its flow.  With the same
``boundary_key`` a stop heap on any of them is the source's boundary: the group
closes the capture once every source is at one, without waiting for the
source's other sockets.  What those had placed stays in its chunks; a heap of
theirs still incomplete at the boundary loses its place and is counted as too
old when it completes.  The packets here are sent by spead2 4.5.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h

from daqd import _spead

TS, POL, DATA = 0x1600, 0x4101, 0x3300
STEP, HPC, HEAP_BYTES = 256, 8, 512
GROUP = dict(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
             substream_item=POL, substreams=2, max_chunks=3, pool=8)


def heaps(pol: int, indices: range) -> list[list[bytes]]:
    """Heaps of polarisation `pol` (timestamp index i), sent by spead2: packets of each.

    Two packets a heap (256 payload bytes each).
    """
    ig = spead2.send.ItemGroup()
    ig.add_item(TS, "timestamp", "", (), format=[("u", 32)])
    ig.add_item(POL, "pol", "", (), format=[("u", 32)])
    ig.add_item(DATA, "data", "", (HEAP_BYTES,), dtype=np.uint8)
    out = []
    for i in indices:
        ig["timestamp"].value = i * STEP
        ig["pol"].value = pol
        ig["data"].value = np.full(HEAP_BYTES, pol * 100 + i % 100, np.uint8)
        packets = h.split_packets(h.spead2_stream_bytes(
            [ig.get_heap(descriptors="none", data="all")], max_packet_size=256 + 72))
        assert len(packets) == 2
        out.append(packets)
    return out


def flat(heap_list: list[list[bytes]]) -> list[bytes]:
    return [p for packets in heap_list for p in packets]


def stop() -> list[bytes]:
    ig = spead2.send.ItemGroup()
    return h.split_packets(h.spead2_stream_bytes([ig.get_end()]))


def completed(group) -> list[tuple[int, list[int]]]:
    """(chunk id, heaps present per polarisation) of the chunks ready now, each released."""
    out = []
    while True:
        try:
            chunk = group.get(timeout=0)
        except TimeoutError:
            return out
        if chunk is None:
            return out
        with chunk:
            for slot in np.flatnonzero(chunk.present[:, 0]):
                assert (chunk.data[slot, 0] == (chunk.chunk_id * HPC + slot) % 100).all()
            out.append((chunk.chunk_id, chunk.present.sum(axis=0).tolist()))


def test_a_stop_heap_on_one_socket_ends_the_sources_capture():
    group = _spead.ChunkGroup(**GROUP, eviction="lossy")
    # One source's two sockets: pol 0 on the first, pol 1 on the second.
    a, b = (group.add_stream(stop_boundary=True, boundary_key=0) for _ in range(2))
    b_heaps = heaps(1, range(13))
    a.add_packets(flat(heaps(0, range(16))))
    b.add_packets(flat(b_heaps[:12]) + b_heaps[12][:1])      # heap 12: its first packet only
    a.add_packets(stop())
    # The capture closed at a's stop heap: b's heaps placed so far stay in their chunks.
    assert group.boundaries == 1
    assert completed(group) == [(0, [8, 8]), (1, [8, 4])]
    b.add_packets(b_heaps[12][1:])          # heap 12 completes: its chunk has gone
    assert b.stats()["chunk_heaps_too_old"] == 1
    # The next capture, timestamps from 0 again, from both sockets.
    a.add_packets(flat(heaps(0, range(8))))
    b.add_packets(flat(heaps(1, range(8))))
    a.finish()
    b.finish()
    assert completed(group) == [(0, [8, 8])]
    assert group.pool_counts() == {"free": 8, "open": 0, "ready": 0, "held": 0}
    stats = group.stats()
    assert stats["chunk_heaps_placed"] == 16 + 13 + 16
    assert stats["chunk_heaps_present"] == 16 + 12 + 16
    assert stats["chunk_heaps_too_old"] == 1


def test_every_source_still_needs_its_boundary():
    """Two sources of two sockets each: the capture closes once each source has had a stop
    heap on one of its sockets, not before."""
    group = _spead.ChunkGroup(**GROUP, eviction="lossy")
    a0, a1 = (group.add_stream(stop_boundary=True, boundary_key=0) for _ in range(2))
    b0, b1 = (group.add_stream(stop_boundary=True, boundary_key=1) for _ in range(2))
    a0.add_packets(flat(heaps(0, range(8))))
    b1.add_packets(flat(heaps(1, range(8))))
    a1.add_packets(stop())                  # source 0 at its boundary (a socket with no flow)
    assert group.boundaries == 0 and completed(group) == []
    b0.add_packets(stop())
    assert group.boundaries == 1
    assert completed(group) == [(0, [8, 8])]
    for s in (a0, a1, b0, b1):
        s.finish()
    assert group.pool_counts()["free"] == 8


def test_without_a_key_each_stream_needs_its_own_stop_heap():
    group = _spead.ChunkGroup(**GROUP, eviction="lossy")
    a, b = (group.add_stream(stop_boundary=True) for _ in range(2))
    a.add_packets(flat(heaps(0, range(8))))
    b.add_packets(flat(heaps(1, range(8))))
    a.add_packets(stop())
    assert group.boundaries == 0
    b.add_packets(stop())
    assert group.boundaries == 1
    assert completed(group) == [(0, [8, 8])]
    a.finish()
    b.finish()


def test_a_negative_boundary_key_is_refused():
    group = _spead.ChunkGroup(**GROUP)
    with pytest.raises(ValueError, match="boundary_key must be >= 0"):
        group.add_stream(boundary_key=-1)


def test_a_shared_boundary_key_needs_a_lossy_group():
    """A lossless stream is never parked: a sibling's boundary could not let go of its chunks."""
    group = _spead.ChunkGroup(**GROUP, eviction="lossless")
    group.add_stream(stop_boundary=True, boundary_key=0)
    group.add_stream(stop_boundary=True, boundary_key=1)        # keys of their own: fine
    with pytest.raises(ValueError, match="boundary_key 0 is another stream's"):
        group.add_stream(stop_boundary=True, boundary_key=0)
