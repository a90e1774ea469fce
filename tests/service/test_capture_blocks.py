"""Capture blocks at data timestamps: the real daemon, fed by daqd's simulator and by spead2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import (
    DaemonProcess,
    W1Sender,
    chunk_stream_config,
    control,
    daemon_toml,
    free_port,
    sinks_toml,
    toml_table,
    udp_stream_toml,
    w1_payloads,
    wait_until,
    write_config,
)
from spead2_helpers import THREAD_POOL

from daqd.config import parse
from daqd.pipeline.records import ChunkRecord
from daqd.service.stream_runner import StreamRunner
from daqd.service.zmq_clients import format_capture
from daqd.sinks.binary import load as load_binary

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8
CHUNK = HEAPS_PER_CHUNK * 8192                  # ticks per chunk (timestamp_step 8192)
SYNC = 1796601600                               # 2026-12-07T00:00:00Z
# One chunk per second of data time: chunk k starts at SYNC + k seconds.
CLOCK = f"""
[stream.time]
sync_time = "2026-12-07T00:00:00Z"
timestamp_rate = {float(CHUNK)}
"""


def ask(endpoint: str, command: str, **args: Any) -> dict[str, Any]:
    return control(endpoint, {"command": command, **args})


def capture(endpoint: str) -> dict[str, Any]:
    return ask(endpoint, "status")["streams"]["adc0"]["capture"]


def counters(endpoint: str) -> dict[str, int]:
    return ask(endpoint, "status")["streams"]["adc0"]["counters"]


def published(directory: Path, pattern: str) -> list[Path]:
    return sorted(p for p in directory.glob(pattern) if not p.name.endswith(".tmp"))


def refused(endpoint: str, request: dict[str, Any], words: str) -> None:
    reply = control(endpoint, request)
    assert reply["ok"] is False, reply
    assert words in reply["error"] and "\n" not in reply["error"], reply["error"]


def test_a_block_from_utc_to_utc_writes_exactly_its_chunks(tmp_path):
    """Stop now; start at 00:00:04 and stop at @SYNC+10 (UTC): chunks 4 to 9, nothing else."""
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, sinks=sinks_toml(tmp_path, "hdf5", "binary"), extra=CLOCK))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        assert capture(endpoint)["state"] == "capturing"          # as at every start
        stopped = ask(endpoint, "capture-stop")
        assert stopped["ok"] and stopped["capture"]["adc0"]["state"] == "stopped"
        started = ask(endpoint, "capture-start", at="2026-12-07T00:00:04Z", id="obs-1")
        assert started["ok"], started
        assert started["capture"]["adc0"]["start"] == {
            "timestamp": 4 * CHUNK, "utc": "2026-12-07T00:00:04.000000Z"}
        assert started["capture"]["adc0"]["state"] == "start-pending"
        # bad arguments: one line each, and the schedule is untouched
        refused(endpoint, {"command": "capture-start", "at": 8 * CHUNK}, "start-pending")
        refused(endpoint, {"command": "capture-stop", "at": 3 * CHUNK},
                "is not after the block's start (262144, 2026-12-07T00:00:04.000000Z)")
        refused(endpoint, {"command": "capture-stop", "stream": "adc9"},
                "unknown stream 'adc9'; streams: adc0")
        refused(endpoint, {"command": "capture-stop", "at": "tomorrow"},
                "'tomorrow' is not a UTC time")
        refused(endpoint, {"command": "capture-stop", "at": 1.5}, "neither ticks")
        refused(endpoint, {"command": "capture-start", "id": 7}, "id: expected a capture-block")
        refused(endpoint, {"command": "capture-stop", "until": 5},
                "unknown argument 'until'; it takes at, stream")
        stop = ask(endpoint, "capture-stop", at=f"@{SYNC + 10}")
        assert stop["ok"], stop
        assert stop["capture"]["adc0"] == {
            "state": "start-pending", "id": "obs-1",
            "start": {"timestamp": 4 * CHUNK, "utc": "2026-12-07T00:00:04.000000Z"},
            "stop": {"timestamp": 10 * CHUNK, "utc": "2026-12-07T00:00:10.000000Z"}}
        sender = W1Sender(port)
        sender.send(14 * HEAPS_PER_CHUNK)           # chunks 0-11 complete (max_chunks 2)
        # The stop has passed (chunk 10 came): the block's files are published at once.
        wait_until(lambda: capture(endpoint)["state"] == "stopped", what="the stop")
        wait_until(lambda: len(published(tmp_path / "data", "*.h5")) == 1
                   and len(published(tmp_path / "data", "*.bin")) == 1, what="the files")
        wait_until(lambda: counters(endpoint)["records_after_capture"] == 2,
                   what="chunks 10 and 11 let go")
        c = counters(endpoint)
        assert (c["records_before_capture"], c["records_not_captured"]) == (4, 6)
        assert ask(endpoint, "status")["streams"]["adc0"]["capturing"] is False
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert not list((tmp_path / "data").glob("*.tmp"))
    (h5,) = published(tmp_path / "data", "*.h5")
    with h5py.File(h5) as f:
        timestamps = f["timestamp"][:].tolist()
        assert f["chunk_id"][:].tolist() == [4, 5, 6, 7, 8, 9]
    assert timestamps[0] == 4 * CHUNK and timestamps[-1] == 10 * CHUNK - CHUNK
    assert timestamps == list(range(4 * CHUNK, 10 * CHUNK, CHUNK))
    (binary,) = published(tmp_path / "data", "*.bin")
    _, data = load_binary(str(binary))
    expected = np.frombuffer(b"".join(w1_payloads(10 * HEAPS_PER_CHUNK)[4 * HEAPS_PER_CHUNK:]),
                             np.uint8)
    np.testing.assert_array_equal(data.reshape(-1), expected)


def spead2_heaps(count: int) -> list[Any]:
    """Heaps of one 8192-byte item and an immediate timestamp (0x1600), as a digitiser sends."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(0x1600, "timestamp", "ADC sample counter", (), format=[("u", 48)])
    ig.add_item(0x1700, "adc", "samples", (8192,), np.uint8)
    heaps = []
    for i in range(count):
        ig["timestamp"].value = i * 8192
        ig["adc"].value = np.full(8192, i % 251, np.uint8)
        heaps.append(ig.get_heap(descriptors="none", data="all"))
    return heaps


