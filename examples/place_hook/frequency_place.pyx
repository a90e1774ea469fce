# cython: language_level=3, cdivision=True
"""A compiled placement hook for daqd: heaps placed by timestamp and frequency.

An F-engine sends each heap with a timestamp item and a frequency item (the
first channel the heap carries).  The declarative [stream.chunk] layout needs
the substream index as an item of its own; here it is computed from the
frequency instead: substream = (frequency - first_channel) // channels_per_heap,
and heaps whose frequency is not on that grid are rejected, and counted in
the hook's own counter ``off_grid_heaps`` (reported by daqd as
``place_off_grid_heaps``: daqd_place.h, ABI version 2).

Build:  python setup.py build_ext --inplace   (see setup.py beside this file)
Use:
    hook = FrequencyPlacement(timestamp_step=..., heaps_per_chunk=..., ...)
    stream = daqd._spead.ChunkStream(..., place=hook.place, place_items=hook.items,
                                     place_counters=hook.counters)
or, in a daemon's configuration:
    [stream.chunk]
    place = "frequency_place:FrequencyPlacement"
    place_args = {first_channel = 1024, channels_per_heap = 64}
"""

from libc.stdint cimport int64_t, uint64_t
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_SetContext

cdef extern from "daqd_place.h" nogil:
    ctypedef struct daqd_place_data:
        const int64_t *items
        int64_t heap_length
        int64_t chunk_id
        size_t heap_index
        size_t heap_offset
        uint64_t *counters
        size_t n_counters
    const char *DAQD_PLACE_CAPSULE_V2


cdef struct Params:
    int64_t timestamp_step
    int64_t heaps_per_chunk
    int64_t first_channel
    int64_t channels_per_heap
    int64_t substreams
    int64_t heap_bytes


# The hook's own counters, in the order of FrequencyPlacement.counters.
cdef enum:
    OFF_GRID = 0


cdef void place(daqd_place_data *d, void *user) noexcept nogil:
    # Runs in daqd's receive loop without the GIL: C only, no Python objects.
    cdef Params *p = <Params *>user
    cdef int64_t timestamp = d.items[0]
    cdef int64_t channel = d.items[1] - p.first_channel
    if timestamp < 0 or d.items[1] < 0 or d.heap_length != p.heap_bytes:
        return                                  # chunk_id stays -1: rejected
    if timestamp % p.timestamp_step or channel < 0 or channel % p.channels_per_heap:
        d.counters[OFF_GRID] += 1
        return
    cdef int64_t substream = channel // p.channels_per_heap
    if substream >= p.substreams:
        d.counters[OFF_GRID] += 1
        return
    cdef int64_t index = timestamp // p.timestamp_step
    cdef int64_t slot = (index % p.heaps_per_chunk) * p.substreams + substream
    d.chunk_id = index // p.heaps_per_chunk
    d.heap_index = <size_t>slot
    d.heap_offset = <size_t>(slot * p.heap_bytes)


cdef class FrequencyPlacement:
    """Parameters of the hook, and the `place`/`items`/`counters` arguments for ChunkStream."""

    cdef Params params
    cdef readonly tuple place
    cdef readonly list items
    cdef readonly tuple counters

    def __init__(self, *, int64_t timestamp_step, int64_t heaps_per_chunk,
                 int64_t first_channel, int64_t channels_per_heap, int64_t substreams,
                 int64_t heap_bytes, timestamp_item=0x1600, frequency_item=0x4103):
        self.params = Params(timestamp_step, heaps_per_chunk, first_channel,
                             channels_per_heap, substreams, heap_bytes)
        capsule = PyCapsule_New(<void *>place, DAQD_PLACE_CAPSULE_V2, NULL)
        PyCapsule_SetContext(capsule, &self.params)
        # The tuple keeps this object (which owns params) alive with the stream.
        self.place = (capsule, self)
        self.items = [timestamp_item, frequency_item]
        self.counters = ("off_grid_heaps",)
