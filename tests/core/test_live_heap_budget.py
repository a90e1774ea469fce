"""Heap mode's budget for live partial heaps (``max_live_heap_bytes``).

The payload bytes the live heaps reserve together stay within the budget: a
heap that needs more evicts the oldest other live heaps (counted as evicted,
as the window's own evictions are), and a heap that alone would need more is
refused, each of its packets counted as ``packets_rejected_heap_over_budget``,
before anything is allocated for it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spead_packets import addr, packet, sim_packets

from daqd import _spead

KIB = 1 << 10
MIB = 1 << 20
PACKET = 8 * KIB


def partial_heap(cnt: int, size: int, packets: int) -> list[bytes]:
    """The first `packets` packets of a heap announcing `size` bytes (never all of it)."""
    return [packet(cnt, bytes([cnt % 256]) * PACKET, offset=i * PACKET, heap_size=size)
            for i in range(packets)]


def test_default_and_minimum():
    assert _spead.HeapStream().max_live_heap_bytes == _spead.DEFAULT_MAX_LIVE_HEAP_BYTES
    assert _spead.DEFAULT_MAX_LIVE_HEAP_BYTES == 64 * MIB
    with pytest.raises(ValueError, match="max_live_heap_bytes must be at least 65536"):
        _spead.HeapStream(max_live_heap_bytes=_spead.MIN_MAX_LIVE_HEAP_BYTES - 1)
    with pytest.raises(ValueError, match="max_live_heap_bytes"):
        _spead.ChunkStream(max_live_heap_bytes=1024)


def test_a_heap_larger_than_the_budget_is_refused_packet_by_packet():
    stream = _spead.HeapStream(max_live_heap_bytes=1 * MIB)
    heaps = stream.add_packets(partial_heap(1, 2 * MIB, 16) + sim_packets("W1", 3))
    stats = stream.stats()
    assert stats["packets_rejected_heap_over_budget"] == 16
    assert stats["packets_rejected_heap_too_large"] == 0
    # Nothing of it was ever live; the valid heaps after it are whole.
    assert [h.complete for h in heaps] == [True] * 3
    assert stats["heaps"] == stats["heaps_complete"] == 3
    assert stream.live_heap_bytes == 0


def test_an_unsized_heap_growing_past_the_budget_is_refused_there():
    stream = _spead.HeapStream(max_live_heap_bytes=64 * KIB, max_heap_size=1 * MIB)
    packets = [packet(1, bytes(PACKET), offset=i * PACKET, with_size=False) for i in range(10)]
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    # 8 packets fill 64 KiB; the 9th and 10th would take the heap past the budget.
    assert stats["packets_rejected_heap_over_budget"] == 2
    assert [h.received for h in heaps] == [64 * KIB]


def test_an_item_address_past_the_budget_is_refused():
    stream = _spead.HeapStream(max_live_heap_bytes=64 * KIB)
    stream.add_packets([packet(1, bytes(64), heap_size=64, items=[addr(0x1000, 128 * KIB)])])
    assert stream.stats()["packets_rejected_heap_over_budget"] == 1


def test_heaps_over_the_budget_together_evict_the_oldest_first():
    budget = 1 * MIB
    size = 400 * KIB                    # two fit in the budget, three do not
    stream = _spead.HeapStream(max_heaps=8, max_live_heap_bytes=budget)
    reader = _spead.ByteListReader(partial_heap(1, size, 2) + partial_heap(2, size, 2))
    while stream.process(reader) >= 0:
        pass
    assert stream.pop_ready() == []
    assert stream.live_heap_bytes == 2 * size
    # Heap 3 needs 400 KiB more: heap 1, the oldest, leaves (its memory given back).
    reader = _spead.ByteListReader(partial_heap(3, size, 2))
    while stream.process(reader) >= 0:
        pass
    evicted = stream.pop_ready()
    assert [(h.cnt, h.reason, h.complete) for h in evicted] == [(1, "evicted", False)]
    assert stream.live_heap_bytes == 2 * size <= budget
    stats = stream.stats()
    assert stats["incomplete_heaps_evicted"] == 1
    assert stats["packets_rejected_heap_over_budget"] == 0
    # Heap 2 is still live: its remaining packets complete it.
    rest = [packet(2, bytes([2]) * PACKET, offset=i * PACKET, heap_size=size)
            for i in range(2, size // PACKET)]
    heaps = stream.add_packets(rest)
    done = [h for h in heaps if h.cnt == 2]
    assert len(done) == 1 and done[0].complete
    assert stream.live_heap_bytes == 0     # add_packets flushed heap 3 at the end


def test_the_window_alone_never_holds_more_than_the_budget():
    """max_heaps heaps of nearly the budget each, all partial: the live total stays within it."""
    budget = 4 * MIB
    stream = _spead.HeapStream(max_heaps=8, max_live_heap_bytes=budget)
    most = 0
    for cnt in range(1, 33):
        reader = _spead.ByteListReader(partial_heap(cnt, 3 * MIB, 4))
        while stream.process(reader) >= 0:
            pass
        stream.pop_ready()
        most = max(most, stream.live_heap_bytes)
    assert most <= budget
    assert stream.stats()["incomplete_heaps_evicted"] == 31
