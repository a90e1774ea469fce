"""Buffers: bounds, when_full policies, release accounting, sinks with cursors, chunk mode."""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import CountingRecord, MemorySink, numbered_record

from daqd import _spead
from daqd.pipeline.buffers import Buffer
from daqd.pipeline.flush import Flusher, FlushPolicy
from daqd.pipeline.records import ChunkRecord
from daqd.pipeline.wal import WriteAheadLog

KINDS = ["fifo", "circular"]


def fill(buffer, n, start=0):
    records = [CountingRecord(i) for i in range(start, start + n)]
    accepted = [buffer.put(r) for r in records]
    return records, accepted


@pytest.mark.parametrize("kind", KINDS)
def test_put_pop_in_order_and_ownership(kind):
    buffer = Buffer(kind, capacity=4)
    records, accepted = fill(buffer, 3)
    assert all(accepted) and buffer.size() == 3
    popped = [buffer.pop() for _ in range(3)]
    assert popped == records
    assert [r.releases for r in records] == [0, 0, 0]       # popped: the caller owns them
    with pytest.raises(IndexError):
        buffer.pop()
    assert buffer.stats()["records_popped"] == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("when_full", ["drop-newest", "overwrite-oldest", "block"])
def test_never_holds_more_than_capacity(kind, when_full):
    buffer = Buffer(kind, capacity=5, when_full=when_full, block_timeout=0)
    for i in range(40):
        buffer.put(CountingRecord(i))
        assert buffer.size() <= 5
    assert buffer.size() == 5


@pytest.mark.parametrize("kind", KINDS)
def test_drop_newest_counts_and_releases_once(kind):
    buffer = Buffer(kind, capacity=3, when_full="drop-newest")
    records, accepted = fill(buffer, 5)
    assert accepted == [True, True, True, False, False]
    assert [r.releases for r in records] == [0, 0, 0, 1, 1]
    stats = buffer.stats()
    assert stats["dropped"] == {"drop_newest": 2}
    assert stats["records_accepted"] == 3
    assert [buffer.pop() for _ in range(3)] == records[:3]


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_oldest_counts_releases_once_and_keeps_the_newest(kind):
    buffer = Buffer(kind, capacity=3, when_full="overwrite-oldest")
    sink = MemorySink()
    buffer.set_primary_sink(sink)
    records, accepted = fill(buffer, 7)
    assert all(accepted)
    assert [r.releases for r in records] == [1, 1, 1, 1, 0, 0, 0]
    stats = buffer.stats()
    assert stats["dropped"] == {"overwrite_oldest": 4}
    assert stats["sinks"]["memory"]["lost"] == 4
    assert buffer.flush() == 3
    assert sink.cnts == [4, 5, 6]
    assert [r.releases for r in records] == [1] * 7


def test_block_waits_then_drops_and_counts():
    buffer = Buffer("fifo", capacity=2, when_full="block", block_timeout=0.05)
    records, accepted = fill(buffer, 3)
    assert accepted == [True, True, False]
    assert records[2].releases == 1
    stats = buffer.stats()
    assert (stats["block_waits"], stats["block_timeouts"]) == (1, 1)
    assert stats["dropped"] == {"block_timeout": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_block_hands_everything_over_between_two_threads(kind):
    """One producer, one flusher, a tiny buffer: every record arrives once, in order."""
    sink = MemorySink()
    buffer = Buffer(kind, capacity=4, when_full="block", block_timeout=10,
                    policy=FlushPolicy(count=3))
    buffer.set_primary_sink(sink)
    flusher = Flusher(buffer).start()
    records = [CountingRecord(i) for i in range(2000)]
    producer = threading.Thread(target=lambda: [buffer.put(r) for r in records])
    producer.start()
    producer.join(timeout=60)
    assert not producer.is_alive()
    assert flusher.stop(timeout=30)
    assert sink.cnts == list(range(2000))
    assert all(r.releases == 1 for r in records)
    stats = buffer.stats()
    assert stats["records_flushed"] == 2000 and stats["block_timeouts"] == 0
    assert stats["size"] == 0 and not stats["dropped"]


def test_several_producers_are_serialised(tmp_path):
    """A stream may put from one receive thread per source: numbers stay unique, bound held.

    The WAL append (GIL released) sits between reserving room and a number and using them.
    """
    sink = MemorySink()
    buffer = Buffer("circular", capacity=8, when_full="block", block_timeout=10,
                    policy=FlushPolicy(count=5), wal=WriteAheadLog(tmp_path / "w", fsync="never"))
    buffer.set_primary_sink(sink)
    buffer.recover()
    flusher = Flusher(buffer).start()
    sizes = []

    def produce(first):
        for i in range(first, first + 500):
            assert buffer.put(CountingRecord(i))
            sizes.append(buffer.size())

    producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(3)]
    for t in producers:
        t.start()
    for t in producers:
        t.join(timeout=60)
        assert not t.is_alive()
    assert flusher.stop(timeout=30)
    assert max(sizes) <= 8
    assert sorted(sink.cnts) == sorted(k * 1000 + i for k in range(3) for i in range(500))
    for k in range(3):                  # each producer's records stay in its order
        mine = [c for c in sink.cnts if k * 1000 <= c < k * 1000 + 500]
        assert mine == sorted(mine)
    assert buffer.next_seq == 1500 and buffer.stats()["records_flushed"] == 1500


