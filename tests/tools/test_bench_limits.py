"""``daqd bench``: the machine's limits (the copy limit, the raw UDP receiver).

Facts, never figures: the copy limit copies exactly the workload's payload
bytes to where the receivers put them; the raw receiver counts exactly the
datagrams sent (GRO segments one by one) and ends at the sender's end; the
report carries the columns.  No timing is asserted.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli_helpers import daqd

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench import memory
from daqd.tools.bench.copy_limit import CopyLimit, CopyLimitError, PoolBlock, payload_copies
from daqd.tools.bench.report import format_report, report_from_json

TIMEOUT = 120
UDP_SEGMENT = 103       # linux/udp.h


# ----------------------------------------------------------------------
# The copy limit


def test_copy_plan_copies_each_triple():
    src = np.arange(256, dtype=np.uint8)
    for mode in ("nontemporal", "standard"):
        dst = np.zeros(4096, np.uint8)
        plan = _spead.CopyPlan(src, dst, np.array([0, 100], np.uint64),
                               np.array([2048, 10], np.uint64), np.array([40, 156], np.uint32),
                               memcpy=mode)
        assert plan.total_bytes == 196 and plan.copies == 2 and plan.memcpy == mode
        assert plan.run() == 196
        expected = np.zeros(4096, np.uint8)
        expected[2048:2088] = src[:40]
        expected[10:166] = src[100:]
        assert np.array_equal(dst, expected)


@pytest.mark.parametrize("src_off, dst_off, length, message", [
    (250, 0, 7, "reads past the end of src"),
    (0, 4090, 7, "writes past the end of dst"),
    (2**63, 0, 1, "reads past the end of src"),
], ids=["src", "dst", "offset-overflow"])
def test_copy_plan_refuses_copies_outside_the_buffers(src_off, dst_off, length, message):
    with pytest.raises(ValueError, match=message):
        _spead.CopyPlan(np.zeros(256, np.uint8), np.zeros(4096, np.uint8),
                        np.array([src_off], np.uint64), np.array([dst_off], np.uint64),
                        np.array([length], np.uint32))


def test_copy_plan_refuses_a_bad_copy_name_and_ragged_arrays():
    one = np.zeros(1, np.uint64)
    with pytest.raises(ValueError, match="memcpy"):
        _spead.CopyPlan(np.zeros(8, np.uint8), np.zeros(8, np.uint8), one, one,
                        np.zeros(1, np.uint32), memcpy="fast")
    with pytest.raises(ValueError, match="differ in length"):
        _spead.CopyPlan(np.zeros(8, np.uint8), np.zeros(8, np.uint8), one,
                        np.zeros(2, np.uint64), np.zeros(1, np.uint32))


@pytest.mark.parametrize("workload", ["W1", "W2", "W3"])
def test_copies_are_read_from_the_packets(workload):
    """One copy per packet, of its payload, to its heap's slot: every payload byte once."""
    w = WORKLOADS[workload]
    heaps = 3 * 64 + 5                              # a partial last chunk
    buf = memory.workload_buffer(workload, heaps)
    pool = PoolBlock(workload, count=2)
    src, dst, lengths, heap = payload_copies(workload, buf, pool)
    assert len(src) == heaps * w.packets_per_heap
    assert int(lengths.sum()) == heaps * w.heap_bytes
    assert np.array_equal(np.unique(heap), np.arange(heaps))
    # Every payload starts right after its packet's header, ends at the packet's end.
    assert np.all((src + lengths) % w.packet_size == 0)
    # Within one pool chunk no two copies overlap; chunks alternate over the pool.
    chunk = heap // 64
    for c in range(4):
        spans = np.sort(dst[chunk == c])
        assert np.all(np.diff(spans.astype(np.int64)) >= lengths[0])
        assert np.all(dst[chunk == c] // pool.stride == c % 2)


def test_copy_limit_leaves_the_heaps_in_place_and_is_checked():
    buf = memory.workload_buffer("W3", 2 * 64)
    limit = CopyLimit("W3", buf, "nontemporal")
    seconds, heaps = limit("W3", buf, verify=True)
    assert heaps == 128 and limit.copied == limit.payload_bytes == 128 * 65536
    assert seconds > 0
    limit.pool.block[12345] ^= 0xFF                 # one byte wrong: the check sees it
    with pytest.raises(memory.BenchError):
        limit.check()


def test_copy_limit_refuses_packets_not_of_the_workload():
    buf = memory.workload_buffer("W2", 64)
    pool = PoolBlock("W2", count=1)
    bad = buf.copy()
    bad[WORKLOADS["W2"].packet_size * 7] = 0        # the magic of packet 7
    with pytest.raises(CopyLimitError, match="header"):
        payload_copies("W2", bad, pool)
    with pytest.raises(CopyLimitError, match="whole packets"):
        payload_copies("W2", buf[:-1], pool)
    with pytest.raises(CopyLimitError):
        payload_copies("W1", buf, PoolBlock("W1", count=1))     # W2's packets as W1


def test_bench_memory_reports_the_copy_limit():
    proc = daqd("bench", "--workload", "W3", "--mode", "memory", "--runs", "2", "--heaps",
                "100", "--vs-spead2", "--json", "--quiet", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    limits = {c["receiver"]: c for c in report["memory_limits"]}
    assert set(limits) == {"nontemporal", "standard"}
    for c in limits.values():
        assert c["workload"] == "W3" and c["heaps"] == 100 and c["packets"] == 800
        assert c["payload_bytes"] == 100 * 65536       # exactly the workload's payload
        assert len(c["seconds"]) == 2
    fractions = report["ratios"]["memory_of_copy_limit"]["W3"]
    assert set(fractions) == {"daqd", "spead2"}
    for receiver in ("daqd", "spead2"):
        by = {m["receiver"]: m for m in report["memory"]}[receiver]
        assert fractions[receiver]["nontemporal"] == pytest.approx(
            by["heaps_per_s"] / limits["nontemporal"]["heaps_per_s"])
        assert fractions[receiver]["standard"] > 0


def test_bench_memory_table_has_the_limit_columns():
    proc = daqd("bench", "--workload", "W2", "--mode", "memory", "--runs", "1", "--heaps",
                "300", "--quiet", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("workload"))
    assert header.split()[-4:] == ["of", "copy", "of", "memcpy"]
    rows = [line.split() for line in lines if line.startswith("W2 ")]
    assert [row[1] for row in rows] == ["daqd", "copy", "memcpy"]
    assert rows[0][-2].endswith("%") and rows[0][-1].endswith("%")
    assert rows[1][-1] == "limit"


def test_no_limits():
    proc = daqd("bench", "--workload", "W2", "--mode", "memory", "--runs", "1", "--heaps",
                "300", "--no-limits", "--json", "--quiet", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["memory_limits"] == [] and report["ratios"]["memory_of_copy_limit"] == {}


# ----------------------------------------------------------------------
# The raw UDP receiver


def _receiver_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.network
@pytest.mark.parametrize("gro", [False, True])
def test_raw_receiver_counts_datagrams_and_gro_segments(gro):
    """Plain datagrams and GSO messages: every datagram counted once; a short one ends it."""
    rx = _receiver_socket()
    raw = _spead.RawUdpReceiver(rx, min_size=100, gro=gro)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.connect(rx.getsockname())
        for i in range(7):
            tx.send(bytes([i]) * 120)
        # One message of 5 datagrams of 100 bytes (UDP GSO), then the end marker.
        tx.sendmsg([b"x" * 500], [(socket.SOL_UDP, UDP_SEGMENT,
                                   (100).to_bytes(2, sys.byteorder))])
        tx.send(b"stop")
        tx.send(b"y" * 120)                         # after the end: not counted
        assert raw.run() == 12
        assert raw.ended and raw.nbytes == 7 * 120 + 500
        assert raw.gro == gro
        # Without GRO the kernel cuts the GSO message up: one message per datagram.
        assert raw.messages == (9 if gro else 13)
        assert raw.kernel_drops() == 0
    finally:
        tx.close()
        raw.close()


@pytest.mark.network
@pytest.mark.parametrize("gro", [False, True])
@pytest.mark.parametrize("memcpy", ["nontemporal", "standard"])
def test_raw_receiver_copies_each_payload(gro, memcpy):
    """With `dst`, the last `copy_bytes` of every counted datagram go to dst in turn, wrapping."""
    rx = _receiver_socket()
    dst = np.zeros(5 * 40, np.uint8)
    raw = _spead.RawUdpReceiver(rx, min_size=30, gro=gro, dst=dst, copy_bytes=40,
                                memcpy=memcpy)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.connect(rx.getsockname())
        for i in range(6):
            tx.send(bytes([0xA0 + i]) * 80 + bytes([i]) * 40)
        tx.send(b"s" * 35)                          # counted, shorter than a payload: no copy
        # One message of 5 datagrams of 100 bytes (UDP GSO), then the end marker.
        tx.sendmsg([b"".join(bytes([0x40 + k]) * 100 for k in range(5))],
                   [(socket.SOL_UDP, UDP_SEGMENT, (100).to_bytes(2, sys.byteorder))])
        tx.send(b"end")
        assert raw.run() == 12
        assert raw.copied == 11 * 40
        # dst slots in order of arrival: 0-4, then 5 -> 0; the GSO datagrams 1, 2, 3, 4, 0.
        want = [0x40 + 4, 0x40 + 0, 0x40 + 1, 0x40 + 2, 0x40 + 3]
        assert dst.reshape(5, 40).tolist() == [[v] * 40 for v in want]
    finally:
        tx.close()
        raw.close()


@pytest.mark.parametrize("options, what", [
    ({"copy_bytes": 0}, "copy_bytes=0"),
    ({"copy_bytes": 201}, "copy_bytes=201"),
    ({"copy_bytes": 8, "memcpy": "fast"}, "memcpy must be"),
])
def test_raw_receiver_copy_arguments_checked(options, what):
    rx = _receiver_socket()
    try:
        with pytest.raises(ValueError, match=what):
            _spead.RawUdpReceiver(rx, dst=np.zeros(200, np.uint8), **options)
    finally:
        rx.close()


@pytest.mark.network
def test_raw_receiver_stops_on_request():
    rx = _receiver_socket()
    raw = _spead.RawUdpReceiver(rx, min_size=100, timeout_ms=20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.connect(rx.getsockname())
        for _ in range(3):
            tx.send(b"z" * 200)
        stopper = threading.Timer(0.2, raw.stop)
        stopper.start()
        assert raw.run() == 3                       # bounded: returns at the stop
        stopper.join()
        assert not raw.ended
    finally:
        tx.close()
        raw.close()


@pytest.mark.network
@pytest.mark.parametrize("workload, gro", [("W2", True), ("W3", False)])
def test_raw_trial_counts_what_was_sent(workload, gro):
    """Paced slowly, the raw receiver counts exactly the datagrams the sender sent."""
    from daqd.tools.bench.udp import Sender, udp_trial

    per_heap = WORKLOADS[workload].packets_per_heap
    sender = Sender(None)
    try:
        t = udp_trial("raw", workload, sender, 20_000, 0.2, gro=gro)
    finally:
        sender.close()
    assert t.stopped_by == "stop heap" and t.receiver_gro == gro
    assert t.heaps_sent > 0 and t.packets_counted == t.heaps_sent * per_heap
    assert t.loss == 0.0 and t.heaps_present == t.heaps_sent      # (t.ok also needs timing)


@pytest.mark.network
def test_bench_udp_reports_the_socket_limit():
    proc = daqd("bench", "--workload", "W2", "--mode", "udp", "--trial-seconds", "0.1",
                "--steps", "0", "--cost-trials", "1", "--udp-runs", "1", "--loopback",
                "shared", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("W2 ")][:2] == ["daqd", "raw"]
    start = next(i for i, line in enumerate(lines) if line.startswith("Socket limit"))
    assert lines[start + 1].split() == ["workload", "raw", "daqd", "daqd/raw"]
    assert lines[start + 2].split()[0] == "W2"
    assert lines[start + 2].split()[-1].endswith("%") or "n/a" in lines[start + 2]


# ----------------------------------------------------------------------
# What the UDP trials say about the machine


def test_backlog_drops_and_run_delay_are_read():
    """The per-CPU backlog drop count and this process's run-queue wait, from /proc."""
    import time

    from daqd.tools.bench.machine import backlog_drops, run_delay_seconds

    cpus = sorted(os.sched_getaffinity(0))
    assert all(isinstance(backlog_drops(c), int) and backlog_drops(c) >= 0 for c in cpus)
    assert backlog_drops(10_000) is None                # no such CPU
    before = run_delay_seconds()
    assert before is not None and before >= 0
    t = time.process_time()
    while time.process_time() - t < 0.05:               # run: the wait can only grow
        pass
    assert run_delay_seconds() >= before


@pytest.mark.network
def test_raw_receiver_without_gro_beside_daqd_with_it():
    """--raw-gro off: the socket limit without GRO while daqd receives with it, one run."""
    proc = daqd("bench", "--workload", "W2", "--mode", "udp", "--trial-seconds", "0.1",
                "--steps", "0", "--cost-trials", "0", "--udp-runs", "1", "--loopback",
                "shared", "--raw-gro", "off", "--json", "--quiet", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [u["receiver"] for u in report["udp"]] == ["daqd", "raw-nogro"]
    daqd_trials, raw_trials = (u["trials"] for u in report["udp"])
    assert all(t["receiver_gro"] is False for t in raw_trials)
    assert all(t["packets_counted"] is not None for t in raw_trials)
    assert all(t["packets_counted"] is None for t in daqd_trials)
    assert set(report["ratios"]["udp_of_socket_limit_without_gro"]["W2"]) == {"daqd"}
    assert report["ratios"]["udp_of_socket_limit"] == {}
    # daqd's GRO is described from its own trials, not the raw receiver's.
    if all(t["receiver_gro"] for t in daqd_trials):
        assert report["daqd_gro"].startswith("with UDP GRO"), report["daqd_gro"]
    else:
        assert "refused" in report["daqd_gro"], report["daqd_gro"]


@pytest.mark.network
def test_raw_receiver_with_the_copy_beside_daqd():
    """--raw-copy: the socket limit with each payload copied, in the same searches."""
    proc = daqd("bench", "--workload", "W3", "--mode", "udp", "--trial-seconds", "0.1",
                "--steps", "0", "--cost-trials", "0", "--udp-runs", "1", "--loopback",
                "shared", "--raw-copy", "--json", "--quiet", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [u["receiver"] for u in report["udp"]] == ["daqd", "raw", "raw-copy"]
    daqd_trials, _, copy_trials = (u["trials"] for u in report["udp"])
    assert {t["receiver_gro"] for t in copy_trials} == {t["receiver_gro"] for t in daqd_trials}
    assert all(t["packets_counted"] is not None for t in copy_trials)
    assert set(report["ratios"]["udp_of_socket_copy_limit"]["W3"]) == {"daqd"}
    assert set(report["ratios"]["udp_of_socket_limit"]["W3"]) == {"daqd"}
    text = format_report(report_from_json(report))
    assert "raw-copy: recvmmsg on a socket set up as daqd's" in text


def test_bad_raw_gro_is_one_line():
    from cli_helpers import assert_one_line_error

    assert_one_line_error(daqd("bench", "--raw-gro", "sometimes"), "--raw-gro")
