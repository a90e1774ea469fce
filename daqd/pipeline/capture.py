"""The capture gate: which records a stream writes, by capture block, in data time.

A capture block ``[start, stop)`` (`daqd.pipeline.datatime.CaptureBlock`)
admits exactly the records whose data time overlaps it
(`daqd.pipeline.datatime.overlaps`), whatever the order they arrive in, as a
trigger's window does: with chunk-boundary ticks, exactly the chunks between
them.  An admitted record carries the block (``record.capture_block``), so the
sinks see in-band where a block's files begin.  A record that is not admitted
is released by the caller and counted under one of `REASONS`.

The gate holds one block at a time, the current or the last one.  Its state
(`STATES`):

``capturing``
    a block is open: started ("now", or its start has come), no stop asked;
``start-pending``
    a block starts at a data time no record has reached yet;
``stop-pending``
    a stop is scheduled at a data time no record has reached yet;
``stopped``
    the last block's stop has passed (or there is no block).

Back to back: while a stop is scheduled, a block may be started at or after
that stop; it is the *next* block (in the status, ``next``), and takes over
when the current block's stop passes, so the record that passes it is the
next block's first (the sinks start its files in-band, and finish only the
files of the block that ended).  A record that overlaps both blocks (a
chunk across a stop not on a chunk boundary) is the first block's.  A stop
asked for while a next block is scheduled is that block's (a stop "now"
cancels it).

A stop *has passed* once a record at or after it arrives (the newest data time
reaches it), or at once for a stop "now" or in the past; `admit` and `stop`
say so exactly once, so the caller flushes and has the sinks finish the
block's files.  A stop "now" (no ``at``) is the end of the newest record seen;
a stop before the end of what the block already admitted is moved to that end
(the reply says so).  A late record of the last block that arrives after its
stop has passed is still admitted with it (its span overlaps), until a new
block replaces it.  A start "now" has no start tick (``start`` None): it admits
every record that arrives from then on.

Capture-block ids: given by the person (letters, digits, ``.``, ``_``,
``-``; they go into file names), or generated as MeerKAT names its capture
blocks, the UTC Unix seconds of the start as an integer (``1796601600``):
of the start's data time when it is given and the stream has a clock, else
of the wall clock at the request; a stream without a clock started at ticks
gets ``t`` and the ticks (``t524288``).  A generated id equal to the last
block's gets a suffix (``-2``, ``-3``, ...).

Packet records (raw packets for pcap sinks) have no data time: they are
written while a block is open (``capturing``, ``stop-pending``); so are heap
records without the stream's ``timestamp_item`` (`Timeline.timed`), which
move no data time either.

`CaptureGate` is thread-safe: receive threads admit records while the control
thread schedules starts and stops.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from daqd.errors import UsageProblem
from daqd.pipeline.datatime import CaptureBlock, Timeline, overlaps

#: Why a record was not written, each a counter ``records_<reason>`` (the one list).
REASONS = ("before_capture", "after_capture")
#: The gate's states, in the status and statistics (``capture.state``).
STATES = ("capturing", "start-pending", "stop-pending", "stopped")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FAR = 1 << 80          # beyond any tick: the open ends of a block


class CaptureError(UsageProblem):
    """A capture request that cannot be served (one line naming why)."""


def _bounds(block: CaptureBlock) -> tuple[int, int]:
    """Return a block's ``[start, stop)`` in ticks, its open ends beyond any tick."""
    return (-_FAR if block.start is None else block.start,
            _FAR if block.stop is None else block.stop)


