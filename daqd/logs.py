"""Structured logs: one pipeline for daqd's structlog events and every stdlib logger.

Each event carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``,
``event``, the daemon's name (``daemon``) when one is given, and its own
key-values.  It is rendered either as one JSON object per line, for services
and log collectors, or as a readable, coloured console line for a person at a
terminal.

structlog loggers are wrappers around stdlib loggers here, and a single
`logging` handler on the root logger renders both them and the records of
libraries (pyzmq, asyncio, ``warnings.warn`` through ``py.warnings``) with
`structlog.stdlib.ProcessorFormatter`, so every line of output has one format.
The level filter is the root logger's level, read on every call, so
`set_log_level` changes it at run time (on SIGHUP) even for loggers structlog
has cached; a filtering bound logger would bake the level in at first use.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

__all__ = [
    "FORMATS", "FORMAT_CHOICES", "LEVELS", "LEVEL_CHOICES", "RepeatedErrors", "choose_format",
    "configure_logging", "reset_logging", "set_log_level",
]

FORMATS = ("console", "json")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: What ``[daemon] log_format`` and ``--log-format`` accept ("auto": JSON unless on a terminal).
FORMAT_CHOICES = ("auto", *FORMATS)
#: What ``[daemon] log_level`` and ``--log-level`` accept.
LEVEL_CHOICES = ("debug", "info", "warning", "error")

# Processors run on structlog events before they are handed to `logging`; the
# rest (which may change on reconfiguration) lives in the handler's formatter.
_STRUCTLOG_CHAIN: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]

# The same fields for records from stdlib loggers.
_FOREIGN_CHAIN: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ExtraAdder(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

_LEADING_KEYS = ("timestamp", "level", "logger", "event", "daemon")

_handler: logging.Handler | None = None


def choose_format(log_format: str | None, stream: TextIO) -> str:
    """Resolve a requested log format to ``"console"`` or ``"json"``.

    Parameters
    ----------
    log_format
        ``"console"``, ``"json"``, or None (``"auto"`` and ``""`` too) to decide
        from the stream: JSON when it is the systemd journal (``$JOURNAL_STREAM``
        names it) or not a terminal, console lines on a terminal.
    stream
        Where the logs go.

    Returns
    -------
    str
        ``"console"`` or ``"json"``.

    Raises
    ------
    ValueError
        An unknown format.
    """
    if log_format in (None, "", "auto"):
        if _is_journal(stream):
            return "json"
        return "console" if _is_terminal(stream) else "json"
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of console, json, auto")
    return log_format


def configure_logging(
    log_format: str | None,
    log_level: str,
    stream: TextIO | None = None,
    *,
    daemon: str | None = None,
    cache_loggers: bool = True,
) -> str:
    """Send structlog events and stdlib log records to one stream in one format.

    Calling it again replaces the previous configuration (handlers that others
    added to the root logger are left alone).

    Parameters
    ----------
    log_format
        ``"console"``, ``"json"`` or None for automatic (`choose_format`).  The
        CLI passes ``--log-format``, else the configuration's
        ``[daemon] log_format``.
    log_level
        ``debug``, ``info``, ``warning``, ``error`` or ``critical``; events
        below it are dropped, from structlog and stdlib loggers alike.
    stream
        Where lines go; None means `sys.stderr` as it is at the call.
    daemon
        The daemon's name, added to every event as ``daemon``.
    cache_loggers
        Let structlog cache each logger at first use (fast; a cached logger
        keeps working through reconfiguration, since the format and level
        live in `logging`, but ignores ``structlog.testing.capture_logs``).
        Tests pass False.

    Returns
    -------
    str
        The format chosen, ``"console"`` or ``"json"``.

    Raises
    ------
    ValueError
        An unknown format or level.
    """
    global _handler
    stream = sys.stderr if stream is None else stream
    chosen = choose_format(log_format, stream)
    level = _level(log_level)
    renderer: list[Any]
    if chosen == "json":
        renderer = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _leading_keys_first,
            structlog.processors.JSONRenderer(),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=_is_terminal(stream))]
    added: list[Any] = [] if daemon is None else [_add_daemon_name(daemon)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_FOREIGN_CHAIN,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *added,
                    *renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    logging.captureWarnings(True)
    structlog.configure(
        processors=_STRUCTLOG_CHAIN,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=cache_loggers,
    )
    return chosen


def set_log_level(log_level: str) -> None:
    """Change the level of every logger at run time (e.g. on SIGHUP).

    Parameters
    ----------
    log_level
        ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
    """
    logging.getLogger().setLevel(_level(log_level))


def reset_logging() -> None:
    """Undo `configure_logging`: remove its handler and restore structlog's defaults."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _level(name: str) -> int:
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"log level {name!r}: expected one of {', '.join(LEVELS)}"
        ) from None


