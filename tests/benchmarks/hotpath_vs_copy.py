"""daqd's chunk path from memory beside spead2's and beside the copy limit, in one run.

Run: ``python tests/benchmarks/hotpath_vs_copy.py [W1 W2 W3] [--runs N] [--heaps N]``.

Three receivers take the same pre-built packet buffer (``daqd bench``'s, about
1 GiB per workload), interleaved, each run in turn; medians of ``--runs``:

- daqd: ``ChunkStream.chunks(ByteStreamReader(buffer))``, every chunk released
  (the loop of `daqd.tools.bench.memory.memory_run_daqd`, same stream);
- spead2: ``ChunkRingStream`` with ``add_buffer_reader`` (``memory_run_spead2``'s);
- copy: the copy limit, a compiled loop that does no SPEAD work at all: it copies
  exactly each packet's payload bytes, from the same buffer, to the place daqd
  puts them in a pool of 16 pre-touched chunks (huge-page aligned, as daqd's),
  with daqd's own non-temporal copy (``cython_ext/daqd_copy.h``) and one store
  fence per 64 packets.

The loop is compiled here with ``cc -O3`` (as the extension is built) into a
temporary directory; `daqd bench` will carry its own.  Prints each receiver's
throughput and daqd's ratios to spead2 and to the copy, from wall-clock time and
from the process's CPU time (spead2's reader thread included; on a machine shared
with other work the CPU-time ratios move less).  A figure for the README, never a
test.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from daqd import _spead
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.memory import (
    daqd_chunk_stream,
    default_memory_heaps,
    import_spead2,
    spead2_chunk_stream,
    workload_buffer,
)
from daqd.tools.bench.params import HEAPS_PER_CHUNK, MAX_PACKET_SIZE, POOL

ROOT = Path(__file__).resolve().parents[2]

COPY_LOOP = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "daqd_copy.h"

/* Copy the payload of `n` packets of `packet` bytes (header `header` bytes)
   from `buf` to their slots in a pool of `pool` chunks at `dst`. */
void copy_limit(const uint8_t *buf, size_t n, size_t packet, size_t header,
                size_t per_heap, size_t heaps_per_chunk, size_t pool, size_t stride,
                uint8_t *dst)
{
    size_t payload = packet - header, heap_bytes = payload * per_heap, k;
    daqd_copy_init();
    for (k = 0; k < n; k++) {
        size_t heap = k / per_heap, part = k % per_heap;
        size_t chunk = (heap / heaps_per_chunk) % pool;
        uint8_t *to = dst + chunk * stride + (heap % heaps_per_chunk) * heap_bytes
                      + part * payload;
        daqd_copy_nontemporal(to, buf + k * packet + header, payload);
        if (k % 64 == 63)
            daqd_copy_fence();
    }
    daqd_copy_fence();
}
"""


