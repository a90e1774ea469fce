"""Record holds, the trigger retention and triggered events, on a real chunk pool.

Chunks come from daqd's own `ChunkStream` fed by the built-in W1 generator
(8 heaps of 8192 ticks a chunk: C = 65536 ticks), so a release that is
missing or one too many shows in the pool's own counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daqd import _spead
from daqd.config import parse
from daqd.pipeline.datatime import Clock, TimeError, Timeline
from daqd.pipeline.events import TriggerError, TriggerEvent, Triggers, build_triggers
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.pipeline.retention import Retention, build_retention
from daqd.sinks import build_event_sink
from daqd.sinks.binary import load as load_binary

C = 8 * 8192
TIMELINE = Timeline(Clock(0, 100 * C), C)      # a chunk is 10 ms


class Pool:
    """A real chunk pool and the W1 chunks it completes, as chunk records."""

    def __init__(self, pool: int = 40):
        self.stream = _spead.ChunkStream(max_chunks=2, pool=pool, heaps_per_chunk=8,
                                         heap_bytes=8192, timestamp_step=8192,
                                         when_full="drop")
        self.reader = _spead.SimReader("W1", heaps=8 * 1000)

    def records(self, n: int) -> Iterator[ChunkRecord]:
        """The next `n` completed chunks, in order."""
        while n:
            while n and self.stream.data_ring_size:
                n -= 1
                yield ChunkRecord.from_chunk(self.stream.get(0))
            if n:
                assert self.stream.process(self.reader) >= 0

    def whole(self) -> bool:
        """No chunk is held by a record: each is free, open or ready to be taken."""
        counts = self.stream.pool_counts()
        return counts["held"] == 0 and \
            counts["free"] + counts["open"] + counts["ready"] == self.stream.pool


def test_a_chunk_goes_back_to_the_pool_on_the_last_release_only():
    pool = Pool(8)
    (record,) = pool.records(1)
    assert record.hold() is record and record.holds == 2
    record.release()
    assert pool.stream.pool_counts()["held"] == 1 and record.holds == 1
    record.release()
    assert pool.whole() and record.holds == 0
    record.release()                               # one too many: nothing happens
    assert pool.whole()
    with pytest.raises(ValueError, match="was released"):
        record.hold()


def test_holds_are_counted_exactly_across_threads():
    pool = Pool(8)
    (record,) = pool.records(1)

    def churn() -> None:
        for _ in range(2000):
            record.hold()
            record.release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert record.holds == 1 and pool.stream.pool_counts()["held"] == 1
    record.release()
    assert pool.whole()


def test_retention_keeps_at_least_retain_seconds_evicting_the_oldest():
    pool = Pool()
    retention = Retention(TIMELINE, 5 * C + 1, max_records=7)   # 5 chunks and a tick: 6
    for record in pool.records(20):
        retention.add(record)
        record.release()                           # the buffer path's hold
    assert retention.status() == {"oldest_timestamp": 14 * C, "newest_timestamp": 19 * C,
                                  "records": 6, "bytes": 6 * C}
    assert pool.stream.pool_counts()["held"] == 6
    since = retention.retained_since(17 * C)
    assert [r.timestamp for r in since] == [17 * C, 18 * C, 19 * C]
    assert all(r.holds == 2 for r in since)
    retention.close()
    assert not pool.whole()                        # the caller of retained_since holds 3
    for r in since:
        r.release()
    assert pool.whole()
    retention.add(next(pool.records(1)))           # closed: takes no hold
    assert retention.status()["records"] == 0


def test_retention_never_holds_more_than_the_pool_was_sized_for():
    pool = Pool()
    retention = Retention(TIMELINE, 100 * C, max_records=4)
    for record in pool.records(10):
        retention.add(record)
        record.release()
    assert retention.status()["records"] == 4
    retention.close()
    assert pool.whole()


def config(tmp: Path, kind: str = "binary", time: bool = True, pool: int = 40) -> Any:
    text = f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]
[stream.chunk]
heaps_per_chunk = 8
max_chunks = 2
pool = {pool}
[stream.trigger]
retain_seconds = 0.1
max_post_seconds = 0.05
kind = "{kind}"
path = "{tmp}/events/{{stream}}-{{event}}-{{label}}.bin"
"""
    if time:
        text += '[stream.time]\nsync_time = "0"\ntimestamp_rate = 6553600\n'
    return parse(text, host=False).streams[0]


