"""RepeatedErrors: an error that repeats is logged once, then summarised once per interval."""

import structlog
from structlog.testing import capture_logs

from daqd.logs import RepeatedErrors


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_first_line_then_one_summary_per_interval_then_a_last_line():
    clock = Clock()
    errors = RepeatedErrors(structlog.get_logger("t"), interval=1.0, clock=clock)
    with capture_logs() as logs:
        for i in range(1000):               # 1000 errors over 2.5 s
            errors.error("disk", "append failed", error=f"ENOSPC {i}")
            clock.now += 0.0025
            errors.summarise()
        clock.now += 1.0                    # quiet for a whole interval: it stopped
        errors.summarise()
        errors.summarise()
    events = [(e["event"], e.get("repeats"), e.get("total")) for e in logs]
    assert events[0] == ("append failed", None, None)
    assert [e for e, _, _ in events] == ["append failed", "append failed (repeated)",
                                        "append failed (repeated)", "append failed (stopped)"]
    assert 1 + sum(r for _, r, _ in events[1:]) == 1000 == events[-1][2]
    assert logs[-1]["error"] == "ENOSPC 999" and logs[-1]["log_level"] == "warning"
    assert errors.totals() == {}
    with capture_logs() as logs:            # after it stopped, the next one is news again
        errors.error("disk", "append failed", error="EIO")
    assert [(e["event"], e["error"]) for e in logs] == [("append failed", "EIO")]


def test_keys_are_counted_apart_and_close_tells_what_is_left():
    clock = Clock()
    errors = RepeatedErrors(structlog.get_logger("t"), interval=10.0, clock=clock)
    with capture_logs() as logs:
        for _ in range(5):
            errors.error("a", "a failed")
            errors.warning("b", "b failed")
        errors.error("c", "c failed")       # once only: nothing to summarise
        errors.close()
    assert [(e["event"], e.get("total")) for e in logs] == [
        ("a failed", None), ("b failed", None), ("c failed", None),
        ("a failed (stopped)", 5), ("b failed (stopped)", 5)]


def test_info_events_log_the_first_few_then_info_summaries():
    clock = Clock()
    events = RepeatedErrors(structlog.get_logger("t"), interval=1.0, clock=clock, first=3)
    with capture_logs() as logs:
        for i in range(500):                # 500 connections over 1.25 s
            events.info("peer", "tcp peer accepted", peer=f"p{i}")
            clock.now += 0.0025
            events.summarise()
        clock.now += 1.0
        events.summarise()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("tcp peer accepted", "info")] * 3 + [
        ("tcp peer accepted (repeated)", "info"), ("tcp peer accepted (stopped)", "info")]
    assert [e["peer"] for e in logs[:3]] == ["p0", "p1", "p2"]
    assert 3 + sum(e["repeats"] for e in logs[3:]) == 500 == logs[-1]["total"]
