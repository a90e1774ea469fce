"""Robustness: malformed, hostile and cut-off input is counted, never crashes or hangs.

Every packet that is not used must be counted under its reason, and decoding
of what follows must carry on.  Memory must stay bounded by max_heap_size
whatever a packet announces.  A hypothesis property test throws random and
mutated input at both the datagram and the byte-stream paths and compares
datagram decoding with spead2.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import spead_packets as sp  # noqa: E402

from daqd import _spead  # noqa: E402

ITEM = 0x30
MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture(autouse=True)
def _no_hang():
    """Kill the run with a traceback rather than hang forever."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def nonzero(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if v}


def rejected(stats: dict[str, int]) -> int:
    return sum(stats[c] for c in sp.REJECT_COUNTERS)


WRAPPED = 1 << 48       # far beyond any count a test makes; a counter taken below 0 wraps


def check_invariants(stats: dict[str, int]) -> None:
    # The counters are uint64: a decrement too many shows as a huge value, not a negative.
    assert all(0 <= v < WRAPPED for v in stats.values()), \
        {k: v for k, v in stats.items() if v >= WRAPPED}
    assert stats["heaps"] == (stats["heaps_complete"] + stats["incomplete_heaps_evicted"]
                              + stats["incomplete_heaps_flushed"]), nonzero(stats)


def good_heap(cnt: int, size: int = 100, bits: int = 48) -> list[bytes]:
    return sp.heap_packets(cnt, [(ITEM, cnt), (ITEM + 1, bytes([cnt & 0xFF]) * size)],
                           address_bits=bits, packet_payload=40)


def cnts(heaps) -> list[tuple[int, bool]]:
    return [(h.cnt, h.complete) for h in heaps]


# ---------------------------------------------------------------------------
# Byte streams: garbage between packets, resynchronisation


def test_garbage_between_packets_resync():
    garbage = bytes(range(0x54, 0x54 + 100))          # no 0x53 inside
    data = b""
    expected_skipped = 0
    for cnt in range(1, 6):
        data += b"".join(good_heap(cnt))
        if cnt < 5:
            data += garbage
            expected_skipped += len(garbage)
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    assert cnts(heaps) == [(c, True) for c in range(1, 6)]
    assert stats["stream_bytes_skipped"] == expected_skipped
    assert stats["packets_rejected_bad_magic"] == 4
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)


def test_garbage_with_fake_headers_resync():
    """Garbage containing things that look like SPEAD headers."""
    fake = (b"\x53\x04\x02\x06\x00\x00\x00\x01" + b"\x00" * 8    # no HEAP_CNT: missing items
            + b"\x53\x05\x02\x06" + b"\x53" * 7                 # bad version, stray magics
            + b"\x53\x04\x00\x08\x00\x00\x00\x00")              # bad flavour
    data = b""
    for cnt in range(1, 4):
        data += b"".join(good_heap(cnt)) + fake
    data += b"".join(good_heap(10))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    assert cnts(heaps) == [(1, True), (2, True), (3, True), (10, True)]
    assert stats["packets_rejected_missing_items"] == 3
    assert stats["stream_bytes_skipped"] == 3 * len(fake)
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)


def test_byte_stream_cut_at_end():
    for cut, reason in ((5, "packets_rejected_too_short"),
                        (30, "packets_rejected_items_overflow"),
                        (70, "packets_rejected_payload_length")):
        data = b"".join(good_heap(1)) + good_heap(2)[0][:cut]
        stream = _spead.HeapStream()
        heaps = stream.run(_spead.ByteStreamReader(data))
        stats = stream.stats()
        assert cnts(heaps) == [(1, True)]
        assert stats["stream_bytes_skipped"] == cut
        assert stats[reason] == 1, nonzero(stats)
        assert rejected(stats) == 1
        check_invariants(stats)
    check_invariants(stats)


def test_byte_stream_only_garbage():
    rng = random.Random(1)
    data = bytes(rng.randrange(256) for _ in range(100_000))
    stream = _spead.HeapStream()
    stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)


