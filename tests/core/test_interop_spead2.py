"""daqd against spead2 4.5.1: the same bytes must give the same heaps.

spead2 is the reference decoder throughout (INTERFACES.md: "where the SPEAD
specification leaves a choice, daqd behaves as spead2 does").  Streams are
built with spead2's sender, or by ``daqd simulate``, and decoded by both;
heap lists are compared record for record (tests/spead2_helpers.py).

1. spead2-built streams decoded from bytes, from a file (``daqd dump``) and
   from pcap files in every supported framing.
2. Real loopback sockets in both directions (UDP, TCP) and ``daqd
   simulate`` pcap files replayed by both receivers.
3. Loss, reordering and duplication of datagrams, with the counters
   accounting for every packet.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_helpers as h
from spead_packets import expected_sim_heaps

from daqd import _spead
from daqd.recv.sources import open_source
from daqd.tools.dump import heap_record, receive_heaps

# spead2 logs every rejected packet; the tests look at results, not logs.
logging.getLogger("spead2").setLevel(logging.CRITICAL)

FLAVOURS = [40, 48]
TIMEOUT = 30.0


# --------------------------------------------------------------------------
# Streams built with spead2's sender


def build_item_group(address_bits: int) -> spead2.send.ItemGroup:
    """Items of several kinds: immediates, numpy arrays of several dtypes and shapes."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, address_bits))
    ig.add_item(0x1000, "timestamp", "an immediate the size of a heap address",
                shape=(), format=[("u", address_bits)], value=123456)
    ig.add_item(0x1001, "small", "a 16-bit signed immediate",
                shape=(), format=[("i", 16)], value=-5)
    ig.add_item(0x1002, "raw", "uint8 vector", shape=(100,), dtype=np.uint8,
                value=np.arange(100, dtype=np.uint8))
    ig.add_item(0x1003, "matrix", "little-endian int32 matrix", shape=(10, 7), dtype="<i4",
                value=np.arange(70, dtype="<i4").reshape(10, 7))
    ig.add_item(0x1004, "floats", "big-endian float64", shape=(5,), dtype=">f8",
                value=np.linspace(0, 1, 5))
    ig.add_item(0x1005, "cplx", "complex64", shape=(3, 4), dtype=np.complex64,
                value=(np.arange(12) + 1j * np.arange(12)).astype(np.complex64).reshape(3, 4))
    ig.add_item(0x1006, "fortran", "Fortran-order uint16", shape=(4, 3), dtype="<u2",
                order="F", value=np.asfortranarray(np.arange(12, dtype="<u2").reshape(4, 3)))
    ig.add_item(0x1007, "text", "variable-length string", shape=(None,), format=[("c", 8)],
                value="hello spead")
    ig.add_item(0x1008, "flags", "bool vector", shape=(9,), dtype=np.bool_,
                value=np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=bool))
    ig.add_item(0x1009, "big", "a multi-packet array", shape=(1500,), dtype="<u4",
                value=np.arange(1500, dtype="<u4") * 3)
    return ig


def build_heaps(address_bits: int, n_updates: int = 3) -> list:
    """start heap, descriptors + data, a few data-only updates, end heap."""
    ig = build_item_group(address_bits)
    heaps = [ig.get_start(), ig.get_heap(descriptors="all", data="all")]
    for i in range(n_updates):
        ig["timestamp"].value = 1000 + i
        ig["raw"].value = (np.arange(100, dtype=np.uint8) * (i + 2)).astype(np.uint8)
        ig["big"].value = np.arange(1500, dtype="<u4") * (i + 5)
        ig["text"].value = f"update {i}"
        heaps.append(ig.get_heap())
    heaps.append(ig.get_end())
    return heaps


def stream_bytes(address_bits: int, max_packet_size: int, repeat_pointers: bool) -> bytes:
    return h.spead2_stream_bytes(build_heaps(address_bits), max_packet_size=max_packet_size,
                                 repeat_pointers=repeat_pointers)


