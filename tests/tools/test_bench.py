"""``daqd bench``: the command runs and reports, bad arguments are one line.

Nothing here looks at a figure: these check that the benchmark machinery
works on tiny inputs.  The real benchmarks (tests/benchmarks/) are never
timed tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli_helpers import assert_one_line_error
from cli_helpers import daqd as run_daqd

TIMEOUT = 120


def daqd(*args: str, timeout: float = TIMEOUT):
    return run_daqd(*args, timeout=timeout)


TINY = ["--workload", "W2", "--mode", "memory", "--runs", "1", "--heaps", "300"]


def test_help():
    proc = daqd("bench", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--workload", "--vs-spead2", "--mode", "--runs", "--json"):
        assert option in proc.stdout


def test_memory_table():
    proc = daqd("bench", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "From memory" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("W2 ")]
    assert [row[1] for row in rows] == ["daqd", "copy", "memcpy"]   # the copy limits after
    assert "AMD" in proc.stdout or "machine:" in proc.stdout


def test_memory_json():
    proc = daqd("bench", *TINY, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.stderr == ""
    (result,) = report["memory"]
    assert result["workload"] == "W2" and result["receiver"] == "daqd"
    assert result["heaps"] == 300 and result["packets"] == 300
    assert result["payload_bytes"] == 300 * 1024
    assert len(result["seconds"]) == 1 and result["heaps_per_s"] > 0
    assert report["udp"] == []
    for key in ("cpu", "cores", "kernel", "rmem_max", "numpy", "spead2"):
        assert key in report["machine"]


def test_memory_vs_spead2_json():
    proc = daqd("bench", "--workload", "W3", "--mode", "memory", "--runs", "1",
                "--heaps", "100", "--vs-spead2", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["receiver"] for r in report["memory"]] == ["daqd", "spead2"]
    assert all(r["heaps"] == 100 and r["packets"] == 800 for r in report["memory"])
    assert report["ratios"]["memory"]["W3"] > 0


def test_library_checks_placement():
    """The from-memory runs refuse a receiver that drops or misplaces heaps."""
    import numpy as np

    from daqd.tools.bench import memory as bench

    buf = bench.workload_buffer("W1", 128)
    seconds, present = bench.memory_run_daqd("W1", buf, verify=True)
    assert present == 128 and seconds > 0
    data = np.zeros((64, 1, 8192), np.uint8)
    with pytest.raises(bench.BenchError):
        bench.check_chunk("W1", 0, data, np.ones(64, np.uint8))
    bench.check_chunk("W1", 0, data, np.zeros(64, np.uint8))     # nothing present


def test_search_rate_bisects():
    from daqd.tools.bench.report import Trial
    from daqd.tools.bench.udp import search_rate

    def trial(rate: float) -> Trial:
        offered = rate or 1000.0
        ok = offered <= 300.0
        return Trial(requested_pps=rate, offered_pps=offered, heaps_sent=1000,
                     heaps_present=1000 if ok else 900, loss=0.0 if ok else 0.1, ok=ok,
                     sender_dropped=0, kernel_drops=0, daqd_socket_drops=0,
                     stopped_by="stop heap", receiver_cpu=0.5, cpu_us_per_packet=1.0,
                     user_us_per_packet=0.5,
                     other_load=0.0, steal=0.0)

    best, failed, trials = search_rate(trial, ladder=6, steps=5)
    assert trials[0].requested_pps == 0
    assert best is not None and failed is not None
    assert 250 < best.offered_pps <= 300 < failed.offered_pps < 350
    assert len(trials) <= 1 + 6 + 5


@pytest.mark.network
def test_udp_runs():
    """A short UDP search with both receivers (structure only, not figures).

    As root this runs in the private namespace with RPS on its loopback
    (``--loopback auto``), which must leave the machine's loopback alone.
    """
    rps_before = _read(RPS_CPUS)
    proc = daqd("bench", "--workload", "W2", "--mode", "udp", "--vs-spead2",
                "--trial-seconds", "0.1", "--steps", "0", "--cost-trials", "1", "--json",
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _read(RPS_CPUS) == rps_before
    report = json.loads(proc.stdout)
    if os.geteuid() == 0 and rps_before is not None:
        assert report["loopback"].startswith("a private network namespace"), report["loopback"]
    assert report["daqd_gro"].startswith("with UDP GRO") or "refused" in report["daqd_gro"]
    assert [u["receiver"] for u in report["udp"]] == ["daqd", "spead2", "raw"]
    assert set(report["ratios"]["udp_of_socket_limit"]["W2"]) == {"daqd", "spead2"}
    for u in report["udp"]:
        assert u["trials"], u
        for t in u["trials"]:
            assert 0 <= t["heaps_present"] <= t["heaps_sent"]
            assert t["offered_pps"] > 0
    assert report["socket_buffer"] > 0
    assert "GSO" in report["sender"] or "sendmmsg" in report["sender"]
    if all(u["sustained"] for u in report["udp"]):
        assert [c["receiver"] for c in report["cost"]] == ["daqd", "spead2", "raw"]
        assert all(len(c["losses"]) == 1 for c in report["cost"])


@pytest.mark.network
def test_udp_on_the_machines_loopback_without_gro():
    proc = daqd("bench", "--workload", "W1", "--mode", "udp", "--vs-spead2",
                "--trial-seconds", "0.1", "--steps", "0", "--cost-trials", "0", "--udp-runs",
                "1", "--loopback", "shared", "--no-daqd-gro")
    assert proc.returncode == 0, proc.stderr
    assert "loopback: the machine's loopback" in proc.stdout
    assert "daqd receives without UDP GRO (--no-daqd-gro" in proc.stdout
    assert "receiver on CPU" in proc.stdout or "one CPU" in proc.stdout


RPS_CPUS = "/sys/class/net/lo/queues/rx-0/rps_cpus"


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@pytest.mark.parametrize("args, name", [
    (["--workload", "W9"], "--workload"),
    (["--mode", "bogus"], "--mode"),
    (["--runs", "0"], "--runs"),
    (["--runs", "many"], "--runs"),
    (["--heaps", "0"], "--heaps"),
    (["--trial-seconds", "0"], "--trial-seconds"),
    (["--bogus"], "--bogus"),
    (["--loopback", "elsewhere"], "--loopback"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_arguments(args, name):
    assert_one_line_error(daqd("bench", *args), name)


def test_vs_spead2_without_spead2():
    code = ("import sys; sys.modules['spead2'] = None; from daqd.cli import main; "
            "main(['bench', '--vs-spead2', '--mode', 'memory'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert_one_line_error(proc, "spead2")


def test_bench_imports_without_spead2():
    code = ("import sys; sys.modules['spead2'] = None; import daqd.tools.bench.run, daqd.cli; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.benchmark
def test_full_benchmark():
    """The whole benchmark (minutes): runs to the end and reports every workload."""
    proc = daqd("bench", "--vs-spead2", "--json", "--quiet", timeout=3600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["memory"]) == 6 and len(report["udp"]) == 9     # daqd, spead2, raw
    assert len(report["memory_limits"]) == 6                          # two copies each
    text = subprocess.run([sys.executable, "-c", (
        "import json, sys; from daqd.tools.bench.report import format_report, report_from_json; "
        "print(format_report(report_from_json(json.load(sys.stdin))))")],
        input=proc.stdout, capture_output=True, text=True, timeout=TIMEOUT)
    assert text.returncode == 0 and "Loopback UDP" in text.stdout, text.stderr


# ----------------------------------------------------------------------
# The UDP rate search, with a fake (deterministic) trial function


def fake_trial(requested: float, offered: float, ok: bool):
    from daqd.tools.bench.report import Trial

    return Trial(requested_pps=requested, offered_pps=offered, heaps_sent=1000,
                 heaps_present=1000 if ok else 900, loss=0.0 if ok else 0.1, ok=ok,
                 sender_dropped=0, kernel_drops=0, daqd_socket_drops=0,
                 stopped_by="stop heap", receiver_cpu=0.5, cpu_us_per_packet=1.0,
                 user_us_per_packet=0.5, other_load=0.0, steal=0.0)


class FakeLink:
    """A receiver sustaining `capacity` packets/s behind a sender whose full speed varies.

    `full_speed`: the offered rate of each successive full-speed trial (the
    last one repeats); `pacing`: offered / requested for paced trials;
    `stalls`: indices of trials (0-based, in order) that fail whatever the
    rate, as a vCPU stop would make them.
    """

    def __init__(self, capacity, full_speed, pacing=1.0, stalls=()):
        self.capacity = capacity
        self.full_speed = list(full_speed)
        self.pacing = pacing
        self.stalls = set(stalls)
        self.calls = 0

    def __call__(self, rate):
        if rate == 0:
            offered = self.full_speed.pop(0) if len(self.full_speed) > 1 else self.full_speed[0]
        else:
            offered = rate * self.pacing
        ok = offered <= self.capacity and self.calls not in self.stalls
        self.calls += 1
        return fake_trial(rate, offered, ok)


def run_fake(link, **options):
    from daqd.tools.bench.udp import run_search

    options.setdefault("retries", 1)
    return run_search(link, **options)


def test_search_two_full_speed_passes_are_sender_limited():
    found, trials = run_fake(FakeLink(2000.0, [900.0, 800.0]))
    assert found.sender_limited
    assert [t.requested_pps for t in trials] == [0.0, 0.0]
    assert found.best.offered_pps == 900.0 and found.failed is None


def test_search_slow_full_speed_pass_is_not_accepted():
    """One full-speed trial that happened to be slow passes; the next ones at speed fail."""
    link = FakeLink(300.0, [200.0, 1000.0, 950.0])
    found, trials = run_fake(link, steps=8)
    assert not found.sender_limited
    assert [t.requested_pps for t in trials[:3]] == [0.0, 0.0, 0.0]
    # The failing end is the fastest of the failed full-speed trials; the
    # bisection starts between the offered rates 200 and 1000.
    assert trials[3].requested_pps == pytest.approx((200.0 * 1000.0) ** 0.5)
    assert found.best is not None and found.failed is not None
    assert 290.0 < found.best.offered_pps <= 300.0 < found.failed.offered_pps < 310.0
    # The result is what the sender offered, not what was asked for.
    assert found.best.offered_pps in {t.offered_pps for t in trials if t.ok}


def test_search_full_speed_pass_fail_pass_is_sender_limited():
    """A stall fails the second full-speed trial, slower than the passes; the retry passes."""
    found, trials = run_fake(FakeLink(2000.0, [900.0, 850.0, 950.0], stalls={1}))
    assert found.sender_limited and len(trials) == 3
    assert found.best.offered_pps == 950.0


def test_search_unconfirmed_failure_above_the_passes_is_a_bound():
    """A single full-speed failure (a stall) above two passes, never failed again below it."""
    found, trials = run_fake(FakeLink(2000.0, [900.0, 1000.0, 950.0], stalls={1}), steps=8)
    assert [t.ok for t in trials[:3]] == [True, False, True]
    assert all(t.ok for t in trials[3:]) and len(trials) > 3
    assert 950.0 < found.best.offered_pps < 1000.0
    assert found.sender_limited                 # a lower bound: nothing confirmed a failure


def test_search_failure_above_two_full_speed_passes():
    """Two slow full-speed passes around a faster failure: the search goes on between them."""
    found, trials = run_fake(FakeLink(300.0, [189.0, 368.0, 184.0]), steps=8)
    assert [t.ok for t in trials[:3]] == [True, False, True]
    assert not found.sender_limited
    assert trials[3].requested_pps == pytest.approx((189.0 * 368.0) ** 0.5)
    assert 290.0 < found.best.offered_pps <= 300.0 < found.failed.offered_pps


def test_search_full_speed_needs_two_failures_with_retries():
    found, trials = run_fake(FakeLink(300.0, [1000.0]), retries=1, steps=0)
    assert [t.requested_pps for t in trials[:2]] == [0.0, 0.0]
    assert trials[2].requested_pps == 500.0     # the ladder starts below the failure
    assert found.best is not None and found.best.offered_pps == 250.0


def test_search_bisects_on_offered_rates():
    """The sender offers 90 % of the paced rate asked for.

    A pass counts at the rate offered, a paced failure at the rate asked for
    (the sender never went faster, and not slower throughout).
    """
    found, trials = run_fake(FakeLink(300.0, [1000.0], pacing=0.9), retries=0, steps=6)
    assert [t.requested_pps for t in trials[:3]] == [0.0, 500.0, 250.0]
    assert trials[2].ok and trials[2].offered_pps == 225.0
    assert trials[3].requested_pps == pytest.approx((225.0 * 500.0) ** 0.5)
    assert found.best.offered_pps == max(t.offered_pps for t in trials if t.ok)
    assert found.best.offered_pps <= 300.0 < found.failed.offered_pps
    assert found.best.requested_pps < found.failed.requested_pps < 340.0


def test_search_retries_a_stall_below_capacity():
    """One stalled trial at a paced rate the receiver sustains does not fail that rate."""
    stalled = FakeLink(300.0, [1000.0], stalls={4})
    found, trials = run_fake(stalled, retries=1, steps=8)
    assert trials[4].requested_pps == trials[5].requested_pps == 250.0
    assert not trials[4].ok and trials[5].ok
    assert 290.0 < found.best.offered_pps <= 300.0
    # Without retries the same stall makes the search settle lower.
    low, _ = run_fake(FakeLink(300.0, [1000.0], stalls={2}), retries=0, steps=8)
    assert low.best.offered_pps < 260.0


def test_search_failure_below_a_pass_wins():
    """A lucky full-speed pass above two failures is not taken as the lower end."""
    link = FakeLink(300.0, [500.0, 400.0, 450.0])

    def trial(rate):
        t = link(rate)
        return fake_trial(rate, t.offered_pps, True) if link.calls == 1 else t

    found, trials = run_fake(trial, steps=8)
    assert [t.ok for t in trials[:3]] == [True, False, False]
    assert trials[3].requested_pps == 225.0     # half the fastest failure: 450
    assert 290.0 < found.best.offered_pps <= 300.0 < found.failed.offered_pps <= 450.0


def test_search_tries_again_when_the_sender_falls_short():
    """A pass offered below the lower end (a slow spell of the sender) does not use a step."""
    link = FakeLink(300.0, [1000.0])
    slow = {9, 10}                                  # the sender's slow spell, mid-bisection

    def trial(rate):
        t = link(rate)
        return fake_trial(rate, rate * 0.5, True) if link.calls - 1 in slow else t

    found, trials = run_fake(trial, retries=1, steps=8)
    assert trials[9].requested_pps == trials[10].requested_pps == trials[11].requested_pps
    assert trials[9].offered_pps < 250.0 and trials[11].offered_pps == trials[11].requested_pps
    steady, steady_trials = run_fake(FakeLink(300.0, [1000.0]), retries=1, steps=8)
    assert found.best.offered_pps == steady.best.offered_pps
    # Trial 8 failed at 324 kpkt/s; its retry and one more verdict passed at
    # half that, which moved nothing; then two failures confirmed 324.
    assert len(trials) == len(steady_trials) + 3


def test_search_nothing_passes():
    found, trials = run_fake(FakeLink(0.0, [1000.0]), retries=1, ladder=3, steps=5)
    assert found.best is None and not found.sender_limited
    assert found.failed.offered_pps == 125.0
    assert len(trials) == 2 + 3 * 2


def test_search_stops_at_resolution():
    found, trials = run_fake(FakeLink(300.0, [600.0]), retries=0, steps=50)
    assert found.failed.offered_pps <= found.best.offered_pps * 1.01
    assert len(trials) < 20


# ----------------------------------------------------------------------
# Medians over runs, ratios and bounds


def udp_fixture(rates):
    """UdpResults from {(workload, receiver): [(pps, sender_limited), ...]}."""
    from daqd.tools.bench.report import UdpRun
    from daqd.tools.bench.udp import udp_result

    out = []
    for (w, r), runs in rates.items():
        made = [UdpRun(sustained=fake_trial(0.0 if lim else pps, pps, True),
                       first_failed=None if lim else fake_trial(pps * 1.1, pps * 1.1, False),
                       sender_limited=lim, packets_per_s=pps, trials=3)
                for pps, lim in runs]
        out.append(udp_result(w, r, made, [t for m in made for t in (m.sustained,)]))
    return out


def test_udp_medians_ratio_and_spread():
    from daqd.tools.bench.report import udp_spread

    results = udp_fixture({
        ("W1", "daqd"): [(400e3, False), (300e3, False), (500e3, False)],
        ("W1", "spead2"): [(380e3, False), (420e3, False), (200e3, False)],
        ("W2", "daqd"): [(900e3, True), (800e3, False), (850e3, False)],
        ("W2", "spead2"): [(700e3, False), (600e3, False), (650e3, False)],
        ("W3", "daqd"): [(300e3, True), (310e3, True), (305e3, True)],
        ("W3", "spead2"): [(290e3, True), (280e3, True), (200e3, False)],
    })
    w1_daqd = results[0]
    assert w1_daqd.packets_per_s == 400e3 and w1_daqd.sustained.offered_pps == 400e3
    assert w1_daqd.heaps_per_s == 400e3         # one packet per heap
    spread = udp_spread(results)
    assert spread["W1"]["kind"] == "measured"
    assert spread["W1"]["ratio"] == pytest.approx(400 / 380)
    assert spread["W1"]["min"] == pytest.approx(300 / 420)
    assert spread["W1"]["max"] == pytest.approx(500 / 200)
    assert spread["W1"]["daqd"]["min_pps"] == 300e3 and spread["W1"]["daqd"]["max_pps"] == 500e3
    assert spread["W2"]["kind"] == "at least"   # a daqd run was sender-limited
    assert spread["W2"]["ratio"] == pytest.approx(850 / 650)
    assert [r["kind"] for r in spread["W2"]["runs"]] == ["at least", "measured", "measured"]
    assert spread["W2"]["min"] == pytest.approx(850 / 650)
    assert spread["W3"]["kind"] == "both sender-limited" and spread["W3"]["ratio"] is None


def test_udp_report_text_and_json_round_trip():
    from daqd.tools.bench.report import BenchReport, CostResult, format_report, report_from_json

    results = udp_fixture({
        ("W1", "daqd"): [(400e3, False), (300e3, True)],
        ("W1", "spead2"): [(380e3, False), (420e3, False)],
    })
    report = BenchReport(machine={"cpu": "x", "cores": 2, "kernel": "k", "rmem_max": 1,
                                  "transparent_hugepage": "t", "python": "3", "numpy": "2",
                                  "spead2": "4", "daqd": "0", "idle_before": 1.0},
                         udp=results, socket_buffer=64 << 20, socket_buffer_note="forced",
                         udp_runs=2, loopback="a private network namespace (test)",
                         daqd_gro="with UDP GRO (test)",
                         cost=[CostResult("W1", r, 1e5, us, us / 2, 0.5, [0.0], [0.0], core)
                               for r, us, core in [("daqd", 1.0, 2.0), ("spead2", 1.5, 3.0)]])
    text = format_report(report)
    assert "medians over 2 runs" in text
    assert ">= 0.88" in text                    # (400 + 300) / 2 / 400: a lower bound
    assert "loopback: a private network namespace (test)" in text
    assert "daqd receives with UDP GRO (test)" in text
    assert "1.50 (1.50; 1.50)" in text          # spead2/daqd: process, user, core
    again = report_from_json(json.loads(json.dumps(report.to_json())))
    assert again.udp[0].runs[1].sender_limited
    assert format_report(again) == text


@pytest.mark.parametrize("catch_up", [True, False])
def test_sim_reader_pacing_without_catch_up(catch_up):
    """A paced SimReader that fell behind bursts to catch up, or (catch_up=False) does not.

    Measured by what the sending thread did, not by how long it took: a burst
    never sleeps (no voluntary context switch: writes to a memfd do not block),
    while a restarted schedule sleeps before nearly every batch.  A loaded
    machine adds involuntary switches only.  The paced send's lower bound on
    its duration is safe: load can only lengthen it.
    """
    import resource
    import time

    from daqd import _spead

    def sleeps() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw

    rate = 100_000                                  # packets/s
    sim = _spead.SimReader("W2", rate=rate * 1080, batch=60, catch_up=catch_up)
    fd = os.memfd_create("pacing")
    try:
        _spead.send(sim, fd, "stream", max_packets=60)
        time.sleep(0.1)                             # 10 000 packets behind
        start, slept = time.perf_counter(), sleeps()
        _spead.send(sim, fd, "stream", max_packets=1200)     # 12 ms of schedule, 20 batches
        took, slept = time.perf_counter() - start, sleeps() - slept
    finally:
        os.close(fd)
    if catch_up:
        assert slept <= 2 and sim.schedule_resets == 0, slept
    else:
        assert slept >= 10 and sim.schedule_resets >= 1, slept
        assert took > 0.010


@pytest.mark.network
def test_refused_namespace_falls_back_or_fails(monkeypatch):
    """Where the RPS namespace cannot be made: auto uses the machine's loopback, rps fails."""
    from daqd.errors import UsageProblem
    from daqd.tools.bench import netns as bench_netns
    from daqd.tools.bench.run import run_bench

    monkeypatch.setattr(bench_netns, "run_udp_with_rps",
                        lambda cpu, options, log: (None, "unshare: Operation not permitted"))
    lines = []
    report = run_bench(["W2"], mode="udp", trial_seconds=0.1, steps=0, cost_trials=0,
                       udp_runs=1, log=lines.append)
    assert report.loopback.startswith("the machine's loopback")
    assert "Operation not permitted" in report.loopback
    assert any("no private namespace with RPS" in line for line in lines)
    assert [u.receiver for u in report.udp] == ["daqd", "raw"] and report.udp[0].trials
    with pytest.raises(UsageProblem, match="--loopback rps: cannot set up the namespace"):
        run_bench(["W2"], mode="udp", loopback="rps")
