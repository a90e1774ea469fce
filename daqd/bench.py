"""Chunk-mode throughput benchmarks, daqd beside spead2 (``daqd bench``).

Two measurements, each on the reference workloads W1-W3 (DESIGN.md), with
the same chunk layout on both sides (timestamp placement, 64 heaps per chunk,
``max_chunks=4``, a pool of 16 chunks, ``max_heaps=8``):

from memory
    One pre-built buffer of packets (the SimReader workload, back to back,
    about 1 GiB so that it is cold in every cache) goes through daqd's chunk
    path (``ChunkStream.chunks(ByteStreamReader(buffer))``, each chunk
    released in Python) and through spead2's ``ChunkRingStream``
    (``add_buffer_reader``, placement by ``_spead.Spead2Placement``, chunks
    taken from the data ring and given back with ``add_free_chunk`` in
    Python).  Runs alternate between the two receivers; the figure is the
    median.  An untimed first run of each checks every placed byte, and every
    run checks that every heap arrived (the sum of the presence flags).

over loopback UDP
    The highest offered rate each receiver sustains with less than 0.1 % of
    heaps lost.  One sender process (``_spead.send`` over a connected UDP
    socket, paced by the SimReader) runs pinned to one core, the receiver to
    the other; both receivers get the same socket (64 MiB receive buffer by
    default, past net.core.rmem_max with SO_RCVBUFFORCE when the process may:
    a VM stops a vCPU for milliseconds now and then, and a smaller buffer
    overflows in such a stop whatever the receiver).  The sender uses UDP GSO:
    messages of up to 64 KiB of equal-size datagrams, several per
    ``sendmmsg``, which the kernel cuts up (on loopback only just before the
    receiving socket, so the receivers see the same separate datagrams); where
    the kernel refuses it, or with ``sender_gso=False``, one datagram per
    message.  Each trial is about one second of traffic ending with a stop
    heap; a paced sender that falls behind its schedule does not catch up in
    a burst.  A trial passes when fewer than 0.1 % of the heaps were lost and
    the receiver ended no more than 2 % of the trial behind the sender (the
    deep buffer would otherwise hide a receiver a little too slow).  The
    search (`rate_search`) works on the rates the sender actually offered:
    trials at the sender's full speed (which varies from trial to trial)
    until two pass, the receiver then being sender-limited (its rate only a
    lower bound), or until `retries` + 1 fail; then a halving ladder below
    the failing rate if nothing below it passed, and a geometric bisection
    between the fastest pass and the slowest failure above it.  A paced rate
    fails only when `retries` + 1 trials at it all fail.  The two receivers'
    searches take turns trial by trial; the whole search is repeated
    (``udp_runs``) and each receiver's figure is the median over the runs,
    with the ratio of the medians and the spread of the runs.  When the
    sender cannot outrun a receiver, its rate says little; so each workload
    ends with a few alternating trials of both at one fixed rate, comparing
    the receiver CPU time per packet (all of it, its user-space part, and
    the receiver CPU's busy time with the kernel's softirq work on it).

    Where the UDP part runs (``loopback``): on the machine's loopback the
    sender's core also runs the kernel's receive path for every datagram,
    and runs out before a fast receiver does.  Where the process may (root),
    it runs instead in a private network namespace whose loopback has RPS
    steer that receive path to the receiver's CPU (`daqd.bench_netns`), as a
    NIC queue's interrupt on the capture core would: then the receiver's
    core carries the kernel's work and its own, and is what runs out.
    daqd's socket asks for UDP GRO, as the daemon's does (``daqd_gro``);
    spead2's receives one datagram per message.

spead2 is imported only when a spead2 figure is asked for.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np

from daqd import __version__, _spead
from daqd.errors import UsageProblem
from daqd.simulate import udp_batch

WORKLOAD_NAMES = ("W1", "W2", "W3")
MODES = ("memory", "udp", "all")
LOOPBACKS = ("auto", "rps", "shared")

# The chunk layout and window both receivers use.
HEAPS_PER_CHUNK = 64
MAX_CHUNKS = 4
POOL = 16
MAX_HEAPS = 8
MAX_PACKET_SIZE = 9200
TIMESTAMP_ITEM = 0x1600
FIRST_CNT = 1                   # SimReader's first HEAP_CNT

MEMORY_TARGET_BYTES = 1 << 30   # packet bytes per from-memory buffer
LOSS_LIMIT = 1e-3               # "sustained": fewer than 0.1 % of heaps lost
LAG_LIMIT = 0.02                # ... and the backlog drained within 2 % of the trial time
MIN_LAG_LIMIT_MS = 10.0         # (but at least 10 ms)
SOCKET_BUFFER = 64 << 20        # default UDP receive buffer of both receivers
SEND_BUFFER = 8 << 20           # the sender's SO_SNDBUF
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
HUGE_PAGE = 2 << 20
PACING_SLACK = 0.001            # UDP sender: behind its schedule by more, it starts it again
OTHER_LOAD_LIMIT = 0.1          # UDP: a trial failing while others used more cores runs again
COST_FRACTION = 0.6             # fixed-rate CPU comparison: this much of the lower found rate


class BenchError(RuntimeError):
    """A benchmark produced a wrong result (a missing heap, a misplaced byte)."""


class MissingDependency(UsageProblem):
    """An optional package a requested benchmark needs is not installed."""


# ----------------------------------------------------------------------
# Workloads and layout


def layout(workload: str) -> dict[str, Any]:
    """ChunkStream/Spead2Placement layout arguments for `workload`."""
    heap_bytes, _, step = _spead.WORKLOADS[workload]
    return {
        "timestamp_item": TIMESTAMP_ITEM,
        "timestamp_step": step,
        "heaps_per_chunk": HEAPS_PER_CHUNK,
        "heap_bytes": heap_bytes,
    }


def packet_size(workload: str) -> int:
    """Bytes of one whole packet (56 header bytes plus its payload)."""
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    return 56 + heap_bytes // per_heap


def default_memory_heaps(workload: str) -> int:
    """Heaps in about MEMORY_TARGET_BYTES of packets, a whole number of chunks."""
    _, per_heap, _ = _spead.WORKLOADS[workload]
    heaps = MEMORY_TARGET_BYTES // (packet_size(workload) * per_heap)
    return max(HEAPS_PER_CHUNK, heaps - heaps % HEAPS_PER_CHUNK)


def workload_buffer(workload: str, heaps: int) -> np.ndarray:
    """Build the packets of `heaps` heaps of `workload`, back to back, in one array."""
    sim = _spead.SimReader(workload, heaps=heaps, batch=256)
    fd = os.memfd_create("daqd-bench")
    try:
        _spead.send(sim, fd, "stream")
        size = os.fstat(fd).st_size
        buf = np.empty(size, np.uint8)
        view = memoryview(buf)
        done = 0
        while done < size:
            got = os.preadv(fd, [view[done:]], done)
            if got <= 0:
                raise BenchError(f"short read building the {workload} buffer")
            done += got
    finally:
        os.close(fd)
    return buf


def _pattern(workload: str) -> np.ndarray:
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    payload = heap_bytes // per_heap
    return ((np.arange(payload) * 7 + 3) & 0xFF).astype(np.uint8)


def check_chunk(workload: str, chunk_id: int, data: np.ndarray, present: np.ndarray) -> None:
    """Check every present slot of a chunk holds its heap's bytes (SimReader layout).

    Each packet's payload starts with the big-endian ``HEAP_CNT << 16 | packet
    index``; the rest is a fixed pattern.
    """
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    payload = heap_bytes // per_heap
    slots = np.flatnonzero(np.asarray(present).reshape(HEAPS_PER_CHUNK))
    packets = np.asarray(data).reshape(HEAPS_PER_CHUNK, per_heap, payload)[slots]
    marker = np.ascontiguousarray(packets[:, :, :8]).view(">u8")[..., 0]
    heap = chunk_id * HEAPS_PER_CHUNK + slots.astype(np.int64)
    expected = ((heap + FIRST_CNT)[:, None] << 16) | np.arange(per_heap)[None, :]
    if not np.array_equal(marker, expected):
        raise BenchError(f"{workload}: chunk {chunk_id} holds heaps in the wrong slots")
    if not np.array_equal(packets[:, :, 8:], np.broadcast_to(_pattern(workload)[8:],
                                                             packets[:, :, 8:].shape)):
        raise BenchError(f"{workload}: chunk {chunk_id} holds corrupted payload bytes")


def import_spead2() -> Any:
    """spead2 and spead2.recv, or one line saying that it is missing."""
    try:
        import spead2
        import spead2.recv
    except ImportError as exc:
        raise MissingDependency(
            f"--vs-spead2 needs spead2 (pip install 'spead2==4.5.1'): {exc}"
        ) from None
    return spead2


class Spead2Chunks:
    """A spead2 chunk pool laid out as daqd's own: one pre-touched block.

    The block is aligned to a huge page and advised for transparent huge
    pages, each chunk starts on a page, as ChunkStream allocates its pool, so
    neither receiver gets better memory than the other.
    """

    def __init__(self, spead2: Any, workload: str, count: int = POOL) -> None:
        heap_bytes = layout(workload)["heap_bytes"]
        chunk_bytes = HEAPS_PER_CHUNK * heap_bytes
        stride = (chunk_bytes + 4095) & ~4095
        total = count * stride
        self.map = mmap.mmap(-1, total + HUGE_PAGE)
        raw = np.frombuffer(self.map, np.uint8)
        skip = (-raw.ctypes.data) % HUGE_PAGE
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.map.madvise(mmap.MADV_HUGEPAGE, skip, total - total % HUGE_PAGE)
        block = raw[skip:skip + total]
        block.fill(0)
        self.chunks = [
            spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                data=block[i * stride:i * stride + chunk_bytes],
            )
            for i in range(count)
        ]


def spead2_chunk_stream(spead2: Any, workload: str) -> tuple[Any, Any, Spead2Chunks]:
    """Make a ChunkRingStream with daqd's layout; return it, its data ring and chunks."""
    placement = _spead.Spead2Placement(**layout(workload))
    config = spead2.recv.StreamConfig(max_heaps=MAX_HEAPS)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=placement.items,
        max_chunks=MAX_CHUNKS,
        place=placement.place,
        max_heap_extra=placement.max_heap_extra,
    )
    data_ring = spead2.recv.ChunkRingbuffer(POOL)
    free_ring = spead2.recv.ChunkRingbuffer(POOL)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(1), config, chunk_config, data_ring, free_ring
    )
    pool = Spead2Chunks(spead2, workload)
    for chunk in pool.chunks:
        stream.add_free_chunk(chunk)
    return stream, data_ring, pool


