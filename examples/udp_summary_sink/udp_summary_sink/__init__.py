"""A daqd sink kind (``udp-summary``): each record's summary as one JSON datagram.

Declared in this package's pyproject.toml as an entry point of the group
``daqd.sinks``.  It follows daqd's Sink protocol (docs/dev-pipeline.md):
`write` prepares the datagrams of a flush (nothing is sent, so a failure
keeps nothing), `commit` sends what was written (as a file sink publishes its
finished files), `checkpoint` holds what was written but not sent, and
`recover` sends that after a crash.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from daqd.pipeline.records import ChunkRecord, HeapRecord

__all__ = ["UdpSummarySink", "summary"]


def summary(stream: str, record: Any) -> dict[str, Any]:
    """Return the JSON-able summary of a chunk or heap record."""
    if isinstance(record, ChunkRecord):
        return {"stream": stream, "chunk_id": record.chunk_id, "timestamp": record.timestamp,
                "heaps": record.heaps, "heaps_present": record.heaps_present,
                "sum": float(np.sum(record.data, dtype=np.float64))}
    return {"stream": stream, "cnt": int(record.cnt), "items": len(record.items)}


def _address(path: str) -> tuple[str, int]:
    """Return (host, port) of ``udp://HOST:PORT`` (ValueError otherwise)."""
    parts = urlsplit(path)
    if parts.scheme != "udp" or not parts.hostname or parts.port is None:
        raise ValueError(f"{path!r}: expected udp://HOST:PORT")
    return parts.hostname, parts.port


class UdpSummarySink:
    """Send a JSON summary of each record to ``path`` (``udp://HOST:PORT``).

    Parameters
    ----------
    context : daqd.sinks.SinkContext
        The stream's name and this sink's ``[[stream.sinks]]`` entry.
    """

    kind = "udp-summary"
    accepts = (ChunkRecord, HeapRecord)

    def __init__(self, context: Any):
        self.context = context
        self.name = f"{self.kind}:{context.config.path}"
        self.address = _address(context.config.path)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.pending: list[bytes] = []      # written, not sent (waiting for commit)
        self.counts = {"records": 0, "bytes": 0, "datagrams": 0, "errors": 0}
        self.last_error = ""

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse a `path` that is not ``udp://HOST:PORT`` (``daqd validate`` calls this)."""
        _address(config.path)

    def write(self, records: Iterable[Any]) -> None:
        """Prepare one datagram per record; `commit` sends them."""
        stream = self.context.stream
        encoded = [json.dumps(summary(stream, r)).encode() for r in records]
        self.pending.extend(encoded)
        self.counts["records"] += len(encoded)
        self.counts["bytes"] += sum(map(len, encoded))

    def sync(self) -> None:
        """Do nothing: a datagram sent is as durable as it will be."""

    def checkpoint(self) -> dict[str, Any]:
        """Return the datagrams written but not sent (`recover` sends them)."""
        return {"kind": self.kind, "path": self.context.config.path,
                "pending": [d.decode() for d in self.pending]}

    def commit(self) -> None:
        """Send the datagrams written so far (never raises: a failure is counted, kept)."""
        while self.pending:
            try:
                self.socket.sendto(self.pending[0], self.address)
            except OSError as exc:
                self.counts["errors"] += 1
                self.last_error = str(exc)
                return
            self.pending.pop(0)
            self.counts["datagrams"] += 1

    def reopen(self) -> None:
        """Do nothing: there are no files to finish."""

    def close(self) -> None:
        """Send what is still pending, then close the socket."""
        self.commit()
        self.socket.close()

    def stats(self) -> dict[str, Any]:
        """Return ``records``, ``bytes``, ``datagrams`` sent, ``errors``, ``pending``."""
        return {"name": self.name, "kind": self.kind, **self.counts,
                "last_error": self.last_error, "pending": len(self.pending)}

    @classmethod
    def recover(cls, context: Any, state: dict[str, Any]) -> dict[str, Any]:
        """After a crash: send the datagrams the checkpoint held."""
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in state.get("pending", []):
                sock.sendto(datagram.encode(), _address(context.config.path))
                sent += 1
        return {"file": None, "action": f"sent {sent} pending datagrams", "published": [],
                "orphans": [], "error": ""}
