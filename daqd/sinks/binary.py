r"""The ``binary`` sink: records verbatim, after an optional self-describing header.

File format (``header = true``, the default)::

    offset 0    8 bytes   magic b"DAQDBIN1"
    offset 8    4 bytes   H, the header size in bytes (uint32, little-endian),
                          a multiple of 4096 so records start page-aligned
    offset 12   H - 12    a JSON object in UTF-8, padded with spaces, ending "\n"
    offset H    ...       the records, back to back

The JSON object holds ``format`` ("daqd.binary/1"), ``daqd_version``,
``stream``, ``mode`` ("chunk" or "heap"), ``created`` (UTC, ISO 8601),
``first_chunk_id`` (chunk id or heap counter of the first record), and
``header_bytes`` (H).  In chunk mode each record is one chunk's ``data``
array, C order: ``dtype`` (a numpy dtype string such as "<u2"),
``record_shape`` ([heaps_per_chunk, substreams, samples]) and
``record_bytes`` say how to read it, next to ``timestamp_step``,
``heaps_per_chunk``, ``substreams``, ``heap_bytes`` and ``extra_items``.
Presence, chunk ids and timestamps are not in this format (use ``hdf5``).
So, with numpy::

    meta = read_header(path)
    data = np.memmap(path, meta["dtype"], "r", meta["header_bytes"]).reshape(
        -1, *meta["record_shape"])

which `load` does.  In heap mode each record is the heap's payload: its
addressed items' bytes in item id order (`HeapRecord.payload`), with no
length prefix; ``record_bytes`` is null.  With ``header = false`` the file
holds the records only.

The observation (`FileSink.file_metadata`, the same keys as the HDF5
attributes): ``sync_time`` and ``timestamp_rate`` with ``[stream.time]``
(a record's UTC is ``sync_time + timestamp / timestamp_rate``); the sink's
extra metadata (an event file's trigger window); ``capture_block_id``,
``capture_start``, ``capture_stop`` (ticks, -1 = open) and their ``_utc``
inside a capture block; ``written_start`` / ``written_end``, the data time
the records cover (ticks, ``[start, end)``) and their ``_utc``; and
``spead_descriptors``, the stream's SPEAD item descriptors (``id``,
``name``, ``description``, ``shape``, ``format``, ``dtype``).

The header is written when the file starts, with ``written_start`` and
``written_end`` -1, and rewritten in place, at the same size H, when the
file is finished (or recovered after a crash): then it has the written
span and the block's stop.  H is chosen at the start with `HEADER_SPARE`
bytes of padding to spare for this.  Readers take the JSON object as it
is, so files of earlier versions (without these keys) read the same;
`read_header` never needs more than the prefix and H bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from typing import Any

import numpy as np

import daqd
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.sinks.base import ByteSink, Piece, SinkFile, write_all

MAGIC = b"DAQDBIN1"
FORMAT = "daqd.binary/1"
_ALIGN = 4096
#: Padding a header keeps, when the file starts, for what it gains when it is finished.
HEADER_SPARE = 1024
_PREFIX = struct.Struct("<8sI")


class BinarySink(ByteSink):
    """Records verbatim: chunk data (chunk mode) or heap payloads (heap mode)."""

    kind = "binary"

    def __init__(self, context: Any):
        super().__init__(context)
        chunk = context.chunk
        self.accepts = (ChunkRecord,) if chunk is not None else (HeapRecord,)
        if chunk is not None:
            self.dtype = np.dtype(chunk.dtype)
            samples = chunk.heap_bytes // self.dtype.itemsize
            self.record_shape = (chunk.heaps_per_chunk, chunk.substreams, samples)
            self.record_bytes = chunk.heaps_per_chunk * chunk.substreams * chunk.heap_bytes

    def _encode(self, record: Any) -> Piece:
        if isinstance(record, HeapRecord):
            payload = record.payload
            return Piece(record, len(payload), [payload], record.cnt)
        data = np.ascontiguousarray(record.data, dtype=self.dtype)
        if data.nbytes != self.record_bytes:
            raise ValueError(f"chunk {record.chunk_id} has {data.nbytes} data bytes, "
                             f"not the layout's {self.record_bytes}")
        return Piece(record, data.nbytes, [data], record.chunk_id)

    def _header(self, first: Piece) -> bytes:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "daqd_version": daqd.__version__,
            "stream": self.context.stream,
            "created": dt.datetime.fromtimestamp(self.context.wall_clock(), dt.UTC)
            .isoformat(timespec="microseconds"),
            "first_chunk_id": first.key,
        }
        chunk = self.context.chunk
        if chunk is not None:
            meta.update(
                mode="chunk", dtype=self.dtype.str, record_shape=list(self.record_shape),
                record_bytes=self.record_bytes, timestamp_step=chunk.timestamp_step,
                heaps_per_chunk=chunk.heaps_per_chunk, substreams=chunk.substreams,
                heap_bytes=chunk.heap_bytes, extra_items=list(chunk.extra_items))
        else:
            meta.update(mode="heap", dtype="|u1", record_shape=None, record_bytes=None)
        meta.update(self.file_metadata(block=getattr(first.record, "capture_block", None)))
        meta["spead_descriptors"] = self.context.descriptors()
        return encode_header(meta, spare=HEADER_SPARE)

    def _seal(self, f: SinkFile) -> None:
        if self.config.header:
            try:
                rewrite_header(f.tmp, self._finished_metadata(f), f.handle)
            except ValueError as exc:   # cannot fit: the header stays as it started
                self._note_error(exc)

    def _finished_metadata(self, f: SinkFile | None = None, **state: Any) -> dict[str, Any]:
        return {**self.file_metadata(f, **state),
                "spead_descriptors": self.context.descriptors()}

    @classmethod
    def recover_file(cls, context: Any, path: str, state: dict[str, Any]) -> str:
        """Cut `path` back to the checkpointed bytes and rewrite its header's finish keys."""
        done = super().recover_file(context, path, state)
        if context.config.header:
            block, written = SinkFile.recovered(state)
            rewrite_header(path, cls(context)._finished_metadata(block=block, written=written))
        return done


