"""``daqd bench`` over loopback UDP: the sender process, trials, rate searches, CPU cost.

See `daqd.tools.bench.run` for the method.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from daqd import _spead
from daqd.recv.workloads import FIRST_CNT, WORKLOADS, udp_batch
from daqd.tools.bench.copy_limit import PoolBlock
from daqd.tools.bench.machine import (
    CoreMonitor,
    LoadMonitor,
    run_delay_seconds,
    wait_until_quiet,
)
from daqd.tools.bench.memory import (
    BenchError,
    daqd_chunk_stream,
    import_spead2,
    spead2_chunk_stream,
)
from daqd.tools.bench.params import (
    COST_FRACTION,
    LOSS_LIMIT,
    MAX_PACKET_SIZE,
    packet_size,
)
from daqd.tools.bench.report import (
    LIMITS,
    RAW_COPY,
    RAW_NO_GRO,
    BenchReport,
    CostResult,
    Trial,
    UdpResult,
    UdpRun,
    failed_ceiling,
    fmt_cores,
    fmt_us,
    offered_rate,
)

MEMORY_TARGET_BYTES = 1 << 30   # packet bytes per from-memory buffer
LAG_LIMIT = 0.02                # ... and the backlog drained within 2 % of the trial time
MIN_LAG_LIMIT_MS = 10.0         # (but at least 10 ms)
SOCKET_BUFFER = 64 << 20        # default UDP receive buffer of both receivers
SEND_BUFFER = 8 << 20           # the sender's SO_SNDBUF
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
HUGE_PAGE = 2 << 20
PACING_SLACK = 0.001            # UDP sender: behind its schedule by more, it starts it again
OTHER_LOAD_LIMIT = 0.1          # UDP: a trial failing while others used more cores runs again


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
    per_heap = WORKLOADS[workload].packets_per_heap
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
    info: dict[str, Any] = {"gso": gso, "gso_errno": 0}
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
        code = "from daqd.tools.bench.udp import sender_main; sender_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(-1 if cpu is None else cpu)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout
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

    `receiver`: ``daqd``, ``spead2``, `RAW` (the socket limit,
    `daqd._spead.RawUdpReceiver`, whose loss is counted in datagrams) or
    `RAW_NO_GRO` (the same, never with GRO) or `RAW_COPY` (`RAW` copying
    each payload into a pool of the bench's chunk layout).  It
    passes (``ok``) when fewer than 0.1 % of the heaps sent were lost
    and the receiver was no more than `lag_limit_ms` behind the sender at its
    end.  `gso`: the sender sends with UDP GSO (where the kernel allows it);
    `gro`: daqd's socket asks for UDP GRO (see `_spead.UdpReader`).
    """
    per_heap = WORKLOADS[workload].packets_per_heap
    sock, _, _ = receive_socket(socket_buffer)
    port = sock.getsockname()[1]
    count = np.count_nonzero
    present = 0
    counted: int | None = None          # the raw receiver's datagrams
    daqd_drops = receiver_gro = blocked = None
    try:
        if receiver == "daqd":
            stream = daqd_chunk_stream(workload)
            reader = _spead.UdpReader(sock, max_packet_size=MAX_PACKET_SIZE, gro=gro)
            receiver_gro = reader.gro
            watch = _Watch(sender, reader.stop, grace=1.0)
            chunks, recycle = stream.chunks(reader), _spead.Chunk.release
        elif receiver in LIMITS:
            # The socket limit: the same socket setup as daqd's, only counted;
            # the stop heap (shorter than any data packet) ends it.
            w = WORKLOADS[workload]
            copy: dict[str, Any] = {"dst": PoolBlock(workload).block,
                    "copy_bytes": w.heap_bytes // w.packets_per_heap} \
                if receiver == RAW_COPY else {}
            raw = _spead.RawUdpReceiver(sock, min_size=packet_size(workload),
                                        max_packet_size=MAX_PACKET_SIZE,
                                        gro=gro and receiver != RAW_NO_GRO, **copy)
            receiver_gro = raw.gro
            watch = _Watch(sender, raw.stop, grace=1.0)
        else:
            stream, data_ring, _pool = spead2_chunk_stream(spead2, workload)
            stream.add_udp_reader(sock, max_size=MAX_PACKET_SIZE)
            watch = _Watch(sender, stream.stop, grace=1.0)
            chunks, recycle = data_ring, stream.add_free_chunk
        load = LoadMonitor(sender.proc.pid)
        core = CoreMonitor()
        waited = run_delay_seconds()
        user, wall = _user_seconds(), time.perf_counter()
        cpu = time.process_time()
        sender.start(workload, port, rate, seconds, gso)
        watch.start()
        if receiver in LIMITS:
            counted = raw.run()
        else:
            for chunk in chunks:
                present += int(count(chunk.present))
                recycle(chunk)
        end = time.perf_counter()
        cpu, wall = time.process_time() - cpu, end - wall
        user = _user_seconds() - user
        if receiver == "daqd":
            stats = stream.stats()
            daqd_drops = stats["packets_dropped_socket_buffer"]
            blocked = stats["worker_blocked"]
        elif receiver not in LIMITS:
            stream.stop()
            blocked = stream.stats["worker_blocked"]
        other, steal = load.cores()
        core_busy, core_seconds = core.busy()
        backlog = core.backlog_drops()
        if waited is not None:
            after = run_delay_seconds()
            waited = None if after is None else after - waited
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
    if counted is not None:
        # Packets, not heaps: the raw receiver sees no heaps.
        if counted > reply["packets"]:
            raise BenchError(f"{workload}: the raw receiver counted {counted} datagrams of "
                             f"{reply['packets']} sent")
        present = counted // per_heap
        loss = (reply["packets"] - counted) / reply["packets"] if reply["packets"] else 1.0
    else:
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
        packets_counted=counted,
        backlog_drops=backlog,
        run_delay=waited / wall if waited is not None and wall > 0 else None,
    )


