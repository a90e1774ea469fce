"""Source URIs (INTERFACES.md) turned into compiled readers.

Sockets and files are opened here, in Python, once; the returned reader does
all per-packet work without the GIL.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from daqd import _spead
from daqd.errors import SourceError
from daqd.recv.uri import SourceUri, parse_uri

DEFAULT_MAX_PACKET_SIZE: int = _spead.DEFAULT_MAX_PACKET_SIZE
DEFAULT_SOCKET_BUFFER = 8 << 20
# <linux/in.h>; Python's socket module does not export it.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
#: Why a multicast source takes one receive thread only (`split_problem`).
MULTICAST_SPLIT = ("every socket joined to a multicast group gets each datagram; only "
                   "unicast udp:// can be split")


@dataclass
class Source:
    """An opened source and its reader.

    Attributes
    ----------
    uri : str
        The URI it was opened from.
    reader : daqd._spead.Reader
        The compiled reader (``tcp://``: a `TcpServerReader`, listening).
    warnings : list of str
        Things an operator should hear about (e.g. a smaller socket buffer).
    sock : socket.socket or None
        ``udp://``: the bound socket the reader receives from.
    address : tuple or None
        ``udp://``, ``tcp://``: the (host, port) bound.
    thread : str
        The name of its receive thread: the URI, or ``URI#k`` for the k-th of a
        source's several threads (`daqd.recv.builder.Receiver.open` sets it).
    cpu : int or None
        The CPU its receive thread runs on (`pin_thread`); None: any.
    """

    uri: str
    reader: Any = None
    warnings: list[str] = field(default_factory=list)
    sock: socket.socket | None = None
    address: tuple[str, int] | None = None
    thread: str = ""
    cpu: int | None = None

    def __post_init__(self) -> None:
        self.thread = self.thread or self.uri

    def pin_thread(self) -> None:
        """Pin the calling thread (its receive thread) to `cpu`, if one is set (Linux).

        Raises
        ------
        SourceError
            The kernel refuses the CPU (e.g. taken away since the configuration was checked).
        """
        if self.cpu is None:
            return
        try:
            os.sched_setaffinity(0, {self.cpu})     # 0: the calling thread
        except OSError as exc:
            raise SourceError(f"{self.thread}: cannot run on CPU {self.cpu}: "
                              f"{exc.strerror}") from None

    @property
    def finite(self) -> bool:
        """Whether the source ends by itself."""
        return bool(self.reader is not None and self.reader.finite)

    @property
    def truncation(self) -> tuple[int, int] | None:
        """Say where a mapped ``file:`` truncated while it was read ended.

        (Its size when opened, where its bytes ended); None if it was not.
        """
        return getattr(self.reader, "truncation", None)

    @property
    def serves_connections(self) -> bool:
        """Whether the source is a TCP listener (connection counters and events)."""
        return isinstance(self.reader, _spead.TcpServerReader)

    def stop(self) -> None:
        """Make a blocked reader return at its next poll timeout."""
        if self.reader is not None:
            self.reader.stop()

    def close(self) -> None:
        """Release sockets, files and mappings."""
        if self.reader is not None:
            self.reader.close()


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


def _open_udp(u: SourceUri, max_packet_size: int, socket_buffer: int,
              reuse_port: bool = False, port: int | None = None) -> Source:
    """Bind a UDP socket (`reuse_port`: SO_REUSEPORT, on `port` if given, else the URI's)."""
    uri, host, params = u.text, u.host, u.options
    port = u.port if port is None else port
    gro = u.switch("gro", True)
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise SourceError(f"{uri}: cannot resolve host {host!r}") from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        warnings = set_receive_buffer(sock, socket_buffer, uri)
        if addr.is_multicast:
            if reuse_port:
                raise SourceError(f"{uri}: {host} is a multicast group: {MULTICAST_SPLIT}")
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
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    return Source(uri, reader, warnings, sock=sock, address=sock.getsockname())


#: tcp:// listen backlog: a burst of connections waits for accept() rather
#: than having its SYNs dropped (retried by the peers only after a second).
LISTEN_BACKLOG = 128
# Packets per batch of a tcp:// reader.  Its batch is cut from bytes already
# read (at most 256 KiB buffered per peer), so a larger batch only spares
# window_receive's per-batch work between packets that are there anyway: for W2
# (1 KiB packets) 1024 rather than the readers' 64 saves about 5 % of the
# instructions per packet.
TCP_BATCH = 1024


def _open_tcp(u: SourceUri, max_packet_size: int, socket_buffer: int) -> Source:
    """Listen, served by a TcpServerReader: peers one after another or at once.

    ``?once=1``: the first peer only, as spead2's TCP reader;
    ``?idle_timeout=SECONDS``: a peer silent for so long is closed (0: never).
    """
    uri, host, port = u.text, u.host, u.port
    once = u.switch("once", False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit the listener's receive buffer.
        warnings = set_receive_buffer(sock, socket_buffer, uri)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        address = sock.getsockname()
    except OSError as exc:
        sock.close()
        raise SourceError(f"{uri}: cannot listen: {exc.strerror}") from None
    reader = _spead.TcpServerReader(sock.detach(), max_packet_size=max_packet_size, once=once,
                                    idle_timeout=u.idle_timeout, batch=TCP_BATCH)
    return Source(uri, reader, warnings, address=address)


def _open_file(u: SourceUri, max_packet_size: int) -> Source:
    """Open a ``file:`` source: a regular file is read through a mapping, else read().

    A regular file is mapped read-only at its size now (a file that grows is
    read to that size; one truncated while it is read ends there, the bytes
    lost counted as ``file_bytes_truncated``); stdin (``file:-``), a FIFO, a
    device, a file that says it is empty (``/proc``) and a file its file
    system will not map are read with read() until their end.
    """
    uri, path = u.text, u.path
    if path == "-":
        return Source(uri, _spead.ByteStreamReader(sys.stdin.fileno(),
                                                   max_packet_size=max_packet_size))
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"{uri}: cannot open: {exc.strerror}") from None
    st = os.fstat(f.fileno())
    reader: _spead.ByteStreamReader | None = None
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        try:
            reader = _spead.ByteStreamReader(f.fileno(), max_packet_size=max_packet_size,
                                             mapped=True)
        except OSError:
            reader = None           # not mappable (ENODEV): read() it
    if reader is None:
        reader = _spead.ByteStreamReader(f.fileno(), max_packet_size=max_packet_size)
    reader.keep(f)
    return Source(uri, reader)


def _open_pcap(u: SourceUri) -> Source:
    uri, path, port = u.text, u.path, u.udp_port
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


def _open_sim(u: SourceUri) -> Source:
    rate = u.number("rate", float, 0) or 0.0
    heaps = u.number("heaps", int, 1) or 0
    return Source(u.text, _spead.SimReader(u.path, heaps=heaps, rate=rate))


def split_problem(uri: str) -> str:
    """Why `uri` cannot take several receive threads ("" if it can).

    Only a unicast ``udp://`` source can: one SO_REUSEPORT socket per thread,
    the kernel spreading flows over them by their hash.  A multicast group
    gives every socket that joined it a copy of each datagram; a file, a pipe,
    a pcap file, the generator and a TCP listener are one stream of bytes.
    """
    u = parse_uri(uri)
    if u.scheme != "udp":
        return f"a {u.scheme} source is one stream of packets; only udp:// can be split"
    try:
        multicast = ipaddress.ip_address(u.host).is_multicast
    except ValueError:
        multicast = False           # a host name: resolved (and checked) when opened
    if multicast:
        return MULTICAST_SPLIT
    return ""


def open_sources(uri: str, threads: int = 1, **options: Any) -> list[Source]:
    """Open a source URI once per receive thread (`open_source` arguments in `options`).

    ``threads > 1``: unicast ``udp://`` only (`split_problem`); `threads`
    sockets bound to the same address with SO_REUSEPORT (the first one's, so
    port 0 works), each with its own reader.

    Raises
    ------
    SourceError
        One line naming the URI and the problem; the sockets already open are closed.
    """
    if threads == 1:
        return [open_source(uri, **options)]
    problem = split_problem(uri)
    if problem:
        raise SourceError(f"{uri}: {threads} threads: {problem}")
    u = parse_uri(uri)
    out: list[Source] = []
    try:
        for _ in range(threads):
            port = out[0].address[1] if out and out[0].address else None
            source = _open_udp(u, options.get("max_packet_size", DEFAULT_MAX_PACKET_SIZE),
                               options.get("socket_buffer", DEFAULT_SOCKET_BUFFER),
                               reuse_port=True, port=port)
            out.append(source)
    except BaseException:
        for source in out:
            source.close()
        raise
    return out


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
    u = parse_uri(uri)
    if u.scheme == "udp":
        return _open_udp(u, max_packet_size, socket_buffer)
    if u.scheme == "tcp":
        return _open_tcp(u, max_packet_size, socket_buffer)
    if u.scheme == "file":
        return _open_file(u, max_packet_size)
    if u.scheme == "pcap":
        return _open_pcap(u)
    return _open_sim(u)
