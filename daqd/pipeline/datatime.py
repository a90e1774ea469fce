"""Data time: the instrument's clock, and the span of data time each record covers.

An instrument's data carry their own clock, the sample counter in the
timestamp item ("ticks").  `Clock` turns ticks into UTC and back when the
stream's ``[stream.time]`` names the UTC of timestamp 0 (``sync_time``) and
the ticks per second (``timestamp_rate``); without it, data time is ticks
only.

`Timeline` gives each record its span of data time, ``[start, end)`` in ticks:

- a chunk: ``[timestamp, timestamp + heaps_per_chunk * timestamp_step)``;
- a heap with ``timestamp_item``: ``[value, value + 1)``;
- a heap without one, and a batch of raw packets: its arrival.  Arrival is
  UTC, so it is turned into ticks through the configured clock, or, with no
  clock, through the *arrival clock*: ticks are nanoseconds since the Unix
  epoch (so UTC arguments work on such streams).

A window ``[start, end)`` selects every record whose span overlaps it
(`overlaps`): a trigger's window, and a capture block from its start to its
stop, so a window whose ends are chunk boundaries selects exactly the chunks
between them.  Instants given by people (control requests, the CLI) are
ticks (an integer) or UTC (an ISO 8601 string, or ``@`` and Unix seconds);
`parse_instant` reads them and `Timeline.ticks` resolves them, refusing UTC
with one line when the stream has no clock.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from daqd.errors import UsageProblem

#: Ticks of the arrival clock (heap streams without a timestamp item): nanoseconds.
ARRIVAL_RATE = 1e9

_INTEGER = re.compile(r"[+-]?\d+")
_UNIX = re.compile(r"@?([+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class TimeError(UsageProblem, ValueError):
    """A time argument that cannot be used (one line naming it)."""


def parse_utc(value: Any, what: str = "time") -> Fraction:
    """Return the exact Unix seconds of a UTC time: ISO 8601, [@]SECONDS, a number, a datetime.

    An ISO 8601 time without a zone is UTC.  Exact (a `Fraction`), so a time
    near 2026 keeps its nanoseconds, which a float would not.  Raises `TimeError`.
    """
    if isinstance(value, bool):
        raise TimeError(f"{what}: expected a UTC time, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise TimeError(f"{what}: {value!r} is not a finite time")
        return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if isinstance(value, dt.datetime):
        return _since_epoch(value)
    if isinstance(value, str):
        text = value.strip()
        match = _UNIX.fullmatch(text)
        if match:
            return Fraction(match.group(1))
        try:
            return _since_epoch(dt.datetime.fromisoformat(text))
        except ValueError:
            raise TimeError(f"{what}: {value!r} is not a UTC time (ISO 8601 such as "
                            "2026-12-07T18:00:00.5Z, or @UNIX_SECONDS)") from None
    raise TimeError(f"{what}: expected a UTC time, got {value!r}")


def _since_epoch(stamp: dt.datetime) -> Fraction:
    delta = (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)) - _EPOCH
    return Fraction(delta.days * 86400 + delta.seconds) + Fraction(delta.microseconds, 10**6)


def format_utc(seconds: float) -> str:
    """ISO 8601 of Unix `seconds`, to the microsecond, with a ``Z``."""
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Instant:
    """A point in data time as a person gave it: `ticks`, or `utc` (Unix seconds)."""

    ticks: int | None = None
    utc: Fraction | None = None

    def __str__(self) -> str:
        return str(self.ticks) if self.ticks is not None else format_utc(float(self.utc or 0))


def parse_instant(value: Any, what: str = "time") -> Instant:
    """Read a data time: an integer (or a string of one) is ticks; other strings are UTC.

    UTC is ISO 8601 (``2026-12-07T18:00:00.5Z``) or ``@`` and Unix seconds
    (``@1765130400.5``).  A JSON number with a fraction is refused: ticks
    are whole, and Unix seconds must say so with ``@``.  Raises `TimeError`.
    """
    if isinstance(value, bool) or value is None:
        raise TimeError(f"{what}: expected ticks (an integer) or a UTC time, got {value!r}")
    if isinstance(value, int):
        return Instant(ticks=value)
    if isinstance(value, float):
        if value.is_integer():
            return Instant(ticks=int(value))
        raise TimeError(f"{what}: {value!r} is neither ticks (an integer) nor a UTC time "
                        "(give Unix seconds as \"@SECONDS\")")
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return Instant(ticks=int(text))
        if not text.startswith("@") and _UNIX.fullmatch(text):
            raise TimeError(f"{what}: {value!r} is neither ticks (an integer) nor a UTC time "
                            "(give Unix seconds as \"@SECONDS\")")
    return Instant(utc=parse_utc(value, what))


class Clock:
    """The instrument's clock: the UTC of timestamp 0 and ticks per second (both, or neither).

    `sync_time` and `timestamp_rate` are anything `parse_utc` reads and a
    number; both are kept exact, so ticks and UTC convert without the
    rounding of a float near 2**31 seconds.
    """

    def __init__(self, sync_time: Any = None, timestamp_rate: float | None = None):
        self.sync_time = None if sync_time is None else parse_utc(sync_time, "sync_time")
        self.timestamp_rate = Fraction(repr(float(timestamp_rate))) if timestamp_rate else None

    def __repr__(self) -> str:
        return f"Clock({self.sync_time!r}, {self.timestamp_rate!r})"

    @property
    def configured(self) -> bool:
        """Both halves are known, so ticks and UTC convert."""
        return self.sync_time is not None and self.timestamp_rate is not None

    def utc(self, ticks: int | float) -> float:
        """Unix seconds of `ticks` (the clock must be configured)."""
        assert self.sync_time is not None and self.timestamp_rate is not None
        return float(self.sync_time + Fraction(ticks) / self.timestamp_rate)

    def ticks(self, utc: Fraction | float) -> int:
        """Return the tick nearest to `utc` (the clock must be configured).

        ISO 8601 times are to the microsecond; give ticks, or ``@SECONDS``
        with enough digits, to name a tick exactly.
        """
        assert self.sync_time is not None and self.timestamp_rate is not None
        exact = utc if isinstance(utc, Fraction) else Fraction(repr(float(utc)))
        return round((exact - self.sync_time) * self.timestamp_rate)

    def metadata(self) -> dict[str, float]:
        """``sync_time`` and ``timestamp_rate`` for file metadata (empty if not configured)."""
        if not self.configured:
            return {}
        return {"sync_time": float(self.sync_time or 0), "timestamp_rate":
                float(self.timestamp_rate or 0)}


ARRIVAL_CLOCK = Clock(0.0, ARRIVAL_RATE)


class Timeline:
    """One stream's data time: each record's span in ticks, and the clock to UTC.

    Parameters
    ----------
    clock : Clock
        The stream's ``[stream.time]`` clock (maybe not configured).
    chunk_ticks : int, optional
        Chunk mode: ``heaps_per_chunk * timestamp_step``.
    timestamp_item : int, optional
        Heap mode: the immediate item holding a heap's timestamp (None:
        heaps are timed by their arrival).
    """

    def __init__(self, clock: Clock, chunk_ticks: int | None = None,
                 timestamp_item: int | None = None):
        self.chunk_ticks = chunk_ticks
        self.timestamp_item = timestamp_item
        self.by_arrival = chunk_ticks is None and timestamp_item is None
        # Records without a timestamp are timed by arrival: through the configured
        # clock, or the arrival clock (nanoseconds); arrival-timed streams use it for UTC.
        arrival = clock if clock.configured else ARRIVAL_CLOCK
        self.clock = arrival if self.by_arrival else clock
        self._sync = float(arrival.sync_time or 0)
        self._rate = float(arrival.timestamp_rate or 0)

    @property
    def has_utc(self) -> bool:
        """Ticks convert to UTC (a configured clock, or arrival time)."""
        return self.clock.configured

    def span(self, record: Any) -> tuple[int, int]:
        """Return the record's data time ``[start, end)`` in ticks."""
        if self.chunk_ticks is not None and hasattr(record, "chunk_id"):
            start = int(record.timestamp)
            return start, start + self.chunk_ticks
        if self.timestamp_item is not None:
            value = getattr(record, "items", {}).get(self.timestamp_item)
            if isinstance(value, int):
                return value, value + 1
        tick = int((record.received - self._sync) * self._rate)   # arrival: a float suffices
        return tick, tick + 1

    def timed(self, record: Any) -> bool:
        """Whether `record` carries its data time (`span` is then the instrument's).

        False for a heap without the stream's ``timestamp_item``: its span is
        its arrival, on another scale than the items' ticks, so it must not
        move data time (the newest record, what the retention keeps, whether
        a block's stop has passed).
        """
        if self.timestamp_item is None or self.chunk_ticks is not None \
                and hasattr(record, "chunk_id"):
            return True
        return isinstance(getattr(record, "items", {}).get(self.timestamp_item), int)

    def utc(self, ticks: int | float) -> float | None:
        """Unix seconds of `ticks`, or None when the stream has no clock."""
        return self.clock.utc(ticks) if self.has_utc else None

    def ticks(self, instant: Instant, what: str = "time") -> int:
        """Resolve an `Instant` to ticks; UTC needs a clock (else `TimeError`, one line)."""
        if instant.ticks is not None:
            return instant.ticks
        if not self.has_utc:
            raise TimeError(f"{what}: a UTC time needs the stream's clock ([stream.time] "
                            "sync_time and timestamp_rate); give ticks instead")
        assert instant.utc is not None
        return self.clock.ticks(instant.utc)

    def seconds_to_ticks(self, seconds: float, what: str = "duration") -> int:
        """Ticks in `seconds` of data time (needs a clock's rate, else `TimeError`)."""
        if not self.clock.timestamp_rate:
            raise TimeError(f"{what}: seconds of data time need the stream's timestamp_rate "
                            "([stream.time])")
        return math.ceil(seconds * self.clock.timestamp_rate)

    def describe(self, ticks: int) -> dict[str, Any]:
        """``{"timestamp": ticks}`` and, with a clock, ``"utc"`` (ISO 8601) for status replies."""
        out: dict[str, Any] = {"timestamp": ticks}
        utc = self.utc(ticks)
        if utc is not None:
            out["utc"] = format_utc(utc)
        return out


