"""What every sink kind shares: temporary files, rotation, rollback, fsync, stats.

`FileSink` implements the Sink protocol of docs/dev-pipeline.md around a few
format hooks; `ByteSink` fills those hooks for formats that are a stream of
bytes (binary, text, pcap).  The HDF5 sink fills them with h5py.

One `write(records)` is all or nothing.  Records may span several files (a
rotation inside one flush): the new files are created, every byte is written
and the fsync policy is applied.  If anything fails, the files created by this
write are deleted, the file that was current is cut back to where it stood
(truncate; datasets resized for HDF5), and `OSError` is raised, so a retry of
the same records never duplicates one.  The next `write()` first repairs what
the failure left: it reopens a file it had to close and recreates a directory
that vanished.

Nothing is published (renamed to its final name) during `write()`.  A file
finished by a rotation (size, age, an HDF5 chunk id going back) or by
`reopen()` becomes *pending*: complete, closed, still ``FINAL.tmp``, listed in
`checkpoint()`.  `commit()` publishes the pending files; the buffer calls it
once the write-ahead log's done mark covering their records (and listing them)
is logged, so that a crash never leaves a published file holding records the
log will replay.  `close()` finishes the current file and publishes
everything.  After a crash, `recover` publishes the pending files a checkpoint
lists and leaves any other ``.tmp`` file alone.

Observations (`daqd.pipeline.datatime`): a file holds the records of one
capture block, or of none.  A record whose `capture_block` is not the
file's starts a new file, decided record by record as the HDF5 "chunk id
goes back" rule is, so exactly whatever the flush boundaries.  Each file
knows the data time its records cover, ``written_start`` / ``written_end``
(ticks, ``[start, end)``, from `Timeline.span`), kept through rollbacks
(`_Mark`) and checkpoints (so `recover` can write them), and `file_metadata`
gives what the formats write into a file: the stream's clock, the sink's
extra metadata (an event file's trigger window), the capture block (id,
start, stop) and the written span.  Formats write it when a file starts and
again when it is finished (`_seal`: a block's stop may be set meanwhile).
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daqd.pipeline.datatime import ARRIVAL_CLOCK, CaptureBlock
from daqd.pipeline.durable import fsync_directory_of, fsync_path
from daqd.sinks.paths import (
    PATH_FIELDS,
    TMP_SUFFIX,
    PathTemplate,
    is_free,
    publish,
    template_glob,
    with_suffix_number,
)

if TYPE_CHECKING:
    from daqd.sinks import SinkContext

FSYNC_POLICIES = ("never", "on-rotate", "every-flush")


@dataclass(slots=True)
class Piece:
    """One record ready to write: its size in the file and its format's payload."""

    record: Any
    size: int
    payload: Any
    key: int = 0                # chunk id (or heap counter) for {chunk_id} and ordering
    dropped: int = 0            # parts of the record the format could not hold (pcap)
    span: tuple[int, int] | None = None     # data time [start, end) in ticks (set by FileSink)


@dataclass
class SinkFile:
    """One output file while it is written (and until it is published)."""

    final: str
    tmp: str
    seq: int
    opened: float                   # monotonic time it was started
    handle: Any = None              # the format's open file
    identity: tuple[int, int] = (0, 0)   # (st_dev, st_ino) of tmp, to notice a vanished file
    bytes: int = 0
    records: int = 0
    last_key: int | None = None
    dirty: bool = True              # written (or created) since it was last fsynced
    dir_synced: bool = False
    broken: bool = False            # a failed rollback closed it; reopen before use
    block: CaptureBlock | None = None   # the capture block of its records (None: outside)
    written: tuple[int, int] | None = None   # data time its records cover, [start, end) ticks

    def describe(self) -> dict[str, Any]:
        """Where this file stands (for `FileSink.checkpoint`)."""
        out = {"tmp": self.tmp, "final": self.final, "seq": self.seq,
               "bytes": self.bytes, "records": self.records}
        if self.written is not None:
            out["written_start"], out["written_end"] = self.written
        if self.block is not None:
            b = self.block
            out["capture_block"] = {"id": b.id, "start": b.start, "stop": b.stop}
        return out

    @staticmethod
    def recovered(state: dict[str, Any]) -> tuple[CaptureBlock | None, tuple[int, int] | None]:
        """Return the capture block and written span a `describe` dict holds (after a crash)."""
        block = state.get("capture_block")
        start, end = state.get("written_start"), state.get("written_end")
        return (CaptureBlock(**block) if block else None,
                None if start is None or end is None else (int(start), int(end)))

    def describe_pending(self) -> dict[str, Any]:
        """Describe this file as pending, waiting to be published (`FileSink.checkpoint`)."""
        return {"tmp": self.tmp, "final": self.final, "records": self.records}


