"""Partial heaps from a stranger cannot make the daemon hold their announced memory.

Eight heaps announcing 127 MiB each, every packet sent but each heap's last,
to a heap-mode daemon with the default keys: before the live-heap budget
(``max_live_heap_bytes``, default 64 MiB) they held about 1 GB of RSS until
newer heaps evicted them.  Now each is refused before anything is allocated,
its packets counted as ``packets_rejected_heap_over_budget``; eight of 40 MiB
each fit the budget one at a time, each evicting the one before.  Either way
the daemon's RSS stays within the budget of its baseline, and valid heaps sent
afterwards are written.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    daemon_toml,
    free_port,
    last_messages,
    sinks_toml,
    subscribed,
    toml_table,
    write_config,
)
from spead_packets import (
    HEAP_CNT_ID,
    HEAP_OFFSET_ID,
    HEAP_SIZE_ID,
    PAYLOAD_LENGTH_ID,
    header,
    imm,
    sim_packets,
)

pytestmark = pytest.mark.network

MIB = 1 << 20
PAYLOAD = 8192
HEAPS = 8
VALID_HEAPS = 10
BUDGET = 64 * MIB          # the default max_live_heap_bytes (tests/core checks it)


def vm_rss(pid: int) -> int:
    """The process's resident set size in bytes (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def udp_queued(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port`."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16)
    return 0


def partial_heap_packets(cnt: int, heap_size: int) -> list[bytes]:
    """Every packet of a heap announcing `heap_size` bytes but its last."""
    payload = bytes([cnt % 256]) * PAYLOAD
    head = header(4)
    fixed = struct.pack(">QQ", imm(HEAP_CNT_ID, cnt), imm(HEAP_SIZE_ID, heap_size))
    length = struct.pack(">Q", imm(PAYLOAD_LENGTH_ID, PAYLOAD))
    return [head + fixed + struct.pack(">Q", imm(HEAP_OFFSET_ID, offset)) + length + payload
            for offset in range(0, heap_size - PAYLOAD, PAYLOAD)]


def send_paced(sock: socket.socket, port: int, packets: list[bytes]) -> None:
    """Send `packets`, letting the daemon empty its socket between runs of them (losses
    would be counted, but the point is to have the daemon see the heaps)."""
    for i, data in enumerate(packets):
        sock.send(data)
        if i % 128 == 127:
            deadline = time.monotonic() + 5
            while udp_queued(port) > 2 * MIB and time.monotonic() < deadline:
                time.sleep(0.001)


@pytest.mark.parametrize("heap_size", [127 * MIB, 40 * MIB], ids=["127MiB", "40MiB"])
def test_partial_heaps_hold_no_more_than_the_budget(tmp_path, heap_size):
    port = free_port()
    config = (daemon_toml(tmp_path, interval=0.2)
              + toml_table("stream", array=True, name="adc0",
                           sources=[f"udp://127.0.0.1:{port}?gro=0"], socket_buffer=4 * MIB)
              + buffer_toml(kind="fifo", capacity=64, flush_count=4, flush_interval=0.5)
              + sinks_toml(tmp_path, "text", header=False))
    daemon = DaemonProcess(write_config(tmp_path, config))
    sub = None
    try:
        sub = subscribed(daemon.ready()["stats"])
        baseline = vm_rss(daemon.proc.pid)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.connect(("127.0.0.1", port))
            for cnt in range(1000, 1000 + HEAPS):
                packets = partial_heap_packets(cnt, heap_size)
                send_paced(out, port, packets)
                sent += len(packets)

            def seen_all(topic: str, m: dict) -> bool:
                c = m.get("counters", {})
                return topic == "stats.adc0" and \
                    c["packets"] + c["packets_dropped_socket_buffer"] == sent

            _, message = sub.until(seen_all, timeout=30)
            grown = vm_rss(daemon.proc.pid) - baseline
            counters = message["counters"]
            print(f"{sent} packets sent, {counters['packets']} received, RSS grew by "
                  f"{grown / MIB:.1f} MiB")
            assert grown < BUDGET + 64 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
            assert counters["packets"] > 0
            if heap_size > BUDGET:
                # Every packet that arrived was refused for the budget; no heap was live.
                assert counters["packets_rejected_heap_over_budget"] == counters["packets"]
                assert counters["heaps"] == counters["incomplete_heaps_evicted"] == 0
                assert message["gauges"]["live_heap_bytes"] == 0
            else:
                # One fits at a time: each new heap evicted the one before; the last is live.
                assert counters["packets_rejected_heap_over_budget"] == 0
                assert counters["heaps"] == counters["incomplete_heaps_evicted"] == HEAPS - 1
                assert message["gauges"]["live_heap_bytes"] == heap_size
            # Valid heaps after them are received and written.
            for data in sim_packets("W1", VALID_HEAPS):
                out.send(data)
        sub.until(lambda topic, m: topic == "stats.adc0"
                  and m["counters"]["heaps_complete"] == VALID_HEAPS, timeout=10)
        assert daemon.stop() == 0
        final = last_messages(sub)["stats.adc0"]
        assert final["buffer"]["records_flushed"] == VALID_HEAPS
        lines = [line for f in sorted((tmp_path / "data").glob("*.txt"))
                 for line in f.read_text().splitlines()]
        assert len(lines) == VALID_HEAPS
    finally:
        if sub is not None:
            sub.close()
        daemon.close()
