"""Drive W1, W2, W3 through ``ChunkStream`` from memory, for a profiler.

Run: ``python tests/benchmarks/hotpath_profile.py W2 [--heaps N] [--passes N]``, under
``valgrind --tool=callgrind`` or ``perf record``; then ``hotpath_callgrind.py`` splits
the instruction counts into the parts of the receive path (see its docstring and the
README's "Where the time goes (profile)").

The buffer is built before the first pass (``SimReader`` packets, as ``daqd bench``
builds them); each pass is ``ChunkStream.chunks(ByteStreamReader(buffer))`` with every
chunk released, exactly the from-memory benchmark's loop.  It prints the packets of
one pass, so that counts can be turned into counts per packet.
"""

from __future__ import annotations

import argparse

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.memory import daqd_chunk_stream, workload_buffer
from daqd.tools.bench.params import HEAPS_PER_CHUNK, MAX_PACKET_SIZE


def one_pass(workload: str, buf, batch: int | None = None) -> int:
    """Run `buf` once through a chunk stream; return the heaps present."""
    stream = daqd_chunk_stream(workload)
    kwargs = {"batch": batch} if batch else {}
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE, **kwargs)
    for chunk in stream.chunks(reader):
        chunk.release()
    return stream.stats()["chunk_heaps_present"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--heaps", type=int, default=64 * HEAPS_PER_CHUNK)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None,
                        help="the reader's batch (default: ByteStreamReader's)")
    args = parser.parse_args(argv)
    buf = workload_buffer(args.workload, args.heaps)
    for _ in range(args.passes):
        present = one_pass(args.workload, buf, args.batch)
        if present != args.heaps:
            raise SystemExit(f"{args.workload}: {present} of {args.heaps} heaps present")
    packets = args.heaps * WORKLOADS[args.workload].packets_per_heap
    print(f"{args.workload}: {args.passes} pass(es) of {packets} packets")


if __name__ == "__main__":
    main()
