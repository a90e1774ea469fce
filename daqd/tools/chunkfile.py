"""Chunk-mode files read back in blocks of records: HDF5 and binary sink files, Zarr stores.

What each format holds (INTERFACES.md, ``daqd/sinks/binary.py``):

- an **HDF5** file has ``data``, ``present`` (per heap slot, 1 = received),
  ``chunk_id`` and ``timestamp`` per record, and ``sync_time`` /
  ``timestamp_rate`` attributes (and a ``utc`` dataset) when the stream has
  ``[stream.time]``;
- a **Zarr** store (the zarr sink's, a directory or an fsspec URL) has the same
  arrays as an HDF5 file, indexed by time index rather than record; it is read
  from its first to its last time index with a heap present;
- a **binary** file has the records' ``data`` only, after its JSON header
  (which has ``sync_time`` / ``timestamp_rate`` with ``[stream.time]``):
  no presence, no chunk ids, no timestamps.  A missing slot there is whatever
  the pool chunk held, so no loss map can be drawn from it.

The readers never load a file whole: `ChunkFile.blocks` yields a bounded
number of records at a time, and reads ``data`` only when asked to.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from daqd.errors import UsageProblem

#: Bytes of ``data`` read at once (a block holds at least one record).
BLOCK_BYTES = 8 << 20
#: Chunk ids absent from a file get rows of their own (`ChunkFile.rows`) unless that would
#: take more than this many rows per record (a jump in chunk ids, e.g. after a long pause).
MAX_ROWS_PER_RECORD = 4


@dataclass
class Block:
    """Records ``start .. start + len(present or data)`` of a chunk file.

    Attributes
    ----------
    start : int
        Index of the block's first record.
    timestamp : numpy.ndarray or None
        Data timestamp of each record's first slot (None: binary files).
    utc : numpy.ndarray or None
        Unix seconds of each record's first slot, when the file can say.
    present : numpy.ndarray or None
        ``(rows, heaps_per_chunk, substreams)`` uint8, 1 = received (None: binary files).
    data : numpy.ndarray or None
        ``(rows, heaps_per_chunk, substreams, samples)``, when asked for.
    """

    start: int
    timestamp: np.ndarray | None
    utc: np.ndarray | None
    present: np.ndarray | None
    data: np.ndarray | None


@dataclass
class ChunkFile:
    """A chunk-mode file opened for reading (`open_chunk_file`)."""

    path: str
    kind: str                      # "hdf5" | "zarr" | "binary"
    stream: str
    records: int
    heaps_per_chunk: int
    substreams: int
    dtype: np.dtype[Any]
    samples: int
    sync_time: float | None        # Unix seconds of timestamp 0, if the file says
    timestamp_rate: float | None   # timestamp ticks per second, if the file says
    chunk_ids: np.ndarray | None = None    # per record (hdf5 files)
    _h5: Any = None                # an h5py File, or a zarr Group: the same names
    _memmap: np.ndarray | None = None
    first: int = 0                 # the first time index read (zarr stores)

    @property
    def has_presence(self) -> bool:
        """Whether the file records which heap slots were received."""
        return self.kind in ("hdf5", "zarr")

    @property
    def slots(self) -> int:
        """Heap slots per record: heaps_per_chunk x substreams."""
        return self.heaps_per_chunk * self.substreams

    def row_of_record(self) -> np.ndarray:
        """Return the row of each record in a map with one row per chunk id, first to last.

        So a chunk that never reached the file has a row too, empty.  Where
        the file has no chunk ids, or they jump too far (more than
        `MAX_ROWS_PER_RECORD` rows per record), one row per record.
        """
        ids = self.chunk_ids
        if ids is None or len(ids) == 0:
            return np.arange(self.records)
        rows = ids - ids[0]
        if int(rows[-1]) + 1 > MAX_ROWS_PER_RECORD * len(ids) + 16:
            return np.arange(self.records)
        return rows

    def block_rows(self) -> int:
        """Return the records per block: `BLOCK_BYTES` of data, at least one record."""
        record = max(1, self.slots * self.samples * self.dtype.itemsize)
        return max(1, BLOCK_BYTES // record)

    def blocks(self, data: bool = True, rows: int | None = None) -> Iterator[Block]:
        """Yield the records in blocks of `rows` (default `block_rows`); `data`: read it too."""
        rows = rows or self.block_rows()
        for start in range(0, self.records, rows):
            stop = min(self.records, start + rows)
            if self._h5 is not None:
                h5 = self._h5
                at = slice(self.first + start, self.first + stop)
                ts = np.asarray(h5["timestamp"][at])
                utc = np.asarray(h5["utc"][at]) if "utc" in h5 else None
                if utc is None and self.sync_time is not None and self.timestamp_rate:
                    utc = self.sync_time + ts.astype(np.float64) / self.timestamp_rate
                yield Block(start, ts, utc, np.asarray(h5["present"][at]),
                            np.asarray(h5["data"][at]) if data else None)
            else:
                assert self._memmap is not None
                yield Block(start, None, None, None,
                            np.asarray(self._memmap[start:stop]) if data else None)

    def close(self) -> None:
        """Close the file."""
        if self._h5 is not None:
            if self.kind == "hdf5":
                self._h5.close()
            self._h5 = None
        self._memmap = None

    def __enter__(self) -> ChunkFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unix_seconds(value: Any) -> float:
    """Return a ``sync_time`` attribute (Unix seconds or ISO 8601 text) as Unix seconds."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    return float(value)


