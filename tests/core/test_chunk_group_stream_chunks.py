"""A group's window wider than its streams' (``ChunkGroup(stream_chunks=...)``).

spead2 sizes a chunk stream group's window (``ChunkStreamGroupConfig.max_chunks``)
and each stream's (``ChunkStreamConfig.max_chunks``) apart; daqd's
``stream_chunks`` is the second.  Checked against spead2 (the same heaps too
old, the same chunks), and that a lossless stream may then run
``max_chunks - stream_chunks`` chunks ahead of the slowest without waiting,
where with equal windows it waits at the first chunk it opens ahead.
"""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h
from test_chunk_group import HPC, LAYOUT, check_data, finish_after, pol_packets, spead2_take

from daqd import _spead

GROUP_CHUNKS, STREAM_CHUNKS, POOL = 6, 3, 12


def late_feed(pol):
    """Chunks 0..5 of one polarisation, the first heap of chunk 1 sent after chunk 4's:
    within a window of 6 chunks, too old for one of 3."""
    packets = pol_packets(pol, 6 * HPC)
    per_heap = len(packets) // (6 * HPC)
    late = packets[HPC * per_heap:(HPC + 1) * per_heap]
    rest = packets[:HPC * per_heap] + packets[(HPC + 1) * per_heap:]
    cut = 5 * HPC * per_heap - per_heap          # after chunk 4's heaps (one heap fewer)
    return rest[:cut] + late + rest[cut:]


def daqd_chunks(stream_chunks, feeds):
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=GROUP_CHUNKS, stream_chunks=stream_chunks,
                              pool=POOL, eviction="lossless")
    streams = [group.add_stream(max_heaps=4) for _ in feeds]
    out = []

    def consume():
        for chunk in group:
            with chunk:
                out.append((chunk.chunk_id, chunk.data.copy(), chunk.present.copy()))

    threads = [threading.Thread(target=consume)] + [
        threading.Thread(target=finish_after(f), args=(s,))
        for s, f in zip(streams, feeds, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    return out, [s.stats() for s in streams]


def spead2_chunks(stream_chunks, feeds):
    group, members = h.spead2_chunk_group(LAYOUT, streams=len(feeds), max_chunks=GROUP_CHUNKS,
                                          chunks=POOL, stream_chunks=stream_chunks)
    for member, packets in zip(members, feeds, strict=True):
        member.add_buffer_reader(b"".join(packets))
    out = spead2_take(group, 6)
    stats = [member.stats["too_old_heaps"] for member in members]
    group.stop()
    return out, stats


@pytest.mark.parametrize("stream_chunks", [STREAM_CHUNKS, GROUP_CHUNKS])
def test_stream_window_matches_spead2(stream_chunks):
    feeds = [late_feed(0), late_feed(1)]
    ours, our_stats = daqd_chunks(stream_chunks, feeds)
    theirs, their_too_old = spead2_chunks(stream_chunks, feeds)
    check_data(ours)
    expected_too_old = 1 if stream_chunks == STREAM_CHUNKS else 0
    assert [s["chunk_heaps_too_old"] for s in our_stats] == [expected_too_old] * 2
    assert their_too_old == [expected_too_old] * 2
    assert [c[0] for c in ours] == [c[0] for c in theirs] == list(range(6))
    for (_, a_data, a_present), (_, b_data, b_present) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a_present, b_present)
        np.testing.assert_array_equal(a_data, b_data)


@pytest.mark.parametrize(("stream_chunks", "waits"), [(STREAM_CHUNKS, False),
                                                      (GROUP_CHUNKS, True)])
def test_a_stream_runs_ahead_by_the_difference_without_waiting(stream_chunks, waits):
    """The slow stream is at chunk 5; the fast one sends chunks 0..8 (3 ahead)."""
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=GROUP_CHUNKS, stream_chunks=stream_chunks,
                              pool=POOL, eviction="lossless")
    slow, fast = group.add_stream(max_heaps=4), group.add_stream(max_heaps=4)
    slow_at_5, fast_done = threading.Event(), threading.Event()
    chunks = []

    def consume():
        for chunk in group:
            with chunk:
                chunks.append((chunk.chunk_id, chunk.data.copy(), chunk.present.copy()))

    def run_slow():
        slow.add_packets(pol_packets(1, 6 * HPC))
        slow_at_5.set()
        # Until the fast stream is done or waits for this one (no sleep).
        while not fast_done.is_set() and group.waiting_streams == 0:
            fast_done.wait(0.01)
        slow.finish()

    def run_fast():
        slow_at_5.wait(10)
        fast.add_packets(pol_packets(0, 9 * HPC))
        fast_done.set()
        fast.finish()

    threads = [threading.Thread(target=f) for f in (consume, run_slow, run_fast)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert (fast.stats()["worker_blocked"] > 0) == waits
    assert [c[0] for c in chunks] == list(range(9))
    check_data(chunks)
    assert sum(int(c[2].sum()) for c in chunks) == 6 * HPC + 9 * HPC


def test_stream_chunks_is_at_most_max_chunks():
    with pytest.raises(ValueError, match="stream_chunks"):
        _spead.ChunkGroup(**LAYOUT, max_chunks=3, stream_chunks=4, pool=POOL)
    assert _spead.ChunkGroup(**LAYOUT, max_chunks=3, pool=POOL).stream_chunks == 3
