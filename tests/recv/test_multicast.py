"""IPv4 multicast sources (``udp://GROUP:PORT?interface=ADDR``), for real.

Loopback has no multicast route by default, so every scenario runs in a
private network namespace: this file re-runs itself under ``unshare --net``
(``python tests/recv/test_multicast.py SCENARIO``), where it brings ``lo`` up,
turns multicast on, adds ``224.0.0.0/4 dev lo`` and then exercises the real
sockets.  The host's network configuration is never touched, and each
scenario gets a fresh namespace (no memberships left over between them).

Scenarios:

1. ``receive``: ``daqd simulate`` sends W1 to the group; two daqd sources on
   the same group and port (two daemons on one host), one without
   ``interface=``, and spead2 as the reference receiver all get every heap,
   complete and identical; sources on another group (same port) or another
   port get nothing.
2. ``leave``: closing a source drops its membership (``/proc/net/igmp``)
   without disturbing another source's on the same group; once the last one
   closes the host has left the group; the same URI then opens and receives
   again.
3. ``bad_interface``: bad ``interface=`` values are one-line SourceErrors
   that leak no socket and leave no membership.
4. ``interface_isolation`` (needs veth): with the same group and port joined
   on ``lo`` and on a veth, each source receives only its own interface's
   datagrams (daqd sets IP_MULTICAST_ALL=0; spead2 4.5.1 does not).

If ``unshare`` (util-linux) or ``ip`` (iproute2) is missing they are installed
with apt-get when possible; if namespaces cannot be made the tests skip
with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import spead2.recv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_helpers as h
from spead_packets import expected_sim_heaps

from daqd import _spead
from daqd.errors import SourceError
from daqd.recv.sources import open_source
from daqd.tools.dump import receive_heaps
from daqd.tools.simulate import simulate

GROUP = "239.1.2.3"
OTHER_GROUP = "239.1.2.4"
PORT = 7148
VETH_ADDR = "10.9.0.1"
N_HEAPS = 1000
RATE = 20e6              # bytes/s: N_HEAPS of W1 in about 0.4 s
TIMEOUT = 20.0
HOST_NETNS_ENV = "DAQD_TEST_HOST_NETNS"   # the parent's namespace, never to be changed
SKIP_EXIT = 77           # a scenario's "cannot run here" (reason on stderr)

TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin",
                            "/bin"])


def tool(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


LO_SETUP = [
    ["link", "set", "lo", "up"],
    ["link", "set", "lo", "multicast", "on"],
    ["route", "add", "224.0.0.0/4", "dev", "lo"],
]
VETH_SETUP = [
    ["link", "add", "mc0", "type", "veth", "peer", "name", "mc1"],
    ["addr", "add", f"{VETH_ADDR}/24", "dev", "mc0"],
    ["link", "set", "mc1", "up"],
    ["link", "set", "mc0", "up"],
]

pytestmark = pytest.mark.network


# --------------------------------------------------------------------------
# Outside: find or install unshare and ip, then run scenarios in namespaces


def _install_tools() -> str:
    """Install util-linux and iproute2 with apt-get; '' or why it failed."""
    if tool("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "iproute2", "util-linux"]
    proc = None
    for commands in ([install], [["apt-get", "update"], install]):
        for cmd in commands:
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{' '.join(cmd)}: {exc}"
            if proc.returncode:
                break
        else:
            return ""
    assert proc is not None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"apt-get install failed: {lines[-1] if lines else proc.returncode}"


def _scenario_command(prefix: list[str], scenario: str) -> list[str]:
    return [*prefix, "--", sys.executable, os.path.abspath(__file__), scenario]


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _run_child(prefix: list[str], scenario: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{HOST_NETNS_ENV: str(netns_inode())})
    return subprocess.run(_scenario_command(prefix, scenario), env=env, capture_output=True,
                          text=True, timeout=timeout)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("ip") or "ip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def netns() -> list[str]:
    """The command prefix that runs a child in a fresh network namespace."""
    if tool("unshare") is None or tool("ip") is None:
        why = _install_tools()
        if tool("unshare") is None or tool("ip") is None:
            pytest.skip(f"needs unshare (util-linux) and ip (iproute2): {why or 'not found'}")
    failures = []
    # Root (CAP_SYS_ADMIN) first; otherwise an unprivileged user namespace.
    unshare = tool("unshare") or "unshare"
    for prefix in ([unshare, "--net"], [unshare, "--user", "--map-root-user", "--net"]):
        proc = _run_child(prefix, "setup", 60)
        if proc.returncode == 0:
            return prefix
        lines = proc.stderr.strip().splitlines()
        failures.append(f"{' '.join(prefix)}: {lines[-1] if lines else proc.returncode}")
    pytest.skip("cannot set up a private network namespace with a multicast route on lo: "
                + "; ".join(failures))


def run_scenario(prefix: list[str], scenario: str) -> dict[str, Any]:
    """Run one scenario in its own namespace; its summary, or fail/skip with its output."""
    started = time.monotonic()
    proc = _run_child(prefix, scenario, 120)
    if proc.returncode == SKIP_EXIT:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode:
        pytest.fail(f"scenario {scenario!r} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(time.monotonic() - started, 3)
    print(scenario, summary)
    return summary


def test_multicast_receive(netns):
    summary = run_scenario(netns, "receive")
    assert summary["heaps"] == N_HEAPS


def test_multicast_leave_on_close(netns):
    run_scenario(netns, "leave")


def test_multicast_bad_interface(netns):
    summary = run_scenario(netns, "bad_interface")
    assert summary["checked"] >= 6


def test_multicast_interface_isolation(netns):
    run_scenario(netns, "interface_isolation")


# --------------------------------------------------------------------------
# Inside the namespace (run as a script)


class Receiver:
    """A daqd source decoded in a thread (as ``daqd dump`` does), heaps kept."""

    def __init__(self, uri: str, *, stop_on_stop_item: bool = True):
        self.source = open_source(uri)
        self.stream = _spead.HeapStream(max_heaps=4, stop_on_stop_item=stop_on_stop_item)
        self.heaps: list[Any] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=uri, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for heap in receive_heaps(self.source, self.stream, self._stop.is_set):
                self.heaps.append(heap)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Wait for the stream's stop heap; the heaps as comparable records."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.finish()
            raise AssertionError(f"{self.source.uri}: no stop heap within {timeout} s "
                                 f"({len(self.heaps)} heaps, {self.counters()})")
        return self.records()

    def finish(self) -> list[dict[str, Any]]:
        """Stop receiving now (for receivers that must get nothing)."""
        self._stop.set()
        self.source.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        return self.records()

    def records(self) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return [h.daqd_record(heap) for heap in self.heaps]

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.stream.stats().items() if v}

    def close(self) -> None:
        self.source.close()


def check_clean(name: str, counters: dict[str, int], n: int) -> None:
    """Every datagram of n heaps plus the stop heap arrived, none dropped or rejected."""
    assert counters.get("packets_dropped_socket_buffer", 0) == 0, (
        f"{name}: the kernel dropped datagrams (socket buffer; net.core.rmem_max is "
        f"{Path('/proc/sys/net/core/rmem_max').read_text().strip()}): {counters}")
    assert h.rejected_total(counters) == 0, f"{name}: {counters}"
    assert counters.get("packets") == n + 1, f"{name}: {counters}"
    assert counters.get("heaps_complete") == n, f"{name}: {counters}"
    assert counters.get("stop_heaps") == 1, f"{name}: {counters}"


def cnt_ranges(records: list[dict[str, Any]]) -> str:
    """The heap counters received, as runs: '1-200, 1001-1200'."""
    runs: list[list[int]] = []
    for cnt in sorted(r["cnt"] for r in records):
        if runs and cnt == runs[-1][1] + 1:
            runs[-1][1] = cnt
        else:
            runs.append([cnt, cnt])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs) or "nothing"


def igmp_groups() -> dict[tuple[str, str], int]:
    """{(device, group): users} from this namespace's /proc/net/igmp."""
    out: dict[tuple[str, str], int] = {}
    device = ""
    with open("/proc/net/igmp") as f:
        next(f)
        for line in f:
            if not line.startswith("\t"):
                device = line.split()[1]
                continue
            fields = line.split()
            # The kernel prints the group's network-order word as a host integer.
            group = socket.inet_ntoa(struct.pack("=I", int(fields[0], 16)))
            out[(device, group)] = int(fields[1])
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send_w1(n: int) -> dict[str, Any]:
    sent = simulate(f"udp://{GROUP}:{PORT}", "W1", heaps=n, rate=RATE, stop=True)
    assert sent["packets"] == n and sent["send_dropped"] == 0, sent
    return sent


