"""``contiguous_only = false``: the real daemon records incomplete heaps as spead2 hands them out.

The same datagrams (heaps with packets lost, reordered and repeated,
`lossy_heaps.workload`) go to spead2 4.5.1 (``contiguous_only=False``,
``incomplete_keep_payload_ranges=True``) and, over loopback UDP, to ``daqd
run`` (heap mode, a write-ahead log, a text sink printing each record's
completeness, length, bytes received and payload ranges).  Read back from the
text file, the daemon's records must list the heaps spead2 gives, in its
order, with the same completeness and ranges; with the key's default (true)
only the complete ones, and no incomplete heap recorded.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    control,
    control_endpoint,
    daemon_toml,
    free_port,
    sinks_toml,
    udp_stream_toml,
    wait_until,
    write_config,
)
from lossy_heaps import heap, spead2_incomplete, workload

pytestmark = pytest.mark.network

TEMPLATE = "{cnt} {complete} {heap_length} {received_bytes} {payload_ranges}"


def read_records(tmp_path: Path) -> list[dict]:
    out = []
    for path in sorted((tmp_path / "data").glob("*.txt")):
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                assert line == "# cnt complete heap_length received_bytes payload_ranges"
                continue
            cnt, complete, length, received, ranges = line.split(" ")
            if complete == "1":
                assert (length, received, ranges) == ("-1", "-1", "null")
                out.append({"cnt": int(cnt), "complete": True})
            else:
                out.append({"cnt": int(cnt), "received": int(received), "length": int(length),
                            "payload_ranges": json.loads(ranges)})
    return out


@pytest.mark.parametrize(("contiguous_only", "allow_out_of_order"),
                         [(False, False), (False, True), (True, True)])
def test_daemon_records_the_heaps_spead2_hands_out(tmp_path, contiguous_only,
                                                   allow_out_of_order):
    # The lossy heaps, then complete ones that evict every heap still live; then one
    # more lossy heap, flushed when the daemon stops.
    first = workload() + [p for cnt in range(100, 104) for p in heap(cnt, [32, 32])]
    last = heap(200, [40] * 3, [0, 2])
    evicted = [r for r in spead2_incomplete(first, allow_out_of_order) if not r.get("complete")]
    expected = spead2_incomplete(first + last, allow_out_of_order)
    assert len(evicted) > 3 and expected[-1]["cnt"] == 200
    if contiguous_only:
        expected, evicted = [r for r in expected if r.get("complete")], []
    port = free_port()
    config = write_config(tmp_path, daemon_toml(tmp_path)
                          + udp_stream_toml("adc0", port, max_heaps=3,
                                            allow_out_of_order=allow_out_of_order,
                                            contiguous_only=contiguous_only)
                          + buffer_toml(kind="fifo", capacity=64, flush_count=4,
                                        wal=f"{tmp_path}/wal/{{stream}}.wal")
                          + sinks_toml(tmp_path, "text", template=TEMPLATE))
    endpoint = control_endpoint(tmp_path)

    def counters() -> dict[str, int]:
        return control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]

    def send(packets: list[bytes]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for datagram in packets:
                out.sendto(datagram, ("127.0.0.1", port))

    daemon = DaemonProcess(config)
    try:
        daemon.ready()
        send(first)
        wait_until(lambda: counters()["packets"] == len(first)
                   and counters()["incomplete_heaps_recorded"] == len(evicted),
                   what="every packet taken, the evicted heaps recorded")
        assert counters()["incomplete_heaps_evicted"] >= len(evicted)
        send(last)
        wait_until(lambda: counters()["packets"] == len(first) + len(last),
                   what="the last heap's packets taken")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert read_records(tmp_path) == expected
