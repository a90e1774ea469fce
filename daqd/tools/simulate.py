"""``daqd simulate``: send a reference workload to a network target or a file."""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from daqd import _spead
from daqd.errors import UsageProblem


def udp_batch(workload: str, gso: bool = True) -> int:
    """Packets per SimReader batch for sending `workload` over UDP.

    A whole number of heaps; with `gso`, also a whole number of full UDP GSO
    sends (``_spead.udp_gso_segments``: 7 packets of W1 or W3, 60 of W2), and
    at least 56 packets.  Without: 64, the SimReader's default.
    """
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    if not gso:
        return 64
    size = 56 + heap_bytes // per_heap         # header and payload of one packet
    unit = math.lcm(per_heap, max(1, _spead.udp_gso_segments(size)))
    return unit * max(1, 56 // unit)


def _connect(uri: str, kind: int) -> socket.socket:
    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UsageProblem(f"{uri}: bad port") from None
    if not host or port is None:
        raise UsageProblem(f"{uri}: expected HOST:PORT")
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.connect((host, port))
    except OSError as exc:
        sock.close()
        raise UsageProblem(f"{uri}: cannot connect: {exc.strerror}") from None
    return sock


def simulate(
    target: str, workload: str, *, rate: float, heaps: int, stop: bool, port: int = 7148
) -> dict[str, Any]:
    """Send `heaps` heaps of `workload` to `target`; returns what was sent.

    Targets: ``udp://HOST:PORT`` (UDP GSO, or sendmmsg batches where the
    kernel refuses it: the same datagrams either way), ``tcp://HOST:PORT``,
    ``file:PATH`` (packets back to back; ``file:-`` is standard output) and
    ``pcap:PATH`` or any path ending in ``.pcap`` (a classic pcap file of
    UDP frames to `port`).  A stop heap follows unless `stop` is False.
    """
    scheme, _, rest = target.partition(":")
    batch = udp_batch(workload) if scheme == "udp" and workload in _spead.WORKLOADS else 64
    try:
        source = _spead.SimReader(workload, heaps=heaps, rate=rate, batch=batch)
    except ValueError as exc:
        raise UsageProblem(f"--workload: {exc}") from None
    if target.endswith(".pcap") and scheme not in ("file", "pcap"):
        scheme, rest = "pcap", target
    closer: Any = None
    if scheme in ("udp", "tcp"):
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        sock = _connect(target, kind)
        fd, mode, closer = sock.fileno(), ("udp" if scheme == "udp" else "stream"), sock
    elif scheme in ("file", "pcap"):
        if not heaps:
            raise UsageProblem(f"{target}: --heaps is required when writing a file")
        path = rest[2:] if rest.startswith("//") else rest
        if path == "-" and scheme == "file":
            fd, mode = sys.stdout.fileno(), "stream"
        else:
            if os.path.exists(path):
                raise UsageProblem(f"{target}: {path} exists; daqd never overwrites a file")
            try:
                closer = open(path, "xb")
            except OSError as exc:
                raise UsageProblem(f"{target}: cannot create: {exc.strerror}") from None
            fd, mode = closer.fileno(), ("pcap" if scheme == "pcap" else "stream")
            if mode == "pcap":
                closer.write(_spead.PCAP_FILE_HEADER)
                closer.flush()
    else:
        raise UsageProblem(f"{target}: unknown target (expected udp://, tcp://, file: or pcap:)")
    started = time.monotonic()
    try:
        packets, nbytes, dropped = _spead.send(source, fd, mode, port=port, gso=True)
        if stop:
            last = _spead.ByteListReader([_spead.stop_packet(source.first_cnt + heaps)])
            _spead.send(last, fd, mode, port=port)
    finally:
        if closer is not None:
            closer.close()
    seconds = time.monotonic() - started
    return {
        "target": target,
        "workload": workload,
        "heaps": heaps,
        "packets": packets,
        "bytes": nbytes,
        "send_dropped": dropped,
        "seconds": round(seconds, 3),
        "gbit_per_s": round(nbytes * 8 / seconds / 1e9, 3) if seconds > 0 else None,
    }


class Simulator:
    """A `[[simulate]]` sender running inside the daemon, in its own thread.

    It sends the configured workload to one of the daemon's own sources, so a
    configuration runs with no hardware.  `stop()` makes a running send return
    at its next batch.
    """

    def __init__(self, config: Any):
        self.config = config
        self.source: Any = None
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
        kind = socket.SOCK_DGRAM if c.target.startswith("udp:") else socket.SOCK_STREAM
        self.sock = _connect(c.target, kind)
        batch = udp_batch(c.workload) if c.target.startswith("udp:") else 64
        self.source = _spead.SimReader(c.workload, heaps=c.heaps, rate=c.rate, batch=batch)
        self.thread = threading.Thread(target=self._send, name=f"simulate:{c.target}",
                                       daemon=True)
        self.thread.start()

    def _send(self) -> None:
        c = self.config
        mode = "udp" if c.target.startswith("udp:") else "stream"
        try:
            packets, nbytes, dropped = _spead.send(self.source, self.sock.fileno(), mode,
                                                   gso=True)
            if c.stop and c.heaps:
                last = _spead.ByteListReader([_spead.stop_packet(self.source.first_cnt
                                                                  + c.heaps)])
                _spead.send(last, self.sock.fileno(), mode)
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
