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
include "readers.pxi"
include "heap_stream.pxi"
include "pcap.pxi"
include "sim.pxi"
include "chunk_group.pxi"
include "chunk_stream.pxi"


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