def _open_hdf5(path: str) -> ChunkFile:
    import h5py

    h5 = h5py.File(path, "r")
    try:
        missing = [n for n in ("data", "present", "timestamp") if n not in h5]
        if missing:
            raise UsageProblem(f"{path}: not a daqd chunk file (no {', '.join(missing)} "
                               "dataset)")
        data = h5["data"]
        if data.ndim != 4:
            raise UsageProblem(f"{path}: dataset data has {data.ndim} dimensions, not 4")
        attrs = h5.attrs
        sync = attrs.get("sync_time")
        rate = attrs.get("timestamp_rate")
        stream = attrs.get("stream", "")
        return ChunkFile(
            path=path, kind="hdf5",
            stream=stream.decode() if isinstance(stream, bytes) else str(stream),
            records=int(data.shape[0]), heaps_per_chunk=int(data.shape[1]),
            substreams=int(data.shape[2]), dtype=data.dtype, samples=int(data.shape[3]),
            sync_time=None if sync is None else _unix_seconds(sync),
            timestamp_rate=None if rate is None else float(rate),
            chunk_ids=np.asarray(h5["chunk_id"][:], np.int64) if "chunk_id" in h5 else None,
            _h5=h5)
    except BaseException:
        h5.close()
        raise


def _open_zarr(path: str) -> ChunkFile:
    """Open a zarr sink's store: its time indexes from the first to the last with a heap."""
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        layout = group.attrs.get("daqd_layout")
        if not isinstance(layout, dict) or "present" not in group or "data" not in group:
            raise UsageProblem(f"{path}: not a daqd Zarr store (no daqd_layout attribute)")
        present, data = group["present"], group["data"]
        if not isinstance(present, zarr.Array) or not isinstance(data, zarr.Array):
            raise UsageProblem(f"{path}: not a daqd Zarr store (present, data not arrays)")
        written: list[int] = []
        step = max(1, BLOCK_BYTES // max(1, present.nbytes // max(1, present.shape[0])))
        for start in range(0, present.shape[0], step):      # bounded reads, as blocks()
            rows = np.flatnonzero(np.asarray(present[start:start + step]).any(axis=(1, 2)))
            if rows.size:
                written += [start + int(rows[0]), start + int(rows[-1])]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageProblem(f"{path}: cannot read as a Zarr store: {exc}") from None
    first, last = (min(written), max(written)) if written else (0, -1)
    sync: Any = group.attrs.get("sync_time")           # JSON values, checked as converted
    rate: Any = group.attrs.get("timestamp_rate")
    origin_id = int(layout["origin"]) // (int(layout["timestamp_step"])
                                          * int(layout["heaps_per_chunk"]))
    return ChunkFile(
        path=path, kind="zarr", stream=str(group.attrs.get("stream", "")),
        records=last - first + 1, heaps_per_chunk=int(data.shape[1]),
        substreams=int(data.shape[2]), dtype=np.dtype(layout["dtype"]),
        samples=int(data.shape[3]), sync_time=None if sync is None else _unix_seconds(sync),
        timestamp_rate=None if rate is None else float(rate),
        chunk_ids=origin_id + np.arange(first, last + 1, dtype=np.int64), _h5=group,
        first=first)


def _open_binary(path: str) -> ChunkFile:
    from daqd.sinks.binary import load

    try:
        meta, data = load(path)
    except (ValueError, KeyError) as exc:
        raise UsageProblem(f"{path}: {exc}") from None
    hpc, subs, samples = (int(x) for x in meta["record_shape"])
    sync, rate = meta.get("sync_time"), meta.get("timestamp_rate")
    return ChunkFile(path=path, kind="binary", stream=str(meta.get("stream", "")),
                     records=int(data.shape[0]), heaps_per_chunk=hpc, substreams=subs,
                     dtype=np.dtype(meta["dtype"]), samples=samples,
                     sync_time=None if sync is None else _unix_seconds(sync),
                     timestamp_rate=None if rate is None else float(rate), _memmap=data)


def open_chunk_file(path: str) -> ChunkFile:
    """Open an HDF5 or binary chunk-mode sink file, or a zarr sink's store (a directory).

    Raises
    ------
    UsageProblem
        The file is missing, unreadable, or not a chunk-mode daqd file.
    """
    from daqd.sinks.binary import MAGIC

    if "://" in path or os.path.isdir(path):
        return _open_zarr(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UsageProblem(f"{path}: cannot read: {exc.strerror}") from None
    if head == MAGIC:
        return _open_binary(path)
    if head == b"\x89HDF\r\n\x1a\n":
        try:
            return _open_hdf5(path)
        except OSError as exc:
            raise UsageProblem(f"{path}: cannot read as HDF5: {exc}") from None
    raise UsageProblem(f"{path}: neither an HDF5 file nor a daqd binary file with its header")