def test_byte_stream_packet_larger_than_max_packet_size():
    big = sp.packet(1, b"x" * 10_000)
    data = big + b"".join(good_heap(2))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data, max_packet_size=9200))
    stats = stream.stats()
    assert cnts(heaps)[-1] == (2, True)
    assert stats["packets_rejected_payload_length"] >= 1
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)


def _over_long_with_nested_packets(size: int) -> bytes:
    """A valid packet of `size` payload bytes whose payload is whole packets of heap 7."""
    nested = b"".join(good_heap(7))
    payload = (nested * (size // len(nested) + 1))[:size]
    return sp.packet(1, payload)


def test_byte_stream_over_long_packet_skipped_whole():
    """A packet whose header decodes but declares more than max_packet_size is skipped by
    its declared size (spead2's TCP reader): the packets inside its payload are not
    decoded, and it is counted once."""
    big = _over_long_with_nested_packets(20_000)
    data = big + b"".join(good_heap(2))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data, max_packet_size=9200))
    stats = stream.stats()
    assert cnts(heaps) == [(2, True)]
    assert stats["packets_rejected_payload_length"] == 1
    assert rejected(stats) == 1, nonzero(stats)
    assert stats["stream_bytes_skipped"] == len(big)
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)


@pytest.mark.parametrize("end", ["whole", "last_byte_cut", "inside_big"])
def test_byte_stream_over_long_packet_across_reads(tmp_path, end):
    """The same from a descriptor, the packet several read buffers long; the stream
    complete, short of its last byte, or ending inside the over-long packet."""
    big = _over_long_with_nested_packets(100_000)
    after = b"".join(good_heap(2)) + b"".join(good_heap(3))
    data = {"whole": big + after, "last_byte_cut": big + after[:-1],
            "inside_big": big[:-10_000]}[end]
    path = tmp_path / "stream.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        stream = _spead.HeapStream()
        # the smallest buffer: 2 * max_packet_size + 16 bytes
        heaps = stream.run(_spead.ByteStreamReader(fd, max_packet_size=9200, bufsize=0))
    finally:
        os.close(fd)
    stats = stream.stats()
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)
    if end == "whole":
        assert cnts(heaps) == [(2, True), (3, True)]
        assert stats["stream_bytes_skipped"] == len(big)
        assert stats["packets_rejected_payload_length"] == rejected(stats) == 1, nonzero(stats)
    elif end == "last_byte_cut":
        assert cnts(heaps) == [(2, True), (3, False)]
        assert stats["stream_bytes_skipped"] == len(big) + len(good_heap(3)[-1]) - 1
        assert stats["packets_rejected_payload_length"] == rejected(stats) == 2, nonzero(stats)
    else:
        assert cnts(heaps) == []
        assert stats["stream_bytes_skipped"] == len(data)
        assert stats["packets_rejected_payload_length"] == rejected(stats) == 1, nonzero(stats)


def test_byte_stream_length_that_lies_short():
    """PAYLOAD_LENGTH shorter than the bytes sent: the rest is garbage to skip."""
    liar = sp.packet(1, b"\x00" * 64, length=16, heap_size=16)
    data = liar + b"".join(good_heap(2))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    assert cnts(heaps) == [(1, True), (2, True)]
    assert stats["stream_bytes_skipped"] == 48
    assert stats["packets_rejected_bad_magic"] == 1


def test_byte_stream_length_that_lies_long():
    """PAYLOAD_LENGTH swallowing the next packet: one heap lost, counted, then recovery."""
    liar = sp.packet(1, b"abc", length=200, heap_size=200)
    data = liar + b"".join(good_heap(2)) + b"".join(good_heap(3))
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    assert (3, True) in cnts(heaps)
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    check_invariants(stats)


# ---------------------------------------------------------------------------
# Datagrams: wild pointers, lying lengths, inconsistent heaps


def test_wild_item_pointer_far_beyond_max_heap_size():
    wild = sp.packet(1, b"abcd", heap_size=4, items=[sp.addr(ITEM, (1 << 47) + 5)])
    stream = _spead.HeapStream()
    heaps = stream.add_packets([wild] + good_heap(2))
    stats = stream.stats()
    assert stats["packets_rejected_heap_too_large"] == 1
    assert cnts(heaps) == [(2, True)]
    check_invariants(stats)


