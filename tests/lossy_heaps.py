"""Heaps with packets lost, reordered and repeated, and spead2 4.5.1's view of them.

One workload for the differential tests of incomplete heaps: the library's
``payload_ranges`` (tests/core/test_payload_ranges.py) and the daemon's
incomplete heap records (tests/service/test_contiguous_only_daemon.py).
spead2 keeps incomplete heaps with ``RingStreamConfig(contiguous_only=False,
incomplete_keep_payload_ranges=True)``.
"""

from __future__ import annotations

import numpy as np
import spead2
import spead2.recv
import spead_packets as sp
from spead2_helpers import THREAD_POOL


def heap(cnt: int, sizes: list[int], keep: list[int] | None = None, *,
         sized: bool = True) -> list[bytes]:
    """Packets of a heap cut into `sizes`; only the `keep` indices (default all)."""
    total = sum(sizes)
    out, offset = [], 0
    for size in sizes:
        out.append(sp.packet(cnt, bytes(size), offset=offset,
                             heap_size=total if sized else None, with_size=sized,
                             items=[sp.addr(0x1000, 0)]))
        offset += size
    return [out[i] for i in (range(len(out)) if keep is None else keep)]


def workload(seed: int = 3) -> list[bytes]:
    """Lossy heaps 1-6 of known shapes, then 10 random ones (evictions with max_heaps=3)."""
    rng = np.random.default_rng(seed)
    packets = []
    packets += heap(1, [100] * 6, [0, 1, 3, 4])            # a hole
    packets += heap(2, [64] * 5, [0, 2, 4])                 # two holes
    packets += heap(3, [10, 20, 30, 40], [3, 2, 1])         # reordered, no start
    packets += heap(4, [50] * 4, [1, 0, 1, 3])              # repeated
    packets += heap(5, [32] * 3)                            # complete
    packets += heap(6, [16] * 4, [0, 1, 3], sized=False)    # unsized, a hole
    for cnt in range(7, 17):                                # evictions with max_heaps=3
        sizes = [int(s) for s in rng.integers(1, 200, 5)]
        keep = sorted(rng.choice(5, int(rng.integers(1, 5)), replace=False).tolist())
        if rng.integers(2):
            keep.reverse()
        packets += heap(cnt, sizes, keep)
    return packets


def spead2_incomplete(packets: list[bytes], allow_out_of_order: bool,
                      max_heaps: int = 3) -> list[dict]:
    """spead2's heaps of `packets`, in order: incomplete ones with their payload ranges."""
    stream = spead2.recv.Stream(
        THREAD_POOL,
        spead2.recv.StreamConfig(max_heaps=max_heaps, allow_out_of_order=allow_out_of_order),
        spead2.recv.RingStreamConfig(contiguous_only=False, incomplete_keep_payload_ranges=True))
    stream.add_inproc_reader(sp.inproc_queue(spead2, packets))
    out = []
    for x in stream:
        if isinstance(x, spead2.recv.IncompleteHeap):
            out.append({"cnt": x.cnt, "received": x.received_length, "length": x.heap_length,
                        "payload_ranges": [list(r) for r in x.payload_ranges]})
        else:
            out.append({"cnt": x.cnt, "complete": True})
    return out
