"""Sinks fail independently: a sink on a full disk never costs a healthy sink a record.

One text sink writes to a small tmpfs that is full, another to the test's
directory; 30 000 records go through a real buffer and its flusher thread
under every ``when_full`` choice.  The healthy sink's files hold every record
the buffer accepted; the failing sink's losses are counted for it alone,
under their reason, and ``written + lost == accepted`` for each sink.
"""

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import CountingRecord, MemorySink
from fs_helpers import fill_up, small_tmpfs

from daqd.config import SinkConfig
from daqd.pipeline.buffers import WHEN_FULL, Buffer
from daqd.pipeline.flush import Flusher, FlushPolicy
from daqd.pipeline.records import HeapRecord
from daqd.sinks import SinkContext, make_sink

RECORDS = 30_000
CAPACITY = 256
WAIT_STEPS = 200_000        # bound of the producer's wait for the healthy sink


def nonzero(counts):
    """The reasons that counted something."""
    return {reason: n for reason, n in counts.items() if n}

@pytest.fixture
def full_disk(tmp_path):
    with small_tmpfs(tmp_path / "full", "1m") as mount_point:
        fill_up(mount_point)
        yield mount_point


@pytest.fixture
def switch_often():
    """Threads switch often, as a receive thread that releases the GIL lets them."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


def text_sink(path):
    return make_sink(SinkContext("s", SinkConfig("text", str(path), template="{cnt}",
                                                 fsync="never"), None))


def cnts_in(directory):
    paths = sorted(p for p in directory.iterdir() if p.name.endswith(".txt"))
    return [int(line) for p in paths for line in p.read_text().splitlines()[1:]]


@pytest.mark.parametrize("when_full", WHEN_FULL)
def test_a_sink_on_a_full_disk_costs_the_healthy_sink_nothing(tmp_path, full_disk, when_full,
                                                              switch_often):
    bad = text_sink(full_disk / "bad-{seq}.txt")
    good = text_sink(tmp_path / "good" / "good-{seq}.txt")
    buffer = Buffer("circular", CAPACITY, when_full, FlushPolicy(count=32, interval=0.05),
                    block_timeout=60.0)
    buffer.set_primary_sink(bad)            # written first at every flush
    buffer.add_custom_sink(good)
    flusher = Flusher(buffer, poll=0.01).start()
    accepted = []
    for cnt in range(RECORDS):
        if buffer.put(HeapRecord(cnt, {0x3300: b"x" * 16})):
            accepted.append(cnt)
        # when_full is the answer to healthy sinks that cannot keep up: here
        # the healthy sink keeps up (the producer lets the flusher catch up,
        # bounded), so nothing it accepted may be lost for it.
        for _ in range(WAIT_STEPS):
            if len(accepted) - buffer.stats()["sinks"][good.name]["written"] < CAPACITY // 2:
                break
            time.sleep(0.0002)
    assert flusher.stop(timeout=30)
    stats = buffer.stats()
    assert stats["sinks"][bad.name]["failing"] and stats["sinks"][bad.name]["written"] == 0
    buffer.close()
    good.close()
    bad.close()
    stats = buffer.stats()
    healthy, failing = stats["sinks"][good.name], stats["sinks"][bad.name]
    print(f"{when_full}: accepted {len(accepted)}, healthy written {healthy['written']} "
          f"lost {healthy['lost']}, dropped {stats['dropped']}; failing lost "
          f"{nonzero(failing.get('lost_by_reason', {}))}")

    total = len(accepted)
    assert total == stats["records_accepted"]
    assert total + stats["dropped"].get("drop_newest", 0) == RECORDS
    assert stats["dropped"] == {"unwritten_at_close": CAPACITY, **(
        {"drop_newest": RECORDS - total} if total < RECORDS else {})}
    assert cnts_in(tmp_path / "good") == accepted                 # every record, once
    assert healthy["written"] == total and healthy["lost"] == 0
    assert failing["written"] + failing["lost"] == total
    assert nonzero(failing["lost_by_reason"]) == {"backlog_overflow": total - CAPACITY,
                                         "unwritten_at_close": CAPACITY}
    assert stats["lagging_evictions"] == total - CAPACITY
    assert failing["errors"] >= 1 and "No space left" in failing["last_error"]


@pytest.mark.parametrize("write_succeeds", [True, False])
def test_records_that_overflow_while_the_sink_behind_writes_them_count_by_its_outcome(
        write_succeeds):
    """The backlog of a sink overflows during its own write: released after it, counted once."""
    entered, go_on = threading.Event(), threading.Event()
    blocking = []

    def maybe_block(records):
        if blocking:
            entered.set()
            assert go_on.wait(10)

    bad, good = MemorySink("bad", on_write=maybe_block), MemorySink("good")
    bad.fail = True
    buffer = Buffer("fifo", capacity=4, when_full="block", block_timeout=5)
    buffer.set_primary_sink(bad)
    buffer.add_custom_sink(good)
    records = [CountingRecord(i) for i in range(6)]
    for record in records[:4]:
        assert buffer.put(record)
    buffer.flush()                          # good has 0-3; bad holds all four back
    blocking.append(True)
    bad.fail = not write_succeeds
    flusher = Flusher(buffer).start()
    flusher.request_flush("test")
    assert entered.wait(10)                 # bad is writing 0-3
    assert buffer.put(records[4]) and buffer.put(records[5])   # 0 and 1 overflow for bad
    assert [r.releases for r in records[:2]] == [0, 0]         # not under bad's feet
    assert buffer.stats()["block_waits"] == 0
    go_on.set()
    assert flusher.stop(timeout=10)
    stats = buffer.stats()["sinks"]
    assert good.cnts == list(range(6)) and stats["good"]["lost"] == 0
    if write_succeeds:
        assert bad.cnts == list(range(6)) and stats["bad"]["lost"] == 0
    else:
        assert bad.cnts == []
        assert nonzero(stats["bad"]["lost_by_reason"]) == {"backlog_overflow": 2}
        assert stats["bad"]["backlog"] == 4
    assert stats["bad"]["written"] + stats["bad"]["lost"] + stats["bad"]["backlog"] == 6
    assert [r.releases for r in records[:2]] == [1, 1]
    buffer.close()
    assert all(r.releases == 1 for r in records)
