"""The real daemon in each mode and with each sink, and the ways it is watched.

Every test starts ``daqd run`` as a subprocess (tests/daemon_helpers.py),
feeds it over UDP on 127.0.0.1 and reads what it wrote after a SIGTERM.
"""

import datetime as dt
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    REPO,
    DaemonProcess,
    Subscriber,
    W1Sender,
    chunk_stream_config,
    control,
    free_port,
    last_messages,
    sinks_toml,
    subscribed,
    w1_payloads,
    wait_until,
    write_config,
)
from daemon_helpers import control_endpoint as daemon_control_endpoint
from spead2_helpers import (
    THREAD_POOL,
    collect_spead2,
    daqd_record,
    make_spead2_stream,
    spead2_decode_packets,
)

import daqd
from daqd import _spead
from daqd.recv.sources import open_source
from daqd.sinks.binary import read_header
from daqd.tools.dump import receive_heaps

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8


def final_files(directory: Path, pattern: str) -> list[Path]:
    """Published files matching `pattern`, by name; none may be left unfinished."""
    assert not list(directory.glob("*.tmp")), "a file was left unfinalised"
    files = sorted(directory.glob(pattern))
    assert files, f"no {pattern} in {directory}"
    return files


# ---------------------------------------------------------------------------
# heap mode: the shipped slow-control example, fed by spead2


SENSOR_ITEMS = {"time_ms": 0x1800, "sensor": 0x1801, "status": 0x1802, "readings": 0x1810}


def slow_control_config(tmp_path: Path, port: int) -> Path:
    """config/slow-control.toml with its system paths under `tmp_path`, on `port`."""
    text = (REPO / "config" / "slow-control.toml").read_text()
    text = text.replace("/var/lib/daqd", str(tmp_path / "lib")).replace(
        "/run/daqd", str(tmp_path / "run"))
    assert "udp://0.0.0.0:7160" in text
    text = text.replace("udp://0.0.0.0:7160", f"udp://127.0.0.1:{port}")
    return write_config(tmp_path, text)


def sensor_item_group() -> spead2.send.ItemGroup:
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(SENSOR_ITEMS["time_ms"], "time_ms", "reading time, Unix ms", (),
                format=[("u", 48)])
    ig.add_item(SENSOR_ITEMS["sensor"], "sensor", "sensor id", (), format=[("u", 48)])
    ig.add_item(SENSOR_ITEMS["status"], "status", "status flags", (), format=[("u", 48)])
    ig.add_item(SENSOR_ITEMS["readings"], "readings", "16 readings", (16,), dtype=">f4")
    return ig


