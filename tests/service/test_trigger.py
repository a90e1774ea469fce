"""Triggered dumps (issue 13): the real daemon, fed by the built-in simulator and by spead2.

A chunk is 8 heaps of 8192 timestamp ticks (``C`` = 65536 ticks); at
``timestamp_rate = 100 C`` a chunk is 10 ms of data time, so
``retain_seconds = 0.2`` keeps 20 chunks.
"""

from __future__ import annotations

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
    free_port,
    sinks_toml,
    toml_table,
    udp_stream_toml,
    wait_until,
    write_config,
)

from daqd.sinks.binary import load as load_binary

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8
C = HEAPS_PER_CHUNK * 8192
RATE = 100 * C
SYNC = "2026-12-07T00:00:00Z"


def trigger_tables(tmp: Path, kind: str = "hdf5", retain: float = 0.2,
                   max_post: float = 0.5) -> str:
    ext = {"hdf5": "h5", "binary": "bin", "text": "txt"}[kind]
    return (toml_table("stream.time", sync_time=SYNC, timestamp_rate=RATE)
            + toml_table("stream.trigger", retain_seconds=retain, kind=kind,
                         path=f"{tmp}/events/{{stream}}-{{event:03d}}-{{label}}.{ext}",
                         max_post_seconds=max_post))


def stream_status(endpoint: str, stream: str = "adc0") -> dict[str, Any]:
    reply = control(endpoint, {"command": "status"})
    assert reply["ok"], reply
    return reply["streams"][stream]


def event_timestamps(path: str) -> np.ndarray:
    with h5py.File(path) as f:
        return f["timestamp"][:]


def event_data(path: str) -> np.ndarray:
    with h5py.File(path) as f:
        return f["data"][:]


def trigger(endpoint: str, **args: Any) -> dict[str, Any]:
    return control(endpoint, {"command": "trigger", **args})


