"""Retention: the newest ``retain_seconds`` of a stream's data time, held for triggers.

A stream with ``[stream.trigger]`` keeps its newest records in memory,
whether or not capture is on, so a trigger can write a window that began
before it was asked for (`daqd.pipeline.events`).  `Retention.add` takes one
hold on each record (`daqd.pipeline.records`: a chunk record shares its pool
chunk with the buffer path; the chunk goes back to the pool on the last
release) and evicts the oldest by data time while the others still cover
``retain_seconds`` (and, in chunk mode, while it holds more than the pool
was sized for, `retained_chunks`).  So at least ``retain_seconds`` of data
time is held once that much has arrived.

Events watching a window (`watch`) are offered every record added that
overlaps it, with a hold of their own, and told how far data time has come.
`retained_since` hands records to a capture block that starts in the past.
`close` releases every hold the retention has.
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Any, Protocol

from daqd.pipeline.datatime import Timeline, overlaps

if TYPE_CHECKING:
    from daqd.config import TriggerConfig


class Watcher(Protocol):
    """What `Retention.watch` feeds: an event waiting for the records of its window."""

    start: int
    end: int

    def offer(self, record: Any) -> None:
        """Take `record` (held for the watcher); called with the retention's lock held."""

    def reached(self, newest_end: int) -> None:
        """Note that data time has reached `newest_end` (the newest record's span's end)."""


def retain_ticks(trigger: TriggerConfig, timeline: Timeline) -> int:
    """Ticks of data time in ``retain_seconds`` (heaps timed by arrival: the arrival clock's).

    Raises
    ------
    TimeError
        The stream's data time is in ticks with no ``timestamp_rate``.
    """
    return timeline.seconds_to_ticks(trigger.retain_seconds, "trigger.retain_seconds")


def post_ticks(trigger: TriggerConfig, timeline: Timeline) -> int:
    """Ticks of data time in ``max_post_seconds`` (see `retain_ticks`)."""
    return timeline.seconds_to_ticks(trigger.max_post_seconds, "trigger.max_post_seconds")


def retained_chunks(trigger: TriggerConfig, timeline: Timeline) -> int | None:
    """Chunk mode: pool chunks the retention holds at most; None in heap mode.

    ``ceil(retain ticks / chunk ticks) + 1``: the chunks that cover
    ``retain_seconds`` however the window falls on chunk boundaries, and the
    newest, taken before the oldest is let go.
    """
    if timeline.chunk_ticks is None:
        return None
    return -(-retain_ticks(trigger, timeline) // timeline.chunk_ticks) + 1


class Retention:
    """The newest records of one stream, by data time (see the module docstring).

    Parameters
    ----------
    timeline : Timeline
        The stream's data time (record spans).
    ticks : int
        Data time to keep at least (``retain_seconds`` in ticks).
    max_records : int, optional
        Never hold more records than this (chunk mode: `retained_chunks`).
    """

    def __init__(self, timeline: Timeline, ticks: int, max_records: int | None = None):
        self.timeline = timeline
        self.ticks = ticks
        self.max_records = max_records
        self._lock = threading.Lock()
        # Sorted by span start: parallel lists of starts and (start, end, record).
        self._starts: list[int] = []
        self._held: list[tuple[int, int, Any]] = []
        self._bytes = 0
        self._newest_end: int | None = None
        self._watchers: list[Watcher] = []
        self.added = 0
        self.evicted = 0
        self.closed = False

    def add(self, record: Any) -> None:
        """Hold `record`, evict what is no longer needed, offer it to the watchers.

        A record without its data time (`Timeline.timed`) is not held: no
        window can select it, and it must not push the others out.
        """
        if not self.timeline.timed(record):
            return
        start, end = self.timeline.span(record)
        with self._lock:
            if self.closed:
                return
            record.hold()
            i = bisect.bisect_right(self._starts, start)
            self._starts.insert(i, start)
            self._held.insert(i, (start, end, record))
            self._bytes += record.nbytes
            self.added += 1
            if self._newest_end is None or end > self._newest_end:
                self._newest_end = end
            self._evict()
            for watcher in self._watchers:
                if overlaps((start, end), watcher.start, watcher.end):
                    watcher.offer(record)
                watcher.reached(self._newest_end)

    def _evict(self) -> None:
        held, newest = self._held, self._newest_end
        assert newest is not None
        while len(held) > 1 and (
                (self.max_records is not None and len(held) > self.max_records)
                or newest - held[1][0] >= self.ticks):
            _, _, record = held.pop(0)
            self._starts.pop(0)
            self._bytes -= record.nbytes
            self.evicted += 1
            record.release()

    def select(self, start: int, end: int) -> list[Any]:
        """Return the held records overlapping ``[start, end)``, oldest first, held once more."""
        with self._lock:
            return self._select(start, end)

    def _select(self, start: int, end: int) -> list[Any]:
        return [record.hold() for s, e, record in self._held if overlaps((s, e), start, end)]

    def retained_since(self, ticks: int) -> list[Any]:
        """Return the held records whose data time starts at or after `ticks`, oldest first.

        Each comes with one extra hold, which the caller releases (a capture
        block that starts in the past writes them, then lets them go).
        """
        with self._lock:
            return [record.hold() for s, _, record in self._held if s >= ticks]

    def watch(self, watcher: Watcher) -> list[Any]:
        """Feed `watcher` from now on; return what it needs of the records held now.

        Atomic with `add`: every record overlapping the watcher's window is
        either in the returned list or offered later, never both, never
        neither.  The returned records carry one hold each for the watcher.
        """
        with self._lock:
            if self.closed:
                return []
            self._watchers.append(watcher)
            return self._select(watcher.start, watcher.end)

    def unwatch(self, watcher: Watcher) -> None:
        """Stop feeding `watcher` (nothing happens if it was not watching)."""
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    @property
    def newest_end(self) -> int | None:
        """The end of the newest record's span (ticks); None before the first record."""
        return self._newest_end

    def oldest_start(self) -> int | None:
        """Return the start of the oldest record held (ticks), or None when none is."""
        with self._lock:
            return self._starts[0] if self._starts else None

    def status(self) -> dict[str, Any]:
        """Return ``oldest_timestamp``, ``newest_timestamp`` (ticks), ``records``, ``bytes``."""
        with self._lock:
            held = self._held
            return {"oldest_timestamp": held[0][0] if held else None,
                    "newest_timestamp": held[-1][0] if held else None,
                    "records": len(held), "bytes": self._bytes}

    def close(self) -> None:
        """Release every record held; feed no one any more (later `add` calls do nothing)."""
        with self._lock:
            self.closed = True
            held, self._held, self._starts = self._held, [], []
            self._watchers.clear()
            self._bytes = 0
        for _, _, record in held:
            record.release()


def build_retention(trigger: TriggerConfig, timeline: Timeline) -> Retention:
    """Make the retention a ``[stream.trigger]`` section asks for on `timeline`.

    Raises
    ------
    TimeError
        Seconds cannot be turned into the stream's ticks (`daqd.config` checks it first).
    """
    return Retention(timeline, retain_ticks(trigger, timeline), retained_chunks(trigger, timeline))


__all__ = ["Retention", "Watcher", "build_retention", "post_ticks", "retain_ticks",
           "retained_chunks"]
