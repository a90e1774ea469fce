"""Records: what flows from the receive side through a buffer to the sinks.

Three kinds, one per mode of DESIGN.md plus the raw packets the pcap sink
keeps:

- `ChunkRecord`: one completed chunk (chunk mode).  It wraps a pool chunk
  without copying it; `release()` gives the chunk back to the free ring and
  is called once, after every sink has written the record (or it is dropped).
- `HeapRecord`: one complete heap's items (heap mode), raw, with the item
  descriptors the stream knew when the heap arrived; `decode()` gives their
  values as spead2's ItemGroup would (`daqd.pipeline.items`).  With
  ``contiguous_only = false`` an incomplete heap is a record too: no items,
  and its `Incomplete` (heap length, bytes received, payload ranges).
- `PacketRecord`: a batch of raw packets as received, for the pcap sink.

Every record has `nbytes` (payload bytes, for byte thresholds and sink
accounting), `hold()`, `release()`, `encode_parts()` and `encode()`;
`decode_record()` turns `encode()`'s bytes back into a record (the
write-ahead log stores these).  `encode_parts()` gives the same bytes as a
list of buffers without copying the record's data: a chunk record's parts
are views of its chunk's arrays, which the write-ahead log writes (and
checksums) in place, so a chunk's data is never copied on its way into the
log.
A record may have several holders (the buffer, the trigger retention, an
event being written): each `hold()` is one more `release()` owed, and a chunk
record gives its chunk back to the pool on the last release (thread-safe);
releases beyond the last do nothing.
Chunk and heap records carry the `capture_block` that admitted them (None
outside capture blocks): the sinks start a block's files on it and write its
id, start and stop into them.  `encode()` keeps it (records replayed from the
log share one block object per id and start), and a record outside blocks
encodes as before.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from daqd._spead import Chunk
from daqd.pipeline.datatime import CaptureBlock
from daqd.pipeline.items import EMPTY_DESCRIPTORS, DecodedItems, ItemDescriptors

# encode() layouts: a kind byte, then a fixed header, then the variable parts.
_KIND_CHUNK, _KIND_HEAP, _KIND_PACKETS = b"C", b"H", b"P"
# A heap record with descriptors: the heap layout, then _DESCRIBED and the
# descriptors of its items as JSON (daqd.pipeline.items.ItemDescriptors.encode).
_KIND_DESCRIBED_HEAP = b"D"
# chunk: chunk_id, timestamp, data bytes, present bytes, extra bytes, dtype len,
# ndim of data, then dtype str, data shape, present shape, extra shape
_CHUNK_HEAD = struct.Struct("<qQQQQBB")
# heap: cnt, received time, number of items
_HEAP_HEAD = struct.Struct("<QdI")
# one heap item: id, immediate flag, value (immediate) or length (addressed)
_ITEM = struct.Struct("<QBQ")
# after the items of a described heap: address bits, length of the descriptors' JSON
_DESCRIBED = struct.Struct("<BI")
# An incomplete heap (no items): _INCOMPLETE_HEAD (cnt, received time, heap length or -1,
# bytes received, number of ranges), then each payload range as _RANGE (start, end).
_KIND_INCOMPLETE_HEAP = b"I"
_INCOMPLETE_HEAD = struct.Struct("<QdqQI")
_RANGE = struct.Struct("<QQ")
# packets: receive time, number of packets
_PACKETS_HEAD = struct.Struct("<dI")
# encode_parts(): the encoding as buffers written back to back (bytes, or views
# of a record's arrays).
Parts = list[bytes | memoryview]
# Guards every chunk record's hold count (holds are taken a few times per chunk).
_HOLDS = threading.Lock()

# A record in a capture block: _IN_BLOCK (the length of the block's JSON: id,
# start, stop), the JSON, then the record's own encoding.
_KIND_IN_BLOCK = b"B"
_IN_BLOCK = struct.Struct("<I")
# Blocks decoded so far, by (id, start): the records of one block replayed from
# the write-ahead log share one CaptureBlock, as they did when they were made
# (the sinks start a new file when a record's block is another object).
_DECODED_BLOCKS: weakref.WeakValueDictionary[tuple[str, int | None], CaptureBlock] = \
    weakref.WeakValueDictionary()


def _in_block(block: CaptureBlock | None, parts: Parts) -> Parts:
    """Return `parts` as they are, or after their capture block's wrapper (kind ``B``)."""
    if block is None:
        return parts
    meta = json.dumps({"id": block.id, "start": block.start, "stop": block.stop}).encode()
    return [_KIND_IN_BLOCK, _IN_BLOCK.pack(len(meta)), meta, *parts]


