"""A capture boundary while another receive thread of the source is inside a batch.

A stop heap on one socket of a source (`boundary_key`) closes the capture at
once, but a sibling stream inside a batch still holds chunks of that capture
until the end of its batch.  Until it lets go of them they are counted in
``ChunkGroup.boundary_held`` and ``capture_untaken``: the daemon's consumer
closes the capture's files only once every chunk of the capture was taken
(``capture_untaken`` 0), and ``get_batch`` never returns chunks of two captures
together, so those chunks reach the first capture's file, not the next one's.

The sibling is held inside its batch for real: the group's placement hook (a
ctypes callback, which takes the GIL itself) waits on an event at one heap, so
the stream's thread sits in its batch, holding its chunks, while the test
thread sends the stop heap on the other stream.  The packets are sent by spead2
4.5.1.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path

import numpy as np
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h
from core.test_spead2_chunk_cases import DAQD_CAPSULE, DaqdPlaceData, place_tuple

from daqd import _spead

POSITION, DATA = 0x1600, 0x3300
HPC, HEAP_BYTES = 4, 256
HOLD = 5                                # the heap at which the hook holds its stream
WAIT = 30.0                             # bounded waits (seconds)

entered = threading.Event()             # the held stream is inside the hook
go = threading.Event()                  # let it go on


@ctypes.CFUNCTYPE(None, ctypes.POINTER(DaqdPlaceData), ctypes.c_void_p)
def holding_place(data, user):
    """chunk = position // HPC; at position HOLD, wait for `go` first."""
    d = data.contents
    position = d.items[0]
    if position < 0 or d.heap_length != HEAP_BYTES:
        return
    if position == HOLD:
        entered.set()
        go.wait(WAIT)
    d.chunk_id = position // HPC
    d.heap_index = position % HPC
    d.heap_offset = d.heap_index * HEAP_BYTES


def heaps(positions: range) -> list[bytes]:
    """Packets of one heap per position (its payload: the position), sent by spead2."""
    ig = spead2.send.ItemGroup()
    ig.add_item(POSITION, "position", "", (), format=[("u", 32)])
    ig.add_item(DATA, "data", "", (HEAP_BYTES,), dtype=np.uint8)
    out = []
    for i in positions:
        ig["position"].value = i
        ig["data"].value = np.full(HEAP_BYTES, i, np.uint8)
        out.append(ig.get_heap(descriptors="none", data="all"))
    return h.split_packets(h.spead2_stream_bytes(out))


def stop() -> list[bytes]:
    return h.split_packets(h.spead2_stream_bytes([spead2.send.ItemGroup().get_end()]))


def test_chunks_held_mid_batch_at_a_boundary_are_counted_until_let_go():
    entered.clear()
    go.clear()
    group = _spead.ChunkGroup(heap_bytes=HEAP_BYTES, heaps_per_chunk=HPC, max_chunks=2, pool=8,
                              eviction="lossy", place=place_tuple(holding_place, DAQD_CAPSULE, 0),
                              place_items=[POSITION])
    # One source's two receive threads' streams.
    a, b = (group.add_stream(stop_boundary=True, boundary_key=0) for _ in range(2))
    # b's one batch: chunk 0 (heaps 0-3) and chunk 1 (heaps 4, 5); it stops at heap 5.
    worker = threading.Thread(target=b.add_packets, args=(heaps(range(HOLD + 1)),))
    worker.start()
    try:
        assert entered.wait(WAIT)
        a.add_packets(stop())           # the source's boundary, b inside its batch
        assert group.boundaries == 1
        # b still holds both chunks of the closed capture: none is in the data
        # ring yet, so the capture is not complete there (the consumer waits).
        assert group.data_ring_size == 0
        assert group.boundary_held == 2
        assert group.capture_untaken == 2
    finally:
        go.set()
        worker.join(WAIT)
    assert not worker.is_alive()
    # b's batch ended: it let go of them, and both are in the data ring, in order.
    assert group.boundary_held == 0
    assert group.capture_untaken == 2
    # The next capture's first chunk completes behind them (heaps 0-11: chunks
    # 0-2, two open at most).
    a.add_packets(heaps(range(3 * HPC)))
    assert group.data_ring_size == 3
    # One batch never takes chunks of two captures.
    chunks = group.get_batch(0, 0)
    try:
        assert [c.chunk_id for c in chunks] == [0, 1]
        assert chunks[0].present.reshape(-1).tolist() == [1, 1, 1, 1]
        assert chunks[1].present.reshape(-1).tolist() == [1, 1, 0, 0]
        for c in chunks:
            for slot in np.flatnonzero(c.present.reshape(-1)):
                assert (c.data[slot] == c.chunk_id * HPC + slot).all()
    finally:
        group.release_many(chunks)
    assert group.capture_untaken == 0
    a.finish()
    b.finish()
    assert group.boundary_held == 0
    last = group.get_batch(0, 0)
    assert [(c.chunk_id, c.present.sum()) for c in last] == [(0, HPC), (1, HPC), (2, HPC)]
    group.release_many(last)


def test_no_chunk_held_when_every_stream_is_outside_a_batch():
    group = _spead.ChunkGroup(heap_bytes=HEAP_BYTES, heaps_per_chunk=HPC, max_chunks=2, pool=8,
                              eviction="lossy", place=place_tuple(holding_place, DAQD_CAPSULE, 0),
                              place_items=[POSITION])
    a, b = (group.add_stream(stop_boundary=True, boundary_key=0) for _ in range(2))
    b.add_packets(heaps(range(HOLD)))       # heaps 0-4, the hook never holds
    a.add_packets(stop())
    assert group.boundaries == 1
    assert group.boundary_held == 0
    assert group.data_ring_size == 2
    a.finish()
    b.finish()
