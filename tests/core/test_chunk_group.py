"""Chunk stream groups: several streams filling one set of chunks."""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h
from spead_packets import heap_packets

from daqd import _spead

TS, POL, DATA = 0x1600, 0x4101, 0x3300
STEP, HPC, HEAP_BYTES, MAX_CHUNKS, POOL = 512, 8, 512, 3, 8
LAYOUT = dict(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
              substream_item=POL, substreams=2)


def pol_packets(pol, n_heaps, first_chunk=0):
    """One polarisation's heaps: payload bytes say (pol, heap index)."""
    out = []
    for i in range(n_heaps):
        t = (first_chunk * HPC + i) * STEP
        payload = bytes([pol * 100 + i % 100]) * HEAP_BYTES
        out += heap_packets(2 * i + pol + 1, [(TS, t), (POL, pol), (DATA, payload)],
                            packet_payload=256)
    return out


def collect(group, out):
    for chunk in group:
        with chunk:
            out.append((chunk.chunk_id, chunk.data.copy(), chunk.present.copy()))


def run_group(eviction, feeds):
    """Feed each stream of a new group from its own thread; return the chunks."""
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=MAX_CHUNKS, pool=POOL, eviction=eviction)
    streams = [group.add_stream(max_heaps=4) for _ in feeds]
    chunks = []
    consumer = threading.Thread(target=collect, args=(group, chunks))
    consumer.start()
    threads = [threading.Thread(target=feed, args=(stream,))
               for stream, feed in zip(streams, feeds, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert group.pool_counts() == {"free": POOL, "open": 0, "ready": 0, "held": 0}
    return group, streams, chunks


def finish_after(packets):
    def feed(stream):
        stream.add_packets(packets)
        stream.finish()
    return feed


def spead2_take(group, count):
    """Take the first `count` non-empty chunks of a spead2 group with two substreams.

    They come as `collect` gives daqd's, missing heaps' data zero; each chunk goes
    back to the group zeroed.
    """
    out = []
    for chunk in group.data_ringbuffer:
        present = np.array(chunk.present)
        if present.any():
            out.append((chunk.chunk_id, np.array(chunk.data) * present[..., None], present))
        chunk.data[:] = 0
        group.add_free_chunk(chunk)
        if len(out) == count:
            break
    return out


def check_data(chunks):
    for chunk_id, data, present in chunks:
        for slot in range(HPC):
            for pol in range(2):
                if present[slot, pol]:
                    i = chunk_id * HPC + slot
                    assert (data[slot, pol] == pol * 100 + i % 100).all()
                else:
                    assert not data[slot, pol].any()


@pytest.mark.parametrize("eviction", ["lossless", "lossy"])
def test_two_streams_fill_the_same_chunks(eviction):
    n = 5 * HPC
    group, streams, chunks = run_group(eviction, [finish_after(pol_packets(p, n))
                                                  for p in (0, 1)])
    stats = group.stats()
    placed = sum(s.stats()["chunk_heaps_placed"] for s in streams)
    assert stats["chunk_heaps_placed"] == placed
    assert stats["chunk_heaps_too_old"] + placed == 2 * n
    assert stats["chunks_completed"] == len(chunks)
    assert [c[0] for c in chunks] == sorted(c[0] for c in chunks)
    check_data(chunks)
    present = sum(int(c[2].sum()) for c in chunks)
    assert present == stats["chunk_heaps_present"] == placed
    if eviction == "lossless":
        assert present == 2 * n


def test_lossless_waits_for_the_slow_stream():
    """A stream racing ahead waits until the other has finished its old chunks."""
    n = 6 * HPC
    slow_first, slow_rest = pol_packets(1, HPC // 2), pol_packets(1, n)[HPC // 2 * 2:]
    slow_started = threading.Event()
    fast_done = threading.Event()

    def slow(stream):
        stream.add_packets(slow_first)          # holds chunk 0 from here on
        slow_started.set()
        fast_done.wait(timeout=0.5)             # the fast stream cannot finish meanwhile
        stream.add_packets(slow_rest)
        stream.finish()

    def fast(stream):
        slow_started.wait(timeout=10)
        stream.add_packets(pol_packets(0, n))
        fast_done.set()
        stream.finish()

    group, streams, chunks = run_group("lossless", [fast, slow])
    assert streams[0].stats()["worker_blocked"] > 0
    assert sum(int(c[2].sum()) for c in chunks) == 2 * n
    check_data(chunks)


def test_lossy_does_not_wait_and_counts_late_heaps():
    n = 6 * HPC
    ahead = threading.Event()

    def fast(stream):
        stream.add_packets(pol_packets(0, n))
        ahead.set()
        stream.finish()

    def slow(stream):
        ahead.wait(timeout=10)                  # everything it sends is now too old
        stream.add_packets(pol_packets(1, n))
        stream.finish()

    group, streams, chunks = run_group("lossy", [fast, slow])
    assert streams[0].stats()["worker_blocked"] == 0
    slow_stats = streams[1].stats()
    assert slow_stats["chunk_heaps_too_old"] + slow_stats["chunk_heaps_placed"] == n
    assert slow_stats["chunk_heaps_too_old"] >= n - MAX_CHUNKS * HPC
    check_data(chunks)


def test_group_matches_spead2_chunk_stream_group():
    n = 4 * HPC
    feeds = [pol_packets(p, n) for p in (0, 1)]
    _, _, ours = run_group("lossless", [finish_after(f) for f in feeds])

    group, members = h.spead2_chunk_group(LAYOUT, streams=len(feeds), max_chunks=MAX_CHUNKS,
                                          chunks=POOL)
    for member, packets in zip(members, feeds, strict=True):
        member.add_buffer_reader(b"".join(packets))
    theirs = spead2_take(group, n // HPC)
    group.stop()
    assert len(ours) == len(theirs) == n // HPC
    for (a_id, a_data, a_present), (b_id, b_data, b_present) in zip(ours, theirs, strict=True):
        assert a_id == b_id
        np.testing.assert_array_equal(a_present, b_present)
        np.testing.assert_array_equal(a_data, b_data)


def test_stream_cannot_join_an_ended_group():
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=MAX_CHUNKS, pool=POOL)
    group.add_stream().finish()
    assert group.ended
    with pytest.raises(RuntimeError, match="ended"):
        group.add_stream()


def test_layout_arguments_belong_to_the_group():
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=MAX_CHUNKS, pool=POOL)
    with pytest.raises(TypeError, match="heap_bytes"):
        _spead.ChunkStream(group, heap_bytes=8)
    with pytest.raises(ValueError, match="eviction"):
        _spead.ChunkGroup(eviction="sometimes")


@pytest.mark.parametrize("spin", [-1e-6, 0.0100001, float("nan")])
def test_spin_out_of_range_is_refused(spin):
    with pytest.raises(ValueError, match="spin must be between 0 and 0.01 seconds"):
        _spead.ChunkGroup(**LAYOUT, spin=spin)


@pytest.mark.parametrize("batch", [0, POOL + 1])
def test_consumer_batch_out_of_range_is_refused(batch):
    with pytest.raises(ValueError, match=rf"consumer_batch must be between 1 and pool \({POOL}\)"):
        _spead.ChunkGroup(**LAYOUT, max_chunks=MAX_CHUNKS, pool=POOL, consumer_batch=batch)


@pytest.mark.parametrize(("max_chunks", "pool", "batch"), [
    (3, 8, 2), (4, 16, 6), (16, 64, _spead.CONSUMER_BATCH), (4, 4, 1), (4, 5, 1)])
def test_consumer_batch_default_is_half_the_spare_chunks(max_chunks, pool, batch):
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=max_chunks, pool=pool)
    assert group.consumer_batch == batch
    lossy = _spead.ChunkGroup(**LAYOUT, max_chunks=max_chunks, pool=pool, eviction="lossy")
    assert lossy.consumer_batch == batch            # lossy groups batch too


@pytest.mark.parametrize("batch", [1, 4])
def test_a_lingering_consumer_gets_a_lone_chunk(batch):
    """Once the consumer has taken a chunk it waits for a batch of them, but no longer
    than CONSUMER_LINGER: a chunk that stays alone is still handed over."""
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=1, pool=6, consumer_batch=batch)
    stream = group.add_stream(max_heaps=4)
    stream.add_packets(pol_packets(0, 2 * HPC))     # chunk 1 evicts chunk 0
    with group.get(timeout=10) as chunk:
        assert chunk.chunk_id == 0
    stream.add_packets(pol_packets(0, HPC, first_chunk=2))     # chunk 1 alone is ready
    with group.get(timeout=10) as chunk:            # TimeoutError if it waited for a batch
        assert chunk.chunk_id == 1
    with pytest.raises(TimeoutError):
        group.get(timeout=0.05)                     # chunk 2 is still open
    stream.finish()
    ids = []
    for chunk in group:
        with chunk:
            ids.append(chunk.chunk_id)
    assert ids == [2]


