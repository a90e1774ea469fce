"""The ``hdf5`` sink: chunk records as resizable HDF5 datasets (INTERFACES.md).

Layout of one file (n = chunks written so far)::

    data        (n, heaps_per_chunk, substreams, heap_bytes // itemsize)  configured dtype
    present     (n, heaps_per_chunk, substreams)                          uint8, 1 = heap received
    chunk_id    (n,)                                                      int64
    timestamp   (n,)                                                      uint64
    extra       (n, heaps_per_chunk, substreams, len(extra_items))       uint64, if configured
    packet_present  (n, heaps_per_chunk, substreams, packets_per_heap)    uint8, with
                                                                          packet_presence

    utc         (n,)                                                      float64, with a clock

File attributes: ``daqd_version``, ``stream``, ``config`` (the TOML text),
``timestamp_step``, ``heaps_per_chunk``, ``substreams``; also ``heap_bytes``
and ``extra_items``.  With packet presence, ``present`` is 1 only where every
packet of the heap arrived, and ``packet_present`` has the detail.

The observation (`FileSink.file_metadata`): with ``[stream.time]``,
``sync_time`` (Unix seconds of timestamp 0) and ``timestamp_rate`` (ticks
per second) and the ``utc`` dataset, each chunk's first slot in Unix
seconds (``sync_time + timestamp / timestamp_rate``, computed exactly, then
rounded to float64); every entry of the sink's extra metadata (an event
file's ``trigger_label``, ``trigger_start``, ``trigger_end``, ...); the
capture block's ``capture_block_id``, ``capture_start``, ``capture_stop``
(ticks, -1 = open) and their ``_utc``; ``written_start`` / ``written_end``,
the data time the file's chunks cover (``[first timestamp, last timestamp +
heaps_per_chunk * timestamp_step)``, ticks; -1 until the file is finished)
and their ``_utc``; and ``spead_descriptors``, the stream's SPEAD item
descriptors as JSON (a list of ``id``, ``name``, ``description``,
``shape``, ``format``, ``dtype``; ``[]`` when none were received).  The
attributes are written when the file starts and again when it is finished,
so the stop of a block and the written span are those of the finished file;
after a crash, recovery writes them for what the file keeps.

Every dataset is resizable along n.  ``data``, ``present``, ``extra`` and
``packet_present`` are chunked by one record, so a record is written (with
``write_direct_chunk``, no copy through HDF5's pipeline) and read in one
piece; ``chunk_id`` and ``timestamp`` are chunked by 4096 rows, because a
B-tree entry per 8-byte value would make reading the index slow.  Chunks
appear in increasing chunk_id: a record whose chunk id is not above the
file's last one (e.g. after the window was re-anchored) starts a new file.

HDF5 cannot undo a write that failed half way: the file may then be left
needing more space than it has and become unreadable.  So before each write
the sink reserves the space it needs with ``posix_fallocate``: a full disk,
a quota or a file size limit fails there, before HDF5 has written anything,
and the datasets are simply resized back.  A failure inside HDF5 after that
(an I/O error) is rolled back by resizing the datasets; if the file can no
longer be opened, its records are counted in ``lost_records``, it is left
as ``FINAL.tmp`` and the next write starts a new file.  The metadata is
flushed after every write, so the file on disk is consistent between writes
(what `recover_sink` relies on after a crash).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

import daqd
from daqd.pipeline.records import ChunkRecord, slots_present
from daqd.sinks.base import FileSink, FileUnusable, Piece, SinkFile, _Mark

INDEX_CHUNK_ROWS = 4096
# Space reserved per write beyond the records, for HDF5's metadata (B-tree
# nodes, object headers) written by the following flush.
_METADATA_SLACK = 256 << 10
_METADATA_PER_RECORD = 4 << 10
_MISSING_EXTRA = np.uint64(2**64 - 1)


def _as_oserror(exc: BaseException, path: str) -> OSError:
    """h5py reports I/O failures as OSError or RuntimeError; make them OSError."""
    if isinstance(exc, OSError):
        return exc
    return OSError(errno.EIO, f"HDF5: {exc}", path)


class Hdf5Sink(FileSink):
    """Chunk records into HDF5 files laid out as INTERFACES.md says."""

    kind = "hdf5"
    accepts = (ChunkRecord,)
    close_writes = True

    def __init__(self, context: Any):
        super().__init__(context)
        chunk = context.chunk
        if chunk is None:
            raise ValueError("hdf5 sinks need chunk mode ([stream.chunk])")
        self.dtype = np.dtype(chunk.dtype)
        self.slots = (chunk.heaps_per_chunk, chunk.substreams)
        self.samples = chunk.heap_bytes // self.dtype.itemsize
        self.extra_count = len(chunk.extra_items)
        self.packets = chunk.heap_bytes // chunk.packet_presence if chunk.packet_presence else 0
        self.with_utc = context.timeline.has_utc
        self.row_bytes = (chunk.heaps_per_chunk * chunk.substreams
                          * (chunk.heap_bytes + 1 + 8 * self.extra_count + self.packets)
                          + 16 + 8 * self.with_utc)

    # ------------------------------------------------------------------
    # Records

    def _encode(self, record: Any) -> Piece:
        data = np.ascontiguousarray(record.data, dtype=self.dtype)
        if data.size != self.slots[0] * self.slots[1] * self.samples:
            raise ValueError(f"chunk {record.chunk_id}: data shape {record.data.shape} "
                             f"does not fit the layout {(*self.slots, self.samples)}")
        present = np.asarray(record.present)
        packet_present = None
        if self.packets:
            packet_present = np.ascontiguousarray(present, np.uint8)
            if packet_present.size != self.slots[0] * self.slots[1] * self.packets:
                raise ValueError(f"chunk {record.chunk_id}: present shape {present.shape} "
                                 "does not fit the layout")
            present = slots_present(packet_present.reshape(*self.slots, self.packets))
        present = np.ascontiguousarray(present, np.uint8)
        if present.size != self.slots[0] * self.slots[1]:
            raise ValueError(f"chunk {record.chunk_id}: present shape {record.present.shape} "
                             f"does not fit the layout {self.slots}")
        extra = None
        if self.extra_count:
            if record.extra is None:
                extra = np.full((*self.slots, self.extra_count), _MISSING_EXTRA)
            else:
                extra = np.ascontiguousarray(record.extra, np.uint64)
                if extra.size != self.slots[0] * self.slots[1] * self.extra_count:
                    raise ValueError(f"chunk {record.chunk_id}: extra shape "
                                     f"{record.extra.shape} does not fit the layout")
        utc = self.context.timeline.utc(record.timestamp) if self.with_utc else None
        payload = (data, present, extra, packet_present, record.chunk_id, record.timestamp,
                   utc)
        return Piece(record, self.row_bytes, payload, record.chunk_id)

    def _starts_new_file_after(self, last_key: int, piece: Piece) -> bool:
        return piece.key <= last_key

    # ------------------------------------------------------------------
    # Files

    def _create(self, f: SinkFile, first: Piece) -> None:
        chunk = self.context.chunk
        assert chunk is not None            # __init__ refuses heap mode
        try:
            h5 = h5py.File(f.tmp, "w-")         # FileExistsError if the name is taken
        except FileExistsError:
            raise
        except (OSError, RuntimeError) as exc:
            # HDF5 may have created the file before failing (e.g. ENOSPC).
            try:
                os.unlink(f.tmp)
            except OSError:
                pass
            raise _as_oserror(exc, f.tmp) from None
        f.handle = h5
        try:
            rows = (*self.slots,)
            h5.create_dataset("data", (0, *rows, self.samples), self.dtype,
                              maxshape=(None, *rows, self.samples),
                              chunks=(1, *rows, self.samples))
            h5.create_dataset("present", (0, *rows), np.uint8, maxshape=(None, *rows),
                              chunks=(1, *rows))
            for name, dtype in (("chunk_id", np.int64), ("timestamp", np.uint64)):
                h5.create_dataset(name, (0,), dtype, maxshape=(None,),
                                  chunks=(INDEX_CHUNK_ROWS,))
            if self.extra_count:
                h5.create_dataset("extra", (0, *rows, self.extra_count), np.uint64,
                                  maxshape=(None, *rows, self.extra_count),
                                  chunks=(1, *rows, self.extra_count))
            if self.packets:
                h5.create_dataset("packet_present", (0, *rows, self.packets), np.uint8,
                                  maxshape=(None, *rows, self.packets),
                                  chunks=(1, *rows, self.packets))
            if self.with_utc:
                h5.create_dataset("utc", (0,), np.float64, maxshape=(None,),
                                  chunks=(INDEX_CHUNK_ROWS,))
            attrs = h5.attrs
            attrs["daqd_version"] = daqd.__version__
            attrs["stream"] = self.context.stream
            attrs["config"] = self.context.config_text
            attrs["timestamp_step"] = chunk.timestamp_step
            attrs["heaps_per_chunk"] = chunk.heaps_per_chunk
            attrs["substreams"] = chunk.substreams
            attrs["heap_bytes"] = chunk.heap_bytes
            attrs["extra_items"] = np.asarray(chunk.extra_items, np.int64)
            self._write_metadata(h5, f)
            h5.flush()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _as_oserror(exc, f.tmp) from None

    def _write_metadata(self, h5: h5py.File, f: SinkFile | None = None, **state: Any) -> None:
        """Write `file_metadata` and the descriptors as attributes (see the module docstring)."""
        write_attributes(h5, self.file_metadata(f, **state))
        h5.attrs["spead_descriptors"] = json.dumps(self.context.descriptors())

    def _seal(self, f: SinkFile) -> None:
        h5 = f.handle
        try:
            self._reserve(h5, _METADATA_SLACK)
            self._write_metadata(h5, f)
            h5.flush()
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise _as_oserror(exc, f.tmp) from None

    def _datasets(self, h5: h5py.File) -> list[h5py.Dataset]:
        return [h5[name] for name in DATASETS if name in h5]

    def _append(self, f: SinkFile, pieces: Sequence[Piece]) -> None:
        h5 = f.handle
        try:
            self._reserve(h5, len(pieces) * self.row_bytes + len(pieces) * _METADATA_PER_RECORD)
            n0, n1 = f.records, f.records + len(pieces)
            for dataset in self._datasets(h5):
                dataset.resize(n1, axis=0)
            data, present = h5["data"].id, h5["present"].id
            extra = h5["extra"].id if self.extra_count else None
            packet_present = h5["packet_present"].id if self.packets else None
            for row, piece in enumerate(pieces, n0):
                d, p, e, pp = piece.payload[:4]
                data.write_direct_chunk((row, 0, 0, 0), d)
                present.write_direct_chunk((row, 0, 0), p)
                if extra is not None:
                    extra.write_direct_chunk((row, 0, 0, 0), e)
                if packet_present is not None:
                    packet_present.write_direct_chunk((row, 0, 0, 0), pp)
            h5["chunk_id"][n0:n1] = np.array([p.payload[4] for p in pieces], np.int64)
            h5["timestamp"][n0:n1] = np.array([p.payload[5] for p in pieces], np.uint64)
            if self.with_utc:
                h5["utc"][n0:n1] = np.array([p.payload[6] for p in pieces], np.float64)
            h5.flush()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _as_oserror(exc, f.tmp) from None

    def _reserve(self, h5: h5py.File, nbytes: int) -> None:
        """Allocate the space the next write needs, so it fails here, not inside HDF5."""
        fd = h5.id.get_vfd_handle()
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, h5.id.get_filesize(), nbytes + _METADATA_SLACK)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return              # a file system that cannot reserve: write and hope
            try:
                os.ftruncate(fd, size)  # give back what a partial reservation took
            except OSError:
                pass
            raise

    def _cut_back(self, f: SinkFile, mark: _Mark) -> None:
        try:
            for dataset in self._datasets(f.handle):
                dataset.resize(mark.records, axis=0)
            f.handle.flush()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _as_oserror(exc, f.tmp) from None

    def _fsync(self, f: SinkFile) -> None:
        try:
            f.handle.flush()
        except (OSError, RuntimeError) as exc:
            raise _as_oserror(exc, f.tmp) from None
        os.fsync(f.handle.id.get_vfd_handle())

    def _close(self, f: SinkFile) -> None:
        h5, f.handle = f.handle, None
        if h5 is None:
            return
        try:
            h5.close()
        except (OSError, RuntimeError) as exc:
            raise _as_oserror(exc, f.tmp) from None

    def _reopen(self, f: SinkFile) -> None:
        try:
            h5 = h5py.File(f.tmp, "r+")
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, OSError) and exc.errno:
                raise               # e.g. EIO or EACCES: may pass, try again next time
            # Not an HDF5 file any more: give it up (counted) and start afresh.
            raise FileUnusable(errno.EIO, f"not readable by HDF5 any more: {exc}", f.tmp) \
                from None
        f.handle = h5
        self._cut_back(f, _Mark(f.bytes, f.records, f.last_key))

    def checkpoint(self) -> dict[str, Any]:
        """As `FileSink.checkpoint`; the file also gives its dataset ``rows``."""
        state = super().checkpoint()
        if state["file"] is not None:
            state["file"]["rows"] = state["file"]["records"]
        return state

    @classmethod
    def recover_file(cls, context: Any, path: str, state: dict[str, Any]) -> str:
        """Resize every dataset of `path` back to the checkpointed rows; write the metadata.

        The written span is that of the timestamps kept; the capture block is
        the checkpoint's (its stop as it was then).
        """
        rows = int(state.get("rows", state["records"]))
        with h5py.File(path, "r+") as h5:
            have = h5["chunk_id"].shape[0]
            if have < rows:
                raise OSError(errno.EIO, f"has {have} rows, fewer than its checkpoint's "
                              f"{rows}", path)
            for name in DATASETS:
                if name in h5:
                    h5[name].resize(rows, axis=0)
            block, _ = SinkFile.recovered(state)
            written = None
            if rows:
                ts = np.asarray(h5["timestamp"][:], np.uint64)
                written = int(ts.min()), int(ts.max()) + context.timeline.chunk_ticks
            cls(context)._write_metadata(h5, block=block, written=written)
        return f"cut from {have} to {rows} rows"


#: The datasets with one row per chunk (resized together).
DATASETS = ("data", "present", "chunk_id", "timestamp", "extra", "packet_present", "utc")


def write_attributes(h5: h5py.File, metadata: dict[str, Any]) -> None:
    """Set `metadata` as file attributes: numbers and text as they are, None removes one.

    Lists and dicts are stored as JSON text.
    """
    for name, value in metadata.items():
        if value is None:
            if name in h5.attrs:
                del h5.attrs[name]
            continue
        if isinstance(value, dict | list | tuple):
            value = json.dumps(value)
        h5.attrs[name] = value
