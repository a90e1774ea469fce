"""Source URIs (INTERFACES.md) turned into compiled readers.

Sockets and files are opened here, in Python, once; the returned reader does
all per-packet work without the GIL.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daqd import _spead
from daqd.errors import SourceError

DEFAULT_MAX_PACKET_SIZE = 9200
DEFAULT_SOCKET_BUFFER = 8 << 20
# <linux/in.h>; Python's socket module does not export it.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)


@dataclass
class Source:
    """An opened source: its reader, or a listener still waiting for a sender.

    Attributes
    ----------
    uri : str
        The URI it was opened from.
    reader : daqd._spead.Reader or None
        The compiled reader; None for ``tcp://`` until `wait_ready` accepts.
    warnings : list of str
        Things an operator should hear about (e.g. a smaller socket buffer).
    """

    uri: str
    reader: Any = None
    warnings: list[str] = field(default_factory=list)
    listener: socket.socket | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        """Whether the source ends by itself."""
        return bool(self.reader is not None and self.reader.finite)

    def wait_ready(self, timeout: float) -> bool:
        """Accept the TCP sender if there is one waiting; True once a reader exists."""
        if self.reader is not None:
            return True
        assert self.listener is not None
        self.listener.settimeout(timeout)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError:
            return False
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.options["socket_buffer"])
        reader = _spead.ByteStreamReader(
            conn.fileno(),
            max_packet_size=self.options["max_packet_size"],
            finite=False,
        )
        reader.keep(conn)
        self.reader = reader
        self.listener.close()
        self.listener = None
        return True

    def stop(self) -> None:
        """Make a blocked reader return at its next poll timeout."""
        if self.reader is not None:
            self.reader.stop()

    def close(self) -> None:
        """Release sockets, files and mappings."""
        if self.reader is not None:
            self.reader.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _host_port(uri: str, parts: Any) -> tuple[str, int]:
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SourceError(f"{uri}: bad port ({exc})") from None
    if not host or port is None:
        raise SourceError(f"{uri}: expected HOST:PORT")
    return host, port


def _query(uri: str, query: str, allowed: set[str]) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(params) - allowed
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise SourceError(f"{uri}: unknown option {sorted(unknown)[0]!r} (expected: {expected})")
    return params


def _number(uri: str, params: dict[str, str], key: str, kind: type, minimum: float) -> Any:
    if key not in params:
        return None
    try:
        value = kind(float(params[key])) if kind is int else kind(params[key])
    except ValueError:
        raise SourceError(f"{uri}: {key}={params[key]!r} is not a number") from None
    if value < minimum:
        raise SourceError(f"{uri}: {key}={params[key]!r} must be >= {minimum}")
    return value


SWITCH_VALUES = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}


def _switch(uri: str, params: dict[str, str], key: str, default: bool) -> bool:
    if key not in params:
        return default
    value = SWITCH_VALUES.get(params[key].lower())
    if value is None:
        raise SourceError(f"{uri}: {key}={params[key]!r} must be 1 or 0 (on/off, true/false)")
    return value


def set_receive_buffer(sock: socket.socket, requested: int, uri: str) -> list[str]:
    """Ask for SO_RCVBUF; return a warning if the kernel grants less."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, requested)
    # Linux reports twice the usable size it granted.
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < requested:
        return [
            f"{uri}: socket buffer is {granted} bytes, not the {requested} asked for; "
            f"raise net.core.rmem_max (sysctl -w net.core.rmem_max={requested})"
        ]
    return []


