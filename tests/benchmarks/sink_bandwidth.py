"""Chunk records to the binary and hdf5 sinks, as a fraction of the disk's write bandwidth.

Run: ``python tests/benchmarks/sink_bandwidth.py [--dir /var/tmp] [--mib 1024] [--rounds 6]``.

The records are views of a real chunk pool (a ChunkStream fed the W1
workload: 64 heaps of 8 KiB, 512 KiB per chunk), written 16 per `write()`
as a buffer with ``flush_count = 16`` would, with the default fsync policy
(``on-rotate``: the file is fsynced when it is closed).  The pool holds the
whole run, so the figure is the sink's, not the receiver's.

Virtual disks often compress or deduplicate (here zeros write five times
faster than random bytes), so before each round the chunks' data are filled
with fresh random bytes, and the reference writes exactly those bytes: a
dd-like sequential write of the same chunks to the same directory, 8 MiB per
system call, fsync at the end.  Each run is timed from the first write until
the file is fsynced and closed (the sinks also rename it); the fraction is
taken within a round.  Best-of-rounds (as timeit reports) and medians are
printed, with the CPU time per GiB.

Fresh memory is slow to touch the first time on these VMs, page cache
included, so one unreported reference run warms the page cache up, and the
order of the three runs rotates from round to round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from daqd import _spead
from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink

HPC, HEAP_BYTES, STEP = 64, 8192, 8192
CHUNK = ChunkConfig(timestamp_item=0x1600, timestamp_step=STEP, heaps_per_chunk=HPC,
                    heap_bytes=HEAP_BYTES, max_chunks=2, pool=24)
FLUSH_RECORDS = 16
DD_BLOCK = 8 << 20
# CPU seconds (user + system, this process) of the last timed run.
CPU_SECONDS = {"last": 0.0}


def pool_records(count: int) -> tuple[list[ChunkRecord], list]:
    """`count` chunks held from a real pool (W1), wrapped as records; and the chunks."""
    stream = _spead.ChunkStream(timestamp_item=CHUNK.timestamp_item, timestamp_step=STEP,
                                heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                                max_chunks=CHUNK.max_chunks, pool=count + CHUNK.max_chunks)
    reader = _spead.SimReader("W1", heaps=count * HPC)
    chunks = []
    while (batch := reader.read_batch()) is not None:
        stream.add_packets(batch[0])
    stream.finish()
    while (chunk := stream.get(1.0)) is not None:
        chunks.append(chunk)
    if len(chunks) != count or not all(c.present.all() for c in chunks):
        raise RuntimeError("the pool did not yield complete chunks")
    return [ChunkRecord.from_chunk(c) for c in chunks], chunks


def randomise(records: list[ChunkRecord], seed: int) -> None:
    """Fill the chunks' data with random bytes (incompressible, new every round)."""
    rng = np.random.default_rng(seed)
    for record in records:
        record.data.reshape(-1).view(np.uint8)[:] = rng.integers(
            0, 256, record.data.nbytes, np.uint8)


def write_dd(directory: Path, records: list[ChunkRecord], direct: bool = False) -> float:
    """Seconds to write the records' bytes in 8 MiB system calls and fsync them.

    With `direct`, through O_DIRECT (the pool's chunks are page-aligned): what
    the device takes without the page cache, for comparison only.
    """
    per_call = max(1, DD_BLOCK // records[0].nbytes)
    path = directory / "dd.bin"
    start, cpu = time.perf_counter(), time.process_time()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o644)
    try:
        for first in range(0, len(records), per_call):
            views = [memoryview(r.data).cast("B") for r in records[first:first + per_call]]
            want = sum(v.nbytes for v in views)
            if os.writev(fd, views) != want:
                raise RuntimeError("short write")
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    CPU_SECONDS["last"] = time.process_time() - cpu
    path.unlink()
    return seconds


