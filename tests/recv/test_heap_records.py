"""Heap records decoded against their descriptors, compared with spead2's ItemGroup.

spead2 is the reference: heaps are built and sent by spead2's ItemGroup,
received by daqd's HeapStream and turned into records by the heap recorder
(`daqd.recv.heap_records.HeapRecorder`), and every decoded value must equal,
type and dtype included, what ``spead2.ItemGroup.update`` gives for the same
heaps.  Also: descriptor replacement, values that do not fit (kept raw and
counted), and records that keep their descriptors through the write-ahead log.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead2_helpers import THREAD_POOL, split_packets

from daqd import _spead
from daqd.pipeline.items import EMPTY_DESCRIPTORS, ItemDescriptors
from daqd.pipeline.records import HeapRecord, decode_record
from daqd.pipeline.wal import WriteAheadLog
from daqd.recv.descriptors import decode_descriptors
from daqd.recv.heap_records import STRUCTURE_IDS, HeapRecorder
from daqd.sinks.text import format_heap


def send(heaps: list[Any], max_packet_size: int = 1472) -> list[bytes]:
    """The datagrams spead2 sends for `heaps` (send.Heap objects)."""
    stream = spead2.send.BytesStream(THREAD_POOL,
                                     spead2.send.StreamConfig(max_packet_size=max_packet_size))
    for cnt, heap in enumerate(heaps, 1):
        stream.send_heap(heap, cnt)
    return split_packets(stream.getvalue())


def daqd_records(packets: list[bytes]) -> tuple[list[HeapRecord], HeapRecorder]:
    """Records the recorder makes of `packets`, received by daqd's HeapStream."""
    recorder = HeapRecorder("sensors")
    stream = _spead.HeapStream(max_heaps=4)
    records = list(recorder.records(stream.add_packets(packets) + stream.flush()))
    return records, recorder


def spead2_updates(packets: list[bytes]) -> list[dict[str, Any]]:
    """``ItemGroup.update`` of each heap spead2 receives from `packets` (name -> value)."""
    stream = spead2.recv.Stream(THREAD_POOL, spead2.recv.StreamConfig(max_heaps=4))
    stream.add_buffer_reader(b"".join(packets))
    group = spead2.ItemGroup()
    out = []
    for heap in stream:
        updated = group.update(heap)
        if updated:
            out.append({name: item.value for name, item in updated.items()})
    return out


def assert_same(ours: Any, theirs: Any, name: str) -> None:
    """Same type, dtype, shape and value (structured and object arrays too)."""
    assert type(ours) is type(theirs), (name, type(ours), type(theirs))
    if isinstance(theirs, np.ndarray | np.generic):
        assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
        assert ours.shape == theirs.shape, name
        assert ours.tolist() == theirs.tolist(), name
        if isinstance(theirs, np.ndarray) and theirs.dtype.fields is None \
                and not theirs.dtype.hasobject:
            assert ours.tobytes() == theirs.tobytes(), name        # bit for bit
    else:
        assert ours == theirs, name


def check_against_spead2(packets: list[bytes]) -> list[HeapRecord]:
    """Every record's decoded items equal spead2's update of the same heap."""
    records, recorder = daqd_records(packets)
    expected = spead2_updates(packets)
    assert len(records) == len(expected)
    for record, theirs in zip(records, expected, strict=True):
        decoded = record.decode()
        assert not decoded.failed and decoded.undescribed == 0
        assert set(decoded.by_name) == set(theirs)
        for name, value in theirs.items():
            assert_same(decoded.by_name[name], value, name)
    counters = recorder.counters()
    assert counters["records_undecoded_items"] == 0
    assert counters["records_undescribed_items"] == 0
    return records


# ---------------------------------------------------------------------------
# Items of every kind, as spead2 sends and decodes them

RNG = np.random.default_rng(7)
STRUCT = np.dtype([("a", "<u2"), ("b", ">f4"), ("c", "i1")])