def test_spead2_sender_and_ticks_select_the_chunks_between_boundaries(tmp_path):
    """spead2 sends; a block from tick 3 x CHUNK to 7 x CHUNK holds chunks 3 to 6."""
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, sinks=sinks_toml(tmp_path, "hdf5")))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        assert ask(endpoint, "capture-stop", stream="adc0")["ok"]
        # no [stream.time]: ticks only, UTC refused in one line, the daemon goes on
        refused(endpoint, {"command": "capture-start", "at": "2026-12-07T00:00:04Z"},
                "a UTC time needs the stream's clock ([stream.time]")
        started = ask(endpoint, "capture-start", at=str(3 * CHUNK), stream="adc0")
        assert started["capture"]["adc0"]["id"] == f"t{3 * CHUNK}"      # generated
        assert started["capture"]["adc0"]["start"] == {"timestamp": 3 * CHUNK}
        assert ask(endpoint, "capture-stop", at=7 * CHUNK)["ok"]
        stream = spead2.send.UdpStream(THREAD_POOL, [("127.0.0.1", port)],
                                       spead2.send.StreamConfig(max_packet_size=9000,
                                                                rate=50e6))
        for cnt, heap in enumerate(spead2_heaps(11 * HEAPS_PER_CHUNK), 1):
            stream.send_heap(heap, cnt)
        wait_until(lambda: capture(endpoint)["state"] == "stopped", what="the stop")
        wait_until(lambda: len(published(tmp_path / "data", "*.h5")) == 1, what="the file")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    (h5,) = published(tmp_path / "data", "*.h5")
    with h5py.File(h5) as f:
        timestamps = f["timestamp"][:].tolist()
        data = f["data"][:]
    assert timestamps == [3 * CHUNK, 4 * CHUNK, 5 * CHUNK, 6 * CHUNK]
    heap_values = data.reshape(4, HEAPS_PER_CHUNK, -1)[:, :, 0].reshape(-1).tolist()
    assert heap_values == [i % 251 for i in range(3 * HEAPS_PER_CHUNK, 7 * HEAPS_PER_CHUNK)]


