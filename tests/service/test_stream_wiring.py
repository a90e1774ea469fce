"""The wiring of one stream: what the issue "one data path" found (the first two through
the real daemon).

- ``[stream.chunk] eviction = "lossy"`` reaches the chunk group: two sources
  in one group, the second silent, and chunks keep completing while the
  daemon runs (it used to stall after ``max_chunks`` chunks, lossless).
- A ``pcap:`` source's ``port=`` is the port a pcap sink writes in its frames
  (it used to write 7148, from a second parse of the URI).
- With packet presence a chunk's ``fraction_present`` counts heap slots, as
  ``heaps_present / heaps`` on the same text line does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_helpers import (
    DaemonProcess,
    W1Sender,
    control,
    free_port,
    wait_until,
    write_config,
)
from spead2_helpers import collect_spead2, make_spead2_stream

from daqd.pipeline.records import ChunkRecord
from daqd.sinks.text import chunk_fields

HEAPS_PER_CHUNK = 64


def two_source_config(tmp: Path, ports: tuple[int, int], eviction: str) -> str:
    return f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"

[zmq]
stats = ""
control = "ipc://{tmp}/control/daqd.sock"

[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:{ports[0]}", "udp://127.0.0.1:{ports[1]}"]
socket_buffer = 16777216

[stream.chunk]
heaps_per_chunk = {HEAPS_PER_CHUNK}
max_chunks = 4
pool = 16
eviction = "{eviction}"

[stream.buffer]
kind = "fifo"
flush_count = 1

[[stream.sinks]]
kind = "text"
path = "{tmp}/data/{{stream}}.txt"
"""


@pytest.mark.network
def test_lossy_group_with_a_silent_source_keeps_completing_chunks(tmp_path):
    """40 chunks to the first source, none to the second: all but the open window complete."""
    ports = (free_port(), free_port())
    chunks = 40
    daemon = DaemonProcess(write_config(tmp_path, two_source_config(tmp_path, ports, "lossy")))
    sender = W1Sender(ports[0], chunks * HEAPS_PER_CHUNK)
    try:
        ready = daemon.ready()

        def counters() -> dict[str, int]:
            reply = control(ready["control"], {"command": "status"})
            return reply["streams"]["adc0"]["counters"]

        for i in range(chunks):
            sender.send(HEAPS_PER_CHUNK)
            if i % 4 == 3:      # paced: the socket buffer never overflows
                wait_until(lambda i=i: counters()["packets"] >= (i + 1) * HEAPS_PER_CHUNK)
        # The last max_chunks chunks stay open until something newer comes.
        wait_until(lambda: counters()["chunks_completed"] >= chunks - 4, timeout=20,
                   what="chunks completed while running")
        running = counters()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        sender.close()
        daemon.close()
    assert running["packets"] == chunks * HEAPS_PER_CHUNK
    assert running["chunk_heaps_placed"] == chunks * HEAPS_PER_CHUNK
    lines = (tmp_path / "data" / "adc0.txt").read_text().splitlines()[1:]
    assert [int(line.split()[0]) for line in lines] == list(range(chunks))


@pytest.mark.network
def test_pcap_sink_writes_the_port_of_a_pcap_source(tmp_path):
    """Replaying ``pcap:in.pcap?port=7200`` into a pcap sink keeps UDP port 7200."""
    heaps = 2 * HEAPS_PER_CHUNK
    source = tmp_path / "in.pcap"
    subprocess.run([sys.executable, "-m", "daqd", "simulate", str(source), "--workload", "W1",
                    "--heaps", str(heaps), "--port", "7200"], check=True, timeout=60)
    cfg = write_config(tmp_path, f"""
[daemon]
pidfile = "{tmp_path}/run/daqd.pid"

[zmq]
stats = ""
control = ""

[[stream]]
name = "replay"
sources = ["pcap:{source}?port=7200"]

[stream.chunk]
heaps_per_chunk = {HEAPS_PER_CHUNK}

[[stream.sinks]]
kind = "pcap"
path = "{tmp_path}/out/{{stream}}.pcap"
""")
    daemon = DaemonProcess(cfg)
    try:
        assert daemon.wait() == 0           # a finite source: the daemon ends with it
    finally:
        daemon.close()
    out = str(tmp_path / "out" / "replay.pcap")
    reference = make_spead2_stream(max_heaps=8)
    reference.add_udp_pcap_file_reader(out, "udp dst port 7200")
    replayed = collect_spead2(reference)
    assert len([h for h in replayed if h["complete"]]) == heaps


def test_fraction_present_counts_heap_slots_with_packet_presence():
    """One lost packet of 512 (64 heaps of 8 packets): 63/64 of the slots, as heaps_present."""
    present = np.ones((HEAPS_PER_CHUNK, 1, 8), np.uint8)
    present[5, 0, 3] = 0
    record = ChunkRecord(0, 0, np.zeros((HEAPS_PER_CHUNK, 1, 65536), np.uint8), present)
    fields = chunk_fields(record)
    assert (fields["heaps_present"], fields["heaps"]) == (63, 64)
    assert fields["fraction_present"] == pytest.approx(63 / 64)
    assert record.fraction_present == fields["heaps_present"] / fields["heaps"]


def test_unsized_packets_are_counted_by_the_daemon_and_do_not_disturb_placement(tmp_path):
    """A second angle on packets_rejected_unsized (tests/core/test_chunk_placement.py feeds
    a ChunkStream directly): the real daemon, chunk mode, UDP.  Packets without HEAP_SIZE,
    sent between W1's, are counted in the status and the statistics, and every W1 heap is
    still placed."""
    from daemon_helpers import W1Sender, chunk_daemon, control, wait_until
    from spead_packets import imm, packet

    unsized = [packet(900 + i, bytes(64), items=[imm(0x1600, 8192 * i)], with_size=False)
               for i in range(25)]
    with chunk_daemon(tmp_path) as (daemon, ready, port):
        endpoint = ready["control"]
        sender = W1Sender(port, heaps=64)
        try:
            sender.send(32)
            for p in unsized:
                sender.sock.send(p)
            sender.send(32)
        finally:
            sender.close()

        def counters():
            return control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]

        wait_until(lambda: counters()["packets"] == 64 + len(unsized), 20, "every packet read")
        got = counters()
        assert daemon.stop() == 0
    assert got["packets_rejected_unsized"] == len(unsized)
    assert got["chunk_heaps_placed"] == 64