def spead2_stream(interface: str, *, stop: bool = True, ring: int = 64) -> Any:
    stream = spead2.recv.Stream(
        h.THREAD_POOL,
        spead2.recv.StreamConfig(max_heaps=4, stop_on_stop_item=stop),
        spead2.recv.RingStreamConfig(heaps=ring, contiguous_only=False),
    )
    stream.add_udp_reader(GROUP, PORT, max_size=9200, buffer_size=8 << 20,
                          interface_address=interface)
    return stream


def scenario_setup() -> dict[str, Any]:
    for cmd in LO_SETUP:
        proc = _ip(*cmd)
        if proc.returncode:
            sys.exit(f"ip {' '.join(cmd)}: {proc.stderr.strip()}")
    return {"routes": _ip("route").stdout.strip()}


def scenario_receive() -> dict[str, Any]:
    uri = f"udp://{GROUP}:{PORT}?interface=127.0.0.1"
    daemon_a, daemon_b = Receiver(uri), Receiver(uri)
    default_interface = Receiver(f"udp://{GROUP}:{PORT}")
    other_group = Receiver(f"udp://{OTHER_GROUP}:{PORT}?interface=127.0.0.1")
    other_port = Receiver(f"udp://{GROUP}:{PORT + 1}?interface=127.0.0.1")
    joined = igmp_groups()
    # A, B, the default interface (lo here) and the other port's source.
    assert joined.get(("lo", GROUP)) == 4, joined
    assert joined.get(("lo", OTHER_GROUP)) == 1, joined
    reference = spead2_stream("127.0.0.1")
    spead2_received = h.start_collecting_spead2(reference, timeout=TIMEOUT)
    sent = send_w1(N_HEAPS)
    expected = expected_sim_heaps("W1", N_HEAPS)
    for name, receiver in [("daemon A", daemon_a), ("daemon B", daemon_b),
                           ("no interface=", default_interface)]:
        records = receiver.join()
        check_clean(name, receiver.stream.stats(), N_HEAPS)
        assert records == expected, f"{name}: heaps differ from the W1 reference"
    assert spead2_received() == expected, "spead2 on the same group differs"
    time.sleep(0.2)   # anything misdelivered has long arrived: loopback is synchronous
    for name, receiver in [("other group", other_group), ("other port", other_port)]:
        assert receiver.finish() == [], name
        assert receiver.stream.stats()["packets"] == 0, f"{name}: {receiver.counters()}"
    for receiver in (daemon_a, daemon_b, default_interface, other_group, other_port):
        receiver.close()
    return {"heaps": N_HEAPS, "send_seconds": sent["seconds"],
            "counters": daemon_a.counters()}


