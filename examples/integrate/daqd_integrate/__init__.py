"""A daqd processing step: integrate (sum) `chunks` consecutive chunks into one record.

``Integrator(chunks=4, dtype="uint32")`` is made once by the daemon from
``[stream.process]`` (``call = "daqd_integrate:Integrator"``, ``options``);
``layout(chunk)`` gives the records' layout, ``__call__(record)`` adds a
chunk (the pool chunk is given back as soon as it returns: the sum is in an
array of the integrator's own) and returns a finished record or None,
``finish()`` the group in progress when the stream ends.  NumPy's ``add``
releases the GIL, so the stream's receive threads are not held up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from daqd.pipeline.records import ChunkRecord

__all__ = ["Integrator"]


class Integrator:
    """Sum each group of `chunks` consecutive chunks (chunk ids ``k*chunks ...``).

    Parameters
    ----------
    chunks : int
        Chunks per integration (at least 1).
    dtype : str
        The sums' dtype (wide enough for `chunks` of the stream's samples).
    """

    def __init__(self, chunks: int = 4, dtype: str = "uint32"):
        if not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks = {chunks!r}: expected an integer >= 1")
        self.chunks = chunks
        self.dtype = np.dtype(dtype)
        self.span = 0                       # ticks of one input chunk (from layout)
        self._sum: np.ndarray | None = None
        self._present: np.ndarray | None = None
        self._group = -1                    # the group being summed (-1: none)
        self._first = 0                     # its first slot's timestamp
        self._count = 0

    def layout(self, chunk: Any) -> Any:
        """Return the records' layout: `chunks` times longer, samples of `dtype`."""
        samples = chunk.heap_bytes // np.dtype(chunk.dtype).itemsize
        self.span = chunk.timestamp_step * chunk.heaps_per_chunk
        return dataclasses.replace(chunk, dtype=self.dtype.name,
                                   heap_bytes=samples * self.dtype.itemsize,
                                   timestamp_step=chunk.timestamp_step * self.chunks,
                                   extra_items=(), packet_presence=0)

    def __call__(self, record: ChunkRecord) -> ChunkRecord | None:
        """Add `record` to its group; return the previous group if this one is another."""
        group = record.chunk_id // self.chunks
        out = None
        if group != self._group:
            out = self.finish()
            self._group = group
            self._sum = np.zeros(record.data.shape, self.dtype)
            self._present = np.ones(record.slots_present.shape, np.uint8)
            self._first = record.timestamp - (record.chunk_id % self.chunks) * self.span
        assert self._sum is not None and self._present is not None
        np.add(self._sum, record.data, out=self._sum, casting="unsafe")
        self._present &= record.slots_present
        self._count += 1
        if self._count == self.chunks:      # then the previous group was finished already
            return self.finish()
        return out

    def finish(self) -> ChunkRecord | None:
        """Return the group in progress as a record (slots present in all of it), or None."""
        if self._sum is None or self._present is None:
            return None
        present = self._present if self._count == self.chunks else \
            np.zeros_like(self._present)
        out = ChunkRecord(chunk_id=self._group, timestamp=self._first, data=self._sum,
                          present=present)
        self._sum = self._present = None
        self._group = -1
        self._count = 0
        return out
