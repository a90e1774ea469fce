"""The Prometheus text endpoint (``[daemon] prometheus = "HOST:PORT"``; off by default).

Nothing is counted twice: a custom collector reads the daemon's snapshot (the
same one the ZeroMQ statistics publish, see `daqd.service.stats_publisher`) at each
scrape and turns it into metric families.  Every family carries the daemon's
name as label ``daemon`` (so one Grafana dashboard serves many daemons); a
snapshot key K becomes the name `metric_name` gives it, by the rules of
`NAME_RULES` (Prometheus' conventions: base units at the end of the name,
``_total`` on counters, one family with a ``reason`` label for counters split
by reason); a key no rule names keeps its name:

============================================  =====================================
snapshot                                      exposed as
============================================  =====================================
``daemon`` (else the server's ``daemon``)     ``daqd_info{daemon=...,version=...} 1``
``state``                                     ``daqd_state{daemon,state=...} 1``
``uptime``                                    ``daqd_uptime_seconds``
``streams[S].counters[K]``                    ``daqd_K_total{daemon,stream=S}``
... K a maximum (`MAXIMA`) or in ``gauges``   ``daqd_K{...}`` (gauge)
... ``packets_rejected_R`` (and               ``daqd_packets_rejected_total{...,reason=R}``
``chunk_heaps_rejected_R``,
``pcap_frames_skipped_R``)
... ``worker_blocked_ns``                     ``daqd_worker_blocked_seconds_total``
... ``tcp_bytes_received`` (``P_bytes_X``)    ``daqd_tcp_received_bytes_total`` (``P_X_bytes``)
``streams[S].gauges[G]``                      ``daqd_G{daemon,stream=S}`` (but ``buffer_fill``,
                                              which is ``daqd_buffer_size``)
``streams[S].capturing``                      ``daqd_capturing{daemon,stream=S}`` (0/1)
``streams[S].gauges.newest_timestamp``        ``daqd_newest_timestamp_ticks`` (data time;
                                              ``data_time_lag_seconds``: UTC now - its UTC)
``streams[S].sources[U][K]``                  ``daqd_source_K_total{daemon,stream=S,source=U}``
``streams[S].sources[U].threads[k][K]``       ``daqd_source_thread_K_total{...,source=U,thread=k}``
(a source's receive threads, ``threads``)     (the source's own series are their sums)
``streams[S].heaps_missing_per_substream[i]`` ``daqd_substream_heaps_missing_total``
                                              ``{daemon,stream=S,substream=i}``
``buffers[S][K]``, a number                   ``daqd_buffer_K_total{daemon,stream=S}``
... K in `TABLE_GAUGES` (fill, size, ...)     ``daqd_buffer_K{...}`` (gauge; ``fill`` is
                                              ``daqd_buffer_fill_ratio``)
... a flag                                    ``daqd_buffer_K{...}`` (gauge, 0/1)
``buffers[S][K][R]`` (by reason)              ``daqd_buffer_K_total{...,reason=R}``
``buffers[S]["wal"][K]``                      ``daqd_buffer_wal_K_total`` (`WAL_GAUGES`: gauges;
                                              its ``bytes``: ``daqd_buffer_wal_size_bytes``)
``buffers[S].sinks[N][K]`` (the buffer's      ``daqd_buffer_sink_K_total{...,sink=N}``
account of sink N: written, lost, backlog)    (``..._lost_by_reason_total`` with ``reason=R``),
                                              with the same rules as buffers
``sinks[S][i][K]``, sink ``name`` N           ``daqd_sink_K_total{daemon,stream=S,sink=N}``,
                                              with the same rules as buffers
============================================  =====================================

Strings (paths, last errors) are left out, and so are rates: PromQL's
``rate()`` computes them; so are a TCP source's ``peers`` (a series per peer
address would grow without bound).  The usual ``process_*`` metrics (CPU,
memory, descriptors) come with them.  ``config/grafana/daqd.json`` is a
Grafana dashboard of these metrics.

The endpoint serves only these read-only figures, so it may listen on any
interface (unlike the ZeroMQ control socket); keep it behind a firewall or
on loopback if the figures are private.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from daqd import __version__
from daqd.addresses import split_host_port
from daqd.errors import UsageProblem
from daqd.recv.counters import MAXIMA
from daqd.service.threads import ThreadOwner

__all__ = ["NAME_RULES", "TABLE_GAUGES", "WAL_GAUGES", "MetricsError", "MetricsServer", "NameRule",
           "SnapshotCollector", "metric_name"]

log = structlog.get_logger("daqd.metrics")

Snapshot = Mapping[str, Any]

_MAXIMA = frozenset(s.name.lower() for s in MAXIMA)
# The per-stream tables of the snapshot beside ``streams``, and their metric prefixes.
_TABLES = {"buffers": "buffer", "sinks": "sink"}

#: Numbers in a buffer's or sink's statistics that go up and down; every other
#: number there is monotonic and exposed as a counter.
TABLE_GAUGES = frozenset({"capacity", "size", "fill", "unfinished_files", "backlog"})
#: ... and in a write-ahead log's (``buffers[S]["wal"]``): its size, what it holds.
WAL_GAUGES = frozenset({"bytes", "live_bytes", "live_records", "next_seq"})


@dataclass(frozen=True)
class NameRule:
    """How one snapshot key becomes a metric name (Prometheus' naming conventions).

    `pattern` is matched whole against ``"TABLE.KEY"`` (TABLE the metric prefix:
    ``""`` for a stream's counters and gauges, ``buffer``, ``buffer_sink``,
    ``buffer_wal``, ``sink``, ``source``).  `name` is the metric name after
    ``daqd_TABLE_`` (with the pattern's groups; ``""``: not exposed), before
    ``_total``; `reason`, if set, is the group that becomes the ``reason`` label
    (counters of one thing split by why); values are multiplied by `scale`.
    """

    pattern: str
    name: str
    reason: str = ""
    scale: float = 1.0


#: The naming rules, first match wins; a key no rule matches keeps its own name.
#: Units are base units at the end of the name (``_bytes``, ``_seconds``,
#: ``_ratio``), then ``_total`` for counters; counters the compiled core keeps
#: one per reason are one family with a ``reason`` label, as are the tables by
#: reason of buffers and sinks.  The one place these names are made:
#: `tests/service/test_metrics.py` and the Grafana dashboard
#: (``config/grafana/daqd.json``) are checked against them.
NAME_RULES: tuple[NameRule, ...] = (
    # one counter per reason in the compiled core's list -> a reason label
    NameRule(r"\.packets_rejected_(?P<r>.+)", "packets_rejected", reason="r"),
    NameRule(r"\.chunk_heaps_rejected_(?P<r>.+)", "chunk_heaps_rejected", reason="r"),
    NameRule(r"\.pcap_frames_skipped_(?P<r>.+)", "pcap_frames_skipped", reason="r"),
    # units: nanoseconds -> seconds; "bytes_X" / "P_bytes_X" -> "X_bytes"
    NameRule(r"[a-z_]*\.(?P<n>.+)_ns", "{n}_seconds", scale=1e-9),
    NameRule(r"[a-z_]*\.(?P<p>.+_)?bytes_(?P<n>.+)", "{p}{n}_bytes"),
    NameRule(r"buffer_wal\.bytes", "size_bytes"),
    NameRule(r"buffer\.fill", "fill_ratio"),                 # size / capacity
    # the stream's gauge "buffer_fill" is the buffer's size: daqd_buffer_size
    NameRule(r"\.buffer_fill", ""),
    NameRule(r"source\.peers", ""),                       # one series per peer: too many
    # data time: the newest record's timestamp is in the instrument's ticks
    NameRule(r"\.newest_timestamp", "newest_timestamp_ticks"),
)


def metric_name(table: str, key: str) -> tuple[str, str, float]:
    """Name a key of a table by `NAME_RULES`.

    Returns ``(name without "daqd_" and "_total", reason label or "", scale)``;
    the name is ``""`` if the key is not exposed.
    """
    for rule in NAME_RULES:
        if (m := re.fullmatch(rule.pattern, f"{table}.{key}")) is not None:
            name = rule.name.format(**{k: v or "" for k, v in m.groupdict().items()})
            reason = m[rule.reason] if rule.reason else ""
            return (_metric_name(table, name) if name else ""), reason, rule.scale
    return _metric_name(table, key), "", 1.0


class MetricsError(UsageProblem):
    """The Prometheus endpoint cannot listen where configured (one line, exit status 2)."""


def _metric_name(*parts: str) -> str:
    name = "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts if p)
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


def _number(value: Any) -> float | None:
    if isinstance(value, bool | str | bytes):
        return None
    try:
        return float(value) if getattr(value, "ndim", 0) == 0 else None
    except (TypeError, ValueError):
        return None


class _Families:
    """Metric families by name; the first type and label names seen for a name win.

    Every family but ``daqd_info`` carries the daemon's name as label ``daemon``.
    """

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self.families: dict[str, tuple[CounterMetricFamily | GaugeMetricFamily, list[str]]] = {}
        self.conflicts = 0

    def add(self, kind: str, name: str, help_text: str, labels: dict[str, str],
            value: Any, scale: float = 1.0) -> None:
        number = _number(value)
        if number is None or not name:
            return
        name = "daqd_" + name
        labels = {"daemon": self.daemon, **labels}
        if name not in self.families:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            self.families[name] = (cls(name, help_text, labels=list(labels)), list(labels))
        family, label_names = self.families[name]
        if family.type != kind or list(labels) != label_names:
            self.conflicts += 1
            return
        family.add_metric(list(labels.values()), number * scale)

    def add_key(self, kind: str, table: str, key: str, labels: dict[str, str],
                value: Any) -> None:
        """Add `key` of `table`, named by `NAME_RULES`."""
        name, reason, scale = metric_name(table, key)
        what = f"daqd {table or 'stream'} {key}"
        if reason:
            self.add(kind, name, f"{what}.", {**labels, "reason": reason}, value, scale)
        else:
            self.add(kind, name, f"{what}.", labels, value, scale)


class SnapshotCollector(Collector):
    """Turns the daemon's snapshot into metric families at each scrape.

    Parameters
    ----------
    snapshot
        Returns the daemon's snapshot (``{"state", "uptime", "streams",
        "buffers", "sinks", ...}``).  It is called from the HTTP server's
        thread, so it must be thread-safe.
    daemon
        The daemon's name (label ``daemon``), unless the snapshot has ``daemon``.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], daemon: str = ""):
        self.snapshot = snapshot
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of one fresh snapshot."""
        snap = self.snapshot()              # an exception fails this scrape (HTTP 500)
        out = _Families(str(snap.get("daemon", self.daemon)))
        out.add("gauge", "info", "The daemon's name and version.", {"version": __version__}, 1)
        if "state" in snap:
            out.add("gauge", "state", "The daemon's current state.",
                    {"state": str(snap["state"])}, 1)
        if snap.get("uptime") is not None:
            out.add("gauge", "uptime_seconds", "Seconds since the daemon started.", {},
                    snap["uptime"])
        for stream, fields in dict(snap.get("streams") or {}).items():
            if isinstance(fields, Mapping):
                _add_stream(out, {"stream": str(stream)}, fields)
        for table, label in _TABLES.items():
            for stream, entries in dict(snap.get(table) or {}).items():
                for labels, fields in _table_entries(label, str(stream), entries):
                    _add_table_entry(out, label, labels, fields)
        yield from (family for family, _ in out.families.values())


def _add_stream(out: _Families, labels: dict[str, str], fields: Mapping[str, Any]) -> None:
    """Add a stream's counters, gauges, per-source counters and per-substream losses.

    Maxima, and counters also listed in its gauges, are gauges.
    """
    gauges = dict(fields.get("gauges") or {})
    counters = dict(fields.get("counters") or {})
    for key, value in counters.items():
        kind = "gauge" if key in _MAXIMA or key in gauges else "counter"
        out.add_key(kind, "", str(key), labels, value)
    for key, value in gauges.items():
        if key not in counters:         # else the counters hold its value
            out.add_key("gauge", "", str(key), labels, value)
    if isinstance(fields.get("capturing"), bool):
        out.add("gauge", "capturing", "1 while the stream's records are written (capture "
                "blocks).", labels, int(fields["capturing"]))
    sources = fields.get("sources")
    for source, numbers in (sources.items() if isinstance(sources, Mapping) else ()):
        if isinstance(numbers, Mapping):
            for key, value in numbers.items():
                out.add_key("counter", "source", str(key), {**labels, "source": str(source)},
                            value)
            threads = numbers.get("threads")
            for k, entry in enumerate(threads if isinstance(threads, list) else ()):
                for key, value in (entry.items() if isinstance(entry, Mapping) else ()):
                    out.add_key("counter", "source_thread", str(key),
                                {**labels, "source": str(source), "thread": str(k)}, value)
    for substream, missing in enumerate(fields.get("heaps_missing_per_substream") or ()):
        out.add("counter", "substream_heaps_missing",
                "Heap slots of completed chunks without a complete heap, per substream.",
                {**labels, "substream": str(substream)}, missing)


def _table_entries(label: str, stream: str, entries: Any
                   ) -> Iterator[tuple[dict[str, str], Mapping[str, Any]]]:
    """Yield the labels and statistics of a stream's buffer (a table) or sinks (a list)."""
    if isinstance(entries, Mapping):
        yield {"stream": stream}, entries
    elif isinstance(entries, list | tuple):
        for i, entry in enumerate(entries):
            if isinstance(entry, Mapping):
                yield {"stream": stream, label: str(entry.get("name", i))}, entry


