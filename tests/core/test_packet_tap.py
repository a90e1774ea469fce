"""The packet tap: raw packets as received, kept for the pcap sink."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import sim_packets

from daqd import _spead

LAYOUT = dict(timestamp_item=0x1600, timestamp_step=8192, heaps_per_chunk=4, heap_bytes=8192,
              max_chunks=2, pool=6)


def tapped(reader):
    got = reader.take_tap()
    if got is None:
        return []
    blob, lengths = got
    assert lengths.dtype == np.uint32
    ends = np.cumsum(lengths)
    assert ends[-1] == len(blob)
    return [blob[e - n:e] for e, n in zip(ends.tolist(), lengths.tolist(), strict=True)]


@pytest.mark.parametrize("mode", ["heap", "chunk"])
def test_tap_keeps_every_packet_in_order_including_rejected(mode):
    packets = sim_packets("W3", 6)
    garbage = b"\x00" * 40            # bad magic: rejected, but still tapped as received
    packets = packets[:5] + [garbage] + packets[5:]
    reader = _spead.ByteListReader(packets)
    reader.enable_tap(1 << 20, 1024)
    stream = (_spead.HeapStream(max_heaps=4) if mode == "heap"
              else _spead.ChunkStream(**LAYOUT))
    got = []
    while stream.process(reader) >= 0:
        got.extend(tapped(reader))
        if mode == "heap":
            stream.pop_ready()
    assert got == packets
    assert stream.stats()["packets_tap_dropped"] == 0
    assert reader.take_tap() is None
    if mode == "chunk":
        stream.finish()
        for chunk in stream:
            chunk.release()


def test_tap_full_counts_what_it_could_not_keep():
    packets = sim_packets("W1", 10)            # 10 heaps + stop heap
    reader = _spead.ByteListReader(packets)
    size = len(packets[0])
    reader.enable_tap(3 * size, 1000)
    stream = _spead.HeapStream(max_heaps=4)
    heaps = stream.run(reader)
    assert len([h for h in heaps if h.complete]) == len(packets)
    assert tapped(reader) == packets[:3]
    assert stream.stats()["packets_tap_dropped"] == len(packets) - 3


def test_tap_packet_limit_and_reuse():
    packets = sim_packets("W2", 8)
    reader = _spead.ByteListReader(packets)
    reader.enable_tap(1 << 20, 2)
    stream = _spead.HeapStream(max_heaps=4)
    stream.process(reader)
    assert tapped(reader) == packets[:2]
    assert stream.stats()["packets_tap_dropped"] == len(packets) - 2
    with pytest.raises(RuntimeError):
        reader.enable_tap(10, 10)
    with pytest.raises(ValueError):
        _spead.ByteListReader(packets).enable_tap(0, 10)


def test_no_tap_by_default():
    reader = _spead.ByteListReader(sim_packets("W1", 2))
    _spead.HeapStream().run(reader)
    assert reader.take_tap() is None