def build_copy_loop(tmp: Path) -> ctypes.CDLL:
    """Compile COPY_LOOP into a shared object in `tmp` and load it."""
    src = tmp / "copy_limit.c"
    src.write_text(COPY_LOOP)
    lib = tmp / "copy_limit.so"
    subprocess.run(["cc", "-O3", "-shared", "-fPIC", "-I", str(ROOT / "cython_ext"),
                    str(src), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    so.copy_limit.argtypes = [ctypes.c_void_p] + [ctypes.c_size_t] * 7 + [ctypes.c_void_p]
    so.copy_limit.restype = None
    return so


class CopyLimit:
    """The copy loop's chunk pool for one workload, pre-touched once."""

    HUGE_PAGE = 2 << 20

    def __init__(self, so: ctypes.CDLL, workload: str, buf: np.ndarray) -> None:
        w = WORKLOADS[workload]
        self.so, self.buf = so, buf
        self.packet = w.packet_size
        self.header = w.packet_size - w.heap_bytes // w.packets_per_heap
        self.per_heap = w.packets_per_heap
        self.n = buf.nbytes // self.packet
        if self.n * self.packet != buf.nbytes:
            raise SystemExit(f"{workload}: the buffer is not whole packets of {self.packet} bytes")
        chunk_bytes = HEAPS_PER_CHUNK * w.heap_bytes
        self.stride = (chunk_bytes + 4095) & ~4095
        raw = np.zeros(POOL * self.stride + self.HUGE_PAGE, np.uint8)
        skip = (-raw.ctypes.data) % self.HUGE_PAGE
        self.pool = raw[skip:skip + POOL * self.stride]
        self.raw = raw
        self.pool.fill(1)

    def run(self) -> tuple[float, float]:
        """Seconds (wall, CPU) for one pass of the copy loop over the whole buffer."""
        start, cpu = time.perf_counter(), time.process_time()
        self.so.copy_limit(self.buf.ctypes.data, self.n, self.packet, self.header,
                           self.per_heap, HEAPS_PER_CHUNK, POOL, self.stride,
                           self.pool.ctypes.data)
        return time.perf_counter() - start, time.process_time() - cpu


def daqd_run(workload: str, buf: np.ndarray) -> tuple[float, float]:
    """Seconds (wall, CPU) of `memory_run_daqd`'s loop: the stream is made untimed."""
    stream = daqd_chunk_stream(workload)
    reader = _spead.ByteStreamReader(buf, max_packet_size=MAX_PACKET_SIZE)
    present = 0
    start, cpu = time.perf_counter(), time.process_time()
    for chunk in stream.chunks(reader):
        present += np.count_nonzero(chunk.present)
        chunk.release()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if present != buf.nbytes // WORKLOADS[workload].packet_size // \
            WORKLOADS[workload].packets_per_heap:
        raise SystemExit(f"{workload}: daqd lost heaps from memory")
    return wall, cpu


def spead2_run(workload: str, buf: np.ndarray) -> tuple[float, float]:
    """Seconds (wall, CPU, its reader thread included) of `memory_run_spead2`'s loop."""
    spead2 = import_spead2()
    stream, data_ring, _pool = spead2_chunk_stream(spead2, workload)
    present = 0
    start, cpu = time.perf_counter(), time.process_time()
    stream.add_buffer_reader(buf)
    for chunk in data_ring:
        present += np.count_nonzero(chunk.present)
        stream.add_free_chunk(chunk)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    stream.stop()
    if present != buf.nbytes // WORKLOADS[workload].packet_size // \
            WORKLOADS[workload].packets_per_heap:
        raise SystemExit(f"{workload}: spead2 lost heaps from memory")
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["W1", "W2", "W3"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--heaps", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        so = build_copy_loop(Path(tmp))
        for workload in args.workloads:
            heaps = args.heaps or default_memory_heaps(workload)
            buf = workload_buffer(workload, heaps)
            limit = CopyLimit(so, workload, buf)
            runners = {
                "daqd": lambda: daqd_run(workload, buf),  # noqa: B023
                "spead2": lambda: spead2_run(workload, buf),  # noqa: B023
                "copy": limit.run,
            }
            for run in runners.values():
                run()               # warm-up, untimed
            times: dict[str, list[float]] = {r: [] for r in runners}
            cpu: dict[str, list[float]] = {r: [] for r in runners}
            for i in range(args.runs):
                order = list(runners)
                order = order[i % 3:] + order[:i % 3]
                for r in order:
                    wall, cpu_seconds = runners[r]()
                    times[r].append(wall)
                    cpu[r].append(cpu_seconds)
            w = WORKLOADS[workload]
            payload = heaps * w.heap_bytes
            packets = heaps * w.packets_per_heap
            for what, samples in (("wall", times), ("cpu", cpu)):
                med = {r: statistics.median(t) for r, t in samples.items()}
                line = ", ".join(f"{r} {payload * 8 / m / 1e9:.1f} Gbit/s "
                                 f"{packets / m / 1e6:.2f} Mpkt/s" for r, m in med.items())
                print(f"{workload} {what} ({buf.nbytes / 2**20:.0f} MiB, median of {args.runs}): "
                      f"{line}; daqd/spead2 {med['spead2'] / med['daqd']:.2f}, "
                      f"daqd/copy {med['copy'] / med['daqd']:.2f}, "
                      f"spead2/copy {med['copy'] / med['spead2']:.2f}", flush=True)


if __name__ == "__main__":
    main()
