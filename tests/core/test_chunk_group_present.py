"""Two streams filling the same chunks at once: every presence byte set, none lost.

A group's second stream sets presence bytes of its own, folded into the
chunk's when it lets go of the chunk, while the first stream goes on setting
the chunk's own, without the lock (so that the two never write one cache
line per heap).  Here two receive threads place the even and the odd heaps of
a W2 workload (1 KiB heaps, one packet each, 64 a chunk) from memory into one
lossless group, unpaced, as tests/benchmarks/two_threads.py does: every chunk
must come with every slot present and holding its own heap's bytes.  (A fold
that stored every byte of the chunk's, ``present[i] |= mine[i]``, lost one of
the first stream's bytes about once in a million heaps in
tests/benchmarks/two_threads.py; a run this short rarely meets that race.)
"""

from __future__ import annotations

import threading

import numpy as np

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.chunk_check import check_chunk
from daqd.tools.bench.memory import workload_buffer
from daqd.tools.bench.params import MAX_PACKET_SIZE

HPC = 64
CHUNKS = 384


def test_two_unpaced_streams_set_every_presence_byte():
    w = WORKLOADS["W2"]
    heaps = CHUNKS * HPC
    per_heap = w.packets_per_heap * w.packet_size
    buf = workload_buffer("W2", heaps).reshape(heaps, per_heap)
    halves = [np.ascontiguousarray(buf[k::2]).reshape(-1) for k in range(2)]
    group = _spead.ChunkGroup(**w.layout(HPC), max_chunks=16, stream_chunks=4, pool=24)
    streams = [group.add_stream(max_heaps=8) for _ in halves]
    readers = [_spead.ByteStreamReader(b, max_packet_size=MAX_PACKET_SIZE, batch=64)
               for b in halves]

    def receive(k: int) -> None:
        while streams[k].process(readers[k], 1e-3) >= 0 and not streams[k].stopped:
            pass
        streams[k].finish()

    threads = [threading.Thread(target=receive, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    ids, present = [], 0
    while (chunk := group.get(timeout=60)) is not None:
        with chunk:
            ids.append(chunk.chunk_id)
            present += int(np.count_nonzero(chunk.present))
            if len(ids) % 16 == 0:
                check_chunk("W2", chunk.chunk_id, chunk.data, chunk.present)
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    stats = group.stats()
    assert stats["chunk_heaps_placed"] == stats["chunk_heaps_present"] == heaps
    assert ids == list(range(ids[0], ids[0] + CHUNKS))
    assert present == heaps
