"""daqd.service.zmq_clients: request/subscribe against real daqd sockets, and their text."""

from __future__ import annotations

import json
import threading

import pytest
import zmq

from daqd.errors import UsageProblem
from daqd.service.control import ControlServer
from daqd.service.stats_publisher import StatsBuilder, StatsPublisher
from daqd.service.zmq_clients import (
    BadReply,
    DaemonUnreachable,
    format_stats_table,
    format_status,
    request,
    subscribe,
)

TIMEOUT = 5.0          # bound on every wait; never reached when things work


def snapshot(packets=1000, state="running"):
    return {
        "state": state, "uptime": 3725.0,
        "streams": {"adc0": {
            "counters": {"packets": packets, "heaps": packets, "bytes": packets * 8248,
                         "max_batch": 64, "packets_rejected_bad_magic": 3,
                         "packets_rejected_truncated": 0, "chunks_completed": 12,
                         "chunk_heaps_placed": 768, "chunk_heaps_too_old": 5},
            "gauges": {"ring_fill": 0.25}}},
        "buffers": {"adc0": {"size": 16, "capacity": 64, "fill": 0.25}},
        "sinks": {"adc0/hdf5": {"bytes": 5 << 20, "files": 2, "errors": 1}},
        "errors": {"sink_write": 1},
    }


class FakePeer(threading.Thread):
    """A bound socket of `kind` that a thread drives with `step(sock, halt)` until the test ends.

    ``with FakePeer(...) as endpoint:`` gives the endpoint to talk to.
    """

    def __init__(self, ctx, kind, endpoint, step):
        self.halt = threading.Event()
        self.endpoint = endpoint
        self.sock = ctx.socket(kind)
        self.sock.bind(endpoint)
        self.step = step
        super().__init__(daemon=True)

    def run(self):
        while not self.halt.is_set():
            self.step(self.sock, self.halt)

    def __enter__(self):
        self.start()
        return self.endpoint

    def __exit__(self, *exc):
        self.halt.set()
        self.join(TIMEOUT)
        self.sock.close(linger=0)


# --- request -----------------------------------------------------------------------------

def test_request_returns_the_daemon_reply(ctx, ipc_dir):
    seen = []
    srv = ControlServer(ctx, f"ipc://{ipc_dir}/ctl",
                        {"trigger": lambda args: seen.append(args) or {"n": len(seen)}},
                        poll_interval=0.02)
    srv.start()
    try:
        assert request(srv.endpoint, "trigger", {"label": "x"}, context=ctx) == \
            {"ok": True, "n": 1}
        assert request(srv.endpoint, "nope", context=ctx)["ok"] is False
    finally:
        srv.stop()
    assert seen == [{"label": "x"}]


def test_request_to_an_absent_daemon_is_a_one_line_error_naming_the_endpoint(ipc_dir):
    endpoint = f"ipc://{ipc_dir}/nobody"
    with pytest.raises(DaemonUnreachable) as err:
        request(endpoint, "status", timeout=0.2)
    assert isinstance(err.value, UsageProblem)
    assert str(err.value).startswith(f"{endpoint}: no reply to 'status' within 0.2 s")
    assert "\n" not in str(err.value)


def test_request_with_a_bad_endpoint_is_a_usage_problem():
    with pytest.raises(UsageProblem, match="not a ZeroMQ endpoint"):
        request("carrier-pigeon://home", "status", timeout=0.2)


def test_a_reply_that_is_not_a_json_object_is_bad(ctx, ipc_dir):
    def serve(router, halt):
        if router.poll(20):
            identity, *_ = router.recv_multipart()
            router.send_multipart([identity, b"", b"[1, 2]"])

    with FakePeer(ctx, zmq.ROUTER, f"ipc://{ipc_dir}/liar", serve) as endpoint, \
            pytest.raises(BadReply, match="not a JSON object"):
        request(endpoint, "status", timeout=TIMEOUT, context=ctx)


# --- subscribe ---------------------------------------------------------------------------

