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


# -- the edges: the last frame, a compacted log's first frames ---------------------------


def frames(path):
    """(offset, kind, seq) of every frame of an undamaged log, in order."""
    data, out, offset = path.read_bytes(), [], 0
    while offset < len(data):
        _, kind, seq, length = struct.unpack_from("<4scQI", data, offset)
        out.append((offset, kind, seq))
        offset += HEADER_BYTES + length
    return out


@pytest.mark.parametrize("where", ["payload", "crc", "length", "magic", "seq", "kind"])
def test_a_corrupt_last_record_frame_is_lost_not_torn(tmp_path, where):
    """A whole last frame that fails its CRC held an accepted record: lost, not a torn tail."""
    path = tmp_path / "w"
    starts = write_log(path)
    offset = starts[-1] + {"payload": HEADER_BYTES + 3, "crc": HEADER_BYTES - 1, "length": 13,
                           "magic": 0, "seq": 6, "kind": 4}[where]
    flip(path, offset, bit=0 if where == "kind" else 5)     # kind: R becomes S
    wal, lines = reopen(path)
    stats = wal.stats()
    print(f"{where}: records_lost {stats['records_lost']}, torn {stats['torn_truncations']}")
    assert cnts(wal) == list(range(N - 1))
    assert (stats["corrupt_regions"], stats["records_lost"], stats["torn_truncations"]) == (1, 1, 0)
    assert [e["records_lost"] for e in lines] == [1]
    assert wal.next_seq == N                            # the lost record's number is not reused
    wal.append(N, numbered_record(N).encode())
    wal.close()
    again, lines = reopen(path)                         # compacted: nothing corrupt left
    assert again.stats()["corrupt_regions"] == 0 and not lines
    assert cnts(again) == [*range(N - 1), N]


def test_a_corrupt_last_control_frame_loses_no_record(tmp_path):
    path = tmp_path / "w"
    write_log(path, marks_every=N)                      # a done mark after the last record
    assert frames(path)[-1][1] == b"D"
    flip(path, frames(path)[-1][0] + HEADER_BYTES + 2)
    wal, lines = reopen(path)
    stats = wal.stats()
    assert cnts(wal) == list(range(N))
    assert (stats["corrupt_regions"], stats["records_lost"], stats["torn_truncations"]) == (1, 0, 0)
    assert [e["records_lost"] for e in lines] == [0]


def test_records_followed_by_control_frames_only_are_counted(tmp_path):
    """No good record after them: each whole record frame counts, and takes the next number."""
    path = tmp_path / "w"
    starts = write_log(path, marks_every=1)             # a done mark after every record
    flip(path, starts[N - 2] + HEADER_BYTES + 3)
    flip(path, starts[N - 1] + HEADER_BYTES + 3)
    wal, lines = reopen(path)
    assert cnts(wal) == list(range(N - 2))
    assert wal.stats()["records_lost"] == 2 and [e["records_lost"] for e in lines] == [1, 1]
    assert wal.next_seq == N


def test_a_region_after_the_last_good_record_counts_up_to_the_next_mark(tmp_path):
    """Every mark says how far the numbers went: a region over several frames counts them."""
    path = tmp_path / "w"
    starts = write_log(path, marks_every=1)
    data = bytearray(path.read_bytes())
    stop = starts[N - 1] + HEADER_BYTES + 4             # records N-3 .. N-1 and two marks
    data[starts[N - 3] + 1:stop] = bytes(stop - starts[N - 3] - 1)
    path.write_bytes(bytes(data))
    wal, lines = reopen(path)
    assert cnts(wal) == list(range(N - 3))
    assert wal.stats()["records_lost"] == 3 and [e["records_lost"] for e in lines] == [3]
    assert wal.next_seq == N


def compacted_log(path, n=1000, done=899, skip=()):
    wal = WriteAheadLog(path, fsync="never")
    for seq in range(n):
        wal.append(seq, numbered_record(seq).encode())
    if skip:
        wal.skip(list(skip))
    wal.mark_done({"s": DoneMark(done, {})})
    wal.compact()
    wal.close()
    return frames(path)


@pytest.mark.parametrize("damage, lost", [
    ("mark", 0), ("header", 0), ("header_and_mark", 0), ("first_record", 1),
    ("mark_and_first_record", 1), ("last_record", 1),
    # Nothing left says where the file starts: counted from the first good record, and said.
    ("header_mark_and_first_record", 0)])
def test_a_compacted_log_counts_from_its_first_live_record(tmp_path, damage, lost):
    """Records a compaction left out (every sink done with them) are never counted lost.

    The first number the file holds is in its header and in every done mark.
    """
    path = tmp_path / "w"
    layout = compacted_log(path)
    assert [kind for _, kind, _ in layout[:3]] == [b"H", b"D", b"R"] and layout[2][2] == 900
    (header, _, _), (mark, _, _), (first, _, _) = layout[:3]
    data = bytearray(path.read_bytes())
    if damage == "mark":
        data[mark + HEADER_BYTES + 2] ^= 0x20
    elif damage == "header":
        data[header + 3] ^= 0x20
    elif damage == "first_record":
        data[first + HEADER_BYTES + 2] ^= 0x20
    elif damage == "last_record":
        data[-3] ^= 0x20
    else:                                               # one region over several frames
        start = {"header_and_mark": header, "mark_and_first_record": mark,
                 "header_mark_and_first_record": header}[damage]
        stop = first + HEADER_BYTES + 4 if damage.endswith("first_record") else first - 4
        data[start + 1:stop] = bytes(stop - start - 1)
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        wal = WriteAheadLog(path, fsync="never")
    lines = [e for e in logs if "corrupt region" in e["event"]]
    stats = wal.stats()
    unknown = [e for e in logs if "neither its header nor a done mark" in e["event"]]
    assert len(unknown) == damage.startswith("header_")
    alive = [n for n in range(900, 1000)
             if not (damage.endswith("first_record") and n == 900)
             and not (damage == "last_record" and n == 999)]
    print(f"{damage}: records_lost {stats['records_lost']}")
    assert cnts(wal) == alive
    assert (stats["corrupt_regions"], stats["records_lost"], stats["torn_truncations"]) == (
        1, lost, 0)
    assert [e["records_lost"] for e in lines] == [lost]


def test_a_skipped_record_next_to_a_corrupt_one_after_compaction(tmp_path):
    """A compaction leaves skipped records out, and says so: they are not counted lost."""
    path = tmp_path / "w"
    layout = compacted_log(path, n=20, done=4, skip=(12, 13, 19))
    records = {seq: offset for offset, kind, seq in layout if kind == b"R"}
    assert 12 not in records and 19 not in records
    data = bytearray(path.read_bytes())
    for seq in (14, 18):                                # after a skipped pair, before the last
        data[records[seq] + HEADER_BYTES + 2] ^= 0x20
    path.write_bytes(bytes(data))
    wal, lines = reopen(path)
    assert cnts(wal) == [5, 6, 7, 8, 9, 10, 11, 15, 16, 17]
    assert wal.stats()["records_lost"] == 2 and [e["records_lost"] for e in lines] == [1, 1]
    assert wal.next_seq == 20
