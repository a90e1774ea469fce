"""The cost per chunk of the example processing step (``examples/integrate``).

Run: ``python tests/benchmarks/process_step.py [--chunks 4] [--records 200] [--rounds 5]``.

W1 chunks (64 heaps of 8 KiB, 512 KiB of uint8 per chunk) from a real chunk
pool go through the step as the daemon runs it (`daqd.pipeline.process.Processor`:
the call, the output check, the pool chunk's release), the integrator
summing `chunks` of them into uint32 records.  Printed: the median and best
time per input chunk over the rounds, as microseconds and as input GB/s, and
the step's own ``process_seconds`` per chunk.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from daqd import _spead
from daqd.config import ChunkConfig
from daqd.pipeline.process import Processor
from daqd.pipeline.records import ChunkRecord
from daqd.tools.bench.machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "integrate"))
from daqd_integrate import Integrator

HPC, HEAP_BYTES, STEP = 64, 8192, 8192
CHUNK = ChunkConfig(timestamp_item=0x1600, timestamp_step=STEP, heaps_per_chunk=HPC,
                    heap_bytes=HEAP_BYTES, max_chunks=2, pool=8)


def pool_records(count: int) -> list[ChunkRecord]:
    """`count` W1 chunks held from a real pool, wrapped as records (no copy)."""
    stream = _spead.ChunkStream(timestamp_item=CHUNK.timestamp_item, timestamp_step=STEP,
                                heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                                max_chunks=CHUNK.max_chunks, pool=count + CHUNK.max_chunks)
    reader = _spead.SimReader("W1", heaps=count * HPC)
    while (batch := reader.read_batch()) is not None:
        stream.add_packets(batch[0])
    stream.finish()
    records = []
    while (chunk := stream.get(1.0)) is not None:
        records.append(ChunkRecord.from_chunk(chunk))
    return records


def one_round(count: int, chunks: int) -> tuple[float, float]:
    """Feed `count` W1 chunks through the integrator; (wall, process_seconds) per chunk."""
    records = pool_records(count)
    step = Processor(Integrator(chunks=chunks), CHUNK, "bench")
    start = time.perf_counter()
    for record in records:
        step(record)
    wall = time.perf_counter() - start
    return wall / len(records), step.counters()["process_seconds"] / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="chunks per integration")
    parser.add_argument("--records", type=int, default=200, help="input chunks per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    walls, inner = [], []
    for _ in range(args.rounds):
        wall, own = one_round(args.records, args.chunks)
        walls.append(wall)
        inner.append(own)
    chunk_bytes = HPC * HEAP_BYTES
    print(f"CPU: {cpu_model()}; {time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"integrator, {args.chunks} chunks of {chunk_bytes >> 10} KiB uint8 -> uint32, "
          f"{args.records} chunks x {args.rounds} rounds")
    for name, values in (("median", statistics.median(walls)), ("best", min(walls))):
        print(f"  {name:6s} {values * 1e6:8.1f} us per chunk  "
              f"{chunk_bytes / values / 1e9:6.2f} GB/s of input")
    print(f"  process_seconds per chunk (median): {statistics.median(inner) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
