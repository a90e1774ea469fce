"""What ``daqd top`` shows, computed from statistics messages (no widgets here).

A `Monitor` takes ``(endpoint, topic, message)`` as the feed delivers them and
keeps, per endpoint and stream, the newest ``stats.<stream>`` message with
figures derived from it (`StreamRow`): rates, loss over the last interval and
since start (every reason of `daqd.recv.counters.LOSS_COUNTERS` summed, the
largest named), buffer fill, sinks.  An endpoint that has published nothing
for `stale_after` seconds (monotonic clock) is stale: its rows stay, marked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daqd.recv.counters import LOSS_COUNTERS

#: Sort orders ``s`` cycles through: (name, key of a row, descending).
SORTS = (("name", lambda r: (r.daemon, r.stream), False),
         ("packets/s", lambda r: r.packets_rate, True),
         ("loss", lambda r: r.loss_total, True),
         ("fill", lambda r: r.fill if r.fill is not None else -1.0, True))


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


@dataclass
class StreamRow:
    """One daemon's stream, from its newest statistics message."""

    endpoint: str
    daemon: str
    stream: str
    message: dict[str, Any]
    received: float                          # monotonic seconds
    loss_interval: int = 0
    substream_interval: list[int] = field(default_factory=list)
    stale: bool = False
    state: str = ""                          # the daemon's, from its newest status message

    @property
    def counters(self) -> dict[str, Any]:
        """The stream's monotonic counters."""
        return dict(self.message.get("counters") or {})

    @property
    def rates(self) -> dict[str, Any]:
        """Per second over the daemon's last interval."""
        return dict(self.message.get("rates") or {})

    @property
    def chunk_mode(self) -> bool:
        """True when the stream assembles chunks (it reports missing heaps per substream)."""
        return "heaps_missing_per_substream" in self.message

    @property
    def packets_rate(self) -> float:
        """Packets per second."""
        return _num(self.rates.get("packets"))

    @property
    def gbits_rate(self) -> float:
        """Gbit/s of packets received (headers included)."""
        return _num(self.rates.get("bytes")) * 8 / 1e9

    @property
    def units_rate(self) -> float:
        """Chunks per second in chunk mode, else heaps per second."""
        return _num(self.rates.get("chunks_completed" if self.chunk_mode else "heaps"))

    @property
    def newest_timestamp(self) -> int | None:
        """The newest record's data time in ticks (None before the first)."""
        value = self.message.get("newest_timestamp")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def newest_utc(self) -> float | None:
        """The newest record's data time as Unix seconds (with the stream's clock)."""
        value = self.message.get("newest_utc")
        return float(value) if isinstance(value, int | float) else None

    @property
    def data_lag(self) -> float | None:
        """Seconds the newest data time is behind UTC, as the daemon measured it."""
        value = (self.message.get("gauges") or {}).get("data_time_lag_seconds")
        return float(value) if isinstance(value, int | float) else None

    @property
    def losses(self) -> dict[str, int]:
        """Every loss reason's count since start."""
        c = self.counters
        return {name: int(_num(c.get(name))) for name in LOSS_COUNTERS}

    @property
    def loss_total(self) -> int:
        """Every counted loss since start, summed."""
        return sum(self.losses.values())

    @property
    def top_reason(self) -> str:
        """The reason with the most losses since start ("" when none)."""
        name, count = max(self.losses.items(), key=lambda kv: kv[1])
        return name if count else ""

    @property
    def substream_missing(self) -> list[int]:
        """Chunk mode: heaps missing per substream since start (completed chunks)."""
        missing = self.message.get("heaps_missing_per_substream")
        return [int(_num(m)) for m in missing] if isinstance(missing, list) else []

    @property
    def fill(self) -> float | None:
        """The stream's buffer fill, 0 to 1 (None without a buffer)."""
        buffer = self.message.get("buffer")
        return _num(buffer.get("fill")) if isinstance(buffer, Mapping) else None

    @property
    def sinks(self) -> list[dict[str, Any]]:
        """The stream's sinks' statistics."""
        sinks = self.message.get("sinks")
        return [dict(s) for s in sinks if isinstance(s, Mapping)] \
            if isinstance(sinks, list) else []

    def sink_totals(self) -> tuple[int, int, int]:
        """Files, bytes and errors over the stream's sinks."""
        sinks = self.sinks
        return (sum(int(_num(s.get("files"))) for s in sinks),
                sum(int(_num(s.get("bytes"))) for s in sinks),
                sum(int(_num(s.get("errors"))) for s in sinks))


