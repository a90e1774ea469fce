"""A lossy chunk group whose consumer is woken per batch of chunks loses nothing it keeps up with.

Two ChunkStreams (two polarisations) fill one lossy group, each from its own
thread, the packets sent by spead2 4.5.1.  The two threads go chunk by chunk in
step (a barrier after each chunk), so neither is ever a window ahead of the
other: all that could lose a heap is the group (the consumer lingering for its
batch while the free ring runs out, a stream evicting or dropping meanwhile).
The consumer, a thread of its own, takes every chunk and gives it back at once.
Checked: every heap present, none too old or without a free chunk, each slot
holding its own heap's payload, every chunk once and in order, the pool whole.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h

from daqd import _spead

TS, POL, DATA = 0x1600, 0x4101, 0x3300
STEP, HPC, HEAP_BYTES = 256, 4, 256
LAYOUT = dict(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
              substream_item=POL, substreams=2)
CHUNKS = 60


def payload(pol: int, index: int) -> np.ndarray:
    return np.full(HEAP_BYTES, (pol * 100 + index) % 251, np.uint8)


def chunk_packets(pol: int) -> list[list[bytes]]:
    """One polarisation's heaps, sent by spead2, as one list of packets per chunk."""
    ig = spead2.send.ItemGroup()
    ig.add_item(TS, "timestamp", "", (), format=[("u", 32)])
    ig.add_item(POL, "pol", "", (), format=[("u", 32)])
    ig.add_item(DATA, "data", "", (HEAP_BYTES,), dtype=np.uint8)
    out = []
    for chunk in range(CHUNKS):
        heaps = []
        for slot in range(HPC):
            i = chunk * HPC + slot
            ig["timestamp"].value = i * STEP
            ig["pol"].value = pol
            ig["data"].value = payload(pol, i)
            heaps.append(ig.get_heap(descriptors="none", data="all"))
        out.append(h.split_packets(h.spead2_stream_bytes(heaps, max_packet_size=200)))
    return out


@pytest.mark.parametrize(("max_chunks", "pool"), [
    (2, 10),            # the default batch: 4
    (1, 5),             # 2; a stream evicts at every new chunk
    (3, 7),             # 2; the free ring runs short at once
])
def test_lossy_group_batches_and_loses_nothing_it_keeps_up_with(max_chunks, pool):
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=max_chunks, pool=pool, eviction="lossy",
                              wait_timeout=30.0)
    assert group.consumer_batch == (pool - max_chunks) // 2 > 1
    streams = [group.add_stream(max_heaps=4) for _ in range(2)]
    feeds = [chunk_packets(pol) for pol in range(2)]
    in_step = threading.Barrier(2, timeout=30)
    chunks: list[tuple[int, np.ndarray, np.ndarray]] = []

    def feed(k: int) -> None:
        for packets in feeds[k]:
            streams[k].add_packets(packets)
            in_step.wait()
        streams[k].finish()

    def consume() -> None:
        for chunk in group:
            with chunk:
                chunks.append((chunk.chunk_id, chunk.data.copy(), chunk.present.copy()))

    threads = [threading.Thread(target=feed, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=consume))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    stats = group.stats()
    assert stats["chunk_heaps_too_old"] == stats["chunk_heaps_no_free_chunk"] == 0
    assert stats["chunk_heaps_placed"] == 2 * CHUNKS * HPC
    assert [c[0] for c in chunks] == list(range(CHUNKS))
    for chunk_id, data, present in chunks:
        assert present.all()
        for slot in range(HPC):
            for pol in range(2):
                np.testing.assert_array_equal(data[slot, pol],
                                              payload(pol, chunk_id * HPC + slot))
    assert group.pool_counts() == {"free": pool, "open": 0, "ready": 0, "held": 0}