def test_daqd_capture_command_and_status(tmp_path):
    """``daqd capture start|stop`` against the daemon; ``daqd status`` shows the block."""
    cfg = write_config(tmp_path, chunk_stream_config(tmp_path, extra=CLOCK))
    daemon = DaemonProcess(cfg)
    try:
        daemon.ready()
        stop = daqd("capture", "stop", "--config", str(cfg))
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.startswith("adc0: stopped, block "), stop.stdout
        start = daqd("capture", "start", "--config", str(cfg), "--stream", "adc0",
                     "--at", "2026-12-07T00:00:02Z", "--id", "cli-1")
        assert start.returncode == 0, start.stderr
        assert start.stdout == ("adc0: start-pending, block cli-1, start 131072 "
                                "(2026-12-07T00:00:02.000000Z), stop none\n")
        # the daemon refuses (a block is pending): its one line, exit status 2 (as trigger)
        again = daqd("capture", "start", "--config", str(cfg), "--at", "5")
        assert again.returncode == 2 and again.stdout == ""
        assert again.stderr == ("daqd: error: capture-start: capture block cli-1 is "
                                "start-pending; stop it first (capture-stop)\n")
        unknown = daqd("capture", "stop", "--config", str(cfg), "--stream", "adc9")
        assert_one_line_error(unknown, "unknown stream 'adc9'")
        as_json = daqd("capture", "stop", "--config", str(cfg), "--stream", "adc9", "--json")
        assert as_json.returncode == 2 and json.loads(as_json.stdout)["ok"] is False
        # bad arguments, refused before asking: one line, exit status 2
        assert_one_line_error(daqd("capture", "stop", "--config", str(cfg), "--at", "1.5"),
                              "--at")
        assert_one_line_error(daqd("capture", "start", "--config", str(cfg), "--id", "a b"),
                              "--id")
        assert_one_line_error(daqd("capture", "--config", str(cfg)), "--config")
        status = daqd("status", "--config", str(cfg))
        assert "  capture: start-pending, block cli-1, start 131072 " \
               "(2026-12-07T00:00:02.000000Z), stop none" in status.stdout.splitlines()
        assert "  newest_timestamp: -" in status.stdout.splitlines()      # no data yet
        reply = json.loads(daqd("status", "--config", str(cfg), "--json").stdout)
        assert reply["streams"]["adc0"]["capture"]["id"] == "cli-1"
        assert daemon.stop() == 0
    finally:
        daemon.close()


