"""Heap mode from memory, daqd beside spead2 in one run.

Run: ``python tests/benchmarks/heap_mode_vs_spead2.py``.

Both decode the same pre-built workload bytes and hand every heap to Python
(spead2: ring stream iterated from Python; daqd: HeapStream.run).  Prints
heaps/s, packets/s, payload Gbit/s and the daqd/spead2 ratio, medians of
several runs.
"""

from __future__ import annotations

import statistics
import sys
import time

import spead2
import spead2.recv

from daqd import _spead
from daqd.recv.workloads import WORKLOADS

HEAPS = {"W1": 40000, "W2": 200000, "W3": 5000}


def workload_bytes(name: str, heaps: int) -> bytes:
    sim = _spead.SimReader(name, heaps=heaps)
    parts = []
    while (batch := sim.read_batch()) is not None:
        parts.extend(batch[0])
    return b"".join(parts)


def run_daqd(data: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    stream = _spead.HeapStream(max_heaps=8)
    reader = _spead.ByteStreamReader(data)
    n = 0
    # Heaps are dropped as they come, as in the spead2 loop below.
    while stream.process(reader) >= 0:
        n += sum(1 for h in stream.pop_ready() if h.complete)
    n += sum(1 for h in stream.flush() if h.complete)
    return time.perf_counter() - start, n


def run_spead2(data: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    stream = spead2.recv.Stream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.RingStreamConfig(heaps=64))
    stream.add_buffer_reader(data)
    n = sum(1 for _ in stream)
    return time.perf_counter() - start, n


def main(runs: int = 5) -> None:
    print(f"python {sys.version.split()[0]}, spead2 {spead2.__version__}")
    for name, heaps in HEAPS.items():
        data = workload_bytes(name, heaps)
        w = WORKLOADS[name]
        payload, per_heap = w.heap_bytes, w.packets_per_heap
        results = {}
        for label, fn in (("daqd", run_daqd), ("spead2", run_spead2)):
            times = []
            for _ in range(runs):
                seconds, n = fn(data)
                assert n == heaps, (label, n)
                times.append(seconds)
            results[label] = statistics.median(times)
        for label, t in results.items():
            print(f"{name} {label:7s} {heaps / t / 1e3:9.1f} kheaps/s "
                  f"{heaps * per_heap / t / 1e6:7.2f} Mpkt/s "
                  f"{heaps * payload * 8 / t / 1e9:7.2f} Gbit/s")
        print(f"{name} ratio daqd/spead2 = {results['spead2'] / results['daqd']:.2f}")


if __name__ == "__main__":
    main()
