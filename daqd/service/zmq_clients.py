"""Clients of a running daemon's ZeroMQ sockets, for ``daqd status`` and ``daqd stats``.

`request` sends one control request and returns the reply; `subscribe`
yields statistics messages from one or more daemons; `format_stats_table`
and `format_status` turn them into text for a person at a terminal.
Message and request formats are documented in `daqd.service.stats_publisher` and
`daqd.service.control`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import zmq

from daqd.errors import UsageProblem
from daqd.pipeline.datatime import format_utc
from daqd.recv.counters import CHUNK_HEAP_DROP_COUNTERS, DROP_COUNTERS
from daqd.service.zmq_security import ClientSecurity

#: Counters shown first, in this order, when present.
MAIN_COUNTERS = ("packets", "bytes", "payload_bytes", "batches", "heaps", "heaps_complete",
                 "incomplete_heaps_evicted", "incomplete_heaps_flushed", "single_packet_heaps",
                 "stop_heaps", "worker_blocked", "max_batch")

_DROP_WORDS = ("rejected", "dropped", "skipped", "discarded", "truncated", "too_old",
               "no_free", "missing")


class DaemonUnreachable(UsageProblem):
    """No reply or message from a daemon's socket within the timeout (one line).

    Not a person's mistake as such (the daemon may be down, or a CURVE key
    wrong): the command line exits with status 1.
    """

    exit_status = 1


class BadReply(UsageProblem):
    """A reply or message that is not a JSON object (one line)."""


def _wrong_key(endpoints: str, timeout: float) -> str:
    """Say why a CURVE client heard nothing (a failed handshake is silent), in one line."""
    return f"no reply from {endpoints} in {timeout:g} s; wrong CURVE key?"


def _context(context: zmq.Context | None) -> zmq.Context:
    return context if context is not None else zmq.Context.instance()


def _connect(sock: zmq.Socket, endpoint: str) -> None:
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise UsageProblem(f"{endpoint}: not a ZeroMQ endpoint to connect to "
                           f"({exc.strerror})") from None


def request(endpoint: str, command: str, args: Mapping[str, Any] | None = None,
            timeout: float = 2.0, security: ClientSecurity | None = None,
            context: zmq.Context | None = None) -> dict[str, Any]:
    """Send one control request to a daemon and return its reply.

    Parameters
    ----------
    endpoint : str
        The daemon's control endpoint (``zmq.control``).
    command : str
        ``status``, ``flush``, ``stop``, ...
    args : mapping, optional
        The command's arguments.
    timeout : float, optional
        Seconds to wait for the reply.
    security : ClientSecurity, optional
        CURVE client keys, for a daemon with ``zmq.curve_secret_key``.
    context : zmq.Context, optional
        Defaults to the process's shared context.

    Returns
    -------
    dict
        The reply: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

    Raises
    ------
    DaemonUnreachable
        When no reply comes within `timeout`.
    BadReply
        When the reply is not a JSON object.
    """
    sock = _context(context).socket(zmq.DEALER)
    sock.linger = 0
    try:
        if security is not None:
            security.apply(sock)
        _connect(sock, endpoint)
        payload = json.dumps({**dict(args or {}), "command": command}).encode()
        sock.send_multipart([b"", payload])    # the REQ envelope: empty delimiter frame
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            if security is not None:
                raise DaemonUnreachable(_wrong_key(endpoint, timeout))
            raise DaemonUnreachable(f"{endpoint}: no reply to {command!r} within {timeout:g} s "
                                    "(is the daemon running?)")
        frames = sock.recv_multipart()
    finally:
        sock.close()
    body = frames[-1]
    try:
        reply = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        reply = None
    if not isinstance(reply, dict):
        raise BadReply(f"{endpoint}: the reply to {command!r} is not a JSON object: "
                       f"{body[:80]!r}")
    return reply


def subscribe(endpoints: str | Iterable[str], count: int | None = None,
              timeout: float | None = None, topics: Iterable[str] = ("stats.", "status"),
              security: ClientSecurity | None = None, context: zmq.Context | None = None,
              first_timeout: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield statistics messages from one or more daemons as they come.

    Parameters
    ----------
    endpoints : str or iterable of str
        Statistics endpoints (``zmq.stats``) of one or more daemons.
    count : int, optional
        Stop after this many messages; forever when None.
    timeout : float, optional
        Longest wait for each message; None waits forever.
    topics : iterable of str, optional
        Topic prefixes to subscribe to.
    security : ClientSecurity, optional
        CURVE client keys, for daemons with ``zmq.curve_secret_key``.
    context : zmq.Context, optional
        Defaults to the process's shared context.
    first_timeout : float, optional
        Longest wait for the first message, when `timeout` is None (a CURVE
        client with a wrong key hears nothing, forever).

    Yields
    ------
    (str, dict)
        The topic and the decoded message; a message that is not
        ``[topic, JSON object]`` is skipped.

    Raises
    ------
    DaemonUnreachable
        When no message comes within `timeout`.
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if count is not None and count <= 0:
        return
    sock = _context(context).socket(zmq.SUB)
    sock.linger = 0
    try:
        if security is not None:
            security.apply(sock)
        for topic in topics:
            sock.subscribe(topic.encode())
        for endpoint in endpoints:
            _connect(sock, endpoint)
        received = 0
        while count is None or received < count:
            limit = first_timeout if timeout is None and received == 0 else timeout
            deadline = None if limit is None else time.monotonic() + limit
            while True:
                wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if wait > 0 and sock.poll(int(wait * 1000) or 1, zmq.POLLIN):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    assert limit is not None
                    if security is not None:
                        raise DaemonUnreachable(_wrong_key(", ".join(endpoints), limit))
                    raise DaemonUnreachable(f"{', '.join(endpoints)}: no statistics within "
                                            f"{limit:g} s (is the daemon running?)")
            decoded = decode_message(sock.recv_multipart())
            if decoded is not None:
                received += 1
                yield decoded
    finally:
        sock.close()


# --- formatting ------------------------------------------------------------------------------

def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def decode_message(frames: list[bytes]) -> tuple[str, dict[str, Any]] | None:
    """Return a statistics message's (topic, body), or None for frames that are not one."""
    if len(frames) != 2:
        return None
    try:
        topic, message = frames[0].decode(), json.loads(frames[1])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (topic, message) if isinstance(message, dict) else None


