"""The capture gate: blocks admit exactly the records overlapping them, whatever the order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daqd.pipeline.capture import REASONS, CaptureError, CaptureGate
from daqd.pipeline.datatime import Clock, Timeline
from daqd.pipeline.records import ChunkRecord, HeapRecord

CHUNK = 8 * 8192                                   # heaps_per_chunk x timestamp_step
CHUNKS = Timeline(Clock(), chunk_ticks=CHUNK)
HEAPS = Timeline(Clock(), timestamp_item=0x1600)
CLOCKED = Timeline(Clock("2026-12-07T00:00:00Z", 1712e6), chunk_ticks=CHUNK)


def chunk(i: int) -> ChunkRecord:
    return ChunkRecord(i, i * CHUNK, np.zeros((1, 1, 1), np.uint8), np.ones((1, 1), np.uint8))


def heap(ts: int) -> HeapRecord:
    return HeapRecord(ts, {0x1600: ts})


def run(gate: CaptureGate, records: list) -> tuple[list, list[bool]]:
    """Admit `records` in order: those admitted, and each record's "a block's stop passed"."""
    admitted, passes = [], []
    for record in records:
        ok, ended = gate.admit(record)
        passes.append(ended is not None)
        if ok:
            admitted.append(record)
    return admitted, passes


def test_chunk_boundaries_select_exactly_the_chunks_between():
    gate = CaptureGate(CHUNKS, capturing=False)
    assert gate.state == "stopped"
    block = gate.start(4 * CHUNK, "obs-1")
    assert gate.state == "start-pending"
    gate.stop(10 * CHUNK)
    assert gate.state == "start-pending"
    admitted, passes = run(gate, [chunk(i) for i in range(16)])
    assert [r.chunk_id for r in admitted] == [4, 5, 6, 7, 8, 9]
    assert all(r.capture_block is block for r in admitted)
    assert passes.index(True) == 10 and passes.count(True) == 1   # chunk 10: the stop passed
    assert gate.state == "stopped"
    assert gate.counters() == {"records_before_capture": 4, "records_after_capture": 6,
                               "records_not_captured": 10}
    assert block.metadata(CHUNKS) == {"capture_block_id": "obs-1", "capture_start": 4 * CHUNK,
                                      "capture_stop": 10 * CHUNK}


def test_ticks_inside_chunks_select_every_chunk_they_touch():
    gate = CaptureGate(CHUNKS, capturing=False)
    gate.start(4 * CHUNK + 1)
    gate.stop(9 * CHUNK + 1)
    admitted, _ = run(gate, [chunk(i) for i in range(12)])
    assert [r.chunk_id for r in admitted] == [4, 5, 6, 7, 8, 9]


@given(st.permutations(range(200)), st.integers(0, 199), st.integers(1, 100))
def test_out_of_order_heaps_select_exactly_by_span(order, start, length):
    """Heap mode, timestamps in any order: admitted == the heaps inside [start, stop)."""
    gate = CaptureGate(HEAPS, capturing=False)
    gate.start(start, "b")
    gate.stop(start + length)
    admitted, passes = run(gate, [heap(ts) for ts in order])
    assert sorted(r.cnt for r in admitted) == list(range(start, min(start + length, 200)))
    counts = gate.counters()
    assert counts["records_before_capture"] == start
    assert counts["records_after_capture"] == max(0, 200 - start - length)
    assert passes.count(True) == (1 if start + length < 200 else 0)


def test_stop_now_ends_at_the_newest_record_and_passes_at_once():
    gate = CaptureGate(CHUNKS, started=1796601600.5)
    assert gate.state == "capturing" and gate.block.id == "1796601600"
    admitted, _ = run(gate, [chunk(i) for i in range(3)])
    assert len(admitted) == 3 and gate.block.start is None
    block, passed = gate.stop()
    assert passed and block.stop == 3 * CHUNK and gate.state == "stopped"
    admitted, passes = run(gate, [chunk(3), chunk(2)])    # chunk 2: a straggler of the block
    assert [r.chunk_id for r in admitted] == [2] and passes == [False, False]
    assert gate.stop() == (None, False)                   # nothing to stop


