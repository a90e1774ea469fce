"""The write-ahead log: records accepted by a buffer survive a crash.

The log is one append-only file of frames.  Every frame has the same header,
then its payload::

    magic "DQWL" | kind (1 byte) | seq (uint64) | length (uint32) | CRC-32 (uint32) | payload

(little-endian; the CRC covers the first four header fields and the payload).
Kinds:

- ``H`` header: JSON ``{"version": 1, "next_seq": N}``, first in every file.
- ``R`` record: ``Record.encode()`` bytes of record number `seq`.
- ``D`` done mark: JSON ``{"sinks": {name: {"seq": S, "checkpoint": {...}}}}``.
  Sink `name` has written (or lost, counted) every record up to S, and its
  output then stood at `checkpoint`; the sink was synced first, and the files
  the checkpoint lists as pending are published (``commit()``) only after
  this frame is written.  Later marks update earlier ones per sink.
- ``S`` skip mark: JSON ``{"seqs": [...]}``, records that left the buffer
  without being written (overwritten, popped, cleared); never replayed.

Opening a log reads it from the start.  A frame that is short, has the
wrong magic or kind, fails its CRC or numbers a record out of order is bad.
If a good frame follows (header and CRC check out, found by scanning forward
for the magic), the bytes between are a corrupt region: skipped, counted
(``corrupt_regions``, ``corrupt_bytes``) and the records it held counted
exactly in ``records_lost`` (from the record numbers on either side, less
those skipped or already done for every sink); the log is then compacted, so
the region is gone.  Bytes of a payload that only look like a frame are never
taken: their CRC must check out too.  A bad frame with no good one after it
is the torn tail a crash in the middle of an append leaves: the file is
truncated there (``torn_truncations``, ``torn_bytes``), so a torn frame is
never replayed as data.

Compaction rewrites the file as a header, the current done marks and the
records some sink still needs, into ``PATH.compact``, fsyncs it and renames it
over the log (then fsyncs the directory): a crash leaves either the old or the
new file, and a stale ``PATH.compact`` is removed at the next open.

Size bound: a record that would take the file beyond `max_bytes` first causes
a compaction; if there is still no room, `append` raises `WalFull` (counted)
and the buffer treats the record as arriving at a full buffer.  Done and skip
marks are small and always written, since they are what frees space.

Fsync policies: ``every-record`` (fdatasync after each record, before `put`
returns), ``every-flush`` (at the start of each flush for the records, and
after its done mark; sinks are synced before the mark), ``never`` (survives a
process crash, not a power cut).  Compaction always fsyncs.
"""

from __future__ import annotations

import collections
import fcntl
import json
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daqd.pipeline.durable import fsync_path

log = structlog.get_logger("daqd.buffer")