def format_bytes(n: float) -> str:
    """Format bytes in binary units (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    d, h = divmod(h, 24)
    return (f"{d}d" if d else "") + f"{h}h{m:02d}m{s:02d}s"


def _rate(name: str, rate: Any) -> str:
    if not isinstance(rate, int | float):
        return ""
    return f"{format_bytes(rate)}/s" if "bytes" in name else f"{rate:,.1f}/s"


def _value(name: str, value: Any) -> str:
    if isinstance(value, float):
        if name in ("fill", "fill_fraction", "cpu"):
            return f"{value:.0%}"
        return f"{value:,.3g}"
    if isinstance(value, int) and not isinstance(value, bool) and "bytes" in name:
        return f"{value:,} ({format_bytes(value)})" if value >= 1024 else f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_value(str(k), v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return _int(value)


def _table(rows: list[tuple[str, str, str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"{indent}{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]


def _grid(rows: list[list[str]], indent: str) -> list[str]:
    """Align `rows` (the first one a header): first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                               ).rstrip()
            for row in rows]


def _is_sink_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, Mapping) for v in value)


def _sink_lines(sinks: list[Mapping[str, Any]], indent: str = "    ") -> list[str]:
    """Render a stream's sinks (their ``stats()``) as a table: name, bytes, records, ..."""
    rows = [["name", "bytes", "records", "files", "errors", "lost"]]
    notes: dict[int, list[str]] = {}
    for sink in sinks:
        lost = _int(sink.get("lost_records", 0))
        if sink.get("lost_packets"):
            lost += f" +{_int(sink['lost_packets'])} packets"
        rows.append([str(sink.get("name", "?")), _value("bytes", sink.get("bytes", 0)),
                     _int(sink.get("records", "-")), _int(sink.get("files", "-")),
                     _int(sink.get("errors", 0)), lost])
        extra = []
        if sink.get("unfinished_files"):
            extra.append(f"unfinished files: {_int(sink['unfinished_files'])}")
        if sink.get("last_error"):
            extra.append(f"last error: {sink['last_error']}")
        if extra:
            notes[len(rows) - 1] = extra
    lines = []
    for i, line in enumerate(_grid(rows, indent)):
        lines.append(line)
        lines += [f"{indent}  {note}" for note in notes.get(i, [])]
    return lines


