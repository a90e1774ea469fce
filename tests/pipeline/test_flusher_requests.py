"""Flushes and triggers asked of the flusher thread (the control server's `flush`).

These kill mutants of ``Flusher.flush``, ``trigger`` and ``_ask`` in
``daqd/pipeline/flush.py`` that every other test let live
(``python tests/mutation/run_mutation.py flush``).
"""

import gc
import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import CountingRecord, MemorySink

from daqd.pipeline.buffers import Buffer
from daqd.pipeline.flush import Flusher, FlushPolicy


@pytest.fixture
def running():
    sink = MemorySink()
    buffer = Buffer("fifo", capacity=16, policy=FlushPolicy())    # never due by itself
    buffer.set_primary_sink(sink)
    flusher = Flusher(buffer).start()
    yield buffer, sink, flusher
    assert flusher.stop()
    assert flusher.error is None


def test_flush_waits_for_the_records_and_counts_its_reason(running):
    buffer, sink, flusher = running
    for i in range(3):
        buffer.put(CountingRecord(i))
    assert flusher.flush() == 3
    assert sink.cnts == [0, 1, 2]
    buffer.put(CountingRecord(3))
    assert flusher.flush("operator") == 1
    stats = buffer.stats()
    assert stats["flushes_by_reason"] == {"request": 1, "operator": 1}
    assert (stats["flushes"], stats["triggers"]) == (2, 0)
    assert flusher.flushes == 2


def test_trigger_is_a_flush_counted_as_a_trigger(running):
    buffer, sink, flusher = running
    buffer.put(CountingRecord(7))
    assert flusher.trigger() == 1
    assert sink.cnts == [7]
    stats = buffer.stats()
    assert stats["flushes_by_reason"] == {"trigger": 1}
    assert stats["triggers"] == 1


def test_a_flusher_not_started_says_so():
    buffer = Buffer("fifo", capacity=4, policy=FlushPolicy())
    buffer.set_primary_sink(MemorySink())
    flusher = Flusher(buffer)
    for ask in (flusher.flush, flusher.trigger):
        with pytest.raises(RuntimeError, match="^the flusher is not running$"):
            ask()


def test_a_flusher_stopped_makes_a_final_flush_and_gives_the_sinks_back(running):
    buffer, sink, flusher = running
    buffer.put(CountingRecord(1))
    assert flusher.stop()
    assert sink.cnts == [1]
    assert buffer.stats()["flushes_by_reason"] == {"stop": 1}
    buffer.put(CountingRecord(2))
    assert buffer.flush("after") == 1                   # in this thread, no flusher now
    assert threading.get_ident() in sink.threads


def test_a_flusher_never_started_stops_with_a_final_flush_here():
    sink = MemorySink()
    buffer = Buffer("fifo", capacity=4, policy=FlushPolicy())
    buffer.set_primary_sink(sink)
    buffer.put(CountingRecord(3))
    assert Flusher(buffer).stop() is True
    assert sink.cnts == [3]
    assert buffer.stats()["flushes_by_reason"] == {"stop": 1}


def test_the_flusher_thread_is_named_daemonic_and_started_once(running):
    _, _, flusher = running
    thread = next(t for t in threading.enumerate() if t.ident == flusher.ident)
    assert (thread.name, thread.daemon) == ("daqd-flusher", True)
    with pytest.raises(RuntimeError, match="^the flusher has already been started$"):
        flusher.start()


def test_a_dropped_flusher_closes_its_wake_up_pipe():
    buffer = Buffer("fifo", capacity=4, policy=FlushPolicy())
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        Flusher(buffer)
    gc.collect()
    # 40 descriptors were opened; another thread may hold a few of its own meanwhile.
    assert len(os.listdir("/proc/self/fd")) < before + 10


def test_a_flush_that_does_not_finish_in_time_returns_none(json_logs):
    entered, release = threading.Event(), threading.Event()

    def stall(records):
        entered.set()
        assert release.wait(30)

    sink = MemorySink(on_write=stall)
    buffer = Buffer("fifo", capacity=4, policy=FlushPolicy())
    buffer.set_primary_sink(sink)
    flusher = Flusher(buffer).start()
    try:
        buffer.put(CountingRecord(0))
        assert flusher.flush(timeout=0.2) is None        # the sink is still writing
        assert entered.wait(30)
        assert flusher.trigger(timeout=0.2) is None      # queued behind it
        assert flusher.stop(timeout=0.2) is False        # still stuck in the sink
        errors = [e for e in json_logs() if e.get("level") == "error"]
        assert [(e["event"], e["timeout"]) for e in errors] == [("flusher did not stop", 0.2)]
        assert flusher.running
    finally:
        release.set()
        assert flusher.stop()
    assert sink.cnts == [0]
    assert not flusher.running


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"count": -1}, "count, nbytes and interval must not be negative"),
    ({"nbytes": -1}, "count, nbytes and interval must not be negative"),
    ({"interval": -0.5}, "count, nbytes and interval must not be negative"),
    ({"when": "most"}, "when: 'most' is not one of any, all"),
])
def test_a_bad_policy_is_refused_in_words(kwargs, words):
    with pytest.raises(ValueError) as info:
        FlushPolicy(**kwargs)
    assert str(info.value) == words


class Full:
    def __call__(self, buffer):
        return True

    def check(self, buffer):
        return True


def always(buffer):
    return True


def test_a_custom_predicate_is_named_in_the_reason_by_its_qualified_name():
    assert FlushPolicy(custom=[always]).due(None) == "custom:always"
    assert FlushPolicy(custom=[Full().check]).due(None) == "custom:Full.check"
    full = Full()
    assert FlushPolicy(custom=[full]).due(None) == f"custom:{full!r}"   # no __qualname__
    assert FlushPolicy(custom=[("mine", always)]).due(None) == "custom:mine"
    assert FlushPolicy().due(None) is None          # no condition: never due by itself