def test_subscribe_merges_several_daemons_and_stops_after_count(ctx, ipc_dir):
    pubs = [StatsPublisher(ctx, f"ipc://{ipc_dir}/s{i}", 0.02, snapshot, f"daq-{i}")
            for i in range(2)]
    for pub in pubs:
        pub.start()
    try:
        got = list(subscribe([p.endpoint for p in pubs], count=40, timeout=TIMEOUT,
                             context=ctx))
    finally:
        for pub in pubs:
            pub.stop()
    assert len(got) == 40
    assert {m["daemon"] for _, m in got} == {"daq-0", "daq-1"}
    assert {t for t, _ in got} == {"stats.adc0", "status"}


def test_subscribe_to_chosen_topics_only(ctx, ipc_dir):
    pub = StatsPublisher(ctx, f"ipc://{ipc_dir}/s", 0.02, snapshot, "daq")
    pub.start()
    try:
        got = list(subscribe(pub.endpoint, count=5, timeout=TIMEOUT, topics=("status",),
                             context=ctx))
    finally:
        pub.stop()
    assert [t for t, _ in got] == ["status"] * 5


def test_subscribe_without_a_publisher_times_out_naming_the_endpoints(ipc_dir):
    endpoints = [f"ipc://{ipc_dir}/a", f"ipc://{ipc_dir}/b"]
    with pytest.raises(DaemonUnreachable) as err:
        next(subscribe(endpoints, timeout=0.3))
    assert str(err.value).startswith(f"{endpoints[0]}, {endpoints[1]}: no statistics within")


def test_subscribe_skips_messages_that_are_not_topic_and_json_object(ctx, ipc_dir):
    def noise(pub, halt):
        pub.send(b"status")                                      # one frame
        pub.send_multipart([b"status", b"{not json"])
        pub.send_multipart([b"status", b"[1]"])                  # not an object
        pub.send_multipart([b"status", b"{}", b"extra"])         # three frames
        pub.send_multipart([b"status", json.dumps({"state": "ok"}).encode()])
        halt.wait(0.01)

    with FakePeer(ctx, zmq.PUB, f"ipc://{ipc_dir}/noisy", noise) as endpoint:
        got = list(subscribe(endpoint, count=5, timeout=TIMEOUT, context=ctx))
    assert got == [("status", {"state": "ok"})] * 5


def test_count_zero_yields_nothing():
    assert list(subscribe("ipc:///nonexistent", count=0, timeout=0.1)) == []


# --- formatting --------------------------------------------------------------------------

def built_round(packets_before=1000, packets_after=3000):
    now = [0.0]
    builder = StatsBuilder("daq-a", clock=lambda: now[0], wall_clock=lambda: 1.7e9,
                           cpu_clock=lambda: 0.0)
    builder.prime(snapshot(packets_before))
    now[0] = 2.0
    return dict(builder.build(snapshot(packets_after)))


def test_stats_table_for_a_stream_message():
    text = format_stats_table(built_round()["stats.adc0"])
    lines = text.splitlines()
    assert "daq-a/adc0" in lines[0] and "rates over 2.00 s" in lines[0]
    packets = next(line for line in lines if line.split()[0] == "packets")
    assert packets.split()[1:] == ["3,000", "1,000.0/s"]
    assert any(line.split()[0] == "bytes" and "MiB/s" in line for line in lines)
    assert any(line.split()[:2] == ["chunks_completed", "12"] for line in lines)
    assert any(line.split()[:2] == ["chunk_heaps_placed", "768"] for line in lines)
    drops = lines[lines.index("  drops by reason:") + 1:]
    assert any(line.split()[:2] == ["packets_rejected_bad_magic", "3"] for line in drops)
    assert any(line.split()[:2] == ["chunk_heaps_too_old", "5"] for line in drops)
    assert "packets_rejected_truncated" not in text               # zero drops left out
    assert "ring_fill 0.25" in text


def test_stats_table_for_a_status_message():
    text = format_stats_table(built_round()["status"])
    first = text.splitlines()[0]
    assert "daq-a  running  uptime 1h02m05s" in first and "rss " in first
    assert "buffer adc0: size 16, capacity 64, fill 25%" in text
    assert "sink adc0/hdf5: bytes 5,242,880 (5.0 MiB), files 2, errors 1" in text
    assert "errors: sink_write 1" in text