def test_wild_item_pointer_beyond_heap_size_like_spead2():
    """Address beyond HEAP_SIZE but within max_heap_size: the heap can never complete."""
    wild = sp.packet(1, b"abcd", heap_size=8, items=[sp.addr(ITEM, 1000)])
    more = sp.packet(1, b"efgh", offset=4, heap_size=8)
    packets = [wild, more] + good_heap(2)
    stream = _spead.HeapStream()
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert [sp.daqd_heap_key(h) for h in heaps] == sp.spead2_decode(packets)
    assert (2, True) in cnts(heaps)
    assert not heaps[-1].complete and heaps[-1].cnt == 1
    assert stats["packets_rejected_inconsistent_heap"] == 1
    check_invariants(stats)


def test_many_wild_pointers_in_one_packet():
    ptrs = [sp.addr(ITEM + i, (1 << 40) + i) for i in range(1000)]
    wild = sp.packet(1, b"", items=ptrs)
    stream = _spead.HeapStream()
    heaps = stream.add_packets([wild] * 50 + good_heap(2))
    assert stream.stats()["packets_rejected_heap_too_large"] == 50
    assert cnts(heaps) == [(2, True)]


def test_payload_length_that_lies_in_datagram():
    """PAYLOAD_LENGTH larger than the datagram: rejected; smaller: see the spead2 test."""
    liar = sp.packet(1, b"abc", length=1000, heap_size=1000)
    stream = _spead.HeapStream()
    heaps = stream.add_packets([liar] + good_heap(2))
    assert stream.stats()["packets_rejected_payload_length"] == 1
    assert cnts(heaps) == [(2, True)]


def test_datagram_longer_than_its_packet_like_spead2():
    """spead2 discards a datagram whose decoded size differs from its length
    ("discarding packet due to size mismatch"); daqd must not build a heap from it."""
    packets = [sp.packet(1, b"0123456789") + b"trailing"] + good_heap(2)
    d, stats = sp.daqd_decode(packets)
    assert d == sp.spead2_decode(packets)
    assert rejected(stats) == 1


def test_inconsistent_heap_size_between_packets():
    p1 = sp.packet(1, b"a" * 50, offset=0, heap_size=100)
    p2 = sp.packet(1, b"b" * 50, offset=50, heap_size=120)
    p3 = sp.packet(1, b"c" * 50, offset=50, heap_size=100)
    packets = [p1, p2, p3] + good_heap(2)
    stream = _spead.HeapStream()
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert stats["packets_rejected_inconsistent_heap"] == 1
    assert cnts(heaps) == [(1, True), (2, True)]
    assert [sp.daqd_heap_key(h) for h in heaps] == sp.spead2_decode(packets)
    check_invariants(stats)


def test_heap_size_smaller_than_seen_data():
    """A later packet announcing a HEAP_SIZE below data already received."""
    p1 = sp.packet(1, b"a" * 50, offset=0, with_size=False)
    p2 = sp.packet(1, b"b" * 10, offset=50, with_size=False)
    p3 = sp.packet(1, b"c" * 10, offset=0, heap_size=20)
    packets = [p1, p2, p3] + good_heap(2)
    stream = _spead.HeapStream(allow_out_of_order=True)
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert stats["packets_rejected_inconsistent_heap"] + stats["packets_rejected_duplicate"] == 1
    assert [sp.daqd_heap_key(h) for h in heaps] == sp.spead2_decode(packets,
                                                                    allow_out_of_order=True)


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_flavour_change_inside_heap(allow_out_of_order):
    p1 = sp.packet(1, b"a" * 50, offset=0, heap_size=100, address_bits=48)
    p2 = sp.packet(1, b"b" * 50, offset=50, heap_size=100, address_bits=40)
    p3 = sp.packet(1, b"b" * 50, offset=50, heap_size=100, address_bits=48)
    packets = [p1, p2, p3] + good_heap(2)
    stream = _spead.HeapStream(allow_out_of_order=allow_out_of_order)
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert stats["packets_rejected_inconsistent_heap"] == 1
    assert cnts(heaps) == [(1, True), (2, True)]
    assert [sp.daqd_heap_key(h) for h in heaps] == sp.spead2_decode(
        packets, allow_out_of_order=allow_out_of_order)