def _is_drop(name: str) -> bool:
    return name in DROP_COUNTERS or name in CHUNK_HEAP_DROP_COUNTERS \
        or any(word in name for word in _DROP_WORDS)


def format_capture(capture: Mapping[str, Any]) -> str:
    """Describe a stream's capture block on one line (``capture`` of its status).

    ``start-pending, block obs-1, start 262144 (2026-12-07T00:00:04.000000Z),
    stop 655360 (...)``; a start "now" has no tick: ``start now``; a next
    block (back to back) follows: ``; next block obs-2, start ..., stop ...``.
    """
    def instant(value: Any, none: str) -> str:
        if not isinstance(value, Mapping):
            return none
        utc = f" ({value['utc']})" if value.get("utc") else ""
        return f"{value.get('timestamp')}{utc}"       # as --at takes it: no separators

    state = str(capture.get("state", "?"))
    if capture.get("id") is None:
        return state
    line = (f"{state}, block {capture['id']}, start {instant(capture.get('start'), 'now')}, "
            f"stop {instant(capture.get('stop'), 'none')}")
    nxt = capture.get("next")
    if isinstance(nxt, Mapping):            # back to back: the block after it
        line += (f"; next block {nxt.get('id')}, start {instant(nxt.get('start'), 'now')}, "
                 f"stop {instant(nxt.get('stop'), 'none')}")
    return line


def _stream_lines(name: str, message: Mapping[str, Any]) -> list[str]:
    counters = dict(message.get("counters") or {})
    rates = dict(message.get("rates") or {})
    gauges = dict(message.get("gauges") or {})
    interval = message.get("interval")
    over = f"  (rates over {interval:.2f} s)" if isinstance(interval, int | float) else ""
    lines = [f"stream {name}{over}"]

    def row(key: str) -> tuple[str, str, str]:
        return key, _int(counters[key]), _rate(key, rates.get(key))

    main = [k for k in MAIN_COUNTERS if k in counters]
    chunk = [k for k in counters if k.startswith("chunk") and not _is_drop(k)]
    drops = [k for k in counters if _is_drop(k) and k not in main]
    other = [k for k in counters if k not in main and k not in chunk and k not in drops]
    lines += _table([row(k) for k in main + chunk])
    shown_drops = [k for k in drops if counters[k]]
    if shown_drops:
        lines.append("  drops by reason:")
        lines += _table([row(k) for k in shown_drops], indent="    ")
    elif drops:
        lines.append("  drops: none")
    lines += _table([row(k) for k in other if counters[k]])
    if gauges:
        lines.append("  gauges: " + _value("", gauges))
    skip = {"schema", "daemon", "time", "stream", "interval", "counters", "rates", "gauges"}
    for key, value in message.items():
        if key in skip:
            continue
        if key == "sinks" and _is_sink_list(value):
            lines.append("  sinks:")
            lines += _sink_lines(value)
        elif key == "capture" and isinstance(value, Mapping):
            lines.append(f"  capture: {format_capture(value)}")
        elif key == "newest_timestamp":         # ticks as --at takes them, UTC as ISO 8601
            lines.append(f"  {key}: {value if value is not None else '-'}")
        elif key == "newest_utc" and isinstance(value, int | float):
            lines.append(f"  {key}: {format_utc(value)}")
        else:
            lines.append(f"  {key}: {_value(str(key), value)}")
    return lines


