"""Statistics and status on a ZeroMQ PUB socket.

Every ``interval`` seconds (monotonic clock) one thread takes a snapshot of
the daemon and publishes multipart ``[topic, json]`` messages
(INTERFACES.md, "Statistics messages"):

``stats.<stream>``, one per stream::

    {"schema": "daqd.stats/1", "daemon": "daqd", "time": 1767225600.25,
     "stream": "adc0", "interval": 1.0,
     "counters": {"packets": 1200, "heaps": 1200, "max_batch": 64, ...},
     "gauges": {...}, "rates": {"packets": 1000.0, "heaps": 1000.0, ...},
     ...extra fields of the stream's snapshot}

``status``, one per round::

    {"schema": "daqd.stats/1", "daemon": "daqd", "time": 1767225600.25,
     "state": "running", "uptime": 12.5, "streams": ["adc0"],
     "buffers": {...}, "sinks": {...}, "errors": {...},
     "process": {"pid": 4242, "cpu": 0.31, "rss_bytes": 73400320},
     "publisher": {"messages_sent": 40, "dropped_messages": 0, ...}}

``counters`` are the snapshot's monotonic integers.  ``rates`` are per second
over the time since the previous round, measured with the monotonic clock;
there is no rate for a gauge (a name in the snapshot's ``gauges``) nor for a
maximum-mode counter (`daqd.recv.counters.MAXIMA`, e.g. ``max_batch``).  A counter
that decreased was reset: its rate counts from zero, never negative.
``rates`` is empty in a stream's first message when no earlier snapshot
exists.  ``process.cpu`` is CPU seconds per second (1.0 = one core busy).

Sending never blocks the daemon: messages go out with ``zmq.NOBLOCK`` through
a bounded send queue (``SNDHWM``), and a subscriber that is slow or absent
costs nothing.  libzmq's PUB socket drops silently, per subscriber, a message
that subscriber's queue has no room for, so the others still get it; with
``nodrop=True`` the socket refuses the message instead (for every subscriber)
and the refusal is counted in ``dropped_messages``.  Refusals and send
errors are always counted.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import zmq

from daqd.recv.counters import MAXIMA
from daqd.service.zmq_security import Security
from daqd.service.zmq_server import SocketServer

log = structlog.get_logger("daqd.stats")

#: The ``schema`` of every message; bump the number when a field changes meaning.
SCHEMA = "daqd.stats/1"

#: Counters that never get a rate (maximum mode, per spead2's stat config).
NO_RATE = frozenset(s.name.lower() for s in MAXIMA)

# Keys of a stream's snapshot that the message builds itself.
_STREAM_KEYS = frozenset({"counters", "gauges", "rates"})
_HEADER_KEYS = ("schema", "daemon", "time")

Snapshot = Mapping[str, Any]


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays, sets, paths."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def encode(message: Mapping[str, Any]) -> bytes:
    """Encode one message as compact JSON (numpy values become plain numbers)."""
    return json.dumps(message, separators=(",", ":"), default=_jsonable).encode()


def rss_bytes() -> int:
    """Resident set size of this process in bytes.

    From ``/proc/self/statm`` (Linux); elsewhere the peak RSS from
    ``getrusage``, the best the platform offers.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        or hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0