def scenario_leave() -> dict[str, Any]:
    uri = f"udp://{GROUP}:{PORT}?interface=127.0.0.1"
    baseline_fds = open_fds()
    assert ("lo", GROUP) not in igmp_groups()
    a, b = open_source(uri), open_source(uri)
    other = open_source(f"udp://{OTHER_GROUP}:{PORT}?interface=127.0.0.1")
    joined = igmp_groups()
    assert joined.get(("lo", GROUP)) == 2 and joined.get(("lo", OTHER_GROUP)) == 1, joined
    a.close()
    assert igmp_groups().get(("lo", GROUP)) == 1, "closing a source must drop its join only"
    b.close()
    assert ("lo", GROUP) not in igmp_groups(), "the host is still in the group"
    assert igmp_groups().get(("lo", OTHER_GROUP)) == 1
    other.close()
    assert ("lo", OTHER_GROUP) not in igmp_groups()
    assert open_fds() == baseline_fds, "closing did not release the sockets"

    # Left for real: a socket bound to the group's port (no join of its own) sees
    # nothing once no one on the host is a member.
    observer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    observer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    observer.bind(("0.0.0.0", PORT))
    observer.settimeout(0.2)
    send_w1(5)
    try:
        leaked = observer.recv(9200)
    except TimeoutError:
        leaked = b""
    observer.close()
    assert leaked == b"", "datagrams to the group still delivered after every source left"

    # One daemon closing leaves the other receiving; the URI re-opens and re-joins.
    first, second = Receiver(uri), Receiver(uri)
    first.finish()
    first.close()
    assert igmp_groups().get(("lo", GROUP)) == 1
    send_w1(200)
    assert second.join() == expected_sim_heaps("W1", 200)
    check_clean("the daemon left running", second.stream.stats(), 200)
    second.close()
    assert ("lo", GROUP) not in igmp_groups()
    return {}


