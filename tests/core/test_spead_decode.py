"""Packet header decoding: every SPEAD-64-XX flavour and every malformed-header reason.

Packets are built with the pure-Python encoder in tests/spead_packets.py; where
spead2 defines the behaviour, the same datagrams go through spead2's in-process
transport and the heaps must match.
"""

from __future__ import annotations

import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead_packets as sp

from daqd import _spead

# An item id that fits every flavour (SPEAD-64-56 has 7-bit ids).
ITEM = 0x30


# ---------------------------------------------------------------------------
# Valid packets of every flavour


@pytest.mark.parametrize("bits", sp.FLAVOURS)
def test_decode_every_flavour(bits):
    payload = bytes(range(40))
    pkt = sp.packet(7, payload, offset=10, heap_size=60,
                    items=[sp.imm(ITEM, 0x55, bits), sp.addr(ITEM + 1, 0, bits)],
                    address_bits=bits)
    got = _spead.decode_packet_header(pkt)
    assert got == {
        "heap_cnt": 7,
        "heap_length": 60,
        "payload_offset": 10,
        "payload_length": 40,
        "n_items": 6,
        "heap_address_bits": bits,
        "size": 8 + 6 * 8 + 40,
    }
    ref = sp.decode(pkt)
    assert isinstance(ref, sp.Decoded)
    assert ref.size == got["size"] and ref.address_bits == bits


@pytest.mark.parametrize("bits", sp.FLAVOURS)
def test_decode_max_values_per_flavour(bits):
    """HEAP_CNT and HEAP_SIZE use the whole address width, no sign trouble."""
    top = (1 << bits) - 1
    pkt = sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, top, bits),
                         sp.imm(sp.HEAP_SIZE_ID, top, bits),
                         sp.imm(sp.HEAP_OFFSET_ID, 0, bits),
                         sp.imm(sp.PAYLOAD_LENGTH_ID, 0, bits)], b"", bits)
    got = _spead.decode_packet_header(pkt)
    assert isinstance(got, dict)
    assert got["heap_cnt"] == top
    assert got["heap_length"] == top
    assert got["heap_address_bits"] == bits


def test_decode_without_heap_size():
    pkt = sp.packet(3, b"abcd", with_size=False)
    got = _spead.decode_packet_header(pkt)
    assert got["heap_length"] == -1
    assert got["payload_length"] == 4


def test_trailing_bytes_are_not_part_of_packet():
    pkt = sp.packet(3, b"abcd")
    got = _spead.decode_packet_header(pkt + b"\x00" * 100)
    assert got["size"] == len(pkt)


def test_addressed_structure_items_are_ignored():
    """Only immediate HEAP_CNT/OFFSET/LENGTH count (as in spead2)."""
    pkt = sp.raw_packet([sp.addr(sp.HEAP_CNT_ID, 0), sp.imm(sp.HEAP_OFFSET_ID, 0),
                         sp.imm(sp.PAYLOAD_LENGTH_ID, 0)])
    assert _spead.decode_packet_header(pkt) == "packets_rejected_missing_items"


def test_empty_buffer():
    assert _spead.decode_packet_header(b"") == "packets_rejected_too_short"


# ---------------------------------------------------------------------------
# Malformed packets, by the counter they must be rejected under

GOOD_POINTERS = [sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.HEAP_SIZE_ID, 8),
                 sp.imm(sp.HEAP_OFFSET_ID, 0), sp.imm(sp.PAYLOAD_LENGTH_ID, 8)]
GOOD = sp.raw_packet(GOOD_POINTERS, b"12345678")


def _with_byte(data: bytes, index: int, value: int) -> bytes:
    out = bytearray(data)
    out[index] = value
    return bytes(out)


