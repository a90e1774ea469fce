"""The check of the chunks a ``daqd bench`` run fills: every heap in its slot, every byte right."""

from __future__ import annotations

import numpy as np

from daqd.recv.workloads import FIRST_CNT, WORKLOADS
from daqd.tools.bench.params import HEAPS_PER_CHUNK


class BenchError(RuntimeError):
    """A benchmark produced a wrong result (a missing heap, a misplaced byte)."""


def _pattern(workload: str) -> np.ndarray:
    w = WORKLOADS[workload]
    heap_bytes, per_heap = w.heap_bytes, w.packets_per_heap
    payload = heap_bytes // per_heap
    return ((np.arange(payload) * 7 + 3) & 0xFF).astype(np.uint8)


def check_chunk(workload: str, chunk_id: int, data: np.ndarray, present: np.ndarray) -> None:
    """Check every present slot of a chunk holds its heap's bytes (SimReader layout).

    Each packet's payload starts with the big-endian ``HEAP_CNT << 16 | packet
    index``; the rest is a fixed pattern.
    """
    w = WORKLOADS[workload]
    heap_bytes, per_heap = w.heap_bytes, w.packets_per_heap
    payload = heap_bytes // per_heap
    slots = np.flatnonzero(np.asarray(present).reshape(HEAPS_PER_CHUNK))
    packets = np.asarray(data).reshape(HEAPS_PER_CHUNK, per_heap, payload)[slots]
    marker = np.ascontiguousarray(packets[:, :, :8]).view(">u8")[..., 0]
    heap = chunk_id * HEAPS_PER_CHUNK + slots.astype(np.int64)
    expected = ((heap + FIRST_CNT)[:, None] << 16) | np.arange(per_heap)[None, :]
    if not np.array_equal(marker, expected):
        raise BenchError(f"{workload}: chunk {chunk_id} holds heaps in the wrong slots")
    if not np.array_equal(packets[:, :, 8:], np.broadcast_to(_pattern(workload)[8:],
                                                             packets[:, :, 8:].shape)):
        raise BenchError(f"{workload}: chunk {chunk_id} holds corrupted payload bytes")