class StatsBuilder:
    """Turns successive daemon snapshots into messages; computes rates.

    Pure apart from its clocks, so the daemon can also use it for a
    ``status`` reply when no PUB socket is configured.  Not thread-safe:
    `StatsPublisher` serialises calls.

    Parameters
    ----------
    daemon_name : str
        The ``daemon`` field of every message.
    clock : callable, optional
        Monotonic seconds, for rates and CPU use.
    wall_clock : callable, optional
        Unix seconds, for the ``time`` field only.
    cpu_clock : callable, optional
        Process CPU seconds.
    """

    def __init__(self, daemon_name: str, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 cpu_clock: Callable[[], float] = time.process_time):
        self.daemon_name = daemon_name
        self._clock = clock
        self._wall_clock = wall_clock
        self._cpu_clock = cpu_clock
        # stream -> (monotonic time, counters) of the previous round
        self._previous: dict[str, tuple[float, dict[str, int]]] = {}
        self._reset_at: float | None = None
        self._cpu_previous = (clock(), cpu_clock())

    def prime(self, snapshot: Snapshot) -> None:
        """Take `snapshot` as the baseline of the next rates, without building messages."""
        now = self._clock()
        for name, stream in dict(snapshot.get("streams") or {}).items():
            self._previous[str(name)] = (now, self._counters(stream))

    def reset_counters(self) -> None:
        """Restart rates from zero, from now: the daemon has reset its counters."""
        now = self._clock()
        self._previous = {name: (now, {}) for name in self._previous}
        self._reset_at = now

    @staticmethod
    def _counters(stream: Mapping[str, Any]) -> dict[str, int]:
        return {str(k): int(v) for k, v in dict(stream.get("counters") or {}).items()
                if _is_number(v)}

    def _rates(self, name: str, now: float, counters: dict[str, int],
               gauges: Mapping[str, Any]) -> tuple[dict[str, float], float | None]:
        previous = self._previous.get(name)
        if previous is None and self._reset_at is not None:
            previous = (self._reset_at, {})       # a stream first seen after a reset
        self._previous[name] = (now, counters)
        if previous is None:
            return {}, None
        then, before = previous
        elapsed = now - then
        if elapsed <= 0:
            return {}, None
        rates = {}
        for key, value in counters.items():
            if key in gauges or key in NO_RATE:
                continue
            old = before.get(key, 0)
            delta = value - old if value >= old else value    # decreased: it was reset
            rates[key] = round(delta / elapsed, 3)
        return rates, elapsed

    def build(self, snapshot: Snapshot, publisher_stats: Mapping[str, int] | None = None,
              ) -> list[tuple[str, dict[str, Any]]]:
        """Build one round of messages from a snapshot.

        Parameters
        ----------
        snapshot : mapping
            ``{"state", "uptime", "streams": {name: {"counters", "gauges", ...}},
            "buffers", "sinks", "process", "errors", ...}``; keys other than
            ``streams`` are copied into the status message, and a stream's
            keys other than ``counters``/``gauges`` into its message.
        publisher_stats : mapping, optional
            Counters of the publisher itself, sent as ``status.publisher``.

        Returns
        -------
        list of (str, dict)
            ``(topic, message)`` pairs: one ``stats.<stream>`` per stream, then
            ``status``.
        """
        now = self._clock()
        header = {"schema": SCHEMA, "daemon": self.daemon_name, "time": self._wall_clock()}
        streams = dict(snapshot.get("streams") or {})
        out: list[tuple[str, dict[str, Any]]] = []
        for name, stream in streams.items():
            stream = dict(stream or {})
            counters = self._counters(stream)
            gauges = dict(stream.get("gauges") or {})
            rates, elapsed = self._rates(str(name), now, counters, gauges)
            extra = {k: v for k, v in stream.items() if k not in _STREAM_KEYS}
            # header first in the JSON text, and its values win over the snapshot's
            message = {**header, **extra, **header, "stream": str(name),
                       "interval": None if elapsed is None else round(elapsed, 6),
                       "counters": counters, "gauges": gauges, "rates": rates}
            out.append((f"stats.{name}", message))
        cpu_then, cpu_before = self._cpu_previous
        cpu_now = self._cpu_clock()
        self._cpu_previous = (now, cpu_now)
        process = {"pid": os.getpid(),
                   "cpu": round((cpu_now - cpu_before) / (now - cpu_then), 4)
                   if now > cpu_then else 0.0,
                   "rss_bytes": rss_bytes(), **dict(snapshot.get("process") or {})}
        extra = {k: v for k, v in snapshot.items() if k != "streams"}
        status = {**header, **extra, **header, "state": str(snapshot.get("state", "unknown")),
                  "uptime": snapshot.get("uptime"), "streams": [str(n) for n in streams],
                  "buffers": dict(snapshot.get("buffers") or {}),
                  "sinks": dict(snapshot.get("sinks") or {}),
                  "errors": dict(snapshot.get("errors") or {}), "process": process}
        if publisher_stats is not None:
            status["publisher"] = dict(publisher_stats)
        out.append(("status", status))
        return out


