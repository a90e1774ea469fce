"""``daqd stats --merge``: two real daemons with a stream of the same name, fed known heap
counts; the merged counters are the sums (maxima: the largest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import (
    DaemonProcess,
    daemon_toml,
    free_port,
    send_w1,
    subscribed,
    udp_stream_toml,
    write_config,
)

from daqd.service.stats_totals import MERGED, Totals, merge

pytestmark = pytest.mark.network

HEAPS = {"left": 16, "right": 24}


@pytest.fixture
def two_daemons(tmp_path):
    daemons = {}
    try:
        for name in HEAPS:
            tmp = tmp_path / name
            tmp.mkdir()
            port = free_port()
            daemon = DaemonProcess(write_config(tmp, daemon_toml(tmp, name=name)
                                                + udp_stream_toml("adc0", port)))
            daemons[name] = (daemon, daemon.ready(), port)
        yield daemons
    finally:
        for daemon, _, _ in daemons.values():
            daemon.close()


def test_merge_adds_the_counters_of_one_stream_across_two_daemons(two_daemons):
    last = {}
    for name, (_, ready, port) in two_daemons.items():
        sub = subscribed(ready["stats"])
        send_w1(port, HEAPS[name], stop=False)
        _, last[name] = sub.until(lambda t, m, n=HEAPS[name]: t == "stats.adc0"
                                  and m["counters"]["heaps"] == n)
        sub.close()
    proc = daqd("stats", "--merge", "--json", "--count", "3", "--timeout", "10",
                *(arg for _, ready, _ in two_daemons.values()
                  for arg in ("--endpoint", ready["stats"])))
    assert proc.returncode == 0, proc.stderr
    merged = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(merged) == 3
    assert {(m["topic"], m["daemon"], m["stream"]) for m in merged} == \
        {("stats.adc0", MERGED, "adc0")}
    both = [m for m in merged if sorted(m["daemons"]) == sorted(HEAPS)]
    assert both, merged
    left, right = last["left"]["counters"], last["right"]["counters"]
    left_gauges, right_gauges = last["left"]["gauges"], last["right"]["gauges"]
    for message in both:
        counters, gauges = message["counters"], message["gauges"]
        assert counters["heaps"] == sum(HEAPS.values())
        assert counters["packets"] == left["packets"] + right["packets"] > 0
        assert gauges["max_batch"] == max(left_gauges["max_batch"], right_gauges["max_batch"])
        assert set(message["rates"]) <= set(counters)


def test_merge_without_json_prints_a_table(two_daemons):
    proc = daqd("stats", "--merge", "--count", "1", "--timeout", "10",
                *(arg for _, ready, _ in two_daemons.values()
                  for arg in ("--endpoint", ready["stats"])))
    assert proc.returncode == 0, proc.stderr
    assert "merged/adc0" in proc.stdout.splitlines()[0]


def message(daemon, stream="adc0", gauges=None, **counters):
    return {"schema": "daqd.stats/1", "daemon": daemon, "stream": stream, "time": 1.0,
            "counters": counters, "rates": {k: v / 2 for k, v in counters.items()},
            "gauges": gauges or {}}


def test_merge_keeps_the_newest_data_time_and_the_worst_lag():
    got = merge([message("a", gauges={"newest_timestamp": 1 << 40, "data_time_lag_seconds": 0.5}),
                 message("b", gauges={"newest_timestamp": 5, "data_time_lag_seconds": 2.0})])
    assert got["gauges"] == {"newest_timestamp": 1 << 40, "data_time_lag_seconds": 2.0}


def test_merge_sums_rates_and_gauges_and_keeps_the_largest_maximum():
    got = merge([message("a", gauges={"max_batch": 8, "pool": 16}, heaps=3, packets=6),
                 message("b", gauges={"max_batch": 2, "pool": 4}, heaps=5, packets=1)])
    assert got["counters"] == {"heaps": 8, "packets": 7}
    assert got["rates"] == {"heaps": 4.0, "packets": 3.5}
    assert got["gauges"] == {"max_batch": 8, "pool": 20}
    assert got["daemons"] == ["a", "b"]
    with pytest.raises(ValueError, match="different streams"):
        merge([message("a"), message("b", stream="adc1")])


def test_totals_are_due_once_per_round_and_a_silent_daemon_does_not_block_them():
    totals = Totals()
    assert totals.update(message("a", heaps=1)) is None
    assert totals.update(message("b", heaps=2))["counters"] == {"heaps": 3}
    assert totals.update(message("a", heaps=4)) is None
    # b is silent: a's next message closes the round, b's last message still counts
    assert totals.update(message("a", heaps=5))["counters"] == {"heaps": 6}