def triggers_of(stream: Any) -> Any:
    def sink(number: int, label: str, start: int, end: int) -> Any:
        return build_event_sink(stream, stream.trigger, number, label, (start, end))

    return build_triggers(stream.trigger, stream.timeline, sink, stream.name)


def test_an_event_writes_held_and_later_records_of_its_window_once(tmp_path):
    stream = config(tmp_path)
    triggers = triggers_of(stream)
    retention = triggers.retention
    assert (retention.ticks, retention.max_records) == (10 * C, 11)
    pool = Pool()
    for record in pool.records(15):                # chunks 0-14; 5-14 held
        retention.add(record)
        record.release()
    reply = triggers.start(*triggers.window({"pre": 0.05, "post": 0.03, "label": "x"}))
    assert (reply["start"], reply["end"], reply["records_retained"]) == (9 * C, 17 * C, 6)
    gone = triggers.start(*triggers.window({"start": 0, "end": 7 * C}))
    assert (gone["records_retained"], gone["records_missing"]) == (2, 5)
    for record in pool.records(5):                 # 15, 16 belong to the first event
        retention.add(record)
        record.release()
    triggers.close()
    retention.close()
    assert pool.whole()
    counts = triggers.counters()
    assert counts["trigger_events"] == 2
    assert counts["trigger_records_written"] == 8 + 2
    assert counts["trigger_records_missing"] == 5
    _, first = load_binary(reply["path"])
    _, second = load_binary(gone["path"])
    assert first.shape[0] == 8 and second.shape[0] == 2


def test_an_event_whose_future_never_comes_ends_with_the_stream(tmp_path):
    stream = config(tmp_path)
    triggers = triggers_of(stream)
    pool = Pool()
    for record in pool.records(5):
        triggers.retention.add(record)
        record.release()
    triggers.start(*triggers.window({"pre": 0.01, "post": 0.05}))
    (live,) = triggers.in_flight()
    assert live["state"] == "writing"
    triggers.close()
    triggers.retention.close()
    assert triggers.in_flight() == []
    counts = triggers.counters()
    # window: chunks 3-8; 3 and 4 written, 5-8 never came
    assert (counts["trigger_records_written"], counts["trigger_records_missing"]) == (2, 4)
    assert pool.whole()


def test_a_sink_that_raises_a_non_oserror_counts_its_records_failed(tmp_path):
    """A sink kind from another package may raise anything: its records are failed,
    not missing, and the event goes on writing the next ones."""
    stream = config(tmp_path)
    calls = []

    def sink(number: int, label: str, start: int, end: int) -> Any:
        made, path = build_event_sink(stream, stream.trigger, number, label, (start, end))
        write = made.write

        def first_write_raises(records: list[Any]) -> None:
            calls.append(len(records))
            if len(calls) == 1:
                raise ValueError("a buggy sink")
            write(records)

        made.write = first_write_raises
        return made, path

    triggers = build_triggers(stream.trigger, stream.timeline, sink, stream.name)
    pool = Pool()
    for record in pool.records(5):                 # chunks 0-4 held
        triggers.retention.add(record)
        record.release()
    reply = triggers.start(*triggers.window({"pre": 0.03, "post": 0.03}))
    deadline = time.monotonic() + 10
    while not calls:                               # the held records' write raised
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for record in pool.records(3):                 # 5, 6, 7: the same event goes on
        triggers.retention.add(record)
        record.release()
    triggers.close()
    triggers.retention.close()
    counts = triggers.counters()
    # chunks 1-4 held, one write; then 5 and 6 (7 is past), one or two writes
    assert calls[0] == 4 and sum(calls[1:]) == 2
    assert counts["trigger_records_failed"] == 4
    assert counts["trigger_records_written"] == 2
    assert counts["trigger_records_missing"] == 0
    _, data = load_binary(reply["path"])
    assert data.shape[0] == 2
    assert pool.whole()