def test_triggers_write_their_windows_from_memory_and_from_what_arrives_later(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, heaps_per_chunk=HEAPS_PER_CHUNK,
        sinks=sinks_toml(tmp_path, "binary"), extra=trigger_tables(tmp_path)))
    daemon = DaemonProcess(cfg)
    sender = None
    try:
        endpoint = daemon.ready()["control"]
        sender = W1Sender(port, 40 * HEAPS_PER_CHUNK)
        sender.send(30 * HEAPS_PER_CHUNK)
        # Chunks 28 and 29 stay open (max_chunks = 2): 27 is the newest complete one.
        wait_until(lambda: stream_status(endpoint)["newest_timestamp"] == 27 * C)
        status = stream_status(endpoint)
        assert status["retained"] == {"oldest_timestamp": 8 * C, "newest_timestamp": 27 * C,
                                      "records": 20, "bytes": 20 * C}
        assert status["newest_utc"] == pytest.approx(1796601600 + 0.27)
        # pre/post: 5 chunks each side of the newest data time; 6 held, 4 to come
        first = trigger(endpoint, pre=0.05, post=0.05, label="frb-1")
        assert first["ok"] and first["stream"] == "adc0"
        assert (first["event"], first["start"], first["end"]) == (1, 22 * C, 32 * C)
        assert first["records_retained"] == 6 and first["records_missing"] == 0
        assert first["path"] == f"{tmp_path}/events/adc0-001-frb-1.h5"
        # overlapping, its start in UTC (0.25 s after sync_time is chunk 25), end in ticks
        second = trigger(endpoint, start="2026-12-07T00:00:00.25Z", end=35 * C, label="b")
        assert (second["event"], second["start"], second["end"]) == (2, 25 * C, 35 * C)
        assert second["records_retained"] == 3
        # partly gone: chunks 3-7 are no longer held
        third = trigger(endpoint, start=3 * C, end=13 * C, label="old")
        assert (third["records_retained"], third["records_missing"]) == (5, 5)
        # the first two wait for their future part; the third is all written
        wait_until(lambda: [(e["event"], e["records_written"]) for e in
                            stream_status(endpoint)["events"]] == [(1, 6), (2, 3)])
        sender.send(10 * HEAPS_PER_CHUNK)         # chunks 30-39: 37 completes
        wait_until(lambda: stream_status(endpoint)["events"] == [])
        counters = stream_status(endpoint)["counters"]
        assert counters["trigger_events"] == 3
        assert counters["trigger_records_written"] == 10 + 10 + 5
        assert counters["trigger_records_missing"] == 5
        assert counters["trigger_records_lagging"] == counters["trigger_errors"] == 0
        assert control(endpoint, {"command": "stop"})["ok"]
        assert daemon.wait() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()
    stopped = [e for e in daemon.events if e.get("event") == "stopped"][-1]
    assert stopped["errors"] == 0
    assert stopped["adc0"]["pool_free"] == stopped["adc0"]["pool"]    # every hold released
    # Each event file holds exactly the chunks overlapping its window, contiguous.
    events = tmp_path / "events"
    assert sorted(p.name for p in events.iterdir()) == [
        "adc0-001-frb-1.h5", "adc0-002-b.h5", "adc0-003-old.h5"]
    for name, (start, end) in {"adc0-001-frb-1.h5": (22, 32), "adc0-002-b.h5": (25, 35),
                               "adc0-003-old.h5": (8, 13)}.items():
        assert event_timestamps(str(events / name)).tolist() == [k * C for k in
                                                                  range(start, end)], name
    # The normal sink is untouched: every chunk once, in order; the events hold the same data.
    (normal,) = (tmp_path / "data").glob("adc0-*.bin")
    _, chunks = load_binary(str(normal))
    assert chunks.shape[0] == 40
    np.testing.assert_array_equal(event_data(str(events / "adc0-002-b.h5")),
                                  chunks[25:35])
    # An event file says what was asked, what it holds, what is missing, and when (UTC).
    with h5py.File(events / "adc0-003-old.h5") as f:
        attrs = dict(f.attrs)
        utc = f["utc"][:]
    assert (attrs["event"], attrs["trigger_label"]) == (3, "old")
    assert (attrs["trigger_start"], attrs["trigger_end"]) == (3 * C, 13 * C)
    assert (attrs["written_start"], attrs["written_end"]) == (8 * C, 13 * C)
    assert attrs["records_missing"] == 5
    assert attrs["sync_time"] == 1796601600 and attrs["timestamp_rate"] == C / 0.01
    assert utc.tolist() == pytest.approx([1796601600 + k * 0.01 for k in range(8, 13)])


def spead2_chunk_heaps(port: int) -> tuple[spead2.send.UdpStream, spead2.send.ItemGroup]:
    stream = spead2.send.UdpStream(spead2.ThreadPool(), [("127.0.0.1", port)],
                                   spead2.send.StreamConfig(rate=50e6, max_packet_size=9000))
    items = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    items.add_item(0x1600, "timestamp", "ADC sample counter", (), format=[("u", 48)])
    items.add_item(0x3000, "adc", "samples", (8192,), dtype=np.uint8)
    return stream, items


def send_spead2_chunks(stream: Any, items: Any, first: int, count: int) -> None:
    """Send chunks `first`..`first + count - 1` (heap payload: the heap's index, mod 256)."""
    for heap in range(first * HEAPS_PER_CHUNK, (first + count) * HEAPS_PER_CHUNK):
        items["timestamp"].value = heap * 8192
        items["adc"].value = np.full(8192, heap % 256, np.uint8)
        stream.send_heap(items.get_heap(descriptors="none", data="all"))