def encode_header(meta: dict[str, Any], *, spare: int = 0, size: int | None = None) -> bytes:
    """Encode the header for `meta` (``header_bytes`` is filled in).

    The size is the smallest multiple of 4096 that leaves `spare` bytes of
    padding, or exactly `size` (ValueError if `meta` does not fit).
    """
    fixed = size is not None
    size = size or _ALIGN
    while True:
        text = json.dumps({**meta, "header_bytes": size}, indent=1).encode()
        room = size - _PREFIX.size - 1
        if len(text) + (0 if fixed else spare) <= room:
            return _PREFIX.pack(MAGIC, size) + text + b" " * (room - len(text)) + b"\n"
        if fixed:
            raise ValueError(f"header of {len(text)} bytes does not fit in {size}")
        size += _ALIGN


def rewrite_header(path: str, update: dict[str, Any], fd: int | None = None) -> None:
    """Rewrite the header of `path` in place with the keys of `update`, at its size.

    Writes through `fd` when given (the sink's open file).  If the update
    does not fit, it is written without ``spead_descriptors`` (the header
    keeps those it had); if even that does not fit, ValueError.
    """
    meta = read_header(path)
    size = int(meta["header_bytes"])
    try:
        data = encode_header({**meta, **update}, size=size)
    except ValueError:
        update = {k: v for k, v in update.items() if k != "spead_descriptors"}
        data = encode_header({**meta, **update}, size=size)
    if fd is not None:
        write_all(fd, [data], 0)
        return
    with open(path, "r+b") as f:
        f.write(data)


def read_header(path: str) -> dict[str, Any]:
    """Read the JSON header of a binary sink file.

    Raises
    ------
    ValueError
        The file does not start with a daqd binary header.
    """
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise ValueError(f"{path}: too short for a daqd binary header")
        magic, size = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ValueError(f"{path}: not a daqd binary file (magic {magic!r})")
        meta: dict[str, Any] = json.loads(f.read(size - _PREFIX.size))
    return meta


def load(path: str) -> tuple[dict[str, Any], np.ndarray]:
    """Read the header and records of a chunk-mode binary file (records memory-mapped).

    Returns
    -------
    meta : dict
        The JSON header.
    data : numpy.ndarray
        Shape ``(n, heaps_per_chunk, substreams, samples)``.
    """
    meta = read_header(path)
    if meta["mode"] != "chunk":
        raise ValueError(f"{path}: heap-mode records have no fixed size")
    shape = tuple(meta["record_shape"])
    itemsize = np.dtype(meta["dtype"]).itemsize
    with open(path, "rb") as f:
        f.seek(0, 2)
        n = (f.tell() - meta["header_bytes"]) // meta["record_bytes"]
    if n == 0:
        return meta, np.zeros((0, *shape), meta["dtype"])
    count = n * meta["record_bytes"] // itemsize
    data = np.memmap(path, meta["dtype"], "r", meta["header_bytes"], (count,))
    return meta, data.reshape(n, *shape)
