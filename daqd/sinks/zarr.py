"""The ``zarr`` sink: chunk records into one Zarr store that many daemons write at once.

The store, its layout and how its time axis grows are `daqd.sinks.zarr_store`'s.
This module implements the Sink protocol of docs/dev-pipeline.md on it.  A
store is not a file, so there is nothing to rotate or publish; the
guarantees are those of the file sinks, kept another way:

- **Readers never see half a record.**  One `write()` writes every record's
  ``data`` and ``extra`` chunks (and the time coordinates) first, and only then
  their ``present`` chunks, so a reader that trusts ``present`` never reads a
  slot whose data is not all there.  Each chunk is one store write (atomic on
  a local path: a temporary file renamed; a single PUT on an object store).
- **All or nothing, retried.**  If anything fails, `write()` raises
  `OSError` and the buffer retries the same records at its next flush: they
  rewrite the same chunks, since a record's place is its time index, so a
  retry (or a record the write-ahead log replays after a crash) never
  duplicates anything.  A failed write may leave some of its records'
  chunks written, complete ones visible through ``present``, which the retry
  writes again with the same bytes.
- **Counted.**  Failures are counted in ``errors`` (``last_error`` says
  why); records not written, by reason, in ``lost`` (``before_origin``: a
  timestamp before ``origin``; ``layout``: a record of another shape), and
  in ``lost_records``.
- **Durable when asked.**  `sync()` (the write-ahead log calls it before a
  done mark) fsyncs every chunk file written since the last one and their
  directories (local stores; an object store's PUT is durable when it
  returns).  ``fsync = "every-flush"`` does so in every `write()`.
- **Restart in place.**  After a crash there is nothing to cut back
  (`recover`): records are placed by their timestamps, and replayed ones
  rewrite their own slots.  A restarted daemon opens the store and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from zarr.codecs import BytesCodec, Endian
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

import daqd
from daqd.pipeline.durable import fsync_path
from daqd.pipeline.records import ChunkRecord, slots_present
from daqd.sinks.base import describe_error, write_all
from daqd.sinks.zarr_layout import ZarrLayout, is_local, local_root
from daqd.sinks.zarr_store import (
    COORD_CHUNK,
    MISSING_EXTRA,
    LayoutMismatch,
    group_attrs,
    grow,
    open_or_create,
    resize_lock,
    safe_name,
    write_attrs,
)

_BUFFER = default_buffer_prototype().buffer
#: Chunk files fsynced at once (`ZarrSink.sync`).
FSYNC_THREADS = 16
#: Files remembered for the next `ZarrSink.sync` at most (then it syncs everything).
DIRTY_MAX = 1 << 16
#: Reasons a record is not written (``stats()["lost"]``).
LOST_REASONS = ("before_origin", "layout")


def _as_oserror(exc: BaseException, where: str) -> OSError:
    """Zarr and fsspec report failures in several classes; make them OSError."""
    if isinstance(exc, OSError):
        return exc
    return OSError(errno.EIO, f"zarr: {type(exc).__name__}: {exc}", where)


class ZarrSink:
    """Chunk records into the stream's Zarr store (`daqd.sinks.zarr_store`).

    Parameters
    ----------
    context : SinkContext
        The stream, this sink's configuration, the chunk layout and timeline.
    """

    kind = "zarr"
    accepts = (ChunkRecord,)

    def __init__(self, context: Any):
        if context.chunk is None:
            raise ValueError("zarr sinks need chunk mode ([stream.chunk])")
        self.context = context
        self.config = context.config
        self.url = self.config.path.format(stream=context.stream)
        self.name = f"zarr:{self.config.path}"
        self.timeline = context.timeline
        self.layout = ZarrLayout.from_config(self.config, context.chunk,
                                             clock=self.timeline.has_utc)
        self.local = is_local(self.url)
        self._root = os.path.abspath(local_root(self.url)) if self.local else ""
        self._group: Any = None
        self._arrays: dict[str, Any] = {}   # name -> zarr AsyncArray (shape as last read)
        self._extent = 0                    # smallest time extent of the arrays, as last read
        self._high = -1                     # highest time index this sink has written
        self._blocks: dict[str, dict[str, Any]] = {}   # capture block metadata written
        self._descriptors: list[dict[str, Any]] | None = None   # spead_descriptors written
        self._dirty: set[str] = set()       # local store files written since the last fsync
        self._sync_everything = False       # too many to list: sync(2) at the next sync
        self._coords: set[int] = set()      # coordinate chunks written whole
        self._coords_due: set[int] = set()  # ... and those this flush writes whole
        self._fsyncs: ThreadPoolExecutor | None = None
        self._counts: dict[str, Any] = {"bytes": 0, "records": 0, "errors": 0,
                                        "last_error": ""}
        self._lost = dict.fromkeys(LOST_REASONS, 0)

    # ------------------------------------------------------------------
    # The Sink protocol

    def write(self, records: Iterable[Any]) -> None:
        """Write one flush's records (data first, then presence); see the module docstring.

        Raises
        ------
        OSError
            The store could not be written (or has another layout); the
            records are retried at the next flush.
        """
        rows = []
        for record in records:
            if not isinstance(record, ChunkRecord):
                continue
            index = self.layout.index(record.timestamp)
            if index < 0:
                self._lose("before_origin", f"chunk {record.chunk_id}: timestamp "
                           f"{record.timestamp} is before origin ({self.layout.origin})")
                continue
            try:
                rows.append(self._encode(index, record))
            except ValueError as exc:
                self._lose("layout", str(exc))
        try:
            if rows:                # (an idle stream's timer flush opens nothing)
                self._open()
                self._write_rows(rows)
                if self.config.fsync == "every-flush":
                    self._fsync_dirty()
        except Exception as exc:
            error = _as_oserror(exc, self.url)
            self._note_error(error)
            raise error from None
        self._counts["records"] += len(rows)
        self._counts["bytes"] += sum(r[1].nbytes for r in rows)

    def sync(self) -> None:
        """Make every chunk written so far durable (local stores: fsync files and directories).

        Raises
        ------
        OSError
            Something may not be on disk; it is tried again at the next sync.
        """
        try:
            self._fsync_dirty()
        except OSError as exc:
            self._note_error(exc)
            raise

    def checkpoint(self) -> dict[str, Any]:
        """Where the output stands: nothing to cut back or publish (records place themselves)."""
        return {"kind": self.kind, "path": self.config.path, "file": None, "pending": []}

    def commit(self) -> None:
        """Publish nothing: a record is visible once its ``present`` chunk is written."""

    def reopen(self) -> None:
        """Open the store afresh at the next write (SIGHUP); never raises."""
        self._group = None

    def hold(self) -> None:
        """Nothing to hold back: replayed records rewrite their own slots."""

    def close(self) -> None:
        """Check the time axis still holds what was written (object stores); sync; never raises."""
        try:
            if self._group is not None and not self.local and self._high >= 0:
                self._grow(self._high)
            if self.config.fsync != "never":
                self._fsync_dirty()
        except Exception as exc:
            self._note_error(_as_oserror(exc, self.url))
        self._group = None
        if self._fsyncs is not None:
            self._fsyncs.shutdown()
            self._fsyncs = None

    def stats(self) -> dict[str, Any]:
        """Counters: bytes, records, errors, last_error, lost_records, lost (by reason)."""
        c = self._counts
        return {
            "name": self.name, "kind": self.kind, "bytes": c["bytes"], "records": c["records"],
            "files": 0, "errors": c["errors"], "last_error": c["last_error"],
            "lost_records": sum(self._lost.values()), "lost": dict(self._lost),
            "current_file": self.url if self._group is not None else "", "last_file": "",
            "unfinished_files": 0,
        }

    @classmethod
    def recover(cls, context: Any, state: dict[str, Any]) -> dict[str, Any]:
        """After a crash: nothing to repair; the records the log replays rewrite their slots."""
        return {"file": None, "action": "nothing to cut back: replayed records rewrite their "
                "own slots", "published": [], "orphans": [], "error": ""}

    # ------------------------------------------------------------------
    # Writing

    def _encode(self, index: int, record: ChunkRecord) -> tuple[Any, ...]:
        lay = self.layout
        shape = (lay.heaps_per_chunk, lay.substreams, lay.samples)
        data = np.asarray(record.data)
        if data.nbytes != shape[0] * shape[1] * lay.samples * np.dtype(lay.dtype).itemsize:
            raise ValueError(f"chunk {record.chunk_id}: data shape {data.shape} does not fit "
                             f"the layout {shape}")
        data = data.view(lay.dtype).reshape(shape) if data.dtype != np.dtype(lay.dtype) \
            else data.reshape(shape)
        present = slots_present(record.present).astype(np.uint8).reshape(shape[:2])
        extra = None
        if lay.extra_items:
            n = len(lay.extra_items)
            if record.extra is None:
                extra = np.full((*shape[:2], n), MISSING_EXTRA, np.uint64)
            else:
                extra = np.asarray(record.extra, np.uint64).reshape(*shape[:2], n)
        return index, data, present, extra, record

    def _open(self) -> None:
        """Open (or create) the store and this writer's record of itself, once."""
        if self._group is not None:
            return
        attrs = group_attrs(self.context.stream, self.layout, self.timeline,
                            self.context.metadata)
        group, _ = open_or_create(self.url, self.layout, attrs)
        write_attrs(group, f"writers/{self.layout.substream_offset}", {
            "daqd_version": daqd.__version__, "stream": self.context.stream,
            "substream_offset": self.layout.substream_offset,
            "substreams": self.layout.substreams, "config": self.context.config_text,
            **self.context.metadata})
        self._group = group
        self._blocks.clear()
        self._descriptors = None
        self._refresh()
        offset = self.layout.substream_offset
        self._note("zarr.json", *(f"{name}/zarr.json" for name in self._arrays),
                   "writers/zarr.json", f"writers/{offset}/zarr.json")

    def _refresh(self) -> None:
        group = self._group
        # write_empty_chunks: every chunk is written, zeros too (a zero chunk is not
        # left out), which also spares zarr comparing each chunk with the fill value.
        self._arrays = {name: group[name]._async_array.with_config({"write_empty_chunks": True})
                        for name in ("data", "present", "timestamp", "utc", "extra")
                        if name in group}
        self._extent = min(a.shape[0] for a in self._arrays.values())

    def _grow(self, index: int) -> None:
        with resize_lock(self.url):
            self._extent = grow(self._group, index)
        self._refresh()
        self._note(*(f"{name}/zarr.json" for name in self._arrays))   # the new shapes

    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        high = max(r[0] for r in rows)
        if high >= self._extent:
            self._grow(high)
        elif not self.local:
            self._grow(max(high, self._high))     # repair a resize another writer lost
        arrays = self._arrays
        first: list[Any] = []
        last: list[Any] = []
        for index, data, present, extra, _ in rows:
            first += self._put(arrays["data"], index, data)
            first += self._coordinates(index)
            if extra is not None:
                first += self._put(arrays["extra"], index, extra)
            last += self._put(arrays["present"], index, present)
        try:
            _run_all(first)
        finally:
            due, self._coords_due = self._coords_due, set()
        self._coords |= due
        _run_all(last)                      # presence only once every data chunk is there
        self._high = max(self._high, high)
        if self.local:
            self._note_dirty(rows)
        self._write_blocks(rows)
        self._write_descriptors()

    def _coordinates(self, index: int) -> list[Any]:
        """Return the writes of the ``timestamp`` (and ``utc``) chunk holding `index`, once.

        The whole chunk's values (a function of the index alone) are written,
        so every writer writes the same bytes.  A chunk cut short by the end
        of the time axis is written again by later records, until it is whole.
        """
        k = index // COORD_CHUNK
        if k in self._coords or k in self._coords_due:
            return []
        start = k * COORD_CHUNK
        stop = min(start + COORD_CHUNK, self._extent)
        if stop == start + COORD_CHUNK:
            self._coords_due.add(k)         # done once this flush's writes have succeeded
        ticks = self.layout.origin + np.arange(start, stop, dtype=np.uint64) \
            * np.uint64(self.layout.chunk_ticks)
        writes: list[Any] = [(self._arrays["timestamp"].setitem, slice(start, stop), ticks)]
        if "utc" in self._arrays:
            utc = np.array([self.timeline.utc(int(t)) for t in ticks], np.float64)
            writes.append((self._arrays["utc"].setitem, slice(start, stop), utc))
        return writes

    def _put(self, array: Any, index: int, value: np.ndarray) -> list[Any]:
        """Return the writes (function, arguments) of this daemon's region of `array` at `index`.

        An array without compression (its only codec ``bytes``, no sharding)
        has chunks that are the values' bytes, little-endian, C order (the
        Zarr v3 ``bytes`` codec), so each chunk is given to the store as
        such: the same bytes `setitem` would write, without its indexing and
        codec pipeline, which took about half the time of a write.  On a local
        store they are written as zarr's `LocalStore` writes them (a temporary
        file renamed, `write_chunk_file`), from this thread: zarr's store hands
        each chunk to a worker thread through its event loop, which cost as
        much CPU time as the writing itself.
        """
        lay = self.layout
        if not _plain_bytes(array):
            return [(array.setitem, (index, slice(None), lay.region), value)]
        sc = lay.substream_chunk
        first = lay.substream_offset // sc
        parts = [((index, 0, first + k) + (0,) * (value.ndim - 2),
                  value[:, k * sc:(k + 1) * sc]) for k in range(lay.substreams // sc)]
        store, prefix = array.store_path.store, array.store_path.path
        meta = array.metadata
        dtype = np.dtype(meta.dtype.to_native_dtype()).newbyteorder("<")
        writes: list[Any] = []
        for coords, part in parts:
            key = f"{prefix}/{meta.encode_chunk_key(coords)}"
            data = np.ascontiguousarray(part, dtype).reshape(-1).view(np.uint8)
            if self.local:
                writes.append((write_chunk_file, os.path.join(self._root, key), data))
            else:
                writes.append((store.set, key, _BUFFER.from_array_like(data)))
        return writes

    def _write_blocks(self, rows: list[tuple[Any, ...]]) -> None:
        """Write each capture block's metadata (``capture_blocks/<id>``) when it changes."""
        for *_, record in rows:
            block = record.capture_block
            if block is None:
                continue
            meta = block.metadata(self.timeline)
            if self._blocks.get(block.id) != meta:
                name = f"capture_blocks/{safe_name(block.id)}"
                write_attrs(self._group, name, meta)
                self._blocks[block.id] = meta
                self._note("capture_blocks/zarr.json", f"{name}/zarr.json")

    def _write_descriptors(self) -> None:
        """Write the stream's SPEAD descriptors (``spead_descriptors``) when they change.

        Into the group's attributes, as an HDF5 file has them (the
        read-modify-write of the group's metadata under the store's lock on
        local stores; writers of one stream send the same descriptors), and
        into this writer's ``writers/<offset>`` (its own).
        """
        descriptors = self.context.descriptors()
        if descriptors == self._descriptors:
            return
        with resize_lock(self.url):
            self._group.attrs.update({"spead_descriptors": descriptors})
        name = f"writers/{self.layout.substream_offset}"
        write_attrs(self._group, name, {"spead_descriptors": descriptors})
        self._descriptors = descriptors
        self._note("zarr.json", f"{name}/zarr.json")

    # ------------------------------------------------------------------
    # Durability (local stores)

    def _note(self, *keys: str) -> None:
        """Remember store keys (files of a local store) to fsync at the next `sync`."""
        if not self.local:
            return
        if len(self._dirty) + len(keys) > DIRTY_MAX:
            # Nobody asked for a sync for a long while (fsync = "never", no log):
            # the next sync, if one comes, syncs everything rather than a list.
            self._dirty.clear()
            self._sync_everything = True
        if not self._sync_everything:
            self._dirty.update(os.path.join(self._root, key) for key in keys)

    def _note_dirty(self, rows: list[tuple[Any, ...]]) -> None:
        """Remember the chunk files of `rows` (this daemon's region of every array)."""
        keys = []
        sc = self.layout.substream_chunk
        chunks = range(self.layout.substream_offset // sc,
                       (self.layout.substream_offset + self.layout.substreams) // sc)
        for index, *_ in rows:
            for name, array in self._arrays.items():
                meta = array.metadata
                ndim = len(meta.shape)
                coords = [(index // COORD_CHUNK,)] if ndim == 1 else \
                    [(index, 0, c) + (0,) * (ndim - 3) for c in chunks]
                keys += [f"{name}/{meta.encode_chunk_key(coord)}" for coord in coords]
        self._note(*keys)

    def _fsync_dirty(self) -> None:
        """Fsync the chunk files written since the last time, then their directories.

        Many at once, from a pool of threads: a journaling file system then
        commits them together (512 chunk files: 0.15 s rather than 0.6 s one
        after the other here, as fast as ``syncfs``).
        """
        if self._sync_everything:
            os.sync()           # (no error to report: sync(2) has none)
            self._sync_everything = False
        if not self._dirty:
            return
        root = self._root
        directories: set[str] = set()
        for path in self._dirty:
            directory = os.path.dirname(path)
            while directory.startswith(root) and directory not in directories:
                directories.add(directory)      # new directories too, up to the store's root
                directory = os.path.dirname(directory)
        if self._fsyncs is None:
            self._fsyncs = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="zarr-fsync")
        vanished = [p for p in self._fsyncs.map(_fsync_file, sorted(self._dirty)) if p]
        list(self._fsyncs.map(partial(fsync_path, directory=True), sorted(directories)))
        self._dirty.clear()
        if vanished:            # reported once: later syncs do not wait for them forever
            raise OSError(errno.ENOENT, f"{len(vanished)} file(s) of the store vanished before "
                          "they were fsynced", vanished[0])

    # ------------------------------------------------------------------
    # Counting

    def _lose(self, reason: str, why: str) -> None:
        self._lost[reason] += 1
        self._counts["errors"] += 1
        self._counts["last_error"] = why

    def _note_error(self, exc: BaseException) -> None:
        self._counts["errors"] += 1
        self._counts["last_error"] = str(exc) if isinstance(exc, LayoutMismatch) \
            else describe_error(exc)


def _fsync_file(path: str) -> str:
    """Fsync `path`; return it if it no longer exists ("" otherwise)."""
    try:
        fsync_path(path)
    except FileNotFoundError:
        return path
    return ""


def _plain_bytes(array: Any) -> bool:
    """Whether `array`'s chunks are its values' bytes (the ``bytes`` codec alone)."""
    codecs = array.metadata.codecs
    return (len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
            and codecs[0].endian in (None, Endian.little) and bool(array.store_path.path))


def _run_all(writes: list[Any]) -> None:
    """Run every write (a function and its arguments): async ones at once, on zarr's loop."""
    waits = [(write, args) for write, *args in writes if asyncio.iscoroutinefunction(write)]
    for write, *args in writes:
        if not asyncio.iscoroutinefunction(write):
            write(*args)
    if waits:
        async def run() -> None:
            await asyncio.gather(*(write(*args) for write, args in waits))
        zarr_sync(run())


def write_chunk_file(path: str, data: np.ndarray) -> None:
    """Write one chunk of a local store as zarr's `LocalStore` does: a temporary file renamed.

    A reader sees the old chunk or the new one, never half of one.  The
    array's directory is made again if something removed it.
    """
    tmp = f"{path}.{os.getpid()}.partial"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, [data], 0)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
