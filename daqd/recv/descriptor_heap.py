"""Descriptor heaps written as spead2's sender writes them, ``bug_compat`` included.

The other half of `daqd.recv.descriptors`: a descriptor (the same dicts,
``id``, ``name``, ``description``, ``shape`` with None for a variable
dimension, ``format`` as [code, bits] pairs, ``dtype`` a numpy header or
None) becomes the SPEAD packet spead2's ``send::heap::add_descriptor``
makes (``encode_descriptor`` in spead2's ``send_heap.cpp``), with the
stream's bugs (`daqd.recv.bug_compat`): 4-byte format fields and 8-byte
shape fields (``DESCRIPTOR_WIDTHS``), bit 1 for a variable dimension
(``SHAPE_BIT_1``) and the numpy header's byte order swapped (``SWAP_ENDIAN``,
as spead2's ``Descriptor.to_raw``).  `descriptor_heap` wraps descriptors,
and immediate or addressed items of one's own, in a one-packet heap:
``daqd simulate --descriptors`` / ``--bug-compat`` sends one before a
workload.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from daqd.pipeline.items import numpy_header_shape, swapped_numpy_header
from daqd.recv.bug_compat import (
    BUG_COMPAT_DESCRIPTOR_WIDTHS,
    BUG_COMPAT_SHAPE_BIT_1,
    BUG_COMPAT_SWAP_ENDIAN,
)
from daqd.recv.descriptors import (
    DESCRIPTOR_DESCRIPTION_ID,
    DESCRIPTOR_DTYPE_ID,
    DESCRIPTOR_FORMAT_ID,
    DESCRIPTOR_ID,
    DESCRIPTOR_ID_ID,
    DESCRIPTOR_NAME_ID,
    DESCRIPTOR_SHAPE_ID,
)

HEAP_CNT_ID, HEAP_SIZE_ID, HEAP_OFFSET_ID, PAYLOAD_LENGTH_ID = 1, 2, 3, 4


def _pointer(item_id: int, value: int, immediate: bool, address_bits: int) -> bytes:
    return struct.pack(">Q", (int(immediate) << 63) | (item_id << address_bits)
                       | (value & ((1 << address_bits) - 1)))


def _packet(cnt: int, items: Sequence[tuple[int, int | bytes]], address_bits: int) -> bytes:
    """One packet holding a whole heap: `items` are (id, int immediate or bytes addressed)."""
    payload = b"".join(v for _, v in items if isinstance(v, bytes))
    pointers = [_pointer(HEAP_CNT_ID, cnt, True, address_bits),
                _pointer(HEAP_SIZE_ID, len(payload), True, address_bits),
                _pointer(HEAP_OFFSET_ID, 0, True, address_bits),
                _pointer(PAYLOAD_LENGTH_ID, len(payload), True, address_bits)]
    offset = 0
    for item_id, value in items:
        if isinstance(value, bytes):
            pointers.append(_pointer(item_id, offset, False, address_bits))
            offset += len(value)
        else:
            pointers.append(_pointer(item_id, value, True, address_bits))
    header = struct.pack(">BBBBHH", 0x53, 4, 8 - address_bits // 8, address_bits // 8, 0,
                         len(pointers))
    return header + b"".join(pointers) + payload


def encode_descriptor(d: Mapping[str, Any], bug_compat: int = 0, address_bits: int = 48) -> bytes:
    """Return the descriptor packet spead2 sends for `d` in a stream with `bug_compat`."""
    widths = bug_compat & BUG_COMPAT_DESCRIPTOR_WIDTHS
    field_size = 4 if widths else 9 - address_bits // 8
    shape_size = 8 if widths else 1 + address_bits // 8
    variable = 2 if bug_compat & BUG_COMPAT_SHAPE_BIT_1 else 1
    fmt = b"".join(str(code).encode("ascii") + int(bits).to_bytes(field_size - 1, "big")
                   for code, bits in d.get("format") or ())
    dims = list(d.get("shape") or ())
    if d.get("dtype") and not dims:
        dims = list(numpy_header_shape(str(d["dtype"])))    # spead2 sends it in both
    shape = b"".join(bytes([variable]) + bytes(shape_size - 1) if dim is None or dim < 0
                     else bytes([0]) + int(dim).to_bytes(shape_size - 1, "big")
                     for dim in dims)
    items: list[tuple[int, int | bytes]] = [
        (DESCRIPTOR_ID_ID, int(d["id"])),
        (DESCRIPTOR_NAME_ID, str(d.get("name", "")).encode()),
        (DESCRIPTOR_DESCRIPTION_ID, str(d.get("description", "")).encode()),
        (DESCRIPTOR_FORMAT_ID, fmt),
        (DESCRIPTOR_SHAPE_ID, shape),
    ]
    if d.get("dtype"):
        header = str(d["dtype"])
        if bug_compat & BUG_COMPAT_SWAP_ENDIAN:
            header = swapped_numpy_header(header)
        items.append((DESCRIPTOR_DTYPE_ID, header.encode("ascii")))
    # spead2 gives a descriptor packet HEAP_CNT 1 and no empty-item elision.
    return _packet(1, items, address_bits)


def descriptor_heap(cnt: int, descriptors: Sequence[Mapping[str, Any]], bug_compat: int = 0,
                    items: Sequence[tuple[int, int | bytes]] = (),
                    address_bits: int = 48) -> bytes:
    """Return a one-packet heap `cnt` of `descriptors` (and `items`), as spead2 sends it."""
    parts: list[tuple[int, int | bytes]] = [
        (DESCRIPTOR_ID, encode_descriptor(d, bug_compat, address_bits)) for d in descriptors]
    return _packet(cnt, [*parts, *items], address_bits)
