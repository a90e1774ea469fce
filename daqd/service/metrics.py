"""The Prometheus text endpoint (``[daemon] prometheus = "HOST:PORT"``; off by default).

Nothing is counted twice: a custom collector reads the daemon's snapshot (the
same one the ZeroMQ statistics publish, see `daqd.service.stats_publisher`) at each
scrape and turns it into metric families:

============================================  =====================================
snapshot                                      exposed as
============================================  =====================================
``daemon`` (else the server's ``daemon``)     ``daqd_info{daemon=...,version=...} 1``
``state``                                     ``daqd_state{state=...} 1``
``uptime``                                    ``daqd_uptime_seconds``
``streams[S].counters[C]``                    ``daqd_C_total{stream=S}``
... C a maximum (`MAXIMA`) or in ``gauges``   ``daqd_C{stream=S}`` (gauge)
``streams[S].gauges[G]``                      ``daqd_G{stream=S}``
``buffers[S][K]``, a number                   ``daqd_buffer_K_total{stream=S}``
... K in `TABLE_GAUGES` (fill, size, ...)     ``daqd_buffer_K{stream=S}`` (gauge)
... a flag                                    ``daqd_buffer_K{stream=S}`` (gauge, 0/1)
``buffers[S][K][R]`` (by reason)              ``daqd_buffer_K_total{stream=S,reason=R}``
``buffers[S].sinks[N][K]`` (the buffer's      ``daqd_buffer_sink_K_total{stream=S,sink=N}``
account of sink N: written, lost, backlog)    (``..._lost_by_reason_total`` with ``reason=R``),
                                              with the same rules as buffers
``sinks[S][i][K]``, sink ``name`` N           ``daqd_sink_K_total{stream=S,sink=N}``,
                                              with the same rules as buffers
============================================  =====================================

Strings (paths, last errors) are left out, and so are rates: PromQL's
``rate()`` computes them.  The usual ``process_*`` metrics (CPU, memory,
descriptors) come with them.

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

__all__ = ["TABLE_GAUGES", "MetricsError", "MetricsServer", "SnapshotCollector"]

log = structlog.get_logger("daqd.metrics")

Snapshot = Mapping[str, Any]

_MAXIMA = frozenset(s.name.lower() for s in MAXIMA)
# The per-stream tables of the snapshot beside ``streams``, and their metric prefixes.
_TABLES = {"buffers": "buffer", "sinks": "sink"}

#: Numbers in a buffer's or sink's statistics that go up and down; every other
#: number there is monotonic and exposed as a counter.
TABLE_GAUGES = frozenset({"capacity", "size", "fill", "unfinished_files", "backlog"})


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
    """Metric families by name; the first type and label names seen for a name win."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[Metric, list[str]]] = {}
        self.conflicts = 0

    def add(self, kind: str, name: str, help_text: str, labels: dict[str, str],
            value: Any) -> None:
        number = _number(value)
        if number is None:
            return
        if name not in self.families:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            self.families[name] = (cls(name, help_text, labels=list(labels)), list(labels))
        family, label_names = self.families[name]
        if family.type != kind or list(labels) != label_names:
            self.conflicts += 1
            return
        family.add_metric(list(labels.values()), number)


class SnapshotCollector(Collector):
    """Turns the daemon's snapshot into metric families at each scrape.

    Parameters
    ----------
    snapshot
        Returns the daemon's snapshot (``{"state", "uptime", "streams",
        "buffers", "sinks", ...}``).  It is called from the HTTP server's
        thread, so it must be thread-safe.
    daemon
        The daemon's name for ``daqd_info``, unless the snapshot has ``daemon``.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], daemon: str = ""):
        self.snapshot = snapshot
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of one fresh snapshot."""
        snap = self.snapshot()              # an exception fails this scrape (HTTP 500)
        out = _Families()
        out.add("gauge", "daqd_info", "The daemon's name and version.",
                {"daemon": str(snap.get("daemon", self.daemon)), "version": __version__}, 1)
        if "state" in snap:
            out.add("gauge", "daqd_state", "The daemon's current state.",
                    {"state": str(snap["state"])}, 1)
        if snap.get("uptime") is not None:
            out.add("gauge", "daqd_uptime_seconds", "Seconds since the daemon started.", {},
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
    """Add a stream's counters (maxima and names also in its gauges are gauges) and gauges."""
    gauges = dict(fields.get("gauges") or {})
    counters = dict(fields.get("counters") or {})
    for key, value in counters.items():
        kind = "gauge" if key in _MAXIMA or key in gauges else "counter"
        out.add(kind, _metric_name("daqd", str(key)),
                f"daqd stream {'maximum' if key in _MAXIMA else kind} {key}.", labels, value)
    for key, value in gauges.items():
        if key not in counters:         # else the counters hold its value
            out.add("gauge", _metric_name("daqd", str(key)), f"daqd stream gauge {key}.",
                    labels, value)


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
    for key, value in fields.items():
        name = _metric_name("daqd", prefix, str(key))
        if key in ("counters", "gauges") and isinstance(value, Mapping):
            for sub, number in value.items():
                kind = "counter" if key == "counters" else "gauge"
                out.add(kind, _metric_name("daqd", prefix, str(sub)),
                        f"daqd {prefix} {kind} {sub}.", labels, number)
        elif prefix == "buffer" and key == "sinks" and isinstance(value, Mapping):
            # The buffer's account of each sink (its own cursor: written, lost
            # by reason, backlog), labelled by the sink's name.
            for sink, account in value.items():
                if isinstance(account, Mapping):
                    _add_table_entry(out, "buffer_sink", {**labels, "sink": str(sink)}, account)
        elif isinstance(value, Mapping):         # e.g. drops by reason
            for reason, number in value.items():
                out.add("counter", name, f"daqd {prefix} {key}, by reason.",
                        {**labels, "reason": str(reason)}, number)
        elif isinstance(value, bool):
            out.add("gauge", name, f"daqd {prefix} {key} (1 = true).", labels, int(value))
        else:
            kind = "gauge" if key in TABLE_GAUGES else "counter"
            out.add(kind, name, f"daqd {prefix} {kind} {key}.", labels, value)


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