def _add_table_entry(out: _Families, prefix: str, labels: dict[str, str],
                     fields: Mapping[str, Any]) -> None:
    """Add a buffer's or sink's numbers: TABLE_GAUGES and flags are gauges, others counters."""
    gauges = WAL_GAUGES if prefix == "buffer_wal" else TABLE_GAUGES
    for key, value in fields.items():
        if key in ("counters", "gauges") and isinstance(value, Mapping):
            for sub, number in value.items():
                out.add_key("counter" if key == "counters" else "gauge", prefix, str(sub),
                            labels, number)
        elif prefix == "buffer" and key == "sinks" and isinstance(value, Mapping):
            # The buffer's account of each sink (its own cursor: written, lost
            # by reason, backlog), labelled by the sink's name.
            for sink, account in value.items():
                if isinstance(account, Mapping):
                    _add_table_entry(out, "buffer_sink", {**labels, "sink": str(sink)}, account)
        elif prefix == "buffer" and key == "wal" and isinstance(value, Mapping):
            _add_table_entry(out, "buffer_wal", labels, value)
        elif isinstance(value, Mapping):         # e.g. drops by reason
            name, _, scale = metric_name(prefix, str(key))
            for r, number in value.items():
                out.add("counter", name, f"daqd {prefix} {key}, by reason.",
                        {**labels, "reason": str(r)}, number, scale)
        elif isinstance(value, bool):
            out.add_key("gauge", prefix, str(key), labels, int(value))
        else:
            out.add_key("gauge" if key in gauges else "counter", prefix, str(key), labels, value)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape; daemon threads, so none outlives the daemon's exit."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log: a scrape every few seconds is not news."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _logged_errors(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Answer 500 to a scrape whose snapshot failed and log it (not wsgiref's raw traceback)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return list(app(environ, start_response))
        except Exception as exc:
            log.warning("Prometheus scrape failed", error=repr(exc))
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
            return [b"snapshot failed\n"]

    return guarded


