"""The Prometheus endpoint: real HTTP scrapes on 127.0.0.1, parsed with prometheus_client."""

import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daqd import __version__
from daqd.config import ConfigError, parse
from daqd.errors import UsageProblem
from daqd.service.metrics import MetricsError, MetricsServer

WAIT = 10.0          # upper bound of every wait; never a speed requirement


def make_snapshot():
    """The shape of Daemon.snapshot(): streams, and per stream a buffer and a list of sinks."""
    return {
        "state": "running",
        "uptime": 12.5,
        "streams": {
            "adc0": {"counters": {"packets": 1200, "heaps": 150, "max_batch": 64,
                                  "packets_rejected_bad_magic": 3},
                     "gauges": {"buffer_fill": 5, "newest_timestamp": 1 << 40,
                                "data_time_lag_seconds": 0.25},
                     "rates": {"packets": 100.0},
                     "sources": {"udp://127.0.0.1:7148": {"packets": 1000, "bytes": 8000},
                                 "tcp://127.0.0.1:7149": {
                                     "packets": 200, "tcp_bytes_received": 1600,
                                     "peers": {"127.0.0.1:40000": 1600}}},
                     "heaps_missing_per_substream": [0, 6, 2],
                     "capturing": True},
            "adc1": {"counters": {"packets": np.uint64(7), "heaps": 1, "max_batch": 1,
                                  "worker_blocked_ns": 2_500_000_000,
                                  "stream_bytes_skipped": 12, "chunk_heaps_rejected_size": 4,
                                  "file_bytes_truncated": 300}},
        },
        "buffers": {"adc0": {"kind": "circular", "capacity": 64, "size": 5, "fill": 0.078125,
                             "records_flushed": 100, "records_dropped": 4,
                             "bytes_flushed": 4096,
                             "dropped": {"full": 3, "sink-failed": 1},
                             "wal": {"path": "wal/adc0.wal", "bytes": 9000, "live_records": 3,
                                     "records": 120, "torn_bytes": 17}}},
        "sinks": {"adc0": [{"name": "hdf5-0", "kind": "hdf5", "bytes": 1 << 20, "files": 2,
                            "errors": 0, "last_error": "", "unfinished_files": 1,
                            "current_file": "data/adc0.h5.tmp"},
                           {"name": "pcap-1", "kind": "pcap", "bytes": 512, "files": 0,
                            "failing": True}]},
        "errors": {"adc0": ["a message"]},
    }