def _add_daemon_name(name: str) -> Any:
    def add_daemon_name(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("daemon", name)
        return event_dict

    return add_daemon_name


def _leading_keys_first(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put timestamp, level, logger and event first, for people reading the JSON."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_journal(stream: TextIO) -> bool:
    """Whether the stream is the journal systemd connected us to.

    systemd.exec(5) sets ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of that
    stream and advises comparing it with the descriptor, because the variable
    is inherited by processes whose output goes elsewhere (a shell in a
    terminal started by a user service, for instance).  For the same reason
    ``$INVOCATION_ID`` alone is not taken as a sign of running under systemd.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


# ----------------------------------------------------------------------
# Errors that repeat: the first line, then one summary per interval


@dataclass
class _Repeats:
    """One kind of repeating error: its last fields and how often it came."""

    event: str
    level: str
    fields: dict[str, Any]
    total: int = 1              # occurrences since it started
    since_line: int = 0         # occurrences not yet in a line
    last_line: float = 0.0      # when a line about it was last written
    last_seen: float = 0.0


class RepeatedErrors:
    """Log an error once, then a summary (count, last error) once per interval.

    An error that comes per record, packet or write (a full disk) would
    otherwise write a line each time; so would an event that network input
    can repeat at will (a TCP connection, a stop heap: `info`, with `first` a
    few).  The first `first` occurrences of a `key` are
    logged at once, as they are; later ones are counted, and at most once per
    `interval` a line ``"<event> (repeated)"`` gives ``repeats`` (since the
    previous line), ``total`` (since it started) and the last occurrence's
    fields.  Once a key has not come for a whole interval, a last line
    ``"<event> (stopped)"`` gives its ``total`` (and any repeats not yet told),
    and the next occurrence is logged at once again.  Summaries of an error or
    a warning are warnings; summaries of an info event are info lines.  Counters elsewhere keep
    the exact numbers; ``total`` matches them for as long as the error lasts.

    Summaries are written when an occurrence finds the interval over, and by
    `summarise()`, which the owner calls regularly (the buffer's flusher does,
    a few times a second), so a summary never waits for the next occurrence.
    `close()` writes what is left.  Thread-safe.

    Parameters
    ----------
    logger
        A structlog logger.
    interval : float
        Seconds between summaries of one key (the daemon passes its
        statistics interval).
    clock : callable
        Monotonic seconds.
    first : int
        Occurrences of a key logged as they come before they are only counted.
    """

    def __init__(self, logger: Any, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, first: int = 1):
        if interval <= 0:
            raise ValueError(f"interval: {interval} is not positive")
        if first < 1:
            raise ValueError(f"first: {first} is not positive")
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.first = first
        self._lock = threading.Lock()
        self._repeats: dict[str, _Repeats] = {}

    def error(self, key: str, event: str, **fields: Any) -> None:
        """Count an occurrence of error `key` (level error)."""
        self.log("error", key, event, **fields)

    def warning(self, key: str, event: str, **fields: Any) -> None:
        """Count an occurrence of `key` (level warning)."""
        self.log("warning", key, event, **fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        """Count an occurrence of event `key` (level info)."""
        self.log("info", key, event, **fields)

    def log(self, level: str, key: str, event: str, **fields: Any) -> None:
        """Count an occurrence of `key`: its line, a summary if one is due, or nothing.

        Its line: the first `first` occurrences of a run are logged as they are.
        """
        now = self.clock()
        lines = []
        with self._lock:
            repeats = self._repeats.get(key)
            if repeats is None:
                self._repeats[key] = _Repeats(event, level, fields, last_line=now,
                                              last_seen=now)
                lines.append((level, event, fields))
            else:
                repeats.event, repeats.level, repeats.fields = event, level, fields
                repeats.total += 1
                repeats.last_seen = now
                if repeats.total <= self.first:      # one of the first few: as it is
                    repeats.last_line = now
                    lines.append((level, event, fields))
                else:
                    repeats.since_line += 1
                    if now - repeats.last_line >= self.interval:
                        lines.append(self._summary_locked(repeats, now, "repeated"))
        self._write(lines)

    def summarise(self) -> None:
        """Write the summaries that are due, and the last line of errors that stopped."""
        now = self.clock()
        lines = []
        with self._lock:
            for key, repeats in list(self._repeats.items()):
                if now - repeats.last_seen >= self.interval:
                    lines.append(self._summary_locked(repeats, now, "stopped"))
                    del self._repeats[key]
                elif repeats.since_line and now - repeats.last_line >= self.interval:
                    lines.append(self._summary_locked(repeats, now, "repeated"))
        self._write(lines)

    def close(self) -> None:
        """Write the last line of every error still counted (its repeats and total)."""
        now = self.clock()
        with self._lock:
            lines = [self._summary_locked(r, now, "stopped") for r in self._repeats.values()
                     if r.total > 1]
            self._repeats.clear()
        self._write(lines)

    def totals(self) -> dict[str, int]:
        """Occurrences of each error still being counted, since it started."""
        with self._lock:
            return {key: r.total for key, r in self._repeats.items()}

    def _summary_locked(self, repeats: _Repeats, now: float,
                        what: str) -> tuple[str, str, dict[str, Any]]:
        level = repeats.level if what == "repeated" or repeats.level in ("info", "debug") \
            else "warning"
        line = (level,
                f"{repeats.event} ({what})",
                {**{k: v for k, v in repeats.fields.items() if k != "exc_info"},
                 "repeats": repeats.since_line, "total": repeats.total,
                 "seconds": round(now - repeats.last_line, 3)})
        repeats.since_line = 0
        repeats.last_line = now
        return line

    def _write(self, lines: list[tuple[str, str, dict[str, Any]]]) -> None:
        for level, event, fields in lines:
            getattr(self.logger, level)(event, **fields)
