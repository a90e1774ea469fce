"""The flusher's own cost per chunk record: a buffer's flushes to a binary sink against
the bare ``pwritev`` of the same bytes, in one run.

Run: ``python tests/benchmarks/flusher_cost.py [W1|W2] [--records N] [--runs R]
[--dir /dev/shm] [--profile]``.

Chunk records of the workload's layout (W2: 64 heaps of 1 KiB, 64 KiB per
chunk, the benchmarks' default; W1: 64 heaps of 8 KiB) are views of a pool of
`POOL` preallocated chunks, as the daemon's are.  They go two ways, interleaved
run by run (the order swaps every run):

- **flusher**: a ``fifo`` `Buffer` (capacity `POOL`, flushes written in
  slices of `SLICE` records, as the daemon builds it for a pool of 64 and
  ``max_chunks`` 4) with a ``binary`` sink (``header = false``) writing a new
  file in `--dir`; `FLUSH` records are put, then ``flush_now`` runs, as the
  flusher thread does when ``flush_count`` comes due.  Only the
  ``flush_now`` calls are timed (the puts are the receive side's).
- **write**: the same arrays, ``SLICE`` per ``pwritev``, to a new file in
  the same directory: the kernel's write alone.

Printed: the medians of both in µs per record, the flusher's µs beyond the
write per record (what Python costs per record on the flush side), and the
write's share of the flusher's time (1.0: the flusher spends its time in the
kernel's write).  The records' release gives nothing back (numpy arrays, not
pool chunks): the compiled pool's release is not in the figure.  CPU seconds
(``process_time``) are printed beside the times: a loaded machine disturbs them
less.  ``--profile`` prints a cProfile of one flusher run instead; ``--once``
makes one untimed run, for ``valgrind --tool=callgrind``: the instructions
per record are the difference of two record counts, e.g.::

    valgrind --tool=callgrind --callgrind-out-file=cg.N python \
        tests/benchmarks/flusher_cost.py W2 --once --records N

for N = 1000 and 4000: (total(4000) - total(1000)) / 3000.  They count the
puts too (the receive side's), and no kernel instruction (the write's copy).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.buffers import Buffer
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink
from daqd.tools.bench.machine import cpu_model

#: Chunks in the pool, records a flush takes (the daemon's ``flush_count``, plus
#: what arrives while it starts), records per slice (half of pool - max_chunks).
POOL, FLUSH, SLICE = 64, 31, 30
LAYOUTS = {"W1": (64, 8192), "W2": (64, 1024)}


def make_records(heaps_per_chunk: int, heap_bytes: int, count: int) -> list[ChunkRecord]:
    """Return `count` chunk records, views of `POOL` chunks taken in turn."""
    pool = [np.full((heaps_per_chunk, 1, heap_bytes), i, np.uint8) for i in range(POOL)]
    present = [np.ones((heaps_per_chunk, 1), np.uint8) for _ in range(POOL)]
    step = heaps_per_chunk * heap_bytes
    return [ChunkRecord(i, i * step, pool[i % POOL], present[i % POOL], _release=_nothing)
            for i in range(count)]


def _nothing() -> None:
    """Give nothing back (the records' chunks are this benchmark's)."""


def run_flusher(work: Path, workload: str, records: list[ChunkRecord]) -> tuple[float, float]:
    """Flush `records` through a buffer to a binary sink; (seconds, CPU seconds) in flush_now."""
    heaps_per_chunk, heap_bytes = LAYOUTS[workload]
    chunk = ChunkConfig(timestamp_item=0x1600, timestamp_step=heap_bytes,
                        heaps_per_chunk=heaps_per_chunk, heap_bytes=heap_bytes)
    out = work / "flusher"
    out.mkdir()
    sink = make_sink(SinkContext(workload, SinkConfig("binary", f"{out}/{{stream}}.bin",
                                                      header=False), chunk))
    buffer = Buffer("fifo", POOL, "block", flush_slice=SLICE)
    buffer.set_primary_sink(sink)
    buffer.recover()
    seconds = cpu = 0.0
    clock, process = time.perf_counter, time.process_time
    for first in range(0, len(records), FLUSH):
        for record in records[first:first + FLUSH]:
            record._holds = 1               # (each run puts the same records again)
            buffer.put(record)
        t, c = clock(), process()
        buffer.flush_now("count", due=True)
        seconds += clock() - t
        cpu += process() - c
    sink.close()
    size = sum(f.stat().st_size for f in out.iterdir())
    shutil.rmtree(out)
    if size != sum(r.nbytes for r in records) or buffer.size():
        raise RuntimeError(f"flusher: wrote {size} bytes, {buffer.size()} records left")
    return seconds, cpu


def run_write(work: Path, records: list[ChunkRecord]) -> tuple[float, float]:
    """Write the records' arrays, `SLICE` per pwritev, to a new file; (seconds, CPU)."""
    path = work / "write.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    seconds = cpu = 0.0
    offset = 0
    clock, process = time.perf_counter, time.process_time
    try:
        for first in range(0, len(records), SLICE):
            views = [r.data for r in records[first:first + SLICE]]
            t, c = clock(), process()
            offset += os.pwritev(fd, views, offset)
            seconds += clock() - t
            cpu += process() - c
    finally:
        os.close(fd)
    path.unlink()
    return seconds, cpu


