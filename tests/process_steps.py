"""Processing steps for the tests (``[stream.process] call = "process_steps:NAME"``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from daqd.pipeline.records import ChunkRecord


class Scale:
    """Each chunk's samples times `factor`, as `dtype` (a new layout: wider samples)."""

    def __init__(self, factor: int = 2, dtype: str = "uint16"):
        self.factor = factor
        self.dtype = np.dtype(dtype)

    def layout(self, chunk: Any) -> Any:
        """Return the layout of samples of `dtype`."""
        samples = chunk.heap_bytes // np.dtype(chunk.dtype).itemsize
        return dataclasses.replace(chunk, dtype=self.dtype.name,
                                   heap_bytes=samples * self.dtype.itemsize)

    def __call__(self, record: ChunkRecord) -> ChunkRecord:
        """Return the scaled copy of `record`."""
        return ChunkRecord(record.chunk_id, record.timestamp,
                           record.data.astype(self.dtype) * self.factor,
                           record.present.copy())


def passthrough(record: ChunkRecord) -> ChunkRecord:
    """Return `record` itself (its chunk is released by the buffer, later)."""
    return record


def wrong_shape(record: ChunkRecord) -> ChunkRecord:
    """Return half of `record`, copied: a record that does not fit the (unchanged) layout."""
    return ChunkRecord(record.chunk_id, record.timestamp, record.data[:1].copy(),
                       record.present[:1].copy())
