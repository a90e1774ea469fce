"""The fixed parameters of ``daqd bench``: the chunk layout both receivers use."""

from __future__ import annotations

from typing import Any

from daqd import _spead

# The chunk layout and window both receivers use.
HEAPS_PER_CHUNK = 64
MAX_CHUNKS = 4
POOL = 16
MAX_HEAPS = 8
MAX_PACKET_SIZE = 9200
TIMESTAMP_ITEM = 0x1600
FIRST_CNT = 1                   # SimReader's first HEAP_CNT

LOSS_LIMIT = 1e-3               # "sustained": fewer than 0.1 % of heaps lost
COST_FRACTION = 0.6             # fixed-rate CPU comparison: this much of the lower found rate


def layout(workload: str) -> dict[str, Any]:
    """ChunkStream/Spead2Placement layout arguments for `workload`."""
    heap_bytes, _, step = _spead.WORKLOADS[workload]
    return {
        "timestamp_item": TIMESTAMP_ITEM,
        "timestamp_step": step,
        "heaps_per_chunk": HEAPS_PER_CHUNK,
        "heap_bytes": heap_bytes,
    }


def packet_size(workload: str) -> int:
    """Bytes of one whole packet (56 header bytes plus its payload)."""
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    return 56 + heap_bytes // per_heap
