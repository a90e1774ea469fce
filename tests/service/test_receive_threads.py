"""Several receive threads for one stream (``threads``, ``affinity``), in the real daemon.

One ``udp://`` source with ``threads = 2`` is two SO_REUSEPORT sockets on one
port, each with its own compiled stream and thread, all placing into the
stream's chunk group.  The kernel picks a socket per flow by the flow's hash,
so the test first finds two sender ports whose flows land on different
sockets: each sends one datagram that is not SPEAD (counted by the receiving
thread as ``packets_rejected``), read back from the per-thread counters of
the status.  Then two spead2 senders, one per flow, each send one substream
of known chunks, and one of them a stop heap: the HDF5 file must hold every
chunk complete, with the stream's counters the exact sums of its threads'.
A source's sockets are one for capture boundaries: one spead2 sender whose
one flow reaches only one socket closes the capture with its stop heap.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import (
    DaemonProcess,
    control,
    daemon_toml,
    free_port,
    toml_table,
    wait_until,
    write_config,
)

from daqd.config import parse
from daqd.service.daemon import Daemon
from daqd.service.metrics import SnapshotCollector

HPC = 8                 # heaps per chunk
STEP = 1024             # timestamp step
HEAP_BYTES = 1024
CHUNKS = 8
TIMESTAMP_ITEM = 0x1600
SUBSTREAM_ITEM = 0x4101
PAYLOAD_ITEM = 0x3300
THREAD_POOL = spead2.ThreadPool()
#: Sender ports tried until two flows land on different sockets (each: 1/2 chance).
PROBE_PORTS = 40


def payload(c: int, h: int, s: int) -> np.ndarray:
    """The bytes of heap (chunk `c`, heap `h`, substream `s`)."""
    return ((np.arange(HEAP_BYTES) * (2 * s + 1) + 7 * c + 13 * h + 1) % 251).astype(np.uint8)


def threads_toml(tmp: Path, port: int, **stream: Any) -> str:
    """A daemon with one chunk-mode stream of two substreams on `port`, HDF5 files."""
    return (daemon_toml(tmp)
            + toml_table("stream", array=True, name="adc0",
                         sources=[f"udp://127.0.0.1:{port}"], socket_buffer=4 << 20, **stream)
            # max_chunks: every chunk sent stays open until the stop heaps (no
            # eviction while one thread may lag the other).
            + toml_table("stream.chunk", timestamp_item=TIMESTAMP_ITEM, timestamp_step=STEP,
                         heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                         substream_item=SUBSTREAM_ITEM, substreams=2, max_chunks=CHUNKS,
                         pool=2 * CHUNKS + 4, eviction="lossy")
            + toml_table("stream.buffer", kind="fifo", capacity=32, flush_count=4,
                         flush_interval=0.2)
            + toml_table("stream.sinks", array=True, kind="hdf5",
                         path=f"{tmp}/data/{{stream}}-{{seq:04d}}.h5"))


def status(endpoint: str) -> dict[str, Any]:
    out: dict[str, Any] = control(endpoint, {"command": "status"})["streams"]["adc0"]
    return out


def thread_packets(endpoint: str, uri: str) -> list[int]:
    return [t["packets"] for t in status(endpoint)["sources"][uri]["threads"]]


def two_flows(endpoint: str, uri: str, port: int) -> tuple[list[socket.socket], list[int]]:
    """Two sender sockets whose flows the kernel gives to different receive threads.

    Returns them and the datagrams each thread was sent by the probes.
    """
    probes = [0, 0]
    found: dict[int, socket.socket] = {}
    tried = []
    for _ in range(PROBE_PORTS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        tried.append(sock)
        before = thread_packets(endpoint, uri)
        sock.sendto(b"not a SPEAD packet", ("127.0.0.1", port))
        total = sum(before) + 1
        wait_until(lambda total=total: sum(thread_packets(endpoint, uri)) == total,
                   what="the probe datagram counted")
        after = thread_packets(endpoint, uri)
        thread = next(i for i in range(2) if after[i] != before[i])
        probes[thread] += 1
        found.setdefault(thread, sock)
        if len(found) == 2:
            break
    for sock in tried:
        if sock not in found.values():
            sock.close()
    assert len(found) == 2, f"{PROBE_PORTS} flows all hashed to one socket"
    return [found[0], found[1]], probes


def send_substream(sock: socket.socket, port: int, s: int | list[int], *, data: bool = True,
                   end: bool = True) -> int:
    """Send every heap of substream `s` (or of each of a list) of the CHUNKS chunks from
    `sock` (unless not `data`), then a stop heap (if `end`).

    Returns the packets sent (one per heap: they fit one datagram).
    """
    stream = spead2.send.UdpStream(THREAD_POOL, sock, [("127.0.0.1", port)],
                                   spead2.send.StreamConfig(max_packet_size=9000, rate=20e6))
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    ig.add_item(TIMESTAMP_ITEM, "timestamp", "", shape=(), format=[("u", 48)])
    ig.add_item(SUBSTREAM_ITEM, "substream", "", shape=(), format=[("u", 48)])
    ig.add_item(PAYLOAD_ITEM, "payload", "", shape=(HEAP_BYTES,), dtype=np.uint8)
    subs = [s] if isinstance(s, int) else s
    for c in range(CHUNKS if data else 0):
        for h in range(HPC):
            for sub in subs:
                ig["timestamp"].value = (c * HPC + h) * STEP
                ig["substream"].value = sub
                ig["payload"].value = payload(c, h, sub)
                stream.send_heap(ig.get_heap(descriptors="none", data="all"))
    if end:
        stream.send_heap(ig.get_end())
    return (CHUNKS * HPC * len(subs) if data else 0) + end


def check_file(tmp_path: Path) -> None:
    """One HDF5 file holds the CHUNKS chunks, every heap present and its bytes right."""
    files = sorted((tmp_path / "data").glob("*.h5"))
    assert len(files) == 1
    with h5py.File(files[0]) as f:
        assert f["chunk_id"][:].tolist() == list(range(CHUNKS))
        assert f["present"][:].all()
        data = f["data"][:]
    for c in range(CHUNKS):
        for h in range(HPC):
            for s in range(2):
                assert np.array_equal(data[c, h, s], payload(c, h, s)), (c, h, s)


@pytest.mark.network
def test_two_threads_on_one_port_fill_every_chunk_and_count_exactly(tmp_path):
    port = free_port()
    uri = f"udp://127.0.0.1:{port}"
    daemon = DaemonProcess(write_config(tmp_path, threads_toml(tmp_path, port, threads=2)))
    try:
        endpoint = daemon.ready()["control"]
        senders, probes = two_flows(endpoint, uri, port)
        sent = [send_substream(sock, port, s, end=False) for s, sock in enumerate(senders)]
        wait_until(lambda: thread_packets(endpoint, uri) == [sent[i] + probes[i]
                                                             for i in range(2)],
                   timeout=30, what="every heap received")
        # One stop heap, on the second socket, closes the source's capture (the
        # source's sockets are one for capture boundaries): every chunk completed.
        sent[1] += send_substream(senders[1], port, 1, data=False)
        wait_until(lambda: status(endpoint)["counters"]["chunks_completed"] >= CHUNKS,
                   timeout=30, what="every chunk completed")
        stream = status(endpoint)
        counters, source = stream["counters"], stream["sources"][uri]
        per_thread = source["threads"]
        assert len(per_thread) == 2
        # Each socket received its flow and its probes, no more.
        assert [t["packets"] for t in per_thread] == [sent[i] + probes[i] for i in range(2)]
        assert [t["packets_rejected"] for t in per_thread] == probes
        assert [t["stop_heaps"] for t in per_thread] == [0, 1]
        # The source's and the stream's figures are the threads' sums.
        for name in ("packets", "bytes", "heaps", "batches", "packets_rejected"):
            assert source[name] == sum(t[name] for t in per_thread), name
        assert counters["packets"] == sum(sent) + sum(probes)
        assert counters["packets_rejected_bad_magic"] == sum(probes)
        assert counters["chunks_completed"] == CHUNKS
        assert counters["chunk_heaps_too_old"] == 0
        assert counters["packets_dropped_socket_buffer"] == 0
        for sock in senders:
            sock.close()
    finally:
        assert daemon.stop() == 0, "\n".join(daemon.lines[-20:])
    check_file(tmp_path)


@pytest.mark.network
def test_a_stop_heap_closes_the_capture_when_one_socket_has_every_flow(tmp_path):
    """One sender port: the kernel gives the one flow to one socket, the other gets nothing
    and never a stop heap; the source's capture still closes at the flow's stop heap."""
    port = free_port()
    uri = f"udp://127.0.0.1:{port}"
    daemon = DaemonProcess(write_config(tmp_path, threads_toml(tmp_path, port, threads=2)))
    try:
        endpoint = daemon.ready()["control"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sent = send_substream(sock, port, [0, 1])
            wait_until(lambda: status(endpoint)["counters"]["chunks_completed"] >= CHUNKS,
                       timeout=30, what="every chunk completed at the stop heap")
        stream = status(endpoint)
        per_thread = stream["sources"][uri]["threads"]
        assert sorted(t["packets"] for t in per_thread) == [0, sent]
        assert sorted(t["stop_heaps"] for t in per_thread) == [0, 1]
        counters = stream["counters"]
        assert counters["chunks_completed"] == CHUNKS
        assert counters["chunk_heaps_present"] == 2 * CHUNKS * HPC
        assert counters["chunk_heaps_too_old"] == 0
    finally:
        assert daemon.stop() == 0, "\n".join(daemon.lines[-20:])
    check_file(tmp_path)


@pytest.mark.network
def test_heap_mode_two_threads_make_every_heap_a_record(tmp_path):
    """Heap mode: each thread its own heap stream; every heap of both flows is a record."""
    port = free_port()
    uri = f"udp://127.0.0.1:{port}"
    text = (daemon_toml(tmp_path)
            + toml_table("stream", array=True, name="adc0", sources=[uri],
                         socket_buffer=4 << 20, threads=2)
            + toml_table("stream.buffer", kind="fifo", capacity=64, flush_count=8,
                         flush_interval=0.2)
            + toml_table("stream.sinks", array=True, kind="text",
                         path=f"{tmp_path}/data/{{stream}}-{{seq:04d}}.txt",
                         template="{cnt} {items[0x4101]} {items[0x1600]}", header=False))
    daemon = DaemonProcess(write_config(tmp_path, text))
    try:
        endpoint = daemon.ready()["control"]
        senders, probes = two_flows(endpoint, uri, port)
        sent = [send_substream(sock, port, s) for s, sock in enumerate(senders)]
        wait_until(lambda: status(endpoint)["counters"]["packets"] == sum(sent) + sum(probes),
                   timeout=30, what="every packet counted")
        per_thread = status(endpoint)["sources"][uri]["threads"]
        assert [t["packets"] for t in per_thread] == [sent[i] + probes[i] for i in range(2)]
        assert [t["stop_heaps"] for t in per_thread] == [1, 1]
        for sock in senders:
            sock.close()
    finally:
        assert daemon.stop() == 0, "\n".join(daemon.lines[-20:])
    # (Each stop heap is a capture boundary: the files may be more than one.)
    lines = [line for path in sorted((tmp_path / "data").glob("*.txt"))
             for line in path.read_text().split("\n")]
    records = sorted(tuple(int(x) for x in line.split()[1:]) for line in lines if line.strip())
    assert records == sorted((s, (c * HPC + h) * STEP) for s in range(2) for c in range(CHUNKS)
                             for h in range(HPC))


@pytest.mark.network
def test_every_receive_thread_has_a_heartbeat_and_its_cpu(tmp_path):
    """The watchdog's heartbeat names each receive thread; each runs on its CPU."""
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    affinity = [cpus[-1], cpus[0]]
    config = parse(threads_toml(tmp_path, port, threads=2, affinity=affinity),
                   str(tmp_path / "daqd.toml"))
    daemon = Daemon(config)
    daemon.start()
    try:
        names = [f"adc0:udp://127.0.0.1:{port}#{k}" for k in range(2)]
        wait_until(lambda: all(daemon.heartbeat().get(n, 0) > 0 for n in names),
                   what="both receive threads looping")
        runner = daemon.runners[0]
        threads = {t.name: t for t in runner.threads}
        assert [sorted(os.sched_getaffinity(threads[n].native_id)) for n in names] == \
            [[cpu] for cpu in affinity]
        first = daemon.heartbeat()
        wait_until(lambda: all(daemon.heartbeat()[n] > first[n] for n in names),
                   what="both heartbeats advancing with no packets")
    finally:
        daemon.shutdown()