@dataclass(eq=False)
class CaptureBlock:
    """A capture block: its id, and the data time it covers, ``[start, stop)`` in ticks.

    The records a block admits carry it (`ChunkRecord.capture_block`, ...),
    so the sinks see in-band where one block's files end and the next's
    begin, and write `metadata` into each file.  `start` is None for a block
    started "now" (its first record then says where it began); `stop` is
    None until a stop is requested, and is set (once) by that request.
    """

    id: str
    start: int | None = None
    stop: int | None = None

    def metadata(self, timeline: Timeline | None = None) -> dict[str, Any]:
        """``capture_block_id``, ``capture_start``, ``capture_stop`` (ticks; -1 = open).

        With a `timeline` that has UTC, ``capture_start_utc`` and
        ``capture_stop_utc`` (Unix seconds) too.
        """
        out: dict[str, Any] = {"capture_block_id": self.id,
                               "capture_start": -1 if self.start is None else self.start,
                               "capture_stop": -1 if self.stop is None else self.stop}
        if timeline is not None and timeline.has_utc:
            for name in ("start", "stop"):
                ticks = getattr(self, name)
                if ticks is not None:
                    out[f"capture_{name}_utc"] = timeline.utc(ticks)
        return out


def overlaps(span: tuple[int, int], start: int, end: int) -> bool:
    """Whether a record's data time ``[span)`` overlaps the window ``[start, end)``."""
    return span[0] < end and span[1] > start
