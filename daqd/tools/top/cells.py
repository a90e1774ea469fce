"""Figures of the monitor as short text: rates, bytes, a fill bar, a loss strip."""

from __future__ import annotations

import time

from daqd.service.zmq_clients import format_bytes, format_capture
from daqd.tools.top.model import StreamRow, Totals

COLUMNS = ("daemon", "stream", "packets", "packets/s", "Gbit/s", "heaps|chunks/s", "newest data",
           "loss (last)", "loss (total)", "largest reason", "buffer fill", "files", "bytes",
           "sink errors", "substream loss")

_BLOCKS = " ▁▂▃▄▅▆▇█"


def rate(value: float) -> str:
    """Format a rate with thousands separators."""
    return f"{value:,.1f}"


def bar(fill: float | None, width: int = 10) -> str:
    """Draw ``█████░░░░░  50%``; ``-`` without a buffer."""
    if fill is None:
        return "-"
    fill = min(max(fill, 0.0), 1.0)
    full = round(fill * width)
    return "█" * full + "░" * (width - full) + f" {fill:4.0%}"


def strip(missing: list[int]) -> str:
    """Draw one character per substream: heaps missing, the worst substream a full block."""
    if not missing:
        return "-"
    worst = max(missing)
    if worst == 0:
        return "·" * len(missing)
    return "".join("·" if m == 0 else _BLOCKS[max(1, round(m / worst * 8))] for m in missing)


def data_time(row: StreamRow) -> str:
    """Show the newest data time: UTC ``HH:MM:SS.mmm`` and its lag behind now, else ticks."""
    utc = row.newest_utc
    if utc is not None:
        stamp = time.strftime("%H:%M:%S", time.gmtime(utc)) + f".{int(utc % 1 * 1000):03d}"
        lag = row.data_lag
        return stamp + (f" (lag {lag:,.1f} s)" if lag is not None else "")
    ticks = row.newest_timestamp
    return "-" if ticks is None else str(ticks)


def marks(row: StreamRow) -> str:
    """Return `` (stopped, stale)`` and the like.

    The notes: a state other than running, a stream bound but waiting for
    ``start-receiving`` (``explicit_start``), staleness.
    """
    notes = [row.state] if row.state and row.state != "running" else []
    notes += ["waiting for start"] if row.message.get("waiting_for_start") is True else []
    notes += ["stale"] if row.stale else []
    return f" ({', '.join(notes)})" if notes else ""


def row_cells(row: StreamRow) -> tuple[str, ...]:
    """Return the cells of a stream's row, in `COLUMNS` order."""
    files, nbytes, errors = row.sink_totals()
    unit = "chunks" if row.chunk_mode else "heaps"
    daemon = row.daemon + marks(row)
    packets = int(row.counters.get("packets", 0))
    return (daemon, row.stream, f"{packets:,}", rate(row.packets_rate), f"{row.gbits_rate:.3f}",
            f"{rate(row.units_rate)} {unit}", data_time(row), f"{row.loss_interval:,}",
            f"{row.loss_total:,}",
            row.top_reason or "-", bar(row.fill), f"{files:,}", format_bytes(nbytes), f"{errors:,}",
            strip(row.substream_missing))


def totals_cells(t: Totals) -> tuple[str, ...]:
    """Return the totals row, in `COLUMNS` order."""
    return ("TOTAL", f"{t.streams} stream(s)", f"{t.packets:,}", rate(t.packets_rate),
            f"{t.gbits_rate:.3f}",
            rate(t.units_rate), "", f"{t.loss_interval:,}", f"{t.loss_total:,}", "", "",
            f"{t.files:,}", format_bytes(t.bytes), f"{t.errors:,}", "")


def detail_lines(row: StreamRow) -> list[str]:
    """List every counter with its rate, the losses by reason, the buffer and the sinks."""
    counters, rates = row.counters, row.rates
    lines = [f"{row.daemon}/{row.stream}  ({row.endpoint}){marks(row)}", ""]
    width = max((len(k) for k in counters), default=0)
    for name, value in counters.items():
        r = rates.get(name)
        lines.append(f"  {name:<{width}}  {value:>16,}" + (f"  {r:,.1f}/s" if r else ""))
    lines += ["", f"  newest data time: {data_time(row)}"
              + (f", {row.newest_timestamp} ticks" if row.newest_utc is not None else "")]
    capture = row.message.get("capture")
    if isinstance(capture, dict):
        lines.append(f"  capture: {format_capture(capture)}")
    lines += ["", f"  loss since start {row.loss_total:,}, last interval {row.loss_interval:,}"]
    lines += [f"    {k}: {v:,}" for k, v in row.losses.items() if v]
    if row.substream_missing:
        lines.append(f"  heaps missing per substream since start: {row.substream_missing}, "
                     f"last interval: {row.substream_interval or '-'}")
    lines += ["", f"  buffer fill {bar(row.fill)}", "  sinks:"]
    for sink in row.sinks:
        lines.append(f"    {sink.get('name', '?')}: files {sink.get('files', 0):,}, "
                     f"bytes {sink.get('bytes', 0):,}, records {sink.get('records', 0):,}, "
                     f"errors {sink.get('errors', 0):,}")
        if sink.get("last_error"):
            lines.append(f"      last error: {sink['last_error']}")
    if not row.sinks:
        lines.append("    none")
    return lines


def table_lines(rows: list[StreamRow], totals: Totals) -> list[str]:
    """Render the monitor's table as plain text (``daqd top --print-after``)."""
    grid = [COLUMNS, *(row_cells(r) for r in rows), totals_cells(totals)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in grid]
