"""The reference workloads W1-W3 (DESIGN.md): the one table, and a sender of them.

A workload is generated in compiled code (``_spead.SimReader``: the ``sim:``
source, ``daqd simulate``, ``daqd bench``); this module names its parameters
once and sends it to a network target: the ``[[simulate]]`` senders of a
daemon (`WorkloadSender`) and ``daqd simulate`` use it.
"""

from __future__ import annotations

import math
import socket
import threading
from dataclasses import dataclass
from typing import Any

from daqd import _spead
from daqd.errors import UsageProblem
from daqd.recv.descriptor_heap import descriptor_heap
from daqd.recv.uri import parse_uri

#: The immediate item every workload heap carries its timestamp in (SimReader's).
TIMESTAMP_ITEM: int = _spead.WORKLOAD_TIMESTAMP_ITEM
#: Bytes before a workload packet's payload: the SPEAD header and six item pointers.
PACKET_HEADER_BYTES: int = _spead.WORKLOAD_HEADER_BYTES
#: HEAP_CNT of the first heap a SimReader makes (by default).
FIRST_CNT: int = _spead.WORKLOAD_FIRST_CNT
#: The addressed item every workload heap carries its samples in (SimReader's).
DATA_ITEM: int = _spead.WORKLOAD_DATA_ITEM
#: The item a workload's descriptor heap carries the workload's name in.
NAME_ITEM = 0x3301