def test_spead2_sender_bad_arguments_and_the_cli(tmp_path):
    port, aux_port = free_port(), free_port()
    text = chunk_stream_config(
        tmp_path, port=port, heaps_per_chunk=HEAPS_PER_CHUNK,
        sinks=sinks_toml(tmp_path, "binary"),
        extra=trigger_tables(tmp_path, kind="binary", max_post=0.1))
    # A second stream, without [stream.trigger].
    text += udp_stream_toml("aux", aux_port) + toml_table(
        "stream.sinks", array=True, kind="text", path=f"{tmp_path}/data/aux.txt")
    cfg = write_config(tmp_path, text)
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        stream, items = spead2_chunk_heaps(port)
        stream.send_heap(items.get_heap(descriptors="all", data="none"))    # event files say
        send_spead2_chunks(stream, items, 0, 12)
        wait_until(lambda: stream_status(endpoint)["newest_timestamp"] == 9 * C)
        bad = {
            "is not after start": {"start": 5 * C, "end": 4 * C},
            "unknown stream 'nope'": {"stream": "nope", "pre": 0.01, "post": 0.01},
            "'aux' has no [stream.trigger]": {"stream": "aux", "pre": 0.01, "post": 0.01},
            "longer than retain_seconds + max_post_seconds": {"start": 0, "end": 40 * C},
            "max_post_seconds allows": {"pre": 0, "post": 0.2},
            "give start and end, or pre and post": {"pre": 0.01},
            "label": {"pre": 0.01, "post": 0.01, "label": "../x"},
            "not a UTC time": {"start": "yesterday", "end": 3 * C},
            "unknown argument 'bogus'; it takes start, end, pre, post, label, stream":
                {"start": 1, "end": 2, "bogus": 1},
            "stream: expected a stream's name": {"stream": 7, "pre": 0.01, "post": 0.01},
        }
        for words, args in bad.items():
            reply = trigger(endpoint, **args)
            assert reply["ok"] is False and words in reply["error"], (args, reply)
            assert "\n" not in reply["error"]
        assert stream_status(endpoint)["counters"]["trigger_events"] == 0
        # the command line: one line and status 2 for bad arguments, else event and path
        base = ("trigger", "--config", str(cfg))
        assert_one_line_error(daqd(*base, "--pre", "0.01"), "--start and --end")
        assert_one_line_error(daqd(*base, "--start", "9", "--end", "3"), "is not after start")
        done = daqd(*base, "--stream", "adc0", "--start", str(4 * C), "--end", str(10 * C),
                    "--label", "cli")
        assert done.returncode == 0, done.stderr
        path = f"{tmp_path}/events/adc0-001-cli.bin"
        assert done.stdout.strip() == (f"adc0: event 1 -> {path} [{4 * C}, {10 * C}) ticks, "
                                       "6 retained, 0 missing")
        send_spead2_chunks(stream, items, 12, 4)      # chunk 10 completes: past the end
        wait_until(lambda: stream_status(endpoint)["counters"]["trigger_records_written"] == 6)
        assert control(endpoint, {"command": "stop"})["ok"]
        assert daemon.wait() == 0
    finally:
        daemon.close()
    stopped = [e for e in daemon.events if e.get("event") == "stopped"][-1]
    assert stopped["adc0"]["pool_free"] == stopped["adc0"]["pool"]
    meta, chunks = load_binary(path)
    assert meta["stream"] == "adc0" and chunks.shape[0] == 6
    # The event file describes the stream's items with the descriptors spead2 sent.
    described = {d["id"]: (d["name"], d["description"]) for d in meta["spead_descriptors"]}
    assert described == {0x1600: ("timestamp", "ADC sample counter"), 0x3000: ("adc", "samples")}
    # heap h carries h % 256: chunk k holds heaps 8k..8k+7
    expected = (np.arange(4 * HEAPS_PER_CHUNK, 10 * HEAPS_PER_CHUNK) % 256).astype(np.uint8)
    assert (chunks.reshape(6 * HEAPS_PER_CHUNK, -1) == expected[:, None]).all()
