"""The fixed parameters of ``daqd bench``: the chunk layout both receivers use."""

from __future__ import annotations

from typing import Any

from daqd.recv.sources import DEFAULT_MAX_PACKET_SIZE
from daqd.recv.workloads import WORKLOADS

# The chunk layout and window both receivers use.
HEAPS_PER_CHUNK = 64
MAX_CHUNKS = 4
POOL = 16
MAX_HEAPS = 8
MAX_PACKET_SIZE = DEFAULT_MAX_PACKET_SIZE

LOSS_LIMIT = 1e-3               # "sustained": fewer than 0.1 % of heaps lost
COST_FRACTION = 0.6             # fixed-rate CPU comparison: this much of the lower found rate


def layout(workload: str) -> dict[str, Any]:
    """ChunkStream/Spead2Placement layout arguments for `workload`."""
    return WORKLOADS[workload].layout(HEAPS_PER_CHUNK)


def packet_size(workload: str) -> int:
    """Bytes of one whole packet (56 header bytes plus its payload)."""
    return WORKLOADS[workload].packet_size
