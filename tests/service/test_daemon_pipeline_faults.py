"""The real daemon with a sink or its write-ahead log on a full disk, or a corrupt log.

- A text sink on a full tmpfs next to a healthy text sink: the healthy one
  gets every record, the failing one's losses are counted for it alone.
- The write-ahead log on a full tmpfs: one error line, then one summary per
  statistics interval, not one line per record; the summary's count is the
  counter's.
- A write-ahead log with a flipped bit in the middle: the start replays every
  other record and its log line says how many records were lost.
"""

import itertools
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    daemon_toml,
    free_port,
    last_messages,
    subscribed,
    toml_table,
    udp_stream_toml,
    write_config,
)
from fs_helpers import fill_up, small_tmpfs
from spead_packets import heap_packets

from daqd.pipeline.records import HeapRecord
from daqd.pipeline.wal import HEADER_BYTES, WriteAheadLog

pytestmark = pytest.mark.network

STREAM = "s0"


def heap_stream_toml(tmp, port, buffer, sinks, interval=0.2):
    return (daemon_toml(tmp, "faults-daqd", interval) + udp_stream_toml(STREAM, port)
            + toml_table("stream.buffer", **buffer)
            + "".join(toml_table("stream.sinks", array=True, kind="text", path=str(path),
                                 template="{cnt}", fsync="never") for path in sinks))