def _bytes_of(array: np.ndarray) -> memoryview:
    """Return the bytes of `array` in C order as a flat view (copied only if not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _decode_block(body: memoryview) -> tuple[CaptureBlock, memoryview]:
    """Return the capture block of a kind ``B`` record (shared, see above) and its record."""
    (size,) = _IN_BLOCK.unpack_from(body)
    try:
        meta = json.loads(bytes(body[_IN_BLOCK.size:_IN_BLOCK.size + size]))
        key = (str(meta["id"]), meta["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad capture block in a record: {exc}") from None
    block = _DECODED_BLOCKS.get(key)
    if block is None:
        block = _DECODED_BLOCKS[key] = CaptureBlock(key[0], meta["start"], meta["stop"])
    elif block.stop is None:
        block.stop = meta["stop"]
    return block, body[_IN_BLOCK.size + size:]


def slots_present(present: np.ndarray) -> np.ndarray:
    """Return which heap slots of a chunk arrived whole (bool, ``present``'s slot axes).

    ``present`` is one flag per heap slot, ``(heaps_per_chunk, substreams)``,
    or with packet presence one per packet, ``(..., packets_per_heap)``: a
    slot is present when every one of its packets arrived.  This is the one
    place that reduction is written (records, sinks, statistics use it).
    """
    present = np.asarray(present)
    return np.asarray(present.all(axis=-1)) if present.ndim > 2 else present != 0


class _Logged:
    """What every record kind shares: its write-ahead log bytes, from its parts."""

    def encode(self) -> bytes:
        """Serialise for the write-ahead log (`decode_record` inverts it).

        The log itself writes `encode_parts()` without joining them.
        """
        return b"".join(self.encode_parts())

    def encode_parts(self) -> Parts:
        """Return the record's log bytes as buffers, not joined (each kind has its own)."""
        raise NotImplementedError


@dataclass(eq=False)
class ChunkRecord(_Logged):
    """A completed chunk: `data`, `present`, optional `extra`, `chunk_id`, `timestamp`.

    The arrays are views of the pool chunk (no copy) until the last
    `release()`; after that they must not be read.  The record is made with
    one hold (its maker's); `hold()` adds one for another holder.  Records
    decoded from the write-ahead log own their arrays and have nothing to
    release.
    """

    chunk_id: int
    timestamp: int
    data: np.ndarray
    present: np.ndarray
    extra: np.ndarray | None = None
    received: float = field(default_factory=time.time)
    _release: Callable[[], None] | None = field(default=None, repr=False)
    capture_block: CaptureBlock | None = field(default=None, repr=False, kw_only=True)
    _holds: int = field(default=1, init=False, repr=False)

    @classmethod
    def from_chunk(cls, chunk: Any, extra: bool = True) -> ChunkRecord:
        """Wrap a `daqd._spead.Chunk` (its arrays are not copied)."""
        return cls.from_chunks((chunk,), extra)[0]

    @classmethod
    def from_chunks(cls, chunks: Iterable[Any], extra: bool = True) -> list[ChunkRecord]:
        """Wrap several chunks (a batch of ``ChunkGroup.get_batch``), in order.

        One record per chunk, as `from_chunk` makes it, all with one
        `received` time (they were handed over together); arguments by
        position, which costs a fraction of keywords' per record.
        """
        received = time.time()
        out = []
        for chunk in chunks:
            more = chunk.extra if extra else None
            if more is not None and not more.size:
                more = None
            out.append(cls(int(chunk.chunk_id), int(chunk.timestamp), chunk.data, chunk.present,
                           more, received, chunk.release))
        return out

    @property
    def nbytes(self) -> int:
        """Payload bytes (byte thresholds, sink accounting)."""
        return int(self.data.nbytes)

    @property
    def slots_present(self) -> np.ndarray:
        """Which heap slots arrived whole, ``(heaps_per_chunk, substreams)`` (`slots_present`)."""
        return slots_present(self.present)

    @property
    def heaps_present(self) -> int:
        """Heap slots that arrived whole."""
        return int(np.count_nonzero(self.slots_present))

    @property
    def heaps(self) -> int:
        """Heap slots in the chunk."""
        return int(self.slots_present.size)

    @property
    def fraction_present(self) -> float:
        """Fraction of the chunk's heap slots that arrived whole (heaps_present / heaps)."""
        slots = self.slots_present
        return float(np.count_nonzero(slots)) / slots.size if slots.size else 0.0

    @property
    def holds(self) -> int:
        """Holders that have not released the record yet (0: the chunk is back in the pool)."""
        return self._holds

    def hold(self) -> ChunkRecord:
        """Take one more hold (another holder now owes a `release()`); return the record.

        Raises
        ------
        ValueError
            The record was released by its last holder: its chunk may be reused.
        """
        with _HOLDS:
            if self._holds <= 0:
                raise ValueError(f"chunk {self.chunk_id} was released; it cannot be held")
            self._holds += 1
        return self

    def release(self) -> None:
        """Drop one hold; the last gives the chunk back to the pool (later calls do nothing)."""
        with _HOLDS:
            if self._holds <= 0:
                return
            self._holds -= 1
            if self._holds:
                return
            release, self._release = self._release, None
        if release is not None:
            release()

    def encode_parts(self) -> Parts:
        """Return `encode()`'s bytes as buffers: headers, then views of the arrays (no copy).

        The views are of the pool chunk: they must be used before the last
        `release()`.
        """
        dtype = self.data.dtype.str.encode()
        extra = self.extra if self.extra is not None else np.zeros((0,), np.uint64)
        shapes = (self.data.shape, self.present.shape, extra.shape)
        head = _CHUNK_HEAD.pack(
            self.chunk_id, self.timestamp, self.data.nbytes, self.present.nbytes,
            extra.nbytes, len(dtype), len(shapes[0]),
        )
        dims = struct.pack(
            f"<B{len(shapes[1])}QB{len(shapes[2])}Q{len(shapes[0])}Q",
            len(shapes[1]), *shapes[1], len(shapes[2]), *shapes[2], *shapes[0],
        )
        return _in_block(self.capture_block, [
            _KIND_CHUNK + head + dtype + dims,
            _bytes_of(self.data),
            _bytes_of(self.present),
            _bytes_of(np.asarray(extra, dtype=np.uint64)),
        ])


def release_records(records: Iterable[Any]) -> None:
    """Release each of `records` once, as its `release()` would, the chunks together.

    Each record's hold is dropped (under one lock for the chunk records);
    the chunks whose last hold went are given back with one
    ``ChunkGroup.release_many`` per group, so a flushed slice wakes the
    receive threads waiting for a free chunk once rather than once per
    chunk.  Other records, and chunk records whose release is not a pool
    chunk's (records made elsewhere, with a callable of their own), are
    released one by one.
    """
    others: list[Any] = []
    calls: list[Callable[[], None]] = []
    chunks: list[Any] = []
    with _HOLDS:
        for record in records:
            if type(record) is not ChunkRecord:
                others.append(record)
                continue
            holds = record._holds
            if holds > 1:
                record._holds = holds - 1
            elif holds == 1:
                record._holds = 0
                release, record._release = record._release, None
                if release is None:
                    continue
                chunk = getattr(release, "__self__", None)
                if type(chunk) is Chunk:
                    chunks.append(chunk)
                else:
                    calls.append(release)   # not a pool chunk's release
    for record in others:
        record.release()
    for call in calls:
        call()
    if chunks:
        _give_back(chunks)


def _give_back(chunks: list[Any]) -> None:
    """Give pool chunks back with one ``release_many`` per group.

    A chunk given back already (``release_many`` then gave none back): the
    others go back one by one and the first error is raised, as ``release()``
    of each would.
    """
    try:
        chunks[0].group.release_many(chunks)        # checks every chunk first
    except ValueError:                              # chunks of several groups
        by_group: dict[Any, list[Any]] = {}
        for chunk in chunks:
            by_group.setdefault(chunk.group, []).append(chunk)
        for mine in by_group.values():
            _give_back(mine)
    except RuntimeError:
        failed = None
        for chunk in chunks:
            try:
                chunk.release()
            except RuntimeError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed from None


class Incomplete(NamedTuple):
    """What an incomplete heap's record keeps of the heap (spead2's ``IncompleteHeap``).

    Attributes
    ----------
    heap_length : int
        HEAP_SIZE, or -1 if no packet carried it (spead2's ``heap_length``).
    received_bytes : int
        Payload bytes received (spead2's ``received_length``).
    payload_ranges : tuple of (int, int)
        The received payload as sorted ``[start, end)`` ranges, adjacent ones
        merged (spead2's ``payload_ranges`` with ``incomplete_keep_payload_ranges``).
    """

    heap_length: int
    received_bytes: int
    payload_ranges: tuple[tuple[int, int], ...]

    @classmethod
    def from_heap(cls, heap: Any) -> Incomplete:
        """Take them from an incomplete `daqd._spead.Heap` (its values are Python ints)."""
        return cls(heap.length, heap.received, tuple(heap.payload_ranges or ()))


@dataclass(eq=False)
class HeapRecord(_Logged):
    """A complete heap's items: id -> int (immediate) or bytes (addressed).

    `items` stay raw (the binary sink writes them as they came); `decode()`
    applies `descriptors`, the stream's item descriptors when the heap
    arrived (given as an `ItemDescriptors`, or as `decode_descriptors`
    dicts), and keeps the result.  `address_bits` is the heap's flavour
    (how many bytes an immediate value holds).  Both go into `encode()`, so
    a record replayed from the write-ahead log decodes as it did when it was
    received, whatever the stream has learnt since.

    `incomplete` is None for a complete heap; for an incomplete one (kept
    with the stream's ``contiguous_only = false``) it says what arrived, and
    `items` is empty (spead2 gives an incomplete heap no items either).
    """

    cnt: int
    items: dict[int, int | bytes]
    received: float = field(default_factory=time.time)
    descriptors: ItemDescriptors = field(default_factory=lambda: EMPTY_DESCRIPTORS)
    address_bits: int = 48
    _decoded: DecodedItems | None = field(default=None, init=False, repr=False)
    capture_block: CaptureBlock | None = field(default=None, repr=False, kw_only=True)
    incomplete: Incomplete | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.descriptors, ItemDescriptors):
            self.descriptors = ItemDescriptors.from_dicts(self.descriptors)

    @classmethod
    def from_heap(cls, heap: Any, skip_ids: frozenset[int],
                  descriptors: ItemDescriptors = EMPTY_DESCRIPTORS) -> HeapRecord:
        """Build from a `daqd._spead.Heap`, leaving out the ids in `skip_ids`.

        An incomplete heap gives a record with no items and its `Incomplete`.
        """
        if not heap.complete:
            return cls(heap.cnt, {}, descriptors=descriptors, address_bits=heap.address_bits,
                       incomplete=Incomplete.from_heap(heap))
        return cls(heap.cnt, {i.id: i.value for i in heap.items if i.id not in skip_ids},
                   descriptors=descriptors, address_bits=heap.address_bits)

    @property
    def complete(self) -> bool:
        """Whether the whole heap arrived (else see `incomplete`)."""
        return self.incomplete is None

    def decode(self) -> DecodedItems:
        """Return the items decoded against `descriptors` (computed once, then kept).

        Never raises: items without a descriptor, or whose value does not fit
        it, keep their raw value and are counted (`DecodedItems.undescribed`,
        `DecodedItems.failed`).
        """
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = self.descriptors.decode_items(self.items,
                                                                    self.address_bits)
        return decoded

    @property
    def nbytes(self) -> int:
        """Payload bytes (byte thresholds, sink accounting)."""
        return sum(len(v) if isinstance(v, bytes) else 8 for v in self.items.values())

    @property
    def payload(self) -> bytes:
        """The addressed items' bytes, in item id order (what the binary sink writes)."""
        return b"".join(v for _, v in sorted(self.items.items()) if isinstance(v, bytes))

    def hold(self) -> HeapRecord:
        """Nothing to count: a heap record owns its values (returns the record)."""
        return self

    def release(self) -> None:
        """Nothing to give back: a heap record owns its values."""

    def encode_parts(self) -> Parts:
        """Return `encode()`'s bytes as buffers (the item values are not copied).

        A record none of whose items has a descriptor encodes as before
        descriptors were kept (kind ``H``); otherwise (kind ``D``) the
        descriptors of its items and `address_bits` follow the items.  An
        incomplete heap's record (kind ``I``) has no items: its cnt, time and
        `incomplete`.
        """
        if self.incomplete is not None:
            inc = self.incomplete
            return _in_block(self.capture_block, [
                _KIND_INCOMPLETE_HEAP,
                _INCOMPLETE_HEAD.pack(self.cnt, self.received, inc.heap_length,
                                      inc.received_bytes, len(inc.payload_ranges)),
                *(_RANGE.pack(a, b) for a, b in inc.payload_ranges)])
        described = self.descriptors.encode(self.items) if self.descriptors else b""
        kind = _KIND_DESCRIBED_HEAP if described else _KIND_HEAP
        parts: Parts = [kind, _HEAP_HEAD.pack(self.cnt, self.received, len(self.items))]
        for item_id, value in self.items.items():
            if isinstance(value, bytes):
                parts += [_ITEM.pack(item_id, 0, len(value)), value]
            else:
                parts.append(_ITEM.pack(item_id, 1, value))
        if described:
            parts += [_DESCRIBED.pack(self.address_bits, len(described)), described]
        return _in_block(self.capture_block, parts)


