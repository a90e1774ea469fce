"""``heap_windows`` (spead2's ``StreamConfig.substreams``) and ``explicit_start``, against
spead2 4.5.1.

Two senders share a stream and number their heaps ``cnt = 2 k + sender``; one
sends a heap in several packets while the other's heaps arrive in between.  With
one window of two live heaps the other sender's heaps evict the slow one's; with
``heap_windows = 2`` (spead2: ``substreams=2``) each sender has a window of its
own and nothing is evicted.  The same datagrams go to spead2 and to daqd, which
must yield the same heaps in the same order, with the same eviction counts.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import spead2
import spead2.recv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_chunks as sc
import spead2_helpers as h
import spead_packets as sp
from spead2_senders import heap_packets

from daqd import _spead

logging.getLogger("spead2").setLevel(logging.CRITICAL)

def two_senders(slow_heaps: int = 3, fast_per_packet: int = 2) -> list[bytes]:
    """Sender 0 (even cnts) sends big heaps packet by packet; between two of its
    packets sender 1 (odd cnts) sends `fast_per_packet` small whole heaps and
    starts one more that it finishes later (so its heaps are live too)."""
    out: list[bytes] = []
    fast = 1
    for k in range(slow_heaps):
        slow = heap_packets(2 * k, 1000)
        for packet in slow:
            out.append(packet)
            for _ in range(fast_per_packet):
                first, *rest = heap_packets(fast, 400)
                out.append(first)
                out.extend(rest)
                fast += 2
    return out


def spead2_heaps(packets: list[bytes], max_heaps: int, windows: int,
                 ) -> tuple[list[dict], dict[str, int]]:
    config = spead2.recv.StreamConfig(max_heaps=max_heaps, substreams=windows)
    stream = spead2.recv.Stream(h.THREAD_POOL, config,
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    queue = spead2.InprocQueue()
    stream.add_inproc_reader(queue)
    for packet in packets:
        queue.add_packet(packet)
    queue.stop()
    records = h.collect_spead2(stream)
    stats = stream.stats
    return records, {"heaps": stats["heaps"],
                     "incomplete_heaps_evicted": stats["incomplete_heaps_evicted"],
                     "incomplete_heaps_flushed": stats["incomplete_heaps_flushed"]}


def daqd_heaps(packets: list[bytes], max_heaps: int, windows: int, **kwargs
               ) -> tuple[list[dict], dict[str, int]]:
    stream = _spead.HeapStream(max_heaps=max_heaps, heap_windows=windows, **kwargs)
    records = [h.daqd_record(x) for x in stream.add_packets(packets)]
    stats = stream.stats()
    return records, {k: stats[k] for k in ("heaps", "incomplete_heaps_evicted",
                                           "incomplete_heaps_flushed")}


@pytest.mark.parametrize("windows", [1, 2, 3])
@pytest.mark.parametrize("max_heaps", [1, 2])
def test_heap_windows_match_spead2_substreams(max_heaps, windows):
    packets = two_senders()
    expected = spead2_heaps(packets, max_heaps, windows)
    assert daqd_heaps(packets, max_heaps, windows) == expected
    evicted = expected[1]["incomplete_heaps_evicted"]
    if windows == 2:
        assert evicted == 0                 # each sender in a window of its own
        assert all(r["complete"] for r in expected[0])
    elif windows == 1:
        assert evicted > 0                  # the case the option is for


def test_heap_windows_flush_ring_by_ring_as_spead2():
    """Heaps left live at the end leave ring 0 first, each ring oldest first."""
    packets = [heap_packets(cnt, 1000)[0] for cnt in (5, 2, 7, 4, 3, 6)]
    expected = spead2_heaps(packets, 4, 3)
    assert [r["cnt"] for r in expected[0]] == [3, 6, 7, 4, 5, 2]
    assert daqd_heaps(packets, 4, 3) == expected


def test_heap_windows_out_of_order_matches_spead2():
    packets = two_senders()
    packets = packets[1::2] + packets[::2]
    config = spead2.recv.StreamConfig(max_heaps=2, substreams=2, allow_out_of_order=True)
    stream = spead2.recv.Stream(h.THREAD_POOL, config,
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    stream.add_buffer_reader(b"".join(packets))
    expected = h.collect_spead2(stream)
    got = _spead.HeapStream(max_heaps=2, heap_windows=2, allow_out_of_order=True)
    assert [h.daqd_record(x) for x in got.run(_spead.ByteStreamReader(b"".join(packets)))] \
        == expected


@pytest.mark.parametrize("windows", [0, _spead.MAX_HEAP_WINDOWS + 1])
def test_heap_windows_out_of_range(windows):
    with pytest.raises(ValueError, match="heap_windows must be 1 to"):
        _spead.HeapStream(heap_windows=windows)
    with pytest.raises(ValueError, match="heap_windows must be 1 to"):
        _spead.ChunkStream(heap_windows=windows)


def test_chunk_stream_has_heap_windows():
    stream = _spead.ChunkStream(heap_windows=3, max_heaps=2)
    assert (stream.heap_windows, stream.max_heaps) == (3, 2)


def test_daqd_dump_heap_windows_matches_spead2(tmp_path):
    """``daqd dump --heap-windows 2`` prints what spead2 with substreams=2 yields."""
    import json
    import subprocess

    packets = two_senders()
    path = tmp_path / "two.spead"
    path.write_bytes(b"".join(packets))
    config = spead2.recv.StreamConfig(max_heaps=2, substreams=2)
    stream = spead2.recv.Stream(h.THREAD_POOL, config,
                                spead2.recv.RingStreamConfig(contiguous_only=False))
    stream.add_buffer_reader(b"".join(packets))
    expected = h.collect_spead2(stream)
    proc = subprocess.run([sys.executable, "-m", "daqd", "dump", f"file:{path}", "--max-heaps",
                           "2", "--heap-windows", "2", "--incomplete"],
                          capture_output=True, text=True, timeout=60, check=True)
    got = [h.dump_record(json.loads(line)) for line in proc.stdout.splitlines()]
    assert got == expected
    assert all(r["complete"] for r in got)


def chunk_senders(heaps: int = 6) -> list[bytes]:
    """Chunk mode's two senders: sender 0 (even cnts, timestamps 0, 2, 4, ... steps) sends
    each heap in 8 packets, sender 1 (odd cnts, the odd timestamps) a whole heap of its own
    between any two of them."""
    out: list[bytes] = []
    step, size = 8192, 8192
    for k in range(heaps):
        slow = sp.heap_packets(2 * k + 2, [(0x1600, 2 * k * step), (0x3300, bytes([k]) * size)],
                               packet_payload=1024)
        fast = sp.heap_packets(2 * k + 3, [(0x1600, (2 * k + 1) * step),
                                           (0x3300, bytes([100 + k]) * size)],
                               packet_payload=1024)
        for i, packet in enumerate(slow):
            out.append(packet)
            if i == 0:
                out.extend(fast)
    return out


@pytest.mark.parametrize("windows", [1, 2])
def test_chunk_mode_heap_windows_match_spead2_substreams(monkeypatch, windows):
    """The same senders into chunks: daqd's ChunkStream with heap_windows against spead2's
    ChunkRingStream with substreams (its StreamConfig given substreams here), chunk for
    chunk and counter for counter."""
    real = spead2.recv.StreamConfig
    monkeypatch.setattr(spead2.recv, "StreamConfig",
                        lambda **kwargs: real(substreams=windows, **kwargs))
    packets = chunk_senders()
    ref, ref_stats = sc.spead2_chunk_receive(packets, max_heaps=1, heaps_per_chunk=4,
                                             max_chunks=2)
    got, stats = sc.daqd_chunk_receive(packets, max_heaps=1, heaps_per_chunk=4, max_chunks=2,
                                       heap_windows=windows)
    sc.assert_chunks_match(got, ref)
    assert sc.counter_mismatches(stats, ref_stats) == {}
    present = sum(int(c["present"].sum()) for c in got)
    if windows == 2:
        assert stats["incomplete_heaps_evicted"] == 0 and present == 12
    else:
        assert stats["incomplete_heaps_evicted"] > 0 and present < 12


def test_live_heap_budget_spans_every_window():
    """max_live_heap_bytes (daqd's, not spead2's) bounds the live heaps of all windows
    together: a heap of another window that needs room evicts the oldest."""
    stream = _spead.HeapStream(max_heaps=2, heap_windows=3, max_live_heap_bytes=1 << 16)
    first_packets = [heap_packets(cnt, 40000, max_packet_size=9000)[0] for cnt in range(1, 7)]
    out = stream.add_packets(first_packets)
    assert stream.live_heap_bytes <= 1 << 16
    assert len(out) == 6 and all(not heap.complete for heap in out)
    stats = stream.stats()
    assert stats["incomplete_heaps_evicted"] == 5       # each new heap evicted the previous
    assert stats["incomplete_heaps_flushed"] == 1
