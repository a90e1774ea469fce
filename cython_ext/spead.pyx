# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""daqd._spead: the compiled receive core.

Decoding (packet.pxd), heap assembly (assembly.pxi), readers (readers.pxi,
pcap.pxi), the reference-workload generator and senders (sim.pxi).  Python
sees readers, streams, heaps and counter snapshots; packets never become
Python objects on the receive path.
"""

import os

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset

from packet cimport *
from debug cimport DAQD_DEBUG

include "stats.pxd"       # included, not cimported: see its header


cdef inline StatIndex decode_status_stat(DecodeStatus status) noexcept nogil:
    """The STAT_PACKETS_REJECTED_* counter for a failed decode."""
    if status == DECODE_TOO_SHORT:
        return STAT_PACKETS_REJECTED_TOO_SHORT
    elif status == DECODE_BAD_MAGIC:
        return STAT_PACKETS_REJECTED_BAD_MAGIC
    elif status == DECODE_BAD_VERSION:
        return STAT_PACKETS_REJECTED_BAD_VERSION
    elif status == DECODE_BAD_FLAVOUR:
        return STAT_PACKETS_REJECTED_BAD_FLAVOUR
    elif status == DECODE_ITEMS_OVERFLOW:
        return STAT_PACKETS_REJECTED_ITEMS_OVERFLOW
    elif status == DECODE_MISSING_ITEMS:
        return STAT_PACKETS_REJECTED_MISSING_ITEMS
    elif status == DECODE_PAYLOAD_LENGTH:
        return STAT_PACKETS_REJECTED_PAYLOAD_LENGTH
    return STAT_PACKETS_REJECTED_PAYLOAD_OUTSIDE_HEAP


include "assembly.pxi"
include "heaps.pxi"
include "readers.pxi"
include "pcap.pxi"
include "sim.pxi"
include "chunks.pxi"


#: Every counter's name, in StatIndex order: the member names of stats.pxd's
#: enum without "STAT_", lowercased.
STAT_NAMES = tuple(s.name[5:].lower() for s in StatIndex if s != N_STATS)
#: Counters whose mode is "maximum" rather than a running sum.
STAT_MAXIMA = frozenset(STAT_NAMES[i] for i in range(<int>N_STATS) if stat_is_maximum(i))


cdef dict _stats_dict(const uint64_t *stats):
    cdef int i
    return {STAT_NAMES[i]: stats[i] for i in range(<int>N_STATS)}


cdef inline void merge_stats(uint64_t *into, const uint64_t *batch) noexcept nogil:
    cdef int i
    for i in range(<int>N_STATS):
        if stat_is_maximum(i):
            if batch[i] > into[i]:
                into[i] = batch[i]
        else:
            into[i] += batch[i]


def decode_packet_header(const uint8_t[::1] data):
    """Decode one packet header (a test hook for the nogil decoder).

    Returns
    -------
    dict or str
        The decoded fields, or the name of the counter the packet would be
        rejected under.
    """
    cdef PacketHeader hdr
    cdef size_t size = data.shape[0]
    cdef const uint8_t *ptr = &data[0] if size else <const uint8_t *>""
    cdef DecodeStatus status = decode_packet(ptr, size, &hdr)
    if status != DECODE_OK:
        return STAT_NAMES[<int>decode_status_stat(status)]
    return {
        "heap_cnt": hdr.heap_cnt,
        "heap_length": hdr.heap_length,
        "payload_offset": hdr.payload_offset,
        "payload_length": hdr.payload_length,
        "n_items": hdr.n_items,
        "heap_address_bits": hdr.heap_address_bits,
        "size": hdr.size,
    }


cdef class HeapStream:
    """Heap-mode receive stream: packets from readers assembled into heaps.

    Parameters
    ----------
    max_heaps : int
        Partial heaps alive at once; a packet of a new heap evicts the oldest.
    allow_out_of_order : bool
        Accept a heap's packets in any order (costs a range set per heap).
    max_heap_size : int
        Larger heaps are rejected before anything is allocated for them.
    stop_on_stop_item : bool
        A complete heap with a stream-control stop item ends the stream.
    """

    cdef Assembler a
    cdef uint64_t counters[<int>N_STATS]
    cdef readonly size_t max_heaps
    cdef readonly bint allow_out_of_order
    cdef readonly int64_t max_heap_size
    cdef readonly bint stop_on_stop_item

    def __cinit__(self, size_t max_heaps=4, bint allow_out_of_order=False,
                  int64_t max_heap_size=128 << 20, bint stop_on_stop_item=True):
        if max_heaps < 1:
            raise ValueError("max_heaps must be at least 1")
        if max_heap_size < 0:
            raise ValueError("max_heap_size must be >= 0")
        assembler_init(&self.a, max_heaps, max_heap_size, allow_out_of_order,
                       stop_on_stop_item)
        memset(self.counters, 0, sizeof(self.counters))
        self.max_heaps = max_heaps
        self.allow_out_of_order = allow_out_of_order
        self.max_heap_size = max_heap_size
        self.stop_on_stop_item = stop_on_stop_item

    def __dealloc__(self):
        assembler_free(&self.a)

    @property
    def stopped(self):
        """Whether a stop item has ended the stream."""
        return self.a.stopped

    def process(self, Reader reader):
        """Receive and assemble one batch from `reader` (GIL released throughout).

        Returns
        -------
        int
            Packets consumed (>= 0), or -1 once the reader has ended.

        Raises
        ------
        OSError
            The reader's system call failed.
        """
        cdef uint64_t local[<int>N_STATS]
        cdef int rc = 1
        cdef size_t used = 0
        memset(local, 0, sizeof(local))
        with nogil:
            if reader.pos >= reader.n:
                rc = reader.fill(local)
                if rc > 0:
                    local[<int>STAT_BATCHES] += 1
                    local[<int>STAT_MAX_BATCH] = reader.n
                    if reader.tap_buf != NULL:
                        reader.tap_batch(local)
            if reader.pos < reader.n:
                used = assembler_add_batch(&self.a, reader.pkt_data + reader.pos,
                                           reader.pkt_len + reader.pos,
                                           reader.n - reader.pos, local)
                reader.pos += used
            merge_stats(self.counters, local)
        if rc == READ_ERROR:
            raise OSError(reader.errno_value, os.strerror(reader.errno_value))
        if rc == READ_EOF and reader.pos >= reader.n:
            return -1
        return <int>used

    def pop_ready(self):
        """Heaps that have left assembly since the last call, in order."""
        cdef list out = []
        cdef size_t i
        try:
            for i in range(self.a.n_ready):
                out.append(heap_from_live(&self.a.ready[i]))
        finally:
            for i in range(self.a.n_ready):
                release_storage(&self.a, self.a.ready[i].st)
            self.a.n_ready = 0
        return out

    def flush(self):
        """End assembly: every live heap leaves, oldest first; returns all ready heaps."""
        out = self.pop_ready()
        assembler_flush(&self.a, self.counters)
        out.extend(self.pop_ready())
        return out

    def add_packets(self, packets):
        """Assemble packets given as bytes objects; returns the heaps that left."""
        return self.run(ByteListReader(packets))

    def run(self, Reader reader, bint flush=True):
        """Process `reader` to its end (or a stop item); returns the heaps, in order."""
        cdef list out = []
        while self.process(reader) >= 0:
            out.extend(self.pop_ready())
            if self.a.stopped:
                break
        if flush:
            out.extend(self.flush())
        else:
            out.extend(self.pop_ready())
        return out

    def stats(self):
        """A snapshot of the counters, name -> value."""
        return _stats_dict(self.counters)


cdef class ByteListReader(Reader):
    """Packets from a list of bytes objects, delivered as one batch."""

    cdef list packets
    cdef size_t count

    def __init__(self, packets):
        self.packets = [bytes(p) for p in packets]
        self.count = len(self.packets)
        self.alloc_batch(self.count if self.count > 0 else 1)
        self.finite = True
        cdef size_t i
        for i in range(self.count):
            self.pkt_data[i] = <const uint8_t *>(<bytes>self.packets[i])
            self.pkt_len[i] = len(<bytes>self.packets[i])

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        self.pos = 0
        self.n = 0
        if self.eof or self.count == 0:
            self.eof = True
            return READ_EOF
        self.eof = True
        self.n = self.count
        return <int>self.n