def daqd_chunk_stream(workload: str) -> Any:
    """Make a ChunkStream with the benchmark layout."""
    return _spead.ChunkStream(
        **layout(workload), max_chunks=MAX_CHUNKS, pool=POOL, max_heaps=MAX_HEAPS
    )


# ----------------------------------------------------------------------
# From memory


def memory_run_daqd(workload: str, buf: np.ndarray, *, verify: bool = False) -> tuple[float, int]:
    """One pass of `buf` through daqd's chunk path: (seconds, heaps present)."""
    stream = daqd_chunk_stream(workload)
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE)
    count = np.count_nonzero
    present = 0
    start = time.perf_counter()
    for chunk in stream.chunks(reader):
        present += count(chunk.present)
        if verify:
            check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
        chunk.release()
    seconds = time.perf_counter() - start
    present = int(present)
    stats = stream.stats()
    if stats["chunk_heaps_present"] != present:
        raise BenchError(f"{workload}: daqd counted {stats['chunk_heaps_present']} heaps "
                         f"present, its chunks {present}")
    return seconds, present


def memory_run_spead2(workload: str, buf: np.ndarray, *, verify: bool = False
                      ) -> tuple[float, int]:
    """One pass of `buf` through spead2's ChunkRingStream: (seconds, heaps present)."""
    spead2 = import_spead2()
    stream, data_ring, _pool = spead2_chunk_stream(spead2, workload)
    count = np.count_nonzero
    present = 0
    start = time.perf_counter()
    stream.add_buffer_reader(buf)
    for chunk in data_ring:
        present += count(chunk.present)
        if verify:
            check_chunk(workload, chunk.chunk_id, chunk.data, chunk.present)
        stream.add_free_chunk(chunk)
    seconds = time.perf_counter() - start
    stream.stop()
    return seconds, int(present)


RUNNERS: dict[str, Callable[..., tuple[float, int]]] = {
    "daqd": memory_run_daqd,
    "spead2": memory_run_spead2,
}


@dataclass
class MemoryResult:
    """One receiver's from-memory figures on one workload."""

    workload: str
    receiver: str
    heaps: int
    packets: int
    payload_bytes: int
    buffer_bytes: int
    seconds: list[float]
    median_seconds: float
    heaps_per_s: float
    packets_per_s: float
    gbit_per_s: float
    other_load: float | None = None     # cores used by other processes during the runs
    steal: float | None = None          # cores stolen by the hypervisor


def bench_memory(workload: str, receivers: Sequence[str], *, runs: int, heaps: int | None = None,
                 wait_idle: float = 0.0,
                 log: Callable[[str], None] = lambda _: None) -> list[MemoryResult]:
    """Median from-memory throughput of each receiver on `workload`.

    An untimed first run of each receiver checks every placed byte; then
    `runs` timed runs alternate between the receivers (the first one swaps
    every run).  Every run must yield every heap.  With `wait_idle`, each
    round of runs first waits up to that many seconds for other processes to
    leave the CPUs alone.
    """
    heaps = heaps or default_memory_heaps(workload)
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    t = time.perf_counter()
    buf = workload_buffer(workload, heaps)
    log(f"{workload}: built {buf.nbytes / 2**20:.0f} MiB of packets ({heaps} heaps) "
        f"in {time.perf_counter() - t:.1f} s")
    times: dict[str, list[float]] = {r: [] for r in receivers}
    for r in receivers:
        seconds, present = RUNNERS[r](workload, buf, verify=True)
        _expect_all(workload, r, present, heaps)
        log(f"{workload}: {r} checked every byte (untimed warm-up, {seconds:.3f} s)")
    load = LoadMonitor()
    for i in range(runs):
        if wait_idle:
            waited = wait_until_quiet(wait_idle)
            if waited > 0.5:
                log(f"{workload}: waited {waited:.1f} s for the CPUs to be idle")
        order = list(receivers) if i % 2 == 0 else list(reversed(receivers))
        for r in order:
            seconds, present = RUNNERS[r](workload, buf)
            _expect_all(workload, r, present, heaps)
            times[r].append(seconds)
        log(f"{workload}: run {i + 1}/{runs}: "
            + ", ".join(f"{r} {times[r][-1]:.3f} s" for r in receivers))
    other, steal = load.cores()
    if other is not None and other > 0.1:
        log(f"{workload}: other processes used {other:.2f} cores meanwhile")
    results = []
    for r in receivers:
        median = statistics.median(times[r])
        results.append(MemoryResult(
            workload=workload, receiver=r, heaps=heaps, packets=heaps * per_heap,
            payload_bytes=heaps * heap_bytes, buffer_bytes=int(buf.nbytes),
            seconds=[round(s, 6) for s in times[r]], median_seconds=median,
            heaps_per_s=heaps / median, packets_per_s=heaps * per_heap / median,
            gbit_per_s=heaps * heap_bytes * 8 / median / 1e9,
            other_load=other, steal=steal,
        ))
    return results


def _expect_all(workload: str, receiver: str, present: int, heaps: int) -> None:
    if present != heaps:
        raise BenchError(f"{workload}: {receiver} received {present} of {heaps} heaps "
                         "from memory")


# ----------------------------------------------------------------------
# Over loopback UDP: the sender process


def sender_main() -> None:
    """Run the sender process: one JSON command per line on stdin, one reply each.

    Command: ``{"workload", "port", "rate" (packets/s, 0 = full speed),
    "seconds", "gso"}``.  The sender sends about `seconds` of the workload to
    127.0.0.1:port, then a stop heap (three times, in case one is dropped),
    and replies ``{"packets", "bytes", "dropped", "seconds", "end", "gso",
    "gso_errno"}`` (see `_send_trial`; ``end``: ``time.perf_counter()`` when
    the last data packet went, CLOCK_MONOTONIC as in the receiver).
    """
    cpu = int(sys.argv[1]) if len(sys.argv) > 1 else -1
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        out.write(json.dumps(_send_trial(**command)) + "\n")
        out.flush()