def test_format_status_from_a_real_control_reply(ctx, ipc_dir):
    packets = iter(range(1000, 10**9, 1000))
    pub = StatsPublisher(ctx, f"ipc://{ipc_dir}/s", 3600.0,
                         lambda: snapshot(next(packets)), "daq-a")
    srv = ControlServer(ctx, f"ipc://{ipc_dir}/c", {"status": lambda args: pub.report()},
                        poll_interval=0.02)
    pub.start()
    srv.start()
    try:
        pub.publish_now()
        reply = request(srv.endpoint, "status", context=ctx)
    finally:
        srv.stop()
        pub.stop()
    text = format_status(reply)
    assert text.splitlines()[0].startswith("daq-a  running  uptime 1h02m05s")
    assert "stream adc0" in text and "rates over" in text
    packets_line = next(line for line in text.splitlines() if line.split()[0] == "packets")
    assert packets_line.endswith("/s")


def test_format_status_of_an_error_reply():
    assert format_status({"ok": False, "error": "unknown command 'x'"}) == \
        "error: unknown command 'x'"


def sink_stats(name, **counts):
    stats = {"name": name, "kind": name.split(":")[0], "bytes": 0, "records": 0, "files": 0,
             "errors": 0, "last_error": "", "lost_records": 0, "current_file": "",
             "last_file": "", "unfinished_files": 0}
    return {**stats, **counts}


STREAM_SINKS = [
    sink_stats("text:/data/{stream}-{start:%Y%m%d}.log", bytes=5 << 20, records=4000, files=3),
    sink_stats("pcap:/data/{stream}.pcap", bytes=512, records=4, errors=2, lost_records=1,
               lost_packets=3, unfinished_files=1, last_error="ENOSPC: disk full"),
]


def sink_table(lines, title):
    start = lines.index(title) + 1
    rows = [line.split() for line in lines[start:start + 5]]
    assert rows[0] == ["name", "bytes", "records", "files", "errors", "lost"]
    return rows[1:]


def test_stats_table_prints_a_stream_s_sinks_as_rows():
    message = {**built_round()["stats.adc0"], "sinks": STREAM_SINKS}
    text = format_stats_table(message)
    assert "{'" not in text and "'name'" not in text          # no dict reprs
    rows = sink_table(text.splitlines(), "  sinks:")
    assert rows[0] == ["text:/data/{stream}-{start:%Y%m%d}.log", "5,242,880", "(5.0", "MiB)",
                       "4,000", "3", "0", "0"]
    assert rows[1] == ["pcap:/data/{stream}.pcap", "512", "4", "0", "2", "1", "+3", "packets"]
    assert rows[2] == ["unfinished", "files:", "1"]
    assert rows[3] == ["last", "error:", "ENOSPC:", "disk", "full"]
    # the columns line up: each value ends where its heading does
    lines = text.splitlines()
    start = lines.index("  sinks:") + 1
    header, first, second = lines[start:start + 3]
    for heading in ("bytes", "records", "files", "errors", "lost"):
        end = header.index(heading) + len(heading)
        assert first[end - 1] != " " and first[end:end + 1] in ("", " ")
        assert second[end - 1] != " "


def test_status_reply_prints_sinks_once_under_their_stream():
    reply = {"ok": True, **snapshot(), "daemon": "daq-a",
             "sinks": {"adc0": STREAM_SINKS}}
    reply["streams"]["adc0"]["sinks"] = STREAM_SINKS
    text = format_status(reply)
    assert "{'" not in text
    assert text.count("text:/data/{stream}-{start:%Y%m%d}.log") == 1
    lines = text.splitlines()
    assert lines.index("  sinks:") > lines.index("stream adc0")
    assert sink_table(lines, "  sinks:")[1][:6] == ["pcap:/data/{stream}.pcap", "512", "4",
                                                   "0", "2", "1"]
    # a status message (daqd stats) has no stream sections: the table is under the daemon
    text = format_stats_table({"daemon": "daq-a", "state": "running", "uptime": 5.0,
                               "sinks": {"adc0": STREAM_SINKS}})
    assert sink_table(text.splitlines(), "  sinks of adc0:")[0][0] == \
        "text:/data/{stream}-{start:%Y%m%d}.log"