@pytest.mark.parametrize(("args", "words"), [
    ({"start": 10, "end": 10}, "is not after start"),
    ({"start": 0, "end": 100 * C}, "longer than retain_seconds + max_post_seconds"),
    ({"pre": 0, "post": 0.07}, "max_post_seconds allows"),
    ({"pre": -1, "post": 0}, "at least 0"),
    ({"start": 1, "pre": 1}, "give start and end, or pre and post"),
    ({"pre": 0.01, "post": 0, "label": ""}, "label ''"),
    ({"start": 1.5, "end": 2}, "neither ticks"),
])
def test_bad_windows_are_one_line_errors(tmp_path, args, words):
    triggers = triggers_of(config(tmp_path))
    pool = Pool()
    for record in pool.records(5):
        triggers.retention.add(record)
        record.release()
    with pytest.raises((TriggerError, TimeError), match=words.replace("+", r"\+")) as exc:
        triggers.window(args)
    assert "\n" not in str(exc.value)
    triggers.retention.close()
    assert pool.whole()


def test_utc_needs_the_stream_clock():
    retention = Retention(Timeline(Clock(), C), 10 * C)
    triggers = Triggers(retention, 10 * C, C, 1.0, lambda *a: (None, ""), "adc0")
    pool = Pool()
    retention.add(next(pool.records(1)))
    with pytest.raises(TimeError, match="needs the stream's clock"):
        triggers.window({"start": "2026-12-07T00:00:00Z", "end": 5})
    retention.close()


def test_no_data_yet_is_refused(tmp_path):
    triggers = triggers_of(config(tmp_path))
    with pytest.raises(TriggerError, match="no data received yet"):
        triggers.window({"pre": 0.01, "post": 0.01})


def test_build_retention_from_the_section(tmp_path):
    stream = config(tmp_path)
    retention = build_retention(stream.trigger, stream.timeline)
    assert (retention.ticks, retention.max_records) == (10 * C, 11)


def test_heap_mode_retains_by_the_timestamp_item_and_writes_text_events(tmp_path):
    text = f"""
[daemon]
pidfile = "{tmp_path}/run/daqd.pid"
[[stream]]
name = "slow"
sources = ["udp://127.0.0.1:7148"]
[stream.time]
sync_time = "0"
timestamp_rate = 1000
timestamp_item = 0x1600
[stream.trigger]
retain_seconds = 0.05
max_post_seconds = 0.01
kind = "text"
path = "{tmp_path}/events/{{stream}}-{{label}}.txt"
"""
    stream = parse(text, host=False).streams[0]
    triggers = triggers_of(stream)
    for t in range(100):                           # heap t carries timestamp t (1 ms each)
        triggers.retention.add(HeapRecord(t, {0x1600: t, 0x1000: t * 10}))
    assert triggers.retention.status() == {"oldest_timestamp": 50, "newest_timestamp": 99,
                                           "records": 50, "bytes": 50 * 16}
    reply = triggers.start(*triggers.window({"start": 60, "end": 70, "label": "h"}))
    assert reply["records_retained"] == 10 and reply["records_missing"] is None
    triggers.close()
    lines = [line.split()[0] for line in Path(reply["path"]).read_text().splitlines()
             if not line.startswith("#")]
    assert lines == [str(t) for t in range(60, 70)]
    counts = triggers.counters()
    assert (counts["trigger_records_written"], counts["trigger_records_missing"]) == (10, 0)


