# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""daqd._spead2compat: daqd's declarative chunk layout as a spead2 place callback.

Used by the tests and the benchmarks only (never by the daemon), so that
spead2's ChunkRingStream runs on exactly the placement a ChunkStream with the
same arguments uses.  A module of its own so that daqd._spead, the daemon's
core, holds nothing that exists only for spead2.
"""

from libc.stdint cimport uint8_t, uint64_t, int64_t
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_SetContext

from packet cimport HEAP_LENGTH_ID


cdef struct Spead2PlaceData:     # spead2::recv::chunk_place_data (4.x)
    const uint8_t *packet
    size_t packet_size
    const int64_t *items
    int64_t chunk_id
    size_t heap_index
    size_t heap_offset
    uint64_t *batch_stats
    uint8_t *extra
    size_t extra_offset
    size_t extra_size


cdef struct Spead2Layout:
    uint64_t step
    size_t heaps_per_chunk
    size_t substreams
    size_t heap_bytes
    size_t packets_per_heap
    bint has_substream
    size_t n_extra


cdef void spead2_place_layout(void *data, size_t size, void *user) noexcept nogil:
    # items: [HEAP_SIZE, timestamp, substream?, extras...]
    cdef Spead2PlaceData *pd = <Spead2PlaceData *>data
    cdef Spead2Layout *lay = <Spead2Layout *>user
    cdef const int64_t *items = pd.items
    cdef size_t first_extra = 3 if lay.has_substream else 2
    cdef int64_t substream = 0
    cdef uint64_t index
    cdef size_t slot, i
    if items[0] != <int64_t>lay.heap_bytes or items[1] < 0 or <uint64_t>items[1] % lay.step:
        return
    if lay.has_substream:
        substream = items[2]
        if substream < 0 or <uint64_t>substream >= lay.substreams:
            return
    index = <uint64_t>items[1] // lay.step
    slot = <size_t>(index % lay.heaps_per_chunk) * lay.substreams + <size_t>substream
    pd.chunk_id = <int64_t>(index // lay.heaps_per_chunk)
    pd.heap_index = slot * lay.packets_per_heap
    pd.heap_offset = slot * lay.heap_bytes
    if lay.n_extra:
        pd.extra_offset = slot * lay.n_extra * 8
        pd.extra_size = lay.n_extra * 8
        for i in range(lay.n_extra):
            (<uint64_t *>pd.extra)[i] = <uint64_t>items[first_extra + i]


cdef class Spead2Placement:
    """The declarative chunk layout as a spead2 place callback.

    ``ChunkStreamConfig(items=p.items, place=p.place, max_heap_extra=p.max_heap_extra)``
    gives spead2 the placement a ChunkStream with the same arguments uses.
    """

    cdef Spead2Layout layout
    cdef readonly list items
    cdef readonly object place
    cdef readonly size_t max_heap_extra

    def __init__(self, *, uint64_t timestamp_item=0x1600, uint64_t timestamp_step=8192,
                 size_t heaps_per_chunk=64, size_t heap_bytes=8192, substream_item=None,
                 size_t substreams=1, extra_items=(), size_t packet_presence=0):
        self.layout.step = timestamp_step
        self.layout.heaps_per_chunk = heaps_per_chunk
        self.layout.substreams = substreams
        self.layout.heap_bytes = heap_bytes
        self.layout.packets_per_heap = heap_bytes // packet_presence if packet_presence else 1
        self.layout.has_substream = substream_item is not None
        self.layout.n_extra = len(extra_items)
        self.items = [HEAP_LENGTH_ID, timestamp_item]
        if substream_item is not None:
            self.items.append(substream_item)
        self.items += [int(x) for x in extra_items]
        self.max_heap_extra = 8 * len(extra_items)
        capsule = PyCapsule_New(<void *>spead2_place_layout, b"void (void *, size_t, void *)",
                                NULL)
        PyCapsule_SetContext(capsule, &self.layout)
        self.place = (capsule, self)
