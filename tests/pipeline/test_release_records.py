"""`release_records`: several records released at once, their chunks given back together."""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import MemorySink
from spead_packets import heap_packets

from daqd import _spead
from daqd.pipeline.buffers import Buffer
from daqd.pipeline.records import ChunkRecord, HeapRecord, PacketRecord, release_records

TS, DATA = 0x1600, 0x3300
STEP, HPC, HEAP_BYTES = 512, 4, 256


def chunk_heaps(first_chunk, n_chunks):
    """The packets of every heap of `n_chunks` chunks from `first_chunk` on, in order."""
    out = []
    for i in range(first_chunk * HPC, (first_chunk + n_chunks) * HPC):
        out += heap_packets(i + 1, [(TS, i * STEP), (DATA, bytes([i % 256]) * HEAP_BYTES)],
                            packet_payload=128)
    return out


def held_chunks(n, pool, **args):
    """A group (one stream, max_chunks 1) and `n` completed chunks handed out by it."""
    group = _spead.ChunkGroup(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                              max_chunks=1, pool=pool, wait_timeout=30.0, **args)
    stream = group.add_stream(max_heaps=4)
    stream.add_packets(chunk_heaps(0, n + 1))          # the last chunk stays open
    chunks = group.get_batch()
    assert len(chunks) == n
    return group, stream, chunks


def free(group):
    return group.pool_counts()["free"]


def test_as_release_of_each_with_holds():
    """A record held twice gives its chunk back on its second release, not its first."""
    group, _, chunks = held_chunks(4, pool=6)
    records = ChunkRecord.from_chunks(chunks)
    records[1].hold()
    records[3].hold().hold()
    release_records(records)
    assert [r.holds for r in records] == [0, 1, 0, 2]
    assert free(group) == 1 + 2
    release_records([records[1], records[3]])
    assert free(group) == 1 + 3
    release_records([records[3]])
    assert [r.holds for r in records] == [0, 0, 0, 0]
    assert group.pool_counts() == {"free": 5, "open": 1, "ready": 0, "held": 0}


def test_a_record_released_twice_and_listed_twice():
    """Releases beyond the last do nothing, as `release()` (a twice-listed record: two holds)."""
    group, _, chunks = held_chunks(3, pool=5)
    records = ChunkRecord.from_chunks(chunks)
    records[0].release()
    assert free(group) == 2
    records[2].hold()
    release_records([records[0], records[1], records[2], records[2], records[1]])
    assert [r.holds for r in records] == [0, 0, 0]
    assert group.pool_counts() == {"free": 4, "open": 1, "ready": 0, "held": 0}
    release_records(records)                # nothing left to give back: no error
    assert free(group) == 4


def test_mixed_kinds_and_callable_releases():
    """Heap and packet records, and chunk records made with a callable, are released each."""
    group, _, chunks = held_chunks(2, pool=4)
    calls = []
    made = ChunkRecord(7, 0, np.zeros(4), np.ones(2), _release=lambda: calls.append(7))
    made.hold()
    heap = HeapRecord(1, {0x1000: b"abc"})
    packets = PacketRecord(b"x", np.array([1], np.uint32))
    records = [*ChunkRecord.from_chunks(chunks), heap, made, packets, made]
    release_records(records)
    assert calls == [7] and made.holds == 0
    assert free(group) == 3
    release_records([heap, packets, made])
    assert calls == [7]


def test_chunks_of_two_groups():
    """Each group gets its own chunks back (one `release_many` per group)."""
    group_a, _, chunks_a = held_chunks(3, pool=5)
    group_b, _, chunks_b = held_chunks(2, pool=4)
    records_a = ChunkRecord.from_chunks(chunks_a)
    records_b = ChunkRecord.from_chunks(chunks_b)
    mixed = [records_a[0], records_b[0], records_a[1], records_b[1], records_a[2]]
    release_records(mixed)
    assert group_a.pool_counts() == {"free": 4, "open": 1, "ready": 0, "held": 0}
    assert group_b.pool_counts() == {"free": 3, "open": 1, "ready": 0, "held": 0}


def test_a_chunk_released_behind_the_records_back():
    """A chunk given back already raises as `release()` would; the others still go back."""
    group, _, chunks = held_chunks(3, pool=5)
    records = ChunkRecord.from_chunks(chunks)
    chunks[1].release()
    with pytest.raises(RuntimeError, match="released twice"):
        release_records(records)
    assert group.pool_counts() == {"free": 4, "open": 1, "ready": 0, "held": 0}


def test_a_flush_wakes_a_waiting_stream_once():
    """A stream waiting for a free chunk is woken once by a flush of N records.

    The pool is all handed out (N records in the buffer, one chunk open), so
    the stream, fed N more chunks, waits for a free chunk (``worker_blocked``).
    The flush gives all N back in one step: the stream finds N free chunks,
    enough for the N it needs, and never waits again.
    """
    n = 6
    group, stream, chunks = held_chunks(n, pool=n + 1)
    buffer = Buffer(capacity=2 * n)
    buffer.set_primary_sink(MemorySink())
    assert buffer.put_many(ChunkRecord.from_chunks(chunks)) == n
    feeder = threading.Thread(target=stream.add_packets, args=(chunk_heaps(n + 1, n),))
    feeder.start()
    deadline = time.monotonic() + 30
    while group.waiting_streams == 0 and feeder.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert group.waiting_streams == 1 and group.stats()["worker_blocked"] == 1
    assert buffer.flush_now("request") == n
    feeder.join(timeout=30)
    assert not feeder.is_alive()
    assert group.stats()["worker_blocked"] == 1
    assert group.pool_counts() == {"free": 0, "open": 1, "ready": n, "held": 0}
