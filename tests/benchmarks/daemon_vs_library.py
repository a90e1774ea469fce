"""The whole daemon against the library, in one run: ``file:`` on tmpfs → chunks → binary sink.

Run: ``python tests/benchmarks/daemon_vs_library.py [W1 W2 W3] [--runs N] [--mib M]
[--dir /dev/shm] [--heaps-per-chunk H] [--json]``.

Per workload, the same packets (about `--mib` MiB, a whole number of
chunks, built by the compiled generator) go two ways, interleaved run by run
(the order swaps every run), and the medians are compared:

- **daemon**: ``daqd run --config`` as a subprocess, one chunk-mode stream
  reading the packets from a ``file:`` source on tmpfs, chunks through a
  buffer (``flush_count`` 16, pool 64: `DAEMON_POOL`) to a ``binary`` sink on tmpfs, the daemon
  exiting when the file ends.  Its figure is the span from its ``ready``
  log line (after the interpreter started, the configuration was read, the
  pool was allocated, the sink opened and the receive thread started) to
  the last write of its output file (the file's modification time; the sink
  writes no header, ``header = false``, so nothing rewrites the file when
  it closes): start-up and shutdown are not in it, every byte received and
  written is.  Both are wall-clock (``CLOCK_REALTIME``) times of this
  machine.  Every run checks the daemon's counters (every heap, every chunk
  written, none lost) and the output's size.
- **library**: in this process, ``ChunkStream`` + ``ByteStreamReader`` over
  the same bytes in memory (read from the same file beforehand), every chunk
  taken and given back (``release()``), timed from the stream's creation to
  the last chunk: what ``daqd bench`` measures from memory.
- **write limit**: in this process, the same payload bytes written to a
  fresh file in the same tmpfs directory as the sink writes them
  (``FLUSH_COUNT`` chunks per ``writev``, from `DAEMON_POOL` chunk-sized buffers
  taken in turn), timed from the open to the close: what the kernel's
  tmpfs write alone allows, the ceiling of any daemon that writes its data
  out (the daemon's receive side runs on the other core meanwhile).

Both use the chunk layout of ``daqd bench`` (64 heaps per chunk,
``max_chunks`` 4, ``max_heaps`` 8; the library's ``pool`` 16).  The output file is removed
after each daemon run; an untimed run of each goes first.  Printed per
workload: the medians (Gbit/s of payload, Mpkt/s), daemon/library,
daemon/write limit, and the CPU model; then the CPU seconds each took per
GiB of payload (the daemon's from ``/proc/PID/stat`` at its ``ready`` line to
its exit, every thread; the others' ``process_time``), which a loaded machine
disturbs far less than the times, and the daemon's CPU over the library's
plus the write limit's: what the daemon spends beyond placing the packets
and writing the chunks (its read copy, Python, hand-over).

"sink busy" is the median fraction of the daemon's time (as above) its sink
spent in ``write()`` (``write_seconds`` in its last log line): near 100 %,
the daemon goes as fast as its sink can write, whatever the write limit
measured in this process says.

- **pipeline limit**: in this process, the daemon's data path with nothing
  but a queue between its ends: the packets file mapped as the daemon maps
  it, ``ChunkStream`` with the daemon's pool in this thread, a writer thread
  writing the chunks as soon as they come (what has come, up to
  ``FLUSH_COUNT``, per ``pwritev``) to a new file beside the sink's and
  giving them back.  Both cores work at once,
  as in the daemon, so the memory traffic of receiving and writing meet as
  they do there; the daemon over it is what its records, buffer, flusher and
  sink cost.

"daemon/slower" is the daemon over the slower of the library and the write
limit: the receive side and the sink's writes run on two cores at once, so
that is as fast as any daemon that receives and writes can go.  On a VM
whose memory the host backs lazily (this project's), a tmpfs write into
pages the guest has not used lately is several times slower (the host
faults them in), and which pages a run gets varies: the write limit and the
daemon then vary from run to run, so compare medians of several runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.machine import cpu_model
from daqd.tools.bench.params import HEAPS_PER_CHUNK as DEFAULT_HEAPS_PER_CHUNK
from daqd.tools.bench.params import MAX_CHUNKS, MAX_HEAPS, POOL

# The daemon's pool and flush count (``--daemon-pool``, ``--flush-count``): a
# daemon writing to a file keeps a deeper pool than the library needs from
# memory, so that the receive side fills one part while the sink writes another
# (the buffer writes a long flush in slices of half what the pool spares).
DAEMON_POOL = 64
FLUSH_COUNT = 16
# Per daemon run: the fraction of its time its sink spent in write() (the
# ``write_seconds`` of its last log line over its time): near 1, the daemon
# goes as fast as its writes.
SINK_BUSY: list[float] = []
# Heaps per chunk of both (``--heaps-per-chunk``; default ``daqd bench``'s).
HEAPS_PER_CHUNK = DEFAULT_HEAPS_PER_CHUNK


def build_file(path: Path, workload: str, mib: int) -> int:
    """Write about `mib` MiB of `workload`'s packets (whole chunks) to `path`; return the heaps."""
    w = WORKLOADS[workload]
    per_chunk = HEAPS_PER_CHUNK * w.packets_per_heap * w.packet_size
    chunks = max(1, (mib << 20) // per_chunk)
    heaps = chunks * HEAPS_PER_CHUNK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _spead.send(_spead.SimReader(workload, heaps=heaps, batch=256), fd, "stream")
    finally:
        os.close(fd)
    return heaps


def daemon_config(work: Path, workload: str, packets: Path) -> str:
    """The daemon's configuration: `packets` → one chunk stream → a binary sink in `work`."""
    layout = WORKLOADS[workload].layout(HEAPS_PER_CHUNK)
    return f"""
[daemon]
name = "bench"
pidfile = "{work}/daqd.pid"
log_format = "json"

[zmq]
stats = ""
control = ""

[[stream]]
name = "{workload}"
sources = ["file:{packets}"]
max_heaps = {MAX_HEAPS}

[stream.chunk]
timestamp_item = {layout["timestamp_item"]}
timestamp_step = {layout["timestamp_step"]}
heaps_per_chunk = {layout["heaps_per_chunk"]}
heap_bytes = {layout["heap_bytes"]}
max_chunks = {MAX_CHUNKS}
pool = {DAEMON_POOL}

[stream.buffer]
kind = "fifo"
capacity = {DAEMON_POOL}
when_full = "block"
flush_count = {FLUSH_COUNT}
flush_interval = 0

[[stream.sinks]]
kind = "binary"
header = false
path = "{work}/out/{{stream}}.bin"
"""


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_daemon(config: Path, out: Path, heaps: int, heap_bytes: int) -> tuple[float, float]:
    """Run the daemon once; return the seconds from its ``ready`` line to its last write,
    and its CPU seconds after ``ready`` (every thread; its shutdown included)."""
    cpu_before = children_cpu()
    proc = subprocess.Popen([sys.executable, "-m", "daqd", "run", "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    events: dict[str, Any] = {}
    lines = []
    cpu_at_ready = None
    for line in proc.stderr:
        lines.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.setdefault(event.get("event"), event)
        if cpu_at_ready is None and event.get("event") == "ready":
            cpu_at_ready = process_cpu(proc.pid)
    if proc.wait(600) != 0 or cpu_at_ready is None:
        raise RuntimeError(f"daemon exited {proc.returncode}:\n{''.join(lines[-20:])}")
    cpu = children_cpu() - cpu_before - cpu_at_ready
    files = list(out.glob("*.bin"))
    if len(files) != 1:
        raise RuntimeError(f"expected one output file, found {files}")
    written = files[0].stat()
    ready = dt.datetime.fromisoformat(events["ready"]["timestamp"].replace("Z", "+00:00"))
    stopped = events["stopped"]
    figures = next(v for k, v in stopped.items() if isinstance(v, dict) and "heaps" in v)
    chunks = heaps // HEAPS_PER_CHUNK
    if (figures["heaps"], figures["chunks_completed"], figures["records_flushed"],
            figures["records_dropped"], figures["lost"]) != (heaps, chunks, chunks, 0, {}):
        raise RuntimeError(f"the daemon did not write every chunk: {figures}")
    if written.st_size != heaps * heap_bytes:
        raise RuntimeError(f"output holds {written.st_size} bytes, not {heaps * heap_bytes}")
    files[0].unlink()
    seconds = written.st_mtime_ns / 1e9 - ready.timestamp()
    SINK_BUSY.append(sum(figures["write_seconds"].values()) / seconds)
    return seconds, cpu


def run_library(workload: str, buf: np.ndarray, heaps: int) -> tuple[float, float]:
    """One pass of `buf` through ChunkStream + ByteStreamReader; (seconds, CPU seconds)."""
    layout = WORKLOADS[workload].layout(HEAPS_PER_CHUNK)
    start, cpu = time.perf_counter(), time.process_time()
    stream = _spead.ChunkStream(**layout, max_chunks=MAX_CHUNKS, pool=POOL, max_heaps=MAX_HEAPS)
    reader = _spead.ByteStreamReader(buf)
    present = 0
    for chunk in stream.chunks(reader):
        present += int(np.count_nonzero(chunk.present))
        chunk.release()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if present != heaps:
        raise RuntimeError(f"library: {present} of {heaps} heaps")
    return seconds, cpu


def run_write_limit(path: Path, chunks: list[np.ndarray], count: int) -> tuple[float, float]:
    """Write `count` chunks (taking `chunks` in turn) to a new `path` as the sink would;
    (seconds, CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for first in range(0, count, FLUSH_COUNT):
            views = [chunks[i % len(chunks)] for i in range(first, min(count, first + FLUSH_COUNT))]
            left = sum(v.nbytes for v in views)
            while left:             # (a short write on tmpfs only when it is full)
                left -= os.writev(fd, views)
                if left:
                    raise RuntimeError(f"short write to {path}")
    finally:
        os.close(fd)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    path.unlink()
    return seconds, cpu


def run_pipeline_limit(workload: str, packets: Path, out: Path, heaps: int
                       ) -> tuple[float, float]:
    """The daemon's data path with nothing but a queue between its two ends; (seconds, CPU).

    The packets file mapped as the daemon maps it, `ChunkStream` with the
    daemon's pool in this thread, and a writer thread writing the chunks to a
    new `out` as they come (up to ``FLUSH_COUNT`` per ``pwritev``) and giving
    them back: both cores busy at once, as in the daemon, with no records,
    buffer or sink.
    """
    layout = WORKLOADS[workload].layout(HEAPS_PER_CHUNK)
    chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
    written = [0]

    def writer(fd: int) -> None:
        # What has arrived, up to FLUSH_COUNT chunks, per write: as soon as it can.
        ended = False
        while not ended:
            batch = [chunks.get()]
            while len(batch) < FLUSH_COUNT and not chunks.empty():
                batch.append(chunks.get())
            if batch[-1] is None:
                ended = True
                batch.pop()
            if batch:
                written[0] += os.pwritev(fd, [c.data for c in batch], written[0])
                for c in batch:
                    c.release()

    # The pool is allocated (and touched) first, as the daemon's is before its ready line.
    stream = _spead.ChunkStream(**layout, max_chunks=MAX_CHUNKS, pool=DAEMON_POOL,
                                max_heaps=MAX_HEAPS)
    start, cpu = time.perf_counter(), time.process_time()
    with open(packets, "rb") as f:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        thread = threading.Thread(target=writer, args=(fd,))
        thread.start()
        try:
            for chunk in stream.chunks(_spead.ByteStreamReader(f.fileno(), mapped=True)):
                chunks.put(chunk)
        finally:
            chunks.put(None)
            thread.join()
            os.close(fd)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    size = out.stat().st_size
    out.unlink()
    if size != heaps * WORKLOADS[workload].heap_bytes:
        raise RuntimeError(f"pipeline limit: wrote {size} bytes")
    return seconds, cpu


def bench(workload: str, work: Path, runs: int, mib: int,
          log: Any = lambda line: None) -> dict[str, Any]:
    """Interleaved runs of the daemon and the library on `workload`; the medians and ratio."""
    w = WORKLOADS[workload]
    packets = work / f"{workload}.spead"
    heaps = build_file(packets, workload, mib)
    buf = np.fromfile(packets, np.uint8)
    (work / "out").mkdir(exist_ok=True)
    config = work / f"{workload}.toml"
    config.write_text(daemon_config(work, workload, packets))
    chunk_bytes = HEAPS_PER_CHUNK * w.heap_bytes
    pool = [np.full(chunk_bytes, i, np.uint8) for i in range(DAEMON_POOL)]
    runners = {
        "daemon": lambda: run_daemon(config, work / "out", heaps, w.heap_bytes),
        "library": lambda: run_library(workload, buf, heaps),
        "write_limit": lambda: run_write_limit(work / "limit.bin", pool,
                                               heaps // HEAPS_PER_CHUNK),
        "pipeline": lambda: run_pipeline_limit(workload, packets, work / "pipeline.bin", heaps),
    }
    try:
        for run in runners.values():            # untimed
            run()
        SINK_BUSY.clear()
        times: dict[str, list[float]] = {who: [] for who in runners}
        cpus: dict[str, list[float]] = {who: [] for who in runners}
        for i in range(runs):
            n = len(runners)
            order = list(runners)[i % n:] + list(runners)[:i % n]
            order = order if i % 2 == 0 else order[::-1]
            for who in order:
                seconds, cpu = runners[who]()
                times[who].append(seconds)
                cpus[who].append(cpu)
            log(f"{workload}: run {i + 1}/{runs}: "
                + ", ".join(f"{who} {times[who][-1]:.3f} s ({cpus[who][-1]:.2f} s CPU)"
                            for who in runners))
    finally:
        packets.unlink(missing_ok=True)
    medians = {who: statistics.median(t) for who, t in times.items()}
    cpu = {who: statistics.median(c) for who, c in cpus.items()}
    gib = heaps * w.heap_bytes / 2**30
    payload = heaps * w.heap_bytes
    packet_count = heaps * w.packets_per_heap
    return {
        "workload": workload, "heaps": heaps, "payload_bytes": payload,
        "file_bytes": int(buf.nbytes), "runs": runs,
        "seconds": {who: [round(s, 4) for s in t] for who, t in times.items()},
        "gbit_per_s": {who: payload * 8 / m / 1e9 for who, m in medians.items()},
        "mpkt_per_s": {who: packet_count / m / 1e6 for who, m in medians.items()},
        "daemon_over_library": medians["library"] / medians["daemon"],
        "daemon_over_write_limit": medians["write_limit"] / medians["daemon"],
        # The receive side and the sink's write run on two cores at once: the
        # slower of the two is as fast as any daemon doing both can be.
        "daemon_over_ceiling": max(medians["library"], medians["write_limit"]) / medians["daemon"],
        "daemon_over_pipeline": medians["pipeline"] / medians["daemon"],
        "sink_busy": statistics.median(SINK_BUSY),
        "cpu_seconds": {who: [round(c, 3) for c in cs] for who, cs in cpus.items()},
        "cpu_s_per_gib": {who: c / gib for who, c in cpu.items()},
        # CPU the daemon spends beyond the library's work and the sink's write.
        "daemon_cpu_over_copies": cpu["daemon"] / (cpu["library"] + cpu["write_limit"]),
        "payload_gib": gib,
    }


def main(argv: list[str] | None = None) -> None:
    global HEAPS_PER_CHUNK, DAEMON_POOL, FLUSH_COUNT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="W1|W2|W3")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024, help="packet MiB per workload")
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs for the packets and output")
    parser.add_argument("--heaps-per-chunk", type=int, default=DEFAULT_HEAPS_PER_CHUNK,
                        help="chunk layout of both (default: daqd bench's)")
    parser.add_argument("--daemon-pool", type=int, default=DAEMON_POOL,
                        help="the daemon's pool (chunks; the library's is daqd bench's)")
    parser.add_argument("--flush-count", type=int, default=FLUSH_COUNT,
                        help="the daemon's flush_count (and the write limit's chunks per writev)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    HEAPS_PER_CHUNK = args.heaps_per_chunk
    DAEMON_POOL, FLUSH_COUNT = args.daemon_pool, args.flush_count
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r} (expected W1, W2 or W3)")
    work = Path(tempfile.mkdtemp(prefix="daqd-daemon-bench-", dir=args.dir))
    results = []
    try:
        for name in args.workloads or sorted(WORKLOADS):
            results.append(bench(name, work, args.runs, args.mib,
                                 log=lambda line: print(line, file=sys.stderr, flush=True)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = {"cpu": cpu_model(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "cores": os.cpu_count(), "heaps_per_chunk": HEAPS_PER_CHUNK,
              "daemon_pool": DAEMON_POOL, "flush_count": FLUSH_COUNT}
    if args.json:
        print(json.dumps({**header, "results": results}))
        return
    print(f"{header['date']}  {header['cpu']}  ({header['cores']} CPUs), "
          f"{HEAPS_PER_CHUNK} heaps per chunk, the daemon's pool {DAEMON_POOL} and flush_count "
          f"{FLUSH_COUNT}, medians of {args.runs} interleaved runs")
    who = ("daemon", "library", "write_limit", "pipeline")
    print(f"{'workload':8} " + " ".join(f"{w:>27}" for w in who))
    for r in results:
        cells = [f"{r['gbit_per_s'][w]:6.2f} Gbit/s {r['mpkt_per_s'][w]:5.2f} Mpkt/s" for w in who]
        print(f"{r['workload']:8} " + " ".join(f"{c:>27}" for c in cells))
    ratios = {"daemon/library": "daemon_over_library",
              "daemon/write limit": "daemon_over_write_limit",
              "daemon/slower": "daemon_over_ceiling", "daemon/pipeline": "daemon_over_pipeline"}
    print(f"{'workload':8} " + " ".join(f"{k:>19}" for k in ratios) + f" {'sink busy':>10}")
    for r in results:
        print(f"{r['workload']:8} " + " ".join(f"{r[k]:19.2f}" for k in ratios.values())
              + f" {r['sink_busy']:10.0%}")
    print("CPU seconds per GiB of payload (medians; the daemon's after its ready line, "
          "every thread):")
    print(f"{'workload':8} " + " ".join(f"{w:>12}" for w in who)
          + f" {'daemon/(library+write limit)':>29}")
    for r in results:
        print(f"{r['workload']:8} " + " ".join(f"{r['cpu_s_per_gib'][w]:12.3f}" for w in who)
              + f" {r['daemon_cpu_over_copies']:29.2f}")


if __name__ == "__main__":
    main()
