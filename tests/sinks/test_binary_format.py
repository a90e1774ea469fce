"""The binary sink's file format, byte for byte, as ``daqd/sinks/binary.py`` documents it.

Real files written by the real sink, read back field by field: the header's
every key (chunk and heap mode, while the file is open and once finished),
its size rules (a multiple of 4096 with `HEADER_SPARE` to spare, rewritten
in place at the same size), `load` on empty and cut files, and the one-line
messages of files that are not daqd binary files (issue 18: mutation
survivors of ``daqd.sinks.binary``).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import daqd
from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.datatime import CaptureBlock, Clock, Timeline
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.sinks import SinkContext, make_sink
from daqd.sinks.binary import HEADER_SPARE, MAGIC, encode_header, load, read_header, rewrite_header

SYNC = 1796601600.0
RATE = 1e6
WALL = 1796601700.25            # the sink's wall clock: "created"
CHUNK = ChunkConfig(timestamp_item=0x1600, timestamp_step=4, heaps_per_chunk=2, substreams=3,
                    heap_bytes=8, dtype="<u2", extra_items=(0x1600, 0x1601))
DESCRIPTORS = [{"id": 0x1600, "name": "timestamp", "description": "ticks", "shape": [],
                "format": [["u", 48]], "dtype": None}]


def context(tmp_path, chunk=CHUNK, descriptors=lambda: DESCRIPTORS, clock=True, **config):
    timeline = Timeline(Clock(SYNC, RATE) if clock else Clock(),
                        chunk.heaps_per_chunk * chunk.timestamp_step if chunk else None,
                        None if chunk else 0x1600)
    return SinkContext("adc0", SinkConfig("binary", str(tmp_path / "{stream}-{seq}.bin"),
                                          **config),
                       chunk, wall_clock=lambda: WALL, timeline=timeline,
                       metadata={"trigger": [1, 2]}, descriptors=descriptors)


def chunk(chunk_id, block=None, fill=None):
    data = np.arange(2 * 3 * 4, dtype="<u2").reshape(2, 3, 4) + (fill or chunk_id)
    return ChunkRecord(chunk_id, chunk_id * 8, data, np.ones((2, 3), np.uint8),
                       capture_block=block)


def the_file(tmp_path, suffix):
    files = sorted(tmp_path.glob(f"*{suffix}"))
    assert len(files) == 1, files
    return str(files[0])


def test_chunk_header_every_field_while_open_and_finished(tmp_path):
    block = CaptureBlock("cb7", 16, None)
    sink = make_sink(context(tmp_path))
    sink.write([chunk(2, block), chunk(3, block)])
    expected = {
        "format": "daqd.binary/1", "daqd_version": daqd.__version__, "stream": "adc0",
        "created": "2026-12-07T00:01:40.250000+00:00", "first_chunk_id": 2,
        "mode": "chunk", "dtype": "<u2", "record_shape": [2, 3, 4], "record_bytes": 48,
        "timestamp_step": 4, "heaps_per_chunk": 2, "substreams": 3, "heap_bytes": 8,
        "extra_items": [0x1600, 0x1601], "sync_time": SYNC, "timestamp_rate": RATE,
        "trigger": [1, 2], "capture_block_id": "cb7", "capture_start": 16, "capture_stop": -1,
        "capture_start_utc": SYNC + 16e-6, "written_start": -1, "written_end": -1,
        "spead_descriptors": DESCRIPTORS, "header_bytes": 4096}
    # While the file is open: the header as it started (the capture block of its first record).
    assert read_header(the_file(tmp_path, ".bin.tmp")) == expected
    sink.close()
    path = the_file(tmp_path, ".bin")
    meta = read_header(path)
    assert meta == {**expected, "written_start": 16, "written_end": 32,
                    "written_start_utc": SYNC + 16e-6, "written_end_utc": SYNC + 32e-6}
    raw = open(path, "rb").read()
    assert raw[:8] == MAGIC and struct.unpack("<I", raw[8:12]) == (4096,)
    assert raw[4095:4096] == b"\n" and json.loads(raw[12:4096]) == meta
    assert len(raw) == 4096 + 2 * 48
    meta, data = load(path)
    assert data.dtype == np.dtype("<u2") and data.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(data[1], chunk(3).data)


def test_heap_header_every_field(tmp_path):
    block = CaptureBlock("cb1")
    sink = make_sink(context(tmp_path, chunk=None))
    sink.write([HeapRecord(9, {0x1600: 100, 0x3300: b"ab"}, capture_block=block),
                HeapRecord(10, {0x1600: 101, 0x3300: b"cd"}, capture_block=block)])
    started = read_header(the_file(tmp_path, ".bin.tmp"))
    assert started["capture_block_id"] == "cb1" and started["written_start"] == -1
    sink.close()
    path = the_file(tmp_path, ".bin")
    meta = read_header(path)
    assert {k: meta[k] for k in ("mode", "dtype", "record_shape", "record_bytes",
                                 "first_chunk_id", "capture_block_id", "written_start",
                                 "written_end", "header_bytes")} == {
        "mode": "heap", "dtype": "|u1", "record_shape": None, "record_bytes": None,
        "first_chunk_id": 9, "capture_block_id": "cb1", "written_start": 100,
        "written_end": 102, "header_bytes": 4096}
    assert "heaps_per_chunk" not in meta and "extra_items" not in meta
    assert open(path, "rb").read()[4096:] == b"abcd"
    with pytest.raises(ValueError) as info:
        load(path)
    assert str(info.value) == f"{path}: heap-mode records have no fixed size"


def test_descriptors_learnt_while_the_file_was_open_are_in_the_finished_header(tmp_path):
    known = list(DESCRIPTORS)
    sink = make_sink(context(tmp_path, descriptors=lambda: list(known)))
    sink.write([chunk(0)])
    extra = {**DESCRIPTORS[0], "id": 0x1601, "name": "gain"}
    known.append(extra)
    sink.close()
    assert read_header(the_file(tmp_path, ".bin"))["spead_descriptors"] == [DESCRIPTORS[0],
                                                                           extra]


@pytest.mark.parametrize("description", [0, 1000, 2000, 2500, 3000, 3500, 4000, 6000])
def test_a_started_header_keeps_header_spare_bytes_of_padding(tmp_path, description):
    descriptors = [{**DESCRIPTORS[0], "description": "d" * description}]
    sink = make_sink(context(tmp_path, descriptors=lambda: descriptors))
    sink.write([chunk(0)])
    raw = open(the_file(tmp_path, ".bin.tmp"), "rb").read()
    size = struct.unpack("<I", raw[8:12])[0]
    text = raw[12:size].rstrip(b" \n")
    assert size % 4096 == 0 and size - 12 - 1 - len(text) >= HEADER_SPARE
    assert size - 4096 < 12 + 1 + len(text) + HEADER_SPARE     # the smallest such size
    sink.close()


def json_of_length(n):
    """A header dict whose `encode_header` JSON text is exactly `n` bytes at size 4096."""
    base = len(json.dumps({"pad": "", "header_bytes": 4096}, indent=1).encode())
    return {"pad": "x" * (n - base)}


def test_encode_header_size_rules():
    room = 4096 - 12 - 1
    exact = encode_header(json_of_length(room))
    assert len(exact) == 4096 and exact.endswith(b"}\n")      # fits exactly, no padding
    assert len(encode_header(json_of_length(room + 1))) == 8192
    assert len(encode_header(json_of_length(room - 10), spare=10)) == 4096
    assert len(encode_header(json_of_length(room - 10), spare=11)) == 8192
    assert len(encode_header(json_of_length(room - HEADER_SPARE + 1),
                             spare=HEADER_SPARE)) == 8192
    assert len(encode_header({"pad": "x" * 10000})) == 12288
    # A fixed size ignores the spare, and refuses what does not fit, in one line.
    assert len(encode_header(json_of_length(room), spare=100, size=4096)) == 4096
    big = json_of_length(room + 1)
    with pytest.raises(ValueError) as info:
        encode_header(big, size=4096)
    assert str(info.value) == f"header of {room + 1} bytes does not fit in 4096"
    header = encode_header({"a": 1}, size=8192)
    assert struct.unpack("<I", header[8:12]) == (8192,)
    assert json.loads(header[12:]) == {"a": 1, "header_bytes": 8192}


def test_rewrite_header_in_place_and_without_descriptors_when_they_do_not_fit(tmp_path):
    sink = make_sink(context(tmp_path))
    sink.write([chunk(0), chunk(1)])
    sink.close()
    path = the_file(tmp_path, ".bin")
    before = open(path, "rb").read()
    rewrite_header(path, {"written_end": 99})
    after = open(path, "rb").read()
    assert len(after) == len(before) and after[4096:] == before[4096:]
    assert read_header(path) == {**read_header_of(before), "written_end": 99}
    huge = [{**DESCRIPTORS[0], "description": "d" * 5000}]
    rewrite_header(path, {"written_end": 100, "spead_descriptors": huge})
    meta = read_header(path)
    assert meta["written_end"] == 100 and meta["spead_descriptors"] == DESCRIPTORS
    assert open(path, "rb").read()[4096:] == before[4096:]
    with pytest.raises(ValueError, match="does not fit in 4096"):
        rewrite_header(path, {"trigger": "t" * 5000})
    assert read_header(path)["trigger"] == [1, 2]


def read_header_of(raw):
    return json.loads(raw[12:struct.unpack("<I", raw[8:12])[0]])


def test_load_empty_and_cut_files(tmp_path):
    sink = make_sink(context(tmp_path))
    sink.write([chunk(0)])
    sink.close()
    path = the_file(tmp_path, ".bin")
    raw = open(path, "rb").read()
    empty = tmp_path / "empty.dat"
    empty.write_bytes(raw[:4096])
    meta, data = load(str(empty))
    assert data.shape == (0, 2, 3, 4) and data.dtype == np.dtype("<u2")
    assert meta["header_bytes"] == 4096
    for cut in (1, 47):                     # a partial last record is left out
        part = tmp_path / f"cut{cut}.dat"
        part.write_bytes(raw + raw[4096:4096 + cut])
        _, data = load(str(part))
        assert data.shape == (1, 2, 3, 4)
        np.testing.assert_array_equal(data[0], chunk(0).data)


def test_files_that_are_not_daqd_binary_files_say_so(tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"DAQD")
    with pytest.raises(ValueError) as info:
        read_header(str(short))
    assert str(info.value) == f"{short}: too short for a daqd binary header"
    other = tmp_path / "other.bin"
    other.write_bytes(b"NOTDAQD!" + bytes(8))
    with pytest.raises(ValueError) as info:
        load(str(other))
    assert str(info.value) == f"{other}: not a daqd binary file (magic b'NOTDAQD!')"


def test_a_chunk_of_the_wrong_size_is_counted_with_its_message(tmp_path):
    sink = make_sink(context(tmp_path))
    bad = ChunkRecord(5, 40, np.zeros((2, 3, 3), "<u2"), np.ones((2, 3), np.uint8))
    sink.write([chunk(4), bad])
    sink.close()
    stats = sink.stats()
    assert stats["records"] == 1 and stats["lost_records"] == 1
    assert stats["last_error"] == "ValueError: chunk 5 has 36 data bytes, not the layout's 48"
