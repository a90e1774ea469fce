"""Flushes and triggers asked of the flusher thread (the control server's `flush`).

These kill mutants of ``Flusher.flush``, ``trigger`` and ``_ask`` in
``daqd/pipeline/flush.py`` that every other test let live
(``python tests/mutation/run_mutation.py flush``).
"""

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


def test_a_flush_that_does_not_finish_in_time_returns_none():
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
        assert entered.is_set()
        assert flusher.trigger(timeout=0.2) is None      # queued behind it
    finally:
        release.set()
        assert flusher.stop()
    assert sink.cnts == [0]
