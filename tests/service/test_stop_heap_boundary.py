"""In the daemon a SPEAD stop heap is a capture boundary, not an exit.

The real daemon as a subprocess, fed W1 over UDP on 127.0.0.1: heaps, one stop
heap, more heaps.  The daemon goes on running; at the stop heap the open
chunks are completed and written (files finished), before any more data
come; everything before and after is written.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    W1Sender,
    buffer_toml,
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

from daqd import _spead
from daqd.sinks.binary import load as load_binary
from daqd.sinks.binary import read_header

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8
HEAP = 8192


def chunks_of(heaps: range) -> dict[int, np.ndarray]:
    """The chunks W1 heaps `heaps` fill: chunk id -> (slots, bytes), zeros where missing."""
    payloads = w1_payloads(heaps.stop)
    out: dict[int, np.ndarray] = {}
    for i in heaps:
        chunk = out.setdefault(i // HEAPS_PER_CHUNK, np.zeros((HEAPS_PER_CHUNK, HEAP), np.uint8))
        chunk[i % HEAPS_PER_CHUNK] = np.frombuffer(payloads[i], np.uint8)
    return out


def written(path: Path) -> dict[int, np.ndarray]:
    meta, data = load_binary(str(path))
    first = meta["first_chunk_id"]
    return {first + k: np.asarray(data[k]).reshape(HEAPS_PER_CHUNK, HEAP)
            for k in range(data.shape[0])}


def test_a_stop_heap_completes_and_writes_the_open_chunks_and_the_stream_goes_on(tmp_path):
    port = free_port()
    uri = f"udp://127.0.0.1:{port}"
    # Nothing flushes by itself within the test: what is written at the stop
    # heap was written because of it.
    cfg = chunk_stream_config(
        tmp_path, port=port, sinks=sinks_toml(tmp_path, "binary"),
        buffer=buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=60,
                           flush_interval=3600.0))
    daemon = DaemonProcess(write_config(tmp_path, cfg))
    sender = W1Sender(port, heaps=64)
    try:
        endpoint = daemon.ready()["control"]

        def stream() -> dict:
            return control(endpoint, {"command": "status"})["streams"]["adc0"]

        # Heaps 0-19: chunks 0 and 1 whole, chunk 2 half; with max_chunks = 2,
        # chunk 0 completed when chunk 2 opened, chunks 1 and 2 are open.
        sender.send(20)
        wait_until(lambda: stream()["counters"]["packets"] == 20, what="20 heaps")
        before = stream()
        assert before["counters"]["chunks_completed"] == 1
        assert before["buffer"]["records_flushed"] == 0
        sender.sock.send(_spead.stop_packet(1000))
        wait_until(lambda: stream()["buffer"]["records_flushed"] == 3,
                   what="the open chunks written at the stop heap")
        at = stream()
        counters = at["counters"]
        assert counters["stop_heaps"] == 1
        assert counters["chunks_completed"] == 3
        assert counters["chunk_slots_missing"] == 4          # the half of chunk 2 not sent
        assert at["sources"][uri]["stop_heaps"] == 1
        wait_until(lambda: len(list((tmp_path / "data").glob("*.bin"))) == 1,
                   what="the capture's file finished")
        assert daemon.proc.poll() is None
        assert control(endpoint, {"command": "status"})["state"] == "running"
        # The stream goes on: heaps 20-63 (the rest of chunk 2, chunks 3-7).
        sender.send(44)
        wait_until(lambda: stream()["counters"]["chunk_heaps_placed"] == 64,
                   what="the heaps after the stop heap")
        after = stream()["counters"]
        assert after["packets"] == 65 and after["chunk_heaps_too_old"] == 0
        assert daemon.stop() == 0
    finally:
        sender.close()
        daemon.close()
    assert [e["stop_heaps"] for e in daemon.events if e.get("event") == "capture boundary"] == [1]
    first, second = sorted((tmp_path / "data").glob("*.bin"))
    before_stop, after_stop = written(first), written(second)
    expected_before, expected_after = chunks_of(range(20)), chunks_of(range(20, 64))
    assert sorted(before_stop) == [0, 1, 2] and sorted(after_stop) == [2, 3, 4, 5, 6, 7]
    for got, expected in ((before_stop, expected_before), (after_stop, expected_after)):
        for chunk_id, data in expected.items():
            np.testing.assert_array_equal(got[chunk_id], data, err_msg=f"chunk {chunk_id}")


def test_heap_mode_writes_the_heaps_before_the_stop_heap_in_their_own_file(tmp_path):
    port = free_port()
    cfg = (daemon_toml(tmp_path) + udp_stream_toml("adc0", port)
           + buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=60,
                         flush_interval=3600.0)
           + sinks_toml(tmp_path, "binary"))
    daemon = DaemonProcess(write_config(tmp_path, cfg))
    sender = W1Sender(port, heaps=10)
    try:
        endpoint = daemon.ready()["control"]

        def stream() -> dict:
            return control(endpoint, {"command": "status"})["streams"]["adc0"]

        sender.send(5)
        wait_until(lambda: stream()["counters"]["heaps"] == 5, what="5 heaps")
        assert stream()["buffer"]["records_flushed"] == 0
        sender.sock.send(_spead.stop_packet(1000))
        wait_until(lambda: stream()["buffer"]["records_flushed"] == 5,
                   what="the heaps written at the stop heap")
        wait_until(lambda: len(list((tmp_path / "data").glob("*.bin"))) == 1,
                   what="the capture's file finished")
        sender.send(5)
        wait_until(lambda: stream()["counters"]["heaps_complete"] == 10, what="5 more heaps")
        counters = stream()["counters"]
        assert counters["stop_heaps"] == 1 and counters["packets_rejected_after_stop"] == 0
        assert daemon.stop() == 0
    finally:
        sender.close()
        daemon.close()
    payloads = w1_payloads(10)
    files = sorted((tmp_path / "data").glob("*.bin"))
    assert len(files) == 2
    for path, expected in zip(files, (payloads[:5], payloads[5:]), strict=True):
        got = path.read_bytes()[read_header(str(path))["header_bytes"]:]
        assert got == b"".join(expected)


def test_two_sources_of_one_chunk_group_close_the_capture_at_the_second_stop_heap(tmp_path):
    """Two UDP sources filling one chunk group (config/digitiser.toml's shape), even heaps
    from one, odd heaps from the other.  The first stop heap completes nothing; the second
    completes every open chunk, written in a file of its own; the senders then restart at
    timestamp 0 and the second capture is written whole too."""
    ports = (free_port(), free_port())
    uris = [f"udp://127.0.0.1:{port}" for port in ports]
    cfg = (daemon_toml(tmp_path)
           + toml_table("stream", array=True, name="adc0", sources=uris, socket_buffer=4 << 20)
           + f"""
[stream.chunk]
timestamp_item = 0x1600
timestamp_step = 8192
heaps_per_chunk = {HEAPS_PER_CHUNK}
heap_bytes = {HEAP}
max_chunks = 2
pool = 16
eviction = "lossless"
"""
           + buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=60,
                         flush_interval=3600.0)
           + sinks_toml(tmp_path, "binary"))
    daemon = DaemonProcess(write_config(tmp_path, cfg))
    senders = [W1Sender(port, heaps=24) for port in ports]
    data = tmp_path / "data"
    try:
        endpoint = daemon.ready()["control"]

        def stream() -> dict:
            return control(endpoint, {"command": "status"})["streams"]["adc0"]

        def capture() -> None:
            """W1 heaps 0-23 (chunks 0-2): even ones from the first source, odd from the other."""
            for k, sender in enumerate(senders):
                for packet in sender.packets[k::2]:
                    sender.sock.send(packet)

        capture()
        wait_until(lambda: stream()["counters"]["chunk_heaps_placed"] == 24, what="24 heaps")
        assert stream()["counters"]["chunks_completed"] == 1   # chunks 1 and 2 are open
        senders[0].sock.send(_spead.stop_packet(1000))
        wait_until(lambda: stream()["counters"]["stop_heaps"] == 1, what="the first stop heap")
        first_stop = stream()
        assert first_stop["counters"]["chunks_completed"] == 1
        assert first_stop["buffer"]["records_flushed"] == 0
        senders[1].sock.send(_spead.stop_packet(1000))
        wait_until(lambda: stream()["buffer"]["records_flushed"] == 3,
                   what="the open chunks written at the second stop heap")
        wait_until(lambda: len(list(data.glob("*.bin"))) == 1, what="the capture's file finished")
        assert stream()["counters"]["chunks_completed"] == 3
        capture()                                       # both senders restarted at 0
        wait_until(lambda: stream()["counters"]["chunk_heaps_placed"] == 48,
                   what="the second capture's heaps")
        counters = stream()["counters"]
        assert counters["chunk_heaps_too_old"] == 0 and counters["stop_heaps"] == 2
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        for sender in senders:
            sender.close()
        daemon.close()
    assert sorted(e["source"] for e in daemon.events
                  if e.get("event") == "capture boundary") == sorted(uris)
    files = sorted(data.glob("*.bin"))
    assert len(files) == 2
    expected = chunks_of(range(24))
    for path in files:
        got = written(path)
        assert sorted(got) == [0, 1, 2], path.name
        for chunk_id, chunk in expected.items():
            np.testing.assert_array_equal(got[chunk_id], chunk, err_msg=f"{path.name} {chunk_id}")
