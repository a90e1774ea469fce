"""``daqd bench``: the command runs and reports, bad arguments are one line.

Nothing here looks at a figure: these check that the benchmark machinery
works on tiny inputs.  The real benchmarks (tests/benchmarks/) are never
timed tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_helpers import assert_one_line_error
from cli_helpers import daqd as run_daqd

TIMEOUT = 120
HAVE_SPEAD2 = importlib.util.find_spec("spead2") is not None


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
    assert [row[1] for row in rows] == ["daqd"]
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


@pytest.mark.skipif(not HAVE_SPEAD2, reason="spead2 is not installed")
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

    from daqd import bench

    buf = bench.workload_buffer("W1", 128)
    seconds, present = bench.memory_run_daqd("W1", buf, verify=True)
    assert present == 128 and seconds > 0
    data = np.zeros((64, 1, 8192), np.uint8)
    with pytest.raises(bench.BenchError):
        bench.check_chunk("W1", 0, data, np.ones(64, np.uint8))
    bench.check_chunk("W1", 0, data, np.zeros(64, np.uint8))     # nothing present


def test_search_rate_bisects():
    from daqd.bench import Trial, search_rate

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
@pytest.mark.skipif(not HAVE_SPEAD2, reason="spead2 is not installed")
def test_udp_runs():
    """A short UDP search with both receivers (structure only, not figures)."""
    proc = daqd("bench", "--workload", "W2", "--mode", "udp", "--vs-spead2",
                "--trial-seconds", "0.1", "--steps", "0", "--cost-trials", "1", "--json",
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [u["receiver"] for u in report["udp"]] == ["daqd", "spead2"]
    for u in report["udp"]:
        assert u["trials"], u
        for t in u["trials"]:
            assert 0 <= t["heaps_present"] <= t["heaps_sent"]
            assert t["offered_pps"] > 0
    assert report["socket_buffer"] > 0
    assert "GSO" in report["sender"] or "sendmmsg" in report["sender"]
    if all(u["sustained"] for u in report["udp"]):
        assert [c["receiver"] for c in report["cost"]] == ["daqd", "spead2"]
        assert all(len(c["losses"]) == 1 for c in report["cost"])


@pytest.mark.parametrize("args, name", [
    (["--workload", "W9"], "--workload"),
    (["--mode", "bogus"], "--mode"),
    (["--runs", "0"], "--runs"),
    (["--runs", "many"], "--runs"),
    (["--heaps", "0"], "--heaps"),
    (["--trial-seconds", "0"], "--trial-seconds"),
    (["--bogus"], "--bogus"),
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
    code = ("import sys; sys.modules['spead2'] = None; import daqd.bench, daqd.cli; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.benchmark
@pytest.mark.skipif(not HAVE_SPEAD2, reason="spead2 is not installed")
def test_full_benchmark():
    """The whole benchmark (minutes): runs to the end and reports every workload."""
    proc = daqd("bench", "--vs-spead2", "--json", "--quiet", timeout=3600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["memory"]) == 6 and len(report["udp"]) == 6
    text = subprocess.run([sys.executable, "-c", (
        "import json, sys; from daqd.bench import format_report, report_from_json; "
        "print(format_report(report_from_json(json.load(sys.stdin))))")],
        input=proc.stdout, capture_output=True, text=True, timeout=TIMEOUT)
    assert text.returncode == 0 and "Loopback UDP" in text.stdout, text.stderr
