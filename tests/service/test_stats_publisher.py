"""daqd.service.stats_publisher: message building, rates, and the PUB thread on real sockets."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from daqd.service.stats_publisher import SCHEMA, StatsBuilder, StatsPublisher, encode, report

TIMEOUT = 5.0          # bound on every wait; never reached when things work


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_snapshot(packets: int, state: str = "running", **stream_extra):
    return {
        "state": state, "uptime": 12.5,
        "streams": {"adc0": {"counters": {"packets": packets, "heaps": packets // 2,
                                          "max_batch": 64},
                             "gauges": {"ring_fill": 0.5}, **stream_extra}},
        "buffers": {"adc0": {"size": 3, "capacity": 64}},
        "sinks": {"adc0/binary": {"bytes": 1000, "files": 1, "errors": 0}},
        "errors": {"sink_errors": 0},
    }


def recv(sock: zmq.Socket, timeout: float = TIMEOUT) -> tuple[str, dict]:
    assert sock.poll(int(timeout * 1000)), f"no message within {timeout} s"
    topic, payload = sock.recv_multipart()
    return topic.decode(), json.loads(payload)


def sub_socket(ctx: zmq.Context, endpoint: str, rcvhwm: int = 1000) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.rcvhwm = rcvhwm
    sock.linger = 0
    sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def wait_joined(pub: StatsPublisher, sub: zmq.Socket) -> None:
    """Publish rounds until `sub` receives one (ZeroMQ's slow joiner), then drain it."""
    for _ in range(100):
        pub.publish_now()
        if sub.poll(50):
            break
    else:
        pytest.fail("the subscriber never joined")
    while sub.poll(50):
        sub.recv_multipart()


# --- StatsBuilder: pure, with fake clocks ----------------------------------------------------

def builder(clock: FakeClock, cpu: FakeClock | None = None) -> StatsBuilder:
    return StatsBuilder("daq-a", clock=clock, wall_clock=lambda: 1.7e9,
                        cpu_clock=cpu or FakeClock(0.0))


def test_stream_message_fields_and_rates_over_the_measured_interval():
    clock = FakeClock()
    b = builder(clock)
    b.prime(make_snapshot(1000))
    clock.t += 2.0
    messages = dict(b.build(make_snapshot(5000, mode="chunk")))
    m = messages["stats.adc0"]
    assert m["schema"] == SCHEMA and m["daemon"] == "daq-a" and m["time"] == 1.7e9
    assert m["stream"] == "adc0" and m["interval"] == 2.0
    assert m["counters"] == {"packets": 5000, "heaps": 2500, "max_batch": 64}
    assert m["rates"] == {"packets": 2000.0, "heaps": 1000.0}    # no rate for max_batch
    assert m["gauges"] == {"ring_fill": 0.5}
    assert m["mode"] == "chunk"                                  # extra fields copied
    assert list(messages) == ["stats.adc0", "status"]


def test_a_gauge_named_in_gauges_gets_no_rate():
    clock = FakeClock()
    b = builder(clock)
    snap = make_snapshot(10)
    snap["streams"]["adc0"]["gauges"] = {"heaps": 5}
    b.prime(snap)
    clock.t += 1.0
    rates = dict(b.build(snap))["stats.adc0"]["rates"]
    assert "heaps" not in rates and rates["packets"] == 0.0


def test_first_message_without_a_baseline_has_no_rates():
    m = dict(builder(FakeClock()).build(make_snapshot(10)))["stats.adc0"]
    assert m["rates"] == {} and m["interval"] is None
    assert m["counters"]["packets"] == 10


def test_a_counter_that_decreased_was_reset_and_its_rate_is_not_negative():
    clock = FakeClock()
    b = builder(clock)
    b.prime(make_snapshot(1000))
    clock.t += 1.0
    rates = dict(b.build(make_snapshot(300)))["stats.adc0"]["rates"]
    assert rates == {"packets": 300.0, "heaps": 150.0}


def test_reset_counters_restarts_rates_from_zero_at_the_reset():
    clock = FakeClock()
    b = builder(clock)
    b.prime(make_snapshot(1000))
    clock.t += 10.0
    b.reset_counters()                 # daemon zeroes its counters now...
    clock.t += 2.0                     # ...and counts 4000 more in 2 s
    rates = dict(b.build(make_snapshot(4000)))["stats.adc0"]["rates"]
    assert rates["packets"] == 2000.0  # not (4000 - 1000) / 12


def test_status_message_fields_and_cpu_from_process_time():
    clock, cpu = FakeClock(), FakeClock(5.0)
    b = builder(clock, cpu)
    clock.t += 4.0
    cpu.t += 1.0
    status = dict(b.build(make_snapshot(1, state="draining")))["status"]
    assert status["schema"] == SCHEMA and status["daemon"] == "daq-a"
    assert status["state"] == "draining" and status["uptime"] == 12.5
    assert status["streams"] == ["adc0"]
    assert status["buffers"] == {"adc0": {"size": 3, "capacity": 64}}
    assert status["sinks"]["adc0/binary"]["bytes"] == 1000
    assert status["errors"] == {"sink_errors": 0}
    assert status["process"]["cpu"] == 0.25
    assert status["process"]["rss_bytes"] > 0


def test_numpy_counters_encode_as_plain_json_numbers():
    snap = make_snapshot(0)
    snap["streams"]["adc0"]["counters"] = {"packets": np.uint64(7)}
    snap["streams"]["adc0"]["present"] = np.array([1, 0], dtype=np.uint8)
    message = dict(builder(FakeClock()).build(snap))["stats.adc0"]
    decoded = json.loads(encode(message))
    assert decoded["counters"] == {"packets": 7} and decoded["present"] == [1, 0]


def test_report_gathers_a_round_into_one_status_dict():
    clock = FakeClock()
    b = builder(clock)
    b.prime(make_snapshot(0))
    clock.t += 1.0
    r = report(dict(b.build(make_snapshot(100))))
    assert r["state"] == "running"
    assert r["streams"]["adc0"]["rates"]["packets"] == 100.0
    assert "schema" not in r["streams"]["adc0"]


# --- StatsPublisher on real sockets ----------------------------------------------------------

def test_publishes_stream_and_status_messages_every_interval(ctx, ipc_dir):
    packets = iter(range(0, 10**9, 1000))
    snapshot = lambda: make_snapshot(next(packets))   # noqa: E731
    pub = StatsPublisher(ctx, f"ipc://{ipc_dir}/stats", 0.05, snapshot, "daq-a")
    pub.start()
    sub = sub_socket(ctx, pub.endpoint)
    try:
        got: dict[str, list[dict]] = {"stats.adc0": [], "status": []}
        while len(got["stats.adc0"]) < 3:
            topic, message = recv(sub)
            got[topic].append(message)
    finally:
        pub.stop()
    assert got["status"] and all(m["state"] == "running" for m in got["status"])
    first, second = got["stats.adc0"][-2:]
    # each rate is the counter's increase over the interval the message reports
    assert second["rates"]["packets"] == pytest.approx(
        (second["counters"]["packets"] - first["counters"]["packets"]) / second["interval"],
        rel=1e-3)
    assert pub.stats()["messages_sent"] >= 6


def test_stop_final_publishes_the_stopped_state(ctx, ipc_dir):
    state = {"value": "running"}
    pub = StatsPublisher(ctx, f"ipc://{ipc_dir}/stats", 3600.0,
                         lambda: make_snapshot(1, state=state["value"]), "daq-a")
    pub.start()
    sub = sub_socket(ctx, pub.endpoint)
    wait_joined(pub, sub)
    state["value"] = "stopped"
    pub.stop(final=True)               # the interval is an hour: only the final round
    topics = {}
    while "status" not in topics:
        topic, message = recv(sub)
        topics[topic] = message
    assert topics["status"]["state"] == "stopped"
    assert pub.publish_now() == 0      # closed


def test_nodrop_counts_messages_a_stuck_subscriber_has_no_room_for(ctx):
    pub = StatsPublisher(ctx, "inproc://stats-nodrop", 3600.0, lambda: make_snapshot(1),
                         "daq-a", sndhwm=1, nodrop=True)
    pub.start()
    stuck = sub_socket(ctx, pub.endpoint, rcvhwm=1)
    wait_joined(pub, stuck)
    before = pub.stats()
    done = threading.Event()

    def burst():
        for _ in range(20):
            pub.publish_now()
        done.set()

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join(TIMEOUT)
    assert done.is_set(), "publish_now blocked on a subscriber that does not read"
    after = pub.stats()
    pub.stop()
    sent = after["messages_sent"] - before["messages_sent"]
    dropped = after["dropped_messages"] - before["dropped_messages"]
    assert sent + dropped == 20 * 2 and dropped > 0


def test_a_stuck_subscriber_costs_the_others_nothing(ctx):
    pub = StatsPublisher(ctx, "inproc://stats-fanout", 3600.0, lambda: make_snapshot(1),
                         "daq-a", sndhwm=2)
    pub.start()
    stuck = sub_socket(ctx, pub.endpoint, rcvhwm=1)
    reader = sub_socket(ctx, pub.endpoint)
    wait_joined(pub, stuck)
    wait_joined(pub, reader)
    statuses = 0
    for _ in range(30):
        pub.publish_now()
        for _ in range(2):
            topic, _message = recv(reader)
            statuses += topic == "status"
    pub.stop()
    assert statuses == 30
    assert pub.stats()["dropped_messages"] == 0


def test_a_failing_snapshot_is_counted_and_publishing_resumes(ctx):
    calls = {"n": 0}

    def snapshot():
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("buffers not ready")
        return make_snapshot(1)

    pub = StatsPublisher(ctx, "inproc://stats-fail", 3600.0, snapshot, "daq-a")
    pub.start()
    try:
        results = [pub.publish_now() for _ in range(4)]
    finally:
        pub.stop()
    assert pub.stats()["snapshot_errors"] == 3   # calls 1-3, whichever thread made them
    assert results[-1] == 2 and results[:2] == [0, 0]


def test_report_returns_the_latest_round(ctx):
    pub = StatsPublisher(ctx, "inproc://stats-report", 3600.0, lambda: make_snapshot(7),
                         "daq-a")
    pub.start()
    try:
        r = pub.report()
    finally:
        pub.stop()
    assert r["state"] == "running" and r["streams"]["adc0"]["counters"]["packets"] == 7


def test_a_non_positive_interval_is_refused(ctx):
    with pytest.raises(ValueError, match="interval"):
        StatsPublisher(ctx, "inproc://x", 0, lambda: {}, "daq-a")
