# SPEAD packet decoder, header only (no packet.pyx); cimported by spead.pyx.
#
# Wire format (SPEAD version 4, big-endian throughout):
#   header  64 bits: magic 0x53 | version 4 | item pointer width (bytes,
#           excluding the heap address) | heap address width (bytes) |
#           16 reserved bits | 16-bit number of item pointers
#   item pointers, 64 bits each: 1 immediate bit | item id | address/value
#   payload
# Only SPEAD-64-XX flavours exist in the wild and only they are decoded: the
# two widths must add to 8 bytes, and neither may be zero (XX = 8 .. 56; 40
# and 48 are the common ones).  This is exactly spead2's decode_packet.
#
# decode_packet() returns a DecodeStatus.  DECODE_OK means the PacketHeader is
# filled in and `size` bytes starting at `data` form the packet; any other
# value names the reason the packet is unusable, and the caller counts it
# under the matching STAT_PACKETS_REJECTED_* counter (decode_status_stat, in
# window.pxi).  With DECODE_PAYLOAD_LENGTH and DECODE_PAYLOAD_OUTSIDE_HEAP,
# `size` alone is set: the size the header declares; with DECODE_MISSING_ITEMS
# too when PAYLOAD_LENGTH is there (else 0).  A byte stream skips such a packet whole
# by it, as spead2's TCP reader does, rather than searching its payload.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "daqd_endian.h" nogil:
    uint64_t load_be64(const void *p)
    uint32_t load_be32(const void *p)
    uint16_t load_be16(const void *p)
    uint32_t load_le32(const void *p)
    void store_be64(void *p, uint64_t v)
    void store_be16(void *p, uint16_t v)
    void store_le32(void *p, uint32_t v)
    void store_le16(void *p, uint16_t v)

cdef extern from *:
    int count_trailing_zeros "__builtin_ctzll"(unsigned long long x) noexcept nogil
    # A hint (prefetcht0): never faults, whatever the address.
    void cache_prefetch "__builtin_prefetch"(const void *p) noexcept nogil

cdef enum:
    SPEAD_MAGIC = 0x53
    SPEAD_VERSION = 4
    HEAP_CNT_ID = 1
    HEAP_LENGTH_ID = 2
    PAYLOAD_OFFSET_ID = 3
    PAYLOAD_LENGTH_ID = 4
    DESCRIPTOR_ID = 5
    STREAM_CTRL_ID = 6
    CTRL_STREAM_START = 0
    CTRL_DESCRIPTOR_REISSUE = 1
    CTRL_STREAM_STOP = 2
    CTRL_DESCRIPTOR_UPDATE = 3

# WARNING: stats.pxd lists the STAT_PACKETS_REJECTED_* counters of these reasons in
# this order (decode_status_stat maps one to the other by position).
cdef enum DecodeStatus:
    DECODE_OK = 0
    DECODE_TOO_SHORT            # fewer than 8 bytes
    DECODE_BAD_MAGIC
    DECODE_BAD_VERSION
    DECODE_BAD_FLAVOUR
    DECODE_ITEMS_OVERFLOW       # item pointers extend past the available bytes
    DECODE_MISSING_ITEMS        # HEAP_CNT, HEAP_OFFSET or PAYLOAD_LENGTH absent
    DECODE_PAYLOAD_LENGTH       # header + pointers + payload > available bytes
    DECODE_PAYLOAD_OUTSIDE_HEAP  # offset + length > HEAP_SIZE

cdef struct PacketHeader:
    int64_t heap_cnt            # HEAP_CNT
    int64_t heap_length         # HEAP_SIZE, -1 when the packet does not carry it
    int64_t payload_offset      # HEAP_OFFSET
    int64_t payload_length      # PAYLOAD_LENGTH
    int n_items                 # item pointers in the packet
    int heap_address_bits       # XX of SPEAD-64-XX
    const uint8_t *pointers     # first item pointer (big-endian, unaligned)
    const uint8_t *payload      # first payload byte
    size_t size                 # bytes of the whole packet
    int64_t max_address         # largest address of an addressed item (-1: none)
    bint stream_stop            # an immediate STREAM_CTRL item says CTRL_STREAM_STOP
    # bit i: pointer i is immediate and none of HEAP_CNT, HEAP_SIZE, HEAP_OFFSET,
    # PAYLOAD_LENGTH (0 when there are over 64 pointers)
    uint64_t other_immediates


