"""Totals across daemons: the stream messages of one stream name, merged.

An instrument split over several daemons (or hosts) publishes a
``stats.<stream>`` message per daemon for the same stream name.  `merge`
adds their ``counters``, ``rates`` and ``gauges`` (pool and ring sizes,
buffer fill, live heap bytes: all amounts); a maximum-mode counter such as
``max_batch``, published as a gauge, takes the largest value instead
(`daqd.recv.counters.MAXIMA`), and so do the data-time gauges (the newest
data time, the largest lag);
`Totals` keeps each daemon's latest message and says when a stream's totals
are due.  ``daqd stats --merge`` prints the merged messages, and a totals
row across daemons (``daqd top``) is meant to be this module's `Totals`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from daqd.recv.counters import MAXIMA

#: Counters and gauges merged by taking the largest value, not the sum.
MAXIMUM_COUNTERS = frozenset(stat.name.lower() for stat in MAXIMA)
#: Gauges of data time (`daqd.service.stream_runner`): instants, not amounts; merged
#: by the largest, the newest data time and the worst lag behind UTC.
DATA_TIME_GAUGES = frozenset({"newest_timestamp", "data_time_lag_seconds"})

#: The ``daemon`` of a merged message; ``daemons`` lists those merged.
MERGED = "merged"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _add(into: dict[str, Any], values: Mapping[str, Any], maxima: frozenset[str]) -> None:
    for name, value in values.items():
        if not _number(value):
            continue
        if name in maxima:
            into[name] = max(into.get(name, value), value)
        else:
            into[name] = into.get(name, 0) + value


def merge(messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge the stream messages of one stream name from several daemons.

    Parameters
    ----------
    messages : iterable of mapping
        ``stats.<stream>`` messages (`daqd.service.stats_publisher`), one per
        daemon, all of the same ``stream``.

    Returns
    -------
    dict
        A stream message: ``schema`` and ``stream`` of the first message,
        ``daemon`` = ``"merged"``, ``daemons`` (their names, in order),
        ``time`` (the newest), ``counters``, ``rates`` and ``gauges`` summed
        by name (maxima: the largest).  Non-numeric values are left out.

    Raises
    ------
    ValueError
        When `messages` is empty or names more than one stream.
    """
    messages = list(messages)
    if not messages:
        raise ValueError("nothing to merge")
    streams = {m.get("stream") for m in messages}
    if len(streams) != 1:
        raise ValueError(f"cannot merge different streams: {sorted(map(str, streams))}")
    counters: dict[str, Any] = {}
    rates: dict[str, Any] = {}
    gauges: dict[str, Any] = {}
    for message in messages:
        _add(counters, message.get("counters") or {}, MAXIMUM_COUNTERS)
        _add(rates, message.get("rates") or {}, frozenset())
        _add(gauges, message.get("gauges") or {}, MAXIMUM_COUNTERS | DATA_TIME_GAUGES)
    times = [m["time"] for m in messages if _number(m.get("time"))]
    merged: dict[str, Any] = {
        "schema": messages[0].get("schema"), "daemon": MERGED,
        "daemons": [str(m.get("daemon", "?")) for m in messages],
        "stream": messages[0].get("stream"), "counters": counters, "rates": rates,
        "gauges": gauges}
    if times:
        merged["time"] = max(times)
    return merged


class Totals:
    """The latest message of each (daemon, stream), and the streams' merged totals.

    `update` returns a stream's merged message once per round: when every
    daemon that has published that stream has a message newer than the
    last totals, or when one daemon publishes again before the others have
    (a daemon that stopped publishing delays the totals by one interval,
    never blocks them; its last message still counts).
    """

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Mapping[str, Any]]] = {}   # stream -> daemon -> msg
        self._fresh: dict[str, set[str]] = {}

    def update(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """Take one ``stats.<stream>`` message; the stream's totals when they are due."""
        stream = str(message.get("stream", "?"))
        daemon = str(message.get("daemon", "?"))
        fresh = self._fresh.setdefault(stream, set())
        daemons = self.latest.setdefault(stream, {})
        due = None
        if daemon in fresh:                     # a second message before the others': a round
            due = merge(daemons.values())
            fresh.clear()
        daemons[daemon] = message
        fresh.add(daemon)
        if due is None and fresh >= daemons.keys() and len(daemons) > 1:
            due = merge(daemons.values())
            fresh.clear()
        return due

    def totals(self, stream: str) -> dict[str, Any]:
        """Merge the latest message of each daemon for `stream`."""
        return merge(self.latest[stream].values())