def test_clear_releases_and_counts():
    buffer = Buffer("circular", capacity=4)
    sink = MemorySink()
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, 3)
    assert buffer.clear() == 3
    assert [r.releases for r in records] == [1, 1, 1]
    assert buffer.stats()["dropped"] == {"cleared": 3}
    assert buffer.stats()["sinks"]["memory"]["lost"] == 3
    assert buffer.flush() == 0 and sink.cnts == []


def test_trigger_dumps_exactly_the_last_n_records():
    """A circular overwrite-oldest buffer is a 'last N' buffer; trigger() writes those N."""
    sink = MemorySink()
    buffer = Buffer("circular", capacity=4, when_full="overwrite-oldest", policy=FlushPolicy())
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, 10)
    assert not buffer.flush_needed()
    assert buffer.trigger() == 4
    assert sink.cnts == [6, 7, 8, 9]
    assert len(sink.batches) == 1
    stats = buffer.stats()
    assert stats["triggers"] == 1 and stats["flushes_by_reason"] == {"trigger": 1}
    assert stats["dropped"] == {"overwrite_oldest": 6}
    assert all(r.releases == 1 for r in records)


def test_one_flush_writes_every_sink_and_releases_after_the_last():
    primary, extra = MemorySink("primary"), MemorySink("extra")
    seen_released = []
    third = MemorySink("third", on_write=lambda recs: seen_released.append(
        [r.releases for r in recs]))
    buffer = Buffer("fifo", capacity=8)
    buffer.set_primary_sink(primary)
    buffer.add_custom_sink(extra)
    buffer.add_custom_sink(third)
    assert buffer.sinks == [primary, extra, third]
    records, _ = fill(buffer, 5)
    assert buffer.flush() == 5
    assert primary.cnts == extra.cnts == third.cnts == list(range(5))
    assert seen_released == [[0] * 5]           # not released before the last sink wrote
    assert [r.releases for r in records] == [1] * 5
    with pytest.raises(ValueError, match="already attached"):
        buffer.add_custom_sink(MemorySink("extra"))


def test_without_a_wal_sinks_publish_after_every_flush_and_reopen(tmp_path):
    from daqd.config import SinkConfig
    from daqd.sinks import SinkContext, make_sink

    binary = make_sink(SinkContext("s", SinkConfig(
        "binary", str(tmp_path / "out-{seq}.bin"), rotate_bytes=4096 + 200, fsync="never")))
    memory = MemorySink()
    buffer = Buffer("fifo", capacity=64)
    buffer.set_primary_sink(binary)
    buffer.add_custom_sink(memory)
    for n in range(10):                         # 32 to 104 bytes each: a few files
        buffer.put(numbered_record(n))
    buffer.flush()
    assert memory.commits == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) > 2 and [n for n in names if n.endswith(".tmp")] == [names[-1]]
    buffer.reopen_sinks()
    assert memory.commits == 2 and memory.reopens
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert binary.stats()["files"] == len(names)
    buffer.close()
    binary.close()


