"""The copy limit of ``daqd bench`` from memory: only the payload copies of a workload.

A receiver from memory does at least this: copy each packet's payload from
the packet buffer to its place in a chunk.  `CopyLimit` does only that, in
compiled code (`daqd._spead.CopyPlan`, with the copy a chunk stream uses),
from (source offset, destination offset, length) triples worked out once,
untimed, from the workload's packets (`payload_copies`), into a pre-touched
pool laid out as the receivers' chunks.  Its rate is the limit each
receiver is given as a fraction of.
"""

from __future__ import annotations

import mmap
import time

import numpy as np

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.chunk_check import check_chunk
from daqd.tools.bench.params import HEAPS_PER_CHUNK, POOL, layout

HUGE_PAGE = 2 << 20
COPIES = ("nontemporal", "standard")    # a stream's `memcpy` choices, the limit first

SPEAD_MAGIC = 0x53
HEAP_OFFSET = 0x3
PAYLOAD_LENGTH = 0x4
ADDRESS_BITS = 48


class CopyLimitError(RuntimeError):
    """The workload's packets are not what the copy limit can lay out (or it copied wrong)."""


class PoolBlock:
    """`count` pre-touched chunks of `workload`'s layout in one block.

    Aligned to a huge page and advised for transparent huge pages, each chunk
    on a page, as a ChunkStream allocates its pool.
    """

    def __init__(self, workload: str, count: int = POOL) -> None:
        heap_bytes = layout(workload)["heap_bytes"]
        self.chunk_bytes = HEAPS_PER_CHUNK * heap_bytes
        self.stride = (self.chunk_bytes + 4095) & ~4095
        self.count = count
        total = count * self.stride
        self.map = mmap.mmap(-1, total + HUGE_PAGE)
        raw = np.frombuffer(self.map, np.uint8)
        skip = (-raw.ctypes.data) % HUGE_PAGE
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.map.madvise(mmap.MADV_HUGEPAGE, skip, total - total % HUGE_PAGE)
        self.block = raw[skip:skip + total]
        self.block.fill(0)

    def chunk(self, index: int) -> np.ndarray:
        """Return the data of chunk `index` of the pool."""
        return self.block[index * self.stride:index * self.stride + self.chunk_bytes]


def payload_copies(workload: str, buf: np.ndarray, pool: PoolBlock
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (source offsets, destination offsets, lengths, heap indices) of `buf`'s payloads.

    Read from the packets themselves (SPEAD-64-48, all of the workload's
    size, back to back): each payload goes where the benchmark layout puts
    it, at its heap's slot (timestamp / timestamp_step) of chunk ``chunk_id
    % pool.count`` of `pool`, at its HEAP_OFFSET.

    Raises
    ------
    CopyLimitError
        A packet is not of the workload's shape.
    """
    w = WORKLOADS[workload]
    lay = layout(workload)
    size = w.packet_size
    if buf.nbytes % size:
        raise CopyLimitError(f"{workload}: {buf.nbytes} bytes are not whole packets of {size}")
    packets = np.asarray(buf).reshape(-1, size)
    head = packets[:, :8]
    n_items = head[:, 6].astype(np.int64) << 8 | head[:, 7]
    if (np.any(head[:, 0] != SPEAD_MAGIC) or np.any(n_items != n_items[0])
            or 8 + 8 * int(n_items[0]) >= size):
        raise CopyLimitError(f"{workload}: the packets do not all share one header shape")
    items = int(n_items[0])
    pointers = np.ascontiguousarray(packets[:, 8:8 + 8 * items]).view(">u8")
    ids = (pointers >> np.uint64(ADDRESS_BITS)) & np.uint64(0x7FFF)
    values = pointers & np.uint64((1 << ADDRESS_BITS) - 1)

    def item(item_id: int) -> np.ndarray:
        column = np.flatnonzero(ids[0] == item_id)
        if column.size != 1 or np.any(ids[:, column[0]] != item_id):
            raise CopyLimitError(f"{workload}: item {item_id:#x} is not in every packet "
                                 "at one place")
        return values[:, column[0]].astype(np.int64)

    offset, length = item(HEAP_OFFSET), item(PAYLOAD_LENGTH)
    heap = item(lay["timestamp_item"]) // lay["timestamp_step"]
    if np.any(8 + 8 * items + length != size) or np.any(offset + length > lay["heap_bytes"]):
        raise CopyLimitError(f"{workload}: a payload does not fill its packet or its heap")
    chunk_id = heap // HEAPS_PER_CHUNK
    src = np.arange(len(packets), dtype=np.uint64) * np.uint64(size) + np.uint64(8 + 8 * items)
    dst = ((chunk_id % pool.count) * pool.stride
           + (heap % HEAPS_PER_CHUNK) * lay["heap_bytes"] + offset)
    return src, dst.astype(np.uint64), length.astype(np.uint32), heap


class CopyLimit:
    """The copy limit of `workload` over `buf`, with one of `COPIES`; called as a receiver.

    Built once (untimed): the copies and a pool of chunks.  Each call copies
    every payload once and returns (seconds, heaps whose payload it copied).
    """

    def __init__(self, workload: str, buf: np.ndarray, memcpy: str = "nontemporal") -> None:
        self.workload = workload
        self.pool = PoolBlock(workload)
        src, dst, lengths, self.heaps = payload_copies(workload, buf, self.pool)
        self.plan = _spead.CopyPlan(buf, self.pool.block, src, dst, lengths, memcpy=memcpy)
        self.heap_bytes = WORKLOADS[workload].heap_bytes
        self.copied = 0                 # bytes the last call copied

    @property
    def payload_bytes(self) -> int:
        """Bytes one call copies (the workload's payload bytes)."""
        return int(self.plan.total_bytes)

    def __call__(self, workload: str, buf: np.ndarray, *, verify: bool = False
                 ) -> tuple[float, int]:
        """Copy every payload once: (seconds, heaps); `verify`: check the last chunks."""
        start = time.perf_counter()
        self.copied = self.plan.run()
        seconds = time.perf_counter() - start
        if self.copied % self.heap_bytes:
            raise CopyLimitError(f"{workload}: copied {self.copied} bytes, not whole heaps")
        if verify:
            self.check()
        return seconds, self.copied // self.heap_bytes

    def check(self) -> None:
        """Check the chunks the last pass left in the pool hold their heaps' bytes."""
        chunk_ids = self.heaps // HEAPS_PER_CHUNK
        for chunk_id in np.unique(chunk_ids)[-self.pool.count:]:
            present = np.zeros(HEAPS_PER_CHUNK, np.uint8)
            present[self.heaps[chunk_ids == chunk_id] % HEAPS_PER_CHUNK] = 1
            check_chunk(self.workload, int(chunk_id),
                        self.pool.chunk(int(chunk_id % self.pool.count)), present)
