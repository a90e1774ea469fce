"""Drive a workload over loopback TCP into ``TcpServerReader`` and a ``ChunkStream``.

Run under callgrind, counting only what runs inside ``ChunkStream.chunks()`` (the
reader's ``fill()``: poll, read, cutting packets; the window; the placement), to
get instructions per packet of the ``tcp://`` receive path::

    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=__pyx_gb_4daqd_6_spead_11ChunkStream_12generator2 \\
        --callgrind-out-file=cg.tcp.W2 python tests/benchmarks/tcp_server_profile.py W2
    callgrind_annotate cg.tcp.W2 | head -30     # the total, and where it goes

The total divided by the packets printed is the figure (start-up, building the
buffer and the sender are outside the counted region).  The sender is a child
process (not traced by valgrind: ``--trace-children=no`` is the default) that
connects once and writes the workload's packets back to back, as spead2's
``TcpStream`` sends them; the source is ``tcp://127.0.0.1:PORT?once=1``, so the
stream ends when the sender closes.  Without valgrind it prints the seconds of
the receive loop too, and the CPU time of the receiving thread in it (user and
system: the kernel's copies of ``read()`` included), a loopback figure: sender and
receiver share the machine, so compare builds only within one run, interleaved.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from daqd.recv.sources import open_source
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.memory import daqd_chunk_stream, workload_buffer
from daqd.tools.bench.params import HEAPS_PER_CHUNK

SENDER = """
import socket, sys
with open(sys.argv[1], "rb") as f, socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as s:
    s.sendfile(f)
"""


def main(argv: list[str] | None = None) -> None:
    """Send the workload once over loopback TCP and receive it; print packets and heaps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--heaps", type=int, default=64 * HEAPS_PER_CHUNK)
    args = parser.parse_args(argv)
    buf = workload_buffer(args.workload, args.heaps)
    with tempfile.NamedTemporaryFile(prefix="daqd-tcp-bench-") as f:
        f.write(buf.tobytes())
        f.flush()
        source = open_source("tcp://127.0.0.1:0?once=1")
        port = source.address[1]
        sender = subprocess.Popen([sys.executable, "-c", SENDER, f.name, str(port)])
        try:
            stream = daqd_chunk_stream(args.workload)
            start, cpu_start = time.perf_counter(), time.thread_time()
            for chunk in stream.chunks(source.reader):
                chunk.release()
            seconds = time.perf_counter() - start
            cpu = time.thread_time() - cpu_start
        finally:
            source.close()
            sender.wait(timeout=60)
    stats = stream.stats()
    packets = args.heaps * WORKLOADS[args.workload].packets_per_heap
    print(f"{args.workload}: {packets} packets over TCP, "
          f"{stats['chunk_heaps_present']} of {args.heaps} heaps present, "
          f"{seconds:.3f} s in the receive loop, {cpu:.3f} s of its CPU")
    if stats["chunk_heaps_present"] != args.heaps:
        raise SystemExit(f"{args.workload}: heaps lost {stats}")


if __name__ == "__main__":
    main()