# (the stream's keys, ``chunk.`` for [stream.chunk]'s; the source; what the one line names)
REFUSED = {
    "file-source": ({"threads": 2}, "file:/dev/null",
                    "stream[0].threads = 2: expected 1 for sources[0] = 'file:/dev/null'"),
    "tcp-source": ({"threads": 2}, "tcp://127.0.0.1:{port}",
                   "stream[0].threads = 2: expected 1 for sources[0] = 'tcp://"),
    "multicast-group": ({"threads": 2}, "udp://239.9.9.9:{port}",
                        "(every socket joined to a multicast group gets each datagram"),
    "lossless-eviction": ({"threads": 2}, "udp://127.0.0.1:{port}",
                          'stream[0].threads = 2: expected 1 with chunk.eviction = "lossless"'),
    "cpu-not-ours": ({"affinity": [max(os.sched_getaffinity(0)) + 1]}, "udp://127.0.0.1:{port}",
                     f"stream[0].affinity[0] = {max(os.sched_getaffinity(0)) + 1}: expected "
                     "a CPU this process may run on"),
    "more-cpus-than-threads": ({"affinity": [0, 0]}, "udp://127.0.0.1:{port}",
                               "stream[0].affinity = [0, 0]: expected at most 1 CPUs"),
    "stream-chunks-beyond-max-chunks": ({"chunk.stream_chunks": 5}, "udp://127.0.0.1:{port}",
                                        "stream[0].chunk.stream_chunks = 5: expected 0 or at "
                                        "most max_chunks (4)"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_validate_and_run_refuse_with_one_line(case, tmp_path):
    keys, source, named = REFUSED[case]
    port = free_port()
    chunk = {k.removeprefix("chunk."): v for k, v in keys.items() if k.startswith("chunk.")}
    stream = {k: v for k, v in keys.items() if not k.startswith("chunk.")}
    chunk.setdefault("eviction", "lossless" if case == "lossless-eviction" else "lossy")
    text = (daemon_toml(tmp_path)
            + toml_table("stream", array=True, name="adc0",
                         sources=[source.format(port=port)], **stream)
            + toml_table("stream.chunk", **chunk))
    config = write_config(tmp_path, text)
    for command in ("validate", "run"):
        assert_one_line_error(daqd(command, "--config", str(config)), named)


@pytest.mark.parametrize("keys", [{}, {"threads": 2}, {"threads": 2, "affinity": "cpus"}],
                         ids=["one", "two", "two-pinned"])
def test_validate_names_the_receive_threads(keys, tmp_path):
    """``daqd validate``'s line gives each stream's ``threads``, and ``affinity`` when set."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if keys.get("affinity"):
        keys = {**keys, "affinity": cpus}
    config = write_config(tmp_path, threads_toml(tmp_path, free_port(), **keys))
    checked = daqd("validate", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    threads = keys.get("threads", 1)
    pinned = f", affinity {cpus}" if "affinity" in keys else ""
    assert f": valid: adc0 (chunk mode, 1 source(s) x {threads} thread(s){pinned}, 1 sink(s)); " \
        in checked.stdout
    assert ("affinity" in checked.stdout) == bool(pinned)


def test_prometheus_has_each_threads_counters_beside_the_sums():
    snapshot = {"daemon": "d", "state": "running", "uptime": 1.0, "streams": {"adc0": {
        "counters": {"packets": 5},
        "sources": {"udp://127.0.0.1:7148": {"packets": 5, "threads": [{"packets": 2},
                                                                       {"packets": 3}]}}}}}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in SnapshotCollector(lambda: snapshot).collect()
               for s in family.samples}
    labels = (("daemon", "d"), ("source", "udp://127.0.0.1:7148"), ("stream", "adc0"))
    assert samples["daqd_source_packets_total", labels] == 5
    for k, n in enumerate((2, 3)):
        assert samples["daqd_source_thread_packets_total",
                       tuple(sorted((*labels, ("thread", str(k)))))] == n