def _status_lines(status: Mapping[str, Any], shown: Iterable[str] = ()) -> list[str]:
    """Render the daemon's lines; the sinks of the streams in `shown` are left to them."""
    shown = set(shown)
    head = [str(status.get("daemon", "daqd")), str(status.get("state", "unknown")),
            f"uptime {_duration(status.get('uptime'))}"]
    process = status.get("process") or {}
    if isinstance(process.get("cpu"), int | float):
        head.append(f"cpu {process['cpu']:.0%}")
    if isinstance(process.get("rss_bytes"), int):
        head.append(f"rss {format_bytes(process['rss_bytes'])}")
    if "pid" in process:
        head.append(f"pid {process['pid']}")
    lines = ["  ".join(head)]
    for section in ("buffers", "sinks"):
        entries = status.get(section) or {}
        if isinstance(entries, Mapping):
            for name, value in entries.items():
                if section == "sinks" and _is_sink_list(value):   # per stream: a table
                    if name in shown:
                        continue
                    lines.append(f"  sinks of {name}:")
                    lines += _sink_lines(value)
                else:
                    lines.append(f"  {section[:-1]} {name}: {_value('', value)}")
    errors = status.get("errors") or {}
    if errors:
        lines.append(f"  errors: {_value('', errors)}")
    publisher = status.get("publisher") or {}
    if publisher.get("dropped_messages"):
        lines.append(f"  statistics messages dropped: {publisher['dropped_messages']:,}")
    return lines


def format_stats_table(message: Mapping[str, Any]) -> str:
    """Render one statistics message as a readable table.

    Parameters
    ----------
    message : mapping
        A ``stats.<stream>`` message (counters with their rates, drops by
        reason, chunk counters, gauges) or a ``status`` message (state,
        uptime, CPU, RSS, buffer fill, sink bytes/files/errors).

    Returns
    -------
    str
        Several lines, without a final newline.
    """
    when = message.get("time")
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) \
        if isinstance(when, int | float) else "--:--:--"
    if "counters" in message:
        name = f"{message.get('daemon', '?')}/{message.get('stream', '?')}"
        lines = _stream_lines(name, message)
        lines[0] = f"{stamp} {lines[0]}"
    else:
        lines = _status_lines(message)
        lines[0] = f"{stamp} {lines[0]}"
    return "\n".join(lines)


def format_status(reply: Mapping[str, Any]) -> str:
    """Render a ``status`` control reply for ``daqd status``.

    Parameters
    ----------
    reply : mapping
        ``{"ok": true, "state", "uptime", "streams": {name: {"counters",
        "rates", ...}}, "buffers", "sinks", ...}``, or an error reply.

    Returns
    -------
    str
        The state and uptime, then per stream its counters and rates.
    """
    if reply.get("ok") is False:
        return f"error: {reply.get('error', 'unknown error')}"
    streams = reply.get("streams") or {}
    shown = [name for name, stream in streams.items() if isinstance(stream, Mapping)
             and _is_sink_list(stream.get("sinks"))] if isinstance(streams, Mapping) else []
    lines = _status_lines(reply, shown)
    if isinstance(streams, Mapping):
        for name, stream in streams.items():
            lines += _stream_lines(str(name), stream if isinstance(stream, Mapping) else {})
    return "\n".join(lines)


def format_trigger(reply: Mapping[str, Any]) -> str:
    """Render a ``trigger`` control reply for ``daqd trigger``: a line per stream.

    ``adc0: event 3 -> events/adc0-00003-frb.h5 [start, end) ticks, 12 retained, 0 missing``.
    """
    lines = []
    streams = reply.get("streams") or {}
    for name, event in streams.items() if isinstance(streams, Mapping) else ():
        if not isinstance(event, Mapping):
            continue
        line = (f"{name}: event {event.get('event')} -> {event.get('path')} "
                f"[{event.get('start')}, {event.get('end')}) ticks")
        if "records_retained" in event:
            line += f", {event['records_retained']} retained"
        if event.get("records_missing") is not None:
            line += f", {event['records_missing']} missing"
        lines.append(line)
    return "\n".join(lines)
