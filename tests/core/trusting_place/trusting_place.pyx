# cython: language_level=3
"""A buggy placement hook (tests only): it trusts the packet for slot and offset.

It places each heap where three immediate items of its first packet say:
chunk = TS // step, heap_index = the SLOT item, heap_offset = the OFFSET item,
with no check of its own, as a hook with an off-by-one or a forgotten bound
would.  daqd's check of the outputs against the chunk's shape is then all
that keeps the write inside the chunk (chunk_heaps_rejected_placement).
"""

from libc.stdint cimport int64_t
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_SetContext

cdef extern from "daqd_place.h" nogil:
    ctypedef struct daqd_place_data:
        const int64_t *items
        int64_t chunk_id
        size_t heap_index
        size_t heap_offset
    const char *DAQD_PLACE_CAPSULE


cdef struct Params:
    int64_t timestamp_step


cdef void place(daqd_place_data *d, void *user) noexcept nogil:
    cdef Params *p = <Params *>user
    d.chunk_id = d.items[0] // p.timestamp_step
    d.heap_index = <size_t>d.items[1]
    d.heap_offset = <size_t>d.items[2]


cdef class TrustingPlacement:
    """`place`/`items` arguments for ChunkStream (items: timestamp, slot, offset)."""

    cdef Params params
    cdef readonly tuple place
    cdef readonly list items

    def __init__(self, int64_t timestamp_step, timestamp_item, slot_item, offset_item):
        self.params.timestamp_step = timestamp_step
        capsule = PyCapsule_New(<void *>place, DAQD_PLACE_CAPSULE, NULL)
        PyCapsule_SetContext(capsule, &self.params)
        self.place = (capsule, self)
        self.items = [timestamp_item, slot_item, offset_item]