@dataclass
class Totals:
    """Sums across every daemon: rates of the live rows, counts of every row."""

    packets: int = 0
    packets_rate: float = 0.0
    gbits_rate: float = 0.0
    units_rate: float = 0.0
    loss_interval: int = 0
    loss_total: int = 0
    files: int = 0
    bytes: int = 0
    errors: int = 0
    streams: int = 0


class Monitor:
    """The newest state of every daemon's streams.

    Parameters
    ----------
    endpoints : sequence of str
        The statistics endpoints watched (an endpoint not heard from yet is
        listed by `silent`).
    stale_after : float, optional
        Seconds without a message after which an endpoint is stale; at least
        three of the daemon's intervals are allowed.
    """

    def __init__(self, endpoints: list[str], stale_after: float = 3.0):
        self.endpoints = list(endpoints)
        self.stale_after = stale_after
        self.rows: dict[tuple[str, str], StreamRow] = {}
        self.heard: dict[str, float] = {}           # endpoint -> monotonic time
        self.intervals: dict[str, float] = {}       # endpoint -> the daemon's interval
        self.status: dict[str, dict[str, Any]] = {}  # endpoint -> newest status message
        self.sort = 0

    def ingest(self, endpoint: str, topic: str, message: dict[str, Any], now: float) -> None:
        """Take one message of `endpoint`, received at monotonic time `now`."""
        self.heard[endpoint] = now
        if topic == "status":
            self.status[endpoint] = message
            return
        if not topic.startswith("stats.") or "counters" not in message:
            return
        stream = str(message.get("stream", topic[len("stats."):]))
        if isinstance(message.get("interval"), int | float):
            self.intervals[endpoint] = float(message["interval"])
        key = (endpoint, stream)
        old = self.rows.get(key)
        row = StreamRow(endpoint, str(message.get("daemon", "?")), stream, message, now)
        if old is not None:
            row.loss_interval = max(0, row.loss_total - old.loss_total)
            row.substream_interval = [
                max(0, n - b)
                for n, b in zip(row.substream_missing, old.substream_missing, strict=False)]
        self.rows[key] = row

    def is_stale(self, endpoint: str, now: float) -> bool:
        """Whether `endpoint` has said nothing for too long (or ever)."""
        heard = self.heard.get(endpoint)
        limit = max(self.stale_after, 3 * self.intervals.get(endpoint, 0.0))
        return heard is None or now - heard > limit

    def silent(self) -> list[str]:
        """Endpoints never heard from."""
        return [e for e in self.endpoints if e not in self.heard]

    def sort_name(self) -> str:
        """Name the current sort order."""
        return SORTS[self.sort][0]

    def next_sort(self) -> str:
        """Change to the next sort order; returns its name."""
        self.sort = (self.sort + 1) % len(SORTS)
        return self.sort_name()

    def view(self, now: float) -> list[StreamRow]:
        """Every row, staleness updated, in the current sort order."""
        for row in self.rows.values():
            row.stale = self.is_stale(row.endpoint, now)
            row.state = str(self.status.get(row.endpoint, {}).get("state", ""))
        _, key, reverse = SORTS[self.sort]
        return sorted(self.rows.values(), key=key, reverse=reverse)  # type: ignore[no-any-return]

    def totals(self, now: float) -> Totals:
        """Sum over the rows: rates and the last interval's loss of live rows only."""
        t = Totals()
        for row in self.view(now):
            files, nbytes, errors = row.sink_totals()
            if not row.stale:
                t.packets_rate += row.packets_rate
                t.gbits_rate += row.gbits_rate
                t.units_rate += row.units_rate
                t.loss_interval += row.loss_interval
            t.loss_total += row.loss_total
            t.packets += int(_num(row.counters.get("packets")))
            t.files += files
            t.bytes += nbytes
            t.errors += errors
            t.streams += 1
        return t
