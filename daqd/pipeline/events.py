"""Triggered dumps: a window of data time written to an event file of its own.

A ``trigger`` request names a window ``[start, end)`` of data time (ticks or
UTC, or ``pre``/``post`` seconds around the newest data time).  `Triggers`
checks it, numbers the event (per stream, from 1) and starts a
`TriggerEvent`, which writes, in a thread of its own, every record that
overlaps the window: those the retention (`daqd.pipeline.retention`) holds
now, then, when the window reaches into the future, those that arrive until
data time passes ``end``.  Receive and the buffer's flusher never wait for
it; the normal sinks never see it.

An event ends when a record at or past its ``end`` has arrived
(``complete``), when the stream stops (``stream stopped``), or when
``max_post_seconds`` + `EVENT_GRACE` seconds of wall-clock time have passed
since the request (``timeout``: a live instrument's data time runs at about
wall-clock speed).  Every record of the window that is not written is
counted under a reason: ``missing`` (chunk mode: the chunk slots of the
window, ``ceil(end / C) - floor(start / C)`` for chunks of ``C`` ticks, that
were no longer held or never arrived), ``lagging`` (offered while the
event's writer was `queue_limit` records behind; not held, so the pool is
not drained) and ``failed`` (a sink write failed).
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from daqd.errors import UsageProblem
from daqd.pipeline.datatime import Timeline, parse_instant
from daqd.pipeline.retention import Retention, build_retention, post_ticks

if TYPE_CHECKING:
    from daqd.config import TriggerConfig

log = structlog.get_logger("daqd.trigger")

#: Wall-clock seconds an event waits for its future part beyond ``max_post_seconds``.
EVENT_GRACE = 10.0
#: Seconds the writer waits for a record before it looks at its end conditions again.
POLL = 0.1
#: Records of an event written (then let go) at a time.
WRITE_BATCH = 16
#: Seconds `Triggers.close` waits for each event's writer.
CLOSE_TIMEOUT = 30.0
#: A label: part of file names, so letters, digits and ``._+-``, at most 64.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
DEFAULT_LABEL = "trigger"
#: The arguments of a ``trigger`` request (``stream`` is the service's).
ARGUMENTS = ("start", "end", "pre", "post", "label")


class TriggerError(UsageProblem, ValueError):
    """A trigger request that cannot be served (one line naming the problem)."""


class TriggerEvent:
    """One event: its window, its sink, and the thread that writes it.

    Parameters
    ----------
    number : int
        The event's number in its stream.
    label : str
        The requester's label.
    start, end : int
        The window, ticks.
    path : str
        The event file's name (the sink's template, with nothing left to fill).
    sink : Sink
        Where its records go (`daqd.sinks.build_event_sink`); closed at the end.
    timeline : Timeline
        The stream's data time.
    deadline : float
        Monotonic seconds after which the event stops waiting for records.
    queue_limit : int or None
        Records offered but not yet written that the event holds at most.
    """

    def __init__(self, number: int, label: str, start: int, end: int, path: str, sink: Any,
                 timeline: Timeline, deadline: float, queue_limit: int | None = None):
        self.number = number
        self.label = label
        self.start = start
        self.end = end
        self.path = path
        self.sink = sink
        self.timeline = timeline
        self.deadline = deadline
        self.queue_limit = queue_limit
        self.state = "writing"
        self.written = 0
        self.lagging = 0
        self.failed = 0
        self.missing: int | None = None
        self.written_start: int | None = None
        self.written_end: int | None = None
        self.errors: list[str] = []
        self._queue: collections.deque[Any] = collections.deque()
        self._changed = threading.Condition()
        self._complete = False
        self._stop_reason = ""
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()

    # Called by the retention, under its lock: quick, never blocking on I/O.

    def offer(self, record: Any) -> None:
        """Queue a record of the window (held), or count it ``lagging`` when too far behind."""
        with self._changed:
            if self.queue_limit is not None and len(self._queue) >= self.queue_limit:
                self.lagging += 1
                return
            self._queue.append(record.hold())
            self._changed.notify()

    def reached(self, newest_end: int) -> None:
        """Note data time reaching `newest_end`: past `end`, the window is complete."""
        if newest_end >= self.end and not self._complete:
            with self._changed:
                self._complete = True
                self._changed.notify()

    def stop(self, reason: str) -> None:
        """End the event once what is queued is written (the stream stops)."""
        with self._changed:
            self._stop_reason = self._stop_reason or reason
            self._changed.notify()

    # The writer thread.

    def run(self, held: list[Any], retention: Retention, done: Callable[[TriggerEvent], None]
            ) -> None:
        """Write `held` (records held now), then what is offered, until the event ends."""
        reason = "error"
        try:
            while held:             # in batches: each batch's chunks go back to the pool
                batch, held = held[:WRITE_BATCH], held[WRITE_BATCH:]
                self._write(batch)
            while True:
                with self._changed:
                    if not self._queue and not self._complete and not self._stop_reason:
                        self._changed.wait(min(POLL, max(0.0, self.deadline - time.monotonic())))
                    batch = list(self._queue)
                    self._queue.clear()
                    complete, stop = self._complete, self._stop_reason
                if batch:
                    self._write(batch)
                    continue
                if complete:
                    reason = "complete"
                    break
                if stop:
                    reason = stop
                    break
                if time.monotonic() >= self.deadline:
                    reason = "timeout"
                    break
        except Exception as exc:  # a writer must report, never vanish silently
            self.errors.append(f"{type(exc).__name__}: {exc}")
            log.error("trigger event failed", event_number=self.number, error=self.errors[-1],
                      exc_info=True)
        finally:
            retention.unwatch(self)
            with self._changed:
                left = list(self._queue)
                self._queue.clear()
            for record in held + left:
                self.failed += 1
                record.release()
            self.state = reason
            self.missing = self._missing()
            self._close()
            self.finished.set()
            done(self)

    def _write(self, records: list[Any]) -> None:
        if not records:
            return
        try:
            self.sink.write(records)
            self.sink.commit()
        except Exception as exc:  # a sink from another package may raise anything
            # Counted as failed, whatever the sink raised, and the event goes on.
            error = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            self.failed += len(records)
            self.errors.append(error)
            log.error("trigger event write failed", event_number=self.number, path=self.path,
                      records=len(records), error=error)
        else:
            self.written += len(records)
            for record in records:
                start, end = self.timeline.span(record)
                if self.written_start is None or start < self.written_start:
                    self.written_start = start
                if self.written_end is None or end > self.written_end:
                    self.written_end = end
        finally:
            for record in records:
                record.release()

    def expected(self) -> int | None:
        """Chunk mode: the chunk slots overlapping the window; None in heap mode."""
        chunk = self.timeline.chunk_ticks
        if chunk is None:
            return None
        first = max(self.start, 0) // chunk
        return max(0, -(-self.end // chunk) - first)

    def _missing(self) -> int | None:
        expected = self.expected()
        if expected is None:
            return None
        return max(0, expected - self.written - self.lagging - self.failed)

    def _close(self) -> None:
        """Put the final figures into the file's metadata, then finish and publish it."""
        self.sink.context.metadata.update(self.figures())
        try:
            self.sink.close()
        except OSError as exc:
            self.errors.append(str(exc))
        stats = self.sink.stats()
        if stats.get("last_file"):
            self.path = stats["last_file"]

    def figures(self) -> dict[str, Any]:
        """Return the event's counts (file metadata): written, missing, lagging, failed."""
        return {"records_written": self.written,
                "records_missing": -1 if self.missing is None else self.missing,
                "records_lagging": self.lagging, "records_failed": self.failed,
                "trigger_ended": self.state}

    def describe(self) -> dict[str, Any]:
        """Describe the event for status replies and log lines (JSON-able)."""
        out: dict[str, Any] = {"event": self.number, "label": self.label, "path": self.path,
                               "start": self.start, "end": self.end, "state": self.state,
                               "records_written": self.written,
                               "records_missing": self.missing,
                               "records_lagging": self.lagging,
                               "records_failed": self.failed}
        if self.timeline.has_utc:
            out["start_utc"] = self.timeline.utc(self.start)
            out["end_utc"] = self.timeline.utc(self.end)
        if self.errors:
            out["errors"] = list(self.errors)
        return out


