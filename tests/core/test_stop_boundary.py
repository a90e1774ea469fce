"""stop_boundary: a stop heap is a capture boundary in the compiled streams (the daemon's
default); without it a stop heap ends the stream, as in spead2."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import sim_packets

from daqd import _spead

W3_PACKETS = 8      # packets per W3 heap


def test_heap_mode_flushes_its_partial_heaps_at_the_stop_heap_and_goes_on():
    w3 = sim_packets("W3", 3)
    stream = _spead.HeapStream(max_heaps=4, stop_boundary=True)
    # heap 1 whole, heap 2 without its last packet, the stop heap, heap 3 whole
    heaps = stream.add_packets([*w3[:W3_PACKETS], *w3[W3_PACKETS:2 * W3_PACKETS - 1],
                                _spead.stop_packet(99), *w3[2 * W3_PACKETS:]])
    assert [(h.cnt, h.complete) for h in heaps] == [(1, True), (2, False), (3, True)]
    stats = stream.stats()
    assert not stream.stopped
    assert stats["stop_heaps"] == 1 and stream.stop_heaps == 1
    assert stats["incomplete_heaps_flushed"] == 1
    assert stats["packets_rejected_after_stop"] == 0


def test_without_stop_boundary_the_stop_heap_ends_the_stream():
    stream = _spead.HeapStream(max_heaps=4)
    heaps = stream.add_packets([*sim_packets("W1", 2), _spead.stop_packet(99),
                                *sim_packets("W1", 2)])
    assert len(heaps) == 2 and stream.stopped
    assert stream.stats()["packets_rejected_after_stop"] == 2


def layout(**kw):
    return dict(heaps_per_chunk=8, max_chunks=2, pool=8, **kw)


def completed(group) -> list[tuple[int, int]]:
    """(chunk id, heaps present) of the chunks completed so far, each released."""
    out = []
    while True:
        try:
            chunk = group.get(timeout=0)
        except TimeoutError:
            return out
        if chunk is None:
            return out
        with chunk:
            out.append((chunk.chunk_id, int(chunk.present.sum())))


def test_a_lone_chunk_stream_completes_its_chunks_and_starts_afresh():
    """After the boundary the window anchors at whatever comes: here timestamps from 0 again."""
    stream = _spead.ChunkStream(stop_boundary=True, **layout())
    stream.add_packets([*sim_packets("W1", 12), _spead.stop_packet(99)])
    assert completed(stream.group) == [(0, 8), (1, 4)]      # both open chunks, at once
    stream.add_packets(sim_packets("W1", 12))          # the sender restarted at timestamp 0
    stream.finish()
    assert completed(stream.group) == [(0, 8), (1, 4)]
    stats = stream.stats()
    assert stats["stop_heaps"] == 1 and stats["chunk_heaps_too_old"] == 0
    assert stats["chunk_heaps_placed"] == 24


def test_in_a_group_of_several_a_later_heap_behind_the_window_is_counted():
    group = _spead.ChunkGroup(**layout(eviction="lossy"))
    first = group.add_stream(stop_boundary=True)
    second = group.add_stream(stop_boundary=True)
    w1 = sim_packets("W1", 40)
    first.add_packets([*w1[1:8:2], _spead.stop_packet(99)])   # chunk 0, then the boundary
    second.add_packets(w1[:40:2])                      # the other source moves the window on
    first.add_packets(w1[9:16:2])                      # chunk 1, behind the window: too old
    stats = first.stats()
    assert stats["stop_heaps"] == 1
    assert stats["chunk_heaps_placed"] == 4
    assert stats["chunk_heaps_too_old"] == 4


def two_captures(eviction: str):
    """A group of two boundary streams; `feed(stop)` gives them W1 heaps 0-23 again (a
    sender restarted at timestamp 0), even heaps to the first, odd ones to the second,
    each then its stop heap if `stop`: lossy alternately from this thread, lossless from
    one thread per stream."""
    group = _spead.ChunkGroup(**layout(eviction=eviction))
    streams = [group.add_stream(stop_boundary=True) for _ in range(2)]
    w1 = sim_packets("W1", 24)

    def feed(stop: bool) -> None:
        tail = [_spead.stop_packet(99)] if stop else []
        per_stream = [[*w1[k::2], *tail] for k in range(2)]
        if eviction == "lossy":
            for pair in zip(*per_stream, strict=True):
                for stream, packet in zip(streams, pair, strict=True):
                    stream.add_packets([packet])
            return
        threads = [threading.Thread(target=stream.add_packets, args=(packets,))
                   for stream, packets in zip(streams, per_stream, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a stream of the lossless group is stuck"

    return group, streams, feed


@pytest.mark.parametrize("eviction", ["lossy", "lossless"])
def test_in_a_group_the_last_stop_heap_completes_every_open_chunk(eviction):
    """Capture 1 is completed whole at the second stream's stop heap; capture 2, from
    timestamp 0 again, starts a new window and is placed whole."""
    group, streams, feed = two_captures(eviction)
    feed(stop=True)
    assert completed(group) == [(0, 8), (1, 8), (2, 8)]
    assert group.boundaries == 1
    feed(stop=False)
    for stream in streams:
        stream.finish()
    assert completed(group) == [(0, 8), (1, 8), (2, 8)]
    stats = group.stats()
    assert stats["stop_heaps"] == 2
    assert stats["chunk_heaps_placed"] == 48 and stats["chunk_heaps_present"] == 48
    assert stats["chunk_heaps_too_old"] == 0 and stats["chunk_slots_missing"] == 0


def test_in_a_group_one_stop_heap_alone_completes_nothing_and_later_heaps_are_counted():
    """A source whose stop heap has not come (yet): the group cannot start afresh, the
    other stream's heaps of the next capture, behind the window or for a chunk still open
    for the previous capture, are counted as too old (never written into it); once the
    late stop heap comes, capture 1 is completed and the next capture is placed whole."""
    group = _spead.ChunkGroup(**layout(eviction="lossy"))
    first, second = (group.add_stream(stop_boundary=True) for _ in range(2))
    w1 = sim_packets("W1", 24)

    def alternately(packets):
        for a, b in zip(packets[0::2], packets[1::2], strict=True):
            first.add_packets([a])
            second.add_packets([b])

    alternately(w1)
    first.add_packets([_spead.stop_packet(99)])
    assert completed(group) == [(0, 8)]             # chunks 1 and 2 stay open
    first.add_packets(w1[0:16:2])                   # the restarted sender: chunks 0 and 1
    assert first.stats()["chunk_heaps_too_old"] == 8
    assert completed(group) == [] and group.boundaries == 0
    second.add_packets([_spead.stop_packet(99)])    # the late stop heap
    assert completed(group) == [(1, 8), (2, 8)]     # capture 1, untouched by capture 2
    assert group.boundaries == 1
    alternately(w1)
    first.finish()
    second.finish()
    assert completed(group) == [(0, 8), (1, 8), (2, 8)]
    stats = group.stats()
    assert stats["stop_heaps"] == 2 and stats["chunk_heaps_too_old"] == 8
    assert stats["chunk_heaps_placed"] == 48
