"""spead2 4.5.1's tests/test_recv.py, case by case, against daqd's heap mode.

Every test case of spead2's receive test file is listed below with where it is
covered: an existing daqd test, a test in this file (the same packets fed to
spead2 4.5.1 and to daqd's ``HeapStream``, outcomes compared), or "n/a" with
the reason it does not apply.  Chunk-mode cases (test_recv_chunk_stream.py,
test_recv_chunk_stream_group.py) are in tests/core/test_spead2_chunk_cases.py.

spead2's TestDecode cases end in ``spead2.ItemGroup.update``, which turns raw
items into values with the descriptors.  Here they are compared at the level
of the receive core: the heaps, their raw items and the descriptors decoded
from them (daqd/recv/descriptors.py ``decode_descriptors``), which must equal
spead2's (``Heap.get_items()``, ``Heap.get_descriptors()``).  The value step
itself (ItemGroup.update: numpy values, ValueError/UnicodeDecodeError) is not
tested in this file.

spead2 case (class.test)                        where it is covered
----------------------------------------------  ---------------------------------------------------
TestDecode.test_scalar_int                      test_decode_case[scalar_int]
TestDecode.test_scalar_int_immediate            test_decode_case[scalar_int_immediate]
TestDecode.test_scalar_int_immediate_fastpath   test_decode_case[scalar_int_immediate_fastpath]
TestDecode.test_string                          test_decode_case[string]
TestDecode.test_array                           test_decode_case[array]
TestDecode.test_array_fields                    test_decode_case[array_fields]
TestDecode.test_array_numpy                     test_decode_case[array_numpy]
TestDecode.test_array_numpy_fortran             test_decode_case[array_numpy_fortran]
TestDecode.test_fallback_uint                   test_decode_case[fallback_uint]
TestDecode.test_fallback_int                    test_decode_case[fallback_int]
TestDecode.test_fallback_types                  test_decode_case[fallback_types]
TestDecode.test_fallback_scalar                 test_decode_case[fallback_scalar]
TestDecode.test_duplicate_item_pointers         existing: test_spead_decode.py::
                                                test_heaps_match_spead2 (pointers repeated in
                                                every packet) and test_interop_spead2.py::
                                                test_spead2_stream_as_datagrams (spead2's sender,
                                                pointers once / repeat_pointers)
TestDecode.test_out_of_order_packets            test_out_of_order_packets
TestDecode.test_out_of_order_disallowed         existing: test_interop_spead2.py::
                                                test_minimal_in_order_rules[in-order-second-first]
TestDecode.test_substreams                      test_spead2_heap_windows.py (heap_windows, spead2's
                                                substreams: interleaved senders, flush order)
TestDecode.test_incomplete_heaps                test_incomplete_heaps (length, received, counters);
                                                test_incomplete_heap_items_are_not_handed_out;
                                                payload_ranges: tests/core/test_payload_ranges.py
TestDecode.test_is_start_of_stream              test_is_start_of_stream
TestDecode.test_is_end_of_stream                test_is_end_of_stream
TestDecode.test_no_stop_on_stop_item            test_no_stop_on_stop_item
TestDecode.test_size_mismatch                   test_decode_case[size_mismatch]
TestDecode.test_numpy_object                    test_decode_case[numpy_object]
TestDecode.test_numpy_zero_size                 test_decode_case[numpy_zero_size]
TestDecode.test_numpy_malformed                 test_decode_case[numpy_malformed-*] (10 headers)
TestDecode.test_nonascii_value                  test_decode_case[nonascii_value]
TestDecode.test_nonascii_name                   test_decode_case[nonascii_name]
TestDecode.test_nonascii_description            test_decode_case[nonascii_description]
TestDecode.test_no_heap_size                    test_no_heap_size
TestDecode.test_disallow_unsized_heaps          test_disallow_unsized_heaps (allow_unsized_heaps
                                                False and True); chunk mode forces it false, as
                                                spead2's chunk stream does
                                                (test_chunk_placement.py::test_unsized_heaps)
TestDecode.test_bad_offset                      test_bad_offset
TestStreamConfig.test_default_construct         test_stream_config_default_construct (max_heaps,
                                                stop_on_stop_item, allow_out_of_order,
                                                allow_unsized_heaps); bug_compat: tests/recv/
                                                test_bug_compat.py; memcpy: tests/core/
                                                test_memcpy.py; stream_id, stats n/a
TestStreamConfig.test_set_get                   test_stream_config_kwargs_construct (daqd's options
                                                are fixed at construction, read-only afterwards)
TestStreamConfig.test_kwargs_construct          test_stream_config_kwargs_construct
TestStreamConfig.test_max_heaps_zero            test_stream_config_max_heaps_zero
TestStreamConfig.test_bad_bug_compat            tests/recv/test_bug_compat.py::
                                                test_text_form_refuses_other_names
TestStreamConfig.test_bad_kwarg                 test_stream_config_bad_kwarg
TestStreamConfig.test_stats                     n/a: no user-defined statistics (fixed counters)
TestRingStreamConfig.test_default_construct     n/a: heap mode has no heap ring (process/pop_ready
TestRingStreamConfig.test_set_get               return heaps; buffering is in daqd.pipeline); it
TestRingStreamConfig.test_heaps_zero            acts as contiguous_only=False by default
                                                (incomplete heaps delivered, flagged);
                                                HeapStream(contiguous_only=True) as spead2's
                                                default: tests/core/test_payload_ranges.py
TestUdpIbvConfig.* (10 cases: test_default_construct, test_kwargs_construct,
    test_default_buffer_size, test_bad_max_poll, test_bad_max_size, test_no_endpoints,
    test_ipv6_endpoints, test_no_interface_address, test_bad_interface_address,
    test_ipv6_interface_address)                n/a: daqd has no ibverbs reader
TestStream.test_full_stop                       n/a: no bounded heap ring in HeapStream; the chunk-
                                                mode analogue (consumer not consuming, worker
                                                blocked) is test_chunk_placement.py::
                                                test_when_full_wait_consumer_releases_late
TestStream.test_no_stop_heap                    existing: test_interop_spead2.py::
                                                test_spead2_stream_from_bytes (heaps/packets
                                                counters equal spead2's with a stop heap) and
                                                test_spead_decode.py::test_stop_item_ends_stream_like_spead2
TestStream.test_reader_after_start              n/a: readers are passed to each process() call;
                                                explicit_start: test_explicit_start.py
TestStreamStats.* (12 cases: test_properties, test_getitem_name, test_getitem_name_missing,
    test_getitem_index, test_getitem_index_out_of_range, test_contains, test_len,
    test_custom, test_add, test_add_assign, test_add_mismatched, test_iterate)
                                                n/a: spead2's StreamStats object API; daqd's
                                                stats() is a plain dict (the counters shared with
                                                spead2 are compared in test_interop_spead2.py::
                                                test_impaired_datagrams_counters_match_spead2_stats)
TestUdpReader.test_out_of_range_udp_port        test_out_of_range_udp_port
TestUdpReader.test_illegal_udp_port             n/a: relies on an unprivileged user being refused
                                                port 22; this suite runs as root
TestTcpReader.test_bad_header                   test_tcp_reader_case[bad_header]
TestTcpReader.test_packet_too_big               test_tcp_reader_case[packet_too_big]
TestTcpReader.test_partial_header               test_tcp_reader_case[partial_header]
TestTcpReader.test_partial_packet               test_tcp_reader_case[partial_packet]
TestTcpReader.test_partial_payload              test_tcp_reader_case[partial_payload]
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys

import pytest
import spead2
import spead2.recv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_helpers as h
import spead_packets as sp

from daqd import _spead
from daqd.recv.sources import DEFAULT_MAX_PACKET_SIZE, SourceError, open_source

logging.getLogger("spead2").setLevel(logging.CRITICAL)

BITS = 48                     # spead2's test flavour: SPEAD-64-48
ITEM = 0x1234
# Counters with the same meaning in both (INTERFACES.md / docs/monitoring.md).
SHARED_COUNTERS = ("packets", "heaps", "incomplete_heaps_evicted", "incomplete_heaps_flushed",
                   "single_packet_heaps")

DESCRIPTOR_ID_ID = 0x14
DESCRIPTOR_NAME_ID = 0x10
DESCRIPTOR_DESCRIPTION_ID = 0x11
DESCRIPTOR_SHAPE_ID = 0x12
DESCRIPTOR_FORMAT_ID = 0x13
DESCRIPTOR_DTYPE_ID = 0x15
CTRL_DESCRIPTOR_REISSUE = 1


# --------------------------------------------------------------------------
# Packets as spead2's test_recv.py lays them out (built from the SPEAD spec)


def heap_packets(cnt: int, items: list[tuple[int, int | bytes]],
                 ranges: list[tuple[int, int]] | None = None, *,
                 repeat_pointers: bool = False) -> list[bytes]:
    """The packets of one heap: HEAP_CNT, offset, length, HEAP_SIZE, then the items.

    An int value is immediate, bytes are addressed (laid out in item order).
    `ranges` are the payload ranges of the packets (default: one packet); the
    item pointers go in the first packet only unless `repeat_pointers`.
    """
    ptrs, payload = [], b""
    for item_id, value in items:
        if isinstance(value, int):
            ptrs.append(sp.imm(item_id, value, BITS))
        else:
            ptrs.append(sp.addr(item_id, len(payload), BITS))
            payload += bytes(value)
    out = []
    for start, stop in ranges or [(0, len(payload))]:
        head = [sp.imm(sp.HEAP_CNT_ID, cnt, BITS), sp.imm(sp.HEAP_OFFSET_ID, start, BITS),
                sp.imm(sp.PAYLOAD_LENGTH_ID, stop - start, BITS),
                sp.imm(sp.HEAP_SIZE_ID, len(payload), BITS)]
        out.append(sp.raw_packet(head + ptrs, payload[start:stop], BITS))
        if not repeat_pointers:
            ptrs = []
    return out


def _be(size: int, value: int) -> bytes:
    return value.to_bytes(size, "big")


def format_field(fmt: list[tuple[str, int]]) -> bytes:
    """DESCRIPTOR_FORMAT: a type code and a bit count of (64 - XX) / 8 bytes per field."""
    return b"".join(code.encode("ascii") + _be((64 - BITS) // 8, bits) for code, bits in fmt)


def shape_field(shape) -> bytes:
    """DESCRIPTOR_SHAPE: XX / 8 + 1 bytes per dimension; variable: first byte 1."""
    size = BITS // 8 + 1
    return b"".join(b"\x01" + bytes(size - 1) if d is None else _be(size, d) for d in shape)


def plain_descriptor(item_id: int, name: bytes, description: bytes, fmt, shape):
    """A descriptor item (id 0x5) whose value is a one-packet descriptor heap."""
    inner = heap_packets(1, [(DESCRIPTOR_ID_ID, item_id), (DESCRIPTOR_NAME_ID, name),
                             (DESCRIPTOR_DESCRIPTION_ID, description),
                             (DESCRIPTOR_FORMAT_ID, format_field(fmt)),
                             (DESCRIPTOR_SHAPE_ID, shape_field(shape))])[0]
    return (sp.DESCRIPTOR_ID, inner)


def numpy_descriptor(item_id: int, name: bytes, description: bytes, header: str):
    inner = heap_packets(1, [(DESCRIPTOR_ID_ID, item_id), (DESCRIPTOR_NAME_ID, name),
                             (DESCRIPTOR_DESCRIPTION_ID, description),
                             (DESCRIPTOR_DTYPE_ID, header.encode("ascii"))])[0]
    return (sp.DESCRIPTOR_ID, inner)


def numpy_header(descr: str, fortran_order: bool, shape: tuple) -> str:
    return str({"descr": descr, "fortran_order": fortran_order, "shape": shape})


# --------------------------------------------------------------------------
# Both receivers


def spead2_receive(data: bytes | list[bytes], **config) -> tuple[list, dict]:
    """spead2's heaps (records) and counters: bytes via a buffer reader, a list as datagrams."""
    stream = spead2.recv.Stream(h.THREAD_POOL, spead2.recv.StreamConfig(**config),
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    if isinstance(data, list):
        stream.add_inproc_reader(sp.inproc_queue(spead2, data))
    else:
        stream.add_buffer_reader(data)
    records = h.collect_spead2(stream)
    return records, {n: stream.stats[n] for n in SHARED_COUNTERS}


def daqd_receive(data: bytes | list[bytes], **config) -> tuple[list, dict]:
    """daqd's heaps (records) and counters, from a byte stream or from datagrams."""
    stream = _spead.HeapStream(**config)
    if isinstance(data, list):
        heaps = stream.add_packets(data)
    else:
        heaps = stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    return [h.daqd_record(x) for x in heaps], {n: stats[n] for n in SHARED_COUNTERS}


def as_transport(packets: list[bytes], transport: str) -> bytes | list[bytes]:
    return b"".join(packets) if transport == "bytes" else list(packets)


TRANSPORTS = pytest.mark.parametrize("transport", ["datagrams", "bytes"])


def assert_same(packets: list[bytes], transport: str, **config) -> list[dict]:
    """Both receivers give the same heaps and shared counters; returns the records."""
    data = as_transport(packets, transport)
    expected, s2_stats = spead2_receive(data, **config)
    got, dq_stats = daqd_receive(data, **config)
    assert got == expected
    assert dq_stats == s2_stats
    return got


# --------------------------------------------------------------------------
# TestDecode: items and descriptors


def _fortran_floats() -> bytes:
    # [[1.25, 1.75], [2.25, 2.5]].T stored in Fortran order: the original's C order
    return struct.pack("<4d", 1.25, 1.75, 2.25, 2.5)


DECODE_CASES = {
    "scalar_int": [plain_descriptor(ITEM, b"test_scalar_int", b"a scalar integer",
                                    [("i", 32)], []),
                   (ITEM, struct.pack(">i", -123456789))],
    "scalar_int_immediate": [plain_descriptor(ITEM, b"test_scalar_int", b"a scalar integer",
                                              [("u", 32)], []),
                             (ITEM, 0x12345678)],
    "scalar_int_immediate_fastpath": [
        plain_descriptor(ITEM, b"test_scalar_uint", b"a scalar integer", [("u", 48)], []),
        plain_descriptor(ITEM + 1, b"test_scalar_positive", b"a positive scalar integer",
                         [("i", 48)], []),
        plain_descriptor(ITEM + 2, b"test_scalar_negative", b"a negative scalar integer",
                         [("i", 48)], []),
        (ITEM, 0x9234567890AB), (ITEM + 1, 0x1234567890AB), (ITEM + 2, 0x9234567890AB)],
    "string": [plain_descriptor(ITEM, b"test_string", b"a byte string", [("c", 8)], [None]),
               (ITEM, b"Hello world")],
    "array": [plain_descriptor(ITEM, b"test_array", b"an array of floats", [("f", 32)], (3, 2)),
              (ITEM, struct.pack(">6f", 1.5, 2.5, 3.5, 4.5, 5.5, 6.5))],
    "array_fields": [plain_descriptor(ITEM, b"test_array", b"an array of floats",
                                      [("f", 32), ("i", 8)], (3,)),
                     (ITEM, struct.pack(">fbfbfb", 1.5, 1, 2.5, 2, 4.5, -4))],
    "array_numpy": [numpy_descriptor(ITEM, b"test_array_numpy", b"an array of floats",
                                     numpy_header("<f8", False, (2, 2))),
                    (ITEM, struct.pack("<4d", 1.25, 1.75, 2.25, 2.5))],
    "array_numpy_fortran": [numpy_descriptor(ITEM, b"test_array_numpy_fortran",
                                             b"an array of floats",
                                             numpy_header("<f8", True, (2, 2))),
                            (ITEM, _fortran_floats())],
    "fallback_uint": [plain_descriptor(ITEM, b"test_fallback_uint", b"an array of 12-bit uints",
                                       [("u", 12)], (3,)),
                      (ITEM, b"\xAB\xCD\xEF\x12\x30")],
    "fallback_int": [plain_descriptor(ITEM, b"test_fallback_uint", b"an array of 12-bit ints",
                                      [("i", 12)], (3,)),
                     (ITEM, b"\xAB\xCD\xEF\x12\x30")],
    "fallback_types": [plain_descriptor(ITEM, b"test_fallback_uint",
                                        b"an array with bools, int, chars and floats",
                                        [("b", 1), ("i", 7), ("c", 8), ("f", 32)], (2,)),
                       (ITEM, b"\x91y\x3F\x80\x00\x00" + b"\x69n\xBF\x80\x00\x00")],
    "fallback_scalar": [plain_descriptor(ITEM, b"test_fallback_scalar",
                                         b"a scalar with unusual type", [("u", 48)], ()),
                        (ITEM, b"\x12\x34\x56\x78\x90\xAB")],
    "size_mismatch": [plain_descriptor(ITEM, b"bad", b"an item with insufficient data",
                                       [("u", 32)], (5, 5)),
                      (ITEM, b"\0" * 99)],
    "numpy_object": [numpy_descriptor(ITEM, b"object", b"an item with object pointers",
                                      numpy_header([("f0", "<f4"), ("f1", "|O")], False, (5,))),
                     (ITEM, b"?" * 100)],
    "numpy_zero_size": [numpy_descriptor(ITEM, b"empty", b"an item with zero-byte dtype",
                                         numpy_header("<U0", False, (5,))),
                        (ITEM, b"")],
    "nonascii_value": [plain_descriptor(ITEM, b"test_string", b"a byte string", [("c", 8)],
                                        [None]),
                       (ITEM, "\u0200".encode())],
    "nonascii_name": [plain_descriptor(ITEM, b"\xEF", b"a byte string", [("c", 8)], [None])],
    "nonascii_description": [plain_descriptor(ITEM, b"name", b"\xEF", [("c", 8)], [None])],
}
MALFORMED_NUMPY_HEADERS = [
    "{'descr': 'S1'",
    "123",
    "import os",
    "{'descr': 'S1'}",
    "{'descr': 'S1', 'fortran_order': False, 'shape': (), 'foo': 'bar'}",
    "{'descr': 'S1', 'fortran_order': False, 'shape': (-1,)}",
    "{'descr': 1, 'fortran_order': False, 'shape': ()}",
    "{'descr': '+-', 'fortran_order': False, 'shape': ()}",
    "{'descr': 'S1', 'fortran_order': 0, 'shape': ()}",
    "{'descr': 'S1', 'fortran_order': False, 'shape': (None,)}",
]
for _i, _header in enumerate(MALFORMED_NUMPY_HEADERS):
    DECODE_CASES[f"numpy_malformed-{_i}"] = [numpy_descriptor(ITEM, b"name", b"description",
                                                              _header)]


@TRANSPORTS
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_case(case, transport):
    """The raw items and the descriptors equal spead2's, whatever ItemGroup would make of them."""
    packets = heap_packets(1, DECODE_CASES[case])
    [record] = assert_same(packets, transport)
    assert record["complete"]
    assert record["descriptors"], "the descriptor was not decoded at all"
    assert {d["id"] for d in record["descriptors"]} <= {ITEM, ITEM + 1, ITEM + 2}


# --------------------------------------------------------------------------
# TestDecode: heap assembly

PAYLOAD_64 = bytes(range(64))


@TRANSPORTS
def test_out_of_order_packets(transport):
    """Second half first (carrying every item pointer), out of order allowed: one whole heap."""
    packets = heap_packets(1, [(0x1600, 12345), (0x5000, PAYLOAD_64)], [(32, 64), (0, 32)])
    [record] = assert_same(packets, transport, allow_out_of_order=True)
    assert record["complete"]
    assert record["items"] == [(0x1600, True, 12345), (0x5000, False, PAYLOAD_64)]


@TRANSPORTS
def test_incomplete_heaps(transport):
    """Out of order, two disjoint ranges of a 96-byte heap: incomplete, 39 bytes received."""
    packets = heap_packets(1, [(0x1600, 12345), (0x5000, bytes(range(96)))], [(5, 12), (32, 64)])
    records = assert_same(packets, transport, allow_out_of_order=True)
    assert records == [{"cnt": 1, "complete": False, "received": 39, "length": 96}]


def test_incomplete_heap_items_are_not_handed_out():
    """Documented difference (README): spead2's IncompleteHeap.get_items() gives the
    immediate items received; daqd reports an incomplete heap by cnt, received and
    length only."""
    packets = heap_packets(1, [(0x1600, 12345), (0x5000, bytes(range(96)))], [(5, 12), (32, 64)])
    stream = spead2.recv.Stream(h.THREAD_POOL,
                                spead2.recv.StreamConfig(allow_out_of_order=True),
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    stream.add_buffer_reader(b"".join(packets))
    [ref] = list(stream)
    assert isinstance(ref, spead2.recv.IncompleteHeap)
    expected = [(i.id, i.is_immediate, i.immediate_value) for i in ref.get_items()]
    assert expected == [(0x1600, True, 12345)]          # the addressed item is left out
    [heap] = _spead.HeapStream(allow_out_of_order=True).add_packets(packets)
    assert not heap.complete
    assert heap.items == []
    assert (heap.cnt, heap.received, heap.length) == (1, 39, 96)


@TRANSPORTS
@pytest.mark.parametrize("value, start", [(sp.CTRL_STREAM_START, True),
                                          (CTRL_DESCRIPTOR_REISSUE, False)],
                         ids=["stream-start", "descriptor-reissue"])
def test_is_start_of_stream(transport, value, start):
    packets = heap_packets(1, [(sp.STREAM_CTRL_ID, value)])
    [record] = assert_same(packets, transport)
    assert record["start"] is start
    assert record["stop"] is False


@TRANSPORTS
def test_is_end_of_stream(transport):
    """With stop_on_stop_item off the stop heap is delivered, flagged as the end."""
    packets = heap_packets(1, [(sp.STREAM_CTRL_ID, sp.CTRL_STREAM_STOP)])
    [record] = assert_same(packets, transport, stop_on_stop_item=False)
    assert record["stop"] is True
    assert record["start"] is False


@TRANSPORTS
def test_no_stop_on_stop_item(transport):
    """A stop heap then a heap with a descriptor and a string: both delivered."""
    packets = (heap_packets(1, [(sp.STREAM_CTRL_ID, sp.CTRL_STREAM_STOP)])
               + heap_packets(2, [plain_descriptor(ITEM, b"test_string", b"a byte string",
                                                   [("c", 8)], [None]),
                                  (ITEM, b"Hello world")]))
    records = assert_same(packets, transport, stop_on_stop_item=False)
    assert [r["cnt"] for r in records] == [1, 2]
    assert (ITEM, False, b"Hello world") in records[1]["items"]
    assert records[1]["descriptors"][0]["name"] == "test_string"
    # and with the default, the stop heap ends the stream before heap 2
    assert assert_same(packets, transport) == []


@TRANSPORTS
def test_no_heap_size(transport):
    """No packet carries HEAP_SIZE; an item pointer sits among the structure pointers."""
    payload1, payload2 = bytes(range(64)), bytes(range(64, 96))
    p1 = sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.addr(0x1000, 0),
                        sp.imm(sp.HEAP_OFFSET_ID, 0), sp.imm(sp.PAYLOAD_LENGTH_ID, 64)], payload1)
    p2 = sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.HEAP_OFFSET_ID, 64),
                        sp.imm(sp.PAYLOAD_LENGTH_ID, 32)], payload2)
    [record] = assert_same([p1, p2], transport)
    assert record["complete"]
    assert record["items"] == [(0x1000, False, payload1 + payload2)]