@dataclass(eq=False)
class PacketRecord(_Logged):
    """A batch of raw packets as received: `blob` holds them back to back."""

    blob: bytes
    lengths: np.ndarray          # uint32, one per packet
    received: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        """Payload bytes (byte thresholds, sink accounting)."""
        return len(self.blob)

    def packets(self) -> list[memoryview]:
        """Split `blob` into the packets, as views."""
        view = memoryview(self.blob)
        ends = np.cumsum(self.lengths, dtype=np.int64)
        starts = ends - self.lengths
        return [view[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]

    def hold(self) -> PacketRecord:
        """Nothing to count (returns the record)."""
        return self

    def release(self) -> None:
        """Nothing to give back."""

    def encode_parts(self) -> Parts:
        """Return `encode()`'s bytes as buffers (the packets are not copied)."""
        lengths = np.ascontiguousarray(self.lengths, dtype="<u4")
        return [_KIND_PACKETS, _PACKETS_HEAD.pack(self.received, len(lengths)),
                _bytes_of(lengths), self.blob]


Record = ChunkRecord | HeapRecord | PacketRecord


def decode_record(blob: bytes | memoryview) -> Record:
    """Rebuild the record `encode()` produced `blob` from.

    Raises
    ------
    ValueError
        `blob` is not an encoded record.
    """
    view = memoryview(blob)
    kind, body = bytes(view[:1]), view[1:]
    try:
        if kind == _KIND_IN_BLOCK:
            block, inner = _decode_block(body)
            record = decode_record(inner)
            if isinstance(record, PacketRecord):
                raise ValueError("a packet record in a capture block")
            record.capture_block = block
            return record
        if kind == _KIND_CHUNK:
            return _decode_chunk(body)
        if kind in (_KIND_HEAP, _KIND_DESCRIBED_HEAP):
            return _decode_heap(body, kind == _KIND_DESCRIBED_HEAP)
        if kind == _KIND_INCOMPLETE_HEAP:
            return _decode_incomplete_heap(body)
        if kind == _KIND_PACKETS:
            received, count = _PACKETS_HEAD.unpack_from(body)
            pos = _PACKETS_HEAD.size
            lengths = np.frombuffer(body, "<u4", count, pos).astype(np.uint32)
            pos += 4 * count
            if len(body) - pos != int(lengths.sum()):
                raise ValueError("packet lengths do not match the blob")
            return PacketRecord(bytes(body[pos:]), lengths, received)
    except struct.error as exc:
        raise ValueError(f"truncated record: {exc}") from None
    raise ValueError(f"unknown record kind {kind!r}")


def _decode_chunk(body: memoryview) -> ChunkRecord:
    chunk_id, timestamp, n_data, n_present, n_extra, n_dtype, ndim = \
        _CHUNK_HEAD.unpack_from(body)
    pos = _CHUNK_HEAD.size
    dtype = np.dtype(bytes(body[pos:pos + n_dtype]).decode())
    pos += n_dtype
    shapes = []
    for count in (None, None):
        (count,) = struct.unpack_from("<B", body, pos)
        shapes.append(struct.unpack_from(f"<{count}Q", body, pos + 1))
        pos += 1 + 8 * count
    data_shape = struct.unpack_from(f"<{ndim}Q", body, pos)
    pos += 8 * ndim
    if len(body) - pos != n_data + n_present + n_extra:
        raise ValueError("chunk sizes do not match the record")
    data = np.frombuffer(body, dtype, n_data // dtype.itemsize, pos).reshape(data_shape).copy()
    pos += n_data
    present = np.frombuffer(body, np.uint8, n_present, pos).reshape(shapes[0]).copy()
    pos += n_present
    extra = np.frombuffer(body, "<u8", n_extra // 8, pos).reshape(shapes[1]).astype(np.uint64)
    return ChunkRecord(chunk_id, timestamp, data, present, extra if extra.size else None)


def _decode_heap(body: memoryview, described: bool) -> HeapRecord:
    cnt, received, count = _HEAP_HEAD.unpack_from(body)
    pos = _HEAP_HEAD.size
    items: dict[int, int | bytes] = {}
    for _ in range(count):
        item_id, immediate, value = _ITEM.unpack_from(body, pos)
        pos += _ITEM.size
        if immediate:
            items[item_id] = value
        else:
            if pos + value > len(body):
                raise ValueError("item value beyond the record")
            items[item_id] = bytes(body[pos:pos + value])
            pos += value
    descriptors, address_bits = EMPTY_DESCRIPTORS, 48
    if described:
        address_bits, length = _DESCRIBED.unpack_from(body, pos)
        pos += _DESCRIBED.size
        if pos + length > len(body):
            raise ValueError("descriptors beyond the record")
        descriptors = ItemDescriptors.decode(bytes(body[pos:pos + length]))
        pos += length
    if pos != len(body):
        raise ValueError("trailing bytes after the heap record")
    return HeapRecord(cnt, items, received, descriptors, address_bits)


def _decode_incomplete_heap(body: memoryview) -> HeapRecord:
    cnt, received, length, received_bytes, count = _INCOMPLETE_HEAD.unpack_from(body)
    if len(body) != _INCOMPLETE_HEAD.size + count * _RANGE.size:
        raise ValueError("payload ranges do not match the incomplete heap record")
    ranges = tuple(_RANGE.iter_unpack(body[_INCOMPLETE_HEAD.size:]))
    return HeapRecord(cnt, {}, received,
                      incomplete=Incomplete(length, received_bytes, ranges))
