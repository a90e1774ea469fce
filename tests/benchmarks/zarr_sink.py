"""The zarr sink's throughput against the binary sink on the same disk, and each codec's cost.

Run: ``python tests/benchmarks/zarr_sink.py [--dir /var/tmp] [--mib 512] [--rounds 5]``.

The records are those of ``sink_bandwidth.py``: views of a real chunk pool
(W1: 64 heaps of 8 KiB, 512 KiB per chunk), refilled with fresh random bytes
before every run (this VM's disk compresses), written 16 per `write()` with
the default fsync policy (``on-rotate``: the binary file is fsynced when it
is closed, the zarr sink fsyncs its chunk files at close).  In each round
the binary sink and the zarr sink (no codec, ``zstd``, ``blosc``) write the
same bytes to the same directory, in an order that rotates from round to
round; each run is timed from the first write to the end of ``close()``.
Printed: best and median MB/s, the zarr sink's fraction of the binary
sink's (best of rounds, and the median of the rounds' fractions; the goal
is 80 % without a codec), CPU seconds per GiB and the bytes the store holds
per byte of data.  Random bytes are the codecs' worst case (nothing to
gain); ``--pattern`` writes W1's own payloads instead, which compress.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sink_bandwidth import CHUNK, CPU_SECONDS, FLUSH_RECORDS, disk_of, pool_records, randomise

from daqd.config import SinkConfig
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink

RUNS = {"binary": ("binary", ""), "zarr": ("zarr", ""), "zarr-zstd": ("zarr", "zstd"),
        "zarr-blosc": ("zarr", "blosc")}


def write(run: str, directory: Path, records: list[ChunkRecord]) -> tuple[float, int]:
    """Seconds for `run`'s sink to write `records`, 16 per flush, and close; bytes stored."""
    kind, codec = RUNS[run]
    path = directory / (f"bench-{run}.zarr" if kind == "zarr" else "bench.bin")
    sink = make_sink(SinkContext("bench", SinkConfig(kind, str(path), codec=codec), CHUNK, ""))
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(records), FLUSH_RECORDS):
        sink.write(records[first:first + FLUSH_RECORDS])
        sink.commit()
    sink.close()
    seconds = time.perf_counter() - start
    CPU_SECONDS["last"] = time.process_time() - cpu
    stats = sink.stats()
    if stats["records"] != len(records) or stats["errors"]:
        raise RuntimeError(f"{run}: {stats}")
    if kind == "zarr":
        stored = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
    else:
        stored = Path(stats["last_file"]).stat().st_size
        Path(stats["last_file"]).unlink()
    return seconds, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="a directory on the disk to test")
    parser.add_argument("--mib", type=int, default=512, help="MiB written per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pattern", action="store_true",
                        help="write W1's payloads (compressible), not random bytes")
    args = parser.parse_args()
    directory = Path(args.dir) / f"daqd-zarr-bench-{os.getpid()}"
    directory.mkdir(parents=True)
    chunk_bytes = CHUNK.heaps_per_chunk * CHUNK.heap_bytes
    records, chunks = pool_records(max(FLUSH_RECORDS, (args.mib << 20) // chunk_bytes))
    nbytes = len(records) * chunk_bytes
    print(f"python {sys.version.split()[0]}; {disk_of(directory)}; "
          f"{nbytes / 2**20:.0f} MiB per run, {chunk_bytes // 1024} KiB records, "
          f"{FLUSH_RECORDS} per flush, {args.rounds} rounds, "
          f"{'W1 payloads' if args.pattern else 'random bytes'}")
    names = list(RUNS)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    stored: dict[str, int] = {}
    fractions: dict[str, list[float]] = {n: [] for n in names[1:]}
    try:
        write("binary", directory, records)          # warm-up, not reported
        for round_ in range(args.rounds):
            results = {}
            for run in names[round_ % len(names):] + names[:round_ % len(names)]:
                if not args.pattern:
                    randomise(records, seed=round_ * 7 + len(results))
                os.sync()
                seconds, stored[run] = write(run, directory, records)
                results[run] = nbytes / seconds / 1e6
                rates[run].append(results[run])
                cpu[run].append(CPU_SECONDS["last"] / (nbytes / 2**30))
            for run in fractions:
                fractions[run].append(results[run] / results["binary"])
            print("  round: " + ", ".join(f"{n} {results[n]:.0f} MB/s" for n in names))
    finally:
        for chunk in chunks:
            chunk.release()
        shutil.rmtree(directory, ignore_errors=True)
    best = {n: max(v) for n, v in rates.items()}
    print(f"binary sink: best {best['binary']:.0f} MB/s, median "
          f"{statistics.median(rates['binary']):.0f} MB/s")
    for run in fractions:
        print(f"{run}: best {best[run]:.0f} MB/s = {best[run] / best['binary']:.1%} of the "
              f"binary sink's best; median {statistics.median(rates[run]):.0f} MB/s, median "
              f"of the rounds' fractions {statistics.median(fractions[run]):.1%}; stored "
              f"{stored[run] / nbytes:.3f} bytes per byte")
    print("CPU seconds per GiB, least (median): " + ", ".join(
        f"{n} {min(cpu[n]):.3f} ({statistics.median(cpu[n]):.3f})" for n in names))


if __name__ == "__main__":
    main()