@TRANSPORTS
@pytest.mark.parametrize("allow", [False, True])
def test_disallow_unsized_heaps(transport, allow):
    """Packets without HEAP_SIZE are rejected when disallowed; sized heaps go on."""
    unsized = sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.addr(0x1000, 0),
                             sp.imm(sp.HEAP_OFFSET_ID, 0), sp.imm(sp.PAYLOAD_LENGTH_ID, 64)],
                            bytes(range(64)))
    sized = sp.packet(2, bytes(32), items=[sp.addr(0x1000, 0)])
    records = assert_same([unsized, sized], transport, allow_unsized_heaps=allow)
    # An unsized heap never completes: it leaves the window at the end (flushed)
    assert [r["cnt"] for r in records] == ([2, 1] if allow else [2])
    stream = _spead.HeapStream(allow_unsized_heaps=allow)
    stream.add_packets([unsized, sized])
    assert stream.stats()["packets_rejected_unsized"] == (0 if allow else 1)


@TRANSPORTS
def test_bad_offset(transport):
    """An item address (65) beyond HEAP_SIZE (64): never a usable heap.

    spead2's own test reads with contiguous_only=True and sees no heap; with
    incomplete heaps kept (daqd always delivers them) both give one incomplete
    heap with all 64 bytes received.
    """
    p = sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 1), sp.imm(sp.HEAP_SIZE_ID, 64),
                       sp.imm(sp.HEAP_OFFSET_ID, 0), sp.imm(sp.PAYLOAD_LENGTH_ID, 64),
                       sp.addr(0x1000, 65)], bytes(64))
    records = assert_same([p], transport)
    assert records == [{"cnt": 1, "complete": False, "received": 64, "length": 64}]