def check_id(value: Any) -> str:
    """Return `value` if it is a capture-block id (it goes into file names), else raise."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise CaptureError(f"id: expected a capture-block id (1 to 128 letters, digits, '.', "
                           f"'_' or '-', starting with a letter or digit), got {value!r}")
    return value


class CaptureGate:
    """One stream's capture blocks: admission of records and the schedule of starts and stops.

    Parameters
    ----------
    timeline : Timeline
        The stream's data time (each record's span; UTC for ids and status).
    capturing : bool, optional
        Open a block "now" at once (the daemon does at startup; its id is
        generated from `started`); else stopped until `start`.
    started : float, optional
        Unix seconds of the startup (default: the wall clock now).
    wall_clock : callable, optional
        Unix seconds, for generated ids of blocks started "now".
    """

    def __init__(self, timeline: Timeline, capturing: bool = True, started: float | None = None,
                 wall_clock: Callable[[], float] = time.time):
        self.timeline = timeline
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self.block: CaptureBlock | None = None
        self.next: CaptureBlock | None = None   # back to back: starts at the block's stop
        self._passed = False                # the block's stop has passed
        self.newest: int | None = None      # start of the newest record's span (ticks)
        self.newest_end: int | None = None
        self._admitted_end: int | None = None   # end of the newest record the block admitted
        self._counts = dict.fromkeys(REASONS, 0)
        self._ids: set[str] = set()         # generated ids avoid those used
        if capturing:
            self.start(None, now=started)

    # ------------------------------------------------------------------
    # records

    def observe(self, record: Any) -> tuple[int, int]:
        """Note `record`'s data time as seen; return its span ``[start, end)`` in ticks.

        A record without its data time (`Timeline.timed`) is not noted.
        """
        span = self.timeline.span(record)
        if self.timeline.timed(record):
            with self._lock:
                self._note(span)
        return span

    def observe_many(self, records: Sequence[Any]) -> list[tuple[int, int]]:
        """`observe` each of `records`, in order, under one lock; return their spans."""
        timeline = self.timeline
        spans = [timeline.span(record) for record in records]
        timed = timeline.timed
        with self._lock:
            for record, span in zip(records, spans, strict=True):
                if timed(record):
                    self._note(span)
        return spans

    def _note(self, span: tuple[int, int]) -> None:
        if self.newest is None or span[0] > self.newest:
            self.newest = span[0]
        if self.newest_end is None or span[1] > self.newest_end:
            self.newest_end = span[1]

    def admit(self, record: Any, span: tuple[int, int] | None = None
              ) -> tuple[bool, CaptureBlock | None]:
        """Note and decide on `record` (`span`: given when it was `observe`d already).

        Returns ``(admitted, ended)``: an admitted record carries the block
        (``record.capture_block``); one that is not is counted (the caller
        releases it).  `ended` is the block whose stop this record shows has
        passed (exactly once per block), else None; a next block scheduled
        at that stop then takes over, and decides on this record.
        """
        noted = span is not None
        if span is None and self.timeline.timed(record):
            span = self.timeline.span(record)
        with self._lock:                    # once per record: this is the heap-mode path
            return self._admit_locked(record, span, noted)

    def admit_many(self, records: Sequence[Any]) -> list[tuple[bool, CaptureBlock | None]]:
        """Note and decide on each of `records`, in order, under one lock.

        Returns each record's ``(admitted, ended)``, exactly as `admit` called
        on one record after the other (each record's data time is noted just
        before it is decided on: a later record of the list must not make an
        earlier one see a stop as passed).
        """
        timeline = self.timeline
        spans = [timeline.span(record) if timeline.timed(record) else None
                 for record in records]
        with self._lock:
            return [self._admit_locked(record, span, False)
                    for record, span in zip(records, spans, strict=True)]

    def _admit_locked(self, record: Any, span: tuple[int, int] | None, noted: bool
                      ) -> tuple[bool, CaptureBlock | None]:
        """Decide on one record (`admit`; the lock held)."""
        if not self.timeline.timed(record):
            # No data time (a heap without the timestamp item): written while a
            # block is open, as raw packets are; it moves no data time.
            admitted = self._admit_by_state()
            if admitted:
                record.capture_block = self.block
            return admitted, None
        assert span is not None
        if not noted:
            self._note(span)
        block = self.block
        if block is None:
            self._counts["after_capture"] += 1
            return False, None
        ended = None
        if block.stop is not None and block.stop <= (self.newest or 0) \
                and not self._passed and not overlaps(span, *_bounds(block)):
            ended = block
            self._passed = True
            if self.next is not None:       # back to back: the next block's turn
                block, self.block, self.next = self.next, self.next, None
                self._passed = False
                self._admitted_end = None
        start, stop = _bounds(block)
        if overlaps(span, start, stop):
            record.capture_block = block
            if self._admitted_end is None or span[1] > self._admitted_end:
                self._admitted_end = span[1]
            return True, ended
        self._counts["before_capture" if span[1] <= start else "after_capture"] += 1
        return False, ended

    def admit_packets(self) -> bool:
        """Whether raw packets (no data time) are written now; counts them if not."""
        with self._lock:
            return self._admit_by_state()

    def _admit_by_state(self) -> bool:
        """Admit what has no data time while a block is open; count it otherwise (locked)."""
        state = self._state()
        if state in ("capturing", "stop-pending"):
            return True
        self._counts["before_capture" if state == "start-pending" else "after_capture"] += 1
        return False

    def counters(self) -> dict[str, int]:
        """``records_<reason>`` for each of `REASONS`, and their sum ``records_not_captured``."""
        with self._lock:
            out = {f"records_{reason}": n for reason, n in self._counts.items()}
        out["records_not_captured"] = sum(out.values())
        return out

    # ------------------------------------------------------------------
    # the schedule

    def _state(self) -> str:
        block = self.block
        if block is None or self._passed:
            return "stopped"
        if block.start is not None and (self.newest_end is None
                                        or self.newest_end <= block.start):
            return "start-pending"
        return "stop-pending" if block.stop is not None else "capturing"

    @property
    def state(self) -> str:
        """One of `STATES`."""
        with self._lock:
            return self._state()

    @property
    def open(self) -> bool:
        """A block is open or scheduled (not ``stopped``)."""
        return self.state != "stopped"

    def start(self, at: int | None = None, block_id: str | None = None,
              now: float | None = None) -> CaptureBlock:
        """Begin a block at data time `at` (ticks; None: now), named `block_id` (or generated).

        `now` is the wall clock of the request (generated ids of "now"
        starts; one value for every stream of a request).  While a stop is
        pending, a start at or after it is the next block (back to back).
        Raises `CaptureError` while a block is open or scheduled otherwise.
        """
        with self._lock:
            after = self._check_start(block_id, at)
            if block_id is None:
                block_id = self._generate_id(at, self.wall_clock() if now is None else now)
            block = CaptureBlock(block_id, at)
            self._ids.add(block_id)
            if after:
                self.next = block
                return block
            self.block = block
            self._passed = False
            self._admitted_end = None
            return block

    def check_start(self, block_id: str | None = None, at: int | None = None) -> None:
        """Raise the `CaptureError` that `start` would raise now, if any (changes nothing)."""
        with self._lock:
            self._check_start(block_id, at)

    def _check_start(self, block_id: str | None, at: int | None) -> bool:
        """Check a start; return whether it is the next block, back to back."""
        if block_id is not None:
            check_id(block_id)
        state = self._state()
        if state == "stopped":
            return False
        block = self.block
        assert block is not None
        if block.stop is not None and self.next is None and at is not None:
            if at >= block.stop:
                return True
            raise CaptureError(f"at: capture block {block.id} stops at {self._say(block.stop)}; "
                               f"a next block may start there or later, not at {self._say(at)}")
        if self.next is not None:
            raise CaptureError(f"capture block {block.id} is {state} and {self.next.id} is "
                               "next; stop it first (capture-stop)")
        hint = " or start at or after its stop" if block.stop is not None else ""
        raise CaptureError(f"capture block {block.id} is {state}; stop it first "
                           f"(capture-stop){hint}")

    def _generate_id(self, at: int | None, now: float) -> str:
        if at is None:
            base = str(int(now))
        else:
            utc = self.timeline.utc(at)
            base = f"t{at}" if utc is None else str(int(utc // 1))
        block_id, n = base, 1
        while block_id in self._ids:
            n += 1
            block_id = f"{base}-{n}"
        return block_id

    def stop(self, at: int | None = None) -> tuple[CaptureBlock | None, bool]:
        """End the block at data time `at` (ticks; None: now).

        Returns ``(block, passed)``: the block (None when there was none to
        stop: already stopped) and whether its stop has passed already, so
        its files are to be finished now.  A block whose start is still
        pending is cancelled by a stop "now" (its stop becomes its start).
        With a next block scheduled (back to back) the stop is the next
        block's: "now" cancels it.  Raises `CaptureError` for a stop not
        after the block's start.
        """
        with self._lock:
            self._check_stop(at)
            nxt = self.next
            if nxt is not None:
                if at is None:
                    self.next = None        # cancelled before it began
                    nxt.stop = nxt.start
                else:
                    nxt.stop = at
                return nxt, False
            state = self._state()
            block = self.block
            if state == "stopped" or block is None:
                return None, False
            now = at is None
            if now:
                if state == "start-pending":
                    at = block.start
                else:
                    ends = [e for e in (self.newest_end, self._admitted_end, block.start)
                            if e is not None]
                    at = max(ends) if ends else 0
            assert at is not None
            clamped = self._admitted_end is not None and at < self._admitted_end
            if clamped:
                assert self._admitted_end is not None
                at = self._admitted_end         # written already: the block reaches there
            block.stop = at
            passed = now or clamped or (self.newest is not None and self.newest >= at)
            if passed:
                self._passed = True
            return block, passed

    def check_stop(self, at: int | None = None) -> None:
        """Raise the `CaptureError` that `stop` would raise now, if any (changes nothing)."""
        with self._lock:
            self._check_stop(at)

    def _check_stop(self, at: int | None) -> None:
        block = self.next if self.next is not None else self.block
        if at is not None and block is not None and (self.next is not None or not self._passed) \
                and block.start is not None and at <= block.start:
            raise CaptureError(f"at: the stop ({self._say(at)}) is not after the "
                               f"block's start ({self._say(block.start)})")

    def _say(self, ticks: int) -> str:
        utc = self.timeline.describe(ticks).get("utc")
        return f"{ticks}" + (f", {utc}" if utc else "")

    # ------------------------------------------------------------------
    # status

    def status(self) -> dict[str, Any]:
        """``state``, ``id``, ``start``, ``stop`` (each ``{"timestamp", "utc"}`` or None).

        With a next block scheduled (back to back), ``next``: its ``id``,
        ``start`` and ``stop``.
        """
        with self._lock:
            block = self.block
            out: dict[str, Any] = {"state": self._state(),
                                   "id": block.id if block is not None else None}
            for name in ("start", "stop"):
                ticks = getattr(block, name) if block is not None else None
                out[name] = None if ticks is None else self.timeline.describe(ticks)
            nxt = self.next
            if nxt is not None:
                out["next"] = {"id": nxt.id, **{
                    name: None if getattr(nxt, name) is None
                    else self.timeline.describe(getattr(nxt, name)) for name in ("start", "stop")}}
            return out
