"""``daqd bench`` from memory: one pre-built packet buffer through daqd's and spead2's chunk paths.

See `daqd.tools.bench.run` for the method.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from daqd import _spead, _spead2compat
from daqd.errors import UsageProblem
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.chunk_check import BenchError, check_chunk
from daqd.tools.bench.copy_limit import COPIES, CopyLimit, PoolBlock
from daqd.tools.bench.machine import LoadMonitor, wait_until_quiet
from daqd.tools.bench.params import (
    HEAPS_PER_CHUNK,
    MAX_CHUNKS,
    MAX_HEAPS,
    MAX_PACKET_SIZE,
    POOL,
    layout,
    packet_size,
)
from daqd.tools.bench.report import (
    MemoryResult,
)

MEMORY_TARGET_BYTES = 1 << 30   # packet bytes per from-memory buffer


class MissingDependency(UsageProblem):
    """An optional package a requested benchmark needs is not installed."""


# ----------------------------------------------------------------------
# Workloads and layout


def default_memory_heaps(workload: str) -> int:
    """Heaps in about MEMORY_TARGET_BYTES of packets, a whole number of chunks."""
    per_heap = WORKLOADS[workload].packets_per_heap
    heaps = MEMORY_TARGET_BYTES // (packet_size(workload) * per_heap)
    return max(HEAPS_PER_CHUNK, heaps - heaps % HEAPS_PER_CHUNK)


def workload_buffer(workload: str, heaps: int) -> np.ndarray:
    """Build the packets of `heaps` heaps of `workload`, back to back, in one array."""
    sim = _spead.SimReader(workload, heaps=heaps, batch=256)
    fd = os.memfd_create("daqd-bench")
    try:
        _spead.send(sim, fd, "stream")
        size = os.fstat(fd).st_size
        buf = np.empty(size, np.uint8)
        view = buf.data
        done = 0
        while done < size:
            got = os.preadv(fd, [view[done:]], done)
            if got <= 0:
                raise BenchError(f"short read building the {workload} buffer")
            done += got
    finally:
        os.close(fd)
    return buf


def import_spead2() -> Any:
    """spead2 and spead2.recv, or one line saying that it is missing."""
    try:
        import spead2
        import spead2.recv
    except ImportError as exc:
        raise MissingDependency(
            f"--vs-spead2 needs spead2 (pip install 'spead2==4.5.1'): {exc}"
        ) from None
    return spead2


class Spead2Chunks:
    """A spead2 chunk pool laid out as daqd's own: one pre-touched block (`PoolBlock`).

    So neither receiver gets better memory than the other.
    """

    def __init__(self, spead2: Any, workload: str, count: int = POOL) -> None:
        self.block = PoolBlock(workload, count)
        self.chunks = [
            spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                              data=self.block.chunk(i))
            for i in range(count)
        ]


def spead2_chunk_stream(spead2: Any, workload: str) -> tuple[Any, Any, Spead2Chunks]:
    """Make a ChunkRingStream with daqd's layout; return it, its data ring and chunks."""
    placement = _spead2compat.Spead2Placement(**layout(workload))
    config = spead2.recv.StreamConfig(max_heaps=MAX_HEAPS)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=placement.items,
        max_chunks=MAX_CHUNKS,
        place=placement.place,
        max_heap_extra=placement.max_heap_extra,
    )
    data_ring = spead2.recv.ChunkRingbuffer(POOL)
    free_ring = spead2.recv.ChunkRingbuffer(POOL)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(1), config, chunk_config, data_ring, free_ring
    )
    pool = Spead2Chunks(spead2, workload)
    for chunk in pool.chunks:
        stream.add_free_chunk(chunk)
    return stream, data_ring, pool


def daqd_chunk_stream(workload: str) -> Any:
    """Make a ChunkStream with the benchmark layout."""
    return _spead.ChunkStream(
        **layout(workload), max_chunks=MAX_CHUNKS, pool=POOL, max_heaps=MAX_HEAPS
    )


# ----------------------------------------------------------------------
# From memory


def memory_run_daqd(workload: str, buf: np.ndarray, *, verify: bool = False) -> tuple[float, int]:
    """One pass of `buf` through daqd's chunk path: (seconds, heaps present)."""
    stream = daqd_chunk_stream(workload)
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE)
    count = np.count_nonzero
    present = 0
    start = time.perf_counter()
    for chunk in stream.chunks(reader):
        present += int(count(chunk.present))
        if verify:
            check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
        chunk.release()
    seconds = time.perf_counter() - start
    present = int(present)
    stats = stream.stats()
    if stats["chunk_heaps_present"] != present:
        raise BenchError(f"{workload}: daqd counted {stats['chunk_heaps_present']} heaps "
                         f"present, its chunks {present}")
    return seconds, present