# --------------------------------------------------------------------------
# TestStreamConfig


def test_stream_config_default_construct():
    """The defaults that change what a stream delivers are spead2's, but max_heaps:
    daqd has one default for both modes and its configuration, 8 (spead2: 4)."""
    ref = spead2.recv.StreamConfig()
    stream = _spead.HeapStream()
    assert stream.max_heaps == _spead.DEFAULT_MAX_HEAPS == 8
    assert ref.max_heaps == spead2.recv.StreamConfig.DEFAULT_MAX_HEAPS == 4
    assert stream.allow_out_of_order is ref.allow_out_of_order is False
    assert stream.stop_on_stop_item is ref.stop_on_stop_item is True
    assert stream.allow_unsized_heaps is ref.allow_unsized_heaps is True


def test_stream_config_kwargs_construct():
    stream = _spead.HeapStream(max_heaps=5, allow_out_of_order=True, stop_on_stop_item=False)
    assert stream.max_heaps == 5
    assert stream.allow_out_of_order is True
    assert stream.stop_on_stop_item is False
    with pytest.raises(AttributeError):
        stream.max_heaps = 6


def test_stream_config_max_heaps_zero():
    with pytest.raises(ValueError):
        spead2.recv.StreamConfig(max_heaps=0)
    with pytest.raises(ValueError):
        _spead.HeapStream(max_heaps=0)


