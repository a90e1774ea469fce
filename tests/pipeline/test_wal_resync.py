"""The write-ahead log resynchronises past a corrupt frame and counts the records lost.

One flipped bit in the middle of the log used to end it there: every later
frame, good CRCs included, was discarded.  Now the scan goes on to the next
frame whose header and CRC check out, and the records lost are counted
exactly, from the record numbers, in the log line and in the stats.
"""

import struct
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import MemorySink, numbered_record

from daqd.pipeline.buffers import Buffer
from daqd.pipeline.records import HeapRecord, decode_record
from daqd.pipeline.wal import HEADER_BYTES, MAGIC, DoneMark, WriteAheadLog

N = 300


def write_log(path, n=N, payload=None, marks_every=0):
    """A log of records 0..n-1; where each record frame starts."""
    wal = WriteAheadLog(path, fsync="never")
    starts = []
    for seq in range(n):
        starts.append(wal.stats()["bytes"])
        wal.append(seq, (payload or (lambda i: numbered_record(i).encode()))(seq))
        if marks_every and seq % marks_every == marks_every - 1:
            wal.mark_done({"s": DoneMark(-1, {})})      # control frames between records
    wal.close()
    return starts


def flip(path, offset, bit=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def reopen(path):
    with capture_logs() as logs:
        wal = WriteAheadLog(path, fsync="never")
    return wal, [e for e in logs if "corrupt region" in e["event"]]


def cnts(wal):
    return [decode_record(blob).cnt for _, blob in wal.records(-1)]


@pytest.mark.parametrize("where", ["payload", "crc", "length", "magic", "seq"])
def test_one_flipped_bit_loses_exactly_its_record(tmp_path, where):
    path = tmp_path / "w"
    starts = write_log(path, marks_every=7)
    k = 50
    offset = starts[k] + {"payload": HEADER_BYTES + 3, "crc": HEADER_BYTES - 1,
                          "length": 13, "magic": 0, "seq": 6}[where]
    flip(path, offset, bit=5)
    wal, lines = reopen(path)
    stats = wal.stats()
    print(f"{where}: recovered {len(cnts(wal))} of {N}, records_lost {stats['records_lost']}")
    assert cnts(wal) == [i for i in range(N) if i != k]
    assert (stats["corrupt_regions"], stats["records_lost"]) == (1, 1)
    assert stats["torn_truncations"] == 0
    assert [e["records_lost"] for e in lines] == [1]
    wal.append(N, numbered_record(N).encode())          # appends go on
    wal.close()
    again, lines = reopen(path)                         # compacted: nothing corrupt left
    assert again.stats()["corrupt_regions"] == 0 and not lines
    assert cnts(again) == [i for i in range(N + 1) if i != k]


def test_a_region_over_several_frames_counts_each_record(tmp_path):
    path = tmp_path / "w"
    starts = write_log(path, marks_every=5)
    data = bytearray(path.read_bytes())
    data[starts[100] + 2:starts[104] + 7] = bytes(starts[104] + 5 - starts[100])  # zeroed
    path.write_bytes(bytes(data))
    wal, lines = reopen(path)
    assert cnts(wal) == [i for i in range(N) if not 100 <= i <= 104]
    assert wal.stats()["records_lost"] == 5 and [e["records_lost"] for e in lines] == [5]


def test_a_corrupt_control_frame_loses_no_record(tmp_path):
    path = tmp_path / "w"
    write_log(path, marks_every=10)
    data = path.read_bytes()
    mark = data.index(MAGIC + b"D", HEADER_BYTES)       # the first done mark
    flip(path, mark + HEADER_BYTES + 2)
    wal, lines = reopen(path)
    assert cnts(wal) == list(range(N))
    assert wal.stats()["corrupt_regions"] == 1 and wal.stats()["records_lost"] == 0
    assert [e["records_lost"] for e in lines] == [0]


def test_a_header_look_alike_inside_a_payload_is_never_taken(tmp_path):
    """A payload holding what looks like a frame header (not its CRC) is skipped over."""
    fake = MAGIC + b"R" + struct.pack("<QI", 10**9, 8) + b"\0\0\0\0" + b"12345678"

    def payload(i):
        return HeapRecord(i, {0x3300: fake * 3}).encode()

    path = tmp_path / "w"
    starts = write_log(path, payload=payload)
    flip(path, starts[10] + 1)                           # record 10's magic
    wal, _ = reopen(path)
    assert [seq for seq, _ in wal.records(-1)] == [i for i in range(N) if i != 10]
    assert wal.stats()["records_lost"] == 1 and wal.next_seq == N


def test_records_done_or_skipped_are_not_counted_lost(tmp_path):
    path = tmp_path / "w"
    wal = WriteAheadLog(path, fsync="never")
    starts = []
    for seq in range(20):
        starts.append(wal.stats()["bytes"])
        wal.append(seq, numbered_record(seq).encode())
    wal.skip([12])
    wal.mark_done({"s": DoneMark(4, {})})
    wal.close()
    flip(path, starts[3] + HEADER_BYTES + 1)            # done for every sink: not lost
    flip(path, starts[12] + HEADER_BYTES + 1)           # skipped: never to be written
    flip(path, starts[15] + HEADER_BYTES + 1)           # lost
    wal, lines = reopen(path)
    assert [e["records_lost"] for e in lines] == [0, 0, 1]
    assert wal.stats()["records_lost"] == 1
    assert cnts(wal) == [i for i in range(5, 20) if i not in (12, 15)]


def test_a_corrupt_frame_and_a_torn_tail(tmp_path):
    path = tmp_path / "w"
    starts = write_log(path)
    flip(path, starts[7] + HEADER_BYTES)
    data = path.read_bytes()
    path.write_bytes(data[:-3])                          # the last record torn
    wal, lines = reopen(path)
    stats = wal.stats()
    assert cnts(wal) == [i for i in range(N - 1) if i != 7]
    assert (stats["records_lost"], stats["torn_truncations"]) == (1, 1)


def test_the_buffer_replays_every_record_after_the_corrupt_one(tmp_path):
    path = tmp_path / "w"
    wal = WriteAheadLog(path, fsync="never")
    buffer = Buffer("fifo", 4 * N, wal=wal)
    sink = MemorySink("s")
    buffer.set_primary_sink(sink)
    buffer.recover()
    starts = []
    for n in range(N):
        starts.append(wal.stats()["bytes"])
        buffer.put(numbered_record(n))
    wal.close()                                         # a crash: nothing was flushed
    flip(path, starts[N // 2] + HEADER_BYTES + 9)
    with capture_logs() as logs:
        buffer = Buffer("fifo", 4 * N, wal=WriteAheadLog(path, fsync="never"))
        sink = MemorySink("s")
        buffer.set_primary_sink(sink)
        assert buffer.recover() == N - 1
    assert sink.cnts == [n for n in range(N) if n != N // 2]
    assert buffer.stats()["wal"]["records_lost"] == 1
    assert [e["records_lost"] for e in logs if "corrupt region" in e["event"]] == [1]
    assert [e["records_lost"] for e in logs if e["event"].startswith("recovered")] == [1]
