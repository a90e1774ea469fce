"""The layout of a zarr sink's store, from its keys (no Zarr needed: the configuration uses it).

`ZarrLayout` is the global layout a stream's store has, which every daemon
writing it must share, and this daemon's region of it; `daqd.sinks.zarr_store`
creates and checks stores from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The codecs a sink may name (``codec`` key); "" = none.
CODECS = ("", "zstd", "blosc")
#: The keys only zarr sinks have (`daqd.config.SinkConfig`).
ZARR_KEYS = ("substreams_total", "substream_offset", "substream_chunk", "origin", "codec")


@dataclass(frozen=True)
class ZarrLayout:
    """The global layout of a stream's Zarr store, and this daemon's region of it.

    Every field but `substream_offset` and `substreams` must be the same
    for every daemon that writes the store (``daqd_layout`` attribute).
    """

    heaps_per_chunk: int
    substreams_total: int
    substream_chunk: int
    samples: int
    dtype: str
    extra_items: tuple[int, ...]
    timestamp_step: int
    heap_bytes: int
    origin: int
    codec: str
    clock: bool                 # a utc array ([stream.time])
    substream_offset: int = 0
    substreams: int = 1

    @classmethod
    def from_config(cls, sink: Any, chunk: Any, clock: bool = False) -> ZarrLayout:
        """Build from a `SinkConfig` and the stream's `ChunkConfig`."""
        dtype = np.dtype(chunk.dtype)
        total = sink.substreams_total or chunk.substreams
        return cls(
            heaps_per_chunk=chunk.heaps_per_chunk, substreams_total=total,
            substream_chunk=sink.substream_chunk or chunk.substreams,
            samples=chunk.heap_bytes // dtype.itemsize,
            # a record dtype ("i1,i1": complex int8) by its text: .str would lose the fields
            dtype=str(chunk.dtype) if dtype.fields else dtype.str,
            extra_items=tuple(chunk.extra_items), timestamp_step=chunk.timestamp_step,
            heap_bytes=chunk.heap_bytes, origin=sink.origin, codec=sink.codec, clock=clock,
            substream_offset=sink.substream_offset, substreams=chunk.substreams)

    @property
    def chunk_ticks(self) -> int:
        """Ticks one record (one time index) covers."""
        return self.timestamp_step * self.heaps_per_chunk

    @property
    def region(self) -> slice:
        """Return this daemon's substreams in the global substream axis."""
        return slice(self.substream_offset, self.substream_offset + self.substreams)

    def shared(self) -> dict[str, Any]:
        """Return the part every writer must agree on (the ``daqd_layout`` attribute)."""
        out = asdict(self)
        del out["substream_offset"], out["substreams"]
        out["extra_items"] = list(self.extra_items)
        return out

    def index(self, timestamp: int) -> int:
        """Return the time index of a record's timestamp (negative: before origin)."""
        return (int(timestamp) - self.origin) // self.chunk_ticks

    def problem(self) -> tuple[str, str]:
        """Return the key and what is wrong with the region or chunking (("", "") if nothing)."""
        if self.substream_offset + self.substreams > self.substreams_total:
            return "substream_offset", (
                f"substream_offset + substreams ({self.substream_offset} + {self.substreams}) "
                f"at most substreams_total ({self.substreams_total})")
        if self.origin % self.chunk_ticks:
            return "origin", (f"a multiple of timestamp_step x heaps_per_chunk "
                              f"({self.chunk_ticks}), so that each time index is one chunk")
        c = self.substream_chunk
        if self.substreams % c or self.substream_offset % c or self.substreams_total % c:
            return "substream_chunk", (
                f"a substream_chunk ({c}) that divides substreams ({self.substreams}), "
                f"substream_offset ({self.substream_offset}) and substreams_total "
                f"({self.substreams_total}), so no Zarr chunk straddles two daemons")
        return "", ""


def is_local(url: str) -> bool:
    """Whether `url` is a path on this machine (a plain path or ``file://``)."""
    return "://" not in url or url.startswith("file://")


def local_root(url: str) -> str:
    """Return the directory of a local store (`is_local`)."""
    return url.removeprefix("file://")