@dataclass
class _Mark:
    """Where a file stood before a write, to cut it back to."""

    bytes: int
    records: int
    last_key: int | None
    written: tuple[int, int] | None = None


@dataclass
class _Counters:
    bytes: int = 0
    records: int = 0
    files: int = 0
    errors: int = 0
    lost_records: int = 0
    last_error: str = ""
    last_file: str = ""


class FileUnusable(OSError):
    """A file the sink cannot open again (e.g. HDF5 metadata damaged by a failed write).

    Its records are counted in ``lost_records``; it is left as ``FINAL.tmp``
    and the next write starts a new file.
    """


def describe_error(exc: BaseException) -> str:
    """``ENOSPC: No space left on device: data/x.bin.tmp`` for an OSError."""
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f": {exc.filename}" if exc.filename else ""
        return f"{name}: {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


class FileSink:
    """A sink that writes files of one format; see the module docstring.

    Subclasses set `kind` and `accepts` and implement the format hooks
    (`_encode`, `_create`, `_append`, `_cut_back`, `_fsync`, `_close`,
    `_reopen`).

    Parameters
    ----------
    context : SinkContext
        The stream, its sink configuration, chunk layout and clocks.
    """

    kind = ""
    accepts: tuple[type, ...] = ()
    #: Fields the path template may use.
    path_fields: tuple[str, ...] = PATH_FIELDS
    #: Whether `_close` writes to the file (HDF5 writes its last metadata then).
    close_writes = False

    def __init__(self, context: SinkContext):
        self.context = context
        self.config = context.config
        self.template = PathTemplate(self.config.path, self.path_fields)
        self.name = f"{self.kind}:{self.config.path}"
        self._file: SinkFile | None = None
        # Finished files waiting for `commit()` (or for a rename that failed), oldest first.
        self._pending: list[SinkFile] = []
        # Set by `hold`: files are finished but never published from here on.
        self._held = False
        # Directories where a file was published without a directory fsync
        # (policy "never", or it failed), each with that file's name: `sync()`
        # fsyncs them.
        self._unsynced_dirs: dict[str, str] = {}
        self._seq = 0
        self._counts = _Counters()

    # ------------------------------------------------------------------
    # Format hooks

    def _encode(self, record: Any) -> Piece:
        """Turn one accepted record into a Piece (ValueError: cannot be written)."""
        raise NotImplementedError

    def _create(self, f: SinkFile, first: Piece) -> None:
        """Create `f.tmp` (never replacing a file), write any header; set handle, bytes."""
        raise NotImplementedError

    def _append(self, f: SinkFile, pieces: Sequence[Piece]) -> None:
        """Write `pieces` at the end of `f` (partial output is cut back by the caller)."""
        raise NotImplementedError

    def _cut_back(self, f: SinkFile, mark: _Mark) -> None:
        """Remove everything written to `f` after `mark`."""
        raise NotImplementedError

    def _fsync(self, f: SinkFile) -> None:
        raise NotImplementedError

    def _close(self, f: SinkFile) -> None:
        """Close the handle (for HDF5 this writes the last metadata)."""
        raise NotImplementedError

    def _reopen(self, f: SinkFile) -> None:
        """Open `f.tmp` again after a failure closed it; cut it back to f.bytes/records."""
        raise NotImplementedError

    def _seal(self, f: SinkFile) -> None:
        """Write the metadata known only when `f` is finished (`file_metadata`); optional.

        Called before the finished file's fsync.  Raises OSError (inside a
        write: the write is undone; otherwise counted, the file kept with the
        metadata it had).
        """

    def _seal_quietly(self, f: SinkFile) -> None:
        if f.handle is None:
            return
        try:
            self._seal(f)
        except OSError as exc:      # the file stays good, with the metadata it had
            self._note_error(exc)

    # ------------------------------------------------------------------
    # File metadata

    def file_metadata(self, f: SinkFile | None = None, *, block: Any = None,
                      written: tuple[int, int] | None = None) -> dict[str, Any]:
        """Return what a file says of its observation, for the formats to write.

        The stream's clock (``sync_time``, ``timestamp_rate``: Unix seconds
        and ticks per second, when ``[stream.time]`` configures it), this
        sink's extra metadata (`SinkContext.metadata`), the capture block of
        the file's records (`CaptureBlock.metadata`: ``capture_block_id``,
        ``capture_start``, ``capture_stop``, -1 = open, and their ``_utc``)
        and the data time the records cover, ``written_start`` /
        ``written_end`` (ticks, -1 while the file has none), with their
        ``_utc`` when the stream has a clock.  From `f`, or from `block` and
        `written` (recovery).
        """
        if f is not None:
            block, written = f.block, f.written
        timeline = self.context.timeline
        # Not the arrival clock of a heap stream without one: it is no instrument's.
        out: dict[str, Any] = {} if timeline.clock is ARRIVAL_CLOCK else timeline.clock.metadata()
        out.update(self.context.metadata)
        if block is not None:
            out.update(block.metadata(timeline))
        out["written_start"], out["written_end"] = written if written is not None else (-1, -1)
        if written is not None and timeline.has_utc:
            out["written_start_utc"] = timeline.utc(written[0])
            out["written_end_utc"] = timeline.utc(written[1])
        return out

    # ------------------------------------------------------------------
    # The Sink protocol

    def write(self, records: Iterable[Any]) -> None:
        """Write one flush's records, all or nothing.

        Records of classes not in `accepts` are skipped.  An empty flush still
        finishes a file older than ``rotate_seconds``.  Files finished here
        are not published: they wait, pending, for `commit()`.

        Raises
        ------
        OSError
            Nothing of this flush was kept; the file is as it was before.
        """
        pieces = self._encode_all(records)
        now = self.context.clock()
        try:
            self._repair(now)
            if pieces:
                self._write_pieces(pieces, now)
        except OSError as exc:
            self._note_error(exc)
            raise

    def sync(self) -> None:
        """Make everything written so far durable, whatever the fsync policy.

        Fsyncs the current file and the pending ones written since their last
        fsync, their directory entries, and the directories of files published
        without a directory fsync.  A pending file that vanished is counted in
        ``lost_records`` and forgotten.

        Raises
        ------
        OSError
            The data may not be on disk; the file is marked for repair.
        """
        try:
            for f in list(self._pending):
                if f.dirty or not f.dir_synced:
                    self._sync_finished(f)
            current = self._file
            if current is not None:
                if current.broken and not self._reopen_broken(current):
                    raise OSError(errno.ENOENT, "output file vanished", current.tmp)
                if current.dirty or not current.dir_synced:
                    self._sync_file(current)
            for directory, path in list(self._unsynced_dirs.items()):
                fsync_directory_of(path)
                del self._unsynced_dirs[directory]
        except OSError as exc:
            self._note_error(exc)
            raise

    def checkpoint(self) -> dict[str, Any]:
        """Where this sink's output stands, for `recover_sink` after a crash (JSON-able).

        ``file`` describes the file being written (temporary and final names,
        bytes and records in it; HDF5 adds rows), or is None between files;
        ``pending`` lists the finished files waiting for `commit()` (``tmp``,
        ``final``, ``records``), oldest first.
        """
        return {
            "kind": self.kind,
            "path": self.config.path,
            "file": self._file.describe() if self._file is not None else None,
            "pending": [f.describe_pending() for f in self._pending],
        }

    def commit(self) -> None:
        """Publish the pending files (rename ``FINAL.tmp`` to a free final name).

        The buffer calls this once its write-ahead log covers every record in
        them (right after each write when it has no log).  Never raises: a
        file that cannot be renamed stays pending, counted in ``errors`` and
        ``unfinished_files``, and is retried at the next commit or close.
        """
        try:
            self._publish_pending()
        except OSError as exc:
            self._note_error(exc)

    @property
    def current_block(self) -> CaptureBlock | None:
        """The capture block of the current file's records (None: no file, or outside blocks)."""
        f = self._file
        return f.block if f is not None else None

    def reopen(self) -> None:
        """Finish the current file (SIGHUP); the next write starts a new one.

        The file joins the pending ones (fsynced unless the policy is
        ``never``); `commit()` publishes it.  Never raises: a file holding a
        partial write that cannot be cut back yet stays current, counted, and
        the next write repairs it.
        """
        f, self._file = self._file, None
        if f is not None:
            self._finish_current(f)

    def _finish_current(self, f: SinkFile) -> None:
        try:
            if f.broken and not self._reopen_broken(f):
                return                  # vanished: counted
        except OSError as exc:
            # Still holding a partial write it could not cut back: keep it
            # current so the next write repairs it before anything else.
            self._note_error(exc)
            self._file = f
            return
        self._seal_quietly(f)
        try:
            if self.config.fsync != "never":
                self._sync_file(f)
        except OSError as exc:
            self._note_error(exc)
        self._finish(f)

    def hold(self) -> None:
        """Never publish another file: the write-ahead log will replay their records.

        `Buffer.close` calls this for a sink no done mark covers (its last sync
        failed): publishing its files would put the records the log replays at
        the next start into the output twice.  They stay ``FINAL.tmp``, and
        recovery leaves them as orphans.
        """
        self._held = True

    def close(self) -> None:
        """Finish the current file and publish it with every pending one; never raises.

        `reopen` then `commit`.  With a write-ahead log, `Buffer.close` has
        already done both under a last done mark, so this has nothing left to
        do; after `hold`, the file is finished but nothing is published.
        """
        self.reopen()
        if not self._held:
            self.commit()

    def stats(self) -> dict[str, Any]:
        """Counters: bytes, records, files (completed), errors, last_error, lost_records..."""
        c = self._counts
        return {
            "name": self.name,
            "kind": self.kind,
            "bytes": c.bytes,
            "records": c.records,
            "files": c.files,
            "errors": c.errors,
            "last_error": c.last_error,
            "lost_records": c.lost_records,
            "current_file": self._file.tmp if self._file is not None else "",
            "last_file": c.last_file,
            "unfinished_files": len(self._pending),
        }

    # ------------------------------------------------------------------
    # After a crash

    @classmethod
    def recover(cls, context: SinkContext, state: dict[str, Any]) -> dict[str, Any]:
        """Publish what `state` (a `checkpoint()`) described: the current file cut back to it.

        See `daqd.sinks.recover_sink`.
        """
        report: dict[str, Any] = {"file": None, "action": "", "published": [], "orphans": [],
                                  "error": ""}
        problems = []
        known = set()
        published = []
        # Pending files hold only records the done mark covers: publish them as they are.
        for pending in state.get("pending", state.get("unfinished", [])):
            tmp, final = pending["tmp"], pending["final"]
            known.add(tmp)
            try:
                if os.path.lexists(tmp):
                    report["published"].append(publish(tmp, final))
                    published.append(report["published"][-1])
                elif not os.path.lexists(final):        # else published before the crash
                    problems.append(f"{tmp}: gone ({pending.get('records', '?')} records lost)")
            except OSError as exc:
                problems.append(f"{tmp}: {describe_error(exc)}")
        current = state.get("file")
        if not current:
            report["action"] = "no file was open"
        else:
            tmp, final = current["tmp"], current["final"]
            known.add(tmp)
            # Under its final name if an earlier recovery (or an old daqd) published it.
            path = tmp if os.path.lexists(tmp) else final if os.path.lexists(final) else None
            if path is None:
                problems.append(f"{tmp}: gone ({current['records']} records lost)")
            else:
                try:
                    report["action"] = cls.recover_file(context, path, current)
                    fsync_path(path)
                    report["file"] = publish(tmp, final) if path == tmp else final
                    published.append(report["file"])
                except (OSError, ValueError) as exc:
                    problems.append(f"{path}: {describe_error(exc)}; left as it is")
        # The next done marks forget these files: their new names must be durable first.
        for path in {os.path.dirname(os.path.abspath(p)): p for p in published}.values():
            try:
                fsync_directory_of(path)
            except OSError as exc:
                problems.append(f"{path}: directory fsync: {describe_error(exc)}")
        # Any other temporary file of this template was started after the checkpoint
        # (records the log replays) or given up earlier (records not in the log): it
        # is never published, never deleted, only reported.
        pattern = template_glob(context.config.path, context.stream) + TMP_SUFFIX
        report["orphans"] = sorted(other for other in glob.glob(pattern) if other not in known)
        report["error"] = "; ".join(problems)
        return report

    @classmethod
    def recover_file(cls, context: SinkContext, path: str, state: dict[str, Any]) -> str:
        """Cut the file at `path` back to its checkpoint `state`; say what was done."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    # Writing

    def _encode_all(self, records: Iterable[Any]) -> list[Piece]:
        # Once per record: the lookups are hoisted out of the loop (a flush of
        # chunk records spends its Python here, not in the kernel's write).
        pieces = []
        accepts = self.accepts
        encode = self._encode
        timeline = self.context.timeline
        timed, span = timeline.timed, timeline.span
        for record in records:
            if not isinstance(record, accepts):
                continue
            try:
                piece = encode(record)
            except ValueError as exc:
                # A record this format cannot hold (e.g. a text template field it
                # lacks): retrying would fail forever, so it is counted, not raised.
                self._counts.lost_records += 1
                self._note_error(exc)
                continue
            piece.span = span(record) if timed(record) else None
            pieces.append(piece)
        return pieces

    def _write_pieces(self, pieces: list[Piece], now: float) -> None:
        start = self._file
        mark = _Mark(start.bytes, start.records, start.last_key, start.written) if start \
            else None
        created: list[SinkFile] = []
        finished: list[SinkFile] = []
        try:
            for f, segment, ends in self._segments(pieces, now, created):
                self._append_segment(f, segment)
                if ends:
                    self._seal(f)
                    finished.append(f)
            if self.config.fsync == "every-flush":
                for f in [start, *created] if start is not None else created:
                    if f.dirty:
                        self._sync_file(f)
            elif self.config.fsync == "on-rotate":
                for f in finished:
                    self._sync_file(f)
        except OSError:
            self._undo(start, mark, created)
            raise
        for f in finished:
            self._finish(f)
        self._counts.records += len(pieces)
        self._counts.bytes += sum(p.size for p in pieces)
        self._written(pieces)

    def _segments(self, pieces: list[Piece], now: float, created: list[SinkFile]
                  ) -> Iterator[tuple[SinkFile, list[Piece], bool]]:
        """Cut `pieces` where a file ends: ``(file, its pieces, whether the file ends)``.

        A piece starts a new file when it would pass ``rotate_bytes``, when its
        capture block is not the file's, or when the format says it cannot follow
        the file's last record (`_starts_new_file_after`: HDF5's chunk id going
        back); a file with no record yet takes any piece (a record too big for
        ``rotate_bytes`` still gets a file).  Each new file is started (and
        added to `created`) when the consumer asks for its segment, after the
        previous one is written.  The last segment's file stays current.
        """
        rotate_bytes = self.config.rotate_bytes
        keyed = type(self)._starts_new_file_after is not FileSink._starts_new_file_after
        f = self._file
        segment: list[Piece] = []
        if f is not None:
            count, size, block, last = f.records, f.bytes, f.block, f.last_key
        for piece in pieces:
            piece_block = getattr(piece.record, "capture_block", None)
            if f is None or count and (
                    rotate_bytes and size + piece.size > rotate_bytes
                    or piece_block is not block
                    or keyed and last is not None and self._starts_new_file_after(last, piece)):
                if f is not None:
                    yield f, segment, True
                segment = []
                f = self._start_file(piece, now)
                created.append(f)
                count, size, block, last = f.records, f.bytes, f.block, f.last_key
            segment.append(piece)
            count += 1
            size += piece.size
            block = piece_block
            last = piece.key
        if f is not None:
            yield f, segment, False

    def _written(self, pieces: list[Piece]) -> None:
        """Count what a format counts once `pieces` are written for good."""

    def _starts_new_file_after(self, last_key: int, piece: Piece) -> bool:
        """Whether `piece` cannot follow a record with `last_key` in one file (HDF5)."""
        return False

    def _append_segment(self, f: SinkFile, segment: list[Piece]) -> None:
        if not segment:
            return
        f.dirty = True
        self._append(f, segment)
        nbytes = 0
        lo = hi = None
        for p in segment:
            nbytes += p.size
            span = p.span
            if span is not None:
                if lo is None or span[0] < lo:
                    lo = span[0]
                if hi is None or span[1] > hi:
                    hi = span[1]
        f.bytes += nbytes
        f.records += len(segment)
        f.last_key = segment[-1].key
        if lo is not None and hi is not None:
            if f.written is not None:
                lo, hi = min(lo, f.written[0]), max(hi, f.written[1])
            f.written = (lo, hi)

    def _undo(self, start: SinkFile | None, mark: _Mark | None, created: list[SinkFile]) -> None:
        for f in created:
            try:
                self._close(f)
            except OSError:
                pass
            try:
                os.unlink(f.tmp)
            except OSError:
                pass
        self._file = start
        if start is None or mark is None:
            return
        # Always cut back: a failed write may have left part of a record behind
        # without the counters having moved.
        start.bytes, start.records, start.last_key = mark.bytes, mark.records, mark.last_key
        start.written = mark.written
        start.dirty = True
        try:
            self._cut_back(start, mark)
        except OSError:
            # Cannot cut back now (e.g. EIO): close it; the next write reopens
            # it and cuts it back to `mark` before writing anything.
            self._mark_broken(start)

    def _mark_broken(self, f: SinkFile) -> None:
        f.broken = True
        try:
            self._close(f)
        except OSError:
            pass
        f.handle = None

    # ------------------------------------------------------------------
    # Files

    def _start_file(self, first: Piece, now: float) -> SinkFile:
        """Choose a free name, create FINAL.tmp (and its directory), make it current."""
        start = self.context.wall_clock()
        reserved = {f.final for f in self._pending}
        seq = self._seq
        final = ""
        for attempt in range(100000):
            name = self.template.render(self.context.stream, start, seq, first.key,
                                        getattr(first.record, "capture_block", None))
            final = name if self.template.uses_seq else with_suffix_number(name, attempt)
            if is_free(final, reserved):
                break
            if self.template.uses_seq:
                seq += 1
        directory = os.path.dirname(final)
        if directory:
            os.makedirs(directory, exist_ok=True)
        f = SinkFile(final=final, tmp=final + TMP_SUFFIX, seq=seq, opened=now,
                     block=getattr(first.record, "capture_block", None))
        try:
            self._create(f, first)
            st = os.stat(f.tmp)
        except FileExistsError:
            # Somebody took the name between the check and the create: next name.
            self._seq = seq + 1
            return self._start_file(first, now)
        except OSError:
            if f.handle is not None:
                try:
                    self._close(f)
                finally:
                    try:
                        os.unlink(f.tmp)
                    except OSError:
                        pass
            raise
        f.identity = (st.st_dev, st.st_ino)
        self._seq = seq + 1
        self._file = f
        return f

    def _sync_file(self, f: SinkFile) -> None:
        self._fsync(f)
        self._synced(f)

    def _sync_finished(self, f: SinkFile) -> None:
        """Fsync a closed pending file by name; one that vanished is counted and dropped."""
        try:
            fsync_path(f.tmp)
        except FileNotFoundError:
            self._pending.remove(f)
            self._lose(f, "vanished before it could be renamed")
            return
        self._synced(f)

    @staticmethod
    def _synced(f: SinkFile) -> None:
        """`f`'s data is on disk: make its directory entry durable too (once)."""
        f.dirty = False
        if not f.dir_synced:
            fsync_directory_of(f.tmp)
            f.dir_synced = True

    def _finish(self, f: SinkFile) -> None:
        """Close `f` and make it pending (published by `commit`); never raises."""
        try:
            self._close(f)
        except OSError as exc:
            self._note_error(exc)
        f.handle = None
        if self.close_writes:
            f.dirty = True
            if self.config.fsync != "never":
                try:
                    fsync_path(f.tmp)
                    f.dirty = False
                except OSError as exc:      # `sync()` tries again before a done mark
                    self._note_error(exc)
        self._pending.append(f)

    def _publish_pending(self) -> None:
        while self._pending:
            f = self._pending[0]
            try:
                f.final = publish(f.tmp, f.final)
            except OSError:
                if os.path.lexists(f.tmp):
                    raise               # still there: retried at the next commit or close
                self._pending.pop(0)
                self._lose(f, "vanished before it could be renamed")
                continue
            self._pending.pop(0)
            self._counts.files += 1
            self._counts.last_file = f.final
            directory = os.path.dirname(os.path.abspath(f.final))
            self._unsynced_dirs[directory] = f.final
            if self.config.fsync != "never":
                fsync_directory_of(f.final)
                del self._unsynced_dirs[directory]

    def _repair(self, now: float) -> None:
        """Before writing: reopen a broken file, notice a vanished one, rotate by age."""
        f = self._file
        if f is None:
            return
        if f.broken:
            if not self._reopen_broken(f):
                return
        elif self._vanished(f):
            try:
                self._close(f)
            except OSError:
                pass
            self._file = None
            self._lose(f, "vanished while being written")
            return
        if self.config.rotate_seconds and now - f.opened >= self.config.rotate_seconds:
            self._seal_quietly(f)
            if self.config.fsync != "never":
                self._sync_file(f)
            self._file = None
            self._finish(f)

    def _reopen_broken(self, f: SinkFile) -> bool:
        """Reopen a file a failed rollback closed; False (counted) if it is gone."""
        if not os.path.lexists(f.tmp):
            if self._file is f:
                self._file = None
            self._lose(f, "vanished after a failed write")
            return False
        try:
            self._reopen(f)
        except FileUnusable as exc:
            if self._file is f:
                self._file = None
            self._lose(f, f"cannot be reopened ({exc.strerror}); left as it is")
            return False
        st = os.stat(f.tmp)
        f.identity = (st.st_dev, st.st_ino)
        f.broken = False
        return True

    def _vanished(self, f: SinkFile) -> bool:
        try:
            st = os.stat(f.tmp)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != f.identity

    def _lose(self, f: SinkFile, why: str) -> None:
        """Count the records of a file something outside daqd removed."""
        self._counts.lost_records += f.records
        self._counts.errors += 1
        self._counts.last_error = f"{f.tmp}: {why} ({f.records} records lost)"

    def _note_error(self, exc: BaseException) -> None:
        self._counts.errors += 1
        self._counts.last_error = describe_error(exc)