MALFORMED = [
    # too short
    ("packets_rejected_too_short", b"S"),
    ("packets_rejected_too_short", GOOD[:7]),
    # bad magic / version
    ("packets_rejected_bad_magic", _with_byte(GOOD, 0, 0x54)),
    ("packets_rejected_bad_magic", b"\x00" * 64),
    ("packets_rejected_bad_version", _with_byte(GOOD, 1, 3)),
    ("packets_rejected_bad_version", _with_byte(GOOD, 1, 5)),
    # flavour: zero widths, widths not summing to 8 bytes
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=0, addr_bytes=8) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=8, addr_bytes=0) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=0, addr_bytes=0) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=2, addr_bytes=5) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=4, addr_bytes=5) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=255, addr_bytes=1) + b"\0" * 40),
    ("packets_rejected_bad_flavour", sp.header(0, id_bytes=4, addr_bytes=12) + b"\0" * 40),
    # item pointers beyond the packet
    ("packets_rejected_items_overflow", GOOD[:8 + 8 * 3]),
    ("packets_rejected_items_overflow", sp.raw_packet(GOOD_POINTERS, b"", n_items=5)),
    ("packets_rejected_items_overflow", sp.raw_packet([], b"", n_items=0xFFFF)),
    ("packets_rejected_items_overflow", sp.header(1)),
    # missing HEAP_CNT / offset / length
    ("packets_rejected_missing_items",
     sp.raw_packet([sp.imm(sp.HEAP_OFFSET_ID, 0), sp.imm(sp.PAYLOAD_LENGTH_ID, 0)])),
    ("packets_rejected_missing_items",
     sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.PAYLOAD_LENGTH_ID, 0)])),
    ("packets_rejected_missing_items",
     sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.HEAP_OFFSET_ID, 0)])),
    ("packets_rejected_missing_items", sp.raw_packet([])),
    ("packets_rejected_missing_items",
     sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.HEAP_OFFSET_ID, 0),
                    sp.addr(sp.PAYLOAD_LENGTH_ID, 0)])),
    # payload length larger than the packet
    ("packets_rejected_payload_length", GOOD[:-1]),
    ("packets_rejected_payload_length", sp.packet(1, b"abc", length=4)),
    ("packets_rejected_payload_length", sp.packet(1, b"abc", length=(1 << 48) - 1,
                                                  heap_size=(1 << 48) - 1)),
    # payload outside HEAP_SIZE
    ("packets_rejected_payload_outside_heap", sp.packet(1, b"abcd", heap_size=3)),
    ("packets_rejected_payload_outside_heap", sp.packet(1, b"abcd", offset=10, heap_size=12)),
    ("packets_rejected_payload_outside_heap", sp.packet(1, b"", offset=10, heap_size=9)),
]


@pytest.mark.parametrize("expected,data", MALFORMED,
                         ids=[f"{i}-{m[0].removeprefix('packets_rejected_')}"
                              for i, m in enumerate(MALFORMED)])
def test_malformed_header(expected, data):
    assert sp.decode(data) == expected, "test vector does not say what it means"
    assert _spead.decode_packet_header(data) == expected


@pytest.mark.parametrize("expected,data", MALFORMED,
                         ids=[f"{i}-{m[0].removeprefix('packets_rejected_')}"
                              for i, m in enumerate(MALFORMED)])
def test_malformed_counted_by_stream(expected, data):
    """A malformed datagram is counted once under its reason; the next heap still arrives."""
    stream = _spead.HeapStream()
    good = sp.packet(99, b"after")
    heaps = stream.add_packets([data, good])
    stats = stream.stats()
    assert stats[expected] == 1
    assert stats["packets"] == 2
    assert sum(stats[c] for c in sp.REJECT_COUNTERS) == 1
    assert [(h.cnt, h.complete) for h in heaps] == [(99, True)]


@pytest.mark.parametrize("expected,data", MALFORMED,
                         ids=[f"{i}-{m[0].removeprefix('packets_rejected_')}"
                              for i, m in enumerate(MALFORMED)])
def test_malformed_ignored_like_spead2(expected, data):
    good = sp.packet(99, b"after")
    d, _ = sp.daqd_decode([data, good])
    assert d == sp.spead2_decode([data, good])


def test_header_n_items_is_16_bits():
    """Bytes 4-5 are reserved: they must not widen the item count."""
    pkt = bytearray(sp.packet(1, b"xy"))
    pkt[4] = 0xFF
    pkt[5] = 0xFF
    got = _spead.decode_packet_header(bytes(pkt))
    assert isinstance(got, dict) and got["n_items"] == 4


