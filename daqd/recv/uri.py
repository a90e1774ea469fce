"""Source URIs (INTERFACES.md, "Sources"): the one parser.

Every place that reads a source URI (the configuration's checks, the sources
that open it, the ``[[simulate]]`` and ``daqd simulate`` targets, the port a
pcap sink writes in its frames) goes through `parse_uri`, so a URI means the
same everywhere and a bad one is refused with the same line at ``validate``
as at ``run``.

=================================  ===========================================
``udp://HOST:PORT``                 options ``interface=ADDR`` (multicast),
                                    ``gro=1|0``
``tcp://HOST:PORT``                 ``once=1|0``: serve one connection, as
                                    spead2 does (default: sender after sender);
                                    ``idle_timeout=SECONDS``: close a peer that
                                    sends nothing for so long (default 60, 0:
                                    never)
``pcap:PATH``                       ``port=P``: keep one destination port
``file:PATH`` (``-``: stdin)        (no options)
``sim:W1`` (``W2``, ``W3``)         ``rate=BYTES_PER_S``, ``heaps=N``
=================================  ===========================================

``file://PATH`` and ``pcap://PATH`` are accepted too (the ``//`` is dropped).
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daqd import _spead
from daqd.errors import SourceError

#: scheme -> the query options it takes
OPTIONS: Mapping[str, frozenset[str]] = {
    "udp": frozenset({"interface", "gro"}),
    "tcp": frozenset({"once", "idle_timeout"}),
    "pcap": frozenset({"port"}),
    "file": frozenset(),
    "sim": frozenset({"rate", "heaps"}),
}
SCHEMES = tuple(OPTIONS)
#: Schemes whose sources listen on a port (and may be a [[simulate]] target).
NETWORK_SCHEMES = ("udp", "tcp")

#: tcp:// ``idle_timeout=`` when not given (seconds), and the largest accepted.
TCP_IDLE_TIMEOUT = 60.0
TCP_IDLE_TIMEOUT_MAX = 7 * 86400

_SWITCH = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}


@dataclass(frozen=True)
class SourceUri:
    """A parsed source URI.

    Attributes
    ----------
    text : str
        The URI as written (error messages and statistics name it so).
    scheme : str
        ``udp``, ``tcp``, ``pcap``, ``file`` or ``sim``.
    host, port : str, int or None
        ``udp``/``tcp``: where to listen (or, as a target, where to send).
    path : str
        ``pcap``/``file``: the file (``-``: standard input); ``sim``: the workload.
    options : mapping of str to str
        The query options, each one the scheme takes.
    """

    text: str
    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def fail(self, problem: str) -> SourceError:
        """Return the one-line error for this URI."""
        return SourceError(f"{self.text}: {problem}")

    @property
    def listens(self) -> bool:
        """Whether the source binds a port (``udp://``, ``tcp://``)."""
        return self.scheme in NETWORK_SCHEMES

    def number(self, key: str, kind: type, minimum: float,
               maximum: float = math.inf) -> Any:
        """Option `key` as an int or a finite float in [minimum, maximum]; None if absent."""
        if key not in self.options:
            return None
        raw = self.options[key]
        what = "a whole number" if kind is int else "a number"
        try:
            value = float(raw)
            if kind is int:             # 7200 and 1e6 are whole numbers; 7200.9 and inf not
                if not value.is_integer():
                    raise ValueError(raw)
                value = int(value)
        except (ValueError, OverflowError):
            raise self.fail(f"{key}={raw!r} is not {what}") from None
        if not math.isfinite(value):
            raise self.fail(f"{key}={raw!r} is not a finite number")
        if not minimum <= value <= maximum:
            bounds = f">= {minimum}" if maximum == math.inf else f"{minimum} to {maximum}"
            raise self.fail(f"{key}={raw!r} must be {bounds}")
        return value

    def switch(self, key: str, default: bool) -> bool:
        """Option `key` as a boolean (1/0, on/off, true/false)."""
        if key not in self.options:
            return default
        value = _SWITCH.get(self.options[key].lower())
        if value is None:
            raise self.fail(f"{key}={self.options[key]!r} must be 1 or 0 (on/off, true/false)")
        return value

    @property
    def idle_timeout(self) -> float:
        """``tcp://``: seconds a peer may send nothing before it is closed (0: never)."""
        value = self.number("idle_timeout", float, 0, TCP_IDLE_TIMEOUT_MAX)
        return TCP_IDLE_TIMEOUT if value is None else float(value)

    @property
    def udp_port(self) -> int | None:
        """The UDP port this source's packets are addressed to, where it says.

        ``udp://`` and ``tcp://`` sources: the port they listen on; ``pcap:``:
        its ``port=`` option; others: None.
        """
        if self.listens:
            return self.port
        if self.scheme == "pcap":
            return self.number("port", int, 0, 65535)
        return None


def parse_uri(text: str, schemes: tuple[str, ...] = SCHEMES) -> SourceUri:
    """Parse and check a source URI (or a target: `schemes` narrows what is accepted).

    Everything that can be checked without opening anything is checked here:
    the scheme, HOST:PORT, a path, the workload name, the option names and
    their values.

    Raises
    ------
    SourceError
        One line naming the URI and what was expected.
    """
    scheme, sep, rest = text.partition(":")
    expected = ", ".join(s + ("://" if s in NETWORK_SCHEMES else ":") for s in schemes)
    if not sep or scheme not in schemes:
        raise SourceError(f"{text}: not a source URI (expected {expected})")
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - OPTIONS[scheme])
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[scheme])) or "none"
        raise SourceError(f"{text}: unknown option {unknown[0]!r} (expected: {allowed})")
    if scheme in NETWORK_SCHEMES:
        parts = urllib.parse.urlsplit(f"{scheme}:{rest}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise SourceError(f"{text}: bad port ({exc})") from None
        if not rest.startswith("//") or not host or port is None:
            raise SourceError(f"{text}: expected {scheme}://HOST:PORT")
        if ":" in host:
            # The sources are IPv4 sockets: refused here, not at run.
            raise SourceError(f"{text}: expected an IPv4 address or a host name, not {host!r}")
        uri = SourceUri(text, scheme, host=host, port=port, options=options)
    else:
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise SourceError(f"{text}: no path given")
        if scheme == "sim" and path not in _spead.WORKLOADS:
            raise SourceError(f"{text}: unknown workload {path!r} (expected "
                              + ", ".join("sim:" + w for w in _spead.WORKLOADS) + ")")
        uri = SourceUri(text, scheme, path=path, options=options)
    # Check option values now, so that they fail at validate, not at run.
    uri.switch("gro", True)
    uri.switch("once", False)
    uri.udp_port  # noqa: B018  (checks port=)
    uri.number("rate", float, 0)
    uri.number("heaps", int, 1)
    uri.idle_timeout  # noqa: B018  (checks idle_timeout=)
    return uri


def stream_udp_port(sources: tuple[str, ...] | list[str]) -> int | None:
    """Return the UDP port a stream's packets are addressed to (pcap sinks write it).

    The first source that says (a ``udp://``/``tcp://`` port, a ``pcap:``
    ``port=``), else None.
    """
    for text in sources:
        port = parse_uri(text).udp_port
        if port is not None:
            return port
    return None
