"""The text sink's lines, exactly, as ``daqd/sinks/text.py`` documents them.

Real files written by the real sink: every field of both modes (complete and
incomplete heaps, with and without the stream's clock), every kind of value
(numbers, numpy scalars and arrays, records, bytes, strings with line breaks),
the header lines, and the exact one-line messages of refused templates
(issue 18: mutation survivors of ``daqd.sinks.text``).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.datatime import CaptureBlock, Clock, Timeline
from daqd.pipeline.records import ChunkRecord, HeapRecord, Incomplete
from daqd.sinks import SinkContext, make_sink
from daqd.sinks.text import HEAP_FIELDS, check_template, format_heap, format_value

SYNC = 1796601600.0                 # 2026-12-07T00:00:00Z
RATE = 1e6
TS = 0x1600
CB3 = CaptureBlock("cb3")
CHUNK = ChunkConfig(timestamp_item=TS, timestamp_step=4, heaps_per_chunk=2, heap_bytes=4)


def descriptor(item_id, name, shape=(), fmt=None, dtype=None):
    return {"id": item_id, "name": name, "description": "", "shape": list(shape),
            "format": [list(f) for f in fmt or []], "dtype": dtype}


def npy(descr):
    return f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ()}}"


DESCRIPTORS = [
    descriptor(TS, "timestamp", fmt=[("u", 48)]),
    descriptor(0x1002, "unit", shape=[None], fmt=[("c", 8)]),
    descriptor(0x1005, "pair", fmt=[("u", 8), ("i", 16)]),
    descriptor(0x1006, "pairs", shape=[2], fmt=[("u", 8), ("i", 16)]),
    descriptor(0x1007, "raw", dtype=npy("|V3")),
    descriptor(0x1008, "rec", dtype=npy([("a", "<u2"), ("b", "S2")])),
    descriptor(0x100A, "f32", dtype=npy("<f4")),
]


def context(tmp_path, chunk=None, clock=True, name="t-{seq}.txt", **config):
    timeline = Timeline(Clock(SYNC, RATE) if clock else Clock(),
                        chunk.heaps_per_chunk * chunk.timestamp_step if chunk else None,
                        None if chunk else TS)
    return SinkContext("adc0", SinkConfig("text", str(tmp_path / name), **config), chunk,
                       timeline=timeline)


def lines_of(tmp_path, records, **kwargs):
    sink = make_sink(context(tmp_path, **kwargs))
    sink.write(records)
    sink.close()
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert len(files) == 1, files
    return files[0].name, files[0].read_text().splitlines(), sink


def heap(cnt=9, **items):
    values = {TS: 1_500_000, 0x1002: b"deg C", 0x1005: bytes([7, 0xFF, 0xFE]),
              0x1006: bytes([1, 0, 2, 3, 0, 4]), 0x1007: b"abc", 0x1008: b"\x01\x00\xb5s",
              0x100A: struct.pack("<f", 0.1), 0x3300: b"\x00\xff"}
    values.update({int(k[1:], 16): v for k, v in items.items()})
    return HeapRecord(cnt, values, received=1.25, descriptors=DESCRIPTORS,
                      capture_block=CB3)


# ----------------------------------------------------------------------
# heap mode


def test_heap_fields_of_a_complete_heap_with_a_clock(tmp_path):
    name, lines, _ = lines_of(tmp_path, [heap()], name="h-{chunk_id}.txt", template=(
        "{cnt} {nbytes} {received} {time} {utc} {utc:%H:%M:%S.%f} {capture_block} "
        "{complete} {heap_length} {received_bytes} {payload_ranges}"))
    assert name == "h-9.txt"
    assert lines == [
        "# sync_time=1796601600.0 timestamp_rate=1000000.0",
        "# cnt nbytes received time utc utc capture_block complete heap_length "
        "received_bytes payload_ranges",
        "9 35 1.25 1970-01-01T00:00:01.250000+00:00 2026-12-07 00:00:01.500000+00:00 "
        "00:00:01.500000 cb3 1 -1 -1 null"]


def test_heap_fields_of_an_incomplete_heap(tmp_path):
    record = HeapRecord(4, {}, received=2.5,
                        incomplete=Incomplete(4096, 300, ((0, 100), (200, 400))))
    missing = HeapRecord(5, {}, received=2.5, incomplete=Incomplete(-1, 8, ((8, 16),)))
    _, lines, _ = lines_of(tmp_path, [record, missing], header=False, template=(
        "{cnt} {complete} {heap_length} {received_bytes} {payload_ranges} {capture_block}|"
        "{values}|"))
    assert lines == ["4 0 4096 300 [[0,100],[200,400]] none||",
                     "5 0 -1 8 [[8,16]] none||"]


def test_heap_utc_is_that_of_the_timestamp_item_else_of_the_arrival(tmp_path):
    arrived = HeapRecord(2, {}, received=SYNC + 3.5, capture_block=CB3)
    _, lines, _ = lines_of(tmp_path, [heap(), heap(10, x1600=1_500_001), arrived],
                           header=False, template="{cnt} {utc:%Y-%m-%dT%H:%M:%S.%fZ}")
    assert lines == ["9 2026-12-07T00:00:01.500000Z", "10 2026-12-07T00:00:01.500001Z",
                     "2 2026-12-07T00:00:03.500000Z"]


def test_every_value_kind_formats_as_documented(tmp_path):
    _, lines, _ = lines_of(tmp_path, [heap()], header=False, template=(
        "{unit}|{unit:>7}|{pair}|{pair:+d}|{pairs}|{raw}|{raw:>8}|{rec}|{rec:>3}|{f32}|"
        "{f32:.3f}|{item[timestamp]:#x}|{items[0x3300]:>6}|{item[0x3300]}|{item[0x1234]}|"
        "{item[nothing]:>2}|{items[0x1234]}|{values}"))
    assert lines == [
        "deg C|  deg C|(7,-2)|(+7,-2)|[(1,2),(3,4)]|616263|  616263|(1,µs)|(  1, µs)|0.1|"
        "0.100|0x16e360|  00ff|00ff||  ||"
        'unit="deg C" pair=(7,-2) pairs=[(1,2),(3,4)] raw=616263 rec=(1,µs) f32=0.1 '
        "timestamp=1500000 0x3300=00ff"]


def test_format_value_of_each_python_and_numpy_kind():
    assert format_value(np.array(2.5), ".2f") == "2.50"
    assert format_value(np.array([[1, 2], [3, 4]], np.int8), "+d") == "[[+1,+2],[+3,+4]]"
    assert format_value((1, np.int8(-2)), "+d") == "(+1,-2)"
    assert format_value((1, (2, 3))) == "(1,(2,3))"
    assert format_value(np.bytes_(b"\xb5s"), ">4") == "  µs"
    assert format_value(b"\x01\x02", ">6") == "  0102"
    assert format_value(np.void(b"\x00\xab"), "<6") == "00ab  "
    assert format_value(np.float32(0.1)) == "0.1"
    assert format_value(np.float64(1 / 3), ".3e") == "3.333e-01"
    assert format_value(255, "#06x") == "0x00ff"


def test_format_heap_without_a_timeline():
    assert format_heap("{cnt} {unit}", heap()) == "9 deg C"


@pytest.mark.parametrize("text, written", [
    (b"a\nb", "a\\nb"), (b"a\rb", "a\\rb"), (b"a\r\nb", "a\\r\\nb"), (b"ab", "ab")])
def test_a_line_break_in_a_value_is_escaped(tmp_path, text, written):
    _, lines, _ = lines_of(tmp_path, [heap(x1002=text)], header=False,
                           template="{cnt} {unit}")
    assert lines == [f"9 {written}"]


# ----------------------------------------------------------------------
# chunk mode


CB1 = CaptureBlock("cb1")


def chunk(chunk_id, received=2.75, block=None):
    present = np.array([[1], [0]], np.uint8)
    return ChunkRecord(chunk_id, chunk_id * 8, np.zeros((2, 1, 4), np.uint8), present,
                       received=received, capture_block=block)


def test_chunk_fields_with_a_clock(tmp_path):
    name, lines, _ = lines_of(tmp_path, [chunk(3, block=CB1), chunk(4, block=CB1)],
                              chunk=CHUNK, name="c-{chunk_id}.txt", template=(
        "{chunk_id} {timestamp} {fraction_present} {heaps_present} {heaps} {nbytes} "
        "{received} {time} {utc:%S.%f} {capture_block}"))
    assert name == "c-3.txt"
    assert lines == [
        "# sync_time=1796601600.0 timestamp_rate=1000000.0",
        "# chunk_id timestamp fraction_present heaps_present heaps nbytes received time utc "
        "capture_block",
        "3 24 0.5 1 2 8 2.75 1970-01-01T00:00:02.750000+00:00 00.000024 cb1",
        "4 32 0.5 1 2 8 2.75 1970-01-01T00:00:02.750000+00:00 00.000032 cb1"]


def test_chunk_utc_default_form(tmp_path):
    _, lines, _ = lines_of(tmp_path, [chunk(3)], chunk=CHUNK, header=False,
                           template="{utc}")
    assert lines == ["2026-12-07 00:00:00.000024+00:00"]


def test_without_a_clock_there_is_no_clock_line_and_no_utc(tmp_path):
    _, lines, _ = lines_of(tmp_path, [chunk(3)], chunk=CHUNK, clock=False)
    assert lines == ["# chunk_id timestamp fraction_present heaps_present", "3 24 0.500000 1"]
    with pytest.raises(ValueError) as info:
        make_sink(context(tmp_path, chunk=CHUNK, clock=False, template="{chunk_id} {utc}"))
    assert str(info.value) == ("{utc} needs the stream's clock ([stream.time] sync_time and "
                               "timestamp_rate)")


# ----------------------------------------------------------------------
# templates refused, in one line


HEAP_LIST = ", ".join("{" + f + "}" for f in HEAP_FIELDS)
CHUNK_LIST = ("{chunk_id}, {timestamp}, {fraction_present}, {heaps_present}, {heaps}, "
              "{nbytes}, {received}, {time}, {utc}, {capture_block}")


@pytest.mark.parametrize("template, chunk_mode, has_utc, message", [
    ("{0}", False, True, "positional fields ({}) are not allowed; name the field"),
    ("{0.real}", False, True, "positional fields ({}) are not allowed; name the field"),
    ("{1[0]}", False, True, "positional fields ({}) are not allowed; name the field"),
    ("{chunk_id}", False, True,
     "unknown field {chunk_id}: a chunk-mode field; heap mode has " + HEAP_LIST
     + " and item names (an item named chunk_id: {item[chunk_id]})"),
    ("{items[temp]}", False, True,
     "{items[temp]}: items are indexed by item id, decimal or hex ({items[5632]} or "
     "{items[0x1600]}); by name: {item[NAME]}"),
    ("{item}", False, True, "{item}: item takes one [key], e.g. {item[0x1600]}"),
    ("{cnt}\r", False, True, "a line break (one record is one line)"),
    ("{cnt}\n", True, True, "a line break (one record is one line)"),
    ("{utc}", True, False, "{utc} needs the stream's clock ([stream.time] sync_time and "
                           "timestamp_rate)"),
    ("{utc:%H}", False, False, "{utc} needs the stream's clock ([stream.time] sync_time and "
                                "timestamp_rate)"),
    ("{cnt}", True, True, "unknown field {cnt}; chunk mode has " + CHUNK_LIST),
    ("{chunk_id:s}", True, True, "cannot be formatted: Unknown format code 's' for object "
                                 "of type 'int'"),
    ("{cnt:s}", False, True, "cannot be formatted: Unknown format code 's' for object of "
                             "type 'int'"),
])
def test_refused_templates_say_why_in_one_line(template, chunk_mode, has_utc, message):
    with pytest.raises(ValueError) as info:
        check_template(template, chunk_mode, has_utc)
    assert str(info.value) == message


def test_utc_needs_a_clock_unless_told_there_is_one():
    with pytest.raises(ValueError, match="needs the stream's clock"):
        check_template("{utc}", chunk_mode=True)
    for chunk_mode in (True, False):
        check_template("{utc:%H:%M:%S.%f} {utc}", chunk_mode, has_utc=True)
