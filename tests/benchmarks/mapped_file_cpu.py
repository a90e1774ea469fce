"""CPU seconds per GiB of the receive path: a ``file:`` source mapped, or read().

Issue 16, item 5.  Files of W1, W2 and W3 packets (built as
``daemon_vs_library.py`` builds them) on ``/dev/shm`` (memory-resident), each
read by ``ChunkStream.chunks`` over a `ByteStreamReader` in three ways: read()
into its 4 MiB buffer (the way before), the mapping with each 4 MiB window
populated in one call (MADV_POPULATE_READ, the daemon's way), and the mapping
faulted page by page.  Opening and closing (the munmap) are in each trial.
CPU time (``time.process_time``), because the machine is shared; trials
interleaved (in a shuffled order each round), medians; the ratio is to read().

    python tests/benchmarks/mapped_file_cpu.py [W1 W2 W3] [--runs 5] [--mib 512]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_vs_library import HEAPS_PER_CHUNK, build_file, cpu_model

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.params import MAX_CHUNKS, MAX_HEAPS, POOL

WAYS = {
    "read()": {"mapped": False},
    "mapped": {"mapped": True, "populate": True},
    "mapped, no populate": {"mapped": True, "populate": False},
}


def one_pass(workload: str, path: Path, heaps: int, options: dict) -> float:
    """CPU seconds of one pass of `path` through a ChunkStream (open to close)."""
    layout = WORKLOADS[workload].layout(HEAPS_PER_CHUNK)
    stream = _spead.ChunkStream(**layout, max_chunks=MAX_CHUNKS, pool=POOL, max_heaps=MAX_HEAPS)
    present = 0
    cpu = time.process_time()
    fd = os.open(path, os.O_RDONLY)
    reader = _spead.ByteStreamReader(fd, **options)
    for chunk in stream.chunks(reader):
        present += int(np.count_nonzero(chunk.present))
        chunk.release()
    reader.close()
    os.close(fd)
    cpu = time.process_time() - cpu
    if present != heaps:
        raise RuntimeError(f"{workload} {options}: {present} of {heaps} heaps")
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", default=["W1", "W2", "W3"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    print(f"# {cpu_model()}, {dt.date.today()}, {args.mib} MiB per file in {args.dir}, "
          f"{args.runs} interleaved runs, medians")
    print("| workload | " + " | ".join(f"{w} (CPU s/GiB)" for w in WAYS)
          + " | mapped / read() | no populate / read() |")
    print("|---" * (len(WAYS) + 3) + "|")
    rng = random.Random(16)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        for workload in args.workloads:
            path = Path(work) / f"{workload}.spead"
            heaps = build_file(path, workload, args.mib)
            gib = path.stat().st_size / (1 << 30)
            one_pass(workload, path, heaps, WAYS["read()"])         # warm up
            cpu: dict[str, list[float]] = {w: [] for w in WAYS}
            order = list(WAYS)
            for _ in range(args.runs):
                rng.shuffle(order)          # no way always follows another
                for way in order:
                    cpu[way].append(one_pass(workload, path, heaps, WAYS[way]) / gib)
            med = {w: statistics.median(v) for w, v in cpu.items()}
            print(f"| {workload} | " + " | ".join(f"{med[w]:.3f}" for w in WAYS)
                  + f" | {med['mapped'] / med['read()']:.2f}"
                  + f" | {med['mapped, no populate'] / med['read()']:.2f} |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
