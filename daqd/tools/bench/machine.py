"""The machine under ``daqd bench``: what it is, and how busy it and its CPUs were."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

from daqd import __version__


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


def run_delay_seconds() -> float | None:
    """Seconds this process's threads have waited for a CPU while runnable (schedstat).

    The second field of ``/proc/self/task/*/schedstat``: time on a run queue,
    not running.  A receiver that waits there is held back by other work on
    its CPU, not by its own.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for task in tasks:
        text = _read(f"/proc/self/task/{task}/schedstat")
        if text:
            total += int(text.split()[1])
    return total / 1e9


def backlog_drops(cpu: int) -> int | None:
    """Packets the kernel dropped at `cpu`'s input backlog so far (/proc/net/softnet_stat).

    With RPS every datagram waits in the receiving CPU's backlog (at most
    net.core.netdev_max_backlog of them) until that CPU's softirq takes it
    to the socket; when the softirq falls behind, the backlog overflows and
    the datagram is dropped before any socket sees it (the second column).
    """
    for i, line in enumerate((_read("/proc/net/softnet_stat") or "").splitlines()):
        fields = line.split()
        # The 13th field is the CPU's number (kernels since 5.x); else the line's order.
        index = int(fields[12], 16) if len(fields) > 12 else i
        if index == cpu and len(fields) > 1:
            return int(fields[1], 16)
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
        self.backlog = backlog_drops(self.cpu) if self.cpu is not None else None

    def backlog_drops(self) -> int | None:
        """Packets dropped at the CPU's input backlog since the start (`backlog_drops`)."""
        if self.cpu is None or self.backlog is None:
            return None
        now = backlog_drops(self.cpu)
        return None if now is None else now - self.backlog

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
        self.pids: list[int | str] = ["self", *pids]
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


def cpu_model() -> str:
    """Return the CPU's model name (/proc/cpuinfo), else the platform's processor."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Describe the machine the figures were measured on."""
    cpu = cpu_model()
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