def ints(bits: int, n: int | None = None, signed: bool = False) -> Any:
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    values = [int(v) for v in RNG.integers(lo, hi, size=n or 1, dtype=np.int64)] \
        if bits < 63 else [int.from_bytes(RNG.bytes(bits // 8), "big") for _ in range(n or 1)]
    return values if n is not None else values[0]


def twos(value: int, bits: int) -> int:
    """spead2's immediate path sends unsigned bits: a negative value as two's complement."""
    return value % (1 << bits)


# name -> (shape, {"format": ...} or {"dtype": ..., "order": ...}, value maker)
CASES: dict[str, dict[str, tuple[tuple, dict[str, Any], Any]]] = {
    "immediates": {
        "time_ms": ((), {"format": [("u", 48)]}, lambda: ints(40)),
        "offset": ((), {"format": [("i", 40)]}, lambda: twos(ints(40, signed=True), 40)),
        "port": ((), {"format": [("u", 16)]}, lambda: ints(16)),
        "delta": ((), {"format": [("i", 32)]}, lambda: ints(32, signed=True)),
        "flag": ((), {"format": [("b", 8)]}, lambda: bool(RNG.integers(2))),
        "gain": ((), {"format": [("f", 32)]}, lambda: np.float32(RNG.normal())),
        "code": ((), {"dtype": ">u4"}, lambda: np.uint32(ints(32))),
        "level": ((), {"dtype": "<i2"}, lambda: np.int16(ints(16, signed=True))),
        "byte": ((), {"format": [("u", 8)]}, lambda: ints(8)),
        "small": ((), {"format": [("u", 24)]}, lambda: ints(24)),
    },
    "arrays": {
        "readings": ((16,), {"dtype": ">f4"}, lambda: RNG.normal(size=16).astype(">f4")),
        "samples": ((2, 3), {"dtype": "<i2"},
                    lambda: RNG.integers(-999, 999, (2, 3)).astype("<i2")),
        "matrix": ((3, 2), {"dtype": ">f8", "order": "F"}, lambda: RNG.normal(size=(3, 2))),
        "table": ((3,), {"dtype": STRUCT},
                  lambda: np.array([(i, i / 4, -i) for i in range(3)], STRUCT)),
        "temps": ((4,), {"format": [("f", 64)]}, lambda: RNG.normal(size=4)),
        "counts": ((5,), {"format": [("u", 32)]}, lambda: RNG.integers(0, 1 << 32, 5)),
        "flags": ((3,), {"format": [("b", 8)]}, lambda: RNG.integers(0, 2, 3).astype(bool)),
    },
    "variable": {
        "spectrum": ((None,), {"format": [("u", 16)]},
                     lambda: RNG.integers(0, 1 << 16, int(RNG.integers(1, 40)))),
        "pairs": ((None, 2), {"format": [("i", 8)]},
                  lambda: RNG.integers(-128, 128, (int(RNG.integers(1, 9)), 2))),
    },
    "strings": {
        "unit": ((None,), {"format": [("c", 8)]},
                 lambda: str(RNG.choice(["deg C", "K", "mbar", "m/s", "cryo stage 2"]))),
        "padded": ((8,), {"format": [("c", 8)]}, lambda: b"ab\0\0cd\0\0"),
    },
    "bits": {
        "adc12": ((3,), {"format": [("u", 12)]}, lambda: ints(12, 3)),
        "tiny": ((5,), {"format": [("i", 3)]}, lambda: ints(3, 5, signed=True)),
        "mask": ((4,), {"format": [("b", 1)]}, lambda: [bool(v) for v in RNG.integers(0, 2, 4)]),
        "huge": ((2,), {"format": [("u", 128)]}, lambda: ints(128, 2)),
        "nibbles": ((2,), {"format": [("u", 4), ("i", 4), ("u", 8)]},
                   lambda: [(ints(4), ints(4, signed=True), ints(8)) for _ in range(2)]),
        "header": ((), {"format": [("u", 8), ("f", 32), ("u", 24)]},
                   lambda: (ints(8), float(np.float32(RNG.normal())), ints(24))),
        "tagged": ((2,), {"format": [("c", 8), ("u", 12), ("u", 4)]},
                   lambda: [(b"x", ints(12), ints(4)), (b"y", ints(12), ints(4))]),
        "addr48": ((2,), {"format": [("u", 48)]}, lambda: ints(48, 2)),
    },
}


def item_group(case: str, address_bits: int) -> spead2.send.ItemGroup:
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, address_bits))
    for i, (name, (shape, kind, _)) in enumerate(CASES[case].items()):
        ig.add_item(0x1000 + i, name, f"the {name}", shape, **kind)
    return ig


@pytest.mark.parametrize("address_bits", [40, 48])
@pytest.mark.parametrize("case", list(CASES))
def test_decoded_items_equal_spead2_item_group(case, address_bits):
    # The first heap carries the descriptors; the next ones values only
    # (spead2's default), so later records decode with descriptors learnt
    # from an earlier heap.
    ig = item_group(case, address_bits)
    heaps = []
    for _ in range(5):
        for name, (_, _, make) in CASES[case].items():
            ig[name].value = make()
        heaps.append(ig.get_heap(data="all"))
    records = check_against_spead2(send(heaps))
    assert len(records) == 5
    # The binary sink's payload stays the raw bytes.
    assert all(r.payload == b"".join(v for _, v in sorted(r.items.items())
                                     if isinstance(v, bytes)) for r in records)


def test_immediates_are_immediate_and_decode_as_their_width():
    ig = item_group("immediates", 48)
    for name, (_, _, make) in CASES["immediates"].items():
        ig[name].value = make()
    ig["offset"].value = twos(-7, 40)
    ig["level"].value = np.int16(-300)
    packets = send([ig.get_heap()])
    (record,) = check_against_spead2(packets)
    assert all(isinstance(v, int) for v in record.items.values())     # all sent immediate
    values = record.decode().by_name
    assert values["offset"] == -7 and type(values["offset"]) is int
    assert values["level"] == -300 and values["level"].dtype == np.int16
    assert type(values["time_ms"]) is int and values["port"].dtype == np.uint16


def test_strings_and_variable_shapes():
    ig = item_group("strings", 48)
    ig["unit"].value = "cryo stage 2"
    ig["padded"].value = b"ab\0\0cd\0\0"
    (record,) = check_against_spead2(send([ig.get_heap()]))
    assert record.decode().by_name == {"unit": "cryo stage 2", "padded": "abcd"}
    ig = item_group("variable", 48)
    ig["spectrum"].value = np.arange(7, dtype=np.uint16)
    ig["pairs"].value = np.arange(6, dtype=np.int8).reshape(3, 2)
    (record,) = check_against_spead2(send([ig.get_heap()]))
    assert record.decode().by_name["pairs"].shape == (3, 2)


def test_multi_packet_heaps_decode_too():
    ig = item_group("arrays", 48)
    for name, (_, _, make) in CASES["arrays"].items():
        ig[name].value = make()
    ig.add_item(0x2000, "big", "", (3000,), dtype="<u2",
                value=np.arange(3000, dtype="<u2"))
    records = check_against_spead2(send([ig.get_heap()], max_packet_size=512))
    assert records[0].decode().by_name["big"].tolist() == list(range(3000))


# ---------------------------------------------------------------------------
# Descriptors change; values that do not fit


def test_descriptor_replacement_follows_spead2_and_records_keep_theirs():
    flavour = spead2.Flavour(4, 64, 48)
    ig = spead2.send.ItemGroup(flavour=flavour)
    ig.add_item(0x1000, "level", "", (), format=[("u", 16)], value=300)
    heaps = [ig.get_heap()]
    # same id, new format: the value is read the new way
    ig.add_item(0x1000, "level", "now signed", (), format=[("i", 16)], value=-5)
    heaps.append(ig.get_heap())
    # same name, new id: the old id loses its descriptor (spead2's ItemGroup)
    ig.add_item(0x1001, "level", "", (2,), dtype="<f4", value=np.array([1.5, 2.5], "<f4"))
    heaps.append(ig.get_heap())
    # an item whose descriptor was dropped, sent anyway
    orphan = spead2.send.Heap(flavour)
    orphan.add_item(spead2.Item(0x1000, "old", "", (), format=[("u", 16)], value=9))
    heaps.append(orphan)
    packets = send(heaps)
    records, recorder = daqd_records(packets)
    expected = spead2_updates(packets)      # the orphan updates nothing in spead2
    assert len(records) == 4 and len(expected) == 3
    for record, theirs in zip(records, expected, strict=False):
        for name, value in theirs.items():
            assert_same(record.decode().by_name[name], value, name)
    assert records[0].decode().by_name["level"] == 300
    assert records[1].decode().by_name["level"] == -5
    last = records[3].decode()
    assert last.by_name == {} and last.values == {0x1000: 9} and last.undescribed == 1
    assert recorder.counters()["records_undescribed_items"] == 1
    # Each record keeps the descriptors of its time.
    assert records[0].descriptors[0x1000].descriptor["format"] == [["u", 16]]
    assert 0x1000 not in records[2].descriptors
    assert records[0].descriptors is not records[1].descriptors
    # A descriptor sent again unchanged keeps the same set (records share it).
    assert recorder.item_descriptors.updated(
        recorder.item_descriptors.descriptors()) is recorder.item_descriptors


def test_value_too_short_for_its_shape_is_kept_raw_and_counted():
    # spead2's ItemGroup raises on such a heap; daqd keeps the record, raw.
    flavour = spead2.Flavour(4, 64, 48)
    ig = spead2.send.ItemGroup(flavour=flavour)
    ig.add_item(0x1000, "readings", "", (16,), dtype=">f4",
                value=np.zeros(16, ">f4"))
    ig.add_item(0x1001, "sensor", "", (), format=[("u", 48)], value=3)
    short = spead2.send.Heap(flavour)
    short.add_item(spead2.Item(0x1000, "readings", "", (8,), dtype=">f4",
                               value=np.ones(8, ">f4")))
    short.add_item(ig["sensor"])
    packets = send([ig.get_heap(), short])
    stream = spead2.recv.Stream(THREAD_POOL, spead2.recv.StreamConfig(max_heaps=4))
    stream.add_buffer_reader(b"".join(packets))
    group = spead2.ItemGroup()
    first, second = list(stream)
    group.update(first)
    with pytest.raises(ValueError, match="too few elements"):
        group.update(second)
    with capture_logs() as logs:
        records, recorder = daqd_records(packets)
    decoded = records[1].decode()
    assert decoded.values[0x1000] == np.ones(8, ">f4").tobytes()        # raw
    assert list(decoded.failed) == [0x1000] and "too few" in decoded.failed[0x1000]
    assert decoded.by_name == {"readings": np.ones(8, ">f4").tobytes(), "sensor": 3}
    assert recorder.counters()["records_undecoded_items"] == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "item value does not fit its descriptor: kept raw (counted in "
        "records_undecoded_items)"]