def test_a_stop_behind_what_was_written_is_moved_to_its_end():
    gate = CaptureGate(CHUNKS)
    run(gate, [chunk(i) for i in range(5)])
    block, passed = gate.stop(2 * CHUNK)
    assert block.stop == 5 * CHUNK and passed


def test_a_pending_start_is_cancelled_by_a_stop_now():
    gate = CaptureGate(CHUNKS, capturing=False)
    gate.start(8 * CHUNK)
    block, passed = gate.stop()
    assert passed and block.stop == block.start and gate.state == "stopped"
    admitted, _ = run(gate, [chunk(i) for i in range(12)])
    assert admitted == []


def test_blocks_back_to_back_take_over_at_the_stop_exactly():
    gate = CaptureGate(CHUNKS, capturing=False)
    a = gate.start(2 * CHUNK, "a")
    with pytest.raises(CaptureError, match=r"start-pending; stop it first \(capture-stop\)$"):
        gate.start(6 * CHUNK, "b")              # no stop pending: nothing to follow
    gate.stop(6 * CHUNK)
    with pytest.raises(CaptureError, match=r"^at: capture block a stops at 393216; a next "
                                           r"block may start there or later, not at 327680$"):
        gate.start(5 * CHUNK, "b")
    with pytest.raises(CaptureError, match=r"or start at or after its stop$"):
        gate.start(None, "b")                   # "now" is no place after the stop
    b = gate.start(6 * CHUNK, "b")
    assert gate.block is a and gate.next is b
    assert gate.status()["next"] == {"id": "b", "start": {"timestamp": 6 * CHUNK},
                                     "stop": None}
    with pytest.raises(CaptureError, match=r"b is next; stop it first"):
        gate.start(20 * CHUNK, "c")
    gate.stop(9 * CHUNK)                        # the stop is the next block's
    assert (a.stop, b.stop) == (6 * CHUNK, 9 * CHUNK)
    records = [chunk(i) for i in range(12)]
    admitted, passes = run(gate, records)
    assert [(r.chunk_id, r.capture_block.id) for r in admitted] == [
        (2, "a"), (3, "a"), (4, "a"), (5, "a"), (6, "b"), (7, "b"), (8, "b")]
    # chunk 6 ends a (and is b's first); chunk 9 ends b
    assert [i for i, p in enumerate(passes) if p] == [6, 9]
    assert gate.state == "stopped" and gate.block is b and gate.next is None
    assert gate.counters()["records_not_captured"] == 2 + 3


def test_a_stop_now_cancels_the_next_block():
    gate = CaptureGate(CHUNKS)
    run(gate, [chunk(0)])
    gate.stop(4 * CHUNK)
    b = gate.start(4 * CHUNK, "b")
    cancelled, passed = gate.stop()
    assert cancelled is b and not passed and gate.next is None
    admitted, _ = run(gate, [chunk(i) for i in range(1, 8)])
    assert [r.chunk_id for r in admitted] == [1, 2, 3]      # the first block only


def test_refusals_are_one_line():
    gate = CaptureGate(CHUNKS, capturing=False)
    gate.start(4 * CHUNK)
    with pytest.raises(CaptureError, match=r"start-pending; stop it first"):
        gate.start(8 * CHUNK)
    with pytest.raises(CaptureError, match=r"the stop \(262144\) is not after the block's "
                                           r"start \(262144\)"):
        gate.stop(4 * CHUNK)
    gate.stop()
    for bad in (5, "", "a/b", "../x", "x" * 129):
        with pytest.raises(CaptureError, match="^id: expected a capture-block id"):
            gate.start(None, bad)
    assert gate.state == "stopped"


def test_generated_ids_are_utc_seconds_or_ticks_and_never_repeat():
    gate = CaptureGate(CLOCKED, capturing=False)
    assert gate.start(1712 * 10**6 * 5).id == "1796601605"     # 5 s after sync_time
    gate.stop()
    assert gate.start(1712 * 10**6 * 5 + 1).id == "1796601605-2"
    gate.stop()
    ticks_only = CaptureGate(CHUNKS, capturing=False)
    assert ticks_only.start(524288).id == "t524288"