def test_spin_defaults_to_the_module_constant():
    assert _spead.ChunkGroup(**LAYOUT).spin == _spead.DEFAULT_SPIN > 0
    assert _spead.ChunkGroup(**LAYOUT, spin=0).spin == 0


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("spin", [0.0, _spead.DEFAULT_SPIN, 0.01])
def test_blocked_time_grows_while_the_stream_is_blocked(spin):
    """Lossless, one stream silent: the other waits on it, and stats() shows the wait
    (worker_blocked, worker_blocked_ns) while it lasts, not only after the batch; a
    wait that spins before it sleeps (`spin`) is one wait, counted from its start."""
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=MAX_CHUNKS, pool=POOL, eviction="lossless",
                              spin=spin)
    busy, silent = group.add_stream(max_heaps=4), group.add_stream(max_heaps=4)
    n = (MAX_CHUNKS + 2) * HPC
    chunks = []
    consumer = threading.Thread(target=collect, args=(group, chunks))
    consumer.start()
    feeder = threading.Thread(target=busy.add_packets, args=(pol_packets(0, n),))
    feeder.start()
    try:
        wait_for(lambda: busy.stats()["worker_blocked"] >= 1)
        wait_for(lambda: group.waiting_streams == 1)    # spinning or asleep
        first = busy.stats()["worker_blocked_ns"]
        time.sleep(0.3)
        second = busy.stats()
        assert feeder.is_alive()                    # still blocked, inside its batch
        assert second["worker_blocked_ns"] - first >= 0.25e9
        assert second["worker_blocked"] == 1
        assert group.stats()["worker_blocked_ns"] >= second["worker_blocked_ns"]
        assert busy.stats()["chunk_heaps_placed"] == 0   # batch counters: not merged yet
    finally:
        silent.finish()                             # the silent stream moves past everything
        feeder.join(timeout=10)
    assert not feeder.is_alive()
    busy.finish()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    stats = busy.stats()
    assert stats["worker_blocked_ns"] >= second["worker_blocked_ns"]
    assert stats["chunk_heaps_present"] == n         # lossless: nothing lost by the wait
    assert sum(int(c[2].sum()) for c in chunks) == n
    check_data(chunks)