def test_records_offered_beyond_the_queue_limit_are_counted_lagging_not_held(tmp_path):
    stream = config(tmp_path)
    sink, path = build_event_sink(stream, stream.trigger, 1, "lag", (0, 10 * C))
    retention = Retention(TIMELINE, 10 * C, 11)
    event = TriggerEvent(1, "lag", 0, 10 * C, path, sink, TIMELINE, time.monotonic() + 5,
                         queue_limit=3)
    assert retention.watch(event) == []
    pool = Pool()
    for record in pool.records(6):                 # the writer has not started: 3 queue up
        retention.add(record)
        record.release()
    assert event.lagging == 3 and pool.stream.pool_counts()["held"] == 6   # retention's 6
    event.stop("stream stopped")
    event.run([], retention, lambda e: None)
    assert (event.written, event.lagging, event.missing, event.state) == (3, 3, 4,
                                                                          "stream stopped")
    retention.close()
    assert pool.whole()
    assert load_binary(path)[1].shape[0] == 3


def test_an_event_stops_waiting_at_its_wall_clock_bound(tmp_path):
    stream = config(tmp_path)
    sink, path = build_event_sink(stream, stream.trigger, 1, "late", (0, 4 * C))
    retention = Retention(TIMELINE, 10 * C, 11)
    pool = Pool()
    for record in pool.records(2):
        retention.add(record)
        record.release()
    event = TriggerEvent(1, "late", 0, 4 * C, path, sink, TIMELINE, time.monotonic() + 0.2)
    event.run(retention.watch(event), retention, lambda e: None)
    assert (event.state, event.written, event.missing) == ("timeout", 2, 2)
    meta = sink.context.metadata                   # what the sink writes into the file
    assert {k: meta[k] for k in ("event", "trigger_label", "trigger_start", "trigger_end",
                                 "trigger_start_utc", "trigger_end_utc", "records_written",
                                 "records_missing", "trigger_ended")} == {
        "event": 1, "trigger_label": "late", "trigger_start": 0, "trigger_end": 4 * C,
        "trigger_start_utc": 0.0, "trigger_end_utc": 0.04, "records_written": 2,
        "records_missing": 2, "trigger_ended": "timeout"}
    retention.close()
    assert pool.whole()


def test_a_trigger_that_races_the_stop_ends_with_it(tmp_path):
    """The stream stops while an event's file is being made: the event ends at once too."""
    stream = config(tmp_path)
    made: list[Any] = []

    def sink(number: int, label: str, start: int, end: int) -> Any:
        made.append(threading.Thread(target=triggers.close))   # the stop comes now
        made[-1].start()
        deadline = time.monotonic() + 10
        while not triggers.closed:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return build_event_sink(stream, stream.trigger, number, label, (start, end))

    triggers = build_triggers(stream.trigger, stream.timeline, sink, stream.name)
    pool = Pool()
    for record in pool.records(12):
        triggers.retention.add(record)
        record.release()
    # A window into the future: it would wait for data until max_post_seconds + EVENT_GRACE.
    before = set(threading.enumerate())
    reply = triggers.start(*triggers.window({"pre": 0.02, "post": 0.05, "label": "late"}))
    made[0].join(10)            # close() waited for the start, then for the event
    assert not made[0].is_alive()
    assert not [t for t in set(threading.enumerate()) - before
                if t.name.endswith("event-1")], "the event outlived the stream's stop"
    with pytest.raises(TriggerError, match="is stopping"):
        triggers.start(0, C, "after")
    assert triggers.in_flight() == []
    triggers.retention.close()
    assert pool.whole()
    assert (tmp_path / "events").is_dir() and reply["path"].endswith("adc0-1-late.bin")
    meta, chunks = load_binary(reply["path"])
    assert meta["trigger_ended"] == "stream stopped" and chunks.shape[0] == 3


def test_a_heap_without_the_timestamp_item_is_not_retained_and_evicts_nothing(tmp_path):
    timeline = Timeline(Clock(), timestamp_item=0x1600)
    retention = Retention(timeline, ticks=100)
    for ts in range(50):
        retention.add(HeapRecord(ts, {0x1600: ts, 0x1700: 1}))
    retention.add(HeapRecord(99, {0x1700: 1}))      # arrival-timed it would push all out
    assert retention.status()["records"] == 50
    assert (retention.oldest_start(), retention.newest_end) == (0, 50)
