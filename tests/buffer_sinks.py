"""Sinks and records for the buffer, flush and WAL tests.

`FileSink` is a minimal file sink that honours the sink protocol of
docs/dev-pipeline.md: it appends length-prefixed `Record.encode()` bytes,
rolls the file back (truncate) when a write fails, and its checkpoint is
``{"path", "size"}``; `recover_file` truncates a file back to a checkpoint.
`MemorySink` keeps what it is given, counts `commit()` calls and can be told
to fail.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

from daqd.pipeline.records import ChunkRecord, HeapRecord, PacketRecord, decode_record

_LENGTH = struct.Struct("<I")


class CountingRecord(HeapRecord):
    """A heap record that counts its release() calls (the buffer must call it once)."""

    def __init__(self, cnt: int, size: int = 8):
        super().__init__(cnt, {0x3300: bytes([cnt % 251]) * size})
        self.releases = 0

    def release(self) -> None:
        self.releases += 1


class MemorySink:
    """Keeps the records it writes; `fail` makes writes raise OSError (nothing kept)."""

    accepts = (ChunkRecord, HeapRecord, PacketRecord)

    def __init__(self, name: str = "memory", on_write: Any = None):
        self.name = name
        self.batches: list[list[Any]] = []
        self.threads: set[int] = set()
        self.fail = False
        self.on_write = on_write
        self.written = threading.Event()
        self.reopens: list[int] = []
        self.commits = 0

    @property
    def records(self) -> list[Any]:
        return [r for batch in self.batches for r in batch]

    @property
    def cnts(self) -> list[int]:
        return [r.cnt for r in self.records]

    def write(self, records: list[Any]) -> None:
        self.threads.add(threading.get_ident())
        if self.on_write is not None:
            self.on_write(records)
        if self.fail:
            raise OSError(28, "No space left on device (test)")
        self.batches.append(list(records))
        self.written.set()

    def sync(self) -> None:
        pass

    def reopen(self) -> None:
        self.reopens.append(threading.get_ident())

    def commit(self) -> None:
        self.commits += 1

    def checkpoint(self) -> dict[str, Any]:
        return {"records": len(self.records)}

    def stats(self) -> dict[str, Any]:
        return {"records": len(self.records)}


class FileSink:
    """Appends length-prefixed encoded records to one file; all or nothing per write."""

    accepts = (ChunkRecord, HeapRecord, PacketRecord)

    def __init__(self, path: str | os.PathLike[str], name: str | None = None):
        self.path = Path(path)
        self.name = name or f"file:{self.path.name}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.fail_after: int | None = None      # write this many records, then raise
        self.errors = 0

    def write(self, records: list[Any]) -> None:
        start = os.fstat(self.fd).st_size
        try:
            for i, record in enumerate(records):
                if self.fail_after is not None and i >= self.fail_after:
                    raise OSError(28, "No space left on device (test)")
                blob = record.encode()
                os.write(self.fd, _LENGTH.pack(len(blob)) + blob)
        except OSError:
            self.errors += 1
            os.ftruncate(self.fd, start)        # roll back: a retry never duplicates
            raise

    def sync(self) -> None:
        os.fsync(self.fd)

    def checkpoint(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": os.fstat(self.fd).st_size}

    def close(self) -> None:
        os.close(self.fd)

    def stats(self) -> dict[str, Any]:
        return {"bytes": os.fstat(self.fd).st_size, "errors": self.errors}


def recover_file(sink: Any, checkpoint: dict[str, Any]) -> None:
    """Bring the file a checkpoint names back to the size it recorded."""
    os.truncate(checkpoint["path"], checkpoint["size"])


def read_records(path: str | os.PathLike[str]) -> list[Any]:
    """Decode a FileSink file; raises ValueError on any malformed byte."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        if pos + _LENGTH.size > len(data):
            raise ValueError(f"torn length at {pos}")
        (n,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + n > len(data):
            raise ValueError(f"torn record at {pos}")
        out.append(decode_record(data[pos:pos + n]))
        pos += n
    return out


def numbered_record(n: int) -> HeapRecord:
    """Record number `n`: its payload says n, its size varies with n."""
    return HeapRecord(n, {0x3300: n.to_bytes(8, "little") * (4 + n % 13)})


def check_numbered(record: Any) -> int:
    """The number of a `numbered_record`, after checking its payload is intact."""
    n = record.cnt
    assert record.items == {0x3300: n.to_bytes(8, "little") * (4 + n % 13)}, n
    return n


def flush_never(buffer: Any) -> bool:
    """A flush predicate (``buffer_sinks:flush_never``) that is never due."""
    return False


def flush_always(buffer: Any) -> bool:
    """A flush predicate (``buffer_sinks:flush_always``) that is always due."""
    return True