def scrape(server):
    with urllib.request.urlopen(server.url, timeout=WAIT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(text, daemon="daqd-test"):
    """{(sample name, frozenset of labels but ``daemon``): value} and {family name: type}.

    Every daqd sample must carry the label ``daemon`` = `daemon`.
    """
    values, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.startswith("daqd_"):
                assert labels.pop("daemon") == daemon, sample
            values[sample.name, frozenset(labels.items())] = sample.value
    return values, types


@pytest.fixture
def snapshot():
    return make_snapshot()


@pytest.fixture
def server(snapshot):
    with MetricsServer("127.0.0.1:0", lambda: snapshot, daemon="daqd-test") as running:
        yield running


def test_a_scrape_carries_the_snapshot_with_counter_and_gauge_types(server, snapshot):
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
    values, types = samples(scrape(server))
    stream0, stream1 = frozenset({("stream", "adc0")}), frozenset({("stream", "adc1")})
    assert values["daqd_packets_total", stream0] == 1200
    assert values["daqd_packets_total", stream1] == 7
    assert values["daqd_heaps_total", stream0] == 150
    assert values["daqd_packets_rejected_total", stream0 | {("reason", "bad_magic")}] == 3
    assert values["daqd_max_batch", stream0] == 64                  # a maximum: a gauge
    assert values["daqd_buffer_fill_ratio", stream0] == 0.078125
    assert types["daqd_packets"] == "counter" and types["daqd_max_batch"] == "gauge"
    assert values["daqd_buffer_capacity", stream0] == 64
    assert values["daqd_buffer_size", stream0] == 5
    assert types["daqd_buffer_size"] == "gauge"
    assert values["daqd_buffer_records_flushed_total", stream0] == 100
    assert values["daqd_buffer_records_dropped_total", stream0] == 4
    assert types["daqd_buffer_records_dropped"] == "counter"
    assert values["daqd_buffer_dropped_total", stream0 | {("reason", "full")}] == 3
    assert values["daqd_buffer_dropped_total", stream0 | {("reason", "sink-failed")}] == 1
    hdf5, pcap = stream0 | {("sink", "hdf5-0")}, stream0 | {("sink", "pcap-1")}
    assert values["daqd_sink_bytes_total", hdf5] == 1 << 20
    assert values["daqd_sink_bytes_total", pcap] == 512
    assert values["daqd_sink_files_total", hdf5] == 2
    assert values["daqd_sink_unfinished_files", hdf5] == 1
    assert values["daqd_sink_failing", pcap] == 1 and types["daqd_sink_failing"] == "gauge"
    assert values["daqd_uptime_seconds", frozenset()] == 12.5
    assert values["daqd_state", frozenset({("state", "running")})] == 1
    assert values["daqd_info", frozenset({("version", __version__)})] == 1
    # Prometheus' conventions (NAME_RULES): units last, reasons as labels
    assert types["daqd_buffer_fill_ratio"] == "gauge"
    assert values["daqd_buffer_flushed_bytes_total", stream0] == 4096
    assert values["daqd_worker_blocked_seconds_total", stream1] == 2.5
    assert values["daqd_stream_skipped_bytes_total", stream1] == 12
    assert values["daqd_file_truncated_bytes_total", stream1] == 300
    assert values["daqd_chunk_heaps_rejected_total", stream1 | {("reason", "size")}] == 4
    assert values["daqd_buffer_wal_size_bytes", stream0] == 9000
    assert types["daqd_buffer_wal_size_bytes"] == "gauge"
    assert values["daqd_buffer_wal_live_records", stream0] == 3
    assert values["daqd_buffer_wal_records_total", stream0] == 120
    assert values["daqd_buffer_wal_torn_bytes_total", stream0] == 17
    # the stream's buffer_fill gauge is the buffer's size: exposed once, as daqd_buffer_size
    assert not any(name.startswith("daqd_buffer_fill") and name != "daqd_buffer_fill_ratio"
                   for name, _ in values)
    udp = stream0 | {("source", "udp://127.0.0.1:7148")}
    tcp = stream0 | {("source", "tcp://127.0.0.1:7149")}
    assert values["daqd_source_packets_total", udp] == 1000
    assert values["daqd_source_bytes_total", udp] == 8000
    assert values["daqd_source_packets_total", tcp] == 200
    assert values["daqd_source_tcp_received_bytes_total", tcp] == 1600
    assert types["daqd_source_packets"] == "counter"
    for substream, missing in enumerate([0, 6, 2]):
        assert values["daqd_substream_heaps_missing_total",
                      stream0 | {("substream", str(substream))}] == missing
    assert types["daqd_substream_heaps_missing"] == "counter"
    assert values["daqd_capturing", stream0] == 1
    assert values["daqd_newest_timestamp_ticks", stream0] == 1 << 40     # data time
    assert values["daqd_data_time_lag_seconds", stream0] == 0.25
    assert types["daqd_newest_timestamp_ticks"] == types["daqd_data_time_lag_seconds"] == "gauge"
    names = {name for name, _ in values}
    assert not any("peers" in name or "127.0.0.1:40000" in str(labels)
                   for name, labels in values)
    assert not any(word in name for name in names
                   for word in ("rates", "kind", "last_error", "current_file", "sources", "path",
                                "_ns"))
    assert any(name.startswith("process_") for name in names)


def test_a_name_in_the_snapshot_wins_over_the_servers(snapshot):
    snapshot["daemon"] = "from-snapshot"
    with MetricsServer("127.0.0.1:0", lambda: snapshot, daemon="daqd-test",
                       process_metrics=False) as server:
        values, _ = samples(scrape(server), daemon="from-snapshot")
    assert values["daqd_info", frozenset({("version", __version__)})] == 1


def test_every_scrape_reads_a_fresh_snapshot(server, snapshot):
    key = "daqd_packets_total", frozenset({("stream", "adc0")})
    assert samples(scrape(server))[0][key] == 1200
    snapshot["streams"]["adc0"]["counters"]["packets"] = 5000
    assert samples(scrape(server))[0][key] == 5000


def test_a_name_with_two_types_keeps_the_first_and_the_text_stays_valid(snapshot, server):
    snapshot["streams"]["adc1"]["gauges"] = {"heaps": 3}         # a counter in adc0
    values, types = samples(scrape(server))
    assert types["daqd_heaps"] == "counter"
    assert values["daqd_heaps_total", frozenset({("stream", "adc0")})] == 150
    assert not any(name.startswith("daqd_heaps") and ("stream", "adc1") in labels
                   for name, labels in values)


def test_a_counter_also_listed_as_gauge_is_one_gauge_sample(snapshot, server):
    snapshot["streams"]["adc1"]["counters"]["chunks_open"] = 9
    snapshot["streams"]["adc1"]["gauges"] = {"chunks_open": 9}
    text = scrape(server)
    assert text.count('daqd_chunks_open{daemon="daqd-test",stream="adc1"}') == 1
    values, types = samples(text)
    assert types["daqd_chunks_open"] == "gauge"
    assert values["daqd_chunks_open", frozenset({("stream", "adc1")})] == 9


def test_explicit_counters_and_gauges_in_a_buffer_table_are_typed_as_given(snapshot, server):
    snapshot["buffers"]["adc1"] = {"counters": {"wal_bytes": 10}, "gauges": {"wal_files": 2}}
    values, types = samples(scrape(server))
    stream1 = frozenset({("stream", "adc1")})
    assert values["daqd_buffer_wal_bytes_total", stream1] == 10
    assert values["daqd_buffer_wal_files", stream1] == 2
    assert types["daqd_buffer_wal_files"] == "gauge"


def test_a_failing_snapshot_fails_that_scrape_only(snapshot, capsys):
    broken = {"now": True}

    def flaky():
        if broken["now"]:
            raise RuntimeError("snapshot unavailable")
        return snapshot

    with MetricsServer("127.0.0.1:0", flaky, process_metrics=False) as flaky_server:
        with pytest.raises(urllib.error.HTTPError) as failed:
            scrape(flaky_server)
        assert failed.value.code == 500
        broken["now"] = False
        assert "daqd_packets_total" in scrape(flaky_server)
    assert "Traceback" not in capsys.readouterr().err     # logged, not dumped on stderr


def test_stop_closes_the_port(snapshot):
    server = MetricsServer("127.0.0.1:0", lambda: snapshot)
    server.start()
    port = server.port
    assert "daqd_info" in scrape(server)
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    with MetricsServer(f"127.0.0.1:{port}", lambda: snapshot) as again:   # free to bind again
        assert again.port == port and "daqd_info" in scrape(again)


def test_a_port_in_use_is_a_one_line_usage_problem(snapshot):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = MetricsServer(f"127.0.0.1:{taken.getsockname()[1]}", lambda: snapshot)
        with pytest.raises(MetricsError) as failed:
            server.start()
        assert isinstance(failed.value, UsageProblem)
        assert "daemon.prometheus" in str(failed.value) and "\n" not in str(failed.value)
    finally:
        taken.close()


def test_ipv6_loopback_is_served():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with MetricsServer("[::1]:0", make_snapshot) as server:
        assert server.url.startswith("http://[::1]:")
        assert "daqd_packets_total" in scrape(server)


CONFIG = """
[daemon]
{line}

[[stream]]
name = "adc0"
sources = ["sim:W1"]
"""


def test_prometheus_is_off_by_default():
    assert parse(CONFIG.format(line=""), "t.toml").daemon.prometheus == ""


@pytest.mark.parametrize("address", ["127.0.0.1:9100", "0.0.0.0:9100", "[::1]:9100",
                                     "[::]:9100", "metrics.example.org:9100", "localhost:0"])
def test_prometheus_addresses_accepted(address):
    config = parse(CONFIG.format(line=f'prometheus = "{address}"'), "t.toml")
    assert config.daemon.prometheus == address


@pytest.mark.parametrize("address", ["9100", "127.0.0.1", ":9100", "::1:9100", "[zz]:9100",
                                     "host:65536", "host:-1", "host:http", "two words:9100"])
def test_prometheus_addresses_refused_naming_the_key(address):
    with pytest.raises(ConfigError) as failed:
        parse(CONFIG.format(line=f'prometheus = "{address}"'), "t.toml")
    message = str(failed.value)
    assert message.startswith("t.toml: daemon.prometheus = ") and "HOST:PORT" in message
    assert "\n" not in message


def test_each_sinks_account_in_the_buffer_is_exposed_per_sink_and_reason():
    """A real Buffer with a healthy and a failing sink: the failing sink's losses
    by reason and its backlog reach Prometheus under its own name."""
    from daqd.pipeline.buffers import Buffer
    from tests.buffer_sinks import MemorySink, numbered_record

    healthy, failing = MemorySink("healthy"), MemorySink("failing")
    failing.fail = True
    buffer = Buffer(kind="circular", capacity=4, when_full="drop-newest")
    buffer.set_primary_sink(healthy)
    buffer.add_custom_sink(failing)
    for n in range(10):
        assert buffer.put(numbered_record(n))
        buffer.flush_now("request")
    snap = {"buffers": {"adc0": buffer.stats()}}
    account = snap["buffers"]["adc0"]["sinks"]
    assert account["healthy"]["written"] == 10
    lost = account["failing"]["lost_by_reason"]["backlog_overflow"]
    assert lost > 0 and lost + account["failing"]["backlog"] == 10
    with MetricsServer("127.0.0.1:0", lambda: snap) as running:
        values, types = samples(scrape(running), daemon="")
    failing_labels = frozenset({("stream", "adc0"), ("sink", "failing")})
    assert values["daqd_buffer_sink_written_total",
                  frozenset({("stream", "adc0"), ("sink", "healthy")})] == 10
    assert values["daqd_buffer_sink_lost_by_reason_total",
                  failing_labels | {("reason", "backlog_overflow")}] == lost
    assert values["daqd_buffer_sink_backlog", failing_labels] == account["failing"]["backlog"]
    assert types["daqd_buffer_sink_backlog"] == "gauge"
    assert values["daqd_buffer_sink_failing", failing_labels] == 1
    healthy_labels = frozenset({("stream", "adc0"), ("sink", "healthy")})
    assert values["daqd_buffer_sink_write_seconds_total", healthy_labels] \
        == account["healthy"]["write_seconds"] > 0
    assert types["daqd_buffer_sink_write_seconds"] == "counter"
    buffer.close()
