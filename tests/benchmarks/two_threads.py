"""Two receive threads placing into one ChunkGroup against one thread doing all, from memory.

Run: ``python tests/benchmarks/two_threads.py [W1 W2 W3] [--runs N] [--heaps N]
[--split heaps|chunks] [--eviction lossless|lossy] [--batch N] [--budget S] [--pin]
[--heaps-per-chunk N] [--spin S] [--consumer-batch N] [--consumer batch|single|both]
[--json]``.

The packets of a reference workload are built once in memory (about 512 MiB
per workload by default), then split in two halves: ``--split heaps`` (the
default) gives the even heaps to one half and the odd heaps to the other, so
both threads write into every chunk, as two flows of one stream do (two
substreams, two senders' timestamps); ``--split chunks`` gives alternate
chunks to each.  Each run is one of:

- **one thread**: a ChunkGroup with one ChunkStream, whose thread reads the
  whole buffer (one ``ByteStreamReader``);
- **two threads**: the same group with two ChunkStreams, each its own
  thread and ``ByteStreamReader`` over its half.  ``--eviction lossless``
  (the default) loses nothing, so the figures compare the same work; but a
  lossless group makes its streams meet at every new chunk (a stream's
  window holds the last ``max_chunks`` chunks it wrote, the group's window is
  as wide, so the newest chunk can open only once every stream needs it):
  ``worker_blocked`` counts those waits.  ``--eviction lossy`` (what the
  daemon's ``threads`` need) never waits, and a stream that falls
  ``max_chunks`` chunks behind the other loses heaps, as too old: with
  readers from memory, unpaced, that is most of the time, so the figures
  report the heaps present rather than failing.

In both, the main thread is the consumer: it takes every completed chunk
from the group's data ring, counts its present heaps and releases it.  By
default it does so as the daemon does, a batch at a time
(``ChunkGroup.get_batch``: every chunk ready, one lock; ``release_many``: one
lock); ``--consumer single`` is the loop before batches (``get()`` and
``chunk.release()`` per chunk), and ``--consumer both`` interleaves runs of
each and prints the batch consumer's speed against the single one (same run).  The
runs alternate (one, two, one, two, ...), and the figures are medians: the
wall time of each (packets per second), the speedup (one thread's median time
over two threads'), the process CPU time per packet (every thread of the
process: the receive threads and the consumer), and the speedup by CPU time
(the one receive thread's CPU time over the busier of the two threads': what
two cores of their own would give, if the waits cost nothing), which a shared
machine leaves steadier than the wall time.  Every run must see every heap present
(else it stops with an error); ``--verify`` also checks every byte of the
first run of each kind.  ``--pin`` pins the receive threads to CPUs 0 and 1
(the one-thread run to CPU 0).  ``--budget`` is the seconds one ``process()``
call goes on from batch to batch (the daemon's ``RECEIVE_BUDGET``, 1 ms, by
default; 0: one batch per call, so a receive thread takes the GIL once per
batch and waits for it behind the consumer's and the other thread's Python).
``--heaps-per-chunk`` sets the chunk size (64 by default, ``daqd bench``'s),
``--spin`` and ``--consumer-batch`` the group's arguments of those names (the
group's defaults by default; ``--spin 0 --consumer-batch 1``: the group as it
was before them, a sleep per wait and a wake-up of the consumer per chunk);
``--baseline`` interleaves runs of one and two threads on that group as well,
and prints each thread count's speed against it (same run).

Where the wall time goes: each thread's time on a CPU, waiting for one (the
run queue: the other threads of the run, or other work on the machine) and
asleep (waits on the group: the other stream, a free chunk), from
``/proc/thread-self/schedstat``, medians over the runs, for the receive
threads (the busier) and the consumer.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads would spin beside the receive threads (no BLAS is used here).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.service.stream_runner import RECEIVE_BUDGET
from daqd.tools.bench.machine import cpu_model
from daqd.tools.bench.memory import BenchError, check_chunk, workload_buffer
from daqd.tools.bench.params import (
    HEAPS_PER_CHUNK,
    MAX_CHUNKS,
    MAX_HEAPS,
    MAX_PACKET_SIZE,
    POOL,
)

#: Packet bytes per workload buffer (both halves together).
TARGET_BYTES = 512 << 20


def default_heaps(workload: str, heaps_per_chunk: int = HEAPS_PER_CHUNK) -> int:
    """Heaps in about TARGET_BYTES, a whole even number of chunks."""
    w = WORKLOADS[workload]
    heaps = TARGET_BYTES // (w.packet_size * w.packets_per_heap)
    step = 2 * heaps_per_chunk
    return max(step, heaps - heaps % step)


def halves(workload: str, buf: np.ndarray, split: str,
           heaps_per_chunk: int = HEAPS_PER_CHUNK) -> list[np.ndarray]:
    """The packets of `buf` in two contiguous buffers: even/odd heaps or chunks."""
    w = WORKLOADS[workload]
    per_heap = w.packets_per_heap * w.packet_size
    heaps = buf.reshape(-1, per_heap)
    if split == "heaps":
        return [np.ascontiguousarray(heaps[k::2]).reshape(-1) for k in range(2)]
    chunks = heaps.reshape(-1, heaps_per_chunk * per_heap)
    return [np.ascontiguousarray(chunks[k::2]).reshape(-1) for k in range(2)]


@dataclass
class Run:
    """One run's figures."""

    seconds: float
    cpu_seconds: float
    present: int
    blocked: int                # waits of the streams on the group (worker_blocked)
    thread_cpu: list[float]     # each receive thread's own CPU time (seconds)
    # (on a CPU, in the run queue, asleep) seconds: each receive thread's, then the consumer's
    sched: list[tuple[float, float, float]]
    takes: int = 0              # the consumer's get_batch (or get) calls that returned chunks