def scenario_bad_interface() -> dict[str, Any]:
    bad = [
        ("eth0", "is not an IPv4 address"),       # a name, not an address
        ("lo", "is not an IPv4 address"),
        ("", "is not an IPv4 address"),
        ("::1", "is not an IPv4 address"),
        ("127.0.0.1x", "is not an IPv4 address"),
        ("10.255.255.1", "No such device"),       # no interface has this address
        ("224.0.0.1", "No such device"),
        ("127.0.0.1&interface=10.255.255.1", "No such device"),  # the last one counts
    ]
    baseline_fds = open_fds()
    for value, reason in bad:
        uri = f"udp://{GROUP}:{PORT}?interface={value}"
        with pytest.raises(SourceError) as info:
            open_source(uri)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{uri}: "), message
        assert reason in message, message
        assert open_fds() == baseline_fds, f"{uri}: socket left open"
        assert ("lo", GROUP) not in igmp_groups(), f"{uri}: joined anyway"
    # The port is free and the group joinable afterwards.
    good = open_source(f"udp://{GROUP}:{PORT}?interface=127.0.0.1")
    assert igmp_groups().get(("lo", GROUP)) == 1
    good.close()
    return {"checked": len(bad)}


def scenario_interface_isolation() -> dict[str, Any]:
    for cmd in VETH_SETUP:
        proc = _ip(*cmd)
        if proc.returncode:
            print(f"no veth here: ip {' '.join(cmd)}: {proc.stderr.strip()}", file=sys.stderr)
            sys.exit(SKIP_EXIT)
    on_lo = Receiver(f"udp://{GROUP}:{PORT}?interface=127.0.0.1", stop_on_stop_item=False)
    on_veth = Receiver(f"udp://{GROUP}:{PORT}?interface={VETH_ADDR}", stop_on_stop_item=False)
    reference_lo = spead2_stream("127.0.0.1", stop=False, ring=1024)   # nobody pops it
    joined = igmp_groups()
    assert joined.get(("lo", GROUP)) == 2 and joined.get(("mc0", GROUP)) == 1, joined
    n = 200
    # Heaps 1..n leave through the veth, 1001..1000+n through lo (the local copy
    # of a multicast datagram is delivered as arriving on the interface it left by).
    for interface, first_cnt in ((VETH_ADDR, 1), ("127.0.0.1", 1001)):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                          socket.inet_aton(interface))
        sender.connect((GROUP, PORT))
        sim = _spead.SimReader("W1", heaps=n, rate=RATE, first_cnt=first_cnt)
        packets, _, dropped = _spead.send(sim, sender.fileno(), "udp")
        assert (packets, dropped) == (n, 0)
        sender.close()
    time.sleep(0.3)
    got_lo, got_veth = on_lo.finish(), on_veth.finish()
    assert got_veth == expected_sim_heaps("W1", n, 1), (
        f"source on the veth should get heaps 1-{n} only, got {cnt_ranges(got_veth)}")
    assert got_lo == expected_sim_heaps("W1", n, 1001), (
        f"source on lo should get heaps 1001-{1000 + n} only, got {cnt_ranges(got_lo)} "
        "(another interface's datagrams leak in unless IP_MULTICAST_ALL is 0)")
    on_lo.close()
    on_veth.close()
    reference_lo.stop()
    # spead2 4.5.1 (reference) leaves IP_MULTICAST_ALL on: its reader joined on lo
    # takes the veth's datagrams too.  daqd deliberately differs.
    spead2_packets = reference_lo.stats["packets"]
    assert spead2_packets == 2 * n, spead2_packets
    return {"spead2_lo_packets": spead2_packets}


SCENARIOS = {
    "setup": scenario_setup,
    "receive": scenario_receive,
    "leave": scenario_leave,
    "bad_interface": scenario_bad_interface,
    "interface_isolation": scenario_interface_isolation,
}


def in_private_namespace() -> bool:
    """Whether this process's network namespace is not the one that started it."""
    host = os.environ.get(HOST_NETNS_ENV)
    return bool(host) and host != str(netns_inode())


if __name__ == "__main__":
    if not in_private_namespace():
        sys.exit("refusing to run: not in a private network namespace (it would change "
                 "the host's routes); run it with pytest, which uses `unshare --net`")
    if sys.argv[1] != "setup":
        scenario_setup()
    # spead2 logs every full ring and the socket buffer it was refused.
    logging.getLogger("spead2").setLevel(logging.CRITICAL)
    started = time.monotonic()
    result = SCENARIOS[sys.argv[1]]()
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result, default=str))