def test_status_gives_ticks_and_utc():
    gate = CaptureGate(CLOCKED, capturing=False)
    gate.start(1712 * 10**6, "cal")
    gate.stop(2 * 1712 * 10**6)
    status = gate.status()
    assert status == {"state": "start-pending", "id": "cal",
                      "start": {"timestamp": 1712 * 10**6, "utc": "2026-12-07T00:00:01.000000Z"},
                      "stop": {"timestamp": 2 * 1712 * 10**6,
                               "utc": "2026-12-07T00:00:02.000000Z"}}


def test_packets_follow_the_state():
    gate = CaptureGate(CHUNKS, capturing=False)
    assert not gate.admit_packets()
    gate.start(4 * CHUNK)
    assert not gate.admit_packets()                       # start pending
    run(gate, [chunk(4)])
    assert gate.admit_packets()
    assert gate.counters()["records_after_capture"] == 1
    assert gate.counters()["records_before_capture"] == 1
    assert set(REASONS) == {"before_capture", "after_capture"}


def test_a_heap_without_the_timestamp_item_moves_no_data_time():
    """Network input: a heap lacking timestamp_item neither passes a stop nor starts a block."""
    gate = CaptureGate(HEAPS, capturing=False)
    gate.start(60, "b")
    gate.stop(80)
    untimed = HeapRecord(100, {0x1700: 1})          # timed by arrival it would be ~1.8e18
    assert gate.admit(untimed) == (False, None)     # start pending: not written, counted
    assert gate.state == "start-pending" and gate.newest is None
    admitted, passes = run(gate, [heap(t) for t in range(55, 70)])
    assert [r.items[0x1600] for r in admitted] == list(range(60, 70)) and not any(passes)
    other = HeapRecord(101, {0x1700: 2})
    assert gate.admit(other) == (True, None) and other.capture_block is gate.block
    assert gate.state == "stop-pending" and gate.newest == 69
    assert gate.counters()["records_before_capture"] == 1 + 5


def back_to_back(timeline: Timeline) -> CaptureGate:
    """A gate with block a [2, 6) chunks, then b [6, 9) scheduled behind it."""
    gate = CaptureGate(timeline, capturing=False)
    gate.start(2 * CHUNK, "a")
    gate.stop(6 * CHUNK)
    gate.start(6 * CHUNK, "b")
    gate.stop(9 * CHUNK)
    return gate


@given(st.permutations(range(12)), st.lists(st.integers(1, 12), min_size=1, max_size=12))
def test_admit_many_decides_as_admit_one_after_the_other(order, sizes):
    """Records in any order, cut into lists of any sizes: `admit_many` gives each record
    the decision `admit` gives it (a later record of a list never makes an earlier one
    see a stop as passed), and the gate ends in the same state."""
    one, many = back_to_back(CHUNKS), back_to_back(CHUNKS)
    records_one, records_many = [chunk(i) for i in order], [chunk(i) for i in order]
    expected = [one.admit(record) for record in records_one]
    got, i = [], 0
    while i < len(records_many):
        size = sizes[len(got) % len(sizes)]
        got += many.admit_many(records_many[i:i + size])
        i += size
    names = [(ok, None if ended is None else ended.id) for ok, ended in got]
    assert names == [(ok, None if ended is None else ended.id) for ok, ended in expected]
    assert [r.capture_block and r.capture_block.id for r in records_many] == \
        [r.capture_block and r.capture_block.id for r in records_one]
    assert many.counters() == one.counters()
    assert many.status() == one.status() and many.newest == one.newest


def test_observe_many_notes_every_span():
    gate = CaptureGate(CHUNKS, capturing=False)
    spans = gate.observe_many([chunk(i) for i in (3, 7, 5)])
    assert spans == [(i * CHUNK, (i + 1) * CHUNK) for i in (3, 7, 5)]
    assert (gate.newest, gate.newest_end) == (7 * CHUNK, 8 * CHUNK)