@pytest.mark.parametrize("descriptor, raw, reason", [
    ({"format": [["f", 16]], "shape": []}, b"\0\0", "illegal format"),
    ({"format": [], "shape": []}, b"\0", "empty format"),
    ({"format": [["u", 8]], "shape": [None, None]}, b"\0", "more than one variable"),
    ({"format": [["u", 0]], "shape": []}, b"\0", "no length"),
    ({"dtype": "{'descr': '|O', 'fortran_order': False, 'shape': ()}"}, b"\0" * 8, "objects"),
    ({"dtype": "not a header"}, b"\0", "cannot parse"),
    ({"format": [["c", 8]], "shape": [None]}, "é".encode(), "ASCII"),
    ({"format": [["u", 64]], "shape": []}, 5, "too few"),            # immediate of 48 bits
], ids=["f16", "empty", "two-variable", "zero-bits", "object-dtype", "bad-header",
        "non-ascii", "wide-immediate"])
def test_descriptors_spead2_refuses_leave_values_raw(descriptor, raw, reason):
    d = {"id": 0x1000, "name": "x", "description": "", "shape": [], "format": [],
         "dtype": None, **descriptor}
    decoded = ItemDescriptors.from_dicts([d]).decode_items({0x1000: raw}, 48)
    assert decoded.values == {0x1000: raw} and decoded.names == {0x1000: "x"}
    assert reason in decoded.failed[0x1000]