def test_heap_mode_slow_control_example_writes_each_heap_once_in_order(tmp_path):
    # spead2 sends what a real controller would: a start heap, data heaps (the
    # first carrying the descriptors), a heap of descriptors alone half way,
    # and a stop heap, which this configuration must not take as the end.
    port = free_port()
    cfg = slow_control_config(tmp_path, port)
    daemon = DaemonProcess(cfg)
    n = 40
    sent = []
    try:
        endpoint = daemon.ready()["control"]
        assert endpoint.startswith("ipc://")
        ig = sensor_item_group()
        stream = spead2.send.UdpStream(
            THREAD_POOL, [("127.0.0.1", port)],
            spead2.send.StreamConfig(max_packet_size=1472, rate=2e6))
        cnt = 1
        stream.send_heap(ig.get_start(), cnt)
        rng = np.random.default_rng(1)
        for i in range(n):
            cnt += 1
            values = {"time_ms": 1_767_225_600_000 + 100 * i, "sensor": 7 + i % 3,
                      "status": (i * 2654435761) % (1 << 48),
                      "readings": rng.normal(size=16).astype(">f4")}
            for name, value in values.items():
                ig[name].value = value
            stream.send_heap(ig.get_heap(), cnt)
            sent.append((cnt, values))
            if i == n // 2:
                cnt += 1
                stream.send_heap(ig.get_heap(descriptors="all", data="none"), cnt)
        cnt += 1
        stream.send_heap(ig.get_end(), cnt)
        del stream
        # Every heap arrived, the stop heap too; the daemon goes on receiving.
        wait_until(lambda: control(endpoint, {"command": "status"})["streams"]["sensors"][
            "counters"]["heaps"] >= n + 3)
        status = control(endpoint, {"command": "status"})
        assert status["state"] == "running"
        counters = status["streams"]["sensors"]["counters"]
        assert counters["heaps"] == n + 3         # start, n data, descriptors, stop
        assert counters["packets_dropped_socket_buffer"] == 0
        # every item of every record was decoded against spead2's descriptors
        assert counters["records_undescribed_items"] == 0
        assert counters["records_undecoded_items"] == 0
        assert daemon.stop() == 0
    finally:
        daemon.close()
    data = tmp_path / "lib" / "slow-control"
    # text: one line per data heap, nothing for the start, descriptor and stop
    # heaps; items by name, decoded (float32 readings at their shortest repr)
    (log,) = final_files(data, "sensors-*.log")
    header, *lines = log.read_text().splitlines()
    assert header == "# time cnt time_ms sensor status readings"
    assert len(lines) == n
    for line, (cnt, values) in zip(lines, sent, strict=True):
        when, *fields = line.split(" ")
        assert fields == [str(cnt), str(values["time_ms"]), str(values["sensor"]),
                          str(values["status"]),
                          "[" + ",".join(str(v) for v in values["readings"]) + "]"]
        readings = np.array(fields[-1][1:-1].split(","), np.float32)
        assert readings.astype(">f4").tobytes() == values["readings"].tobytes()
        assert abs(dt.datetime.fromisoformat(when).timestamp()
                   - dt.datetime.now(dt.UTC).timestamp()) < 600
    # binary: the readings' bytes back to back after the header
    (binary,) = final_files(data, "sensors-*.bin")
    meta = read_header(str(binary))
    assert meta["mode"] == "heap" and meta["stream"] == "sensors"
    assert meta["first_chunk_id"] == sent[0][0]
    payload = binary.read_bytes()[meta["header_bytes"]:]
    assert payload == b"".join(v["readings"].tobytes() for _, v in sent)
    # The WAL is where the configuration says.
    assert (data / "sensors.wal").exists()


# ---------------------------------------------------------------------------
# pcap sink: the packets as received, replayable by spead2 and by daqd