cdef inline bint ptr_is_immediate(uint64_t p) noexcept nogil:
    return (p >> 63) != 0


cdef inline uint64_t ptr_id(uint64_t p, int address_bits) noexcept nogil:
    return (p & 0x7FFFFFFFFFFFFFFFULL) >> address_bits


cdef inline uint64_t ptr_value(uint64_t p, int address_bits) noexcept nogil:
    return p & ((1ULL << address_bits) - 1)


cdef inline DecodeStatus decode_header_flavour(
    const uint8_t *data, size_t max_size, int *address_bits
) noexcept nogil:
    """Check the 8-byte header; on success store the heap address width."""
    if max_size < 8:
        return DECODE_TOO_SHORT
    if data[0] != SPEAD_MAGIC:
        return DECODE_BAD_MAGIC
    if data[1] != SPEAD_VERSION:
        return DECODE_BAD_VERSION
    cdef int id_bits = data[2] * 8
    cdef int addr_bits = data[3] * 8
    if id_bits == 0 or addr_bits == 0 or id_bits + addr_bits != 64:
        return DECODE_BAD_FLAVOUR
    address_bits[0] = addr_bits
    return DECODE_OK


cdef inline DecodeStatus decode_packet(
    const uint8_t *data, size_t max_size, PacketHeader *out
) noexcept nogil:
    """Decode one packet from at most `max_size` bytes at `data` (spead2 rules)."""
    cdef int address_bits = 0
    cdef DecodeStatus status = decode_header_flavour(data, max_size, &address_bits)
    if status != DECODE_OK:
        return status
    cdef int n_items = load_be16(data + 6)
    if <size_t>n_items * 8 + 8 > max_size:
        return DECODE_ITEMS_OVERFLOW
    # The four packet-structure items by id - 1 (HEAP_CNT, HEAP_SIZE,
    # HEAP_OFFSET, PAYLOAD_LENGTH), -1 while absent: one bounds test and a
    # store per pointer, not a chain of compares.
    cdef int64_t fields[4]
    fields[0] = fields[1] = fields[2] = fields[3] = -1
    cdef int64_t max_address = -1, value
    cdef bint stream_stop = False
    cdef uint64_t other_immediates = 0
    cdef uint64_t p, item_id
    cdef uint64_t value_mask = (1ULL << address_bits) - 1
    cdef int i
    # One pass over the pointers gathers everything a stream needs of them
    # besides the items a chunk placement asks for (chunk_stream.pxi reads
    # those on a heap's first packet): no other pass on later packets.
    for i in range(n_items):
        p = load_be64(data + 8 + 8 * i)
        value = <int64_t>(p & value_mask)
        if p >> 63:
            item_id = (p & 0x7FFFFFFFFFFFFFFFULL) >> address_bits
            if item_id - HEAP_CNT_ID < 4:
                fields[item_id - HEAP_CNT_ID] = value
            else:
                other_immediates |= 1ULL << (i & 63)     # meaningless past 64: see below
                if item_id == STREAM_CTRL_ID and value == CTRL_STREAM_STOP:
                    stream_stop = True
        elif value > max_address:
            max_address = value
    cdef int64_t heap_cnt = fields[0]
    cdef int64_t heap_length = fields[1]
    cdef int64_t payload_offset = fields[2]
    cdef int64_t payload_length = fields[3]
    cdef uint64_t size = <uint64_t>payload_length + <uint64_t>n_items * 8 + 8
    if heap_cnt == -1 or payload_offset == -1 or payload_length == -1:
        # The size is known (for a byte stream to skip the packet whole)
        # when PAYLOAD_LENGTH is there.
        out.size = <size_t>size if payload_length != -1 else 0
        return DECODE_MISSING_ITEMS
    out.size = <size_t>size
    if size > max_size:
        return DECODE_PAYLOAD_LENGTH
    if heap_length >= 0 and payload_offset + payload_length > heap_length:
        return DECODE_PAYLOAD_OUTSIDE_HEAP
    out.heap_cnt = heap_cnt
    out.heap_length = heap_length
    out.payload_offset = payload_offset
    out.payload_length = payload_length
    out.n_items = n_items
    out.heap_address_bits = address_bits
    out.pointers = data + 8
    out.payload = data + 8 + 8 * <size_t>n_items
    out.size = <size_t>size
    out.max_address = max_address
    out.stream_stop = stream_stop
    out.other_immediates = other_immediates if n_items <= 64 else 0
    return DECODE_OK
