"""The daemon of two source trees on the same packets, interleaved: which is faster?

Run: ``python tests/benchmarks/daemon_ab.py A=PATH B=PATH [--workload W2] [--runs 9]
[--mib 512] [--dir /dev/shm]``.

Each tree is a directory put first on ``PYTHONPATH`` (a checkout with its
compiled modules built, or a copy of one).  The daemon of each runs as
`daemon_vs_library.run_daemon` runs it (the same configuration, ``file:``
source on tmpfs, binary sink), in turn, the order swapping every run, with
the tmpfs write limit (`daemon_vs_library.run_write_limit`) after each pair.
Printed: per tree the median seconds, the write limit over the daemon and
the sink's busy fraction; and the median over runs of A's time over B's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemon_vs_library as bench


def main(argv: list[str] | None = None) -> None:
    """Run the comparison (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, metavar="NAME=PATH")
    parser.add_argument("--workload", default="W2")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.trees)
    work = Path(tempfile.mkdtemp(prefix="daqd-daemon-ab-", dir=args.dir))
    try:
        (work / "out").mkdir()
        packets = work / f"{args.workload}.spead"
        heaps = bench.build_file(packets, args.workload, args.mib)
        config = work / "daemon.toml"
        config.write_text(bench.daemon_config(work, args.workload, packets))
        w = bench.WORKLOADS[args.workload]
        pool = [np.full(bench.HEAPS_PER_CHUNK * w.heap_bytes, i, np.uint8)
                for i in range(bench.DAEMON_POOL)]

        def one(name: str) -> tuple[float, float]:
            os.environ["PYTHONPATH"] = trees[name]
            bench.SINK_BUSY.clear()
            seconds, _ = bench.run_daemon(config, work / "out", heaps, w.heap_bytes)
            return seconds, bench.SINK_BUSY[-1]

        for name in trees:                      # untimed
            one(name)
        times: dict[str, list[float]] = {name: [] for name in trees}
        busy: dict[str, list[float]] = {name: [] for name in trees}
        limits = []
        for i in range(args.runs):
            for name in list(trees)[:: 1 if i % 2 == 0 else -1]:
                seconds, fraction = one(name)
                times[name].append(seconds)
                busy[name].append(fraction)
            limits.append(bench.run_write_limit(work / "limit.bin", pool,
                                                heaps // bench.HEAPS_PER_CHUNK)[0])
            print(f"run {i + 1}/{args.runs}: " + ", ".join(
                f"{name} {t[-1]:.3f} s" for name, t in times.items())
                + f", write limit {limits[-1]:.3f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{bench.cpu_model()}, {args.workload}, {heaps} heaps, medians of {args.runs} runs")
    limit = statistics.median(limits)
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name}: {m:.3f} s, write limit/daemon {limit / m:.2f}, "
              f"sink busy {statistics.median(busy[name]):.0%}")
    a, b = list(times)
    ratio = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    print(f"{a}/{b} time: {ratio:.3f}")


if __name__ == "__main__":
    main()