def bench(workload: str, work: Path, count: int, runs: int,
          log: Callable[[str], None]) -> dict[str, float]:
    """Interleaved runs of both; medians of µs per record."""
    records = make_records(*LAYOUTS[workload], count)
    runners = {"flusher": lambda: run_flusher(work, workload, records),
               "write": lambda: run_write(work, records)}
    for run in runners.values():                # untimed
        run()
    times: dict[str, list[float]] = {who: [] for who in runners}
    cpus: dict[str, list[float]] = {who: [] for who in runners}
    for i in range(runs):
        for who in list(runners)[:: 1 if i % 2 == 0 else -1]:
            seconds, cpu = runners[who]()
            times[who].append(seconds / count * 1e6)
            cpus[who].append(cpu / count * 1e6)
        log(f"{workload} run {i + 1}/{runs}: " + ", ".join(
            f"{who} {times[who][-1]:.2f} µs ({cpus[who][-1]:.2f} µs CPU)" for who in runners))
    med = {who: statistics.median(t) for who, t in times.items()}
    cpu = {who: statistics.median(c) for who, c in cpus.items()}
    return {"flusher_us": med["flusher"], "write_us": med["write"],
            "beyond_us": med["flusher"] - med["write"],
            "write_share": med["write"] / med["flusher"],
            "flusher_cpu_us": cpu["flusher"], "write_cpu_us": cpu["write"],
            "beyond_cpu_us": cpu["flusher"] - cpu["write"]}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="W1|W2")
    parser.add_argument("--records", type=int, default=15500)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs for the files")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of one flusher run (first workload)")
    parser.add_argument("--once", action="store_true",
                        help="one untimed flusher run (first workload), e.g. under callgrind")
    args = parser.parse_args(argv)
    names = args.workloads or ["W2"]
    for name in names:
        if name not in LAYOUTS:
            parser.error(f"unknown workload {name!r} (expected W1 or W2)")
    work = Path(tempfile.mkdtemp(prefix="daqd-flusher-cost-", dir=args.dir))
    try:
        if args.once:
            run_flusher(work, names[0], make_records(*LAYOUTS[names[0]], args.records))
            return
        if args.profile:
            records = make_records(*LAYOUTS[names[0]], args.records)
            profile = cProfile.Profile()
            profile.runcall(run_flusher, work, names[0], records)
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
            return
        results = {name: bench(name, work, args.records, args.runs,
                               lambda line: print(line, file=sys.stderr, flush=True))
                   for name in names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  {cpu_model()}  "
          f"({os.cpu_count()} CPUs), {args.records} records, medians of {args.runs} "
          f"interleaved runs, µs per record")
    print(f"{'workload':8} {'flusher':>9} {'write':>9} {'beyond':>9} {'write share':>12} "
          f"{'CPU flusher':>12} {'CPU write':>10} {'CPU beyond':>11}")
    for name, r in results.items():
        print(f"{name:8} {r['flusher_us']:9.2f} {r['write_us']:9.2f} {r['beyond_us']:9.2f} "
              f"{r['write_share']:12.2f} {r['flusher_cpu_us']:12.2f} {r['write_cpu_us']:10.2f} "
              f"{r['beyond_cpu_us']:11.2f}")


if __name__ == "__main__":
    main()