class MetricsServer(ThreadOwner):
    """An HTTP server for Prometheus scrapes, in a daemon thread.

    Parameters
    ----------
    address
        ``HOST:PORT`` to listen on (``[V6]:PORT`` for IPv6); port 0 picks a
        free one (see `port`).
    snapshot
        Returns the daemon's snapshot; see `SnapshotCollector`.
    daemon
        The daemon's name, for ``daqd_info``.
    process_metrics
        Also expose the standard ``process_*`` metrics of this process.
    """

    #: Seconds `stop` may wait for the serving loop to notice.
    POLL_INTERVAL = 0.1

    def __init__(self, address: str, snapshot: Callable[[], Snapshot], *, daemon: str = "",
                 process_metrics: bool = True):
        self.address = address
        self.host, self._requested_port = split_host_port(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot, daemon))
        if process_metrics:
            prometheus_client.ProcessCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked, if 0 was asked for)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The URL to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Listen and serve scrapes in a daemon thread.

        Raises
        ------
        MetricsError
            The address cannot be listened on (in use, not local, not resolvable).
        """
        if self._server is not None:
            raise RuntimeError("the metrics server is already running")
        app = _logged_errors(prometheus_client.make_wsgi_app(self.registry))
        try:
            family = socket.getaddrinfo(self.host, self._requested_port,
                                        type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            server_class = type("MetricsHTTPServer", (_ThreadingWSGIServer,),
                                {"address_family": family})
            self._server = make_server(self.host, self._requested_port, app, server_class,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise MetricsError(f"daemon.prometheus = {self.address!r}: cannot listen: "
                               f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": self.POLL_INTERVAL},
            name="prometheus-http", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics", url=self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the listening socket; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._join_thread(timeout)
