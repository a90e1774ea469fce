"""A buffer with a healthy and a failing sink, as a property (hypothesis).

A second angle on the lagging-eviction bound (tests/pipeline/test_buffers.py
and test_sink_isolation.py check it with chosen sequences): hypothesis picks
the capacity, the when_full policy and a sequence of puts and flushes, the
second sink failing or not at each flush.  Whatever the sequence, the buffer
never holds more than its capacity; each sink gets each accepted record at
most once, in order, and every accepted record is either written or counted
lost for each sink; the lagging evictions are the failing sink's backlog
overflows; the healthy sink loses nothing but what the buffer itself dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import CountingRecord, MemorySink

from daqd.pipeline.buffers import Buffer
from daqd.pipeline.flush import FlushPolicy

# ("put", records) or ("flush", whether the second sink fails at it)
STEPS = st.lists(st.one_of(st.tuples(st.just("put"), st.integers(1, 12)),
                           st.tuples(st.just("flush"), st.booleans())),
                 min_size=1, max_size=30)


def in_order_once(cnts: list[int]) -> bool:
    return cnts == sorted(set(cnts))


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, capacity=st.integers(1, 10), kind=st.sampled_from(["fifo", "circular"]),
       when_full=st.sampled_from(["drop-newest", "overwrite-oldest"]))
def test_a_failing_sink_costs_the_healthy_one_nothing_and_the_bound_holds(
        steps, capacity, kind, when_full):
    good, bad = MemorySink("good"), MemorySink("bad")
    buffer = Buffer(kind, capacity, when_full, FlushPolicy())
    buffer.set_primary_sink(good)
    buffer.add_custom_sink(bad)
    accepted: list[int] = []
    cnt = 0
    for op, arg in steps:
        if op == "put":
            for _ in range(arg):
                if buffer.put(CountingRecord(cnt)):
                    accepted.append(cnt)
                cnt += 1
                assert buffer.size() <= capacity
        else:
            bad.fail = arg
            buffer.flush()
            assert buffer.size() <= capacity
    bad.fail = False
    buffer.flush()                       # the bad sink recovers: what it still has is written
    buffer.close()
    stats = buffer.stats()
    sinks = stats["sinks"]
    assert stats["records_accepted"] == len(accepted)
    for sink in (good, bad):
        assert in_order_once(sink.cnts), sink.name
        assert set(sink.cnts) <= set(accepted), sink.name
        assert sinks[sink.name]["written"] + sinks[sink.name]["lost"] == len(accepted), sink.name
    overwritten = stats["dropped"].get("overwrite_oldest", 0)
    assert sinks["good"]["lost"] == overwritten
    assert len(good.cnts) == len(accepted) - overwritten
    assert sinks["bad"].get("lost_by_reason", {}).get("backlog_overflow", 0) \
        == stats["lagging_evictions"]