# ---------------------------------------------------------------------------
# Descriptors through the write-ahead log


def sensor_records() -> list[HeapRecord]:
    ig = item_group("arrays", 40)
    ig.add_item(0x1800, "time_ms", "", (), format=[("u", 40)])
    ig.add_item(0x1801, "unit", "", (None,), format=[("c", 8)])
    heaps = []
    for i in range(3):
        for name, (_, _, make) in CASES["arrays"].items():
            ig[name].value = make()
        ig["time_ms"].value = 1_767_225_600_000 + i
        ig["unit"].value = "deg C"
        heaps.append(ig.get_heap())
    return check_against_spead2(send(heaps))


def test_encode_keeps_descriptors_and_address_bits():
    records = sensor_records()
    for record in records:
        blob = record.encode()
        assert blob[:1] == b"D"
        again = decode_record(blob)
        assert isinstance(again, HeapRecord)
        assert (again.cnt, again.received, again.items, again.address_bits) == \
            (record.cnt, record.received, record.items, 40)
        assert again.descriptors.descriptors() == record.descriptors.descriptors(record.items)
        for name, value in record.decode().by_name.items():
            assert_same(again.decode().by_name[name], value, name)
        assert format_heap("{cnt} {values}", again) == format_heap("{cnt} {values}", record)
        assert again.encode() == blob
    # Records with the same descriptors share one decoded set after a replay.
    replayed = [decode_record(r.encode()) for r in records]
    assert replayed[1].descriptors is replayed[2].descriptors