def test_failing_sink_keeps_its_records_and_catches_up():
    good, bad = MemorySink("good"), MemorySink("bad")
    bad.fail = True
    buffer = Buffer("fifo", capacity=8)
    buffer.set_primary_sink(good)
    buffer.add_custom_sink(bad)
    records, _ = fill(buffer, 3)
    with capture_logs() as logs:
        assert buffer.flush() == 0              # good wrote them; bad holds them back
    assert good.cnts == [0, 1, 2] and bad.cnts == []
    assert buffer.size() == 3 and [r.releases for r in records] == [0, 0, 0]
    stats = buffer.stats()["sinks"]
    assert stats["bad"]["errors"] == 1 and stats["bad"]["failing"]
    assert [(e["log_level"], e["sink"]) for e in logs
            if e["event"].startswith("sink write failed")] == [("warning", "bad")]
    more, _ = fill(buffer, 2, start=3)
    buffer.flush()
    assert stats["bad"]["errors"] == 1          # a snapshot: the live count moved on
    assert buffer.stats()["sinks"]["bad"]["errors"] == 2
    bad.fail = False
    assert buffer.flush() == 5
    assert good.cnts == bad.cnts == list(range(5))      # no duplicate for the good sink
    assert [r.releases for r in records + more] == [1] * 5
    assert not buffer.stats()["sinks"]["bad"]["failing"]


def test_a_failing_sink_loses_records_rather_than_stopping_the_others():
    """Full of records only a failing sink still needs: they give way, counted as lost."""
    good, bad = MemorySink("good"), MemorySink("bad")
    bad.fail = True
    buffer = Buffer("fifo", capacity=4, when_full="block", block_timeout=5)
    buffer.set_primary_sink(good)
    buffer.add_custom_sink(bad)
    records, _ = fill(buffer, 4)
    buffer.flush()
    more, accepted = fill(buffer, 2, start=4)
    assert all(accepted)
    stats = buffer.stats()
    assert stats["block_waits"] == 0 and stats["lagging_evictions"] == 2
    assert stats["sinks"]["bad"]["lost"] == 2 and stats["sinks"]["good"]["lost"] == 0
    assert [r.releases for r in records] == [1, 1, 0, 0]
    bad.fail = False
    buffer.flush()
    assert good.cnts == [0, 1, 2, 3, 4, 5]
    assert bad.cnts == [2, 3, 4, 5]
    assert all(r.releases == 1 for r in records + more)


def test_every_sink_failing_leaves_it_to_when_full():
    sink = MemorySink()
    sink.fail = True
    buffer = Buffer("circular", capacity=3, when_full="drop-newest")
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, 3)
    buffer.flush()
    _, accepted = fill(buffer, 1, start=3)
    assert accepted == [False]
    assert buffer.stats()["dropped"] == {"drop_newest": 1}
    sink.fail = False
    buffer.flush()
    assert sink.cnts == [0, 1, 2]


def test_records_being_written_are_neither_overwritten_nor_released():
    """While a flush writes, a full overwrite buffer only overwrites what is not in flight."""
    entered, go_on = threading.Event(), threading.Event()
    seen = []

    def slow_write(records):
        entered.set()
        assert go_on.wait(10)
        seen.append([r.releases for r in records])

    sink = MemorySink(on_write=slow_write)
    buffer = Buffer("circular", capacity=3, when_full="overwrite-oldest")
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, 3)
    flusher = Flusher(buffer).start()
    flusher.request_flush("test")
    assert entered.wait(10)
    more, accepted = fill(buffer, 2, start=3)       # everything held is in flight
    assert accepted == [False, False]
    assert buffer.stats()["dropped"] == {"in_flight": 2}
    assert [r.releases for r in records] == [0, 0, 0]
    go_on.set()
    assert flusher.stop(timeout=10)
    assert seen[0] == [0, 0, 0]
    assert sink.cnts == [0, 1, 2]
    assert [r.releases for r in records + more] == [1] * 5


def test_stats_names():
    buffer = Buffer("fifo", capacity=2)
    buffer.set_primary_sink(MemorySink())
    stats = buffer.stats()
    for key in ("records_accepted", "records_flushed", "bytes_flushed", "flushes_by_reason",
                "dropped", "block_waits", "block_timeouts", "fill", "sinks", "triggers"):
        assert key in stats
    assert set(stats["sinks"]["memory"]) >= {"written", "errors", "lost"}


