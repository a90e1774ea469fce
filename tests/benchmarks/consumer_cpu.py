"""The daemon's chunk consumer thread: its CPU time per chunk and per GiB, and chunks per take.

Issue 16, items 4 and 5.  A ``file:`` source of a workload's packets on tmpfs
(built as ``daemon_vs_library.py`` builds it) goes through the daemon's own
`StreamRunner` (the configuration ``daemon_vs_library.py`` gives the daemon,
with ``--pool`` and ``--flush-count``) to a binary sink on the same tmpfs: the
flusher and the receive thread started as ``StreamRunner.start()`` starts
them, and the consumer loop (``StreamRunner._consume_chunks``) run in this
script's main thread, so that its own CPU time (``time.thread_time``) and its
voluntary context switches (``RUSAGE_THREAD``) are measured apart from the
other threads'.  A take is a call of the group's ``get_batch`` (or, in code
before it, ``get``) that returned chunks.  Medians over ``--runs`` runs.

To compare two versions of the code, run the script alternately with each on
``PYTHONPATH`` (the script only uses what both have).

    python tests/benchmarks/consumer_cpu.py [W1 W2 W3] [--runs 7] [--mib 1024]
        [--dir /dev/shm] [--pool 16] [--flush-count 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_vs_library as dvl

from daqd.config import parse
from daqd.recv.workloads import WORKLOADS
from daqd.service.stream_runner import POLL, StreamRunner
from daqd.tools.bench.machine import cpu_model


class CountingGroup:
    """The stream's chunk group, counting the consumer's takes and the chunks they gave."""

    def __init__(self, group: Any):
        self.group = group
        self.takes = 0
        self.chunks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)

    def get_batch(self, *args: Any) -> list[Any]:
        """`ChunkGroup.get_batch`, counted."""
        chunks = self.group.get_batch(*args)
        self.takes += bool(chunks)
        self.chunks += len(chunks)
        return chunks

    def get(self, *args: Any) -> Any:
        """`ChunkGroup.get`, counted (code before batches)."""
        chunk = self.group.get(*args)
        self.takes += chunk is not None
        self.chunks += chunk is not None
        return chunk


def run(config_text: str, work: Path) -> dict[str, float]:
    """One pass of the packets file through a StreamRunner; the consumer's figures."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    config = parse(config_text, str(work / "daqd.toml"))
    runner = StreamRunner(config.streams[0], config)
    runner.open()
    runner.flusher.start()
    runner.heartbeats = [0] * len(runner.sources)
    for i, (source, stream) in enumerate(zip(runner.sources, runner.streams, strict=True)):
        runner._thread(f"{runner.name}:{source.thread}", runner._receive, i, source, stream)
    counting = CountingGroup(runner.receiver.group)
    runner.receiver.group = counting
    usage0, cpu0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
    try:
        runner._consume_chunks()
    finally:
        cpu = time.thread_time() - cpu0
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        runner.receiver.group = counting.group
        runner.stop(timeout=POLL * 50)
    if runner.failed:
        raise RuntimeError(f"the stream failed: {runner.errors}")
    return {"cpu": cpu, "chunks": counting.chunks, "takes": counting.takes,
            "user": usage.ru_utime - usage0.ru_utime, "system": usage.ru_stime - usage0.ru_stime,
            "switches": usage.ru_nvcsw - usage0.ru_nvcsw}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="W1|W2|W3")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mib", type=int, default=1024, help="packet MiB per workload")
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs for the packets and output")
    parser.add_argument("--pool", type=int, default=16, help="the stream's pool (and capacity)")
    parser.add_argument("--flush-count", type=int, default=4)
    args = parser.parse_args(argv)
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r} (expected W1, W2 or W3)")
    dvl.DAEMON_POOL, dvl.FLUSH_COUNT = args.pool, args.flush_count
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S%z}  {cpu_model()}  "
          f"({os.cpu_count()} CPUs), pool {args.pool}, flush_count {args.flush_count}, "
          f"medians of {args.runs} runs", flush=True)
    for workload in args.workloads or ["W2"]:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="daqd-consumer-") as tmp:
            work = Path(tmp)
            packets = work / f"{workload}.spead"
            heaps = dvl.build_file(packets, workload, args.mib)
            gib = heaps * WORKLOADS[workload].heap_bytes / 2**30
            text = dvl.daemon_config(work, workload, packets)
            run(text, work)                     # untimed: caches, page tables
            runs = [run(text, work) for _ in range(args.runs)]
        chunks = runs[0]["chunks"]

        def med(key: str, rs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in rs)

        print(f"{workload}: {chunks} chunks ({gib:.2f} GiB); consumer thread CPU "
              f"{med('cpu') / chunks * 1e6:.2f} us per chunk, {med('cpu') / gib:.3f} s per GiB "
              f"(user {med('user') / gib:.3f}, system {med('system') / gib:.3f}); "
              f"{chunks / med('takes'):.1f} chunks per take, "
              f"{med('switches') / med('takes'):.2f} voluntary switches per take", flush=True)


if __name__ == "__main__":
    main()
