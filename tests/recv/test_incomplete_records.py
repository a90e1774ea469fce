"""Incomplete heaps as heap records (``contiguous_only = false``).

The recorder makes a record of every incomplete heap the stream hands out,
with spead2's view of it (`lossy_heaps.spead2_incomplete`: heap length,
bytes received, payload ranges) and counts them; the records survive the
write-ahead log (kind ``I``, inside a capture block too) and the text sink
prints their fields; ``daqd validate`` refuses the key where such records
cannot go, one line each.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, daqd
from lossy_heaps import heap, spead2_incomplete, workload

from daqd import _spead
from daqd.pipeline.datatime import CaptureBlock
from daqd.pipeline.records import HeapRecord, Incomplete, decode_record
from daqd.pipeline.wal import WriteAheadLog
from daqd.recv.heap_records import HeapRecorder
from daqd.sinks.text import check_template, format_heap


def recorded(allow_out_of_order: bool) -> tuple[list[HeapRecord], HeapRecorder]:
    stream = _spead.HeapStream(max_heaps=3, allow_out_of_order=allow_out_of_order,
                               contiguous_only=False)
    recorder = HeapRecorder("adc0")
    return list(recorder.records(stream.add_packets(workload()))), recorder


def view(record: HeapRecord) -> dict:
    if record.complete:
        return {"cnt": record.cnt, "complete": True}
    inc = record.incomplete
    return {"cnt": record.cnt, "received": inc.received_bytes, "length": inc.heap_length,
            "payload_ranges": [list(r) for r in inc.payload_ranges]}


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_records_are_the_heaps_spead2_hands_out(allow_out_of_order):
    records, recorder = recorded(allow_out_of_order)
    expected = spead2_incomplete(workload(), allow_out_of_order)
    assert [view(r) for r in records] == expected
    incomplete = [r for r in records if not r.complete]
    assert incomplete and all(r.items == {} and r.nbytes == 0 for r in incomplete)
    assert recorder.counters()["incomplete_heaps_recorded"] == len(incomplete)


def test_wal_round_trip_of_incomplete_records(tmp_path):
    records, _ = recorded(True)
    block = CaptureBlock("cb7", 100, None)
    records[0].capture_block = block
    assert not records[0].complete
    wal = WriteAheadLog(tmp_path / "adc0.wal", fsync="never")
    for seq, record in enumerate(records, 1):
        wal.append(seq, record.encode())
    wal.close()
    wal = WriteAheadLog(tmp_path / "adc0.wal", fsync="never")
    try:
        replayed = [decode_record(blob) for _, blob in wal.records(0)]
    finally:
        wal.close()
    assert [view(r) for r in replayed] == [view(r) for r in records]
    assert [r.received for r in replayed] == [r.received for r in records]
    assert replayed[0].capture_block.id == "cb7" and replayed[1].capture_block is None
    for again, record in zip(replayed, records, strict=True):
        assert again.encode() == record.encode()


def test_incomplete_kind_layout_and_truncation():
    record = HeapRecord(9, {}, received=2.5,
                        incomplete=Incomplete(-1, 48, ((0, 16), (32, 64))))
    blob = record.encode()
    assert blob == b"".join([b"I", struct.pack("<QdqQI", 9, 2.5, -1, 48, 2),
                             struct.pack("<QQ", 0, 16), struct.pack("<QQ", 32, 64)])
    assert view(decode_record(blob)) == {"cnt": 9, "received": 48, "length": -1,
                                         "payload_ranges": [[0, 16], [32, 64]]}
    for bad in (blob[:-1], blob[:10], blob + b"\0"):
        with pytest.raises(ValueError):
            decode_record(bad)
    # A complete record still encodes as before (kind H).
    assert HeapRecord(9, {0x1600: 1}, received=2.5).encode()[:1] == b"H"


def test_text_fields():
    template = "{cnt} {complete} {heap_length} {received_bytes} {payload_ranges} {values}"
    check_template(template, chunk_mode=False)
    incomplete = HeapRecord(3, {}, received=1.0,
                            incomplete=Incomplete(600, 400, ((0, 200), (300, 500))))
    assert format_heap(template, incomplete) == "3 0 600 400 [[0,200],[300,500]] "
    complete = HeapRecord(4, {0x1600: 7}, received=1.0)
    assert format_heap(template, complete) == "4 1 -1 -1 null 0x1600=7"
    assert format_heap("{complete:>3d}", incomplete) == "  0"


def test_the_recorder_skips_nothing_it_is_given_incomplete():
    # One heap, its middle packet lost: with contiguous_only the stream keeps it back
    # (counted as evicted/flushed), without it the recorder makes it a record.
    packets = heap(1, [64] * 3, [0, 2])
    for contiguous_only, records in ((True, 0), (False, 1)):
        stream = _spead.HeapStream(contiguous_only=contiguous_only)
        recorder = HeapRecorder("adc0")
        got = list(recorder.records(stream.add_packets(packets)))
        assert len(got) == records == recorder.counters()["incomplete_heaps_recorded"]
        assert stream.stats()["incomplete_heaps_flushed"] == 1


HEAP_STREAM = """
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]
contiguous_only = false
"""


@pytest.mark.parametrize(("extra", "name"), [
    ("[stream.chunk]\nheaps_per_chunk = 8\n", "stream[0].contiguous_only"),
    ('[[stream.sinks]]\nkind = "binary"\npath = "{dir}/{{stream}}.bin"\n',
     "stream[0].sinks[0].kind"),
    ('[stream.time]\nsync_time = "0"\ntimestamp_rate = 1.0\n'
     '[stream.trigger]\nkind = "binary"\npath = "{dir}/{{stream}}-{{event}}.bin"\n',
     "stream[0].trigger.kind"),
])
def test_validate_refuses_where_incomplete_records_cannot_go(tmp_path, extra, name):
    config = tmp_path / "daqd.toml"
    config.write_text(f'[daemon]\npidfile = "{tmp_path}/daqd.pid"\n' + HEAP_STREAM
                      + extra.format(dir=tmp_path))
    assert_one_line_error(daqd("validate", "--config", str(config)), name)
    config.write_text(config.read_text().replace("contiguous_only = false",
                                                 "contiguous_only = true"))
    proc = daqd("validate", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