def test_pcap_sink_replays_through_spead2_and_daqd_to_the_heaps_sent(tmp_path):
    port = free_port()
    heaps = 10 * HEAPS_PER_CHUNK
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, heaps_per_chunk=HEAPS_PER_CHUNK,
        sinks=sinks_toml(tmp_path, "pcap", "binary")))
    daemon = DaemonProcess(cfg)
    sender = None
    try:
        ready = daemon.ready()
        sub = subscribed(ready["stats"])
        sender = W1Sender(port, heaps)
        sender.send(heaps // 2)
        sender.send(heaps - heaps // 2)
        wait_until(lambda: control(ready["control"], {"command": "status"})["streams"][
            "adc0"]["counters"]["packets"] >= heaps)
        daemon.signal(signal.SIGTERM)
        final = last_messages(sub)
        sub.close()
        assert daemon.wait() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()
    stopped = [e for e in daemon.events if e.get("event") == "stopped"]
    assert stopped and stopped[-1]["errors"] == 0
    # the reference: spead2's decode of the datagrams as they were sent
    expected, _ = spead2_decode_packets(sender.packets[:heaps], max_heaps=8)
    assert len(expected) == heaps and all(r["complete"] for r in expected)
    files = final_files(tmp_path / "data", "adc0-*.pcap")
    # spead2's pcap reader (libpcap underneath)
    replayed = []
    for path in files:
        reference = make_spead2_stream(max_heaps=8)
        reference.add_udp_pcap_file_reader(str(path), f"udp dst port {port}")
        replayed += collect_spead2(reference)
    assert replayed == expected
    # daqd's own pcap: source, as `daqd dump` reads it
    replayed = []
    frames = 0
    for path in files:
        source = open_source(f"pcap:{path}?port={port}")
        stream = _spead.HeapStream(max_heaps=8)
        replayed += [daqd_record(h) for h in receive_heaps(source, stream)]
        counters = stream.stats()
        frames += counters["packets"]
        assert counters["pcap_frames_skipped_port"] == 0
    assert replayed == expected
    assert frames == heaps
    # nothing was lost on the way to the file
    stats = final["stats.adc0"]
    assert stats["counters"]["packets"] == heaps
    assert stats["counters"]["packets_tap_dropped"] == 0
    assert stats["packet_buffer"]["records_dropped"] == 0
    (pcap_sink,) = [s for s in stats["sinks"] if s["name"].startswith("pcap:")]
    assert pcap_sink["lost_packets"] == 0 and pcap_sink["errors"] == 0
    assert pcap_sink["files"] == len(files)


# ---------------------------------------------------------------------------
# hdf5 sink: INTERFACES.md "HDF5 chunk files"


def test_hdf5_sink_file_layout_and_data(tmp_path):
    # Two heaps are never sent: their slots must read present == 0.
    missing = {13, 42}
    port = free_port()
    chunks = 10
    heaps = chunks * HEAPS_PER_CHUNK
    text = chunk_stream_config(tmp_path, port=port, heaps_per_chunk=HEAPS_PER_CHUNK, chunk="""
dtype = "uint16"
extra_items = [0x1600]
""", sinks=sinks_toml(tmp_path, "hdf5"))
    cfg = write_config(tmp_path, text)
    daemon = DaemonProcess(cfg)
    sender = None
    try:
        endpoint = daemon.ready()["control"]
        sender = W1Sender(port, heaps)
        for i, packet in enumerate(sender.packets):
            if i not in missing:
                sender.sock.send(packet)
        wait_until(lambda: control(endpoint, {"command": "status"})["streams"]["adc0"][
            "counters"]["packets"] >= heaps - len(missing))
        assert daemon.stop() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()
    (path,) = final_files(tmp_path / "data", "adc0-*.h5")
    samples = 8192 // 2
    with h5py.File(path, "r") as f:
        assert set(f) == {"data", "present", "chunk_id", "timestamp", "extra"}
        layout = {name: (f[name].shape, f[name].dtype) for name in f}
        assert layout == {
            "data": ((chunks, HEAPS_PER_CHUNK, 1, samples), np.dtype(np.uint16)),
            "present": ((chunks, HEAPS_PER_CHUNK, 1), np.dtype(np.uint8)),
            "chunk_id": ((chunks,), np.dtype(np.int64)),
            "timestamp": ((chunks,), np.dtype(np.uint64)),
            "extra": ((chunks, HEAPS_PER_CHUNK, 1, 1), np.dtype(np.uint64)),
        }
        attrs = dict(f.attrs)
        assert attrs["daqd_version"] == daqd.__version__
        assert attrs["stream"] == "adc0"
        assert attrs["config"] == text
        assert (attrs["timestamp_step"], attrs["heaps_per_chunk"], attrs["substreams"]) \
            == (8192, HEAPS_PER_CHUNK, 1)
        data = f["data"][:]
        present = f["present"][:]
        chunk_id = f["chunk_id"][:]
        timestamp = f["timestamp"][:]
        extra = f["extra"][:]
    np.testing.assert_array_equal(chunk_id, np.arange(chunks))
    np.testing.assert_array_equal(timestamp, np.arange(chunks) * HEAPS_PER_CHUNK * 8192)
    arrived = np.ones(heaps, bool)
    arrived[list(missing)] = False
    np.testing.assert_array_equal(present.reshape(-1), arrived.astype(np.uint8))
    # the extra item is each heap's own timestamp (heap i has timestamp 8192 i)
    np.testing.assert_array_equal(extra.reshape(-1)[arrived], np.arange(heaps)[arrived] * 8192)
    expected = np.frombuffer(b"".join(w1_payloads(heaps)), np.uint16).reshape(heaps, samples)
    np.testing.assert_array_equal(data.reshape(heaps, samples)[arrived], expected[arrived])


# ---------------------------------------------------------------------------
# watching a running daemon: status messages, `daqd status`, `daqd stats`, Prometheus


def fixed_endpoints_config(tmp_path: Path, port: int, prometheus: str = "") -> tuple[Path, str,
                                                                                      str]:
    """A W1 chunk stream whose stats socket is on a known TCP port (control: an ipc file).

    ``daqd status`` and ``daqd stats`` read the endpoints from the configuration,
    so they cannot be ``tcp://127.0.0.1:*`` there.
    """
    stats = f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    text = chunk_stream_config(tmp_path, port=port, heaps_per_chunk=HEAPS_PER_CHUNK)
    text = text.replace('stats = "tcp://127.0.0.1:*"', f'stats = "{stats}"')
    if prometheus:
        text = text.replace("[zmq]", f'prometheus = "{prometheus}"\n\n[zmq]', 1)
    return write_config(tmp_path, text), stats, daemon_control_endpoint(tmp_path)


def send_until_three_flushed(stats_endpoint: str, sender: W1Sender, heaps: int
                             ) -> tuple[dict, dict]:
    """Send `heaps` heaps once subscribed; the status and stream messages once the flush
    policy (count 4 or 0.5 s) has written the 3 complete chunks."""
    sub = Subscriber(stats_endpoint)
    try:
        sub.until(lambda topic, m: topic == "stats.adc0")
        sender.send(heaps)
        _, status = sub.until(lambda topic, m: topic == "status" and
                              m["buffers"]["adc0"]["records_flushed"] == 3)
        _, stream = sub.until(lambda topic, m: topic == "stats.adc0")
    finally:
        sub.close()
    return status, stream


def daqd_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "daqd", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, (args, result.stderr)
    return result


def test_status_message_and_the_status_and_stats_commands(tmp_path):
    port = free_port()
    cfg, stats_endpoint, control_endpoint = fixed_endpoints_config(tmp_path, port)
    heaps = 5 * HEAPS_PER_CHUNK          # max_chunks = 2: chunks 0-2 complete, 3-4 open
    daemon = DaemonProcess(cfg)
    sender = None
    try:
        ready = daemon.ready()
        assert (ready["stats"], ready["control"]) == (stats_endpoint, control_endpoint)
        sender = W1Sender(port, heaps)
        status, stream = send_until_three_flushed(stats_endpoint, sender, heaps)

        # the status message (INTERFACES.md: state, uptime, buffer fill, sink bytes/files/errors)
        assert status["schema"] == "daqd.stats/1" and status["daemon"] == "test-daqd"
        assert status["state"] == "running" and status["uptime"] > 0
        assert status["streams"] == ["adc0"]
        buffer = status["buffers"]["adc0"]
        assert (buffer["records_accepted"], buffer["size"], buffer["records_dropped"]) == (3, 0, 0)
        assert buffer["bytes_flushed"] == 3 * HEAPS_PER_CHUNK * 8192
        sinks = {s["name"].split(":")[0]: s for s in status["sinks"]["adc0"]}
        assert set(sinks) == {"binary", "text"}
        assert sinks["binary"]["bytes"] >= 3 * HEAPS_PER_CHUNK * 8192
        assert all(s["errors"] == 0 and s["records"] == 3 for s in sinks.values())
        assert status["process"]["pid"] == daemon.proc.pid
        assert stream["counters"]["packets"] == heaps
        assert stream["counters"]["chunks_completed"] == 3

        # daqd status: text for a person, and JSON
        text = daqd_cli("status", "--config", str(cfg)).stdout
        assert text.splitlines()[0].startswith("test-daqd  running  uptime ")
        assert "stream adc0" in text
        assert re.search(rf"^\s+packets\s+{heaps}\b", text, re.M), text
        assert re.search(r"^\s+chunks_completed\s+3\b", text, re.M), text
        reply = json.loads(daqd_cli("status", "--config", str(cfg), "--json").stdout)
        assert reply["ok"] and reply["state"] == "running" and reply["pid"] == daemon.proc.pid
        assert reply["streams"]["adc0"]["counters"]["packets"] == heaps
        assert reply["streams"]["adc0"]["buffer"]["records_flushed"] == 3

        # daqd stats --json --count N: N messages, one JSON object per line
        out = daqd_cli("stats", "--config", str(cfg), "--json", "--count", "6",
                       "--timeout", "10").stdout
        messages = [json.loads(line) for line in out.splitlines()]
        assert len(messages) == 6
        topics = {m["topic"] for m in messages}
        assert topics == {"stats.adc0", "status"}
        for m in messages:
            assert m["schema"] == "daqd.stats/1" and m["daemon"] == "test-daqd"
            if m["topic"] == "stats.adc0":
                assert m["counters"]["packets"] == heaps
                assert m["counters"]["heaps"] == heaps
                assert m["rates"]["packets"] == 0.0          # nothing sent meanwhile
            else:
                assert m["state"] == "running"
                assert m["buffers"]["adc0"]["records_flushed"] == 3
        # the tables, from an explicit endpoint: two messages are one of each topic
        table = daqd_cli("stats", "--endpoint", stats_endpoint, "--count", "2",
                         "--timeout", "10").stdout
        assert re.search(r"^\d\d:\d\d:\d\d stream test-daqd/adc0 ", table, re.M), table
        assert re.search(r"^\d\d:\d\d:\d\d test-daqd  running  uptime ", table, re.M), table
        assert re.search(rf"^\s+packets\s+{heaps}\s+0\.0/s$", table, re.M), table
        assert daemon.stop() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()


def scrape(url: str) -> dict[str, float]:
    """The samples of a Prometheus text page: ``name{labels}`` -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_prometheus_endpoint_shows_the_published_counters(tmp_path):
    port = free_port()
    cfg, stats_endpoint, control_endpoint = fixed_endpoints_config(
        tmp_path, port, prometheus="127.0.0.1:0")
    heaps = 5 * HEAPS_PER_CHUNK
    daemon = DaemonProcess(cfg)
    sender = None
    try:
        daemon.ready()
        # port 0: the daemon picks one and logs the URL
        url = daemon.wait_event("serving Prometheus metrics")["url"]
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*/metrics", url), url
        sender = W1Sender(port, heaps)
        status, stream = send_until_three_flushed(stats_endpoint, sender, heaps)
        samples = scrape(url)
        assert daemon.stop() == 0
    finally:
        if sender is not None:
            sender.close()
        daemon.close()
    label = '{daemon="test-daqd",stream="adc0"}'
    assert stream["counters"]["packets"] == heaps
    for name in ("packets", "heaps", "chunks_completed", "chunk_heaps_placed"):
        assert samples[f"daqd_{name}_total{label}"] == stream["counters"][name], name
    buffer = status["buffers"]["adc0"]
    for name, metric in (("records_accepted", "records_accepted"),
                         ("records_flushed", "records_flushed"),
                         ("bytes_flushed", "flushed_bytes")):
        assert samples[f"daqd_buffer_{metric}_total{label}"] == buffer[name], name
    assert samples['daqd_state{daemon="test-daqd",state="running"}'] == 1
    info = f'daqd_info{{daemon="test-daqd",version="{daqd.__version__}"}}'
    assert samples[info] == 1


def test_stats_nodrop_counts_what_a_stuck_subscriber_has_no_room_for(tmp_path):
    """``zmq.stats_nodrop``: a subscriber that never reads makes messages be refused, counted.

    The stuck SUB socket has the smallest queue and kernel buffer libzmq allows,
    so with messages every 10 ms its queue fills within seconds; from then on the
    daemon's `dropped_messages` (in the control ``status`` reply) must grow while
    the daemon keeps serving.
    """
    text = chunk_stream_config(tmp_path).replace(
        "interval = 0.2", "interval = 0.01\nstats_hwm = 1\nstats_nodrop = true")
    daemon = DaemonProcess(write_config(tmp_path, text))
    context = zmq.Context()
    try:
        ready = daemon.ready()
        stuck = context.socket(zmq.SUB)
        stuck.linger = 0
        stuck.rcvhwm = 1
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(ready["stats"])

        def dropped() -> int:
            return control(ready["control"], {"command": "status"})["publisher"][
                "dropped_messages"]

        wait_until(lambda: dropped() > 0, timeout=30.0, what="a refused statistics message")
        first = dropped()
        wait_until(lambda: dropped() > first, timeout=10.0, what="more refusals")
        status = control(ready["control"], {"command": "status"})
        assert status["state"] == "running"
        assert status["publisher"]["snapshot_errors"] == status["publisher"]["encode_errors"] == 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        context.destroy(linger=0)
        daemon.close()
