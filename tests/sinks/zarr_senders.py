"""Chunk-mode heaps with a substream axis, sent by spead2, and the store they should make.

Heap ``(chunk c, heap h, substream s)`` (``s`` global, the daemon's own
substream item being ``s - offset``) has timestamp ``(c * HPC + h) * STEP``
and a payload computed from ``(c, h, s)`` alone (`payload`), so a test knows
every byte and presence flag the store must hold.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import spead2
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_helpers import daemon_toml, udp_stream_toml

HPC = 8                 # heaps per chunk
STEP = 1024             # timestamp step
HEAP_BYTES = 1024
TIMESTAMP_ITEM = 0x1600
SUBSTREAM_ITEM = 0x4101
PAYLOAD_ITEM = 0x3300
THREAD_POOL = spead2.ThreadPool()


def payload(c: int, h: int, s: int) -> np.ndarray:
    """The bytes of heap (chunk `c`, heap `h`, global substream `s`)."""
    return ((np.arange(HEAP_BYTES) * (2 * s + 1) + 7 * c + 13 * h + 1) % 251).astype(np.uint8)


def send(port: int, chunks: range, substreams: range, offset: int,
         dropped: set[tuple[int, int, int]], *, stop: bool = True, rate: float = 20e6) -> int:
    """Send every heap of `chunks` x heaps x `substreams` but `dropped`, with spead2.

    The substream item is the daemon's own index (global ``s - offset``);
    ends with a stop heap when `stop`.  Returns the heaps sent.
    """
    config = spead2.send.StreamConfig(max_packet_size=9000, rate=rate)
    stream = spead2.send.UdpStream(THREAD_POOL, [("127.0.0.1", port)], config)
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    ig.add_item(TIMESTAMP_ITEM, "timestamp", "", shape=(), format=[("u", 48)])
    ig.add_item(SUBSTREAM_ITEM, "substream", "", shape=(), format=[("u", 48)])
    ig.add_item(PAYLOAD_ITEM, "payload", "", shape=(HEAP_BYTES,), dtype=np.uint8)
    sent = 0
    for c in chunks:
        for h in range(HPC):
            for s in substreams:
                if (c, h, s) in dropped:
                    continue
                ig["timestamp"].value = (c * HPC + h) * STEP
                ig["substream"].value = s - offset
                ig["payload"].value = payload(c, h, s)
                stream.send_heap(ig.get_heap(descriptors="none", data="all"))
                sent += 1
    if stop:
        stream.send_heap(ig.get_end())
    return sent


def expected(chunks: int, substreams_total: int, sent: set[tuple[int, int, int]]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``present`` and ``data`` the store must hold for the heaps `sent`."""
    present = np.zeros((chunks, HPC, substreams_total), np.uint8)
    data = np.zeros((chunks, HPC, substreams_total, HEAP_BYTES), np.uint8)
    for c, h, s in sent:
        present[c, h, s] = 1
        data[c, h, s] = payload(c, h, s)
    return present, data


def zarr_daemon_toml(tmp: Path, store: str, port: int, offset: int, total: int,
                     substreams: int = 2, buffer: str = "", name: str = "zarr-daqd",
                     state: str = "") -> str:
    """A daemon writing substreams ``[offset, offset + substreams)`` of `store`.

    `state`: the directory of its pidfile and control socket (default `tmp`).
    """
    state = state or str(tmp)
    buffer = buffer or """
[stream.buffer]
kind = "fifo"
capacity = 64
flush_count = 4
flush_interval = 0.5
"""
    return daemon_toml(Path(state), name) + udp_stream_toml("adc0", port) + f"""
[stream.chunk]
timestamp_item = {TIMESTAMP_ITEM}
timestamp_step = {STEP}
heaps_per_chunk = {HPC}
heap_bytes = {HEAP_BYTES}
substream_item = {SUBSTREAM_ITEM}
substreams = {substreams}
max_chunks = 2
pool = 16
{buffer}
[[stream.sinks]]
kind = "zarr"
path = "{store}"
substreams_total = {total}
substream_offset = {offset}
"""


def read_store(path: Any) -> dict[str, np.ndarray]:
    """Every array of a daqd Zarr store, read with zarr."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][:] for name in ("data", "present", "timestamp")}