class ByteSink(FileSink):
    """A FileSink whose format is a plain stream of bytes: payloads are buffers.

    Subclasses implement `_encode` (payload: a list of bytes-like objects) and
    `_header`.
    """

    def _header(self, first: Piece) -> bytes:
        return b""

    def _wants_header(self) -> bool:
        return bool(self.config.header)

    def _create(self, f: SinkFile, first: Piece) -> None:
        fd = os.open(f.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        f.handle = fd
        header = self._header(first) if self._wants_header() else b""
        if header:
            write_all(fd, [header], 0)
        f.bytes = len(header)

    def _append(self, f: SinkFile, pieces: Sequence[Piece]) -> None:
        buffers = [b for p in pieces for b in p.payload]
        write_all(f.handle, buffers, f.bytes, sum(p.size for p in pieces))

    def _cut_back(self, f: SinkFile, mark: _Mark) -> None:
        os.ftruncate(f.handle, mark.bytes)

    def _fsync(self, f: SinkFile) -> None:
        os.fsync(f.handle)

    def _close(self, f: SinkFile) -> None:
        if f.handle is not None:
            fd, f.handle = f.handle, None
            os.close(fd)

    def _reopen(self, f: SinkFile) -> None:
        fd = os.open(f.tmp, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, f.bytes)
        except OSError:
            os.close(fd)
            raise
        f.handle = fd

    @classmethod
    def recover_file(cls, context: SinkContext, path: str, state: dict[str, Any]) -> str:
        """Cut `path` back to the checkpointed bytes; what was done."""
        size = os.path.getsize(path)
        if size < state["bytes"]:
            raise OSError(errno.EIO, f"shorter ({size} bytes) than its checkpoint "
                          f"({state['bytes']} bytes)", path)
        os.truncate(path, state["bytes"])
        return f"cut from {size} to {state['bytes']} bytes"


_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 1024


def write_all(fd: int, buffers: list[Any], offset: int, nbytes: int | None = None) -> int:
    """Write `buffers` at `offset` with as few system calls as possible.

    Parameters
    ----------
    fd : int
        The open file.
    buffers : list
        Contiguous bytes-like objects, written in order.
    offset : int
        Where the first byte goes.
    nbytes : int, optional
        Their total size, when the caller knows it: then a batch of at most
        IOV_MAX buffers that the kernel writes whole takes one ``pwritev`` and
        nothing else (no view of each buffer); a short write goes on from
        where it stopped.

    Returns
    -------
    int
        The bytes written.

    Raises
    ------
    OSError
        Part may have been written (the caller cuts the file back).
    """
    if nbytes is not None and len(buffers) <= _IOV_MAX:
        done = os.pwritev(fd, buffers, offset) if nbytes else 0
        if done == nbytes:
            return done
        if done <= 0:
            raise OSError(errno.EIO, "write made no progress")
    else:
        done = 0
    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if v.nbytes]
    i = 0
    n = done
    while i < len(views) and n >= views[i].nbytes:     # what a short first write wrote
        n -= views[i].nbytes
        i += 1
    if n:
        views[i] = views[i][n:]
    while i < len(views):
        n = os.pwritev(fd, views[i:i + _IOV_MAX], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n
        while i < len(views) and n >= views[i].nbytes:
            n -= views[i].nbytes
            i += 1
        if n:
            views[i] = views[i][n:]
    return done
