"""``memcpy``: the payload copy a stream uses (spead2's MEMCPY_STD, MEMCPY_NONTEMPORAL).

Either copy must put the same bytes where they go: the same packets are
received by spead2 4.5.1 (with the same choice) and by daqd, in heap mode
(``HeapStream``) and in chunk mode (``ChunkStream``), and the heaps and
chunks must be equal.  The packets have payloads of every size around the
streaming copy's thresholds (under 1 KiB: memcpy; otherwise a head to align
the destination, 128-byte blocks, 32-byte blocks and a tail) at offsets that
leave the destination unaligned.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import spead2
import spead2.recv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h
from spead2_chunks import compare
from spead_packets import imm, inproc_queue, packet, sim_packets

from daqd import _spead

MODES = ["standard", "nontemporal", "auto"]
SPEAD2_MEMCPY = {"standard": spead2.MEMCPY_STD, "nontemporal": spead2.MEMCPY_NONTEMPORAL,
                 "auto": spead2.MEMCPY_STD}
# Packet payload sizes: around DAQD_STREAM_MIN (1024) and the block sizes.
SIZES = [1, 31, 33, 127, 1023, 1024, 1025, 1055, 1153, 4095, 4097, 8191]
HEAP_BYTES = sum(SIZES)
RNG = np.random.default_rng(1)


def odd_heap(cnt: int, timestamp: int) -> list[bytes]:
    """One heap of HEAP_BYTES random bytes in packets of SIZES (unaligned offsets)."""
    payload = RNG.integers(0, 256, HEAP_BYTES, dtype=np.uint8).tobytes()
    out, offset = [], 0
    for size in SIZES:
        out.append(packet(cnt, payload[offset:offset + size], offset=offset,
                          heap_size=HEAP_BYTES, items=[imm(0x1600, timestamp)]))
        offset += size
    return out


@pytest.mark.parametrize("memcpy", MODES)
def test_heap_mode_copies_equal_spead2(memcpy):
    packets = [p for cnt in range(1, 7) for p in odd_heap(cnt, cnt)] + sim_packets("W3", 3)
    stream = spead2.recv.Stream(h.THREAD_POOL, spead2.recv.StreamConfig(
        max_heaps=4, memcpy=SPEAD2_MEMCPY[memcpy]))
    stream.add_inproc_reader(inproc_queue(spead2, packets))
    expected = h.collect_spead2(stream)
    ours = _spead.HeapStream(max_heaps=4, memcpy=memcpy)
    assert ours.memcpy == ("standard" if memcpy == "auto" else memcpy)
    got = [h.daqd_record(x) for x in ours.add_packets(packets) + ours.flush()]
    assert len(got) == 9 and all(r["complete"] for r in got)
    assert got == expected


@pytest.mark.parametrize("memcpy", MODES)
def test_chunk_mode_copies_equal_spead2(memcpy):
    packets = [p for i in range(40) for p in odd_heap(i + 1, i * 8192)]
    got, stats, _ = compare(packets, heap_bytes=HEAP_BYTES, heaps_per_chunk=8, memcpy=memcpy)
    assert stats["chunk_heaps_placed"] == 40 and len(got) == 5


@pytest.mark.parametrize("memcpy", MODES)
def test_chunk_mode_workloads_equal_spead2(memcpy):
    compare(sim_packets("W1", 64 * 3), heap_bytes=8192, heaps_per_chunk=64, memcpy=memcpy)


def test_an_unknown_copy_is_refused():
    for make in (lambda: _spead.HeapStream(memcpy="fast"),
                 lambda: _spead.ChunkStream(timestamp_item=0x1600, timestamp_step=8192,
                                            heaps_per_chunk=4, heap_bytes=8192, memcpy="fast")):
        with pytest.raises(ValueError, match="memcpy must be one of auto, standard, nontemporal"):
            make()