def test_stream_config_bad_kwarg():
    with pytest.raises(TypeError):
        spead2.recv.StreamConfig(not_valid_arg=1)
    with pytest.raises(TypeError):
        _spead.HeapStream(not_valid_arg=1)


# --------------------------------------------------------------------------
# TestUdpReader


def test_out_of_range_udp_port():
    """spead2 raises TypeError (no uint16 conversion); daqd refuses the URI."""
    with pytest.raises(TypeError):
        spead2.recv.Stream(h.THREAD_POOL).add_udp_reader(100000)
    with pytest.raises(SourceError, match="bad port"):
        open_source("udp://127.0.0.1:100000")


# --------------------------------------------------------------------------
# TestTcpReader: a byte stream over TCP


def simple_packet() -> bytes:
    return heap_packets(1, [plain_descriptor(ITEM, b"test_scalar_int", b"a scalar integer",
                                             [("u", 32)], []),
                            (ITEM, 0x12345678)])[0]


def big_packet() -> bytes:
    """One packet with a 100000-byte item: larger than any TCP reader's maximum."""
    return heap_packets(1, [numpy_descriptor(0x2345, b"test_big_array", b"over-sized packet",
                                             numpy_header("|u1", False, (100000,))),
                            (0x2345, bytes(100000))])[0]


