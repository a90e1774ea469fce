"""UDP GSO in ``_spead.send``: the same datagrams arrive as without it.

Over real loopback UDP: the reference workloads, and packets of mixed sizes
from separate buffers, sent with and without ``gso``, must arrive byte for
byte the same, in the same order.  Where the kernel refuses to segment (here
forced with SO_NO_CHECK, which makes any UDP_SEGMENT send fail with EINVAL)
the sender must fall back to one datagram per message and still deliver
everything.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from udp_helpers import HAVE_GSO, workload_stream

from daqd import _spead
from daqd.recv.workloads import WORKLOADS, udp_batch

pytestmark = pytest.mark.network

SO_NO_CHECK = getattr(socket, "SO_NO_CHECK", 11)


class Collector(threading.Thread):
    """Receives datagrams on a fresh loopback socket until `expected` arrived."""

    def __init__(self, expected: int, timeout: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.expected = expected
        self.got: list[bytes] = []

    def run(self) -> None:
        try:
            while len(self.got) < self.expected:
                self.got.append(self.sock.recv(1 << 17))
        except TimeoutError:
            pass
        finally:
            self.sock.close()


def send_and_collect(make_source, expected: int, *, gso: bool, no_check: bool = False
                     ) -> tuple[list[bytes], tuple[int, int, int], dict]:
    """Send `make_source()` with `_spead.send`; return what arrived, the result, the info."""
    collector = Collector(expected)
    collector.start()
    info: dict = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if no_check:
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        sock.connect(collector.sock.getsockname())
        result = _spead.send(make_source(), sock.fileno(), "udp", gso=gso, info=info)
    collector.join(5.0)
    return collector.got, result, info


# Small enough (about 200 kB) that even a default receive buffer holds them.
COUNTS = {"W1": 24, "W2": 180, "W3": 3}


@pytest.mark.parametrize("workload", ["W1", "W2", "W3"])
def test_sim_workload_identical(workload):
    heaps = COUNTS[workload]
    per_heap = WORKLOADS[workload].packets_per_heap
    n = heaps * per_heap

    def source():
        # A batch of whole GSO sends plus a remainder, and a final short batch.
        return _spead.SimReader(workload, heaps=heaps, batch=udp_batch(workload) + 3)

    plain, plain_result, plain_info = send_and_collect(source, n, gso=False)
    fast, fast_result, fast_info = send_and_collect(source, n, gso=True)
    assert plain_info == {"gso": False, "gso_errno": 0}
    if HAVE_GSO:
        assert fast_info == {"gso": True, "gso_errno": 0}
    else:
        assert fast_info == {"gso": False, "gso_errno": -1}
    assert plain_result == fast_result == (n, n * len(plain[0]), 0)
    assert len(plain) == len(fast) == n
    assert fast == plain
    # And they are the workload's packets, in order.
    expected = bytes(workload_stream(workload, heaps))
    assert b"".join(fast) == expected


def mixed_packets() -> list[bytes]:
    """Packets of several sizes, each its own bytes object (not contiguous)."""
    sizes = [1080] * 5 + [200] + [100] * 70 + [8248] * 9 + [56] + [1080] * 3 + [9000] * 2
    return [bytes((i + j) % 251 for j in range(size)) for i, size in enumerate(sizes)]


def test_mixed_sizes_identical():
    packets = mixed_packets()
    got, result, info = send_and_collect(lambda: _spead.ByteListReader(packets), len(packets),
                                         gso=True)
    assert info["gso"] == HAVE_GSO
    assert result == (len(packets), sum(map(len, packets)), 0)
    assert got == packets


def test_segments():
    assert _spead.udp_gso_segments(8248) == 7
    assert _spead.udp_gso_segments(1080) == 60
    assert _spead.udp_gso_segments(100) == 64      # UDP_MAX_SEGMENTS of older kernels
    assert _spead.udp_gso_segments(40000) == 1
    assert _spead.udp_gso_segments(70000) == 0
    assert [udp_batch(w) for w in ("W1", "W2", "W3")] == [56, 60, 56]
    assert udp_batch("W3", gso=False) == 64


@pytest.mark.skipif(not HAVE_GSO, reason="the kernel has no UDP GSO")
@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_fallback_when_refused(workload):
    """SO_NO_CHECK makes the kernel refuse UDP_SEGMENT (EINVAL): one datagram per message."""
    n = COUNTS[workload]

    def source():
        return _spead.SimReader(workload, heaps=n, batch=udp_batch(workload))

    plain, _, _ = send_and_collect(source, n, gso=False)
    got, result, info = send_and_collect(source, n, gso=True, no_check=True)
    assert info == {"gso": False, "gso_errno": errno.EINVAL}
    assert result == (n, n * len(plain[0]), 0)
    assert got == plain


@pytest.mark.skipif(not HAVE_GSO, reason="the kernel has no UDP GSO")
def test_fallback_mixed_sizes():
    packets = mixed_packets()
    got, result, info = send_and_collect(lambda: _spead.ByteListReader(packets), len(packets),
                                         gso=True, no_check=True)
    assert info == {"gso": False, "gso_errno": errno.EINVAL}
    assert result == (len(packets), sum(map(len, packets)), 0)
    assert got == packets


def test_bench_sender_uses_gso():
    """The bench sender's trial reports GSO, and its receiver gets whole heaps."""
    from daqd.tools.bench import udp as bench

    collector = Collector(1 << 30, timeout=0.5)
    collector.start()
    reply = bench._send_trial("W2", collector.sock.getsockname()[1], rate=3000, seconds=0.1)
    collector.expected = reply["packets"] + 3
    collector.join(5.0)
    assert reply["gso"] == HAVE_GSO and reply["gso_errno"] == (0 if HAVE_GSO else -1)
    assert reply["packets"] % 60 == 0 and reply["packets"] > 0     # whole batches
    data = [p for p in collector.got if len(p) == 1080]
    assert len(data) == reply["packets"]
    assert collector.got[-3:] == [_spead.stop_packet(1 + reply["packets"])] * 3


@pytest.mark.parametrize("workload", ["W1", "W2", "W3"])
def test_simulate_udp_identical(workload):
    """``daqd simulate udp://`` (GSO) sends exactly the workload's packets, then a stop heap."""
    from daqd.tools.simulate import simulate

    heaps = COUNTS[workload]
    per_heap = WORKLOADS[workload].packets_per_heap
    collector = Collector(heaps * per_heap + 1)
    collector.start()
    port = collector.sock.getsockname()[1]
    sent = simulate(f"udp://127.0.0.1:{port}", workload, rate=0.0, heaps=heaps, stop=True)
    collector.join(5.0)
    assert sent["packets"] == heaps * per_heap and sent["send_dropped"] == 0
    assert b"".join(collector.got[:-1]) == bytes(workload_stream(workload, heaps))
    assert len(collector.got) == heaps * per_heap + 1
    assert collector.got[-1] == _spead.stop_packet(1 + heaps)
