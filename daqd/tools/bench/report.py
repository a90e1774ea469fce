"""What ``daqd bench`` measured: the results, their JSON form, the ratios and the table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.params import (
    COST_FRACTION,
    HEAPS_PER_CHUNK,
    LOSS_LIMIT,
    MAX_CHUNKS,
    MAX_HEAPS,
    POOL,
    layout,
)

#: The UDP socket limit's receiver name (`daqd._spead.RawUdpReceiver`: it only counts),
#: on a socket with daqd's GRO setting; the same without GRO whatever daqd's; and
#: the same (daqd's GRO setting) copying each payload into chunk memory as a
#: chunk stream does (the socket and the copy, no SPEAD).
RAW = "raw"
RAW_NO_GRO = "raw-nogro"
RAW_COPY = "raw-copy"
LIMITS = (RAW, RAW_NO_GRO, RAW_COPY)


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
    packets_counted: int | None = None  # the raw receiver: datagrams it counted (else None)
    # Datagrams dropped at the receiver CPU's input backlog (RPS), before any socket
    backlog_drops: int | None = None
    # Time the receiver's threads waited, runnable, for a CPU / trial time (schedstat)
    run_delay: float | None = None


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


@dataclass
class BenchReport:
    """Everything ``daqd bench`` measured."""

    machine: dict[str, Any]
    memory: list[MemoryResult] = field(default_factory=list)
    # The copy limit from memory (`daqd.tools.bench.copy_limit`), named by its copy
    memory_limits: list[MemoryResult] = field(default_factory=list)
    udp: list[UdpResult] = field(default_factory=list)
    cost: list[CostResult] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    socket_buffer: int | None = None
    socket_buffer_note: str | None = None
    pinning: str | None = None
    retries: int = 1
    sender: str | None = None       # how the UDP sender sent (GSO or sendmmsg)
    udp_runs: int = 1               # rate searches per receiver and workload (medians)
    loopback: str | None = None     # where the UDP part ran (see daqd.tools.bench.netns)
    daqd_gro: str | None = None     # whether daqd received with UDP GRO

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict, with daqd/spead2 ratios."""
        out = asdict(self)
        out["ratios"] = {
            "memory": _ratios(self.memory),
            "memory_of_copy_limit": of_copy_limit(self.memory, self.memory_limits),
            "udp_of_socket_limit": of_socket_limit(self.udp),
            "udp_of_socket_limit_without_gro": of_socket_limit(self.udp, RAW_NO_GRO),
            "udp_of_socket_copy_limit": of_socket_limit(self.udp, RAW_COPY),
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
        memory_limits=[MemoryResult(**m) for m in data.get("memory_limits", [])],
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


def of_copy_limit(results: Iterable[MemoryResult], limits: Iterable[MemoryResult]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """Map workload -> receiver -> copy -> the receiver's rate as a fraction of that copy's.

    The copies are the limits of `daqd.tools.bench.copy_limit` (``nontemporal``,
    the copy daqd's chunk mode makes, is the limit; ``standard`` for reference).
    """
    rates = {(c.workload, c.receiver): c.heaps_per_s for c in limits}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        for (w, copy), rate in rates.items():
            if w == r.workload and rate:
                out.setdefault(w, {}).setdefault(r.receiver, {})[copy] = r.heaps_per_s / rate
    return out


def of_socket_limit(results: Iterable[UdpResult], limit: str = RAW
                    ) -> dict[str, dict[str, Any]]:
    """Map workload -> receiver -> its median sustained rate as a fraction of `limit`'s.

    `limit` is one of `LIMITS` (the raw receiver); ``{"ratio", "kind"}``; the
    kind as in `udp_ratios` (``at least`` when the receiver's median is a
    lower bound, ``at most`` when the raw receiver's is).
    """
    by = {(r.workload, r.receiver): r for r in results}
    out: dict[str, dict[str, Any]] = {}
    for (w, name), u in by.items():
        raw = by.get((w, limit))
        if name in LIMITS or raw is None:
            continue
        kind = _kind(u.sender_limited, raw.sender_limited)
        ratio = (u.packets_per_s / raw.packets_per_s
                 if raw.packets_per_s and kind != "both sender-limited" else None)
        out.setdefault(w, {})[name] = {"ratio": ratio, "kind": kind}
    return out


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


def offered_rate(t: Trial) -> float:
    """Return the rate a trial's sender offered (packets/s)."""
    return t.offered_pps


def failed_ceiling(t: Trial) -> float:
    """Return the fastest the sender may have sent in `t`: the paced rate asked for or offered.

    A paced sender that falls behind does not catch up (`daqd.tools.bench.udp._send_trial`), so
    its rate was at most the one asked for throughout, and the receiver may
    have lost heaps in the spells at that rate however slow the average was.
    """
    return max(t.requested_pps, t.offered_pps)


def fmt_percent(value: float | None) -> str:
    """Format a fraction as a whole percentage ('?' if unknown)."""
    return "?" if value is None else f"{100 * value:.0f}%"


def fmt_us(value: float | None) -> str:
    """Format microseconds ('?' if unknown)."""
    return "?" if value is None else f"{value:.2f}"


def fmt_cores(value: float | None) -> str:
    """Format a number of cores ('?' if unknown)."""
    return "?" if value is None else f"{value:.2f}"


def fmt_kpps(value: float) -> str:
    """Format packets/s as whole kpackets/s."""
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
        per_heap = WORKLOADS[u.workload].packets_per_heap
        heap_bytes = layout(u.workload)["heap_bytes"]
        runs = u.runs or [UdpRun(u.sustained, u.first_failed, u.sender_limited,
                                 u.packets_per_s, len(u.trials), u.seconds)]
        for i, run in enumerate(runs, 1):
            head = f"{u.workload:8} {u.receiver:8} {i:3}"
            s = run.sustained
            if s is None:
                fail = run.first_failed
                lines.append(f"{head} {'none':>10}  (lost >= 0.1 % even at "
                             f"{fmt_kpps(fail.offered_pps if fail else 0)} kpkt/s)")
                continue
            drops = s.daqd_socket_drops if s.daqd_socket_drops is not None else s.kernel_drops
            if run.sender_limited:
                nxt = "(lower bound)"
            elif run.first_failed is not None:
                f = run.first_failed
                nxt = (f"{failed_ceiling(f) / 1e6:.3f}M lost {100 * f.loss:.2f}%"
                       if f.loss >= LOSS_LIMIT or f.lag_ms is None else
                       f"{failed_ceiling(f) / 1e6:.3f}M {f.lag_ms:.0f} ms late")
            else:
                nxt = ""
            pps = run.packets_per_s
            lines.append(
                f"{head} {pps / per_heap / 1e3:10.1f} {pps / 1e6:8.3f} "
                f"{pps / per_heap * heap_bytes * 8 / 1e9:8.2f} {100 * s.loss:7.3f} "
                f"{'' if drops is None else drops:>6} {100 * s.receiver_cpu:5.0f}% "
                f"{fmt_percent(s.receiver_core_busy):>5} "
                f"{s.cpu_us_per_packet:6.2f} ({s.user_us_per_packet:4.2f}) "
                f"{fmt_cores(s.other_load):>5} {nxt:>20} {run.trials:6}"
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
    lines += _loss_sites(report.udp)
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
        return (f"{bound}{fmt_kpps(figures['median_pps'])} "
                f"({fmt_kpps(figures['min_pps'])}-{fmt_kpps(figures['max_pps'])})")

    for w, x in spread.items():
        prefix = {"at least": ">= ", "at most": "<= "}.get(x["kind"], "")
        ratio = "n/a" if x["ratio"] is None else f"{prefix}{x['ratio']:.2f}"
        run_ratios = " ".join("-" if r["ratio"] is None else
                        {"at least": ">=", "at most": "<="}.get(r["kind"], "")
                        + f"{r['ratio']:.2f}" for r in x["runs"])
        lines.append(f"{w:8} {cell(x['daqd']):>20} {cell(x['spead2']):>20} {ratio:>12} "
                     f"{run_ratios:>24}")
    limited = [w for w, x in spread.items() if x["kind"] == "both sender-limited"]
    if limited:
        lines.append(f"{', '.join(limited)}: both receivers took all the sender could "
                     "send in some run, so there is no rate ratio; see the CPU time below")
    return (lines + _format_socket_limit(report) + _format_socket_limit(report, RAW_NO_GRO)
            + _format_socket_limit(report, RAW_COPY))


def _limit_rate(u: UdpResult) -> str:
    return f"{'>=' if u.sender_limited else ''}{fmt_kpps(u.packets_per_s)}".rjust(12)


def _loss_sites(results: Iterable[UdpResult]) -> list[str]:
    """Where the failed trials lost their datagrams: the socket buffer or the CPU's backlog."""
    lines = []
    for u in results:
        failed = [t for t in u.trials if not t.ok]
        if not any(t.backlog_drops is not None for t in failed):
            continue
        socket_drops = sum(t.kernel_drops or 0 for t in failed)
        backlog = sum(t.backlog_drops or 0 for t in failed)
        late = sum(1 for t in failed if t.loss < LOSS_LIMIT)
        lines.append(f"{u.workload} {u.receiver}: {len(failed)} failed trials: datagrams "
                     f"dropped at the socket buffer {socket_drops}, at the receiver CPU's "
                     f"input backlog {backlog}; {late} failed only by ending late")
    if lines:
        lines.insert(0, "Where the failed trials lost datagrams (the backlog: the receiving "
                        "CPU's RPS queue, net.core.netdev_max_backlog, before any socket; "
                        "it counts every datagram that CPU dropped meanwhile)")
    return lines


def _format_socket_limit(report: BenchReport, limit: str = RAW) -> list[str]:
    """Format the socket limit (a raw receiver, `limit`) and each receiver as a fraction of it."""
    by = {(u.workload, u.receiver): u for u in report.udp}
    fractions = of_socket_limit(report.udp, limit)
    if not fractions:
        return []
    names = list(dict.fromkeys(u.receiver for u in report.udp if u.receiver not in LIMITS))
    gro = {RAW: "same buffer and GRO setting, counting datagrams only",
           RAW_NO_GRO: "same buffer, without UDP GRO whatever daqd's setting, counting "
                       "datagrams only",
           RAW_COPY: "same buffer and GRO setting, counting datagrams and copying each "
                     "payload into chunk memory with a chunk stream's copy, no SPEAD work"}[limit]
    lines = [
        "",
        f"Socket limit over loopback UDP: the raw receiver ({limit}: recvmmsg on a socket set "
        f"up as daqd's, {gro}), in the same "
        "searches; medians, kpkt/s ('>=': a lower bound)",
        f"{'workload':8} {limit:>12} " + " ".join(f"{n:>12} {n + '/' + limit:>12}"
                                                 for n in names),
    ]
    for w, x in fractions.items():
        cells = [_limit_rate(by[w, limit])]
        for n in names:
            f = x.get(n)
            if f is None or f["ratio"] is None:
                fraction = "n/a"
            else:
                prefix = {"at least": ">= ", "at most": "<= "}.get(f["kind"], "")
                fraction = prefix + fmt_percent(f["ratio"])
            cells += [_limit_rate(by[w, n]), f"{fraction:>12}"]
        lines.append(f"{w:8} " + " ".join(cells))
    return lines


def _format_memory(report: BenchReport, ratios: dict[str, Any]) -> list[str]:
    """Format the from-memory part of `format_report`: receivers, then their copy limits."""
    first = report.memory[0]
    lines = [
        f"From memory (median of {len(first.seconds)} interleaved runs; "
        "every heap and byte checked)",
        f"{'workload':8} {'receiver':8} {'MiB':>6} {'kheaps/s':>10} {'Mpkt/s':>8} "
        f"{'Gbit/s':>8} {'median s':>9} {'other':>5} {'daqd/spead2':>12} {'of copy':>8} "
        f"{'of memcpy':>9}",
    ]
    of_copy = ratios["memory_of_copy_limit"]
    for w in dict.fromkeys(r.workload for r in report.memory):
        for r in [m for m in report.memory if m.workload == w]:
            ratio = ratios["memory"].get(w) if r.receiver == "spead2" else None
            fractions = of_copy.get(w, {}).get(r.receiver, {})
            lines.append(
                f"{w:8} {r.receiver:8} {r.buffer_bytes / 2**20:6.0f} "
                f"{r.heaps_per_s / 1e3:10.1f} {r.packets_per_s / 1e6:8.3f} "
                f"{r.gbit_per_s:8.2f} {r.median_seconds:9.4f} {fmt_cores(r.other_load):>5} "
                f"{'' if ratio is None else f'{ratio:.2f}':>12} "
                f"{fmt_percent(fractions.get('nontemporal')) if fractions else '':>8} "
                f"{fmt_percent(fractions.get('standard')) if fractions else '':>9}"
            )
        for c in [m for m in report.memory_limits if m.workload == w]:
            name = {"nontemporal": "copy", "standard": "memcpy"}.get(c.receiver, c.receiver)
            lines.append(
                f"{w:8} {name:8} {c.buffer_bytes / 2**20:6.0f} "
                f"{c.heaps_per_s / 1e3:10.1f} {c.packets_per_s / 1e6:8.3f} "
                f"{c.gbit_per_s:8.2f} {c.median_seconds:9.4f} {fmt_cores(c.other_load):>5} "
                f"{'':>12} {'limit' if c.receiver == 'nontemporal' else '':>8}"
            )
    if report.memory_limits:
        lines.append(
            "(copy: the copy limit, only the payload copies of the same packets into a "
            "pre-touched pool of the same chunk layout, with the non-temporal copy of daqd's "
            "chunk mode, in the same rounds; memcpy: the same with the standard memcpy; "
            "of copy, of memcpy: the receiver's rate as a fraction of each)")
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
        lines += ["", *_format_memory(report, ratios)]
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
                f"{c.user_us_per_packet:11.2f} {fmt_us(c.core_us_per_packet):>11} "
                f"{100 * max(c.losses):10.3f} {ratio:>29}"
            )
        lines.append("(core us/pkt: the receiver's CPU busy time per packet, the kernel's "
                     "interrupt and softirq work on it included)")
    if report.durations:
        lines += ["", "took: " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                           report.durations.items())]
    return "\n".join(lines)

