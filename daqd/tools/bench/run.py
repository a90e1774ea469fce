"""Chunk-mode throughput benchmarks, daqd beside spead2 (``daqd bench``).

Two measurements, each on the reference workloads W1-W3 (DESIGN.md), with
the same chunk layout on both sides (timestamp placement, 64 heaps per chunk,
``max_chunks=4``, a pool of 16 chunks, ``max_heaps=8``):

from memory
    One pre-built buffer of packets (the SimReader workload, back to back,
    about 1 GiB so that it is cold in every cache) goes through daqd's chunk
    path (``ChunkStream.chunks(ByteStreamReader(buffer))``, each chunk
    released in Python) and through spead2's ``ChunkRingStream``
    (``add_buffer_reader``, placement by ``_spead2compat.Spead2Placement``, chunks
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
    steer that receive path to the receiver's CPU (`daqd.tools.bench.netns`), as a
    NIC queue's interrupt on the capture core would: then the receiver's
    core carries the kernel's work and its own, and is what runs out.
    daqd's socket asks for UDP GRO, as the daemon's does (``daqd_gro``);
    spead2's receives one datagram per message.

spead2 is imported only when a spead2 figure is asked for.  The fixed
parameters are in `daqd.tools.bench.params`, the machine's description and load in
`daqd.tools.bench.machine`, the results, ratios and table in `daqd.tools.bench.report`,
the private namespace for the UDP part in `daqd.tools.bench.netns`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from daqd.errors import UsageProblem
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.machine import machine_info
from daqd.tools.bench.memory import bench_memory, import_spead2
from daqd.tools.bench.report import (
    RAW,
    RAW_COPY,
    RAW_NO_GRO,
    BenchReport,
    report_from_json,
)
from daqd.tools.bench.udp import SOCKET_BUFFER, merge_udp, pick_cpus, run_udp

WORKLOAD_NAMES = tuple(WORKLOADS)
MODES = ("memory", "udp", "all")
LOOPBACKS = ("auto", "rps", "shared")
#: --raw-gro: the raw receiver(s) over UDP, with daqd's GRO setting, without GRO, or both.
RAW_GROS = {"same": (RAW,), "off": (RAW_NO_GRO,), "both": (RAW, RAW_NO_GRO)}

# ----------------------------------------------------------------------
# The whole run (its results and table: daqd.tools.bench.report)


def run_bench(workloads: Sequence[str] = WORKLOAD_NAMES, *, vs_spead2: bool = False,
              mode: str = "all", runs: int = 5, heaps: int | None = None,
              trial_seconds: float = 1.0, ladder: int = 6, steps: int = 5,
              retries: int = 1, wait_idle: float = 0.0, socket_buffer: int = SOCKET_BUFFER,
              cost_trials: int = 3, sender_gso: bool = True, udp_runs: int = 3,
              loopback: str = "auto", daqd_gro: bool = True, limits: bool = True,
              raw_gro: str = "same", raw_copy: bool = False,
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
        Where the UDP part runs (see `daqd.tools.bench.netns`): ``rps``, in a
        private network namespace whose loopback has RPS steer the kernel's
        receive work to the receiver's CPU; ``shared``, on the machine's
        loopback, the sender's core doing that work; ``auto`` (default),
        ``rps`` where the process may make the namespace, else ``shared``.
    daqd_gro : bool
        daqd's UDP socket asks for UDP GRO, as it does by default in the
        daemon; False gives daqd the kernel's per-datagram path, as spead2's.
        The raw receiver's socket follows it.
    limits : bool
        Also measure the machine's limits, in the same rounds and searches:
        from memory the copy limit (`daqd.tools.bench.copy_limit`), over UDP
        the raw receiver (``RAW``, `daqd._spead.RawUdpReceiver`).
    raw_gro : str
        The raw receivers over UDP (`RAW_GROS`): ``same`` (default), one with
        daqd's GRO setting; ``off``, one without GRO (``RAW_NO_GRO``: daqd with
        GRO against the socket without it, in one run); ``both``.
    raw_copy : bool
        Over UDP, also the raw receiver that copies each payload into chunk
        memory (``RAW_COPY``, daqd's GRO setting): the socket limit with the
        copy a receiver cannot avoid, without SPEAD's work.
    log : callable
        Receives one line per step (progress).
    """
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        raise UsageProblem(f"--workload: unknown workload {bad[0]!r} (expected W1, W2 or W3)")
    if mode not in MODES:
        raise UsageProblem(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    if runs < 1:
        raise UsageProblem("--runs: must be at least 1")
    if udp_runs < 1:
        raise UsageProblem("--udp-runs: must be at least 1")
    if raw_gro not in RAW_GROS:
        raise UsageProblem(f"--raw-gro: {raw_gro!r} is not one of {', '.join(RAW_GROS)}")
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
            measured, copies = bench_memory(w, receivers, runs=runs, heaps=heaps,
                                            wait_idle=wait_idle, limits=limits, log=log)
            report.memory += measured
            report.memory_limits += copies
            report.durations[f"memory {w}"] = time.perf_counter() - start
    if mode in ("udp", "all"):
        raw = list(RAW_GROS[raw_gro]) + ([RAW_COPY] if raw_copy else []) if limits else []
        options: dict[str, Any] = dict(workloads=list(workloads), receivers=receivers + raw,
                       trial_seconds=trial_seconds, ladder=ladder, steps=steps,
                       retries=retries, wait_idle=wait_idle, socket_buffer=socket_buffer,
                       cost_trials=cost_trials, sender_gso=sender_gso, udp_runs=udp_runs,
                       daqd_gro=daqd_gro)
        refused = None
        if loopback in ("auto", "rps"):
            from daqd.tools.bench.netns import run_udp_with_rps

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