def test_records_without_descriptors_encode_as_before():
    record = HeapRecord(7, {0x1600: 57344, 0x3300: b"\x00\xff"}, received=1.5)
    blob = record.encode()
    assert blob == b"".join([b"H", struct.pack("<QdI", 7, 1.5, 2),
                             struct.pack("<QBQ", 0x1600, 1, 57344),
                             struct.pack("<QBQ", 0x3300, 0, 2), b"\x00\xff"])
    again = decode_record(blob)
    assert again.descriptors is EMPTY_DESCRIPTORS and again.items == record.items
    # Descriptors of other items only: nothing to keep.
    other = HeapRecord(7, dict(record.items), 1.5, descriptors=[{
        "id": 0x1000, "name": "x", "description": "", "shape": [], "format": [["u", 8]],
        "dtype": None}])
    assert other.encode() == blob


def test_bad_descriptor_section_is_a_value_error():
    (record, *_) = sensor_records()
    blob = record.encode()
    with pytest.raises(ValueError):
        decode_record(blob[:-3])
    head = blob.rindex(b"[{")
    with pytest.raises(ValueError, match="not JSON"):
        decode_record(blob[:head] + b"{" + blob[head + 1:])


def test_wal_replay_decodes_as_received(tmp_path):
    # After a restart the stream knows no descriptors until the sender sends
    # them again; records replayed from the log still decode.
    records = sensor_records()
    wal = WriteAheadLog(tmp_path / "sensors.wal", fsync="never")
    for seq, record in enumerate(records, 1):
        wal.append(seq, record.encode())
    wal.close()
    wal = WriteAheadLog(tmp_path / "sensors.wal", fsync="never")
    try:
        replayed = [decode_record(blob) for _, blob in wal.records(0)]
    finally:
        wal.close()
    assert [r.cnt for r in replayed] == [r.cnt for r in records]
    for original, again in zip(records, replayed, strict=True):
        assert again.items == original.items
        for name, value in original.decode().by_name.items():
            assert_same(again.decode().by_name[name], value, name)
        assert again.decode().by_name["unit"] == "deg C"


def test_decode_descriptors_output_is_unchanged():
    # daqd dump prints these dicts; decoding values must not change them.
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(0x1000, "a", "d", (None,), format=[("u", 12)], value=[1, 2])
    ig.add_item(0x1001, "b", "", (2,), dtype="<u2", value=np.zeros(2, "<u2"))
    stream = _spead.HeapStream(max_heaps=4)
    (heap,) = stream.add_packets(send([ig.get_heap()])) + stream.flush()
    assert decode_descriptors(heap) == [
        {"id": 0x1000, "name": "a", "description": "d", "shape": [None],
         "format": [["u", 12]], "dtype": None},
        {"id": 0x1001, "name": "b", "description": "", "shape": [], "format": [],
         "dtype": "{'descr': '<u2', 'fortran_order': False, 'shape': (2,)}"},
    ]
    record = HeapRecord.from_heap(heap, STRUCTURE_IDS,
                                  ItemDescriptors.from_dicts(decode_descriptors(heap)))
    assert record.decode().by_name["a"].tolist() == [1, 2]