@dataclass
class SearchResult:
    """What one rate search found (see `rate_search`)."""

    best: Trial | None          # the fastest passing trial below `failed`
    failed: Trial | None        # the slowest rate that failed (its fastest trial)
    sender_limited: bool        # `best` is only a lower bound: see `rate_search`


def _verdict(rate: float, retries: int) -> Generator[float, Trial, tuple[bool, Trial]]:
    """Trials at one paced `rate` until one passes or `retries` + 1 fail.

    Returns (passed, the passing trial or the failing one with the highest
    `failed_ceiling`).
    """
    fails = []
    for _ in range(retries + 1):
        t = yield rate
        if t.ok:
            return True, t
        fails.append(t)
    return False, max(fails, key=failed_ceiling)


def rate_search(*, ladder: int = 6, steps: int = 5, retries: int = 0,
                resolution: float = 0.01) -> Generator[float, Trial, SearchResult]:
    """Search the highest sustained rate, on the rates the sender actually offered.

    A generator: it yields the next rate to ask for (packets/s, 0 = the
    sender's full speed) and is sent that trial's result; it returns a
    `SearchResult`.  A pass counts at the rate the sender offered (its
    average); a failure at its `failed_ceiling` (the rate asked for, or at full
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
    best = max(passes, key=offered_rate) if passes else None
    hi = max(fails, key=failed_ceiling) if fails else None
    if best is not None and len(passes) >= 2 and (hi is None
                                                  or failed_ceiling(hi) <= best.offered_pps):
        return SearchResult(best, None, True)
    assert hi is not None
    confirmed = len(fails) > retries     # else one full-speed failure, maybe a stall

    def fastest_below(limit: Trial) -> Trial | None:
        below = [p for p in passes if p.offered_pps < failed_ceiling(limit)]
        return max(below, key=offered_rate) if below else None

    lo = fastest_below(hi)
    ladder_left, steps_left, short_left = ladder, steps, steps
    while True:
        if lo is None:
            if ladder_left <= 0:
                return SearchResult(None, hi, False)
            ladder_left -= 1
            rate = failed_ceiling(hi) / 2
        else:
            if (steps_left <= 0 or short_left <= 0
                    or failed_ceiling(hi) <= lo.offered_pps * (1 + resolution)):
                return SearchResult(lo, hi, not confirmed)
            rate = math.sqrt(lo.offered_pps * failed_ceiling(hi))
        before = lo
        ok, t = yield from _verdict(rate, retries)
        if ok:
            passes.append(t)
        elif failed_ceiling(t) < failed_ceiling(hi):
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


def udp_result(workload: str, receiver: str, runs: Sequence[UdpRun],
               trials: list[Trial]) -> UdpResult:
    """Sum up one receiver's `runs` on `workload`: medians over the runs."""
    w = WORKLOADS[workload]
    heap_bytes, per_heap = w.heap_bytes, w.packets_per_heap
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
    def note(receiver: str, run: int, t: Trial, extra: str = "") -> None:
        asked = f"{t.requested_pps / 1e3:.0f} kpkt/s" if t.requested_pps else "full speed"
        blocked = "" if t.worker_blocked is None else f"; worker_blocked {t.worker_blocked}"
        if t.lag_ms is not None:
            blocked += f"; lag {t.lag_ms:.0f} ms"
        log(f"{workload} udp {receiver} run {run + 1}: {asked}: offered "
            f"{t.offered_pps / 1e3:.0f} kpkt/s, loss {100 * t.loss:.3f} % "
            f"({t.heaps_sent - t.heaps_present} of {t.heaps_sent} heaps; kernel drops "
            f"{t.kernel_drops}, backlog {'?' if t.backlog_drops is None else t.backlog_drops}"
            f"{blocked}; rx CPU {100 * t.receiver_cpu:.0f} %, waiting for it "
            f"{'?' if t.run_delay is None else f'{100 * t.run_delay:.0f}'} %, core "
            f"{'?' if t.receiver_core_busy is None else f'{100 * t.receiver_core_busy:.0f}'} %; "
            f"other load {fmt_cores(t.other_load)}, steal {fmt_cores(t.steal)} cores) "
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
                       f", failed at {failed_ceiling(found.failed) / 1e3:.0f} kpkt/s"
                       if found.failed else ""))
    return [udp_result(workload, r, done[r], trials[r]) for r in receivers]


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
            f"{fmt_us(out[-1].core_us_per_packet)}) at {out[-1].rate_pps / 1e3:.0f} kpkt/s")
    return out


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
    # daqd's own trials only: the raw receiver's socket has GRO off with --raw-gro off.
    report.daqd_gro = describe_gro(daqd_gro, [t for u in report.udp if u.receiver == "daqd"
                                              for t in u.trials])


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