def send_paced(port, first, count, per_burst=100, pause=0.005):
    """Heaps first .. first+count-1 (one packet each, heap counter = number), in bursts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for start in range(first, first + count, per_burst):
            for n in range(start, min(start + per_burst, first + count)):
                (packet,) = heap_packets(n, [(0x1600, n)])
                sock.sendto(packet, ("127.0.0.1", port))
            time.sleep(pause)


def text_cnts(directory, prefix):
    paths = sorted(p for p in directory.iterdir()
                   if p.name.startswith(prefix) and p.name.endswith(".txt"))
    return [int(line) for p in paths for line in p.read_text().splitlines()[1:]]


def status_of(sub, until):
    """The first status message for which `until(buffer stats)` holds."""
    _, message = sub.until(lambda t, m: t == "status" and until(m["buffers"][STREAM]), 60)
    return message


def nonzero(counts):
    """The reasons that counted something."""
    return {reason: n for reason, n in counts.items() if n}

@pytest.fixture
def full_fs(tmp_path):
    with small_tmpfs(tmp_path / "full", "1m") as mount_point:
        yield mount_point


def test_a_sink_on_a_full_disk_costs_the_healthy_sink_nothing(tmp_path, full_fs):
    # 2048 records: 0.2 s of the sender's rate for the healthy sink's flusher to
    # fall behind on a loaded machine before the buffer must drop (256 lost some).
    port, heaps, capacity = free_port(), 30_000, 2048
    bad, good = full_fs / "bad-{seq:04d}.txt", tmp_path / "good" / "good-{seq:04d}.txt"
    config = heap_stream_toml(tmp_path, port, {
        "kind": "circular", "capacity": capacity, "when_full": "drop-newest",
        "flush_count": 32, "flush_interval": 0.05}, [bad, good])
    daemon = DaemonProcess(write_config(tmp_path, config))
    try:
        sub = subscribed(daemon.ready()["stats"], "status")
        try:
            fill_up(full_fs)
            # 10k heaps/s: slow enough for the healthy sink on a busy 2-core machine
            send_paced(port, 1, heaps, per_burst=50)
            status_of(sub, lambda b: b["records_accepted"] + b["records_dropped"] >= heaps)
            daemon.signal(signal.SIGTERM)
            final = last_messages(sub)
        finally:
            sub.close()
        assert daemon.wait() == 0
    finally:
        daemon.close()
    buffer = final["status"]["buffers"][STREAM]
    healthy = buffer["sinks"][f"text:{good}"]
    failing = buffer["sinks"][f"text:{bad}"]
    accepted = buffer["records_accepted"]
    print(f"accepted {accepted}, dropped {buffer['dropped']}, healthy written "
          f"{healthy['written']}, failing written {failing['written']} lost "
          f"{nonzero(failing.get('lost_by_reason', {}))}")
    # A paced sender: the healthy sink keeps up, so the buffer drops nothing
    # for it (when_full never fires) and its files hold every record.
    assert accepted == heaps and buffer["dropped"] == {"unwritten_at_close": capacity}
    assert text_cnts(tmp_path / "good", "good-") == list(range(1, heaps + 1))
    assert healthy["written"] == heaps and healthy["lost"] == 0
    assert failing["written"] == 0 and failing["lost"] == heaps
    assert nonzero(failing["lost_by_reason"]) == {"backlog_overflow": heaps - capacity,
                                                  "unwritten_at_close": capacity}
    assert failing["failing"] and "No space left" in failing["last_error"]


def test_a_full_write_ahead_log_disk_logs_a_summary_not_a_line_per_record(tmp_path, full_fs):
    port, heaps, interval = free_port(), 12_000, 1.0
    config = heap_stream_toml(tmp_path, port, {
        "kind": "fifo", "capacity": 1024, "when_full": "drop-newest", "flush_count": 32,
        "wal": f"{full_fs}/{{stream}}.wal"}, [tmp_path / "data" / "x-{seq:04d}.txt"],
        interval=interval)
    daemon = DaemonProcess(write_config(tmp_path, config))
    try:
        sub = subscribed(daemon.ready()["stats"], "status")
        try:
            fill_up(full_fs)
            started = time.monotonic()
            send_paced(port, 1, heaps)
            status_of(sub, lambda b: b["records_accepted"] + b["records_dropped"] >= heaps)
            elapsed = time.monotonic() - started
            daemon.signal(signal.SIGTERM)
            final = last_messages(sub)
        finally:
            sub.close()
        assert daemon.wait() == 0
    finally:
        daemon.close()
    buffer = final["status"]["buffers"][STREAM]
    dropped = buffer["dropped"].get("wal_error", 0)
    lines = [e for e in daemon.events
             if e.get("event", "").startswith("write-ahead log append failed")]
    print(f"{dropped} records dropped (WAL errors) in {elapsed:.1f} s: {len(lines)} log lines")
    # (The log's last page had room for a few records before the disk was full.)
    assert dropped + buffer["records_accepted"] == heaps and dropped > heaps - 1000
    # The first, one summary per interval while it lasts, the last at the end.  By the
    # daemon's own timestamps the summaries are at least an interval apart, so there
    # are no more of them than the daemon's own per-interval stats lines.
    ticks = [e for e in daemon.events if e.get("event") == "stats"]
    assert 2 <= len(lines) <= len(ticks) + 3
    summaries = [datetime.fromisoformat(e["timestamp"]) for e in lines
                 if e["event"].endswith("(repeated)")]
    assert all((b - a).total_seconds() >= interval * 0.99
               for a, b in itertools.pairwise(summaries)), summaries
    assert "No space left" in lines[0]["error"]
    assert lines[-1]["event"].endswith("(stopped)") and lines[-1]["total"] == dropped
    assert 1 + sum(e.get("repeats", 0) for e in lines[1:]) == dropped


def test_a_corrupt_frame_in_the_log_loses_only_its_record_at_start(tmp_path):
    port, records, damaged = free_port(), 400, 123
    wal_path = tmp_path / "wal" / f"{STREAM}.wal"
    config = heap_stream_toml(tmp_path, port, {
        "kind": "fifo", "capacity": 1024, "when_full": "block", "flush_count": 32,
        "wal": f"{tmp_path}/wal/{{stream}}.wal"}, [tmp_path / "data" / "x-{seq:04d}.txt"])
    path = write_config(tmp_path, config)
    first = DaemonProcess(path)             # creates the log, with the sink's done mark
    try:
        first.ready()
    finally:
        assert first.stop() == 0
    # What a crash leaves: records logged, never written; then one bit flips.
    wal = WriteAheadLog(wal_path)
    starts = []
    for n in range(records):
        starts.append(wal.stats()["bytes"])
        wal.append(wal.next_seq, HeapRecord(n, {0x1600: n.to_bytes(6, "big")}).encode())
    wal.close()
    data = bytearray(wal_path.read_bytes())
    data[starts[damaged] + HEADER_BYTES + 4] ^= 0x10
    wal_path.write_bytes(bytes(data))

    daemon = DaemonProcess(path)
    try:
        daemon.ready()
        skipped = daemon.wait_event("write-ahead log: a corrupt region was skipped; the "
                                    "records in it are lost")
        recovered = daemon.wait_event("recovered from the write-ahead log")
    finally:
        assert daemon.stop() == 0
    print(f"replayed {recovered['replayed']} of {records}, records_lost "
          f"{recovered.get('records_lost')}")
    assert skipped["records_lost"] == 1 and recovered["records_lost"] == 1
    assert recovered["replayed"] == records - 1
    assert text_cnts(tmp_path / "data", "x-") == [n for n in range(records) if n != damaged]
