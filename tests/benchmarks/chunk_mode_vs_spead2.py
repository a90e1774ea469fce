"""Chunk mode, daqd beside spead2 in one run: from memory and over loopback UDP.

Run: ``python tests/benchmarks/chunk_mode_vs_spead2.py [W1 W2 W3] [--mode memory|udp|all]
[--runs N] [--json]`` (the same as ``daqd bench --vs-spead2``).

From memory, both receivers take the same pre-built packet buffer (about
1 GiB per workload) with the same chunk layout (64 heaps per chunk,
max_chunks 4, pool 16, max_heaps 8) and every chunk passes through Python:
daqd ``ChunkStream.chunks(ByteStreamReader(buffer))`` with ``release()``,
spead2 ``ChunkRingStream`` + ``add_buffer_reader`` with the data ring iterated
and ``add_free_chunk``.  Medians of interleaved runs; every heap is checked
present, and every byte of an untimed first run is checked in place.  The
copy limit (the payload copies alone, `daqd.tools.bench.copy_limit`) takes its
turn in the same rounds, and over UDP the raw receiver (the socket limit) in
the same searches; each receiver is given as a fraction of them.

Over loopback UDP, the same sender process (``_spead.send`` with UDP GSO, pinned to one
core) feeds each receiver (pinned to the other) through the same socket setup
(64 MiB receive buffer); the figure is the highest offered rate with < 0.1 %
heap loss, found by trials at full speed (sender-limited only when two pass),
a halving ladder and a bisection on the offered rates of ~1 s trials (the two
searches taking turns), the median of ``--udp-runs`` searches; then the
receiver CPU time per packet at one fixed rate.  As root the UDP part runs in
a private network namespace whose loopback steers the kernel's receive work
to the receiver's CPU with RPS (``--loopback``); daqd receives with UDP GRO
unless ``--no-daqd-gro``.  See ``daqd bench --help`` and the daqd.tools.bench.run
docstring.
"""

from __future__ import annotations

import argparse
import json
import sys

from daqd.tools.bench.report import format_report
from daqd.tools.bench.run import WORKLOAD_NAMES, run_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="W1|W2|W3")
    parser.add_argument("--mode", choices=["memory", "udp", "all"], default="all")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--udp-runs", type=int, default=3)
    parser.add_argument("--heaps", type=int, default=None)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--wait-idle", type=float, default=0.0)
    parser.add_argument("--loopback", choices=["auto", "rps", "shared"], default="auto")
    parser.add_argument("--no-daqd-gro", dest="daqd_gro", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for w in args.workloads:
        if w not in WORKLOAD_NAMES:
            parser.error(f"unknown workload {w!r} (expected W1, W2 or W3)")
    report = run_bench(args.workloads or WORKLOAD_NAMES, vs_spead2=True, mode=args.mode,
                       runs=args.runs, heaps=args.heaps, trial_seconds=args.trial_seconds,
                       wait_idle=args.wait_idle, udp_runs=args.udp_runs,
                       loopback=args.loopback, daqd_gro=args.daqd_gro,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report.to_json()) if args.json else format_report(report))


if __name__ == "__main__":
    main()
