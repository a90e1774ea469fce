"""SPEAD item descriptors, read from descriptor items (id 0x5) of heaps.

A descriptor's value is itself a SPEAD packet stream; `decode_descriptors`
decodes it with the same compiled assembler, as spead2 does (one live heap,
contiguous heaps only, a heap without a descriptor id is ignored), into
plain JSON-able dicts (``daqd dump`` prints them).  In chunk mode, where
descriptor heaps fit no chunk, the compiled stream keeps their packets and
`descriptors_from_packets` reads them.  What the descriptors do
to item values is `daqd.pipeline.items`.

A stream's ``bug_compat`` (`daqd.recv.bug_compat`) is read here, as spead2's
``heap::to_descriptor`` and ``Descriptor.from_raw`` read it: the widths of
format and shape fields, the bit of a variable dimension, and a numpy
header's byte order (the dict's ``dtype`` is then the swapped header, the
dtype spead2's ``Descriptor`` holds).
"""

from __future__ import annotations

from typing import Any

from daqd import _spead
from daqd.pipeline.items import swapped_numpy_header
from daqd.recv.bug_compat import (
    BUG_COMPAT_DESCRIPTOR_WIDTHS,
    BUG_COMPAT_SHAPE_BIT_1,
    BUG_COMPAT_SWAP_ENDIAN,
)

DESCRIPTOR_ID = 0x05
DESCRIPTOR_NAME_ID = 0x10
DESCRIPTOR_DESCRIPTION_ID = 0x11
DESCRIPTOR_SHAPE_ID = 0x12
DESCRIPTOR_FORMAT_ID = 0x13
DESCRIPTOR_ID_ID = 0x14
DESCRIPTOR_DTYPE_ID = 0x15


def _text(value: Any) -> str:
    if isinstance(value, int):
        return ""
    return bytes(value).decode("utf-8", errors="replace")


def _descriptor_from_heap(heap: Any, bug_compat: int) -> dict[str, Any] | None:
    immediate_size = heap.address_bits // 8
    id_size = 8 - immediate_size
    widths = bool(bug_compat & BUG_COMPAT_DESCRIPTOR_WIDTHS)
    variable = 2 if bug_compat & BUG_COMPAT_SHAPE_BIT_1 else 1
    out: dict[str, Any] = {
        "id": 0,
        "name": "",
        "description": "",
        "shape": [],
        "format": [],
        "dtype": None,
    }
    for item in heap.items:
        if item.id == DESCRIPTOR_ID_ID:
            if item.immediate:
                out["id"] = item.value
        elif item.id == DESCRIPTOR_NAME_ID:
            out["name"] = _text(item.value)
        elif item.id == DESCRIPTOR_DESCRIPTION_ID:
            out["description"] = _text(item.value)
        elif item.id == DESCRIPTOR_FORMAT_ID and not item.immediate:
            size = 4 if widths else 1 + id_size
            raw = item.value
            out["format"] = [
                [chr(raw[i]), int.from_bytes(raw[i + 1 : i + size], "big")]
                for i in range(0, len(raw) - size + 1, size)
            ]
        elif item.id == DESCRIPTOR_SHAPE_ID and not item.immediate:
            size = 8 if widths else 1 + immediate_size
            raw = item.value
            # A set low bit (bit 1 with SHAPE_BIT_1) marks a variable-length
            # dimension: null in JSON.
            out["shape"] = [
                None if raw[i] & variable else int.from_bytes(raw[i + 1 : i + size], "big")
                for i in range(0, len(raw) - size + 1, size)
            ]
        elif item.id == DESCRIPTOR_DTYPE_ID:
            out["dtype"] = _text(item.value) or None
    if out["dtype"]:
        out["shape"] = []
        out["format"] = []
        if bug_compat & BUG_COMPAT_SWAP_ENDIAN:
            try:
                out["dtype"] = swapped_numpy_header(out["dtype"])
            except ValueError:
                pass            # not a header spead2 accepts: its decoder says so
    return out if out["id"] != 0 else None


def decode_descriptors(heap: Any, bug_compat: int = 0) -> list[dict[str, Any]]:
    """Descriptors carried by `heap`, in item order: id, name, description, shape, ...

    `bug_compat` is the stream's mask (`daqd.recv.bug_compat`), as spead2's
    ``StreamConfig.bug_compat``.
    """
    found = []
    for item in heap.items:
        if item.id != DESCRIPTOR_ID or item.immediate:
            continue
        stream = _spead.HeapStream(max_heaps=1)
        for inner in stream.run(_spead.ByteStreamReader(item.value)):
            if inner.complete:
                descriptor = _descriptor_from_heap(inner, bug_compat)
                if descriptor is not None:
                    found.append(descriptor)
    return found


def descriptors_from_packets(packets: list[bytes], bug_compat: int = 0
                             ) -> list[dict[str, Any]]:
    """Descriptors carried by the heaps these packets make (a chunk stream's kept packets).

    `packets` are those `daqd._spead.ChunkStream.take_descriptor_packets`
    returns: the packets of descriptor heaps, which no chunk holds.  They are
    assembled as heap mode would (out of order allowed), and the complete
    heaps' descriptors returned in order; `bug_compat` as in `decode_descriptors`.
    """
    if not packets:
        return []
    stream = _spead.HeapStream(max_heaps=4, allow_out_of_order=True)
    found = []
    for heap in stream.run(_spead.ByteListReader(packets)):
        if heap.complete:
            found.extend(decode_descriptors(heap, bug_compat))
    return found