def sched_times() -> tuple[int, int]:
    """This thread's nanoseconds on a CPU and waiting in the run queue (0, 0: unknown)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, queued = f.read().split()[:2]
    except (OSError, ValueError):
        return 0, 0
    return int(on_cpu), int(queued)


def sched_split(before: tuple[int, int], wall: float) -> tuple[float, float, float]:
    """Seconds on a CPU, in the run queue and asleep since `before`, over `wall` seconds."""
    after = sched_times()
    on_cpu, queued = (after[0] - before[0]) / 1e9, (after[1] - before[1]) / 1e9
    return on_cpu, queued, max(0.0, wall - on_cpu - queued)


def run_group(workload: str, buffers: list[np.ndarray], *, pin: bool, verify: bool,
              eviction: str = "lossless", batch: int = 64, max_chunks: int = MAX_CHUNKS,
              stream_chunks: int = 0, budget: float = RECEIVE_BUDGET,
              heaps_per_chunk: int = HEAPS_PER_CHUNK, group_args: dict[str, Any] | None = None,
              consumer: str = "batch") -> Run:
    """Place `buffers` (one receive thread each) into one ChunkGroup; consume every chunk."""
    group = _spead.ChunkGroup(**WORKLOADS[workload].layout(heaps_per_chunk),
                              max_chunks=max_chunks, stream_chunks=stream_chunks,
                              pool=POOL + max_chunks - MAX_CHUNKS, eviction=eviction,
                              **(group_args or {}))
    streams = [group.add_stream(max_heaps=MAX_HEAPS) for _ in buffers]
    readers = [_spead.ByteStreamReader(b, max_packet_size=MAX_PACKET_SIZE, batch=batch)
               for b in buffers]
    errors: list[BaseException] = []
    thread_cpu = [0.0] * len(buffers)
    sched: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(buffers)
    go = threading.Barrier(len(buffers) + 1)

    def receive(k: int) -> None:
        try:
            if pin:
                cpus = sorted(os.sched_getaffinity(0))
                os.sched_setaffinity(0, {cpus[k % len(cpus)]})
            go.wait()
            stream, reader = streams[k], readers[k]
            started, sched0, wall0 = time.thread_time(), sched_times(), time.perf_counter()
            while stream.process(reader, budget) >= 0 and not stream.stopped:
                pass
            stream.finish()
            thread_cpu[k] = time.thread_time() - started
            sched[k] = sched_split(sched0, time.perf_counter() - wall0)
        except BaseException as exc:        # reported by the main thread
            errors.append(exc)
            go.abort()

    threads = [threading.Thread(target=receive, args=(k,)) for k in range(len(buffers))]
    for t in threads:
        t.start()
    present = takes = 0
    count = np.count_nonzero
    go.wait()
    cpu0, start, sched0 = time.process_time(), time.perf_counter(), sched_times()
    if consumer == "batch":
        while chunks := group.get_batch():
            takes += 1
            for chunk in chunks:
                present += count(chunk.present)
                if verify:
                    check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
            group.release_many(chunks)
    else:
        while (chunk := group.get()) is not None:
            takes += 1
            present += count(chunk.present)
            if verify:
                check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
            chunk.release()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    consumer = sched_split(sched0, seconds)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    blocked = sum(s.stats()["worker_blocked"] for s in streams)
    return Run(seconds, cpu, int(present), blocked, thread_cpu, [*sched, consumer], takes)


def bench(workload: str, *, runs: int, heaps: int, split: str, pin: bool,
          verify: bool, eviction: str = "lossless", batch: int = 64,
          max_chunks: int = MAX_CHUNKS, stream_chunks: int = 0,
          budget: float = RECEIVE_BUDGET, heaps_per_chunk: int = HEAPS_PER_CHUNK,
          group_args: dict[str, Any] | None = None,
          baseline: dict[str, Any] | None = None, consumer: str = "batch") -> dict[str, Any]:
    """Interleaved runs of one and two threads; medians and ratios.

    With `baseline` (group arguments), one and two threads on a group with those
    arguments too, interleaved with the others: "one@base" and "two@base".
    `consumer` "batch" or "single" (see the module comment); "both": each
    kind of run with either consumer, the single one's as "one@single",
    "two@single" (and "one@base@single", ...).
    """
    w = WORKLOADS[workload]
    buf = workload_buffer(workload, heaps)
    parts = halves(workload, buf, split, heaps_per_chunk)
    packets = heaps * w.packets_per_heap
    kinds: dict[str, tuple[list[np.ndarray], dict[str, Any] | None, str]] = {
        "one": ([buf], group_args, consumer), "two": (parts, group_args, consumer)}
    if baseline is not None:
        kinds |= {"one@base": ([buf], baseline, consumer), "two@base": (parts, baseline, consumer)}
    if consumer == "both":
        kinds = {name + suffix: (b, a, how) for name, (b, a, _) in kinds.items()
                 for suffix, how in (("", "batch"), ("@single", "single"))}
    results: dict[str, list[Run]] = {kind: [] for kind in kinds}
    for i in range(runs + 1):           # run 0 of each: warm-up (and --verify), not counted
        for kind, (buffers, args, how) in kinds.items():
            run = run_group(workload, buffers, pin=pin, verify=verify and i == 0,
                            eviction=eviction, batch=batch, max_chunks=max_chunks,
                            stream_chunks=stream_chunks, budget=budget,
                            heaps_per_chunk=heaps_per_chunk, group_args=args, consumer=how)
            # --split chunks: the group's window starts at the first heap it sees,
            # which may be the second stream's (chunk 1): chunk 0 is then too old.
            lost = heaps_per_chunk if split == "chunks" and kind.startswith("two") else 0
            if run.present < heaps - lost and (eviction == "lossless"
                                               or kind.startswith("one")):
                raise BenchError(f"{workload} {kind}: {run.present} heaps present of {heaps}")
            if i:
                results[kind].append(run)
    out: dict[str, Any] = {"kinds": list(kinds), "workload": workload, "heaps": heaps,
                           "packets": packets,
                           "split": split, "eviction": eviction, "batch": batch,
                           "max_chunks": max_chunks, "stream_chunks": stream_chunks or max_chunks,
                           "budget": budget, "heaps_per_chunk": heaps_per_chunk,
                           "group_args": group_args or {}, "baseline": baseline, "runs": runs,
                           "consumer": consumer}
    for kind, rs in results.items():
        seconds = statistics.median(r.seconds for r in rs)
        cpu = statistics.median(r.cpu_seconds for r in rs)
        out[kind] = {"seconds": seconds, "mpkt_per_s": packets / seconds / 1e6,
                     "gbit_per_s": heaps * w.heap_bytes * 8 / seconds / 1e9,
                     "cpu_ns_per_packet": cpu / packets * 1e9,
                     "present": statistics.median(r.present / heaps for r in rs),
                     "blocked_per_chunk": statistics.median(
                         r.blocked * heaps_per_chunk / heaps for r in rs),
                     "chunks_per_take": statistics.median(
                         heaps / heaps_per_chunk / max(1, r.takes) for r in rs),
                     "all_seconds": [round(r.seconds, 4) for r in rs]}
    for kind, rs in results.items():
        # the busier receive thread's and the consumer's (on a CPU, run queue, asleep)
        busiest = [max(r.sched[:-1], key=lambda t: t[0]) for r in rs]
        out[kind]["receive_sched_seconds"] = [statistics.median(t[i] for t in busiest)
                                              for i in range(3)]
        out[kind]["consumer_sched_seconds"] = [statistics.median(r.sched[-1][i] for r in rs)
                                               for i in range(3)]
        out[kind]["busiest_thread_cpu_seconds"] = statistics.median(max(r.thread_cpu)
                                                                    for r in rs)
    out["speedup"] = out["one"]["seconds"] / out["two"]["seconds"]
    # What two cores of its own would give: the one thread's CPU time over the busier
    # of the two threads' (neither counts time it was preempted or asleep).
    out["cpu_speedup"] = (out["one"]["busiest_thread_cpu_seconds"]
                          / out["two"]["busiest_thread_cpu_seconds"])
    out["cpu_ratio"] = out["two"]["cpu_ns_per_packet"] / out["one"]["cpu_ns_per_packet"]
    if baseline is not None:
        out["base_speedup"] = out["one@base"]["seconds"] / out["two@base"]["seconds"]
        # the group's arguments against the baseline's, each thread count (same run)
        out["one_vs_base"] = out["one@base"]["seconds"] / out["one"]["seconds"]
        out["two_vs_base"] = out["two@base"]["seconds"] / out["two"]["seconds"]
    if consumer == "both":
        # the batch consumer against the single one, each thread count (same run)
        for name in ("one", "two"):
            out[f"{name}_vs_single"] = out[f"{name}@single"]["seconds"] / out[name]["seconds"]
        out["single_speedup"] = out["one@single"]["seconds"] / out["two@single"]["seconds"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="W1|W2|W3")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--heaps", type=int, default=None)
    parser.add_argument("--split", choices=["heaps", "chunks"], default="heaps")
    parser.add_argument("--eviction", choices=["lossless", "lossy"], default="lossless")
    parser.add_argument("--batch", type=int, default=64, help="packets per reader batch")
    parser.add_argument("--budget", type=float, default=RECEIVE_BUDGET,
                        help="seconds per process() call (0: one batch)")
    parser.add_argument("--heaps-per-chunk", type=int, default=HEAPS_PER_CHUNK)
    parser.add_argument("--spin", type=float, default=None,
                        help="the group's spin (seconds; default: the group's)")
    parser.add_argument("--consumer-batch", type=int, default=None,
                        help="the group's consumer_batch (default: the group's)")
    parser.add_argument("--baseline", action="store_true",
                        help="also (interleaved) the group with --spin 0 --consumer-batch 1")
    parser.add_argument("--max-chunks", type=int, default=MAX_CHUNKS,
                        help="the group's window (pool grows with it)")
    parser.add_argument("--stream-chunks", type=int, default=0,
                        help="each stream's window (0: max-chunks)")
    parser.add_argument("--consumer", choices=["batch", "single", "both"], default="batch",
                        help="the consumer's loop: get_batch/release_many, get/release, or "
                             "runs of each, interleaved")
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r} (expected W1, W2 or W3)")
    if args.verify and args.heaps_per_chunk != HEAPS_PER_CHUNK:
        parser.error(f"--verify checks chunks of {HEAPS_PER_CHUNK} heaps only")
    group_args = {name: value for name, value in (("spin", args.spin),
                                                  ("consumer_batch", args.consumer_batch))
                  if value is not None}
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", file=sys.stderr)
    reports = []
    for workload in args.workloads or list(WORKLOADS):
        heaps = args.heaps or default_heaps(workload, args.heaps_per_chunk)
        heaps -= heaps % (2 * args.heaps_per_chunk)
        report = bench(workload, runs=args.runs, heaps=heaps, split=args.split, pin=args.pin,
                       verify=args.verify, eviction=args.eviction, batch=args.batch,
                       max_chunks=args.max_chunks, stream_chunks=args.stream_chunks,
                       budget=args.budget, heaps_per_chunk=args.heaps_per_chunk,
                       group_args=group_args,
                       baseline={"spin": 0.0, "consumer_batch": 1} if args.baseline else None,
                       consumer=args.consumer)
        reports.append(report)
        if not args.json:
            one, two = report["one"], report["two"]
            print(f"{workload} ({args.split}, {args.eviction}, batch {args.batch}, budget "
                  f"{args.budget:g} s, {args.heaps_per_chunk} heaps per chunk, "
                  f"{''.join(f'{k} {v:g}, ' for k, v in group_args.items())}max_chunks "
                  f"{report['max_chunks']}, stream_chunks {report['stream_chunks']}): one thread "
                  f"{one['mpkt_per_s']:.2f} Mpkt/s ({one['gbit_per_s']:.1f} Gbit/s, "
                  f"{one['cpu_ns_per_packet']:.0f} ns CPU/pkt); two threads "
                  f"{two['mpkt_per_s']:.2f} Mpkt/s ({two['gbit_per_s']:.1f} Gbit/s, "
                  f"{two['cpu_ns_per_packet']:.0f} ns CPU/pkt, {two['present']:.1%} of heaps, "
                  f"{two['blocked_per_chunk']:.2f} waits/chunk); speedup "
                  f"{report['speedup']:.2f}x (receive threads' CPU time: "
                  f"{report['cpu_speedup']:.2f}x), CPU per packet x{report['cpu_ratio']:.2f}",
                  flush=True)
            if args.baseline:
                print(f"    baseline (spin 0, consumer_batch 1): one thread "
                      f"{report['one@base']['mpkt_per_s']:.2f} Mpkt/s, two threads "
                      f"{report['two@base']['mpkt_per_s']:.2f} Mpkt/s, speedup "
                      f"{report['base_speedup']:.2f}x; against it: one thread "
                      f"{report['one_vs_base']:.2f}x, two threads {report['two_vs_base']:.2f}x",
                      flush=True)
            if args.consumer == "both":
                print(f"    single get/release consumer: one thread "
                      f"{report['one@single']['mpkt_per_s']:.2f} Mpkt/s, two threads "
                      f"{report['two@single']['mpkt_per_s']:.2f} Mpkt/s, speedup "
                      f"{report['single_speedup']:.2f}x; batch consumer against it: one "
                      f"thread {report['one_vs_single']:.2f}x, two threads "
                      f"{report['two_vs_single']:.2f}x", flush=True)
            for kind in report["kinds"]:
                r, c = report[kind]["receive_sched_seconds"], report[kind]["consumer_sched_seconds"]
                print(f"    {kind}: busier receive thread {r[0] * 1e3:.1f} ms on a CPU, "
                      f"{r[1] * 1e3:.1f} ms in the run queue, {r[2] * 1e3:.1f} ms asleep; "
                      f"consumer {c[0] * 1e3:.1f} / {c[1] * 1e3:.1f} / {c[2] * 1e3:.1f} ms, "
                      f"{report[kind]['chunks_per_take']:.1f} chunks per take",
                      flush=True)
    if args.json:
        print(json.dumps(reports))


if __name__ == "__main__":
    main()