@dataclass(frozen=True)
class Workload:
    """One reference workload.

    Attributes
    ----------
    name : str
        ``W1``, ``W2`` or ``W3``.
    heap_bytes : int
        Payload bytes of a heap.
    packets_per_heap : int
        Packets each heap is sent as (all of equal size).
    timestamp_step : int
        Timestamp difference between consecutive heaps.
    """

    name: str
    heap_bytes: int
    packets_per_heap: int
    timestamp_step: int

    @property
    def packet_size(self) -> int:
        """Bytes of one whole packet (header and payload)."""
        return PACKET_HEADER_BYTES + self.heap_bytes // self.packets_per_heap

    def layout(self, heaps_per_chunk: int = 64) -> dict[str, int]:
        """Return the chunk layout (ChunkGroup / Spead2Placement arguments) of this workload."""
        return {"timestamp_item": TIMESTAMP_ITEM, "timestamp_step": self.timestamp_step,
                "heaps_per_chunk": heaps_per_chunk, "heap_bytes": self.heap_bytes}

    def descriptors(self) -> list[dict[str, Any]]:
        """Return the workload's items described (`daqd.recv.descriptors`' dicts).

        The timestamp (a 48-bit format), the samples (a numpy header:
        little-endian 16-bit words) and the workload's name (8-bit characters
        of variable length): a format, a numpy header and a variable
        dimension, what each ``bug_compat`` flag changes.
        """
        samples = repr({"descr": "<u2", "fortran_order": False,
                        "shape": (self.heap_bytes // 2,)})
        return [
            {"id": TIMESTAMP_ITEM, "name": "timestamp", "description": "the heap's timestamp",
             "shape": [], "format": [["u", 48]], "dtype": None},
            {"id": DATA_ITEM, "name": "samples", "description": "the heap's samples",
             "shape": [], "format": [], "dtype": samples},
            {"id": NAME_ITEM, "name": "workload", "description": "the reference workload",
             "shape": [None], "format": [["c", 8]], "dtype": None},
        ]

    def descriptor_packet(self, cnt: int, bug_compat: int = 0) -> bytes:
        """Return heap `cnt` of the workload's descriptors and its name.

        Written as spead2 writes it in a stream with `bug_compat`
        (`daqd.recv.descriptor_heap`).
        """
        return descriptor_heap(cnt, self.descriptors(), bug_compat,
                               items=[(NAME_ITEM, self.name.encode())])

    def udp_batch(self, gso: bool = True) -> int:
        """Packets per SimReader batch for sending this workload over UDP.

        A whole number of heaps; with `gso`, also a whole number of full UDP
        GSO sends (``_spead.udp_gso_segments``: 7 packets of W1 or W3, 60 of
        W2), and at least 56 packets.  Without: 64, the SimReader's default.
        """
        if not gso:
            return 64
        unit = math.lcm(self.packets_per_heap,
                        max(1, _spead.udp_gso_segments(self.packet_size)))
        return unit * max(1, 56 // unit)


#: name -> Workload, from the generator's own table.
WORKLOADS: dict[str, Workload] = {
    name: Workload(name, *params) for name, params in _spead.WORKLOADS.items()
}


def workload(name: str) -> Workload:
    """Return the workload called `name`.

    Raises
    ------
    UsageProblem
        No such workload.
    """
    try:
        return WORKLOADS[name]
    except KeyError:
        raise UsageProblem(f"unknown workload {name!r} (expected "
                           + ", ".join(WORKLOADS) + ")") from None


def udp_batch(name: str, gso: bool = True) -> int:
    """Packets per SimReader batch for sending workload `name` over UDP (see Workload)."""
    return workload(name).udp_batch(gso)


def connect(target: str) -> socket.socket:
    """Return a socket connected to ``udp://HOST:PORT`` or ``tcp://HOST:PORT``.

    Raises
    ------
    UsageProblem
        Not such a URI, or the connection is refused.
    """
    uri = parse_uri(target, ("udp", "tcp"))
    udp = uri.scheme == "udp"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.connect((uri.host, uri.port))
    except OSError as exc:
        sock.close()
        raise UsageProblem(f"{target}: cannot connect: {exc.strerror}") from None
    return sock


def send(source: Any, fd: int, mode: str, *, heaps: int, stop: bool,
         port: int = _spead.DEFAULT_UDP_PORT) -> tuple[int, int, int]:
    """Send `source` (a SimReader of `heaps` heaps) to `fd`, then a stop heap if `stop`.

    `mode` is ``udp`` (UDP GSO where the kernel has it), ``stream`` or
    ``pcap`` (frames to UDP `port`); returns (packets, bytes, datagrams the
    kernel refused).
    """
    sent = _spead.send(source, fd, mode, port=port, gso=True)
    if stop:
        last = _spead.ByteListReader([_spead.stop_packet(source.first_cnt + heaps)])
        _spead.send(last, fd, mode, port=port)
    return sent


class WorkloadSender:
    """A ``[[simulate]]`` sender in the daemon, in its own thread.

    It sends the configured workload to one of the daemon's own sources, so a
    configuration runs with no hardware.  `stop()` makes a running send return
    at its next batch.

    Parameters
    ----------
    config : SimulateConfig
        The ``[[simulate]]`` section: target, workload, rate, heaps, stop.
    """

    def __init__(self, config: Any):
        self.config = config
        self.source: Any = None
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.sent: dict[str, Any] = {}
        self.error = ""

    @property
    def running(self) -> bool:
        """Whether the sender thread is still sending."""
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Connect (errors surface here) and start sending."""
        c = self.config
        self.sock = connect(c.target)
        udp = self.sock.type == socket.SOCK_DGRAM
        self.source = _spead.SimReader(c.workload, heaps=c.heaps, rate=c.rate,
                                       batch=udp_batch(c.workload) if udp else 64)
        self.thread = threading.Thread(target=self._send, args=("udp" if udp else "stream",),
                                       name=f"simulate:{c.target}", daemon=True)
        self.thread.start()

    def _send(self, mode: str) -> None:
        c = self.config
        assert self.sock is not None
        try:
            packets, nbytes, dropped = send(self.source, self.sock.fileno(), mode,
                                            heaps=c.heaps, stop=c.stop and c.heaps > 0)
            self.sent = {"packets": packets, "bytes": nbytes, "send_dropped": dropped}
        except OSError as exc:
            self.error = f"{c.target}: {exc.strerror or exc}"
        finally:
            self.sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending and wait for the thread."""
        if self.source is not None:
            self.source.stop()
        if self.thread is not None:
            self.thread.join(timeout)