MAGIC = b"DQWL"
VERSION = 1
FSYNC_POLICIES = ("every-record", "every-flush", "never")
KIND_HEADER, KIND_RECORD, KIND_DONE, KIND_SKIP = b"H", b"R", b"D", b"S"
_KINDS = (KIND_HEADER, KIND_RECORD, KIND_DONE, KIND_SKIP)
# magic, kind, seq, payload length; then the CRC-32 of those bytes and the payload
_HEAD = struct.Struct("<4scQI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _CRC.size
# Compact after a flush once the file is this big and at least half of it is dead.
COMPACT_BYTES = 64 << 20


class WalFull(Exception):
    """No room for a record in the log, even after compaction."""


class WalFormatError(Exception):
    """The file is a log of another format version (left untouched)."""


@dataclass(frozen=True)
class DoneMark:
    """Where one sink stands: every record up to `seq` is written, output at `checkpoint`."""

    seq: int
    checkpoint: dict[str, Any]


def frame(kind: bytes, seq: int, payload: bytes) -> tuple[bytes, bytes]:
    """Build a frame: its header and its payload, to be written back to back."""
    head = _HEAD.pack(MAGIC, kind, seq, len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))), payload


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class WriteAheadLog:
    """An append-only, CRC-framed log of one buffer's records and done marks.

    Opening recovers: the torn tail (if any) is truncated, and `done`,
    `next_seq` and `records` describe what the log holds.  Thread-safe: the
    producer appends records while the flusher writes done marks.

    Parameters
    ----------
    path : path-like
        The log file (created if missing).
    fsync : str
        ``"every-record"``, ``"every-flush"`` or ``"never"``.
    max_bytes : int
        Bound on the file size (see the module notes).
    compact_bytes : int, optional
        Compact after a done mark once the file is this big and at least half
        dead (default: the smaller of half `max_bytes` and 64 MiB).

    Raises
    ------
    OSError
        The file cannot be opened, or another process holds it.
    WalFormatError
        The file is a log of another format version.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: str = "every-flush",
                 max_bytes: int = 1 << 30, compact_bytes: int | None = None):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync: {fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        self.path = Path(path)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.compact_bytes = compact_bytes if compact_bytes is not None else min(
            max_bytes // 2, COMPACT_BYTES)
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._next_seq = 0
        self._done: dict[str, DoneMark] = {}
        self._order: collections.deque[int] = collections.deque()     # record seqs, in order
        self._where: dict[int, tuple[int, int]] = {}        # seq -> (frame offset, frame bytes)
        self._skipped: set[int] = set()
        self._live_bytes = 0        # frames of records some sink still needs
        self._unsynced = False
        self._counts: collections.Counter[str] = collections.Counter()
        self._skips_read: set[int] = set()      # while opening: every skip mark's records
        self._open()

    # -- opening and recovery ------------------------------------------------

    def _open(self) -> None:
        stale = self._compact_path()
        if stale.exists():
            stale.unlink()
            log.warning("removed an unfinished write-ahead log compaction", path=str(stale))
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise OSError(exc.errno, f"write-ahead log {self.path} is in use by another "
                          "process") from None
        try:
            good = self._scan()
        except WalFormatError:
            os.close(self._fd)
            raise
        size = os.fstat(self._fd).st_size
        if good < size:
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
            self._counts["torn_truncations"] += 1
            self._counts["torn_bytes"] += size - good
        self._size = good
        self._skips_read.clear()
        if good == 0:
            self._append_locked(KIND_HEADER, 0, _json(
                {"version": VERSION, "next_seq": self._next_seq}))
            self._sync_locked()
            if self.fsync != "never":
                fsync_path(self.path.parent, directory=True)      # the new file's name, too
        self._prune_locked()
        if self._counts["corrupt_regions"]:
            self._compact_locked()      # the corrupt bytes go: the next open finds none

    def _scan(self) -> int:
        """Read every good frame; return the offset where the good part ends.

        A bad frame followed by a good one is a corrupt region in the middle:
        it is skipped (`_resync`), and the records it held are counted lost.
        A bad frame with no good one after it is the torn tail.
        """
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                offset = 0
                last_record = -1
                gaps: list[tuple[int, int, int, int]] = []  # (offset, bytes, after, before)
                while offset < size:
                    why, end = self._check_frame(data, offset, last_record)
                    if why is None:
                        kind, seq = self._take_frame(data, offset, end)
                        if kind == KIND_RECORD:
                            if gaps and gaps[-1][3] < 0:
                                gaps[-1] = (*gaps[-1][:3], seq)
                            last_record = seq
                        offset = end
                        continue
                    found = self._resync(data, offset, last_record)
                    if found is None:
                        log.warning("write-ahead log has a torn or corrupt tail; truncated",
                                    path=str(self.path), offset=offset, why=why,
                                    discarded_bytes=size - offset)
                        self._count_gaps(gaps)
                        return offset
                    if gaps and gaps[-1][3] < 0:    # no record since the last region
                        gaps[-1] = (*gaps[-1][:3], gaps[-1][2] + 1)
                    gaps.append((offset, found - offset, last_record, -1))
                    log.warning("write-ahead log has a corrupt frame; skipped to the next good "
                                "one", path=str(self.path), offset=offset, why=why,
                                skipped_bytes=found - offset)
                    offset = found
                self._count_gaps(gaps)
                return offset

    def _check_frame(self, data: mmap.mmap, offset: int,
                     last_record: int) -> tuple[str | None, int]:
        """Why the frame at `offset` is not good (None if it is), and where it ends."""
        if offset + HEADER_BYTES > len(data):
            return "short header", -1
        magic, kind, seq, length = _HEAD.unpack_from(data, offset)
        (crc,) = _CRC.unpack_from(data, offset + _HEAD.size)
        if magic != MAGIC or kind not in _KINDS:
            return "bad magic or kind", -1
        end = offset + HEADER_BYTES + length
        if end > len(data):
            return "short payload", -1
        head = data[offset:offset + _HEAD.size]
        if zlib.crc32(data[offset + HEADER_BYTES:end], zlib.crc32(head)) != crc:
            return "CRC mismatch", end
        if kind == KIND_RECORD and seq <= last_record:
            return "record numbers out of order", end
        return None, end

    def _take_frame(self, data: mmap.mmap, offset: int, end: int) -> tuple[bytes, int]:
        """Apply the good frame at `offset` (a control frame that makes no sense: skipped)."""
        _, kind, seq, _ = _HEAD.unpack_from(data, offset)
        try:
            self._apply(kind, seq, data[offset + HEADER_BYTES:end], offset)
        except (ValueError, KeyError, TypeError):
            self._counts["unreadable_frames"] += 1
            log.warning("write-ahead log frame unreadable; skipped", path=str(self.path),
                        offset=offset, kind=kind.decode(errors="replace"))
            return b"", seq
        return kind, seq

    def _resync(self, data: mmap.mmap, bad: int, last_record: int) -> int | None:
        """Find the next good frame after the bad one at `bad`: its offset, or None.

        A good frame is one whose header and CRC check out, so bytes inside a
        payload that merely look like a header are never taken.  When the bad
        frame's own header is intact (its payload failed the CRC), the frame
        after it is tried first, so that frames embedded in its payload are
        not even looked at.
        """
        if bad + HEADER_BYTES <= len(data):
            magic, kind, _, length = _HEAD.unpack_from(data, bad)
            after = bad + HEADER_BYTES + length
            if magic == MAGIC and kind in _KINDS and after < len(data) \
                    and self._check_frame(data, after, last_record)[0] is None:
                return after
        candidate = data.find(MAGIC, bad + 1)
        while candidate >= 0:
            if self._check_frame(data, candidate, last_record)[0] is None:
                return candidate
            candidate = data.find(MAGIC, candidate + 1)
        return None

    def _count_gaps(self, gaps: list[tuple[int, int, int, int]]) -> None:
        """Count the records lost in skipped regions, exactly, from the record numbers.

        Record numbers increase by one from frame to frame, except where
        records were skipped (never to be written) or every sink is done with
        them (a compaction leaves both out): the numbers missing between the
        good records on either side of a region, less those, were in it.
        """
        done = self._min_done()
        for offset, nbytes, after, before in gaps:
            if before < 0:
                before = self._next_seq     # no record after it: up to the last number seen
            lost = sum(1 for seq in range(max(after, done) + 1, before)
                       if seq not in self._skips_read)
            self._counts["corrupt_regions"] += 1
            self._counts["corrupt_bytes"] += nbytes
            self._counts["records_lost"] += lost
            log.error("write-ahead log: a corrupt region was skipped; the records in it are "
                      "lost", path=str(self.path), offset=offset, bytes=nbytes,
                      records_lost=lost, after_record=after, next_record=before)

    def _apply(self, kind: bytes, seq: int, payload: bytes, offset: int) -> None:
        """Take one good frame into the in-memory state."""
        if kind == KIND_RECORD:
            size = HEADER_BYTES + len(payload)
            self._order.append(seq)
            self._where[seq] = (offset, size)
            self._live_bytes += size
            self._next_seq = max(self._next_seq, seq + 1)
        elif kind == KIND_HEADER:
            info = json.loads(payload)
            if info["version"] != VERSION:
                raise WalFormatError(f"{self.path}: write-ahead log format version "
                                     f"{info['version']}, this daqd reads {VERSION}")
            self._next_seq = max(self._next_seq, int(info["next_seq"]))
        elif kind == KIND_DONE:
            for name, mark in json.loads(payload)["sinks"].items():
                self._done[name] = DoneMark(int(mark["seq"]), dict(mark["checkpoint"]))
                self._next_seq = max(self._next_seq, int(mark["seq"]) + 1)
        else:
            for skipped in json.loads(payload)["seqs"]:
                self._skip_locked(int(skipped))
                self._skips_read.add(int(skipped))

    @property
    def next_seq(self) -> int:
        """One past the highest record number the log has seen."""
        return self._next_seq

    @property
    def done(self) -> dict[str, DoneMark]:
        """Each sink's last done mark."""
        with self._lock:
            return dict(self._done)

    def records(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Yield (seq, bytes) of the logged records numbered above `after`, not skipped."""
        with self._lock:
            seqs = [s for s in self._order if s > after and s not in self._skipped]
        for seq in seqs:
            with self._lock:        # looked up each time: a compaction may move frames
                where = self._where.get(seq)
                if where is None or seq in self._skipped:
                    continue
                offset, size = where
                data = os.pread(self._fd, size, offset)
            yield seq, data[HEADER_BYTES:]

    # -- appending -----------------------------------------------------------

    def append(self, seq: int, payload: bytes) -> None:
        """Log record number `seq` (numbers must increase).

        Raises
        ------
        WalFull
            No room under `max_bytes`, even after compaction.
        OSError
            The write failed; the file was rolled back to where it was.
        """
        size = HEADER_BYTES + len(payload)
        with self._lock:
            if seq < self._next_seq:
                raise ValueError(f"record {seq} is not after {self._next_seq - 1}")
            if self._size + size > self.max_bytes:
                if self._size > self._live_bytes:
                    self._compact_locked()
                if self._size + size > self.max_bytes:
                    self._counts["full"] += 1
                    raise WalFull(f"{self.path}: {self._size} + {size} bytes > "
                                  f"max_bytes {self.max_bytes}")
            offset = self._append_locked(KIND_RECORD, seq, payload)
            self._order.append(seq)
            self._where[seq] = (offset, size)
            self._live_bytes += size
            self._next_seq = seq + 1
            self._counts["records"] += 1
            if self.fsync == "every-record":
                self._sync_locked()

    def mark_done(self, marks: Mapping[str, DoneMark], replace: bool = False) -> None:
        """Log where sinks stand (they must be synced already); compact if worthwhile.

        Parameters
        ----------
        marks : mapping
            Sink name -> `DoneMark`, for the sinks that moved.
        replace : bool
            `marks` lists every sink there is; forget any other.
        """
        with self._lock:
            done = dict(marks) if replace else {**self._done, **marks}
            payload = _json({"sinks": {name: {"seq": m.seq, "checkpoint": m.checkpoint}
                                       for name, m in done.items()}})
            self._append_locked(KIND_DONE, 0, payload)
            self._done = done
            self._counts["done_marks"] += 1
            if self.fsync != "never":
                self._sync_locked()
            self._prune_locked()
            if self._size > self.compact_bytes and self._size - self._live_bytes >= self._size // 2:
                self._compact_locked()

    def skip(self, seqs: list[int]) -> None:
        """Log that these records left the buffer unwritten: never replay them."""
        with self._lock:
            seqs = [s for s in seqs if s in self._where and s not in self._skipped]
            if not seqs:
                return              # not in the log any more: nothing to say
            self._append_locked(KIND_SKIP, 0, _json({"seqs": seqs}))
            for seq in seqs:
                self._skip_locked(seq)
            self._counts["skip_marks"] += 1
            self._prune_locked()

    def sync_records(self) -> None:
        """``every-flush``: make the records logged so far durable (a flush starts)."""
        with self._lock:
            if self.fsync == "every-flush" and self._unsynced:
                self._sync_locked()

    def compact(self) -> None:
        """Rewrite the log with only what some sink still needs."""
        with self._lock:
            self._compact_locked()

    def close(self) -> None:
        """Sync (unless ``never``) and close."""
        with self._lock:
            if self._fd < 0:
                return
            if self.fsync != "never":
                self._sync_locked()
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, Any]:
        """Size, live records and the counters."""
        with self._lock:
            live = sum(1 for s in self._order if s not in self._skipped)
            return {"path": str(self.path), "bytes": self._size, "live_bytes": self._live_bytes,
                    "live_records": live, "next_seq": self._next_seq,
                    **{name: self._counts[name] for name in (
                        "records", "done_marks", "skip_marks", "compactions",
                        "compaction_errors", "fsyncs", "full", "torn_truncations",
                        "torn_bytes", "corrupt_regions", "corrupt_bytes", "records_lost",
                        "unreadable_frames")}}

    # -- internals (lock held) ----------------------------------------------

    def _append_locked(self, kind: bytes, seq: int, payload: bytes) -> int:
        """Write one frame at the end; roll back on failure.  Its offset."""
        head, body = frame(kind, seq, payload)
        start, total = self._size, len(head) + len(body)
        try:
            written = os.writev(self._fd, [head, body])
            if written < total:         # rare for regular files: finish the rest
                rest = memoryview(head + body)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass                    # the next open truncates the torn frame
            raise
        self._size = start + total
        self._unsynced = True
        return start

    def _sync_locked(self) -> None:
        os.fdatasync(self._fd)
        self._unsynced = False
        self._counts["fsyncs"] += 1

    def _min_done(self) -> int:
        return min((m.seq for m in self._done.values()), default=-1)

    def _skip_locked(self, seq: int) -> None:
        if seq in self._where and seq not in self._skipped and seq > self._min_done():
            self._skipped.add(seq)
            self._live_bytes -= self._where[seq][1]

    def _prune_locked(self) -> None:
        """Forget records every sink is done with (and skipped ones at the front)."""
        low = self._min_done()
        while self._order and (self._order[0] <= low or self._order[0] in self._skipped):
            seq = self._order.popleft()
            _, size = self._where.pop(seq)
            if seq in self._skipped:
                self._skipped.discard(seq)
            else:
                self._live_bytes -= size

    def _compact_path(self) -> Path:
        return self.path.with_name(self.path.name + ".compact")

    def _compact_locked(self) -> None:
        self._prune_locked()
        tmp = self._compact_path()
        keep = [s for s in self._order if s not in self._skipped]
        where: dict[int, tuple[int, int]] = {}
        fd = -1
        try:
            with open(tmp, "wb") as out:
                for kind, payload in (
                        (KIND_HEADER, _json({"version": VERSION, "next_seq": self._next_seq})),
                        (KIND_DONE, _json({"sinks": {
                            n: {"seq": m.seq, "checkpoint": m.checkpoint}
                            for n, m in self._done.items()}}))):
                    out.write(b"".join(frame(kind, 0, payload)))
                for seq in keep:
                    offset, size = self._where[seq]
                    where[seq] = (out.tell(), size)
                    out.write(os.pread(self._fd, size, offset))
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, self.path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self._counts["compaction_errors"] += 1
            log.error("write-ahead log compaction failed; keeping the old file",
                      path=str(self.path), error=str(exc))
            tmp.unlink(missing_ok=True)
            return
        fsync_path(self.path.parent, directory=True)
        os.close(self._fd)
        self._fd = fd
        self._size = size
        self._order = collections.deque(keep)
        self._where = where
        self._skipped = set()
        self._live_bytes = sum(s for _, s in where.values())
        self._unsynced = False
        self._counts["compactions"] += 1