STREAM_CASES = [
    pytest.param(bits, mps, rp, id=f"flavour{bits}-mps{mps}-{'repeat' if rp else 'once'}")
    for bits in FLAVOURS
    for mps, rp in [(9000, False), (1472, False), (400, True), (256, False)]
]


def assert_reference(records: list[dict]) -> None:
    """Sanity of the reference itself: the stream built above, all complete."""
    assert records, "spead2 decoded nothing"
    assert records[0]["start"]
    assert all(r["complete"] for r in records)
    assert any(r["descriptors"] for r in records)


@pytest.mark.parametrize("address_bits, max_packet_size, repeat_pointers", STREAM_CASES)
def test_spead2_stream_from_bytes(address_bits, max_packet_size, repeat_pointers):
    data = stream_bytes(address_bits, max_packet_size, repeat_pointers)
    expected, stats = h.spead2_decode_bytes(data)
    assert_reference(expected)
    got, counters, heaps = h.daqd_decode_bytes(data)
    assert got == expected
    n_packets = len(h.split_packets(data))
    assert counters["packets"] == n_packets
    assert counters["bytes"] == len(data)
    assert counters["stop_heaps"] == 1
    assert h.rejected_total(counters) == 0
    assert counters["stream_bytes_skipped"] == 0
    for name in ("packets", "heaps", "incomplete_heaps_evicted", "incomplete_heaps_flushed",
                 "single_packet_heaps"):
        assert counters[name] == stats[name], name
    # every heap is in the flavour it was sent in
    assert {heap.address_bits for heap in heaps} == {address_bits}


@pytest.mark.parametrize("address_bits, max_packet_size, repeat_pointers", STREAM_CASES)
def test_spead2_stream_as_datagrams(address_bits, max_packet_size, repeat_pointers):
    packets = h.split_packets(stream_bytes(address_bits, max_packet_size, repeat_pointers))
    expected, _ = h.spead2_decode_packets(packets)
    assert_reference(expected)
    got, counters, heaps = h.daqd_decode_packets(packets)
    assert got == expected
    assert counters["packets"] == len(packets)
    assert sum(x.n_packets for x in heaps) + 1 == len(packets)   # + the stop heap


@pytest.mark.parametrize("address_bits", FLAVOURS)
def test_heap_record_matches_spead2(address_bits):
    data = stream_bytes(address_bits, 512, False)
    expected, _ = h.spead2_decode_bytes(data)
    stream = h.daqd_stream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    got = [h.dump_record(json.loads(json.dumps(heap_record(x)))) for x in heaps]
    assert got == [h.dump_view(r) for r in expected]


def run_daqd(*args: str, timeout: float = TIMEOUT, stdin: bytes | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daqd", *args], input=stdin,
                          capture_output=True, timeout=timeout, check=False)


