"""A writer process for test_zarr_growth: records at indexes that keep growing the store.

Usage: ``python zarr_grow_writer.py STORE OFFSET GO_FILE [INDEX ...]``.  Waits
for GO_FILE (so that writers start together), then writes one record per
flush at time indexes `indexes(OFFSET)` (or the INDEXes given) into
substreams ``[OFFSET, OFFSET + 2)`` of STORE, and prints ``records errors
last_error``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from daqd.config import parse
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink

HPC, SUBS, HEAP = 4, 2, 64


def indexes(offset: int) -> list[int]:
    """Time indexes the writer at `offset` writes, in order: past every power of two from
    1024 to 2**17, the second writer a third ahead of the first (so they ask for
    different extents around each power of two)."""
    ahead = 1.0 + offset / 6
    return sorted({int((1.06 ** j + j) * ahead) for j in range(200)})


def value(index: int, offset: int) -> np.ndarray:
    """The data of the record at `index` from the writer at `offset`."""
    return np.full((HPC, SUBS, HEAP), (index * 7 + offset) % 251, np.uint8)


def main() -> None:
    store, offset, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    todo = [int(i) for i in sys.argv[4:]] or indexes(offset)
    text = f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7999"]
[stream.chunk]
timestamp_step = 100
heaps_per_chunk = {HPC}
heap_bytes = {HEAP}
substream_item = 0x4101
substreams = {SUBS}
[[stream.sinks]]
kind = "zarr"
path = "{store}"
substreams_total = 4
substream_offset = {offset}
fsync = "never"
"""
    s = parse(text, host=False).streams[0]
    sink = make_sink(SinkContext.for_stream(s, s.sinks[0]))
    while not os.path.exists(go):
        time.sleep(0.001)
    for index in todo:
        sink.write([ChunkRecord(index, index * 100 * HPC, value(index, offset),
                                np.ones((HPC, SUBS), np.uint8))])
    sink.close()
    stats = sink.stats()
    print(stats["records"], stats["errors"], stats["last_error"])


if __name__ == "__main__":
    main()
