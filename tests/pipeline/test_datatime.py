"""Data time: the clock's conversions are exact, spans and windows as documented."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daqd.pipeline.datatime import (
    Clock,
    TimeError,
    Timeline,
    format_utc,
    overlaps,
    parse_instant,
    parse_utc,
)
from daqd.pipeline.records import ChunkRecord, HeapRecord

MEERKAT_L = Clock("2026-12-07T00:00:00Z", 1712e6)      # an L-band digitiser's sample clock


def chunk(timestamp: int) -> ChunkRecord:
    return ChunkRecord(0, timestamp, np.zeros((1, 1, 1), np.uint8), np.ones((1, 1), np.uint8))


def test_utc_forms_agree():
    """ISO 8601 (zone or none), @seconds, a plain number: one instant."""
    expect = Fraction(1796601600) + Fraction(1, 4)
    for form in ("2026-12-07T00:00:00.25Z", "2026-12-07T00:00:00.250+00:00",
                 "2026-12-07T01:00:00.25+01:00", "2026-12-07 00:00:00.25",
                 "@1796601600.25", 1796601600.25):
        assert parse_utc(form) == expect, form


@given(st.integers(min_value=0, max_value=1 << 62))
def test_ticks_to_utc_and_back_is_exact_with_enough_digits(ticks):
    """A UTC time given with enough digits (@seconds) names the very tick, even in 2026."""
    exact = MEERKAT_L.sync_time + Fraction(ticks) / MEERKAT_L.timestamp_rate
    assert MEERKAT_L.ticks(exact) == ticks
    whole = exact.numerator // exact.denominator
    digits = f"@{whole}." + str(round((exact - whole) * 10**30)).zfill(30)
    assert MEERKAT_L.ticks(parse_instant(digits).utc) == ticks


def test_iso_utc_names_the_nearest_tick():
    """ISO 8601 has microseconds: the nearest tick (here 1712 ticks per microsecond)."""
    t = Timeline(MEERKAT_L, 524288)
    utc = MEERKAT_L.utc(524288 * 1000)
    assert abs(t.ticks(parse_instant(format_utc(utc))) - 524288 * 1000) <= 856


def test_instants_ticks_or_utc():
    assert parse_instant(42).ticks == 42
    assert parse_instant("42").ticks == 42
    assert parse_instant("@42").utc == 42
    for bad in (3.5, "3.5", True, None, "yesterday", [1]):
        with pytest.raises(TimeError):
            parse_instant(bad)


def test_utc_needs_a_clock_for_timestamped_streams():
    """Ticks only without [stream.time]: a UTC argument gets one line naming the fix."""
    t = Timeline(Clock(), chunk_ticks=64 * 8192)
    assert not t.has_utc and t.utc(5) is None
    with pytest.raises(TimeError, match=r"needs the stream's clock \(\[stream.time\]"):
        t.ticks(parse_instant("2026-12-07T00:00:00Z"), "at")
    assert t.ticks(parse_instant(5)) == 5
    with pytest.raises(TimeError, match="timestamp_rate"):
        t.seconds_to_ticks(1.5)


def test_chunk_span_is_its_heap_slots():
    t = Timeline(MEERKAT_L, chunk_ticks=64 * 8192)
    assert t.span(chunk(1 << 40)) == (1 << 40, (1 << 40) + 64 * 8192)
    assert t.utc(0) == pytest.approx(1796601600.0)
    assert t.seconds_to_ticks(1.5) == 1712e6 * 1.5


def test_heap_spans_by_item_or_arrival():
    """A timestamp item times a heap; without one, arrival (ns, or the configured clock)."""
    t = Timeline(Clock(), timestamp_item=0x1600)
    assert t.span(HeapRecord(1, {0x1600: 99})) == (99, 100)
    arrival = Timeline(Clock())
    now = time.time()
    start, end = arrival.span(HeapRecord(1, {}, received=now))
    assert end == start + 1 and abs(start - now * 1e9) < 1e3
    assert arrival.has_utc and arrival.utc(start) == pytest.approx(now)
    clocked = Timeline(Clock(1000, 10.0))
    assert clocked.span(HeapRecord(1, {}, received=1001.0)) == (10, 11)


def test_window_selects_overlapping_records():
    """[start, end) with chunk-boundary ends selects exactly the chunks between them."""
    step = 100
    spans = [(i * step, (i + 1) * step) for i in range(10)]
    assert [s for s in spans if overlaps(s, 300, 600)] == spans[3:6]
    assert [s for s in spans if overlaps(s, 301, 600)] == spans[3:6]
    assert [s for s in spans if overlaps(s, 299, 601)] == spans[2:7]
    assert not [s for s in spans if overlaps(s, 300, 300)]