# -- chunk mode: records wrap pool chunks; the pool must balance -------------

HPC = 4             # heaps per chunk (W1: one 8192-byte heap per packet)
POOL = 12


def chunk_stream():
    # when_full="drop": a pool run dry shows at once as chunks with heaps missing
    return _spead.ChunkStream(timestamp_step=8192, heaps_per_chunk=HPC, heap_bytes=8192,
                              max_chunks=2, pool=POOL, when_full="drop")


def chunk_records(stream, n_chunks, releases):
    """Yield ChunkRecords wrapping the stream's chunks; count each chunk's releases."""
    reader = _spead.SimReader("W1", heaps=n_chunks * HPC, batch=HPC)  # a chunk per batch
    for chunk in stream.chunks(reader):
        record = ChunkRecord.from_chunk(chunk)
        assert np.shares_memory(record.data, chunk.data)        # no copy

        def release(chunk=chunk, cid=record.chunk_id):
            releases[cid] = releases.get(cid, 0) + 1
            chunk.release()                 # raises if the chunk was released already

        record._release = release
        yield record


def check_chunk(record):
    """Every heap of a W1 chunk starts with its HEAP_CNT << 16 (SimReader counts from 1)."""
    assert record.present.all()
    markers = np.ascontiguousarray(record.data[:, 0, :8]).view(">u8")[:, 0]
    expected = (record.chunk_id * HPC + np.arange(HPC) + 1) << 16
    assert np.array_equal(markers, expected), (record.chunk_id, markers)


class CheckingSink(MemorySink):
    """Checks each chunk's bytes at write time (a recycled chunk would fail)."""

    def write(self, records):
        if not self.fail:
            for r in records:
                check_chunk(r)
        super().write([(r.chunk_id, int(r.present.sum())) for r in records])

    @property
    def ids(self):
        return [cid for cid, _ in self.records]


def held(stream):
    return stream.pool_counts()["held"]


def test_chunks_flow_through_without_leaks():
    stream = chunk_stream()
    sink = CheckingSink()
    buffer = Buffer("circular", capacity=4, when_full="block", policy=FlushPolicy(count=3))
    buffer.set_primary_sink(sink)
    releases = {}
    for record in chunk_records(stream, 20, releases):
        assert buffer.put(record)
        assert held(stream) == buffer.size()        # the buffer holds the chunks themselves
        if buffer.flush_needed():
            buffer.flush()
            assert held(stream) == buffer.size()
    buffer.flush("stop")
    assert sink.ids == list(range(20))
    assert all(n == HPC for _, n in sink.records)
    assert releases == dict.fromkeys(range(20), 1)
    assert stream.pool_counts() == {"free": POOL, "open": 0, "ready": 0, "held": 0}


def test_overwritten_and_dropped_chunks_go_back_at_once():
    for when_full in ("overwrite-oldest", "drop-newest"):
        stream = chunk_stream()
        sink = CheckingSink()
        buffer = Buffer("circular", capacity=3, when_full=when_full)
        buffer.set_primary_sink(sink)
        releases = {}
        for record in chunk_records(stream, 10, releases):
            buffer.put(record)
            assert held(stream) == buffer.size() <= 3
        assert buffer.trigger() == 3
        expected = [7, 8, 9] if when_full == "overwrite-oldest" else [0, 1, 2]
        assert sink.ids == expected
        assert releases == dict.fromkeys(range(10), 1)
        assert stream.pool_counts() == {"free": POOL, "open": 0, "ready": 0, "held": 0}


def test_a_chunk_goes_back_only_when_every_sink_has_written_it():
    stream = chunk_stream()
    good, bad = CheckingSink("good"), CheckingSink("bad")
    bad.fail = True
    buffer = Buffer("fifo", capacity=5, when_full="block", block_timeout=5)
    buffer.set_primary_sink(good)
    buffer.add_custom_sink(bad)
    releases = {}
    records = chunk_records(stream, 8, releases)
    for _ in range(4):
        buffer.put(next(records))
    buffer.flush()
    assert good.ids == [0, 1, 2, 3] and held(stream) == 4 and not releases
    for _ in range(3):                  # the fifth fits; two more push out chunks 0 and 1
        buffer.put(next(records))
    assert releases == {0: 1, 1: 1} and held(stream) == 5
    bad.fail = False
    buffer.flush()
    buffer.put(next(records))
    buffer.flush()
    assert good.ids == list(range(8))
    assert bad.ids == list(range(2, 8))
    assert buffer.stats()["sinks"]["bad"]["lost"] == 2
    assert releases == dict.fromkeys(range(8), 1)
    assert stream.pool_counts() == {"free": POOL, "open": 0, "ready": 0, "held": 0}