def report(messages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One dict from a round of messages, as a ``status`` control reply carries it.

    Parameters
    ----------
    messages : mapping
        topic → message, as `StatsPublisher.last_messages` returns.

    Returns
    -------
    dict
        The status message's fields, with ``streams`` mapping each stream
        name to its message (``counters``, ``gauges``, ``rates``, ...)
        without the header fields.
    """
    status = dict(messages.get("status") or {})
    status["streams"] = {
        m["stream"]: {k: v for k, v in m.items() if k not in _HEADER_KEYS}
        for topic, m in messages.items() if topic.startswith("stats.")
    }
    return status


class StatsPublisher(SocketServer):
    """A thread publishing the daemon's statistics on a ZeroMQ PUB socket.

    Parameters
    ----------
    context, endpoint, security
        As for `SocketServer` (e.g. ``tcp://127.0.0.1:5556``).
    interval : float
        Seconds between rounds.
    snapshot : callable
        Returns the daemon's snapshot (see `StatsBuilder.build`); called from
        the publisher thread, so it must be thread-safe.
    daemon_name : str
        The ``daemon`` field of every message.
    sndhwm : int, optional
        Messages queued per subscriber before the socket drops them.
    nodrop : bool, optional
        Refuse (and count) a message any subscriber has no room for, instead
        of libzmq's silent per-subscriber drop.
    linger : float, optional
        Seconds the socket may keep flushing queued messages after `stop`.
    clock : callable, optional
        Monotonic seconds (rates, interval).
    """

    def __init__(self, context: zmq.Context, endpoint: str, interval: float,
                 snapshot: Callable[[], Snapshot], daemon_name: str,
                 security: Security | None = None, *, sndhwm: int = 100,
                 nodrop: bool = False, linger: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        if interval <= 0:
            raise ValueError(f"interval = {interval!r}: expected a positive number of seconds")
        super().__init__(context, endpoint, security)
        self.interval = interval
        self._snapshot = snapshot
        self.sndhwm = sndhwm                # messages queued per subscriber
        self.nodrop = nodrop                # refuse (and count) rather than drop
        self._linger = linger
        self._clock = clock
        self._builder = StatsBuilder(daemon_name, clock=clock)
        self._lock = threading.Lock()          # serialises every use of the socket
        self._last: dict[str, dict[str, Any]] = {}
        self._last_error = ""
        self._stats = {"rounds": 0, "messages_sent": 0, "dropped_messages": 0,
                       "snapshot_errors": 0, "encode_errors": 0}

    socket_type = zmq.PUB
    what = "statistics"
    thread_name = "daqd-stats"

    def start(self) -> None:
        """Bind the socket (errors surface here) and start publishing."""
        super().start()
        log.info("statistics publishing", endpoint=self.endpoint, interval=self.interval)

    def _configure(self, sock: zmq.Socket) -> None:
        sock.sndhwm = self.sndhwm
        sock.linger = 0
        if self.nodrop:
            sock.setsockopt(zmq.XPUB_NODROP, 1)

    def _run(self, sock: zmq.Socket) -> None:
        try:
            with self._lock:
                self._builder.prime(self._snapshot())
        except Exception as exc:  # counted, and the next round tries again
            self._snapshot_failed(exc)
        due = self._clock() + self.interval
        while not self._stop.wait(max(0.0, due - self._clock())):
            try:
                sent = self.publish_now()
            except zmq.ContextTerminated:
                return
            log.debug("statistics round", messages=sent, **self.stats())
            due += self.interval
            now = self._clock()
            if due <= now:                     # fell behind: skip, never burst
                due = now + self.interval

    def _snapshot_failed(self, exc: BaseException) -> None:
        self._stats["snapshot_errors"] += 1
        error = f"{type(exc).__name__}: {exc}"
        if error != self._last_error:          # once per distinct error, not per round
            log.warning("statistics snapshot failed", error=error)
            self._last_error = error

    def publish_now(self) -> int:
        """Publish one round now, from any thread.

        Returns
        -------
        int
            The number of messages the socket accepted (0 once stopped).
        """
        with self._lock:
            if self._socket is None:
                return 0
            try:
                snap = self._snapshot()
            except Exception as exc:  # counted and logged; the daemon keeps running
                self._snapshot_failed(exc)
                return 0
            self._stats["rounds"] += 1
            publisher_stats = dict(self._stats)
            sent = 0
            for topic, message in self._builder.build(snap, publisher_stats):
                try:
                    payload = encode(message)
                except (TypeError, ValueError) as exc:
                    self._stats["encode_errors"] += 1
                    log.warning("statistics message not JSON", topic=topic, error=str(exc))
                    continue
                try:
                    self._socket.send_multipart([topic.encode(), payload], flags=zmq.NOBLOCK)
                except zmq.Again:
                    self._stats["dropped_messages"] += 1
                except zmq.ContextTerminated:
                    raise
                except zmq.ZMQError as exc:
                    self._stats["dropped_messages"] += 1
                    log.debug("statistics send failed", topic=topic, error=str(exc))
                else:
                    sent += 1
                    self._stats["messages_sent"] += 1
                self._last[topic] = message
            return sent

    def reset_counters(self) -> None:
        """Call when the daemon resets its counters, so rates restart from zero."""
        with self._lock:
            self._builder.reset_counters()

    def last_messages(self) -> dict[str, dict[str, Any]]:
        """Return a copy of the latest message of each topic (topic → message)."""
        with self._lock:
            return {topic: dict(message) for topic, message in self._last.items()}

    def report(self) -> dict[str, Any]:
        """Return the latest round as one dict (see `report`), for a ``status`` reply.

        Publishes a round first if none has been published yet.
        """
        if not self.last_messages():
            self.publish_now()
        return report(self.last_messages())

    def stats(self) -> dict[str, int]:
        """Return the publisher's counters.

        ``rounds``, ``messages_sent``, ``dropped_messages``, ``snapshot_errors``,
        ``encode_errors``.
        """
        return dict(self._stats)

    def stop(self, timeout: float = 2.0, *, final: bool = False) -> None:
        """Stop the thread and close the socket; idempotent.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the thread.
        final : bool, optional
            Publish one last round first (e.g. with state ``stopped``), and
            give it up to ``linger`` seconds to get out.
        """
        self._join(timeout)
        if final:
            self.publish_now()
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=int(self._linger * 1000) if final else 0)
                self._socket = None
                log.info("statistics stopped", endpoint=self.endpoint, **self._stats)
