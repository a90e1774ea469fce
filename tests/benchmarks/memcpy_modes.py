"""The payload copies of ``memcpy`` (standard, nontemporal) side by side, from memory.

Run: ``python tests/benchmarks/memcpy_modes.py [W1 W2 W3] [--heaps N] [--runs N]``.

Chunk mode: the same pre-built packet buffer (`daqd.tools.bench.memory.
workload_buffer`) goes through a ``ChunkStream`` of the bench's layout (64
heaps per chunk, max_chunks 4, pool 16) with each copy, every chunk taken in
Python and released, and every heap checked present.  Heap mode: the same
buffer through a ``HeapStream`` (W3's 64 KiB heaps; each heap popped, as
``daqd dump`` and the daemon do).  Medians of interleaved runs, in GB/s of
packet bytes.  No test asserts on time: this is a figure for the README.
"""

from __future__ import annotations

import argparse
import statistics
import time

from daqd import _spead
from daqd.tools.bench.memory import default_memory_heaps, workload_buffer
from daqd.tools.bench.params import (
    MAX_CHUNKS,
    MAX_HEAPS,
    MAX_PACKET_SIZE,
    POOL,
    layout,
)

MODES = ("standard", "nontemporal")


def chunk_run(workload: str, buf, memcpy: str) -> float:
    """Seconds for one pass of `buf` through a chunk stream copying with `memcpy`."""
    stream = _spead.ChunkStream(**layout(workload), max_chunks=MAX_CHUNKS, pool=POOL,
                                max_heaps=MAX_HEAPS, memcpy=memcpy)
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE)
    start = time.perf_counter()
    for chunk in stream.chunks(reader):
        chunk.release()
    seconds = time.perf_counter() - start
    stats = stream.stats()
    assert stats["chunk_heaps_present"] == stats["heaps_complete"] > 0, stats
    return seconds


def heap_run(buf, memcpy: str) -> float:
    """Seconds for one pass of `buf` through a heap stream copying with `memcpy`."""
    stream = _spead.HeapStream(max_heaps=8, memcpy=memcpy)
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE)
    start = time.perf_counter()
    while stream.process(reader) >= 0:
        stream.pop_ready()
    stream.flush()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["W1", "W3"])
    parser.add_argument("--heaps", type=int, default=None)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    for w in args.workloads:
        buf = workload_buffer(w, args.heaps or default_memory_heaps(w))
        runs = [("chunk", w)] + ([("heap", w)] if w == "W3" else [])
        for mode, _ in runs:
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.runs):
                for m in MODES:
                    times[m].append(chunk_run(w, buf, m) if mode == "chunk" else heap_run(buf, m))
            line = ", ".join(f"{m} {buf.nbytes / statistics.median(t) / 1e9:.2f} GB/s"
                             for m, t in times.items())
            print(f"{w} {mode} mode ({buf.nbytes / 1e6:.0f} MB, median of {args.runs}): {line}")


if __name__ == "__main__":
    main()