def test_a_flush_writes_in_slices_and_releases_each_before_the_next():
    """Chunk records hold pool chunks: a long flush gives them back slice by slice."""
    released_at_write = []
    late = []

    def on_write(recs):
        released_at_write.append([r.releases for r in records])
        if not late:                    # a record put while the flush runs waits
            late.extend(fill(buffer, 1, start=100)[0])

    sink = MemorySink("slices", on_write=on_write)
    buffer = Buffer("fifo", capacity=16, flush_slice=3)
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, 8)
    assert buffer.flush("request") == 8
    assert [[r.cnt for r in batch] for batch in sink.batches] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert released_at_write == [[0] * 8, [1] * 3 + [0] * 5, [1] * 6 + [0] * 2]
    assert [r.releases for r in records] == [1] * 8
    assert buffer.stats()["flushes_by_reason"] == {"request": 1}    # one flush, three slices
    assert sink.commits == 1                    # one commit (and done mark) per flush
    assert buffer.size() == 1 and late[0].releases == 0     # the late record: next flush
    assert buffer.flush() == 1 and sink.cnts[-1] == 100


@pytest.mark.parametrize(("waiting", "batches"), [
    (4, [4]),                   # 3 + 1: the 1 would be a write of its own; it joins
    (5, [3, 2]),                # 2 is not less than half a slice of 3
    (7, [3, 4]),
    (3, [3]),
])
def test_a_last_slice_under_half_a_slice_joins_the_one_before(waiting, batches):
    sink = MemorySink("slices")
    buffer = Buffer("fifo", capacity=16, flush_slice=3)
    buffer.set_primary_sink(sink)
    records, _ = fill(buffer, waiting)
    assert buffer.flush() == waiting
    assert [len(batch) for batch in sink.batches] == batches
    assert sink.cnts == list(range(waiting)) and [r.releases for r in records] == [1] * waiting


def test_a_sink_that_fails_in_one_slice_is_not_tried_again_in_that_flush():
    good, bad = MemorySink("good"), MemorySink("bad")
    bad.fail = True
    tries = []
    bad.on_write = lambda recs: tries.append(len(recs))
    buffer = Buffer("fifo", capacity=16, flush_slice=2)
    buffer.set_primary_sink(good)
    buffer.add_custom_sink(bad)
    records, _ = fill(buffer, 6)
    assert buffer.flush() == 0                  # good wrote all; bad holds them back
    assert [len(b) for b in good.batches] == [2, 2, 2] and tries == [2]
    assert buffer.stats()["sinks"]["bad"]["errors"] == 1
    bad.fail = False
    assert buffer.flush() == 6 and bad.cnts == list(range(6))
    assert [r.releases for r in records] == [1] * 6


def test_build_buffer_slices_chunk_flushes_by_half_what_the_pool_spares():
    from daqd.config import BufferConfig
    from daqd.pipeline.buffers import build_buffer

    assert build_buffer(BufferConfig(), [MemorySink()], flush_at_most=12).flush_slice == 6
    assert build_buffer(BufferConfig(), [MemorySink()], flush_at_most=1).flush_slice == 1
    assert build_buffer(BufferConfig(), [MemorySink()]).flush_slice is None    # heap mode


def test_each_sink_counts_the_time_its_writes_take():
    """``write_seconds``: time in the sink's write() calls, failed ones included."""
    import time

    slow = MemorySink("slow", on_write=lambda recs: time.sleep(0.05))
    failing = MemorySink("failing", on_write=lambda recs: time.sleep(0.02))
    failing.fail = True
    buffer = Buffer("fifo", capacity=8)
    buffer.set_primary_sink(slow)
    buffer.add_custom_sink(failing)
    fill(buffer, 2)
    buffer.flush()
    sinks = buffer.stats()["sinks"]
    assert sinks["slow"]["write_seconds"] >= 0.05        # a sleep lasts at least that
    assert sinks["failing"]["write_seconds"] >= 0.02


