"""Chunk mode keeps the packets of descriptor heaps, which fit no chunk, for the files.

spead2 sends the descriptors; a real ChunkStream places W1 around them and
keeps the descriptor heaps' packets (`take_descriptor_packets`), which
`daqd.recv.descriptors.descriptors_from_packets` decodes to what spead2's own
receiver says the descriptors are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spead2
import spead2.recv
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead2_helpers import split_packets
from spead_packets import sim_packets

from daqd import _spead
from daqd.recv.descriptors import descriptors_from_packets

HPC = 4


def descriptor_bytes(names: int = 3, max_packet_size: int = 1472) -> bytes:
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    for i in range(names):
        ig.add_item(0x2000 + i, f"sensor-{i}", "x" * 200, shape=(3,), dtype=np.float32)
    stream = spead2.send.BytesStream(spead2.ThreadPool(),
                                     spead2.send.StreamConfig(max_packet_size=max_packet_size))
    stream.set_cnt_sequence(10**6, 1)
    stream.send_heap(ig.get_heap(descriptors="all", data="none"))
    return stream.getvalue()


def stream() -> _spead.ChunkStream:
    return _spead.ChunkStream(timestamp_item=0x1600, timestamp_step=8192, heaps_per_chunk=HPC,
                              heap_bytes=8192, max_chunks=2, pool=8, max_heaps=4)


def spead2_names(data: bytes) -> list[tuple[int, str, str]]:
    rx = spead2.recv.Stream(spead2.ThreadPool())
    rx.add_buffer_reader(data)
    ig = spead2.ItemGroup()
    for heap in rx:
        ig.update(heap)
    return sorted((item.id, item.name, item.description) for item in ig.values())


def test_descriptor_heaps_are_kept_and_decode_as_spead2_reads_them():
    data = descriptor_bytes(names=12)             # a heap of several packets
    packets = split_packets(data)
    assert len(packets) > 1
    w1 = sim_packets("W1", 2 * HPC)
    s = stream()
    s.add_packets(w1[:HPC] + packets + w1[HPC:])
    s.finish()
    assert sum(1 for _ in s) == 2                 # both chunks placed around them
    kept = s.take_descriptor_packets()
    assert kept == packets and s.descriptor_bytes == 0
    found = descriptors_from_packets(kept)
    assert sorted((d["id"], d["name"], d["description"]) for d in found) == spead2_names(data)
    assert s.take_descriptor_packets() == []


def test_what_does_not_fit_between_two_takes_is_counted():
    packets = split_packets(descriptor_bytes(names=1))
    size = len(packets[0])
    fits = _spead.DESCRIPTOR_PACKET_BYTES // (size + 4)
    s = stream()
    s.add_packets(packets * (fits + 3))           # the same heap again and again
    assert len(s.take_descriptor_packets()) == fits
    assert s.stats()["descriptor_packets_dropped"] == 3     # a counter of the stream
    s.add_packets(packets)                        # room again after a take
    assert len(s.take_descriptor_packets()) == 1


def test_ordinary_traffic_keeps_nothing():
    s = stream()
    s.add_packets(sim_packets("W1", 4 * HPC))
    assert s.descriptor_bytes == 0 and s.take_descriptor_packets() == []
