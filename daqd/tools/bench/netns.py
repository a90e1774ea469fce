"""The loopback UDP benchmark in a private network namespace, with RPS on its loopback.

Over the machine's own loopback the sender's core does nearly all of the
kernel's work for every datagram: ``sendmsg`` runs the receive path too (IP,
UDP, cutting up GSO messages, queueing on the socket, waking the receiver).
On a two-core machine the sender then runs out of CPU before a fast receiver
does, and the benchmark gives only a lower bound for that receiver.

Receive packet steering (RPS) on the loopback device moves that receive path
to the CPU named in ``rps_cpus``: the sender queues each packet on that
CPU's backlog and the rest happens there, as it would in the softirq of a
NIC queue whose interrupts go to the capture core.  With the receiver's own
CPU named, the receiver's core carries the kernel's receive work and its own,
and it is the receiver that runs out first.  Both receivers are measured
under the same arrangement.

The namespace keeps the machine's loopback untouched: the benchmark's UDP
part runs in a child Python process that first (while it is still one
thread, as ``unshare(CLONE_NEWNS)`` requires) enters new network and mount
namespaces, mounts a sysfs of its own (where the new namespace's ``lo``
appears), brings ``lo`` up and writes its ``rps_cpus``.  The child sends its
progress lines and finally the report as JSON lines on stdout.  This needs
CAP_SYS_ADMIN (root); without it, `run_udp_with_rps` says why and the caller
falls back to the machine's loopback.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sh22x"                   # struct ifreq: name, then ifr_flags in the union
RPS_CPUS = "/sys/class/net/lo/queues/rx-0/rps_cpus"


class NamespaceRefused(OSError):
    """The private namespace or its RPS setting could not be made."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NamespaceRefused(err, f"{what}: {os.strerror(err)}")


def enter_namespace(rps_cpu: int) -> str:
    """Enter new network and mount namespaces with RPS on ``lo`` to `rps_cpu`.

    Must be called while the process has one thread.  Returns a description
    for the report; raises NamespaceRefused with the reason.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare(CLONE_NEWNET | CLONE_NEWNS)")
    # Mounts made from here on stay in this process's namespace.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
           "making / a private mount")
    _check(libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mounting sysfs")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = b"lo"
        _, flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS,
                                                    struct.pack(IFREQ, name, 0)))
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, name, flags | IFF_UP))
    try:
        with open(RPS_CPUS, "w") as f:
            f.write(f"{1 << rps_cpu:x}\n")
    except FileNotFoundError:
        raise NamespaceRefused(errno.ENOENT, "no rps_cpus on lo (a kernel without RPS)") from None
    except OSError as e:
        raise NamespaceRefused(e.errno, f"writing {RPS_CPUS}: {e.strerror}") from None
    return (f"a private network namespace whose loopback steers receive processing "
            f"(RPS) to CPU {rps_cpu}, the receiver's")


def child_main() -> None:
    """Run the child process: namespace first, then the UDP benchmark; JSON lines out."""
    request = json.loads(sys.argv[1])
    out = sys.stdout

    def emit(**message: Any) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        description = enter_namespace(request["rps_cpu"])
    except (NamespaceRefused, OSError) as e:
        emit(refused=e.strerror or str(e))
        return
    # Imported only now: numpy may start threads, and unshare() wants one.
    from daqd.tools.bench.machine import machine_info
    from daqd.tools.bench.report import BenchReport
    from daqd.tools.bench.udp import run_udp

    report = BenchReport(machine=machine_info(), retries=request["options"]["retries"],
                         udp_runs=request["options"]["udp_runs"], loopback=description)
    run_udp(report, **request["options"], log=lambda line: emit(log=line))
    emit(report=report.to_json())


def run_udp_with_rps(rps_cpu: int, options: dict[str, Any],
                     log: Callable[[str], None]) -> tuple[dict[str, Any] | None, str | None]:
    """Run `daqd.tools.bench.udp.run_udp` with `options` in the namespace (see the module).

    Returns ``(report JSON, None)``, or ``(None, reason)`` when the namespace
    was refused.  Progress lines go to `log` as they come.
    """
    request = json.dumps({"rps_cpu": rps_cpu, "options": options})
    code = "from daqd.tools.bench.netns import child_main; child_main()"
    proc = subprocess.Popen([sys.executable, "-c", code, request],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    result: tuple[dict[str, Any] | None, str | None] = (None, "the child process ended early")
    try:
        for line in proc.stdout:
            message = json.loads(line)
            if "log" in message:
                log(message["log"])
            elif "refused" in message:
                result = (None, message["refused"])
            elif "report" in message:
                result = (message["report"], None)
    finally:
        proc.stdout.close()
        status = proc.wait()
    if status != 0 and result[0] is None:
        raise RuntimeError(f"the namespaced benchmark process failed (status {status})")
    return result
