"""A lone chunk stream's window reset (too_old_reset) with heaps live at the time.

The re-anchor evicts every open chunk, so heaps placed in them and still
incomplete lose their places; when they complete they are counted as
``chunk_heaps_too_old`` (their chunk left the window first, as spead2 counts a
heap whose chunk has gone).  Every heap sent is then either present in a chunk
or counted under a named reason.  The packets are sent by spead2 4.5.1; spead2's
ChunkRingStream (which never re-anchors) gets the same packets, and its
accounting adds up too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_chunks as sc
import spead2_helpers as h

from daqd import _spead
from daqd.recv.counters import CHUNK_HEAP_DROP_COUNTERS

TS, DATA = 0x1600, 0x3300
STEP, HPC, HEAP_BYTES = 256, 4, 512
LAYOUT = dict(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES)


def heaps(indices: list[int]) -> list[list[bytes]]:
    """The two packets of each heap (timestamp index * STEP), sent by spead2 in one
    stream (heap counters 1, 2, ...)."""
    ig = spead2.send.ItemGroup()
    ig.add_item(TS, "timestamp", "", (), format=[("u", 32)])
    ig.add_item(DATA, "data", "", (HEAP_BYTES,), dtype=np.uint8)
    stream_heaps = []
    for i in indices:
        ig["timestamp"].value = i * STEP
        ig["data"].value = np.full(HEAP_BYTES, i % 251, np.uint8)
        stream_heaps.append(ig.get_heap(descriptors="none", data="all"))
    packets = h.split_packets(h.spead2_stream_bytes(stream_heaps, max_packet_size=256 + 72))
    assert len(packets) == 2 * len(stream_heaps)
    return [packets[k:k + 2] for k in range(0, len(packets), 2)]


def flat(heap_list: list[list[bytes]]) -> list[bytes]:
    return [p for packets in heap_list for p in packets]


def unused(stats: dict[str, int]) -> int:
    """Heaps counted under some reason for not being used."""
    return (sum(stats[name] for name in CHUNK_HEAP_DROP_COUNTERS)
            + stats["incomplete_heaps_evicted"] + stats["incomplete_heaps_flushed"])


def test_heaps_live_at_a_window_reset_are_counted():
    reset = 2 * HPC
    # chunks 0..3 complete; two heaps of chunk 4 left half done; a restarted
    # sender (timestamps from 0 again)
    every = heaps([*range(4 * HPC), 4 * HPC, 4 * HPC + 1, *range(reset + HPC)])
    first, live, restart = every[:4 * HPC], every[4 * HPC:4 * HPC + 2], every[4 * HPC + 2:]
    packets = (flat(first) + [p[0] for p in live] + flat(restart)
               + [p[1] for p in live])                   # the live heaps complete after the reset
    sent = len(first) + len(live) + len(restart)
    stream = _spead.ChunkStream(max_chunks=2, pool=16, max_heaps=16, allow_out_of_order=True,
                                **LAYOUT)
    assert stream.too_old_reset == reset
    present = 0
    for chunk in stream.chunks(_spead.ByteListReader(packets)):
        with chunk:
            present += int(chunk.present.sum())
    s = stream.stats()
    assert s["chunk_window_resets"] == 1
    assert s["chunk_heaps_present"] == present == len(first) + len(restart) - (reset - 1)
    # the run of too-old heaps that led to the reset, and the two live heaps
    assert s["chunk_heaps_too_old"] == (reset - 1) + len(live)
    assert sent == present + unused(s)
    sc.assert_pool_free(stream)
    # spead2 (no reset: every restarted heap is too old, the live heaps complete in chunk 4)
    chunks, s2 = sc.spead2_chunk_receive(packets, max_chunks=2, max_heaps=16,
                                         allow_out_of_order=True, **LAYOUT)
    s2_present = sum(int(c["present"].sum()) for c in chunks)
    assert s2["too_old_heaps"] == len(restart)
    assert sent == s2_present + s2["too_old_heaps"]