def nested_reject(kind: str) -> bytes:
    """A packet of known size that is rejected, carrying a whole valid packet as payload."""
    inner = simple_packet()
    pointers = [sp.imm(sp.HEAP_CNT_ID, 2), sp.imm(sp.HEAP_OFFSET_ID, 0),
                sp.imm(sp.PAYLOAD_LENGTH_ID, len(inner))]
    if kind == "outside":
        pointers.append(sp.imm(sp.HEAP_SIZE_ID, 10))     # payload runs past the heap
    else:
        pointers = pointers[1:]                         # no HEAP_CNT
    return sp.raw_packet(pointers, inner)


TCP_CASES = {
    "bad_header": lambda: b"deadbeef" + simple_packet(),
    "payload_outside_heap": lambda: nested_reject("outside") + simple_packet(),
    "missing_heap_cnt": lambda: nested_reject("missing") + simple_packet(),
    "packet_too_big": lambda: big_packet() + simple_packet(),
    "partial_header": lambda: simple_packet()[:6],
    "partial_packet": lambda: simple_packet()[:45],
    "partial_payload": lambda: simple_packet()[:-1],
}
def spead2_tcp_receive(data: bytes) -> list[dict]:
    """spead2's TCP reader (default max_size) fed `data` over a loopback connection."""
    stream = spead2.recv.Stream(h.THREAD_POOL, spead2.recv.StreamConfig(),
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stream.add_tcp_reader(acceptor=listener)
    with socket.create_connection(("127.0.0.1", port)) as sender:
        sender.sendall(data)
    return h.collect_spead2(stream)


@pytest.mark.network
@pytest.mark.parametrize("case", list(TCP_CASES))
def test_tcp_reader_case(case):
    """The bytes of a TCP connection: spead2's TCP reader, daqd's byte-stream reader (tcp://).

    packet_too_big: both skip the over-long packet by its declared size (daqd used to
    rescan its payload and decode the descriptor packet nested in it as a spurious heap).
    payload_outside_heap, missing_heap_cnt: a rejected packet whose size is known is
    skipped whole in the same way, never rescanned for a nested packet.
    """
    data = TCP_CASES[case]()
    expected = spead2_tcp_receive(data)
    assert len(expected) == (0 if case.startswith("partial") else 1)
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data, max_packet_size=DEFAULT_MAX_PACKET_SIZE))
    assert [h.daqd_record(x) for x in heaps] == expected