def put_in_lists(buffer, records, sizes):
    """`put_many` over `records` cut into lists of `sizes` (cycled); the accepted count."""
    accepted, i, k = 0, 0, 0
    while i < len(records):
        size = sizes[k % len(sizes)]
        accepted += buffer.put_many(records[i:i + size])
        i, k = i + size, k + 1
    return accepted


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("when_full", ["drop-newest", "overwrite-oldest", "block"])
@pytest.mark.parametrize("wal", [False, True])
@pytest.mark.parametrize("sizes", [[1], [3], [2, 7, 1], [20]])
def test_put_many_is_put_of_each(tmp_path, kind, when_full, wal, sizes):
    """Records put in lists end as when put one by one: accepted, dropped, released,
    counted and written alike (a list larger than the room left, too)."""
    outcomes = []
    for how in ("one", "many"):
        log = WriteAheadLog(tmp_path / how, fsync="never") if wal else None
        buffer = Buffer(kind, capacity=5, when_full=when_full, block_timeout=0, wal=log,
                        policy=FlushPolicy(count=4))
        sink = MemorySink()
        buffer.set_primary_sink(sink)
        if wal:
            buffer.recover()
        records = [CountingRecord(i) for i in range(23)]
        if how == "one":
            accepted = sum(buffer.put(r) for r in records[:12])
        else:
            accepted = put_in_lists(buffer, records[:12], sizes)
        buffer.flush()                      # room again: the rest fits in part
        accepted += (sum(buffer.put(r) for r in records[12:]) if how == "one"
                     else put_in_lists(buffer, records[12:], sizes))
        buffer.flush()
        stats = buffer.stats()
        outcomes.append((accepted, [r.releases for r in records], sink.cnts,
                         stats["dropped"], stats["records_accepted"], buffer.next_seq))
        if log is not None:
            log.close()
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][3]                       # some records found the buffer full


class CountingFlusher(Flusher):
    """A flusher that only counts the producer's wake-ups (its thread never started)."""

    def __init__(self, buffer):
        super().__init__(buffer)
        self.wakes = 0
        buffer.attach_flusher(self)         # as start() does

    def wake_due(self, reason):
        self.wakes += 1


def test_put_many_wakes_the_flusher_once_per_list():
    buffer = Buffer("circular", capacity=16, policy=FlushPolicy(count=1))
    flusher = CountingFlusher(buffer)
    for r in [CountingRecord(i) for i in range(8)]:
        buffer.put(r)
    assert flusher.wakes == 8
    buffer.put_many([CountingRecord(i) for i in range(8, 16)])
    assert flusher.wakes == 9
    assert buffer.put_many([]) == 0 and flusher.wakes == 9


def test_put_many_with_a_wal_needs_recover_first(tmp_path):
    buffer = Buffer("fifo", wal=WriteAheadLog(tmp_path / "w", fsync="never"))
    with pytest.raises(RuntimeError, match="recover"):
        buffer.put_many([CountingRecord(0)])


@pytest.mark.parametrize("kind", KINDS)
def test_storage_slices_match_entry_by_entry(kind):
    """`take`, `take_below`, `snapshot` and `extend` (a slice at a time) against a list,
    across the ring's wrap-around."""
    from daqd.pipeline.buffers import _Queue, _Ring

    store = (_Ring if kind == "circular" else _Queue)(5)
    model: list = []
    seq = 0
    for step in range(40):
        while len(model) < 5 and (step % 3 or len(model) < 2):
            store.append((seq, None))
            model.append((seq, None))
            seq += 1
        assert store.snapshot() == model == list(store)
        n = step % (len(model) + 1)
        assert store.take(n) == model[:n]
        del model[:n]
        if model:
            below = model[0][0] + step % 3
            kept = [e for e in model if e[0] >= below]
            assert store.take_below(below) == model[:len(model) - len(kept)]
            model = kept
        other = (_Ring if kind == "circular" else _Queue)(5)
        other.extend(model)
        assert other.snapshot() == model and len(other) == len(model)
    with pytest.raises(IndexError):
        store.take(len(model) + 1)