def memory_run_spead2(workload: str, buf: np.ndarray, *, verify: bool = False
                      ) -> tuple[float, int]:
    """One pass of `buf` through spead2's ChunkRingStream: (seconds, heaps present)."""
    spead2 = import_spead2()
    stream, data_ring, _pool = spead2_chunk_stream(spead2, workload)
    count = np.count_nonzero
    present = 0
    start = time.perf_counter()
    stream.add_buffer_reader(buf)
    for chunk in data_ring:
        present += int(count(chunk.present))
        if verify:
            check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
        stream.add_free_chunk(chunk)
    seconds = time.perf_counter() - start
    stream.stop()
    return seconds, int(present)


RUNNERS: dict[str, Callable[..., tuple[float, int]]] = {
    "daqd": memory_run_daqd,
    "spead2": memory_run_spead2,
}


def bench_memory(workload: str, receivers: Sequence[str], *, runs: int, heaps: int | None = None,
                 wait_idle: float = 0.0, limits: bool = True,
                 log: Callable[[str], None] = lambda _: None
                 ) -> tuple[list[MemoryResult], list[MemoryResult]]:
    """Median from-memory throughput of each receiver on `workload`, and the copy limit.

    An untimed first run of each receiver checks every placed byte; then
    `runs` timed runs alternate between the receivers (the first one swaps
    every run).  Every run must yield every heap.  With `limits`, the copy
    limit (`daqd.tools.bench.copy_limit`: the payload copies alone, with each
    of `COPIES`) takes its turn in the same rounds, as a receiver would.  With
    `wait_idle`, each round of runs first waits up to that many seconds for
    other processes to leave the CPUs alone.  Returns (the receivers'
    results, the copy limits' results, named by their copy).
    """
    heaps = heaps or default_memory_heaps(workload)
    w = WORKLOADS[workload]
    heap_bytes, per_heap = w.heap_bytes, w.packets_per_heap
    t = time.perf_counter()
    buf = workload_buffer(workload, heaps)
    log(f"{workload}: built {buf.nbytes / 2**20:.0f} MiB of packets ({heaps} heaps) "
        f"in {time.perf_counter() - t:.1f} s")
    runners: dict[str, Callable[..., tuple[float, int]]] = {r: RUNNERS[r] for r in receivers}
    copies = {m: CopyLimit(workload, buf, m) for m in (COPIES if limits else ())}
    runners.update(copies)
    times: dict[str, list[float]] = {r: [] for r in runners}
    for r, run in runners.items():
        seconds, present = run(workload, buf, verify=True)
        _expect_all(workload, r, present, heaps)
        log(f"{workload}: {r if r in receivers else f'{r} copy'} checked every byte "
            f"(untimed warm-up, {seconds:.3f} s)")
    load = LoadMonitor()
    for i in range(runs):
        if wait_idle:
            waited = wait_until_quiet(wait_idle)
            if waited > 0.5:
                log(f"{workload}: waited {waited:.1f} s for the CPUs to be idle")
        order = list(runners) if i % 2 == 0 else list(reversed(runners))
        for r in order:
            seconds, present = runners[r](workload, buf)
            _expect_all(workload, r, present, heaps)
            times[r].append(seconds)
        log(f"{workload}: run {i + 1}/{runs}: "
            + ", ".join(f"{r} {times[r][-1]:.3f} s" for r in runners))
    other, steal = load.cores()
    if other is not None and other > 0.1:
        log(f"{workload}: other processes used {other:.2f} cores meanwhile")
    results: list[MemoryResult] = []
    for r in runners:
        median = statistics.median(times[r])
        results.append(MemoryResult(
            workload=workload, receiver=r, heaps=heaps,
            packets=copies[r].plan.copies if r in copies else heaps * per_heap,
            payload_bytes=copies[r].copied if r in copies else heaps * heap_bytes,
            buffer_bytes=int(buf.nbytes),
            seconds=[round(s, 6) for s in times[r]], median_seconds=median,
            heaps_per_s=heaps / median, packets_per_s=heaps * per_heap / median,
            gbit_per_s=heaps * heap_bytes * 8 / median / 1e9,
            other_load=other, steal=steal,
        ))
    return results[:len(receivers)], results[len(receivers):]


def _expect_all(workload: str, receiver: str, present: int, heaps: int) -> None:
    if present != heaps:
        raise BenchError(f"{workload}: {receiver} received {present} of {heaps} heaps "
                         "from memory")


