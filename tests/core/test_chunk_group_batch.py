"""The chunk group's batch hand-over: `get_batch` and `release_many` against `get`/`release`."""

import random
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import heap_packets

from daqd import _spead

TS, POL, DATA = 0x1600, 0x4101, 0x3300
STEP, HPC, HEAP_BYTES = 512, 8, 512
LAYOUT = dict(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
              substream_item=POL, substreams=2)


def heaps(pol, n_heaps, first_chunk=0):
    """One substream's heaps, each a list of packets; payload bytes say (pol, heap index)."""
    out = []
    for i in range(n_heaps):
        t = (first_chunk * HPC + i) * STEP
        payload = bytes([pol * 100 + i % 100]) * HEAP_BYTES
        out.append(heap_packets(2 * i + pol + 1, [(TS, t), (POL, pol), (DATA, payload)],
                                packet_payload=128))
    return out


def lossy_reordered(pols, n_heaps, seed):
    """The substreams' packets, heaps out of order (within 6) and packets lost (5 %)."""
    rng = random.Random(seed)
    every = [h for i in range(n_heaps) for h in (heaps(pol, n_heaps)[i] for pol in pols)]
    order = list(range(len(every)))
    for i in range(0, len(order) - 6, 3):
        block = order[i:i + 6]
        rng.shuffle(block)
        order[i:i + 6] = block
    return [p for i in order for p in every[i] if rng.random() > 0.05]


def consume_single(group, out):
    """The consumer as it was: one `get` and one `release` per chunk."""
    while (chunk := group.get(timeout=30)) is not None:
        out.append((chunk.chunk_id, chunk.data.tobytes(), chunk.present.tobytes()))
        chunk.release()


def consume_batched(most):
    def consume(group, out):
        while chunks := group.get_batch(most, timeout=30):
            assert 0 < len(chunks) <= (most or len(chunks))
            for chunk in chunks:
                out.append((chunk.chunk_id, chunk.data.tobytes(), chunk.present.tobytes()))
            group.release_many(chunks)
    return consume


def run(consume, feeds, **group_args):
    """Feed each stream of a new group from its own thread; consume with `consume`."""
    args = dict(max_chunks=3, pool=8, wait_timeout=30.0) | group_args
    group = _spead.ChunkGroup(**LAYOUT, **args)
    streams = [group.add_stream(max_heaps=8) for _ in feeds]
    out = []
    consumer = threading.Thread(target=consume, args=(group, out))
    consumer.start()

    def feed(stream, packets):
        for i in range(0, len(packets), 16):       # the consumer runs in between
            stream.add_packets(packets[i:i + 16])
        stream.finish()

    threads = [threading.Thread(target=feed, args=(s, p))
               for s, p in zip(streams, feeds, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    assert group.pool_counts() == {"free": args["pool"], "open": 0, "ready": 0, "held": 0}
    stats = group.stats()
    return out, {k: stats[k] for k in ("chunks_completed", "chunk_heaps_placed",
                                       "chunk_heaps_present", "chunk_heaps_too_old")}


@pytest.mark.parametrize("most", [0, 1, 3])
@pytest.mark.parametrize("seed", [1, 2])
def test_batches_give_the_chunks_single_gets_give(most, seed):
    """One stream, heaps reordered and packets lost: the same chunks, bytes and order."""
    feeds = [lossy_reordered((0, 1), 12 * HPC, seed)]
    single = run(consume_single, feeds)
    batched = run(consume_batched(most), feeds)
    assert batched == single
    ids = [c[0] for c in single[0]]
    assert ids == sorted(ids) and len(ids) == single[1]["chunks_completed"] > 10


@pytest.mark.parametrize("most", [0, 2])
def test_batches_from_two_lossless_streams(most):
    """Two streams, one per substream, lossless: every heap, as with single gets."""
    feeds = [lossy_reordered((pol,), 10 * HPC, 7 + pol) for pol in (0, 1)]
    single = run(consume_single, feeds, eviction="lossless")
    batched = run(consume_batched(most), feeds, eviction="lossless")
    assert batched[1] == single[1]
    assert sorted(batched[0]) == sorted(single[0])
    assert [c[0] for c in batched[0]] == [c[0] for c in single[0]]


def ready_group(n_ready, pool, **args):
    """A group of one stream with `n_ready` chunks in its data ring (max_chunks 1)."""
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=1, pool=pool, **args)
    stream = group.add_stream(max_heaps=4)
    for packets in heaps(0, (n_ready + 1) * HPC):      # the last chunk stays open
        stream.add_packets(packets)
    assert group.data_ring_size == n_ready
    return group, stream


def test_a_batch_is_every_ready_chunk_in_order():
    group, stream = ready_group(5, pool=8)
    chunks = group.get_batch()
    assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, 4]
    assert group.data_ring_size == 0
    assert group.pool_counts()["held"] == 5
    group.release_many(chunks)
    assert group.pool_counts() == {"free": 7, "open": 1, "ready": 0, "held": 0}
    with pytest.raises(TimeoutError):
        group.get_batch(timeout=0.01)               # chunk 5 is still open
    stream.finish()
    (last,) = group.get_batch(timeout=10)
    assert last.chunk_id == 5
    last.release()
    assert group.get_batch(timeout=10) == []        # ended and drained: get() gives None
    assert group.get(timeout=10) is None


def test_max_chunks_bounds_a_batch():
    group, _ = ready_group(5, pool=8)
    first, second = group.get_batch(2), group.get_batch(2)
    third = group.get_batch(0)
    assert [[c.chunk_id for c in b] for b in (first, second, third)] == [[0, 1], [2, 3], [4]]
    group.release_many(first + second + third)


def test_more_ready_chunks_than_one_lock_takes():
    """Beyond 64 chunks (one lock's take), a batch still has every ready chunk, in order."""
    group, _ = ready_group(70, pool=72, consumer_batch=1)
    chunks = group.get_batch()
    assert [c.chunk_id for c in chunks] == list(range(70))
    group.release_many(iter(chunks))                # any iterable
    assert group.pool_counts()["free"] == 71


def test_release_many_is_release_of_each():
    """Released chunks come back zeroed (present, extra), as with `release`."""
    group, _ = ready_group(4, pool=6, extra_items=[TS])
    chunks = group.get_batch()
    assert all(c.present.any() and c.extra.any() for c in chunks)
    group.release_many(chunks)
    assert not any(c.present.any() or c.extra.any() for c in chunks)
    assert group.pool_counts()["free"] == 5


@pytest.mark.parametrize("bad", ["twice", "duplicate", "other group", "not a chunk"])
def test_a_bad_release_many_releases_none(bad):
    group, _ = ready_group(3, pool=6)
    chunks = group.get_batch()
    other, _ = ready_group(1, pool=4)
    if bad == "twice":
        chunks[1].release()
        expected = RuntimeError
    elif bad == "duplicate":
        chunks.append(chunks[0])
        expected = RuntimeError
    elif bad == "other group":
        chunks.append(other.get())
        expected = ValueError
    else:
        chunks.append("chunk")
        expected = TypeError
    held = group.pool_counts()["held"]
    with pytest.raises(expected):
        group.release_many(chunks)
    assert group.pool_counts()["held"] == held      # none released
    for chunk in chunks[:3]:
        if bad != "twice" or chunk is not chunks[1]:
            chunk.release()                         # each still handed out
    assert group.pool_counts()["held"] == 0