def write_sink(kind: str, directory: Path, records: list[ChunkRecord]) -> float:
    """Seconds for the sink to write `records`, 16 per flush, then fsync and publish."""
    sink = make_sink(SinkContext("bench", SinkConfig(kind, str(directory / f"bench.{kind}")),
                                 CHUNK, ""))
    flushes = [records[i:i + FLUSH_RECORDS] for i in range(0, len(records), FLUSH_RECORDS)]
    start, cpu = time.perf_counter(), time.process_time()
    for flush in flushes:
        sink.write(flush)
    sink.close()
    seconds = time.perf_counter() - start
    CPU_SECONDS["last"] = time.process_time() - cpu
    stats = sink.stats()
    if stats["records"] != len(records) or stats["errors"] or stats["files"] != 1:
        raise RuntimeError(f"{kind} sink: {stats}")
    Path(stats["last_file"]).unlink()
    return seconds


def disk_of(directory: Path) -> str:
    """Device and file system of `directory`, from /proc/self/mounts."""
    best = ("?", "?", "")
    target = str(directory.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount_point, fs = line.split()[:3]
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) \
                and len(mount_point) >= len(best[2]):
            best = (device, fs, mount_point)
    return f"{best[0]} ({best[1]}, mounted on {best[2]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="a directory on the disk to test")
    parser.add_argument("--mib", type=int, default=1024, help="MiB written per run")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    directory = Path(args.dir) / f"daqd-sink-bench-{os.getpid()}"
    directory.mkdir(parents=True)
    chunk_bytes = HPC * HEAP_BYTES
    records, chunks = pool_records(max(FLUSH_RECORDS, (args.mib << 20) // chunk_bytes))
    nbytes = len(records) * chunk_bytes
    print(f"python {sys.version.split()[0]}; {disk_of(directory)}; "
          f"{nbytes / 2**20:.0f} MiB per run, {chunk_bytes // 1024} KiB records, "
          f"{FLUSH_RECORDS} per flush, {args.rounds} rounds")
    rates: dict[str, list[float]] = {"dd": [], "binary": [], "hdf5": []}
    cpu: dict[str, list[float]] = {"dd": [], "binary": [], "hdf5": []}
    fractions: dict[str, list[float]] = {"binary": [], "hdf5": []}
    kinds = ["dd", "binary", "hdf5"]
    direct = ""
    try:
        randomise(records, seed=args.rounds * 3)
        write_dd(directory, records)                # warm-up, not reported
        for round_ in range(args.rounds):
            results = {}
            for kind in kinds[round_ % 3:] + kinds[:round_ % 3]:
                randomise(records, seed=round_ * 3 + len(results))
                os.sync()
                seconds = write_dd(directory, records) if kind == "dd" else \
                    write_sink(kind, directory, records)
                results[kind] = nbytes / seconds / 1e6
                rates[kind].append(results[kind])
                cpu[kind].append(CPU_SECONDS["last"] / (nbytes / 2**30))
            for kind in fractions:
                fractions[kind].append(results[kind] / results["dd"])
            print("  round: " + ", ".join(f"{k} {results[k]:.0f} MB/s" for k in kinds))
        try:
            direct = f"{nbytes / write_dd(directory, records, direct=True) / 1e6:.0f} MB/s"
        except OSError as exc:
            direct = f"not measured ({exc.strerror})"
    finally:
        for chunk in chunks:
            chunk.release()
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()
    best = {kind: max(v) for kind, v in rates.items()}
    print(f"disk (dd-like, same bytes, fsync): best {best['dd']:.0f} MB/s, "
          f"median {statistics.median(rates['dd']):.0f} MB/s")
    for kind in fractions:
        print(f"{kind} sink: best {best[kind]:.0f} MB/s = {best[kind] / best['dd']:.1%} of the "
              f"disk's best; median {statistics.median(rates[kind]):.0f} MB/s, median of the "
              f"rounds' fractions {statistics.median(fractions[kind]):.1%}")
    # Wall-clock rates swing when other processes want the CPU or the page cache
    # draws on memory the VM has not touched yet (buffered writes are memory
    # copies); the least CPU time per GiB shows the sinks' own overhead.
    print("CPU seconds per GiB, least (median): " + ", ".join(
        f"{kind} {min(cpu[kind]):.3f} ({statistics.median(cpu[kind]):.3f})" for kind in cpu))
    print(f"device with O_DIRECT (no page cache; for comparison, not the reference): {direct}")


if __name__ == "__main__":
    main()