def parse_dump(proc: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    assert proc.returncode == 0, proc.stderr.decode()
    records = [h.dump_record(json.loads(line)) for line in proc.stdout.decode().splitlines()
               if line.strip()]
    summary = [json.loads(line) for line in proc.stderr.decode().splitlines()
               if line.startswith("{")]
    assert summary, proc.stderr.decode()
    return records, summary[-1]["counters"]


@pytest.mark.parametrize("address_bits", FLAVOURS)
def test_dump_file_matches_spead2(tmp_path, address_bits):
    data = stream_bytes(address_bits, 700, address_bits == 48)
    path = tmp_path / "stream.spead"
    path.write_bytes(data)
    expected, _ = h.spead2_decode_bytes(data)
    records, counters = parse_dump(run_daqd("dump", f"file:{path}", "--incomplete"))
    assert records == [h.dump_view(r) for r in expected]
    assert counters["packets"] == len(h.split_packets(data))
    assert counters["stop_heaps"] == 1


def test_dump_stdin_matches_spead2():
    data = stream_bytes(48, 1000, False)
    expected, _ = h.spead2_decode_bytes(data)
    records, _ = parse_dump(run_daqd("dump", "file:-", "--incomplete", stdin=data))
    assert records == [h.dump_view(r) for r in expected]


# --------------------------------------------------------------------------
# pcap files

PCAP_PORT = 7148
LINKS = {
    "ethernet": (h.LINKTYPE_ETHERNET, False),
    "ethernet-vlan": (h.LINKTYPE_ETHERNET, True),
    "sll": (h.LINKTYPE_LINUX_SLL, False),
    "sll2": (h.LINKTYPE_LINUX_SLL2, False),
}


def junk_frames(linktype: int, vlan: bool, spead_packet: bytes) -> dict[str, list[bytes]]:
    """Frames the pcap reader must skip, by the counter they belong to."""
    arp = bytes(28)
    tcp = h.ipv4_packet(bytes(20) + spead_packet, proto=6)
    udp = h.udp_datagram(spead_packet, PCAP_PORT)
    more_fragments = h.ipv4_packet(udp, proto=17, flags_frag=0x2000, ident=7)
    later_fragment = h.ipv4_packet(udp, proto=17, flags_frag=0x0010, ident=7)
    return {
        "pcap_frames_skipped_not_udp": [
            h.link_frame(arp, linktype, vlan=vlan, ethertype=0x0806),
            h.link_frame(tcp, linktype, vlan=vlan),
        ],
        "pcap_frames_skipped_fragment": [
            h.link_frame(more_fragments, linktype, vlan=vlan),
            h.link_frame(later_fragment, linktype, vlan=vlan),
        ],
    }


def pcap_frames(packets: list[bytes], linktype: int, vlan: bool, *, junk: bool,
                other_port: list[bytes] = ()) -> tuple[list[bytes], dict[str, int]]:
    """SPEAD packets framed for the pcap file, with junk interleaved."""
    frames = [h.link_frame(h.ipv4_udp(p, PCAP_PORT), linktype, vlan=vlan) for p in packets]
    counts = {"pcap_frames_skipped_not_udp": 0, "pcap_frames_skipped_fragment": 0,
              "pcap_frames_skipped_port": 0}
    if junk:
        bad = junk_frames(linktype, vlan, packets[len(packets) // 2])
        for name, extra in bad.items():
            for i, frame in enumerate(extra):
                frames.insert(1 + (3 * i + 2 * len(name)) % len(frames), frame)
                counts[name] += 1
    for i, p in enumerate(other_port):
        frame = h.link_frame(h.ipv4_udp(p, PCAP_PORT + 1), linktype, vlan=vlan)
        frames.insert((5 * i + 1) % len(frames), frame)
        counts["pcap_frames_skipped_port"] += 1
    return frames, counts


def foreign_packets() -> list[bytes]:
    """SPEAD packets of another stream (other heap counters, other payloads)."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(0x4000, "noise", "", shape=(300,), dtype=np.uint8,
                value=np.full(300, 0xEE, np.uint8))
    stream = spead2.send.BytesStream(h.THREAD_POOL,
                                     spead2.send.StreamConfig(max_packet_size=200))
    for cnt in (100, 101, 2, 3):     # 2 and 3 collide with the real stream's counters
        stream.send_heap(ig.get_heap(descriptors="all", data="all"), cnt)
    return h.split_packets(stream.getvalue())


@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["us", "ns"])
def test_pcap_framings(tmp_path, link, big_endian, nanosecond):
    linktype, vlan = LINKS[link]
    packets = h.split_packets(stream_bytes(40 if big_endian else 48, 600, False))
    expected, _ = h.spead2_decode_packets(packets)
    assert_reference(expected)
    frames, counts = pcap_frames(packets, linktype, vlan, junk=True)
    data = h.pcap_bytes(frames, linktype=linktype, big_endian=big_endian,
                        nanosecond=nanosecond)
    stream = h.daqd_stream()
    heaps = stream.run(_spead.PcapReader(data))
    assert [h.daqd_record(x) for x in heaps] == expected
    counters = stream.stats()
    for name, value in counts.items():
        assert counters[name] == value, name
    assert counters["pcap_records_truncated"] == 0
    assert counters["packets"] == len(packets)
    assert h.rejected_total(counters) == 0

    # The same file through a pcap: URI.
    path = tmp_path / "capture.pcap"
    path.write_bytes(data)
    got, _ = h.daqd_decode_uri(f"pcap:{path}")
    assert got == expected


@pytest.mark.parametrize("link", ["ethernet", "sll"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["us", "ns"])
def test_pcap_port_filter_against_spead2_pcap_reader(tmp_path, link, big_endian, nanosecond):
    """spead2's own pcap reader (Ethernet and SLL only) and daqd ?port= agree."""
    linktype, vlan = LINKS[link]
    packets = h.split_packets(stream_bytes(48, 500, True))
    expected, _ = h.spead2_decode_packets(packets)
    frames, counts = pcap_frames(packets, linktype, vlan, junk=True,
                                 other_port=foreign_packets())
    path = tmp_path / "capture.pcap"
    h.write_pcap(path, frames, linktype=linktype, big_endian=big_endian,
                 nanosecond=nanosecond)

    reference = h.make_spead2_stream()
    reference.add_udp_pcap_file_reader(str(path), f"udp dst port {PCAP_PORT}")
    assert h.collect_spead2(reference) == expected

    got, counters = h.daqd_decode_uri(f"pcap:{path}?port={PCAP_PORT}")
    assert got == expected
    for name, value in counts.items():
        assert counters[name] == value, name
    assert counters["pcap_frames_skipped_port"] > 0

    records, dumped = parse_dump(run_daqd("dump", f"pcap:{path}?port={PCAP_PORT}",
                                          "--incomplete"))
    assert records == [h.dump_view(r) for r in expected]
    for name, value in counts.items():
        assert dumped[name] == value, name


def test_pcap_without_port_filter_takes_every_port(tmp_path):
    """Without ?port= the foreign stream is decoded too, exactly as spead2 does."""
    packets = h.split_packets(stream_bytes(48, 500, False))
    foreign = foreign_packets()
    frames, _ = pcap_frames(packets, h.LINKTYPE_ETHERNET, False, junk=False,
                            other_port=foreign)
    path = tmp_path / "capture.pcap"
    h.write_pcap(path, frames)
    # The payloads in file order are what any UDP receiver would have seen.
    order = [f[14 + 28:] for f in frames]
    expected, _ = h.spead2_decode_packets(order, max_heaps=8)
    reference = h.make_spead2_stream(max_heaps=8)
    reference.add_udp_pcap_file_reader(str(path))
    assert h.collect_spead2(reference) == expected
    stream = h.daqd_stream(max_heaps=8)
    assert [h.daqd_record(x) for x in stream.run(_spead.PcapReader(path.read_bytes()))] \
        == expected
    assert stream.stats()["pcap_frames_skipped_port"] == 0


# --------------------------------------------------------------------------
# Loopback sockets


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaqdReceiver:
    """daqd receiving from a source URI in a thread, bounded by a deadline."""

    def __init__(self, uri: str, timeout: float = TIMEOUT, **stream_kwargs):
        self.source = open_source(uri)
        self.stream = h.daqd_stream(**stream_kwargs)
        self.heaps: list = []
        self.error: BaseException | None = None
        self.deadline = time.monotonic() + timeout
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for heap in receive_heaps(self.source, self.stream,
                                      lambda: time.monotonic() > self.deadline):
                self.heaps.append(heap)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.source.close()

    def join(self) -> list[dict]:
        self.thread.join(max(0.0, self.deadline - time.monotonic()) + 5)
        assert not self.thread.is_alive(), "daqd receiver did not finish"
        if self.error is not None:
            raise self.error
        assert time.monotonic() <= self.deadline, "daqd receiver hit its deadline"
        return [h.daqd_record(x) for x in self.heaps]


@pytest.mark.network
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("address_bits", FLAVOURS)
def test_spead2_sender_to_daqd(address_bits, transport):
    packet_size = 1472 if transport == "udp" else 8000
    heaps = build_heaps(address_bits, n_updates=20)
    expected, _ = h.spead2_decode_bytes(h.spead2_stream_bytes(build_heaps(address_bits, 20),
                                                              max_packet_size=packet_size))
    if transport == "udp":
        port = free_port(socket.SOCK_DGRAM)
        config = spead2.send.StreamConfig(max_packet_size=packet_size, rate=20e6)
        stream_class = spead2.send.UdpStream
    else:
        port = free_port(socket.SOCK_STREAM)
        config = spead2.send.StreamConfig(max_packet_size=packet_size)
        stream_class = spead2.send.TcpStream
    receiver = DaqdReceiver(f"{transport}://127.0.0.1:{port}")
    sender = stream_class(h.THREAD_POOL, [("127.0.0.1", port)], config)
    for heap in heaps:
        sender.send_heap(heap)
    got = receiver.join()
    del sender
    assert got == expected
    counters = receiver.stream.stats()
    assert counters["stop_heaps"] == 1
    assert h.rejected_total(counters) == 0
    assert counters["stream_bytes_skipped"] == 0


def simulate(target: str, workload: str, heaps: int, *extra: str) -> dict:
    proc = run_daqd("simulate", target, "--workload", workload, "--heaps", str(heaps), *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stderr.decode().strip().splitlines()[-1])


@pytest.mark.network
@pytest.mark.parametrize("workload, n", [("W1", 300), ("W3", 60)])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_daqd_simulate_to_spead2(workload, n, transport):
    stream = spead2.recv.Stream(
        h.THREAD_POOL,
        spead2.recv.StreamConfig(max_heaps=4),
        spead2.recv.RingStreamConfig(heaps=64, contiguous_only=False),
    )
    if transport == "udp":
        port = free_port(socket.SOCK_DGRAM)
        stream.add_udp_reader(port, max_size=9200, buffer_size=16 << 20,
                              bind_hostname="127.0.0.1")
    else:
        port = free_port(socket.SOCK_STREAM)
        stream.add_tcp_reader(port, max_size=9200, bind_hostname="127.0.0.1")
    received = h.start_collecting_spead2(stream, timeout=TIMEOUT)
    sent = simulate(f"{transport}://127.0.0.1:{port}", workload, n, "--rate", "50e6")
    records = received()
    assert sent["send_dropped"] == 0
    assert records == expected_sim_heaps(workload, n)


@pytest.mark.parametrize("workload, n", [("W1", 100), ("W2", 50), ("W3", 20)])
def test_daqd_simulate_pcap_replayed_by_both(tmp_path, workload, n):
    path = tmp_path / f"{workload}.pcap"
    simulate(str(path), workload, n, "--port", "9123")
    expected = expected_sim_heaps(workload, n)

    reference = h.make_spead2_stream()
    reference.add_udp_pcap_file_reader(str(path), "udp dst port 9123")
    assert h.collect_spead2(reference) == expected

    stream = h.daqd_stream()
    got = [h.daqd_record(x) for x in stream.run(_spead.PcapReader(path.read_bytes(), port=9123))]
    assert got == expected
    assert stream.stats()["stop_heaps"] == 1

    records, counters = parse_dump(run_daqd("dump", f"pcap:{path}"))
    assert records == [h.dump_view(r) for r in expected]
    assert counters["heaps_complete"] == n


def test_daqd_simulate_file_decoded_by_both(tmp_path):
    path = tmp_path / "w3.spead"
    simulate(f"file:{path}", "W3", 10)
    data = path.read_bytes()
    expected, _ = h.spead2_decode_bytes(data)
    assert expected == expected_sim_heaps("W3", 10)
    got, _, _ = h.daqd_decode_bytes(data)
    assert got == expected


# --------------------------------------------------------------------------
# Loss, reordering and duplication


def impaired_source() -> list[bytes]:
    """Multi-packet heaps (spead2 sender) as datagrams, ending with a stop heap."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(0x2000, "timestamp", "", shape=(), format=[("u", 48)])
    ig.add_item(0x2001, "data", "", shape=(400,), dtype="<u4")
    heaps = []
    for i in range(12):
        ig["timestamp"].value = i
        ig["data"].value = np.arange(400, dtype="<u4") * (i + 1)
        heaps.append(ig.get_heap(descriptors="all" if i == 0 else "none"))
    heaps.append(ig.get_end())
    packets = h.split_packets(h.spead2_stream_bytes(heaps, max_packet_size=300))
    assert len(h.split_packets(h.spead2_stream_bytes([ig.get_end()], max_packet_size=300))) == 1
    return packets


def impair(packets: list[bytes], kind: str, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = list(packets)
    if kind in ("drop", "mixed"):
        out = [p for p in out if rng.random() > 0.12]
    if kind in ("dup", "mixed"):
        dup = []
        for p in out:
            dup.append(p)
            if rng.random() < 0.15:
                dup.append(p)                   # the usual network duplicate
        if kind == "mixed":
            for _ in range(3):                  # and a few late ones
                dup.insert(rng.randrange(len(dup)), rng.choice(out))
        out = dup
    if kind in ("shuffle", "mixed"):
        window = 4
        shuffled = []
        for i in range(0, len(out), window):
            chunk = out[i:i + window]
            rng.shuffle(chunk)
            shuffled.extend(chunk)
        out = shuffled
    return out


IMPAIRMENTS = ["drop", "shuffle", "dup", "mixed"]


@pytest.mark.parametrize("max_heaps", [1, 3, 8])
@pytest.mark.parametrize("allow_out_of_order", [False, True], ids=["in-order", "out-of-order"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", IMPAIRMENTS)
def test_impaired_datagrams_match_spead2(kind, seed, allow_out_of_order, max_heaps):
    """The heaps are spead2's, and daqd's counters account for every packet."""
    packets = impair(impaired_source(), kind, seed)
    expected, _ = h.spead2_decode_packets(packets, max_heaps=max_heaps,
                                          allow_out_of_order=allow_out_of_order)
    got, counters, heaps = h.daqd_decode_packets(packets, max_heaps=max_heaps,
                                                 allow_out_of_order=allow_out_of_order)
    assert got == expected
    accepted = sum(x.n_packets for x in heaps) + counters["stop_heaps"]   # 1-packet stop heap
    assert counters["packets"] == accepted + h.rejected_total(counters)
    assert counters["packets"] + counters["packets_rejected_after_stop"] == len(packets)
    assert counters["heaps"] == len(heaps)
    assert counters["heaps"] == (counters["heaps_complete"] + counters["incomplete_heaps_evicted"]
                                 + counters["incomplete_heaps_flushed"])
    assert counters["heaps_complete"] == sum(x.complete for x in heaps)
    assert counters["payload_bytes"] == sum(x.received for x in heaps) + \
        (1 if counters["stop_heaps"] else 0)
    if kind == "dup":
        assert counters["packets_rejected_duplicate"] > 0
    if kind == "shuffle":
        if allow_out_of_order:
            assert counters["packets_rejected_out_of_order"] == 0
            if max_heaps > 1:       # windows of 4 packets never span 3 heaps
                assert counters["heaps_complete"] == 12
        else:
            assert counters["packets_rejected_out_of_order"] > 0
    if kind == "drop" and max_heaps > 1:
        assert counters["incomplete_heaps_evicted"] + counters["incomplete_heaps_flushed"] > 0


@pytest.mark.parametrize("max_heaps", [1, 3, 8])
@pytest.mark.parametrize("allow_out_of_order", [False, True], ids=["in-order", "out-of-order"])
@pytest.mark.parametrize("kind", IMPAIRMENTS)
def test_impaired_datagrams_counters_match_spead2_stats(kind, allow_out_of_order, max_heaps):
    """The counters daqd shares with spead2 (INTERFACES.md) have the same values."""
    packets = impair(impaired_source(), kind, 0)
    _, stats = h.spead2_decode_packets(packets, max_heaps=max_heaps,
                                       allow_out_of_order=allow_out_of_order)
    _, counters, _ = h.daqd_decode_packets(packets, max_heaps=max_heaps,
                                           allow_out_of_order=allow_out_of_order)
    names = ("packets", "heaps", "incomplete_heaps_evicted", "incomplete_heaps_flushed",
             "single_packet_heaps")
    assert {n: counters[n] for n in names} == {n: stats[n] for n in names}


# Minimal reproductions: one heap of three packets (8 + 16 + 6 payload bytes).

def three_packet_heaps() -> list[bytes]:
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    ig.add_item(0x2001, "d", "", shape=(30,), dtype="u1")
    heaps = []
    for i in range(2):
        ig["d"].value = np.arange(30, dtype="u1") + i
        heaps.append(ig.get_heap(descriptors="none"))
    packets = h.split_packets(h.spead2_stream_bytes(heaps, max_packet_size=58))
    assert [h.packet_fields(p)["offset"] for p in packets[:3]] == [0, 8, 24]
    return packets


@pytest.mark.parametrize("order", [[0, 2], [1, 0, 2], [0, 2, 1], [1, 2]],
                         ids=["gap", "second-first", "third-before-second", "no-first"])
@pytest.mark.parametrize("allow_out_of_order", [False, True], ids=["in-order", "out-of-order"])
def test_minimal_in_order_rules(order, allow_out_of_order):
    p = three_packet_heaps()
    packets = [p[i] for i in order]
    expected, _ = h.spead2_decode_packets(packets, allow_out_of_order=allow_out_of_order)
    got, _, _ = h.daqd_decode_packets(packets, allow_out_of_order=allow_out_of_order)
    assert got == expected


@pytest.mark.parametrize("allow_out_of_order", [False, True], ids=["in-order", "out-of-order"])
def test_minimal_late_packet_after_eviction(allow_out_of_order):
    """max_heaps=1: heap 1's later packets arrive after heap 2 evicted it."""
    p = three_packet_heaps()
    packets = [p[0], p[3], p[1], p[2]]
    expected, _ = h.spead2_decode_packets(packets, max_heaps=1,
                                          allow_out_of_order=allow_out_of_order)
    got, _, _ = h.daqd_decode_packets(packets, max_heaps=1,
                                      allow_out_of_order=allow_out_of_order)
    assert got == expected


def test_minimal_duplicate_after_completion():
    """A late duplicate of a completed heap's last packet.

    Out of order it starts a new (incomplete) heap in both; in order it cannot
    start a heap (offset != 0), so both drop it.
    """
    p = three_packet_heaps()
    packets = [p[0], p[1], p[2], p[2], p[3], p[4], p[5]]
    for ooo in (False, True):
        expected, _ = h.spead2_decode_packets(packets, allow_out_of_order=ooo)
        got, counters, _ = h.daqd_decode_packets(packets, allow_out_of_order=ooo)
        assert got == expected
        assert [r["complete"] for r in got].count(False) == (1 if ooo else 0)
        if not ooo:
            assert counters["packets_rejected_out_of_order"] == 1