def test_duplicates_and_out_of_order_counted():
    a, b, c = sp.heap_packets(1, [(ITEM, b"x" * 100)], packet_payload=40)
    stream = _spead.HeapStream()
    heaps = stream.add_packets([a, a, b, a, c])
    stats = stream.stats()
    assert stats["packets_rejected_duplicate"] == 1
    assert stats["packets_rejected_out_of_order"] == 1
    assert cnts(heaps) == [(1, True)]
    stream = _spead.HeapStream(allow_out_of_order=True)
    heaps = stream.add_packets([c, a, c, a, b])
    assert stream.stats()["packets_rejected_duplicate"] == 2
    assert cnts(heaps) == [(1, True)]


def test_in_order_heap_starting_mid_heap_like_spead2():
    """In in-order mode spead2 refuses to start a heap with a packet whose offset
    is not 0 ("there is a gap in the heap"); daqd should do the same (and count it)."""
    late = sp.packet(1, b"xyz", offset=5, heap_size=8)
    packets = [late] + good_heap(2)
    d, stats = sp.daqd_decode(packets)
    assert d == sp.spead2_decode(packets)
    assert rejected(stats) == 1


def test_single_packet_heap_does_not_join_live_heap_like_spead2():
    """spead2: a packet that is a whole heap (PAYLOAD_LENGTH == HEAP_SIZE) never
    matches a partial heap with the same HEAP_CNT; it is a heap of its own."""
    partial = sp.packet(1, b"0123456789", with_size=False)
    whole = sp.packet(1, b"0123456789")
    packets = [partial, whole]
    d, _ = sp.daqd_decode(packets)
    assert d == sp.spead2_decode(packets)


def test_stop_then_more_packets_counted():
    packets = good_heap(1) + [sp.stop_heap(2)] + good_heap(3) + [b"junk"]
    stream = _spead.HeapStream()
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert cnts(heaps) == [(1, True)]
    assert stats["packets_rejected_after_stop"] == len(good_heap(3)) + 1
    assert stats["packets"] + stats["packets_rejected_after_stop"] == len(packets)


# ---------------------------------------------------------------------------
# Memory: announced sizes must not be believed


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {here!r})
    import spead_packets as sp
    from daqd import _spead

    def status():
        out = {{}}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmPeak", "VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    before = status()
    result = dict(globals())
    exec(sys.argv[1], result)
    after = status()
    print(json.dumps({{"before": before, "after": after, "stats": result["stats"],
                      "heaps": result["heaps"]}}))
