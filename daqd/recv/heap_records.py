"""Heap mode: complete heaps into heap records, decoded against the stream's descriptors.

A heap that carries descriptors (item 0x5) updates the stream's item
descriptors first, as spead2's ``ItemGroup.update`` does: a heap's
descriptors apply to its own items.  Each record keeps the descriptors of
its time (immutable and shared) and is decoded once, here, so sinks read the
result; items without a descriptor, or whose value does not fit it, stay raw
and are counted (``records_undescribed_items``, ``records_undecoded_items``).
Incomplete heaps are counted by the compiled stream (``incomplete_heaps_*``)
and, with the stream's ``contiguous_only = false`` (`build_stream` hands it
to the ``HeapStream``, which then hands them out), become records too: no
items, their heap length, bytes received and payload ranges
(`daqd.pipeline.records.Incomplete`), counted in ``incomplete_heaps_recorded``.
Complete heaps with nothing but packet-structure, descriptor and
stream-control items (spead2's start and stop heaps) make no record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from daqd.pipeline.items import EMPTY_DESCRIPTORS
from daqd.pipeline.records import HeapRecord
from daqd.recv.bug_compat import parse_bug_compat
from daqd.recv.descriptors import DESCRIPTOR_ID, decode_descriptors, descriptors_from_packets

if TYPE_CHECKING:
    from daqd.config import StreamConfig

#: Stream control (start, stop): it makes no record.
STREAM_CTRL_ID = 0x6
#: The packet-structure items: NULL, HEAP_CNT, HEAP_SIZE, HEAP_OFFSET, PAYLOAD_LENGTH.
PACKET_STRUCTURE_IDS = frozenset({0, 1, 2, 3, 4})
#: Items that are not part of a heap record: packet structure, descriptors and
#: stream control.
STRUCTURE_IDS = PACKET_STRUCTURE_IDS | {DESCRIPTOR_ID, STREAM_CTRL_ID}

log = structlog.get_logger("daqd.stream")


class HeapRecorder:
    """Turns one stream's heaps into `HeapRecord`s (thread-safe).

    Several receive threads (one per source) share the stream's descriptors.

    Parameters
    ----------
    stream : str
        The stream's name, for log lines.
    bug_compat : int
        The protocol bugs its descriptors are read with (`daqd.recv.bug_compat`).
    """

    def __init__(self, stream: str, bug_compat: int = 0):
        self.stream = stream
        self.bug_compat = bug_compat
        self.descriptors: dict[int, dict[str, Any]] = {}   # id -> the newest descriptor
        self.item_descriptors = EMPTY_DESCRIPTORS   # what records are decoded against
        self.undescribed_items = 0          # record items without a descriptor (kept raw)
        self.undecoded_items = 0            # record items their descriptor does not fit (raw)
        self.incomplete_recorded = 0        # incomplete heaps made into records
        self._lock = threading.Lock()

    def records(self, heaps: Iterable[Any]) -> Iterator[HeapRecord]:
        """Yield the records of `heaps` (``daqd._spead.Heap``), in order.

        The stream hands out incomplete heaps only with ``contiguous_only =
        false``: each becomes a record (no items, its payload ranges).
        """
        for heap in heaps:
            if not heap.complete:
                with self._lock:
                    self.incomplete_recorded += 1
                yield HeapRecord.from_heap(heap, STRUCTURE_IDS)   # no items to describe
                continue
            if any(item.id == DESCRIPTOR_ID for item in heap.items):
                found = decode_descriptors(heap, self.bug_compat)
                with self._lock:
                    for d in found:
                        self.descriptors[d["id"]] = d
                    self.item_descriptors = self.item_descriptors.updated(found)
            descriptors = self.item_descriptors
            record = HeapRecord.from_heap(heap, STRUCTURE_IDS, descriptors)
            if not record.items:
                continue
            self._count(record)
            yield record

    def add_descriptor_packets(self, packets: list[bytes]) -> None:
        """Take in the descriptors of a chunk stream's descriptor-heap packets."""
        found = descriptors_from_packets(packets, self.bug_compat)
        if found:
            with self._lock:
                for d in found:
                    self.descriptors[d["id"]] = d
                self.item_descriptors = self.item_descriptors.updated(found)

    def known_descriptors(self) -> list[dict[str, Any]]:
        """Return the newest descriptor of each item id seen so far, by id (for file headers)."""
        with self._lock:
            return [self.descriptors[k] for k in sorted(self.descriptors)]

    def _count(self, record: HeapRecord) -> None:
        undescribed, failed = len(record.items), 0
        if record.descriptors:
            decoded = record.decode()
            undescribed, failed = decoded.undescribed, len(decoded.failed)
        if not (undescribed or failed):
            return
        with self._lock:
            first = failed and not self.undecoded_items
            self.undescribed_items += undescribed
            self.undecoded_items += failed
        if first:
            item_id, reason = next(iter(record.decode().failed.items()))
            log.warning("item value does not fit its descriptor: kept raw (counted in "
                        "records_undecoded_items)", stream=self.stream, cnt=record.cnt,
                        item=hex(item_id), reason=reason)

    def counters(self) -> dict[str, int]:
        """Return the recorder's counters (monotonic)."""
        return {"records_undescribed_items": self.undescribed_items,
                "records_undecoded_items": self.undecoded_items,
                "incomplete_heaps_recorded": self.incomplete_recorded}


def build_recorder(section: StreamConfig) -> HeapRecorder:
    """Make the heap recorder of a ``[[stream]]`` section (its ``name`` and ``bug_compat``)."""
    return HeapRecorder(section.name, bug_compat=parse_bug_compat(section.bug_compat))
