"""CPU time per packet of draining a full UDP socket: the raw receiver beside daqd.

Run: ``python tests/benchmarks/udp_drain_cost.py W1 [--packets N] [--gro|--no-gro]
[--rounds R] [--batch B] [--receivers raw,raw-copy,daqd,daqd-standard]``.

Each round, for each receiver in turn (the order alternating): a fresh
socket (the bench's, `daqd.tools.bench.udp.receive_socket`, 512 MiB) with the
receiver made on it (so that UDP GRO is on before anything arrives), then
`--packets` packets of the workload sent to it from this thread (UDP GSO,
untimed; without RPS the kernel's receive path up to the socket runs in
this send), then the receiver drains it to the stop heap.  The drain's user
and system CPU time (getrusage of this thread) per packet is the receiver's
own cost: recvmmsg's copy out of the socket (system) and its work in user
space.  ``raw`` is `daqd._spead.RawUdpReceiver` (counts only); ``raw-copy`` the
same copying each packet's payload into a pool of the bench's chunk layout
with a chunk stream's copy (the socket and the copy, no SPEAD); ``daqd`` the
bench's ChunkStream on a UdpReader; ``daqd-standard`` the same with
``memcpy="standard"``.  CPU time, not wall time, so a loaded machine shifts
it less; medians over the rounds.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import time

from daqd import _spead
from daqd.recv.workloads import FIRST_CNT, WORKLOADS, udp_batch
from daqd.tools.bench.copy_limit import PoolBlock
from daqd.tools.bench.memory import daqd_chunk_stream
from daqd.tools.bench.params import MAX_CHUNKS, MAX_HEAPS, MAX_PACKET_SIZE, POOL, layout
from daqd.tools.bench.udp import kernel_drops, receive_socket

RECEIVERS = ("raw", "raw-copy", "daqd", "daqd-standard")


def _cpu() -> tuple[float, float, float]:
    """User and system time of this thread (in ticks), and its CPU clock (to the ns)."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime, time.thread_time()


def drain(receiver: str, workload: str, heaps: int, gro: bool, batch: int = 64
          ) -> tuple[float, float, float]:
    """Fill a socket with `heaps` heaps of `workload`, drain it: (user, system, all) us/packet.

    User and system come from getrusage, which this kernel keeps in whole
    ticks (4 ms: coarse for a drain of tens of milliseconds); all is the
    thread's CPU clock, exact.
    """
    w = WORKLOADS[workload]
    sock, _, _ = receive_socket(512 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        tx.connect(sock.getsockname())
        if receiver in ("raw", "raw-copy"):
            copy = {"dst": PoolBlock(workload).block,
                    "copy_bytes": w.heap_bytes // w.packets_per_heap} if receiver == "raw-copy" \
                else {}
            raw = _spead.RawUdpReceiver(sock, min_size=w.packet_size,
                                        max_packet_size=MAX_PACKET_SIZE, gro=gro, batch=batch,
                                        **copy)
        else:
            stream = (daqd_chunk_stream(workload) if receiver == "daqd" else
                      _spead.ChunkStream(**layout(workload), max_chunks=MAX_CHUNKS, pool=POOL,
                                         max_heaps=MAX_HEAPS, memcpy="standard"))
            reader = _spead.UdpReader(sock, max_packet_size=MAX_PACKET_SIZE, gro=gro,
                                      batch=batch)
        sim = _spead.SimReader(workload, heaps=heaps, batch=udp_batch(workload),
                               first_cnt=FIRST_CNT)
        _spead.send(sim, tx.fileno(), "udp", gso=True)
        stop = _spead.ByteListReader([_spead.stop_packet(FIRST_CNT + heaps)])
        _spead.send(stop, tx.fileno(), "udp")
        if kernel_drops(sock):
            raise RuntimeError("the socket dropped datagrams: fewer --packets")
        user, system, clock = _cpu()
        if receiver in ("raw", "raw-copy"):
            got = raw.run()
        else:
            got = 0
            for chunk in stream.chunks(reader):
                got += int(chunk.present.sum()) * w.packets_per_heap
                chunk.release()
        user2, system2, clock2 = _cpu()
    finally:
        tx.close()
        sock.close()
    if got != heaps * w.packets_per_heap:
        raise RuntimeError(f"{receiver} received {got} of {heaps * w.packets_per_heap} packets")
    return (1e6 * (user2 - user) / got, 1e6 * (system2 - system) / got,
            1e6 * (clock2 - clock) / got)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--gro", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch", type=int, default=64, help="packets per recvmmsg batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    args = parser.parse_args(argv)
    receivers = args.receivers.split(",")
    if any(r not in RECEIVERS for r in receivers):
        parser.error(f"--receivers: among {', '.join(RECEIVERS)}")
    heaps = args.packets // WORKLOADS[args.workload].packets_per_heap
    got: dict[str, list[tuple[float, float, float]]] = {r: [] for r in receivers}
    for i in range(args.rounds):
        for r in receivers if i % 2 == 0 else list(reversed(receivers)):
            got[r].append(drain(r, args.workload, heaps, args.gro, args.batch))
    for r, runs in got.items():
        user = statistics.median(u for u, _, _ in runs)
        system = statistics.median(s for _, s, _ in runs)
        total = statistics.median(c for _, _, c in runs)
        print(f"{args.workload} gro={int(args.gro)} {r:13} user {user:.3f} us/pkt  "
              f"system {system:.3f} us/pkt  total {total:.3f} us/pkt (thread CPU clock)")


if __name__ == "__main__":
    main()