class Retaining(StreamRunner):
    """A stream runner whose retention holds chunks 0-7 (the hook the trigger's retention fills)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.released: list[int] = []

    def retained_since(self, ticks: int) -> list[Any]:
        def record(i: int) -> ChunkRecord:
            return ChunkRecord(i, i * CHUNK, np.zeros((HEAPS_PER_CHUNK, 1, 8192), np.uint8),
                               np.ones((HEAPS_PER_CHUNK, 1), np.uint8),
                               _release=lambda: self.released.append(i))
        return [record(i) for i in range(8) if (i + 1) * CHUNK > ticks]


def test_a_start_in_the_past_writes_the_records_still_held(tmp_path):
    """capture-start at a past tick: the retained records from there on enter the block."""
    config = parse(chunk_stream_config(tmp_path, sinks=sinks_toml(tmp_path, "binary")),
                   str(tmp_path / "daqd.toml"))
    runner = Retaining(config.streams[0], config)
    runner.open()
    try:
        runner.gate.observe(ChunkRecord(7, 7 * CHUNK, np.zeros(1), np.ones(1)))   # seen: 0-7
        runner.capture_stop(None)
        # tick 3 x CHUNK + 5 is inside chunk 3: chunks 3-7 overlap the block
        reply = runner.capture_start(3 * CHUNK + 5, "past")
        assert reply["retained"] == 5 and reply["state"] == "capturing"
        assert runner.buffer.size() == 5 and runner.released == []
        assert runner.raw_counters()["records_before_capture"] == 0    # 0-2: never returned
    finally:
        runner.stop(5)
    assert sorted(runner.released) == [3, 4, 5, 6, 7]     # written, then let go
    _, data = load_binary(str(published(tmp_path / "data", "*.bin")[0]))
    assert data.shape[0] == 5


def test_heap_mode_out_of_order_timestamps_select_exactly_by_value(tmp_path):
    """Heap mode, timed by an item (0x1600), sent shuffled: [20, 40) writes exactly 20-39."""
    port = free_port()
    text = (daemon_toml(tmp_path) + udp_stream_toml("adc0", port)
            + toml_table("stream.time", timestamp_item=0x1600)
            + toml_table("stream.buffer", kind="fifo", capacity=64, flush_count=8,
                         flush_interval=0.5)
            + toml_table("stream.sinks", array=True, kind="text",
                         path=f"{tmp_path}/data/{{stream}}-{{seq:04d}}.txt",
                         template="{cnt} {items[0x1600]}"))
    daemon = DaemonProcess(write_config(tmp_path, text))
    order = np.random.default_rng(13).permutation(60).tolist()
    try:
        endpoint = daemon.ready()["control"]
        assert ask(endpoint, "capture-stop")["ok"]
        assert ask(endpoint, "capture-start", at=20, id="shuffled")["ok"]
        assert ask(endpoint, "capture-stop", at=40)["ok"]
        ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
        ig.add_item(0x1600, "timestamp", "sample counter", (), format=[("u", 48)])
        ig.add_item(0x1700, "value", "a reading", (), format=[("u", 32)])
        stream = spead2.send.UdpStream(THREAD_POOL, [("127.0.0.1", port)],
                                       spead2.send.StreamConfig(max_packet_size=1472,
                                                                rate=2e6))
        for cnt, ts in enumerate(order, 1):
            ig["timestamp"].value = ts
            ig["value"].value = ts
            stream.send_heap(ig.get_heap(descriptors="none", data="all"), cnt)
        wait_until(lambda: counters(endpoint)["records_not_captured"] == 40, what="40 let go")
        c = counters(endpoint)
        assert (c["records_before_capture"], c["records_after_capture"]) == (20, 20)
        assert c["heaps"] == 60
        assert capture(endpoint)["state"] == "stopped"
        assert daemon.stop() == 0
    finally:
        daemon.close()
    lines = [line.split() for path in published(tmp_path / "data", "*.txt")
             for line in path.read_text().splitlines() if not line.startswith("#")]
    assert sorted(int(ts) for _, ts in lines) == list(range(20, 40))
    # in the order they came, each with its own heap counter
    assert [int(ts) for _, ts in lines] == [ts for ts in order if 20 <= ts < 40]
    assert all(int(cnt) == order.index(int(ts)) + 1 for cnt, ts in lines)


def test_blocks_back_to_back_write_two_sets_of_files_with_exact_chunks(tmp_path):
    """[3, 7) then [7, 10), the second scheduled while the first's stop is pending."""
    port = free_port()
    sinks = "".join(toml_table("stream.sinks", array=True, kind=kind,
                               path=f"{tmp_path}/data/{{stream}}-{{capture_block}}.{ext}")
                    for kind, ext in (("hdf5", "h5"), ("binary", "bin")))
    # Flushed by 4 records: a flush may hold records of both blocks.
    cfg = write_config(tmp_path, chunk_stream_config(tmp_path, port=port, sinks=sinks))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        assert ask(endpoint, "capture-stop")["ok"]
        assert ask(endpoint, "capture-start", at=3 * CHUNK, id="a")["ok"]
        assert ask(endpoint, "capture-stop", at=7 * CHUNK)["ok"]
        refused(endpoint, {"command": "capture-start", "at": 6 * CHUNK, "id": "b"},
                "a next block may start there or later")
        refused(endpoint, {"command": "capture-start", "at": "2026-12-07T00:00:07Z", "id": "b"},
                "at: a UTC time needs the stream's clock ([stream.time] sync_time and "
                "timestamp_rate); give ticks instead")          # no [stream.time] here
        started = ask(endpoint, "capture-start", at=7 * CHUNK, id="b")
        assert started["ok"], started
        assert started["capture"]["adc0"]["next"]["id"] == "b"
        assert ask(endpoint, "capture-stop", at=10 * CHUNK)["ok"]      # b's stop
        status = capture(endpoint)
        assert (status["id"], status["next"]["stop"]) == ("a", {"timestamp": 10 * CHUNK})
        assert format_capture(status) == ("start-pending, block a, start 196608, stop 458752; "
                                          "next block b, start 458752, stop 655360")
        sender = W1Sender(port)
        sender.send(14 * HEAPS_PER_CHUNK)           # chunks 0-11 complete (max_chunks 2)
        wait_until(lambda: capture(endpoint)["state"] == "stopped"
                   and capture(endpoint)["id"] == "b", what="b's stop")
        wait_until(lambda: len(published(tmp_path / "data", "*.h5")) == 2
                   and len(published(tmp_path / "data", "*.bin")) == 2, what="the files")
        wait_until(lambda: counters(endpoint)["records_not_captured"] == 3 + 2,
                   what="chunks 0-2 and 10-11 let go")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "adc0-a.bin", "adc0-a.h5", "adc0-b.bin", "adc0-b.h5"]
    payloads = w1_payloads(10 * HEAPS_PER_CHUNK)
    for block, (first, end) in {"a": (3, 7), "b": (7, 10)}.items():
        with h5py.File(tmp_path / "data" / f"adc0-{block}.h5") as f:
            assert f["chunk_id"][:].tolist() == list(range(first, end)), block
            assert f.attrs["capture_block_id"] == block
            assert (f.attrs["capture_start"], f.attrs["capture_stop"]) == (first * CHUNK,
                                                                           end * CHUNK)
        meta, data = load_binary(str(tmp_path / "data" / f"adc0-{block}.bin"))
        assert meta["capture_block_id"] == block
        expected = np.frombuffer(b"".join(payloads[first * HEAPS_PER_CHUNK:
                                                   end * HEAPS_PER_CHUNK]), np.uint8)
        np.testing.assert_array_equal(data.reshape(-1), expected)