""")


def run_memory_scenario(code: str) -> dict:
    script = MEMORY_SCRIPT.format(here=HERE)
    proc = subprocess.run([sys.executable, "-c", script, textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    out["peak_growth"] = out["after"]["VmPeak"] - out["before"]["VmPeak"]
    out["rss_growth"] = out["after"]["VmHWM"] - out["before"]["VmHWM"]
    return out


def test_256_gib_heap_rejected_without_allocating():
    out = run_memory_scenario("""
        big = sp.packet(1, b"x" * 64, heap_size=256 << 30)
        stream = _spead.HeapStream()
        heaps = stream.add_packets([big] + sp.heap_packets(2, [(0x30, b"ok" * 50)]))
        heaps = [(h.cnt, h.complete) for h in heaps]
        stats = stream.stats()
    """)
    stats = out["stats"]
    assert stats["packets_rejected_heap_too_large"] == 1
    assert out["heaps"] == [[2, True]]
    assert out["peak_growth"] < 64 * MiB, out
    assert out["rss_growth"] < 32 * MiB, out


def test_256_gib_heap_in_every_packet_of_a_stream():
    """Many packets, each announcing 256 GiB, interleaved with good heaps."""
    out = run_memory_scenario("""
        packets = []
        for cnt in range(1, 201):
            packets.append(sp.packet(1000 + cnt, b"x" * 64, offset=cnt * 64,
                                     heap_size=256 << 30))
            packets += sp.heap_packets(cnt, [(0x30, b"ok" * 50)])
        stream = _spead.HeapStream()
        heaps = [(h.cnt, h.complete) for h in stream.add_packets(packets)]
        stats = stream.stats()
    """)
    assert out["stats"]["packets_rejected_heap_too_large"] == 200
    assert out["heaps"] == [[c, True] for c in range(1, 201)]
    assert out["peak_growth"] < 64 * MiB, out


def test_unsized_heap_with_huge_offset_rejected():
    out = run_memory_scenario("""
        packets = [sp.packet(1, b"x" * 64, offset=200 << 20, with_size=False),
                   sp.packet(1, b"x" * 64, offset=(1 << 47), with_size=False),
                   sp.packet(3, b"y" * 64, offset=0, with_size=False,
                             items=[sp.addr(0x30, 150 << 20)])]
        packets += sp.heap_packets(2, [(0x30, b"ok" * 50)])
        stream = _spead.HeapStream()
        heaps = [(h.cnt, h.complete) for h in stream.add_packets(packets)]
        stats = stream.stats()
    """)
    assert out["stats"]["packets_rejected_heap_too_large"] == 3
    assert out["heaps"] == [[2, True]]
    assert out["peak_growth"] < 64 * MiB, out


def test_unsized_heap_growing_past_small_max_heap_size():
    stream = _spead.HeapStream(max_heap_size=4096)
    packets = [sp.packet(1, b"z" * 1000, offset=i * 1000, with_size=False) for i in range(10)]
    heaps = stream.add_packets(packets + good_heap(2))
    stats = stream.stats()
    assert stats["packets_rejected_heap_too_large"] == 6     # offsets 4000.. end past 4096
    assert (2, True) in cnts(heaps)
    [h1] = [h for h in heaps if h.cnt == 1]
    assert h1.received == 4000
    check_invariants(stats)


def test_item_address_beyond_small_max_heap_size():
    stream = _spead.HeapStream(max_heap_size=4096)
    heaps = stream.add_packets([sp.packet(1, b"a", with_size=False,
                                          items=[sp.addr(ITEM, 4097)])] + good_heap(2))
    assert stream.stats()["packets_rejected_heap_too_large"] == 1
    assert cnts(heaps) == [(2, True)]


def test_pointer_flood_bounded_by_max_heap_size():
    """Zero-payload packets with thousands of distinct item pointers into one heap."""
    max_heap_size = 64 << 10
    per_packet = 500
    packets = []
    for k in range(200):
        ptrs = [sp.imm(0x1000 + k * per_packet + i, i, 40) for i in range(per_packet)]
        packets.append(sp.packet(1, b"", with_size=False, items=ptrs, address_bits=40))
    # expected: the heap keeps a packet's pointers while they fit in max_heap_size
    stored, accepted = 0, 0
    n_items = per_packet + 3
    for _ in packets:
        if (stored + n_items) * 8 > max_heap_size:
            continue
        stored += per_packet
        accepted += 1
    stream = _spead.HeapStream(max_heap_size=max_heap_size)
    heaps = stream.add_packets(packets + good_heap(2))
    stats = stream.stats()
    assert 0 < accepted < len(packets)
    assert stats["packets_rejected_heap_too_large"] == len(packets) - accepted
    assert (2, True) in cnts(heaps)
    [h1] = [h for h in heaps if h.cnt == 1]
    assert len(h1.items) == stored <= max_heap_size // 8
    assert stats["packets"] == len(packets) + len(good_heap(2))
    check_invariants(stats)


def test_pointer_flood_memory_default_limit():
    """The same flood with the default max_heap_size, in a fresh process: RSS stays small."""
    out = run_memory_scenario("""
        packets = []
        for k in range(400):
            ptrs = [sp.imm(0x1000 + k * 1000 + i, i, 40) for i in range(1000)]
            packets.append(sp.packet(1, b"", with_size=False, items=ptrs, address_bits=40))
        stream = _spead.HeapStream(max_heap_size=1 << 20)
        heaps = [(h.cnt, h.complete, len(h.items)) for h in
                 stream.add_packets(packets + sp.heap_packets(2, [(0x30, b"ok")]))]
        stats = stream.stats()
    """)
    assert out["stats"]["packets_rejected_heap_too_large"] > 0
    assert [2, True, 1] in out["heaps"]
    assert out["rss_growth"] < 64 * MiB, out


def test_duplicate_pointer_flood_is_deduplicated():
    """The same pointers repeated in every packet do not grow the heap."""
    ptrs = [sp.imm(0x1000 + i, i) for i in range(2000)]
    packets = [sp.packet(1, b"", with_size=False, items=ptrs) for _ in range(300)]
    stream = _spead.HeapStream(max_heap_size=1 << 20)
    heaps = stream.add_packets(packets)
    stats = stream.stats()
    assert stats["packets_rejected_heap_too_large"] == 0
    [h] = heaps
    assert len(h.items) == 2000
    assert h.n_packets == 300


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_range_flood_out_of_order(allow_out_of_order):
    """Many one-byte packets with gaps: the range set is bounded too."""
    max_heap_size = 4096
    packets = [sp.packet(1, b"q", offset=2 * i, with_size=False) for i in range(3000)]
    stream = _spead.HeapStream(max_heap_size=max_heap_size,
                               allow_out_of_order=allow_out_of_order)
    heaps = stream.add_packets(packets + good_heap(2))
    stats = stream.stats()
    assert stats["packets_rejected_heap_too_large"] > 0
    assert (2, True) in cnts(heaps)
    check_invariants(stats)


# ---------------------------------------------------------------------------
# pcap files cut short or not pcap at all


def test_pcap_cut_in_middle_of_record():
    payloads = [p for c in range(1, 4) for p in good_heap(c)]
    data = sp.pcap_file(payloads)
    last = sp.pcap_record(sp.udp_frame(good_heap(4)[0]))
    for cut in (5, 16 + 20, len(last) - 1):
        stream = _spead.HeapStream()
        heaps = stream.run(_spead.PcapReader(data + last[:cut]))
        stats = stream.stats()
        assert cnts(heaps) == [(1, True), (2, True), (3, True)], cut
        assert stats["pcap_records_truncated"] == 1, cut
        assert stats["packets"] == len(payloads)
        check_invariants(stats)


def test_pcap_cut_in_file_header():
    for cut in (0, 3, 4, 23):
        with pytest.raises(ValueError):
            _spead.PcapReader(sp.PCAP_HEADER[:cut])


def test_pcap_header_only():
    stream = _spead.HeapStream()
    assert stream.run(_spead.PcapReader(sp.PCAP_HEADER)) == []
    check_invariants(stream.stats())


def test_pcap_non_udp_and_fragments_counted():
    good = good_heap(1)
    tcp = bytearray(sp.udp_frame(b"x" * 20))
    tcp[14 + 9] = 6
    frag = bytearray(sp.udp_frame(good[0]))
    frag[14 + 6] = 0x20                                    # more fragments
    arp = b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28
    records = [sp.pcap_record(bytes(tcp)), sp.pcap_record(bytes(frag)), sp.pcap_record(arp),
               sp.pcap_record(sp.udp_frame(good[0], dst_port=9999))]
    records += [sp.pcap_record(sp.udp_frame(p)) for p in good]
    data = sp.PCAP_HEADER + b"".join(records)
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.PcapReader(data, port=7148))
    stats = stream.stats()
    assert cnts(heaps) == [(1, True)]
    assert stats["pcap_frames_skipped_not_udp"] == 2
    assert stats["pcap_frames_skipped_fragment"] == 1
    assert stats["pcap_frames_skipped_port"] == 1


def test_pcap_record_with_huge_incl_len():
    bad = b"\0" * 8 + (0xFFFFFFF0).to_bytes(4, "little") * 2 + b"\0" * 32
    data = sp.pcap_file(good_heap(1)) + bad
    stream = _spead.HeapStream()
    heaps = stream.run(_spead.PcapReader(data))
    assert cnts(heaps) == [(1, True)]
    assert stream.stats()["pcap_records_truncated"] == 1


def _cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "daqd", *args], capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(proc, name):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("daqd: error:"), lines
    assert name in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_cli_pcap_truncated_file_counted(tmp_path):
    path = tmp_path / "cut.pcap"
    path.write_bytes(sp.pcap_file(good_heap(1) + good_heap(2))[:-7])
    proc = _cli("dump", f"pcap:{path}")
    assert proc.returncode == 0, proc.stderr
    heaps = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [h["cnt"] for h in heaps] == [1]
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    assert summary["counters"]["pcap_records_truncated"] == 1


@pytest.mark.parametrize("content", [
    sp.PCAP_HEADER[:10],                                    # cut in the file header
    b"\x0a\x0d\x0d\x0a" + b"\0" * 100,                      # pcapng
    bytes(random.Random(7).randrange(256) for _ in range(4096)),  # random
    b"",                                                    # empty
], ids=["cut-header", "pcapng", "random", "empty"])
def test_cli_pcap_bad_file_one_line_error(tmp_path, content):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    uri = f"pcap:{path}"
    _one_line_error(_cli("dump", uri), uri)


# ---------------------------------------------------------------------------
# Accounting


def test_accounting_known_input():
    """packets == accepted + rejected, on an input whose outcome is known."""
    good = good_heap(1) + good_heap(2)
    bad = [b"", b"S", b"\x00" * 20, sp.packet(3, b"x", heap_size=0),
           sp.packet(4, b"x" * 8, heap_size=1 << 40), good[0]]   # last: duplicate
    stream = _spead.HeapStream(stop_on_stop_item=False)
    heaps = stream.add_packets(good[:1] + bad + good[1:])
    stats = stream.stats()
    accepted = sum(h.n_packets for h in heaps)
    assert accepted == len(good)
    assert rejected(stats) == len(bad)
    assert stats["packets"] == accepted + rejected(stats)
    check_invariants(stats)


# ---------------------------------------------------------------------------
# Property tests


@st.composite
def valid_packets(draw):
    """Packets of a few small heaps, any of three flavours, sometimes a stop heap."""
    bits = draw(st.sampled_from([16, 40, 48]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        cnt = draw(st.integers(1, 6))
        items = []
        for j in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                items.append((ITEM + j, draw(st.integers(0, 1000))))
            else:
                items.append((ITEM + j, draw(st.binary(max_size=60))))
        out += sp.heap_packets(cnt, items, address_bits=bits,
                               packet_payload=draw(st.integers(1, 40)),
                               with_size=draw(st.booleans()),
                               stop=draw(st.integers(0, 9)) == 0)
    return out


def _flip(data: bytes, bit: int) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    i = bit % (8 * len(b))
    b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


@st.composite
def mutated_packets(draw):
    """Valid packets with bit flips, truncation, splicing, duplication, reordering."""
    pkts = draw(valid_packets())
    for _ in range(draw(st.integers(0, 6))):
        if not pkts:
            break
        op = draw(st.sampled_from(["flip", "truncate", "splice", "duplicate", "swap",
                                   "drop"]))
        i = draw(st.integers(0, len(pkts) - 1))
        if op == "flip":
            pkts[i] = _flip(pkts[i], draw(st.integers(0, 1 << 20)))
        elif op == "truncate":
            pkts[i] = pkts[i][:draw(st.integers(0, len(pkts[i])))]
        elif op == "splice":
            j = draw(st.integers(0, len(pkts) - 1))
            a = draw(st.integers(0, len(pkts[i])))
            b = draw(st.integers(0, len(pkts[j])))
            pkts[i] = pkts[i][:a] + pkts[j][b:]
        elif op == "duplicate":
            pkts.insert(draw(st.integers(0, len(pkts))), pkts[i])
        elif op == "swap":
            j = draw(st.integers(0, len(pkts) - 1))
            pkts[i], pkts[j] = pkts[j], pkts[i]
        else:
            del pkts[i]
    return pkts


any_datagrams = st.one_of(
    mutated_packets(),
    st.lists(st.binary(max_size=200), max_size=20),
    st.lists(st.binary(min_size=8, max_size=120).map(lambda b: b"\x53\x04\x02\x06" + b[4:]),
             max_size=20),
)

PROPERTY = settings(max_examples=200, deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _bounded(pkts: list[bytes], bound: int = 1 << 20) -> bool:
    """spead2 believes announced sizes: only compare where they are small."""
    for p in pkts:
        d = sp.decode(p)
        if isinstance(d, sp.Decoded) and sp.max_extent(d) > bound:
            return False
    return True


@PROPERTY
@given(pkts=any_datagrams, max_heaps=st.integers(1, 4), ooo=st.booleans())
def test_property_datagrams_never_crash_and_account(pkts, max_heaps, ooo):
    stream = _spead.HeapStream(max_heaps=max_heaps, allow_out_of_order=ooo,
                               max_heap_size=1 << 16, stop_on_stop_item=False)
    heaps = stream.add_packets(pkts)
    stats = stream.stats()
    check_invariants(stats)
    assert stats["packets"] == len(pkts)
    # Every packet handed over is either in a heap or counted under a reason.
    assert stats["packets"] == sum(h.n_packets for h in heaps) + rejected(stats)
    assert stats["heaps"] == len(heaps)


@PROPERTY
@given(pkts=any_datagrams, max_heaps=st.integers(1, 4), ooo=st.booleans())
def test_property_datagrams_match_spead2(pkts, max_heaps, ooo):
    if not _bounded(pkts):
        return
    d, stats = sp.daqd_decode(pkts, max_heaps=max_heaps, allow_out_of_order=ooo)
    check_invariants(stats)
    assert stats["packets"] + stats["packets_rejected_after_stop"] == len(pkts)
    s = sp.spead2_decode(pkts, max_heaps=max_heaps, allow_out_of_order=ooo)
    assert d == s


@PROPERTY
@given(pkts=mutated_packets(), garbage=st.lists(st.binary(max_size=40), max_size=6),
       max_heaps=st.integers(1, 4), ooo=st.booleans())
def test_property_byte_stream_never_crash_and_account(pkts, garbage, max_heaps, ooo):
    parts = list(pkts)
    for i, g in enumerate(garbage):
        parts.insert((i * 7) % (len(parts) + 1), g)
    data = b"".join(parts)
    stream = _spead.HeapStream(max_heaps=max_heaps, allow_out_of_order=ooo,
                               max_heap_size=1 << 16, stop_on_stop_item=False)
    heaps = stream.run(_spead.ByteStreamReader(data, batch=4))
    stats = stream.stats()
    check_invariants(stats)
    # Every byte was either handed to the decoder or skipped to resynchronise.
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    assert stats["packets"] == sum(h.n_packets for h in heaps) + \
        (rejected(stats) - _reader_rejects(stats))


def _reader_rejects(stats):
    # Header rejects found by the byte-stream reader itself are not "packets".
    return sum(stats[c] for c in (
        "packets_rejected_too_short", "packets_rejected_bad_magic",
        "packets_rejected_bad_version", "packets_rejected_bad_flavour",
        "packets_rejected_items_overflow", "packets_rejected_missing_items",
        "packets_rejected_payload_length", "packets_rejected_payload_outside_heap"))


@PROPERTY
@given(data=st.binary(max_size=2000))
def test_property_random_byte_stream(data):
    stream = _spead.HeapStream(max_heap_size=1 << 16)
    stream.run(_spead.ByteStreamReader(data))
    stats = stream.stats()
    check_invariants(stats)
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)


@PROPERTY
@given(pkts=valid_packets())
def test_property_valid_byte_stream_equals_datagrams(pkts):
    """Unmodified packets back to back decode exactly as the same datagrams."""
    a = _spead.HeapStream()
    from_stream = [sp.daqd_heap_key(h) for h in a.run(_spead.ByteStreamReader(b"".join(pkts)))]
    b = _spead.HeapStream()
    from_datagrams = [sp.daqd_heap_key(h) for h in b.add_packets(pkts)]
    assert from_stream == from_datagrams
    assert a.stats()["stream_bytes_skipped"] == 0