def _send_trial(workload: str, port: int, rate: float, seconds: float,
                gso: bool = True) -> dict[str, Any]:
    """Send one trial's traffic; reply as `sender_main` says.

    ``"gso"`` in the reply: whether UDP GSO stayed on to the end;
    ``"gso_errno"``: the errno value with which the kernel refused it (0:
    it did not, -1: no UDP_SEGMENT socket option).
    """
    _, per_heap, _ = _spead.WORKLOADS[workload]
    size = packet_size(workload)
    batch = udp_batch(workload, gso)
    # Whole batches (so no packet of a batch is skipped and every heap is
    # whole), about 20 ms of traffic per send() call.
    block = batch * max(1, int(rate * 0.02) // batch if rate else 2048 // batch)
    # No catch-up bursts: a sender that fell behind (a slow spell of its
    # core) goes on at the rate asked for, never faster, so that the offered
    # rate is an upper bound on the rate the receiver saw at any time.
    sim = _spead.SimReader(workload, heaps=0, rate=rate * size, batch=batch,
                           first_cnt=FIRST_CNT, catch_up=False, max_behind=PACING_SLACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packets = nbytes = dropped = 0
    info = {"gso": gso, "gso_errno": 0}
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.connect(("127.0.0.1", port))
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            # Once refused, GSO is not asked for again.
            p, b, d = _spead.send(sim, sock.fileno(), "udp", max_packets=block,
                                  gso=info["gso"], info=info)
            packets += p
            nbytes += b
            dropped += d
        end = time.perf_counter()
        elapsed = end - start
        stop = _spead.stop_packet(FIRST_CNT + packets // per_heap)
        for _ in range(3):
            _spead.send(_spead.ByteListReader([stop]), sock.fileno(), "udp")
            time.sleep(0.01)
    finally:
        sock.close()
    return {"packets": packets, "bytes": nbytes, "dropped": dropped, "seconds": elapsed,
            "end": end, "gso": bool(gso and info["gso"]), "gso_errno": info["gso_errno"],
            "resets": sim.schedule_resets}


class Sender:
    """The sender process, pinned to `cpu` (None: not pinned)."""

    def __init__(self, cpu: int | None) -> None:
        code = "from daqd.bench import sender_main; sender_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(-1 if cpu is None else cpu)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin: TextIO = self.proc.stdin
        self.stdout: TextIO = self.proc.stdout
        if self.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError("the sender process did not start")

    def start(self, workload: str, port: int, rate: float, seconds: float,
              gso: bool = True) -> None:
        """Start one trial's traffic (returns at once)."""
        command = {"workload": workload, "port": port, "rate": rate, "seconds": seconds,
                   "gso": gso}
        self.stdin.write(json.dumps(command) + "\n")
        self.stdin.flush()

    def result(self) -> dict[str, Any] | None:
        """Wait for the trial's reply; None if the sender died."""
        line = self.stdout.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        """End the sender process."""
        if self.proc.poll() is None:
            try:
                self.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------
# Over loopback UDP: receivers and trials


def _user_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def receive_socket(size: int = SOCKET_BUFFER) -> tuple[socket.socket, int, bool]:
    """Open a UDP socket on 127.0.0.1; return it, its receive buffer, whether forced.

    The buffer is asked for with SO_RCVBUF, which the kernel caps at
    net.core.rmem_max; if that gives less and the process may (CAP_NET_ADMIN),
    SO_RCVBUFFORCE goes past the cap.  Both receivers get the same socket.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    forced = False
    # Linux reports twice the usable size it granted.
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 < size:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            forced = True
        except OSError:
            pass
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2, forced


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on `sock` (the drops column of /proc/net/udp)."""
    inode = os.fstat(sock.fileno()).st_ino
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 13 and int(fields[9]) == inode:
                    return int(fields[12])
    except (OSError, ValueError, StopIteration):
        pass
    return None


@dataclass
class Trial:
    """One trial at one offered rate."""

    requested_pps: float        # 0: the sender's full speed
    offered_pps: float          # what the sender managed
    heaps_sent: int
    heaps_present: int
    loss: float
    ok: bool
    sender_dropped: int
    kernel_drops: int | None
    daqd_socket_drops: int | None
    stopped_by: str             # "stop heap" or "timeout"
    receiver_cpu: float         # receiver process CPU time / trial wall time
    cpu_us_per_packet: float    # receiver process CPU time per packet sent
    user_us_per_packet: float   # the user-space part of it (the rest is the kernel's)
    other_load: float | None    # cores other processes used meanwhile
    steal: float | None         # cores stolen by the hypervisor meanwhile
    sender_gso: bool = False    # the sender used UDP GSO throughout
    sender_gso_errno: int = 0   # why not, when asked for: errno of the refusal, -1 no option
    worker_blocked: int | None = None   # the receiver's worker_blocked counter (no free chunk)
    lag_ms: float | None = None     # receiver's end - the sender's last data packet (backlog)
    receiver_gro: bool | None = None    # daqd: its socket had UDP GRO (None: spead2)
    receiver_core_busy: float | None = None     # the receiver's CPU busy, with softirq
    core_us_per_packet: float | None = None     # that CPU's busy time per packet sent


class _Watch(threading.Thread):
    """Waits for the sender's reply, then stops the receiver if no stop heap came."""

    def __init__(self, sender: Sender, stop: Callable[[], None], grace: float) -> None:
        super().__init__(daemon=True)
        self.sender = sender
        self.stop_receiver = stop
        self.grace = grace
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.timed_out = False

    def run(self) -> None:
        self.reply = self.sender.result()
        if not self.done.wait(self.grace if self.reply is not None else 0):
            self.timed_out = True
            self.stop_receiver()


def lag_limit_ms(seconds: float) -> float:
    """Return how far (ms) behind the sender a receiver may end a `seconds` trial and pass.

    A receiver slower than the offered rate falls behind by the difference
    for the whole trial; a deep socket buffer hides that from the loss
    figure (64 MiB holds about 33 ms of W1 at 450 kpackets/s, 58 ms of W2 at
    1.2 M), so a trial also fails when the receiver finished its last packet
    more than this long after the sender sent it: at most 2 % of the
    trial's rate above what the receiver keeps up with passes.
    """
    return max(MIN_LAG_LIMIT_MS, 1e3 * LAG_LIMIT * seconds)


def udp_trial(receiver: str, workload: str, sender: Sender, rate: float, seconds: float,
              spead2: Any = None, socket_buffer: int = SOCKET_BUFFER,
              gso: bool = True, gro: bool = True) -> Trial:
    """One trial: `seconds` of `workload` at `rate` packets/s into a fresh receiver.

    It passes (``ok``) when fewer than 0.1 % of the heaps sent were lost
    and the receiver was no more than `lag_limit_ms` behind the sender at its
    end.  `gso`: the sender sends with UDP GSO (where the kernel allows it);
    `gro`: daqd's socket asks for UDP GRO (see `_spead.UdpReader`).
    """
    _, per_heap, _ = _spead.WORKLOADS[workload]
    sock, _, _ = receive_socket(socket_buffer)
    port = sock.getsockname()[1]
    count = np.count_nonzero
    present = 0
    daqd_drops = receiver_gro = None
    try:
        if receiver == "daqd":
            stream = daqd_chunk_stream(workload)
            reader = _spead.UdpReader(sock, max_packet_size=MAX_PACKET_SIZE, gro=gro)
            receiver_gro = reader.gro
            watch = _Watch(sender, reader.stop, grace=1.0)
            chunks, recycle = stream.chunks(reader), _spead.Chunk.release
        else:
            stream, data_ring, _pool = spead2_chunk_stream(spead2, workload)
            stream.add_udp_reader(sock, max_size=MAX_PACKET_SIZE)
            watch = _Watch(sender, stream.stop, grace=1.0)
            chunks, recycle = data_ring, stream.add_free_chunk
        load = LoadMonitor(sender.proc.pid)
        core = CoreMonitor()
        user, wall = _user_seconds(), time.perf_counter()
        cpu = time.process_time()
        sender.start(workload, port, rate, seconds, gso)
        watch.start()
        for chunk in chunks:
            present += count(chunk.present)
            recycle(chunk)
        end = time.perf_counter()
        cpu, wall = time.process_time() - cpu, end - wall
        user = _user_seconds() - user
        if receiver == "daqd":
            stats = stream.stats()
            daqd_drops = stats["packets_dropped_socket_buffer"]
            blocked = stats["worker_blocked"]
        else:
            stream.stop()
            blocked = stream.stats["worker_blocked"]
        other, steal = load.cores()
        core_busy, core_seconds = core.busy()
        watch.done.set()
        watch.join()
        drops = kernel_drops(sock)
    finally:
        sock.close()
    present = int(present)
    reply = watch.reply
    if reply is None:
        raise BenchError("the sender process died")
    lag = 1e3 * (end - reply["end"]) if "end" in reply else None
    sent = reply["packets"] // per_heap
    if present > sent:
        raise BenchError(f"{workload}: {receiver} reports {present} heaps present of "
                         f"{sent} sent")
    loss = (sent - present) / sent if sent else 1.0
    return Trial(
        requested_pps=rate, offered_pps=reply["packets"] / reply["seconds"],
        heaps_sent=sent, heaps_present=present, loss=loss,
        ok=loss < LOSS_LIMIT and (lag is None or lag <= lag_limit_ms(seconds)),
        sender_dropped=reply["dropped"], kernel_drops=drops, daqd_socket_drops=daqd_drops,
        stopped_by="timeout" if watch.timed_out else "stop heap",
        receiver_cpu=cpu / wall if wall > 0 else 0.0,
        cpu_us_per_packet=1e6 * cpu / reply["packets"] if reply["packets"] else 0.0,
        user_us_per_packet=1e6 * user / reply["packets"] if reply["packets"] else 0.0,
        other_load=other, steal=steal,
        sender_gso=reply.get("gso", False), sender_gso_errno=reply.get("gso_errno", 0),
        worker_blocked=blocked,
        lag_ms=lag,
        receiver_gro=receiver_gro,
        receiver_core_busy=core_busy,
        core_us_per_packet=(1e6 * core_seconds / reply["packets"]
                            if core_seconds is not None and reply["packets"] else None),
    )


@dataclass
class SearchResult:
    """What one rate search found (see `rate_search`)."""

    best: Trial | None          # the fastest passing trial below `failed`
    failed: Trial | None        # the slowest rate that failed (its fastest trial)
    sender_limited: bool        # `best` is only a lower bound: see `rate_search`


def _offered(t: Trial) -> float:
    return t.offered_pps


def _ceiling(t: Trial) -> float:
    """Return the fastest the sender may have sent in `t`: the paced rate asked for or offered.

    A paced sender that falls behind does not catch up (`_send_trial`), so
    its rate was at most the one asked for throughout, and the receiver may
    have lost heaps in the spells at that rate however slow the average was.
    """
    return max(t.requested_pps, t.offered_pps)


def _verdict(rate: float, retries: int) -> Generator[float, Trial, tuple[bool, Trial]]:
    """Trials at one paced `rate` until one passes or `retries` + 1 fail.

    Returns (passed, the passing trial or the failing one with the highest
    `_ceiling`).
    """
    fails = []
    for _ in range(retries + 1):
        t = yield rate
        if t.ok:
            return True, t
        fails.append(t)
    return False, max(fails, key=_ceiling)


def rate_search(*, ladder: int = 6, steps: int = 5, retries: int = 0,
                resolution: float = 0.01) -> Generator[float, Trial, SearchResult]:
    """Search the highest sustained rate, on the rates the sender actually offered.

    A generator: it yields the next rate to ask for (packets/s, 0 = the
    sender's full speed) and is sent that trial's result; it returns a
    `SearchResult`.  A pass counts at the rate the sender offered (its
    average); a failure at its `_ceiling` (the rate asked for, or at full
    speed what was offered).

    1. Trials at full speed until two pass or `retries` + 1 fail.  Two
       passes, and no failure at a faster offered rate than the fastest of
       them, make the receiver sender-limited: the result is that fastest
       pass, only a lower bound of the receiver's rate.  The sender's full
       speed varies from trial to trial, so a pass at a slow full speed
       proves nothing above it.
    2. Otherwise the failing end is the fastest of the failed full-speed
       trials (all of them lost too much at that rate or below).  The lower
       end is the fastest pass below it; if there is none, a halving ladder
       (up to `ladder` rates) below the failing end.
    3. Up to `steps` rates of geometric bisection between the two ends,
       until they are within `resolution` of each other.  A pass at which
       the sender fell short of the lower end (it has slow spells) tells
       nothing: the same rate is tried again, up to `steps` times in all.

    A paced rate fails only when `retries` + 1 trials at it all fail (one
    vCPU stop of the VM can make a single trial lose heaps).  A failure at or
    below the fastest pass (a contradiction) wins: the lower end becomes the
    fastest pass below it, or the ladder goes on below it.

    The result is only a lower bound (``sender_limited``) when two
    full-speed trials passed, or when the only failure above it is a single
    full-speed trial (fewer than `retries` + 1 failed at full speed, and no
    paced rate below that failed).
    """
    passes: list[Trial] = []
    fails: list[Trial] = []
    while len(passes) < 2 and len(fails) <= retries:
        t = yield 0.0
        (passes if t.ok else fails).append(t)
    best = max(passes, key=_offered) if passes else None
    hi = max(fails, key=_ceiling) if fails else None
    if best is not None and len(passes) >= 2 and (hi is None or _ceiling(hi) <= best.offered_pps):
        return SearchResult(best, None, True)
    assert hi is not None
    confirmed = len(fails) > retries     # else one full-speed failure, maybe a stall

    def fastest_below(limit: Trial) -> Trial | None:
        below = [p for p in passes if p.offered_pps < _ceiling(limit)]
        return max(below, key=_offered) if below else None

    lo = fastest_below(hi)
    ladder_left, steps_left, short_left = ladder, steps, steps
    while True:
        if lo is None:
            if ladder_left <= 0:
                return SearchResult(None, hi, False)
            ladder_left -= 1
            rate = _ceiling(hi) / 2
        else:
            if (steps_left <= 0 or short_left <= 0
                    or _ceiling(hi) <= lo.offered_pps * (1 + resolution)):
                return SearchResult(lo, hi, not confirmed)
            rate = math.sqrt(lo.offered_pps * _ceiling(hi))
        before = lo
        ok, t = yield from _verdict(rate, retries)
        if ok:
            passes.append(t)
        elif _ceiling(t) < _ceiling(hi):
            hi, confirmed = t, True
        lo = fastest_below(hi)
        if before is not None:
            if ok and lo is before:
                short_left -= 1     # passed, but the sender fell short of the lower end
            else:
                steps_left -= 1


def search_rate(trial: Callable[[float], Trial], *, ladder: int = 6, steps: int = 5,
                retries: int = 0) -> tuple[Trial | None, Trial | None, list[Trial]]:
    """Run `rate_search` with `trial`; returns (best, first failed, every trial)."""
    found, trials = run_search(trial, ladder=ladder, steps=steps, retries=retries)
    return found.best, found.failed, trials


def run_search(trial: Callable[[float], Trial], **options: Any
               ) -> tuple[SearchResult, list[Trial]]:
    """Run `rate_search` (with `options`) calling `trial(rate)`; (result, every trial)."""
    search = rate_search(**options)
    trials: list[Trial] = []
    rate = next(search)
    while True:
        trials.append(trial(rate))
        try:
            rate = search.send(trials[-1])
        except StopIteration as end:
            return end.value, trials


@dataclass
class UdpRun:
    """One rate search of one receiver on one workload."""

    sustained: Trial | None     # the fastest trial with loss < 0.1 % (below first_failed)
    first_failed: Trial | None  # the slowest failing rate above it (its fastest trial)
    sender_limited: bool        # packets_per_s is only a lower bound (see rate_search)
    packets_per_s: float        # sustained.offered_pps (0 when nothing passed)
    trials: int                 # this run's trials (in order, in UdpResult.trials)
    seconds: float = 0.0


@dataclass
class UdpResult:
    """The highest rate one receiver sustains on one workload over loopback UDP.

    The rates are medians over the runs (`runs`); when any run was
    sender-limited (a lower bound, see `rate_search`) the median is only a
    lower bound (`sender_limited`).
    """

    workload: str
    receiver: str
    sustained: Trial | None     # the median run's fastest passing trial
    first_failed: Trial | None  # the median run's slowest failing rate above it
    sender_limited: bool        # some run gave only a lower bound: so is the median
    heaps_per_s: float
    packets_per_s: float
    gbit_per_s: float
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    runs: list[UdpRun] = field(default_factory=list)

    @property
    def run_rates(self) -> list[float]:
        """Sustained packets/s of each run (0: nothing passed)."""
        return [r.packets_per_s for r in self.runs] or [self.packets_per_s]

    @property
    def limited_runs(self) -> int:
        """Runs in which the receiver took all the sender offered (lower bounds)."""
        return sum(r.sender_limited for r in self.runs)


def udp_result(workload: str, receiver: str, runs: Sequence[UdpRun],
               trials: list[Trial]) -> UdpResult:
    """Sum up one receiver's `runs` on `workload`: medians over the runs."""
    heap_bytes, per_heap, _ = _spead.WORKLOADS[workload]
    pps = statistics.median(r.packets_per_s for r in runs)
    middle = sorted(runs, key=lambda r: r.packets_per_s)[(len(runs) - 1) // 2]
    return UdpResult(
        workload=workload, receiver=receiver, sustained=middle.sustained,
        first_failed=middle.first_failed, sender_limited=any(r.sender_limited for r in runs),
        heaps_per_s=pps / per_heap, packets_per_s=pps,
        gbit_per_s=pps / per_heap * heap_bytes * 8 / 1e9,
        trials=trials, seconds=sum(r.seconds for r in runs), runs=list(runs),
    )


def bench_udp(workload: str, receivers: Sequence[str], sender: Sender, *,
              seconds: float = 1.0, ladder: int = 6, steps: int = 5, retries: int = 1,
              runs: int = 1, wait_idle: float = 0.0, socket_buffer: int = SOCKET_BUFFER,
              gso: bool = True, gro: bool = True, max_other_load: float = OTHER_LOAD_LIMIT,
              log: Callable[[str], None] = lambda _: None) -> list[UdpResult]:
    """Search the highest rate each receiver sustains on `workload`, `runs` times.

    The receivers' searches (`rate_search`) run side by side, one trial of
    each in turn, so that a slow spell of the machine hits both; each run
    starts with the other receiver.  A trial that fails while other processes
    used more than `max_other_load` cores is run again (up to three times):
    the machine is shared.  With `wait_idle`, each trial first waits up to
    that many seconds for other processes to leave the CPUs alone.  `gso`:
    the sender uses UDP GSO; `gro`: daqd's socket asks for UDP GRO.
    """
    spead2 = import_spead2() if "spead2" in receivers else None
    _, per_heap, _ = _spead.WORKLOADS[workload]

    def note(receiver: str, run: int, t: Trial, extra: str = "") -> None:
        asked = f"{t.requested_pps / 1e3:.0f} kpkt/s" if t.requested_pps else "full speed"
        blocked = "" if t.worker_blocked is None else f"; worker_blocked {t.worker_blocked}"
        if t.lag_ms is not None:
            blocked += f"; lag {t.lag_ms:.0f} ms"
        log(f"{workload} udp {receiver} run {run + 1}: {asked}: offered "
            f"{t.offered_pps / 1e3:.0f} kpkt/s, loss {100 * t.loss:.3f} % "
            f"({t.heaps_sent - t.heaps_present} of {t.heaps_sent} heaps; kernel drops "
            f"{t.kernel_drops}{blocked}; rx CPU {100 * t.receiver_cpu:.0f} %, core "
            f"{'?' if t.receiver_core_busy is None else f'{100 * t.receiver_core_busy:.0f}'} %; "
            f"other load {_cores(t.other_load)}, steal {_cores(t.steal)} cores) "
            f"{'ok' if t.ok else 'FAIL'}"
            + (" [timeout]" if t.stopped_by == "timeout" else "") + extra)

    def trial(receiver: str, run: int, rate: float) -> Trial:
        again = 3
        while True:
            if wait_idle:
                wait_until_quiet(wait_idle)
            t = udp_trial(receiver, workload, sender, rate, seconds, spead2, socket_buffer, gso,
                          gro)
            busy = (not t.ok and t.other_load is not None and t.other_load > max_other_load
                    and again > 0)
            note(receiver, run, t, " [other load: run again]" if busy else "")
            if not busy:
                return t
            again -= 1

    trials: dict[str, list[Trial]] = {r: [] for r in receivers}
    done: dict[str, list[UdpRun]] = {r: [] for r in receivers}
    for run in range(runs):
        order = list(receivers) if run % 2 == 0 else list(reversed(receivers))
        searches = {r: rate_search(ladder=ladder, steps=steps, retries=retries) for r in order}
        rates = {r: next(searches[r]) for r in order}
        count = dict.fromkeys(order, 0)
        spent = dict.fromkeys(order, 0.0)
        while rates:
            for r in list(rates):
                started = time.perf_counter()
                t = trial(r, run, rates[r])
                trials[r].append(t)
                count[r] += 1
                spent[r] += time.perf_counter() - started
                try:
                    rates[r] = searches[r].send(t)
                    continue
                except StopIteration as end:
                    found: SearchResult = end.value
                del rates[r]
                best = found.best
                done[r].append(UdpRun(
                    sustained=best, first_failed=found.failed,
                    sender_limited=found.sender_limited,
                    packets_per_s=best.offered_pps if best else 0.0,
                    trials=count[r], seconds=spent[r],
                ))
                log(f"{workload} udp {r} run {run + 1}: sustained "
                    f"{done[r][-1].packets_per_s / 1e3:.0f} kpkt/s"
                    + (" (a lower bound: sender-limited)" if found.sender_limited else
                       f", failed at {_ceiling(found.failed) / 1e3:.0f} kpkt/s"
                       if found.failed else ""))
    return [udp_result(workload, r, done[r], trials[r]) for r in receivers]


@dataclass
class CostResult:
    """One receiver's CPU time per packet at one fixed offered rate."""

    workload: str
    receiver: str
    rate_pps: float             # offered (median of the trials)
    cpu_us_per_packet: float    # median over the trials
    user_us_per_packet: float   # its user-space part (median)
    receiver_cpu: float         # receiver process CPU time / trial time (median)
    losses: list[float]
    other_load: list[float | None]
    core_us_per_packet: float | None = None     # the receiver's CPU, softirq included


def _median_or_none(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def bench_cost(workload: str, receivers: Sequence[str], sender: Sender, rate: float, *,
               trials: int = 3, seconds: float = 1.0, socket_buffer: int = SOCKET_BUFFER,
               gso: bool = True, gro: bool = True,
               log: Callable[[str], None] = lambda _: None) -> list[CostResult]:
    """Receiver CPU time per packet at one offered `rate` (packets/s), trials alternating.

    Where the sender cannot outrun the receivers, what each spends on the same
    traffic is what tells them apart.
    """
    spead2 = import_spead2() if "spead2" in receivers else None
    got: dict[str, list[Trial]] = {r: [] for r in receivers}
    for i in range(trials):
        for r in (receivers if i % 2 == 0 else list(reversed(receivers))):
            got[r].append(udp_trial(r, workload, sender, rate, seconds, spead2, socket_buffer,
                                    gso, gro))
    out = []
    for r in receivers:
        ts = got[r]
        out.append(CostResult(
            workload=workload, receiver=r,
            rate_pps=statistics.median(t.offered_pps for t in ts),
            cpu_us_per_packet=statistics.median(t.cpu_us_per_packet for t in ts),
            user_us_per_packet=statistics.median(t.user_us_per_packet for t in ts),
            receiver_cpu=statistics.median(t.receiver_cpu for t in ts),
            losses=[t.loss for t in ts], other_load=[t.other_load for t in ts],
            core_us_per_packet=_median_or_none(t.core_us_per_packet for t in ts),
        ))
        log(f"{workload} udp cost {r}: {out[-1].cpu_us_per_packet:.2f} us/pkt "
            f"(user {out[-1].user_us_per_packet:.2f}; its CPU "
            f"{_us(out[-1].core_us_per_packet)}) at {out[-1].rate_pps / 1e3:.0f} kpkt/s")
    return out


# ----------------------------------------------------------------------
# Machine


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def idle_fraction(seconds: float = 0.5) -> float | None:
    """Fraction of all CPU time that was idle over `seconds` (other load skews figures)."""

    def sample() -> list[int] | None:
        first = (_read("/proc/stat") or "").splitlines()[:1]
        if not first or not first[0].startswith("cpu "):
            return None
        return [int(x) for x in first[0].split()[1:]]

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None:
        return None
    delta = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(delta[:8])     # user nice system idle iowait irq softirq steal
    return (delta[3] + delta[4]) / total if total else None


def wait_until_quiet(max_seconds: float, *, idle: float = 0.9) -> float:
    """Wait (up to `max_seconds`) until the CPUs are `idle` idle; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_seconds:
        fraction = idle_fraction(0.25)
        if fraction is None or fraction >= idle:
            break
    return time.monotonic() - start


def _cpu_ticks() -> tuple[int, int] | None:
    """(user + nice + system, steal) clock ticks of the whole machine."""
    first = (_read("/proc/stat") or "").splitlines()[:1]
    if not first or not first[0].startswith("cpu "):
        return None
    v = [int(x) for x in first[0].split()[1:]]
    return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)


def _core_ticks(cpu: int) -> tuple[int, int] | None:
    """(busy, busy + idle) clock ticks of one CPU; busy includes irq and softirq time."""
    name = f"cpu{cpu} "
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith(name):
            v = [int(x) for x in line.split()[1:8]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            return busy, busy + v[3] + v[4]
    return None


class CoreMonitor:
    """How busy this process's CPU was (when it is pinned to one), from /proc/stat.

    Unlike the process's own CPU time this includes the kernel's interrupt
    and softirq work on that CPU: with RPS on the loopback, the receive path
    of every datagram.
    """

    def __init__(self) -> None:
        cpus = os.sched_getaffinity(0)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cpu = next(iter(cpus)) if len(cpus) == 1 else None
        self.start = _core_ticks(self.cpu) if self.cpu is not None else None

    def busy(self) -> tuple[float, float] | tuple[None, None]:
        """(fraction of the CPU's non-stolen time it was busy, busy seconds) since the start."""
        if self.start is None or self.cpu is None:
            return None, None
        end = _core_ticks(self.cpu)
        if end is None or end[1] - self.start[1] < 20:
            return None, None       # too few clock ticks to say anything
        busy = end[0] - self.start[0]
        return busy / (end[1] - self.start[1]), busy / self.hz


def _process_ticks(pid: int | str) -> int:
    """User + system clock ticks of a process (all its threads); 0 if it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class LoadMonitor:
    """CPU time other processes used while a measurement ran, in cores.

    Everything the machine spent in user and system time, less this process
    and the benchmark's own sender; softirq time (the loopback path) is left
    out, steal time (the hypervisor) reported apart.  Figures taken while
    something else ran are not comparable.
    """

    def __init__(self, *pids: int) -> None:
        self.pids = ["self", *pids]
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> tuple[float, int, int, int] | None:
        machine = _cpu_ticks()
        if machine is None:
            return None
        own = sum(_process_ticks(p) for p in self.pids)
        return time.monotonic(), machine[0], machine[1], own

    def cores(self) -> tuple[float | None, float | None]:
        """(other processes, steal) since the start, in cores (1.0 = one busy core)."""
        end = self._sample()
        if self.start is None or end is None or end[0] - self.start[0] < 0.5:
            return None, None       # too short for clock ticks to say anything
        wall = (end[0] - self.start[0]) * self.hz
        other = (end[1] - self.start[1]) - (end[3] - self.start[3])
        return max(0.0, other / wall), (end[2] - self.start[2]) / wall


def machine_info() -> dict[str, Any]:
    """Describe the machine the figures were measured on."""
    cpu = "unknown"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        import spead2
        spead2_version = spead2.__version__
    except ImportError:
        spead2_version = None
    rmem = _read("/proc/sys/net/core/rmem_max")
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "rmem_max": int(rmem) if rmem else None,
        "transparent_hugepage": thp,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "spead2": spead2_version,
        "daqd": __version__,
        "idle_before": idle_fraction(),
    }


# ----------------------------------------------------------------------
# The whole run and its table


@dataclass
class BenchReport:
    """Everything ``daqd bench`` measured."""

    machine: dict[str, Any]
    memory: list[MemoryResult] = field(default_factory=list)
    udp: list[UdpResult] = field(default_factory=list)
    cost: list[CostResult] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    socket_buffer: int | None = None
    socket_buffer_note: str | None = None
    pinning: str | None = None
    retries: int = 1
    sender: str | None = None       # how the UDP sender sent (GSO or sendmmsg)
    udp_runs: int = 1               # rate searches per receiver and workload (medians)
    loopback: str | None = None     # where the UDP part ran (see daqd.bench_netns)
    daqd_gro: str | None = None     # whether daqd received with UDP GRO

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict, with daqd/spead2 ratios."""
        out = asdict(self)
        out["ratios"] = {
            "memory": _ratios(self.memory),
            "udp": udp_spread(self.udp),
            "udp_cpu_per_packet_sustained": udp_cpu_ratios(self.udp),
            "udp_cpu_per_packet_fixed_rate": cost_ratios(self.cost),
        }
        return out


def report_from_json(data: dict[str, Any]) -> BenchReport:
    """Rebuild a BenchReport from `BenchReport.to_json` output (to print it again)."""

    def trial(t: dict[str, Any] | None) -> Trial | None:
        return Trial(**t) if t is not None else None

    udp = []
    for u in data.get("udp", []):
        fields = dict(u)
        fields["sustained"] = trial(fields["sustained"])
        fields["first_failed"] = trial(fields["first_failed"])
        fields["trials"] = [Trial(**t) for t in fields["trials"]]
        runs = []
        for r in fields.get("runs", []):
            run = dict(r)
            run["sustained"] = trial(run["sustained"])
            run["first_failed"] = trial(run["first_failed"])
            runs.append(UdpRun(**run))
        fields["runs"] = runs
        udp.append(UdpResult(**fields))
    return BenchReport(
        machine=data["machine"],
        memory=[MemoryResult(**m) for m in data.get("memory", [])],
        udp=udp,
        cost=[CostResult(**c) for c in data.get("cost", [])],
        durations=data.get("durations", {}),
        socket_buffer=data.get("socket_buffer"),
        socket_buffer_note=data.get("socket_buffer_note"),
        pinning=data.get("pinning"),
        retries=data.get("retries", 1),
        sender=data.get("sender"),
        udp_runs=data.get("udp_runs", 1),
        loopback=data.get("loopback"),
        daqd_gro=data.get("daqd_gro"),
    )


def _ratios(results: Iterable[MemoryResult]) -> dict[str, float | None]:
    by = {(r.workload, r.receiver): r.heaps_per_s for r in results}
    ratios: dict[str, float | None] = {}
    for w in dict.fromkeys(workload for workload, _ in by):
        if (w, "daqd") in by and (w, "spead2") in by:
            ratios[w] = by[w, "daqd"] / by[w, "spead2"] if by[w, "spead2"] else None
    return ratios


def _pairs(results: Iterable[UdpResult]) -> dict[str, tuple[UdpResult, UdpResult]]:
    by = {(r.workload, r.receiver): r for r in results}
    return {w: (by[w, "daqd"], by[w, "spead2"]) for w, r in by
            if r == "daqd" and (w, "spead2") in by}


def _kind(daqd_limited: bool, spead2_limited: bool) -> str:
    if daqd_limited and spead2_limited:
        return "both sender-limited"
    return "at least" if daqd_limited else "at most" if spead2_limited else "measured"


def udp_ratios(results: Iterable[UdpResult]) -> dict[str, tuple[float | None, str]]:
    """Map workload -> (daqd/spead2 ratio of the median sustained rates, its kind).

    The kind is ``measured`` when in every run both receivers lost heaps at
    some rate the sender reached, ``at least`` when daqd took everything the
    sender could offer in some run (its median is then a lower bound), ``at
    most`` when spead2 did, and ``both sender-limited`` (no ratio) when both did.
    """
    out: dict[str, tuple[float | None, str]] = {}
    for w, (d, s) in _pairs(results).items():
        kind = _kind(d.sender_limited, s.sender_limited)
        if kind == "both sender-limited":
            out[w] = (None, kind)
        else:
            out[w] = (d.packets_per_s / s.packets_per_s if s.packets_per_s else None, kind)
    return out


def udp_spread(results: Iterable[UdpResult]) -> dict[str, dict[str, Any]]:
    """Map workload -> the ratio of the medians, its kind and the runs' spread.

    ``ratio``, ``kind``: see `udp_ratios`; ``runs``: each run's daqd/spead2
    ratio and its kind (runs paired in order); ``min``, ``max``: the range of
    the per-run ratios that are measured (None if none is); ``daqd`` and
    ``spead2``: each receiver's median, lowest and highest sustained packets/s
    and how many runs were sender-limited.
    """
    results = list(results)
    kinds = udp_ratios(results)
    out: dict[str, dict[str, Any]] = {}
    for w, (d, s) in _pairs(results).items():
        runs = []
        for a, b in zip(d.runs, s.runs, strict=False):
            kind = _kind(a.sender_limited, b.sender_limited)
            ratio = (a.packets_per_s / b.packets_per_s
                     if b.packets_per_s and kind != "both sender-limited" else None)
            runs.append({"ratio": ratio, "kind": kind})
        measured = [r["ratio"] for r in runs if r["kind"] == "measured" and r["ratio"]]
        ratio, kind = kinds[w]
        out[w] = {
            "ratio": ratio, "kind": kind, "runs": runs,
            "min": min(measured) if measured else None,
            "max": max(measured) if measured else None,
        }
        for u in (d, s):
            rates = u.run_rates
            out[w][u.receiver] = {"median_pps": u.packets_per_s, "min_pps": min(rates),
                                  "max_pps": max(rates), "limited_runs": u.limited_runs}
    return out


def cost_ratios(results: Iterable[CostResult]) -> dict[str, dict[str, float]]:
    """Map workload -> spead2/daqd CPU time per packet at the same fixed rate."""
    by = {(c.workload, c.receiver): c for c in results}
    out = {}
    for (w, r), c in by.items():
        if r == "daqd" and (w, "spead2") in by and c.cpu_us_per_packet and c.user_us_per_packet:
            s = by[w, "spead2"]
            out[w] = {"total": s.cpu_us_per_packet / c.cpu_us_per_packet,
                      "user": s.user_us_per_packet / c.user_us_per_packet}
            if c.core_us_per_packet and s.core_us_per_packet:
                out[w]["core"] = s.core_us_per_packet / c.core_us_per_packet
    return out


def udp_cpu_ratios(results: Iterable[UdpResult]) -> dict[str, dict[str, float] | None]:
    """Map workload -> spead2/daqd receiver CPU time per packet at their sustained rates.

    ``{"total": ..., "user": ...}``: all of it, and its user-space part (the
    receiver's own work; the rest is the kernel's receive path, common to both).
    """
    out: dict[str, dict[str, float] | None] = {}
    for w, (d, s) in _pairs(results).items():
        a, b = d.sustained, s.sustained
        if a and b and a.cpu_us_per_packet and a.user_us_per_packet:
            out[w] = {"total": b.cpu_us_per_packet / a.cpu_us_per_packet,
                      "user": b.user_us_per_packet / a.user_us_per_packet}
        else:
            out[w] = None
    return out


def run_bench(workloads: Sequence[str] = WORKLOAD_NAMES, *, vs_spead2: bool = False,
              mode: str = "all", runs: int = 5, heaps: int | None = None,
              trial_seconds: float = 1.0, ladder: int = 6, steps: int = 5,
              retries: int = 1, wait_idle: float = 0.0, socket_buffer: int = SOCKET_BUFFER,
              cost_trials: int = 3, sender_gso: bool = True, udp_runs: int = 3,
              loopback: str = "auto", daqd_gro: bool = True,
              log: Callable[[str], None] = lambda _: None) -> BenchReport:
    """Run the chunk-mode benchmarks.

    Parameters
    ----------
    workloads : sequence of str
        Among W1, W2, W3.
    vs_spead2 : bool
        Also run spead2 (which must then be installed) and give ratios.
    mode : str
        ``memory``, ``udp`` or ``all``.
    runs : int
        Timed from-memory runs per receiver (the median is reported).
    udp_runs : int
        UDP rate searches per receiver and workload (the median is reported,
        with the spread).
    heaps : int, optional
        Heaps per from-memory run (default: about 1 GiB of packets).
    trial_seconds : float
        Traffic per UDP trial.
    ladder, steps : int
        UDP search: halvings below full speed, then bisection steps.
    retries : int
        UDP search: further trials at a rate before it counts as failed.
    wait_idle : float
        Before each round of runs and each trial, wait up to this many seconds
        for other processes to leave the CPUs idle (0: do not wait).
    socket_buffer : int
        UDP receive buffer for both receivers (see `receive_socket`; default
        64 MiB, so that the VM's vCPU stops of a few milliseconds do not
        overflow it).
    cost_trials : int
        After each workload's search, trials per receiver at one fixed rate
        (COST_FRACTION of the lower sustained rate) for CPU time per packet.
    sender_gso : bool
        The UDP sender sends with UDP GSO (falling back to ``sendmmsg`` of one
        datagram per message where the kernel refuses it).
    loopback : str
        Where the UDP part runs (see `daqd.bench_netns`): ``rps``, in a
        private network namespace whose loopback has RPS steer the kernel's
        receive work to the receiver's CPU; ``shared``, on the machine's
        loopback, the sender's core doing that work; ``auto`` (default),
        ``rps`` where the process may make the namespace, else ``shared``.
    daqd_gro : bool
        daqd's UDP socket asks for UDP GRO, as it does by default in the
        daemon; False gives daqd the kernel's per-datagram path, as spead2's.
    log : callable
        Receives one line per step (progress).
    """
    bad = [w for w in workloads if w not in _spead.WORKLOADS]
    if bad:
        raise UsageProblem(f"--workload: unknown workload {bad[0]!r} (expected W1, W2 or W3)")
    if mode not in MODES:
        raise UsageProblem(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    if runs < 1:
        raise UsageProblem("--runs: must be at least 1")
    if udp_runs < 1:
        raise UsageProblem("--udp-runs: must be at least 1")
    if loopback not in LOOPBACKS:
        raise UsageProblem(f"--loopback: {loopback!r} is not one of {', '.join(LOOPBACKS)}")
    receivers = ["daqd"]
    if vs_spead2:
        import_spead2()
        receivers.append("spead2")
    report = BenchReport(machine=machine_info(), retries=retries, udp_runs=udp_runs)
    if mode in ("memory", "all"):
        for w in workloads:
            start = time.perf_counter()
            report.memory += bench_memory(w, receivers, runs=runs, heaps=heaps,
                                          wait_idle=wait_idle, log=log)
            report.durations[f"memory {w}"] = time.perf_counter() - start
    if mode in ("udp", "all"):
        options = dict(workloads=list(workloads), receivers=receivers,
                       trial_seconds=trial_seconds, ladder=ladder, steps=steps,
                       retries=retries, wait_idle=wait_idle, socket_buffer=socket_buffer,
                       cost_trials=cost_trials, sender_gso=sender_gso, udp_runs=udp_runs,
                       daqd_gro=daqd_gro)
        refused = None
        if loopback in ("auto", "rps"):
            from daqd.bench_netns import run_udp_with_rps

            found, refused = run_udp_with_rps(pick_cpus()[0], options, log)
            if found is not None:
                merge_udp(report, report_from_json(found))
            elif loopback == "rps":
                raise UsageProblem(f"--loopback rps: cannot set up the namespace: {refused}")
            else:
                log(f"udp: on the machine's loopback (no private namespace with RPS: {refused})")
        if loopback == "shared" or refused is not None:
            report.loopback = ("the machine's loopback; the sender's core does the kernel's "
                               "receive work" + (f" (no RPS namespace: {refused})"
                                                 if refused else ""))
            run_udp(report, **options, log=log)
    return report


def pick_cpus() -> tuple[int, int | None]:
    """Return the receiver's CPU and the sender's (None: one CPU, shared)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], (cpus[1] if len(cpus) >= 2 else None)


def run_udp(report: BenchReport, *, workloads: Sequence[str], receivers: Sequence[str],
            trial_seconds: float, ladder: int, steps: int, retries: int, wait_idle: float,
            socket_buffer: int, cost_trials: int, sender_gso: bool, udp_runs: int,
            daqd_gro: bool, log: Callable[[str], None]) -> None:
    """Run the UDP part of `run_bench` in this process's network namespace, into `report`."""
    sock, report.socket_buffer, forced = receive_socket(socket_buffer)
    sock.close()
    rmem_max = report.machine["rmem_max"]
    report.socket_buffer_note = (
        f"forced past rmem_max {rmem_max} with SO_RCVBUFFORCE" if forced
        else f"asked for {socket_buffer}; rmem_max {rmem_max}")
    before = os.sched_getaffinity(0)
    receiver_cpu, sender_cpu = pick_cpus()
    if sender_cpu is not None:
        report.pinning = f"receiver on CPU {receiver_cpu}, sender on CPU {sender_cpu}"
        os.sched_setaffinity(0, {receiver_cpu})
    else:
        report.pinning = "one CPU: receiver and sender share it"
    sender = Sender(sender_cpu)
    try:
        for w in workloads:
            start = time.perf_counter()
            found = bench_udp(w, receivers, sender, seconds=trial_seconds,
                              ladder=ladder, steps=steps, retries=retries,
                              runs=udp_runs, wait_idle=wait_idle,
                              socket_buffer=socket_buffer, gso=sender_gso, gro=daqd_gro,
                              log=log)
            report.udp += found
            report.durations[f"udp {w}"] = time.perf_counter() - start
            sustained = [u.packets_per_s for u in found if u.packets_per_s > 0]
            if cost_trials and len(sustained) == len(found):
                start = time.perf_counter()
                if wait_idle:
                    wait_until_quiet(wait_idle)
                report.cost += bench_cost(w, receivers, sender, COST_FRACTION * min(sustained),
                                          trials=cost_trials, seconds=trial_seconds,
                                          socket_buffer=socket_buffer, gso=sender_gso,
                                          gro=daqd_gro, log=log)
                report.durations[f"udp cost {w}"] = time.perf_counter() - start
    finally:
        sender.close()
        os.sched_setaffinity(0, before)
    trials = [t for u in report.udp for t in u.trials]
    report.sender = describe_sender(sender_gso, trials)
    report.daqd_gro = describe_gro(daqd_gro, trials)


def merge_udp(report: BenchReport, found: BenchReport) -> None:
    """Copy the UDP part of `found` (from the namespaced child) into `report`."""
    report.udp += found.udp
    report.cost += found.cost
    report.durations.update(found.durations)
    for name in ("socket_buffer", "socket_buffer_note", "pinning", "sender", "loopback",
                 "daqd_gro"):
        setattr(report, name, getattr(found, name))


def describe_gro(asked: bool, trials: Sequence[Trial]) -> str:
    """How daqd's socket received in `trials`: with UDP GRO or not."""
    if not asked:
        return "without UDP GRO (--no-daqd-gro: the kernel's path per datagram, as spead2's)"
    got = [t.receiver_gro for t in trials if t.receiver_gro is not None]
    if got and all(got):
        return ("with UDP GRO (its default: runs of datagrams arrive as one message, "
                "cut up in daqd)")
    return "without UDP GRO (asked for, but the kernel refused UDP_GRO)"


def describe_sender(asked: bool, trials: Sequence[Trial]) -> str:
    """How the UDP sender sent in `trials`: with GSO, or why not."""
    if not asked:
        return "sendmmsg, one datagram per message (GSO not asked for)"
    if all(t.sender_gso for t in trials):
        return "UDP GSO (messages of up to 64 KiB of datagrams, several per sendmmsg)"
    refused = sorted({t.sender_gso_errno for t in trials if not t.sender_gso})
    why = ", ".join("no UDP_SEGMENT option" if e < 0 else os.strerror(e) for e in refused)
    some = "" if not any(t.sender_gso for t in trials) else "in some trials "
    return f"sendmmsg, one datagram per message {some}(the kernel refused UDP GSO: {why})"


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"


def _us(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _kpps(value: float) -> str:
    return f"{value / 1e3:.0f}"


def _format_udp(report: BenchReport) -> list[str]:
    """Format the UDP part of `format_report`: every run, then medians and ratios."""
    lines = [
        f"Loopback UDP: highest offered rate with < {100 * LOSS_LIMIT:g} % heap loss "
        f"(socket buffer {report.socket_buffer} bytes, {report.socket_buffer_note}; "
        f"{report.pinning}; a paced rate fails when {report.retries + 1} trials at it all "
        "lose more; sender-limited, a lower bound, after two passing full-speed trials "
        "or with no confirmed failure above)",
        f"sender: {report.sender or '?'}",
        f"loopback: {report.loopback or '?'}",
        f"daqd receives {report.daqd_gro or '?'}",
        f"{'workload':8} {'receiver':8} {'run':>3} {'kheaps/s':>10} {'Mpkt/s':>8} "
        f"{'Gbit/s':>8} {'loss %':>7} {'drops':>6} {'rx CPU':>6} {'core':>5} "
        f"{'us/pkt (user)':>13} "
        f"{'other':>5} {'next rate tried':>20} {'trials':>6}",
    ]
    for u in report.udp:
        _, per_heap, _ = _spead.WORKLOADS[u.workload]
        heap_bytes = layout(u.workload)["heap_bytes"]
        runs = u.runs or [UdpRun(u.sustained, u.first_failed, u.sender_limited,
                                 u.packets_per_s, len(u.trials), u.seconds)]
        for i, run in enumerate(runs, 1):
            head = f"{u.workload:8} {u.receiver:8} {i:3}"
            s = run.sustained
            if s is None:
                fail = run.first_failed
                lines.append(f"{head} {'none':>10}  (lost >= 0.1 % even at "
                             f"{_kpps(fail.offered_pps if fail else 0)} kpkt/s)")
                continue
            drops = s.daqd_socket_drops if s.daqd_socket_drops is not None else s.kernel_drops
            if run.sender_limited:
                nxt = "(lower bound)"
            elif run.first_failed is not None:
                f = run.first_failed
                nxt = (f"{_ceiling(f) / 1e6:.3f}M lost {100 * f.loss:.2f}%"
                       if f.loss >= LOSS_LIMIT or f.lag_ms is None else
                       f"{_ceiling(f) / 1e6:.3f}M {f.lag_ms:.0f} ms late")
            else:
                nxt = ""
            pps = run.packets_per_s
            lines.append(
                f"{head} {pps / per_heap / 1e3:10.1f} {pps / 1e6:8.3f} "
                f"{pps / per_heap * heap_bytes * 8 / 1e9:8.2f} {100 * s.loss:7.3f} "
                f"{'' if drops is None else drops:>6} {100 * s.receiver_cpu:5.0f}% "
                f"{_percent(s.receiver_core_busy):>5} "
                f"{s.cpu_us_per_packet:6.2f} ({s.user_us_per_packet:4.2f}) "
                f"{_cores(s.other_load):>5} {nxt:>20} {run.trials:6}"
            )
    lines.append(
        "(drops: socket-buffer drops at that rate, daqd's packets_dropped_socket_buffer, "
        "spead2's from /proc/net/udp; rx CPU: receiver process CPU time / trial time; "
        "core: how busy the receiver's CPU was, the kernel's softirq work included; "
        "us/pkt: receiver CPU time per packet (user: its user-space part, the rest "
        "is the kernel's); other: cores other processes used "
        "meanwhile; next rate tried: the slowest rate above that failed, paced (the rate "
        "asked for) or full speed (offered), losing >= 0.1 % or ending too far behind)"
    )
    spread = udp_spread(report.udp)
    lines += [
        "",
        f"Loopback UDP, medians over {report.udp_runs} runs (kpkt/s; lowest-highest run; "
        "'>=': some run was sender-limited, so the median is a lower bound)",
        f"{'workload':8} {'daqd':>20} {'spead2':>20} {'daqd/spead2':>12} "
        f"{'per-run ratios':>24}",
    ]

    def cell(figures: dict[str, Any]) -> str:
        bound = ">=" if figures["limited_runs"] else ""
        return (f"{bound}{_kpps(figures['median_pps'])} "
                f"({_kpps(figures['min_pps'])}-{_kpps(figures['max_pps'])})")

    for w, x in spread.items():
        prefix = {"at least": ">= ", "at most": "<= "}.get(x["kind"], "")
        ratio = "n/a" if x["ratio"] is None else f"{prefix}{x['ratio']:.2f}"
        runs = " ".join("-" if r["ratio"] is None else
                        {"at least": ">=", "at most": "<="}.get(r["kind"], "")
                        + f"{r['ratio']:.2f}" for r in x["runs"])
        lines.append(f"{w:8} {cell(x['daqd']):>20} {cell(x['spead2']):>20} {ratio:>12} "
                     f"{runs:>24}")
    limited = [w for w, x in spread.items() if x["kind"] == "both sender-limited"]
    if limited:
        lines.append(f"{', '.join(limited)}: both receivers took all the sender could "
                     "send in some run, so there is no rate ratio; see the CPU time below")
    return lines


def format_report(report: BenchReport) -> str:
    """Format the report as a plain-text table."""
    m = report.machine
    idle = "?" if m["idle_before"] is None else f"{100 * m['idle_before']:.0f} %"
    if m["idle_before"] is not None and m["idle_before"] < 0.9:
        idle += " (busy: see the 'other' columns, cores other processes used meanwhile)"
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
        f"rmem_max {m['rmem_max']}, THP {m['transparent_hugepage']}",
        f"software: daqd {m['daqd']}, python {m['python']}, numpy {m['numpy']}, "
        f"spead2 {m['spead2'] or 'not installed'}",
        f"CPU idle before the run: {idle}",
        f"layout: {HEAPS_PER_CHUNK} heaps/chunk, max_chunks {MAX_CHUNKS}, pool {POOL}, "
        f"max_heaps {MAX_HEAPS}",
    ]
    ratios = report.to_json()["ratios"]
    if report.memory:
        first = report.memory[0]
        lines += [
            "",
            f"From memory (median of {len(first.seconds)} interleaved runs; "
            "every heap and byte checked)",
            f"{'workload':8} {'receiver':8} {'MiB':>6} {'kheaps/s':>10} {'Mpkt/s':>8} "
            f"{'Gbit/s':>8} {'median s':>9} {'other':>5} {'daqd/spead2':>12}",
        ]
        for r in report.memory:
            ratio = ratios["memory"].get(r.workload) if r.receiver == "spead2" else None
            lines.append(
                f"{r.workload:8} {r.receiver:8} {r.buffer_bytes / 2**20:6.0f} "
                f"{r.heaps_per_s / 1e3:10.1f} {r.packets_per_s / 1e6:8.3f} "
                f"{r.gbit_per_s:8.2f} {r.median_seconds:9.4f} {_cores(r.other_load):>5} "
                f"{'' if ratio is None else f'{ratio:.2f}':>12}"
            )
    if report.udp:
        lines += ["", *_format_udp(report)]
    if report.cost:
        costs = cost_ratios(report.cost)
        lines += [
            "",
            "Receiver CPU time at one fixed offered rate "
            f"({COST_FRACTION:g} x the lower sustained rate; median of "
            f"{len(report.cost[0].losses)} alternating trials each)",
            f"{'workload':8} {'receiver':8} {'kpkt/s':>8} {'rx CPU':>6} {'us/pkt':>7} "
            f"{'user us/pkt':>11} {'core us/pkt':>11} {'max loss %':>10} "
            f"{'spead2/daqd CPU (user; core)':>29}",
        ]
        for c in report.cost:
            ratio = ""
            if c.receiver == "spead2" and c.workload in costs:
                x = costs[c.workload]
                core = f"; {x['core']:.2f}" if "core" in x else ""
                ratio = f"{x['total']:.2f} ({x['user']:.2f}{core})"
            lines.append(
                f"{c.workload:8} {c.receiver:8} {c.rate_pps / 1e3:8.0f} "
                f"{100 * c.receiver_cpu:5.0f}% {c.cpu_us_per_packet:7.2f} "
                f"{c.user_us_per_packet:11.2f} {_us(c.core_us_per_packet):>11} "
                f"{100 * max(c.losses):10.3f} {ratio:>29}"
            )
        lines.append("(core us/pkt: the receiver's CPU busy time per packet, the kernel's "
                     "interrupt and softirq work on it included)")
    if report.durations:
        lines += ["", "took: " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                           report.durations.items())]
    return "\n".join(lines)