def test_a_start_in_the_past_takes_no_record_the_last_block_wrote(tmp_path):
    """Stop now, then start in the past: the records the stopped block took stay its own."""
    trigger = toml_table("stream.trigger", retain_seconds=10.0, kind="binary",
                         path=f"{tmp_path}/events/{{stream}}-{{event}}.bin")
    config = parse(chunk_stream_config(tmp_path, sinks=sinks_toml(tmp_path, "binary"),
                                       extra=CLOCK + trigger), str(tmp_path / "daqd.toml"))
    runner = StreamRunner(config.streams[0], config)
    runner.open()
    first = runner.gate.block
    records = [ChunkRecord(i, i * CHUNK, np.zeros((HEAPS_PER_CHUNK, 1, 8192), np.uint8),
                           np.ones((HEAPS_PER_CHUNK, 1), np.uint8)) for i in range(6)]
    try:
        runner._keep_many(records)          # as the chunk consumer does
        runner.capture_stop(None)
        assert first.stop == 6 * CHUNK
        reply = runner.capture_start(2 * CHUNK, "again")
        assert reply["retained"] == 0                   # 2-5 are the first block's
        assert all(r.capture_block is first for r in records)
        assert runner.buffer.size() == 6
    finally:
        runner.stop(5)
    (written,) = published(tmp_path / "data", "*.bin")
    meta, data = load_binary(str(written))
    assert meta["capture_block_id"] == first.id and data.shape[0] == 6


def test_spead2_sender_chunk_mode_block_lands_on_the_exact_chunks(tmp_path):
    """spead2 sends chunks 0-13; the block [00:00:04 UTC, tick 10 x CHUNK) writes 4-9 exactly."""
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, sinks=sinks_toml(tmp_path, "hdf5"), extra=CLOCK))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        assert ask(endpoint, "capture-stop")["ok"]
        started = ask(endpoint, "capture-start", at="2026-12-07T00:00:04Z", id="spead2")
        assert started["capture"]["adc0"]["start"]["timestamp"] == 4 * CHUNK  # UTC = ticks
        assert ask(endpoint, "capture-stop", at=10 * CHUNK)["capture"]["adc0"]["stop"] == {
            "timestamp": 10 * CHUNK, "utc": "2026-12-07T00:00:10.000000Z"}
        stream = spead2.send.UdpStream(THREAD_POOL, [("127.0.0.1", port)],
                                       spead2.send.StreamConfig(rate=50e6, max_packet_size=9000))
        items = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
        items.add_item(0x1600, "timestamp", "ADC sample counter", (), format=[("u", 48)])
        items.add_item(0x3000, "adc", "samples", (8192,), dtype=np.uint8)
        for heap in range(14 * HEAPS_PER_CHUNK):
            items["timestamp"].value = heap * 8192
            items["adc"].value = np.full(8192, heap % 256, np.uint8)
            stream.send_heap(items.get_heap(descriptors="none", data="all"))
        wait_until(lambda: capture(endpoint)["state"] == "stopped", what="the stop")
        wait_until(lambda: counters(endpoint)["records_not_captured"] == 4 + 2,
                   what="chunks 0-3 and 10-11 let go")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    (h5,) = published(tmp_path / "data", "*.h5")
    with h5py.File(h5) as f:
        assert f["chunk_id"][:].tolist() == list(range(4, 10))
        assert f["utc"][:].tolist() == [SYNC + k for k in range(4, 10)]   # a chunk a second
        data = f["data"][:].reshape(6 * HEAPS_PER_CHUNK, -1)
        assert f.attrs["capture_block_id"] == "spead2"
    heaps = np.arange(4 * HEAPS_PER_CHUNK, 10 * HEAPS_PER_CHUNK) % 256
    assert (data == heaps[:, None]).all()
