"""Flush policies (fake clock) and the flusher thread (real clock, bounded waits)."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import CountingRecord, MemorySink

from daqd.config import BufferConfig, ConfigError, parse
from daqd.pipeline.buffers import Buffer, build_buffer
from daqd.pipeline.flush import Flusher, FlushPolicy, resolve_predicate


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeBuffer:
    """What a policy sees: size(), counting the calls (only the age condition asks)."""

    def __init__(self, size=1):
        self._size = size
        self.size_calls = 0

    def size(self):
        self.size_calls += 1
        return self._size


def recorder(calls, name, result):
    def predicate(buffer):
        calls.append(name)
        return result
    return (name, predicate)


def test_count_fires_exactly_at_the_nth_record():
    buffer = Buffer("fifo", capacity=100, policy=FlushPolicy(count=5))
    for i in range(4):
        buffer.put(CountingRecord(i))
        assert not buffer.flush_needed()
    buffer.put(CountingRecord(4))
    assert buffer.flush_needed()
    assert buffer.policy.due(buffer) == "count"
    assert buffer.almost_full()


def test_bytes_threshold():
    policy = FlushPolicy(nbytes=100)
    for _ in range(9):
        policy.added(11)
        assert policy.due(FakeBuffer()) is None
    policy.added(1)
    assert policy.due(FakeBuffer()) == "bytes"


def test_age_on_the_monotonic_clock():
    clock = FakeClock()
    policy = FlushPolicy(interval=2.0, clock=clock)
    clock.now += 1.999
    assert policy.due(FakeBuffer()) is None
    clock.now += 0.001
    assert policy.due(FakeBuffer()) == "age"
    assert policy.due(FakeBuffer(size=0)) is None       # nothing to flush: not due
    assert policy.next_deadline() == 1002.0
    policy.reset()
    assert policy.age() == 0 and policy.due(FakeBuffer()) is None


def test_every_flush_resets_the_counters():
    clock = FakeClock()
    buffer = Buffer("fifo", capacity=100, policy=FlushPolicy(count=5, interval=10, clock=clock))
    for i in range(3):
        buffer.put(CountingRecord(i))
    clock.now += 4
    assert buffer.time_since_last_flush() == 4
    buffer.flush("request")                 # forced (no sinks: nothing leaves)
    assert buffer.policy.records == 0 and buffer.time_since_last_flush() == 0
    for i in range(4):
        buffer.put(CountingRecord(i))
        assert not buffer.flush_needed()
    buffer.put(CountingRecord(9))
    assert buffer.flush_needed()


def test_any_runs_custom_predicates_first_in_order_and_short_circuits():
    calls = []
    policy = FlushPolicy(count=1, interval=1.0, custom=[
        recorder(calls, "p1", False), recorder(calls, "p2", True), recorder(calls, "p3", True)])
    policy.added(8)
    fake = FakeBuffer()
    assert policy.due(fake) == "custom:p2"
    assert calls == ["p1", "p2"] and fake.size_calls == 0


def test_any_reaches_count_before_age():
    calls = []
    clock = FakeClock()
    policy = FlushPolicy(count=1, interval=1.0, clock=clock,
                         custom=[recorder(calls, "p1", False), recorder(calls, "p2", False)])
    clock.now += 5
    fake = FakeBuffer()
    assert policy.due(fake) == "age"            # count not reached: age asked (size())
    assert calls == ["p1", "p2"] and fake.size_calls == 1
    policy.added(8)
    fake = FakeBuffer()
    assert policy.due(fake) == "count"          # count true: age never evaluated
    assert fake.size_calls == 0


def test_all_stops_at_the_first_false_condition():
    calls = []
    clock = FakeClock()
    policy = FlushPolicy(count=2, interval=1.0, when="all", clock=clock,
                         custom=[recorder(calls, "p1", True), recorder(calls, "p2", False),
                                 recorder(calls, "p3", True)])
    assert policy.due(FakeBuffer()) is None
    assert calls == ["p1", "p2"]
    calls.clear()
    policy = FlushPolicy(count=2, interval=1.0, when="all", clock=clock,
                         custom=[recorder(calls, "p1", True)])
    policy.added(1)
    fake = FakeBuffer()
    assert policy.due(fake) is None             # count false: age not evaluated
    assert calls == ["p1"] and fake.size_calls == 0
    policy.added(1)
    clock.now += 1
    assert policy.due(fake) == "custom:p1+count+age"


def test_no_condition_is_never_due():
    for when in ("any", "all"):
        policy = FlushPolicy(when=when)
        policy.added(10)
        assert policy.due(FakeBuffer()) is None


def test_predicates_are_resolved_from_module_function_strings():
    assert resolve_predicate("os.path:exists") is os.path.exists
    for spec, why in [("nocolon", "module:function"), ("daqd_no_such_mod:f", "cannot import"),
                      ("os.path:no_such_fn", "has no attribute"), ("os:sep", "not callable"),
                      # checked, never called: a C function's parameters say nothing
                      ("os:system", "built-in or C function"),
                      ("operator:truth", "built-in or C function"),
                      ("collections:OrderedDict", "is a class"),
                      ("shutil:copy", "cannot be called with the buffer")]:
        with pytest.raises(ValueError, match=why):
            resolve_predicate(spec)
    policy = FlushPolicy.from_config(BufferConfig(flush_custom=("buffer_sinks:flush_never",),
                                                  flush_count=0, flush_interval=0))
    assert policy.due(FakeBuffer()) is None
    policy = FlushPolicy.from_config(BufferConfig(flush_custom=("buffer_sinks:flush_always",)))
    assert policy.due(FakeBuffer()) == "custom:buffer_sinks:flush_always"


def test_config_names_the_key_of_an_unresolvable_predicate():
    base = "[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\n"
    config = parse(base + "flush_custom = ['os.path:exists']\nwal_fsync = 'never'\n")
    assert config.streams[0].buffer.flush_custom == ("os.path:exists",)
    assert parse(base).streams[0].buffer.flush_custom == ()
    with pytest.raises(ConfigError) as info:
        parse(base + "flush_custom = ['os.path:exists', 'daqd_no_such_mod:go']\n", "x.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("x.toml: stream[0].buffer.flush_custom[1] = 'daqd_no_such_mod:go'")
    with pytest.raises(ConfigError, match="wal_fsync"):
        parse(base + "wal_fsync = 'always'\n")
    with pytest.raises(ConfigError, match="wal_max_bytes"):
        parse(base + "wal_max_bytes = 10\n")


# -- the flusher thread ------------------------------------------------------


def started(policy, capacity=64, **kwargs):
    sink = MemorySink()
    buffer = Buffer("fifo", capacity=capacity, policy=policy, **kwargs)
    buffer.set_primary_sink(sink)
    return buffer, sink, Flusher(buffer).start()


def test_an_idle_stream_is_flushed_by_the_timer():
    """One record, nothing after it: it reaches the sink one interval after the last flush."""
    interval = 0.3
    buffer, sink, flusher = started(FlushPolicy(interval=interval))
    try:
        last_flush = buffer.policy.last_flush
        buffer.put(CountingRecord(0))
        assert sink.written.wait(interval + 5)
        arrived = time.monotonic()
        assert sink.cnts == [0]
        assert arrived - last_flush >= interval             # not before its time
        assert buffer.stats()["flushes_by_reason"] == {"age": 1}
    finally:
        flusher.stop(timeout=10)


def test_the_flusher_flushes_at_the_count_and_once_more_on_stop():
    buffer, sink, flusher = started(FlushPolicy(count=5))
    for i in range(5):
        buffer.put(CountingRecord(i))
    assert sink.written.wait(10)
    assert [r.cnt for r in sink.batches[0]] == [0, 1, 2, 3, 4]     # at the 5th, not later
    for i in range(5, 8):
        buffer.put(CountingRecord(i))
    assert flusher.stop(timeout=10)
    assert not flusher.running
    assert [[r.cnt for r in b] for b in sink.batches] == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert buffer.stats()["flushes_by_reason"] == {"count": 1, "stop": 1}
    assert sink.threads == {flusher.ident}


def test_flush_from_another_thread_runs_in_the_flusher():
    buffer, sink, flusher = started(FlushPolicy())
    try:
        buffer.put(CountingRecord(0))
        assert buffer.flush("request") == 1             # waited for
        assert sink.cnts == [0] and sink.threads == {flusher.ident}
        buffer.put(CountingRecord(1))
        assert flusher.flush("control") == 1
        buffer.put(CountingRecord(2))
        assert buffer.trigger() == 1
        assert sink.threads == {flusher.ident} != {threading.get_ident()}
        assert buffer.stats()["flushes_by_reason"] == {"request": 1, "control": 1,
                                                       "trigger": 1}
    finally:
        flusher.stop(timeout=10)


def test_a_signal_handler_can_ask_for_a_flush_and_a_trigger():
    buffer, sink, flusher = started(FlushPolicy())
    previous = signal.signal(signal.SIGUSR1, lambda *_: flusher.request_flush("SIGUSR1"))
    try:
        buffer.put(CountingRecord(0))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert sink.written.wait(10)
        assert sink.cnts == [0]
        sink.written.clear()
        buffer.put(CountingRecord(1))
        flusher.request_trigger()
        assert sink.written.wait(10)
        assert sink.cnts == [0, 1]
        stats = buffer.stats()
        assert stats["flushes_by_reason"] == {"SIGUSR1": 1, "trigger": 1}
        assert stats["triggers"] == 1
    finally:
        signal.signal(signal.SIGUSR1, previous)
        flusher.stop(timeout=10)


def test_sink_reopen_goes_through_the_flusher_thread():
    buffer, sink, flusher = started(FlushPolicy())
    try:
        flusher.request_reopen()                # what a SIGHUP handler calls
        assert flusher.flush("sync") == 0       # requests are served in order
        assert sink.reopens == [flusher.ident]
        buffer.reopen_sinks()                   # from another thread: handed over too
        assert flusher.flush("sync") == 0
        assert sink.reopens == [flusher.ident] * 2
    finally:
        flusher.stop(timeout=10)
    buffer.reopen_sinks()                       # no flusher: in the caller's thread
    assert sink.reopens[-1] == threading.get_ident()


def test_a_full_buffer_asks_for_a_flush_whatever_the_policy():
    """block: a full buffer wakes the flusher, so the producer waits for a flush, not a timeout."""
    buffer, sink, flusher = started(FlushPolicy(), capacity=2, when_full="block",
                                    block_timeout=10)
    try:
        for i in range(3):
            assert buffer.put(CountingRecord(i))
        stats = buffer.stats()
        assert stats["block_waits"] == 1 and stats["block_timeouts"] == 0
        assert stats["flushes_by_reason"] == {"full": 1}
    finally:
        flusher.stop(timeout=10)
    assert sink.cnts == [0, 1, 2]


def test_a_full_drop_newest_buffer_asks_for_a_flush_whatever_the_policy():
    """drop-newest: the record that finds the buffer full is dropped, and the flusher is
    woken to make room for the next ones (the policy alone would never flush)."""
    buffer, sink, flusher = started(FlushPolicy(), capacity=2, when_full="drop-newest")
    try:
        assert buffer.put(CountingRecord(0)) and buffer.put(CountingRecord(1))
        assert not buffer.put(CountingRecord(2))
        assert sink.written.wait(10), "a full drop-newest buffer never asked for a flush"
        stats = buffer.stats()
        assert stats["flushes_by_reason"] == {"full": 1}
        assert stats["dropped"] == {"drop_newest": 1}
        assert buffer.put(CountingRecord(3))            # room again, without the timer
    finally:
        flusher.stop(timeout=10)
    assert sink.cnts == [0, 1, 3]


def test_build_buffer_from_config(tmp_path):
    config = BufferConfig(kind="fifo", capacity=8, flush_count=2, flush_interval=0,
                          wal=str(tmp_path / "{stream}" / "buffer.wal"), wal_fsync="never")
    sink = MemorySink()
    buffer = build_buffer(config, [sink, MemorySink("second")], name="adc0")
    assert buffer.kind == "fifo" and buffer.capacity == 8
    assert buffer.wal is not None and buffer.wal.path == tmp_path / "adc0" / "buffer.wal"
    assert buffer.sinks[0] is sink
    buffer.put(CountingRecord(0))
    buffer.put(CountingRecord(1))
    assert buffer.flush_needed()


def test_an_idle_stream_rotates_its_file_by_age_without_a_new_record(tmp_path):
    import numpy as np

    from daqd.config import ChunkConfig, SinkConfig
    from daqd.pipeline.records import ChunkRecord
    from daqd.sinks import SinkContext, make_sink

    layout = ChunkConfig(heaps_per_chunk=2, heap_bytes=16)
    sink = make_sink(SinkContext("s", SinkConfig(
        kind="binary", path=str(tmp_path / "{stream}-{seq}.bin"), rotate_seconds=0.5),
        chunk=layout))
    buffer = Buffer("fifo", 8, "block", FlushPolicy(count=1))
    buffer.set_primary_sink(sink)
    flusher = Flusher(buffer).start()
    try:
        buffer.put(ChunkRecord(0, 0, np.zeros((2, 1, 16), np.uint8), np.ones((2, 1), np.uint8)))
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("s-0.bin")):
            assert time.monotonic() < deadline, "an idle stream's file was never rotated"
            time.sleep(0.05)
        assert list(tmp_path.glob("*.tmp")) == []
        assert buffer.stats()["flushes"] == 1           # the rotation is not a flush
    finally:
        flusher.stop()
        sink.close()


def test_a_block_reopen_finishes_that_blocks_file_only(tmp_path):
    """A block's stop passed: its file is finished, not the next block's, begun meanwhile."""
    import numpy as np

    from daqd.config import ChunkConfig, SinkConfig
    from daqd.pipeline.datatime import CaptureBlock
    from daqd.pipeline.records import ChunkRecord
    from daqd.sinks import SinkContext, make_sink

    def record(i, block):
        return ChunkRecord(i, 2 * i, np.zeros((2, 1, 16), np.uint8), np.ones((2, 1), np.uint8),
                           capture_block=block)

    a, b = CaptureBlock("a", 0, 4), CaptureBlock("b", 4)
    sink = make_sink(SinkContext("s", SinkConfig(
        kind="binary", path=str(tmp_path / "{stream}-{capture_block}-{seq}.bin")),
        chunk=ChunkConfig(heaps_per_chunk=2, heap_bytes=16, timestamp_step=1)))
    buffer = Buffer("fifo", 8, "block", FlushPolicy())
    buffer.set_primary_sink(sink)
    flusher = Flusher(buffer).start()
    try:
        for i, block in ((0, a), (1, a), (2, b)):      # b's first came before a's reopen
            buffer.put(record(i, block))
        flusher.flush("capture stop")
        assert sink.current_block is b
        flusher.request_reopen(a)                       # a's file was finished in-band
        buffer.put(record(3, b))
        flusher.flush("more")
        assert sink.current_block is b                  # b's file goes on
        flusher.request_reopen(b)
        flusher.flush("b stopped")
        assert sink.current_block is None
    finally:
        flusher.stop()
        sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-a-0.bin", "s-b-1.bin"]
