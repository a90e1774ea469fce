"""A flushed slice's chunk records given back: ``release()`` of each against `release_records`.

Run: ``python tests/benchmarks/release_cost.py [--waiting] [--slice N] [--trials T]``.

A chunk group of W2's layout (64 heaps of 1 KiB a chunk, one stream,
``max_chunks`` 1) hands out a slice of `--slice` completed chunks at a time,
wrapped as `ChunkRecord`s as the daemon's consumer wraps them; they are given
back either way, alternately, and each release is timed (µs per record,
medians).  With ``--waiting`` the pool holds nothing more (pool = slice + 1),
and a thread feeding the stream the next slice waits for a free chunk while
the records are released, as the receive thread does when the flusher is
behind: the number of times it waited again after the releases began is
printed too (per slice: one wake-up per chunk can make it wait once per
chunk; one per slice, never).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import heap_packets

from daqd import _spead
from daqd.pipeline.records import ChunkRecord, release_records
from daqd.tools.bench.machine import cpu_model

TS, DATA, STEP, HPC, HEAP_BYTES = 0x1600, 0x3300, 1024, 64, 1024


def packets(first: int, n: int) -> list[bytes]:
    """The packets of chunks `first` to `first + n - 1`, heap by heap."""
    return [p for i in range(first * HPC, (first + n) * HPC)
            for p in heap_packets(i + 1, [(TS, i * STEP), (DATA, b"x" * HEAP_BYTES)],
                                  packet_payload=1024)]


def main(argv: list[str] | None = None) -> None:
    """Time both ways, alternately, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=int, default=30, help="records released at once")
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--waiting", action="store_true",
                        help="a thread waits for a free chunk meanwhile")
    args = parser.parse_args(argv)
    n = args.slice
    group = _spead.ChunkGroup(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                              max_chunks=1, pool=n + 1 if args.waiting else n + 2,
                              wait_timeout=30.0)
    stream = group.add_stream(max_heaps=4)
    feeds = [packets(k * n + 1, n) for k in range(args.trials + 1)]
    stream.add_packets(packets(0, 1))
    times: dict[str, list[float]] = {"each": [], "together": []}
    waits: dict[str, list[int]] = {"each": [], "together": []}
    if args.waiting:
        stream.add_packets(feeds[0])
        records = ChunkRecord.from_chunks(group.get_batch())
    for k in range(args.trials):
        how = "each" if k % 2 == 0 else "together"
        feeder = None
        if args.waiting:
            feeder = threading.Thread(target=stream.add_packets, args=(feeds[k + 1],))
            feeder.start()
            deadline = time.monotonic() + 30
            while group.waiting_streams == 0 and time.monotonic() < deadline:
                time.sleep(0.0005)
        else:
            stream.add_packets(feeds[k])
            records = ChunkRecord.from_chunks(group.get_batch())
        assert len(records) == n, len(records)
        blocked = group.stats()["worker_blocked"]
        start = time.perf_counter_ns()
        if how == "each":
            for record in records:
                record.release()
        else:
            release_records(records)
        times[how].append((time.perf_counter_ns() - start) / n / 1000)
        if feeder is not None:
            feeder.join(timeout=30)
            waits[how].append(group.stats()["worker_blocked"] - blocked)
            records = ChunkRecord.from_chunks(group.get_batch())
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  {cpu_model()}  "
          f"slices of {n}, {args.trials // 2} trials each, "
          f"{'a thread waiting' if args.waiting else 'nobody waiting'}")
    for how in times:
        line = f"{how:>9}: {statistics.median(times[how]):.3f} µs per record"
        if waits[how]:
            line += f", waits again per slice: mean {statistics.mean(waits[how]):.2f}"
        print(line)
    ratio = statistics.median(times["each"]) / statistics.median(times["together"])
    print(f"each / together: {ratio:.2f}")


if __name__ == "__main__":
    main()
