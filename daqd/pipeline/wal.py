"""The write-ahead log: records accepted by a buffer survive a crash.

The log is one append-only file of frames.  Every frame has the same header,
then its payload::

    magic "DQWL" | kind (1 byte) | seq (uint64) | length (uint32) | CRC-32 (uint32) | payload

(little-endian; the CRC covers the first four header fields and the payload).
Kinds:

- ``H`` header: JSON ``{"version": 1, "next_seq": N, "first_seq": F}``, first
  in every file; no record numbered below F is in the file (a compaction left
  those out).  ``first_seq`` is absent (or null) in logs written before it
  was recorded.
- ``R`` record: ``Record.encode()`` bytes of record number `seq`.
- ``D`` done mark: JSON ``{"sinks": {name: {"seq": S, "checkpoint": {...}}},
  "first_seq": F, "next_seq": N}`` (F as in the header, a second copy in every
  mark; N one past the highest record number logged so far).
  Sink `name` has written (or lost, counted) every record up to S, and its
  output then stood at `checkpoint`; the sink was synced first, and the files
  the checkpoint lists as pending are published (``commit()``) only after
  this frame is written.  Later marks update earlier ones per sink.
- ``S`` skip mark: JSON ``{"seqs": [...], "next_seq": N}``, records that left
  the buffer without being written (overwritten, popped, cleared); never
  replayed.  A compaction writes one with ``"absent": [[a, b], ...]``: the
  numbers in [a, b) from F up are not in the file (skipped, or counted lost
  before).

Opening a log reads it from the start.  A frame that is short, has the
wrong magic or kind, fails its CRC or numbers a record out of order is bad.
If a good frame follows (header and CRC check out, found by scanning forward
for the magic), the bytes between are a corrupt region: skipped, counted
(``corrupt_regions``, ``corrupt_bytes``) and the records it held counted
exactly in ``records_lost`` (from the record numbers on either side, less
those skipped or already done for every sink, and none below F); the log is
then compacted, so the region is gone.  Bytes of a payload that only look
like a frame are never taken: their CRC must check out too.  A bad frame with
no good one after it is corrupt too if it is whole (it ends within the file:
its CRC fails, or checks out only with another magic, kind or length).  The
regions after the last good record held the larger of: the numbers below the
highest ``next_seq`` a header, done or skip mark gives, and one record per
region that is one whole record frame; they take the next numbers, so none
is used twice.  With neither the header nor any done mark readable, F is
taken to be the first good record's number (logged: a region before it
counts as holding none).  A bad frame that runs past the end of the file (or
has no recognisable header) is the torn tail a crash in the middle of an
append leaves: the file is truncated there (``torn_truncations``,
``torn_bytes``), so a torn frame is never replayed as data.

Compaction rewrites the file as a header, the current done marks (if any),
a skip mark of the numbers absent from F up (if any) and the records some
sink still needs, into ``PATH.compact``, fsyncs it and renames it
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
from collections.abc import Iterator, Mapping, Sequence
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
# Buffers one writev() takes at most.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
# A payload: bytes, or buffers written back to back (`Record.encode_parts()`).
Buffer = bytes | bytearray | memoryview
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
    return frame_head(kind, seq, [payload]), payload


def frame_head(kind: bytes, seq: int, parts: Sequence[Buffer]) -> bytes:
    """Build the header of a frame whose payload is `parts` back to back.

    The CRC is computed over the parts where they are (no copy is made).
    """
    views = [memoryview(part).cast("B") for part in parts]
    head = _HEAD.pack(MAGIC, kind, seq, sum(v.nbytes for v in views))
    crc = zlib.crc32(head)
    for view in views:
        crc = zlib.crc32(view, crc)
    return head + _CRC.pack(crc)


def write_parts(fd: int, parts: Sequence[Buffer]) -> int:
    """Write `parts` back to back at the file's position: writev, no copy; return the bytes.

    A short write (rare for regular files) goes on from where it stopped;
    at most IOV_MAX buffers go into one call.
    """
    views = [v for v in (memoryview(part).cast("B") for part in parts) if v.nbytes]
    total = 0
    while views:
        batch = views[:_IOV_MAX]
        written = os.writev(fd, batch)
        total += written
        while written:
            if written >= views[0].nbytes:
                written -= views.pop(0).nbytes
            else:
                views[0] = views[0][written:]
                written = 0
    return total


@dataclass
class _Gap:
    """A corrupt region met while opening."""

    offset: int
    nbytes: int
    after: int          # the last good record's number before it (-1: none)
    before: int         # the next good record's number after it (-1: none yet)
    kind: bytes | None  # the region is one whole frame of this kind (None: unknown)


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
        self._absent_read: list[tuple[int, int]] = []   # while opening: compaction's holes
        # The first record number this file can hold (a compaction left out those
        # below); None for a log written before it was recorded.
        self._first_seq: int | None = None
        self._floor_known = False       # while opening: a header or done mark was read
        self._first_record: int | None = None   # while opening: the first good record
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
        self._absent_read.clear()
        if good == 0:
            self._first_seq = self._next_seq
            self._append_locked(KIND_HEADER, 0, self._header_payload(self._first_seq))
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
        A bad frame with no good one after it is a corrupt complete frame if
        it is whole (`_whole_frame`): skipped and counted like a region;
        otherwise it is the torn tail.
        """
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                offset = 0
                last_record = -1
                gaps: list[_Gap] = []
                while offset < size:
                    why, end = self._check_frame(data, offset, last_record)
                    if why is None:
                        kind, seq = self._take_frame(data, offset, end)
                        if kind == KIND_RECORD:
                            if gaps and gaps[-1].before < 0:
                                gaps[-1].before = seq
                            last_record = seq
                            if self._first_record is None:
                                self._first_record = seq
                        offset = end
                        continue
                    found = self._resync(data, offset, last_record)
                    # (a record numbered out of order has a good CRC: not a damaged frame)
                    sane = why != "record numbers out of order"
                    if found is None:
                        whole = self._whole_frame(data, offset, size) if sane else None
                        if whole is None:
                            log.warning("write-ahead log has a torn or corrupt tail; truncated",
                                        path=str(self.path), offset=offset, why=why,
                                        discarded_bytes=size - offset)
                            break
                        # A complete frame that fails its CRC with nothing good after
                        # it: corrupt, not torn (a torn frame runs past the end).
                        found = whole[2]
                    else:
                        whole = self._whole_frame(data, offset, found) if sane else None
                        if whole is not None and whole[2] != found:
                            whole = None        # more than one frame: what it held is unknown
                    if gaps and gaps[-1].before < 0:    # no record since the last region
                        gaps[-1].before = gaps[-1].after + 1
                    gaps.append(_Gap(offset, found - offset, last_record, -1,
                                     None if whole is None else whole[0]))
                    event = ("write-ahead log has a corrupt frame; skipped to the next good one"
                             if found < size else "write-ahead log has a corrupt last frame; "
                             "skipped")
                    log.warning(event, path=str(self.path), offset=offset, why=why,
                                skipped_bytes=found - offset)
                    offset = found
                self._count_gaps(gaps, last_record)
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

    def _whole_frame(self, data: mmap.mmap, offset: int,
                     limit: int) -> tuple[bytes, int, int] | None:
        """Return the bad frame at `offset` if it is whole, (kind, seq, end); else None.

        The frame must end by `limit` (the next good frame, or the end of the
        file).  A crash in the middle of an append leaves a prefix of a good
        frame: its header, if complete, is intact and says the frame runs past
        the end of the file, so it is never whole.  A frame that ends in time
        is whole, and damaged: its kind is the one its header gives, unless the
        CRC checks out with the magic and another kind (then those bytes were
        the damaged ones), or with the length that makes it end at `limit` (the
        length was).  A bad magic with no CRC that checks out: not a frame.
        """
        if offset + HEADER_BYTES > limit:
            return None
        magic, kind, seq, length = _HEAD.unpack_from(data, offset)
        (crc,) = _CRC.unpack_from(data, offset + _HEAD.size)
        end = offset + HEADER_BYTES + length
        if end <= limit:
            payload = data[offset + HEADER_BYTES:end]
            for k in _KINDS:
                if zlib.crc32(payload, zlib.crc32(_HEAD.pack(MAGIC, k, seq, length))) == crc:
                    return k, seq, end
        if magic != MAGIC or kind not in _KINDS:
            return None
        rest = limit - offset - HEADER_BYTES
        if rest != length and zlib.crc32(
                data[offset + HEADER_BYTES:limit], zlib.crc32(_HEAD.pack(magic, kind, seq, rest))) \
                == crc:
            return kind, seq, limit
        return (kind, seq, end) if end <= limit else None

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

    def _count_gaps(self, gaps: list[_Gap], last_record: int) -> None:
        """Count the records lost in skipped regions, exactly, from the record numbers.

        Record numbers increase by one from frame to frame, except where
        records were skipped (never to be written) or every sink is done with
        them (a compaction leaves both out, and lists the numbers it left out
        above its first record): the numbers missing between the good records
        on either side of a region, less those, were in it.  Below the floor
        (`_floor`) no number counts.

        After the last good record there is no number on the far side: the
        regions there held the records numbered below the highest `next_seq`
        a header, done or skip mark gives, and at least one for each region
        that is one whole record frame (a corrupt last frame, or one followed
        by control frames only); they take the next numbers, so that none is
        used twice.
        """
        if not gaps:
            return
        floor, file_floor = self._floor()
        counts = []
        for gap in gaps:
            if gap.after == last_record:
                break               # the regions after the last good record: below
            counts.append(self._not_absent(max(gap.after + 1, floor), gap.before))
        tail = gaps[len(counts):]
        if tail:
            first = max(last_record + 1, file_floor)
            held = max(self._not_absent(first, self._next_seq),
                       sum(1 for gap in tail if gap.kind == KIND_RECORD))
            numbers = self._present_numbers(first, held)
            if numbers:
                self._next_seq = max(self._next_seq, numbers[-1] + 1)
            lost = sum(1 for seq in numbers if seq >= floor)
            # One each to the whole record frames (as far as there are), the rest to the last.
            for gap in tail:
                counts.append(min(lost, int(gap.kind == KIND_RECORD)))
                lost -= counts[-1]
            counts[-1] += lost
        for gap, lost in zip(gaps, counts, strict=True):
            self._counts["corrupt_regions"] += 1
            self._counts["corrupt_bytes"] += gap.nbytes
            self._counts["records_lost"] += lost
            log.error("write-ahead log: a corrupt region was skipped; the records in it are "
                      "lost", path=str(self.path), offset=gap.offset, bytes=gap.nbytes,
                      records_lost=lost, after_record=gap.after,
                      next_record=gap.before if gap.before >= 0 else None)

    def _floor(self) -> tuple[int, int]:
        """Return the lowest record number a region can have lost, and the file held.

        The file holds no record below its first number (`first_seq`, in the
        header and in every done mark); one every sink is done with is not
        lost.  With neither a header nor a done mark readable, the file's
        first number is taken to be the first good record's: a region before
        it is then counted as holding none (logged).  A log written before
        `first_seq` was recorded: from 0.
        """
        if self._first_seq is not None:
            file_floor = self._first_seq
        elif self._floor_known:
            file_floor = 0
        else:
            log.warning("write-ahead log: neither its header nor a done mark is readable; "
                        "records before the first readable one are not counted",
                        path=str(self.path), first_record=self._first_record)
            file_floor = self._first_record if self._first_record is not None else self._next_seq
        return max(file_floor, self._min_done() + 1), file_floor

    def _not_absent(self, low: int, high: int) -> int:
        """Return how many numbers in [low, high) no skip mark or compaction left out."""
        if high <= low:
            return 0
        absent = sum(max(0, min(high, b) - max(low, a)) for a, b in self._absent_read)
        absent += sum(1 for seq in self._skips_read if low <= seq < high and not any(
            a <= seq < b for a, b in self._absent_read))
        return high - low - absent

    def _present_numbers(self, low: int, count: int) -> list[int]:
        """Return the first `count` numbers from `low` up that nothing left out."""
        numbers: list[int] = []
        seq = low
        while len(numbers) < count:
            for a, b in self._absent_read:
                if a <= seq < b:
                    seq = b
            if seq in self._skips_read:
                seq += 1
                continue
            numbers.append(seq)
            seq += 1
        return numbers

    def _header_payload(self, first_seq: int | None) -> bytes:
        return _json({"version": VERSION, "next_seq": self._next_seq, "first_seq": first_seq})

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
            self._take_first_seq(info)
        elif kind == KIND_DONE:
            info = json.loads(payload)
            for name, mark in info["sinks"].items():
                self._done[name] = DoneMark(int(mark["seq"]), dict(mark["checkpoint"]))
                self._next_seq = max(self._next_seq, int(mark["seq"]) + 1)
            self._take_first_seq(info)
        else:
            info = json.loads(payload)
            self._next_seq = max(self._next_seq, int(info.get("next_seq", 0)))
            for skipped in info["seqs"]:
                self._skip_locked(int(skipped))
                self._skips_read.add(int(skipped))
            self._absent_read += [(int(a), int(b)) for a, b in info.get("absent", ())]

    def _take_first_seq(self, info: dict[str, Any]) -> None:
        self._next_seq = max(self._next_seq, int(info.get("next_seq", 0)))
        self._floor_known = True
        if info.get("first_seq") is not None:
            self._first_seq = int(info["first_seq"])

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

    def append(self, seq: int, payload: Buffer | Sequence[Buffer]) -> None:
        """Log record number `seq` (numbers must increase).

        `payload` is the record's encoding, as bytes or as the buffers
        `encode_parts()` gives: those are checksummed and written where they
        are, so a chunk's data is not copied.

        Raises
        ------
        WalFull
            No room under `max_bytes`, even after compaction.
        OSError
            The write failed; the file was rolled back to where it was.
        """
        parts = [payload] if isinstance(payload, bytes | bytearray | memoryview) else payload
        size = HEADER_BYTES + sum(memoryview(part).nbytes for part in parts)
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
            offset = self._append_locked(KIND_RECORD, seq, parts)
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
            self._append_locked(KIND_DONE, 0, self._done_payload(done, self._first_seq))
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
            self._append_locked(KIND_SKIP, 0, _json({"seqs": seqs, "next_seq": self._next_seq}))
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

    def _append_locked(self, kind: bytes, seq: int, payload: bytes | Sequence[Buffer]) -> int:
        """Write one frame at the end; roll back on failure.  Its offset."""
        parts = [payload] if isinstance(payload, bytes) else payload
        head = frame_head(kind, seq, parts)
        start = self._size
        try:
            total = write_parts(self._fd, [head, *parts])
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

    def _done_payload(self, done: Mapping[str, DoneMark], first_seq: int | None) -> bytes:
        return _json({"sinks": {name: {"seq": m.seq, "checkpoint": m.checkpoint}
                                for name, m in done.items()},
                      "first_seq": first_seq, "next_seq": self._next_seq})

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
        first_seq = keep[0] if keep else self._next_seq
        # The numbers between the records kept (and after the last) are records
        # skipped or already counted lost: say so, or a corrupt region next to
        # them would count them lost (again).
        absent, expected = [], first_seq
        for seq in [*keep, self._next_seq]:
            if seq > expected:
                absent.append([expected, seq])
            expected = seq + 1
        frames = [(KIND_HEADER, self._header_payload(first_seq))]
        if self._done:
            frames.append((KIND_DONE, self._done_payload(self._done, first_seq)))
        if absent:
            frames.append((KIND_SKIP, _json({"seqs": [], "absent": absent,
                                             "next_seq": self._next_seq})))
        where: dict[int, tuple[int, int]] = {}
        fd = -1
        try:
            with open(tmp, "wb") as out:
                for kind, payload in frames:
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
        self._first_seq = first_seq
        self._live_bytes = sum(s for _, s in where.values())
        self._unsynced = False
        self._counts["compactions"] += 1