# ---------------------------------------------------------------------------
# Whole heaps, every flavour, against spead2


def _heap_items(bits: int) -> list[tuple[int, bytes | int]]:
    top = min((1 << bits) - 1, 1 << 40)
    return [(ITEM, top), (ITEM + 1, bytes(range(37))), (ITEM + 2, b""),
            (ITEM + 3, bytes(range(255, 100, -1)))]


@pytest.mark.parametrize("bits", sp.FLAVOURS)
@pytest.mark.parametrize("with_size", [True, False])
def test_heaps_match_spead2(bits, with_size):
    packets = []
    for cnt in range(1, 6):
        packets += sp.heap_packets(cnt, _heap_items(bits), address_bits=bits,
                                   packet_payload=64, with_size=with_size)
    d, stats = sp.daqd_decode(packets)
    s = sp.spead2_decode(packets)
    assert d == s
    assert len(d) == 5 and all(h[1] for h in d)
    assert stats["packets"] == len(packets)
    assert sum(stats[c] for c in sp.REJECT_COUNTERS) == 0
    # Addressed values are cut at the next item's address
    items = dict((i[0], i[2]) for i in d[0][2])
    assert items[ITEM + 1] == bytes(range(37))
    assert items[ITEM + 3] == bytes(range(255, 100, -1))
    assert ITEM + 2 not in items   # zero-length item skipped, as spead2 does


@pytest.mark.parametrize("bits", sp.FLAVOURS)
def test_immediate_value_width(bits):
    """An immediate value is the whole address field, in any flavour."""
    top = (1 << bits) - 1
    pkt = sp.packet(1, b"", items=[sp.imm(ITEM, top, bits)], address_bits=bits)
    [heap] = _spead.HeapStream().add_packets([pkt])
    assert heap.complete
    assert [(i.id, i.immediate, i.value) for i in heap.items] == [(ITEM, True, top)]
    assert sp.daqd_decode([pkt])[0] == sp.spead2_decode([pkt])


@pytest.mark.parametrize("bits", sp.FLAVOURS)
def test_malformed_mixed_with_good_match_spead2(bits):
    good = sp.heap_packets(1, _heap_items(bits), address_bits=bits, packet_payload=50)
    bad = [m[1] for m in MALFORMED]
    mixed = []
    for i, pkt in enumerate(good):
        mixed.append(bad[i % len(bad)])
        mixed.append(pkt)
    mixed += bad
    d, stats = sp.daqd_decode(mixed)
    assert d == sp.spead2_decode(mixed)
    assert sum(stats[c] for c in sp.REJECT_COUNTERS) == len(mixed) - len(good)
    assert stats["heaps_complete"] == 1


def test_stop_item_ends_stream_like_spead2():
    packets = (sp.heap_packets(1, [(ITEM, b"a" * 10)]) + [sp.stop_heap(2)]
               + sp.heap_packets(3, [(ITEM, b"b" * 10)]))
    stream = _spead.HeapStream()
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert [sp.daqd_heap_key(h) for h in heaps] == sp.spead2_decode(packets)
    assert [h.cnt for h in heaps] == [1]
    assert stats["stop_heaps"] == 1
    assert stats["packets_rejected_after_stop"] == 1
    assert stream.stopped


def test_byte_stream_reader_every_flavour():
    data = b""
    for i, bits in enumerate(sp.FLAVOURS):
        data += b"".join(sp.heap_packets(i + 1, _heap_items(bits), address_bits=bits,
                                         packet_payload=64))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    assert [(h.cnt, h.complete) for h in heaps] == [(i + 1, True) for i in range(7)]
    assert [h.address_bits for h in heaps] == list(sp.FLAVOURS)
    stats = stream.stats()
    assert stats["stream_bytes_skipped"] == 0
    assert sum(stats[c] for c in sp.REJECT_COUNTERS) == 0


def test_pointer_helper_roundtrip():
    p = sp.imm(sp.HEAP_CNT_ID, 5, 40)
    assert struct.pack(">Q", p)[:3] == b"\x80\x00\x01"