#: make_sink(number, label, start, end) -> (sink, path): an event's file (the sinks layer).
SinkFactory = Callable[[int, str, int, int], tuple[Any, str]]


class Triggers:
    """The events of one stream: requests checked and numbered, writers run, counters.

    Parameters
    ----------
    retention : Retention
        The stream's retained records.
    retain_ticks, post_ticks : int
        ``retain_seconds`` and ``max_post_seconds`` in the stream's ticks.
    max_post_seconds : float
        The same, in seconds (the wall-clock bound of an event's wait).
    make_sink : SinkFactory
        Makes an event's sink and names its file.
    name : str
        The stream's name (log lines).
    """

    def __init__(self, retention: Retention, retain_ticks: int, post_ticks: int,
                 max_post_seconds: float, make_sink: SinkFactory, name: str = ""):
        self.retention = retention
        self.timeline = retention.timeline
        self.retain_ticks = retain_ticks
        self.post_ticks = post_ticks
        self.max_post_seconds = max_post_seconds
        self.make_sink = make_sink
        self.name = name
        self._lock = threading.Lock()
        self._next = 1
        self._starting = 0                  # starts under way (`close` waits for them)
        self._started = threading.Condition(self._lock)
        self._live: list[TriggerEvent] = []
        self._counts = {"trigger_events": 0, "trigger_records_written": 0,
                        "trigger_records_missing": 0, "trigger_records_lagging": 0,
                        "trigger_records_failed": 0, "trigger_errors": 0}
        self.closed = False

    def window(self, args: dict[str, Any]) -> tuple[int, int, str]:
        """Check a request's arguments; return its window ``(start, end)`` and label.

        Argument names other than `ARGUMENTS` are the caller's to refuse
        (the service's `check_names`, for every control request).

        ``start`` and ``end`` (ticks or UTC), or ``pre`` and ``post`` (seconds
        around the newest data time), or neither: everything held now.

        Raises
        ------
        TriggerError, TimeError
            One line naming what is wrong.
        """
        label = args.get("label", DEFAULT_LABEL)
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            raise TriggerError(f"label {label!r}: expected 1-64 letters, digits and ._+- "
                               "(it is part of the file name), starting with a letter or digit")
        newest = self.retention.status()["newest_timestamp"]
        given = {k for k in ("start", "end", "pre", "post") if k in args}
        if given and given not in ({"start", "end"}, {"pre", "post"}):
            raise TriggerError("give start and end, or pre and post (got "
                               + ", ".join(sorted(given)) + ")")
        if newest is None:
            raise TriggerError(f"stream {self.name}: no data received yet, so no data time "
                               "to place the window in")
        newest_end = self.retention.newest_end
        assert newest_end is not None
        if not given:
            oldest = self.retention.oldest_start()
            start, end = (newest if oldest is None else oldest), newest_end
        elif "start" in given:
            start = self.timeline.ticks(parse_instant(args["start"], "start"), "start")
            end = self.timeline.ticks(parse_instant(args["end"], "end"), "end")
        else:
            pre, post = (_seconds(args[k], k) for k in ("pre", "post"))
            start = newest - self.timeline.seconds_to_ticks(pre, "pre")
            end = newest + self.timeline.seconds_to_ticks(post, "post")
        if end <= start:
            raise TriggerError(f"end ({end}) is not after start ({start}): the window is empty")
        if end - start > self.retain_ticks + self.post_ticks:
            raise TriggerError(f"the window ({end - start} ticks) is longer than retain_seconds "
                               f"+ max_post_seconds ({self.retain_ticks} + {self.post_ticks} "
                               "ticks)")
        if end - newest_end > self.post_ticks:
            raise TriggerError(f"end ({end}) is {end - newest_end} ticks past the newest data "
                               f"({newest_end}); max_post_seconds allows {self.post_ticks}")
        return start, end, label

    def start(self, start: int, end: int, label: str) -> dict[str, Any]:
        """Start the event of a window `window` accepted; return its part of the reply.

        Refused once the stream is stopping; `close` waits for a start under
        way, so an event either ends with the stream's stop or is refused.
        """
        with self._lock:
            if self.closed:
                raise TriggerError(f"stream {self.name} is stopping")
            number = self._next
            self._next += 1
            self._starting += 1
        try:
            sink, path = self.make_sink(number, label, start, end)
            limit = self.retention.max_records
            event = TriggerEvent(number, label, start, end, path, sink, self.timeline,
                                 time.monotonic() + self.max_post_seconds + EVENT_GRACE, limit)
            held = self.retention.watch(event)
            newest_end = self.retention.newest_end
            if newest_end is not None:
                event.reached(newest_end)
            reply = event.describe()
            reply["records_retained"] = len(held)
            expected_now = self._expected_until(event, newest_end)
            if expected_now is not None:
                reply["records_missing"] = max(0, expected_now - len(held))
            with self._lock:
                self._live.append(event)
                self._counts["trigger_events"] += 1
                if self.closed:     # the stream began to stop meanwhile: end with it
                    event.stop("stream stopped")
            event.thread = threading.Thread(target=event.run,
                                            args=(held, self.retention, self._done),
                                            name=f"{self.name}:event-{number}", daemon=True)
            event.thread.start()
        finally:
            with self._lock:
                self._starting -= 1
                self._started.notify_all()
        log.info("trigger event", stream=self.name, event_number=number, label=label,
                 start=start, end=end, path=path, records_retained=len(held))
        return reply

    def _expected_until(self, event: TriggerEvent, newest_end: int | None) -> int | None:
        """Chunk slots of the event's window that should have arrived by `newest_end`."""
        chunk = self.timeline.chunk_ticks
        if chunk is None or newest_end is None:
            return None
        until = min(event.end, newest_end)
        if until <= event.start:
            return 0
        return max(0, -(-until // chunk) - max(event.start, 0) // chunk)

    def _done(self, event: TriggerEvent) -> None:
        with self._lock:
            if event in self._live:
                self._live.remove(event)
            c = self._counts
            c["trigger_records_written"] += event.written
            c["trigger_records_missing"] += event.missing or 0
            c["trigger_records_lagging"] += event.lagging
            c["trigger_records_failed"] += event.failed
            c["trigger_errors"] += len(event.errors)
        fields = event.describe()
        fields["event_number"] = fields.pop("event")   # structlog's own key is "event"
        log.info("trigger event written", stream=self.name, **fields)

    def counters(self) -> dict[str, int]:
        """Return the stream's trigger counters (monotonic)."""
        with self._lock:
            return dict(self._counts)

    def in_flight(self) -> list[dict[str, Any]]:
        """Describe the events still being written (window, records written so far)."""
        with self._lock:
            live = list(self._live)
        return [event.describe() for event in live]

    @property
    def writing(self) -> int:
        """Events still being written, read without the lock (a second signal's count)."""
        return len(self._live)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> list[str]:
        """End every event (``stream stopped``) and wait for its writer; the problems met."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.closed = True
            self._started.wait_for(lambda: self._starting == 0, timeout)
            live = list(self._live)
        problems = []
        for event in live:
            event.stop("stream stopped")
        for event in live:
            if event.thread is not None:
                event.thread.join(max(0.0, deadline - time.monotonic()))
                if event.thread.is_alive():
                    problems.append(f"{event.thread.name}: did not finish within {timeout} s")
        return problems


def build_triggers(trigger: TriggerConfig, timeline: Timeline, make_sink: SinkFactory,
                   name: str = "") -> Triggers:
    """Make a stream's retention and trigger events from its ``[stream.trigger]`` section.

    `make_sink` makes an event's file (the service passes
    `daqd.sinks.build_event_sink` bound to the stream's sections).
    """
    retention = build_retention(trigger, timeline)
    return Triggers(retention, retention.ticks, post_ticks(trigger, timeline),
                    trigger.max_post_seconds, make_sink, name)


def _seconds(value: Any, what: str) -> float:
    """Read a number of seconds at least 0 (``pre``, ``post``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TriggerError(f"{what}: expected seconds (a number), got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise TriggerError(f"{what}: expected seconds (a number), got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise TriggerError(f"{what}: expected seconds at least 0, got {value!r}")
    return seconds


__all__ = ["DEFAULT_LABEL", "EVENT_GRACE", "LABEL", "TriggerError",
           "TriggerEvent", "Triggers", "build_triggers"]
