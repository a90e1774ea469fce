# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""daqd._spead: the compiled receive core.

Decoding (packet.pxd), counters (stats.pxd), readers (readers.pxi, pcap.pxi,
tcp_server.pxi),
the live-heap window both modes share (window.pxi), heap mode
(heap_stream.pxi), chunk mode (chunk_group.pxi, chunk_stream.pxi), the
reference-workload generator and senders (sim.pxi).  Python sees readers,
streams, heaps, chunks and counter snapshots; packets never become Python
objects on the receive path.
"""

import os

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free, qsort, abort
from libc.string cimport memcpy, memset, memmove

from packet cimport *
from debug cimport DAQD_DEBUG

include "stats.pxd"       # included, not cimported: see its header
include "readers.pxi"
include "window.pxi"
include "heap_stream.pxi"
include "pcap.pxi"
include "sim.pxi"
include "chunk_group.pxi"
include "chunk_stream.pxi"
include "tcp_server.pxi"
include "copy_limit.pxi"    # daqd bench: the machine's limits
include "raw_udp.pxi"


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