def _open_udp(uri: str, parts: Any, max_packet_size: int, socket_buffer: int) -> Source:
    host, port = _host_port(uri, parts)
    params = _query(uri, parts.query, {"interface", "gro"})
    gro = _switch(uri, params, "gro", True)
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise SourceError(f"{uri}: cannot resolve host {host!r}") from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        warnings = set_receive_buffer(sock, socket_buffer, uri)
        if addr.is_multicast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(addr), port))
            interface = params.get("interface", "0.0.0.0")
            try:
                mreq = socket.inet_aton(str(addr)) + socket.inet_aton(interface)
            except OSError:
                raise SourceError(
                    f"{uri}: interface={interface!r} is not an IPv4 address"
                ) from None
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            # Only this socket's own join: by default Linux also delivers the
            # group's datagrams arriving on any interface another socket (another
            # daemon) joined it on, mixing two interfaces' streams.
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        else:
            if "interface" in params:
                raise SourceError(f"{uri}: interface= applies to multicast groups only")
            sock.bind((str(addr), port))
        sock.setblocking(False)
    except SourceError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise SourceError(f"{uri}: cannot listen: {exc.strerror}") from None
    reader = _spead.UdpReader(sock, max_packet_size=max_packet_size, gro=gro)
    if gro and not reader.gro:
        warnings.append(f"{uri}: the kernel refused UDP_GRO (Linux >= 5.0 has it); "
                        "receiving one datagram per message")
    return Source(uri, reader, warnings)


def _open_tcp(uri: str, parts: Any, max_packet_size: int, socket_buffer: int) -> Source:
    host, port = _host_port(uri, parts)
    _query(uri, parts.query, set())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise SourceError(f"{uri}: cannot listen: {exc.strerror}") from None
    return Source(
        uri, None, [], sock, {"max_packet_size": max_packet_size, "socket_buffer": socket_buffer}
    )


def _file_path(uri: str, rest: str) -> str:
    path = rest[2:] if rest.startswith("//") else rest
    path, _, _ = path.partition("?")
    if not path:
        raise SourceError(f"{uri}: no path given")
    return path


def _open_file(uri: str, rest: str, max_packet_size: int) -> Source:
    path = _file_path(uri, rest)
    if path == "-":
        reader = _spead.ByteStreamReader(sys.stdin.fileno(), max_packet_size=max_packet_size)
        return Source(uri, reader)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"{uri}: cannot open: {exc.strerror}") from None
    reader = _spead.ByteStreamReader(f.fileno(), max_packet_size=max_packet_size)
    reader.keep(f)
    return Source(uri, reader)


def _open_pcap(uri: str, rest: str) -> Source:
    path = _file_path(uri, rest)
    params = _query(uri, rest.partition("?")[2], {"port"})
    port = _number(uri, params, "port", int, 0)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise SourceError(f"{uri}: cannot open: {exc.strerror}") from None
    try:
        reader = _spead.PcapReader(data, port=-1 if port is None else port)
    except ValueError as exc:
        raise SourceError(f"{uri}: {exc}") from None
    return Source(uri, reader)


def _open_sim(uri: str, rest: str) -> Source:
    workload, _, query = rest.partition("?")
    params = _query(uri, query, {"rate", "heaps"})
    if workload not in _spead.WORKLOADS:
        raise SourceError(f"{uri}: unknown workload {workload!r} (expected W1, W2 or W3)")
    rate = _number(uri, params, "rate", float, 0) or 0.0
    heaps = _number(uri, params, "heaps", int, 1) or 0
    return Source(uri, _spead.SimReader(workload, heaps=heaps, rate=rate))


def open_source(
    uri: str,
    *,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    socket_buffer: int = DEFAULT_SOCKET_BUFFER,
) -> Source:
    """Open a source URI.

    Parameters
    ----------
    uri : str
        ``udp://``, ``tcp://``, ``pcap:``, ``file:`` or ``sim:`` (INTERFACES.md).
    max_packet_size : int
        Largest packet accepted; longer datagrams are counted as truncated.
    socket_buffer : int
        SO_RCVBUF to ask for on sockets.

    Raises
    ------
    SourceError
        One line naming the URI and the problem.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep:
        raise SourceError(
            f"{uri}: not a source URI (expected udp://, tcp://, pcap:, file: or sim:)"
        )
    if scheme == "udp":
        return _open_udp(uri, urlsplit(uri), max_packet_size, socket_buffer)
    if scheme == "tcp":
        return _open_tcp(uri, urlsplit(uri), max_packet_size, socket_buffer)
    if scheme == "file":
        return _open_file(uri, rest, max_packet_size)
    if scheme == "pcap":
        return _open_pcap(uri, rest)
    if scheme == "sim":
        return _open_sim(uri, rest)
    raise SourceError(f"{uri}: unknown scheme {scheme!r} (expected udp, tcp, pcap, file or sim)")
