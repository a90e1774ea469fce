# Heap assembly (heap mode): packets -> live heaps -> ready heaps.
#
# Mirrors spead2's stream_base/live_heap rules (recv_stream.cpp,
# recv_live_heap.cpp, 4.5.1) so that daqd and spead2 yield the same heaps:
# - a window of `max_heaps` live heaps in a ring; a packet of an unknown heap
#   takes the next slot, evicting whatever heap was there;
# - in-order mode accepts a packet only at the offset where the heap's received
#   bytes end, and starts a heap only from a packet at offset 0 (so a heap with
#   a lost packet stays incomplete, and a late packet of a finished heap does
#   not resurrect it); allow_out_of_order keeps a sorted set of received ranges
#   and rejects overlaps;
# - a heap is complete when received == HEAP_SIZE == min_length (the largest
#   offset or item address seen), and is delivered with its items when it is
#   contiguous (received == min_length) even if HEAP_SIZE never arrived;
# - a complete heap carrying a stream-control stop item ends the stream and is
#   not delivered (stop_on_stop_item).
# Unlike spead2, nothing is allocated for a packet whose heap would be larger
# than max_heap_size: it is counted and dropped first.
#
# Storage (payload, pointer list, range set) lives in HeapStorage blocks that
# are reused: a live slot takes one from the free stack, a ready heap keeps it
# until Python has converted the heap, then it goes back.

from libc.stdlib cimport malloc, realloc, free, qsort, abort
from libc.string cimport memcpy, memset, memmove

cdef enum:
    READY_COMPLETE = 0
    READY_EVICTED = 1
    READY_FLUSHED = 2
    # Pointers kept in a plain array are deduplicated by linear search up to
    # this many; beyond it a hash set takes over (spead2 does the same).
    INLINE_POINTERS = 16
    # Room for the ready heaps one round of packets can produce.
    READY_ROUND = 64


cdef struct HeapStorage:
    uint8_t *payload
    size_t payload_cap
    uint64_t *pointers          # item pointers other than the packet-structure ones
    size_t n_pointers
    size_t pointers_cap
    uint64_t *seen              # open-addressing hash set (0 = empty slot)
    size_t seen_cap             # power of two, 0 while unused
    bint seen_zero              # the all-zero pointer is in the set
    int64_t *ranges             # sorted [first, last) pairs, out-of-order mode
    size_t n_ranges
    size_t ranges_cap


cdef struct LiveHeap:
    int64_t cnt                 # -1: slot is empty
    int64_t heap_length         # -1 until a packet carries HEAP_SIZE
    int64_t received_length
    int64_t min_length
    int64_t last_offset         # offset of the last accepted packet
    int heap_address_bits
    int n_packets
    int reason                  # READY_* once the heap has left the window
    bint end_of_stream
    HeapStorage *st


cdef void storage_reset(HeapStorage *st) noexcept nogil:
    st.n_pointers = 0
    st.n_ranges = 0
    st.seen_zero = False
    if st.seen_cap:
        free(st.seen)
        st.seen = NULL
        st.seen_cap = 0
    # Keep the usual sizes for reuse, give back anything unusually large.
    if st.payload_cap > (1 << 22):
        free(st.payload)
        st.payload = NULL
        st.payload_cap = 0
    if st.pointers_cap > 4096:
        free(st.pointers)
        st.pointers = NULL
        st.pointers_cap = 0
    if st.ranges_cap > 4096:
        free(st.ranges)
        st.ranges = NULL
        st.ranges_cap = 0


cdef void storage_free(HeapStorage *st) noexcept nogil:
    free(st.payload)
    free(st.pointers)
    free(st.seen)
    free(st.ranges)
    memset(st, 0, sizeof(HeapStorage))


cdef bint grow(void **ptr, size_t *cap, size_t need, size_t elem, bint exact) noexcept nogil:
    """Make room for `need` elements; False when memory is exhausted."""
    if need <= cap[0]:
        return True
    cdef size_t new_cap = need
    if not exact and new_cap < 2 * cap[0]:
        new_cap = 2 * cap[0]
    cdef void *p = realloc(ptr[0], new_cap * elem)
    if p == NULL:
        return False
    ptr[0] = p
    cap[0] = new_cap
    return True


cdef inline size_t hash_pointer(uint64_t p) noexcept nogil:
    p ^= p >> 33
    p *= 0xff51afd7ed558ccdULL
    p ^= p >> 33
    return <size_t>p


cdef bint seen_insert(HeapStorage *st, uint64_t p) noexcept nogil:
    """Insert into the hash set; the caller has made room (load <= 1/2)."""
    if p == 0:
        st.seen_zero = True
        return True
    cdef size_t mask = st.seen_cap - 1
    cdef size_t i = hash_pointer(p) & mask
    while st.seen[i] != 0:
        if st.seen[i] == p:
            return False
        i = (i + 1) & mask
    st.seen[i] = p
    return True


cdef bint seen_rebuild(HeapStorage *st, size_t want) noexcept nogil:
    """Rebuild the hash set from the pointer array with room for `want`."""
    cdef size_t cap = 64
    while cap < 2 * want:
        cap *= 2
    cdef uint64_t *table = <uint64_t *>malloc(cap * sizeof(uint64_t))
    if table == NULL:
        return False
    memset(table, 0, cap * sizeof(uint64_t))
    free(st.seen)
    st.seen = table
    st.seen_cap = cap
    st.seen_zero = False
    cdef size_t i
    for i in range(st.n_pointers):
        seen_insert(st, st.pointers[i])
    return True


cdef int add_payload_range(HeapStorage *st, int64_t first, int64_t last) noexcept nogil:
    """Record [first, last) in the sorted range set (spead2's add_payload_range).

    Returns 1 when added, 0 for a duplicate or overlap, -1 when out of memory.
    """
    # next = first range whose start is > first
    cdef size_t lo = 0, hi = st.n_ranges, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if st.ranges[2 * mid] > first:
            hi = mid
        else:
            lo = mid + 1
    cdef size_t nxt = lo
    cdef size_t pos
    if nxt < st.n_ranges and st.ranges[2 * nxt] < last:
        return 0                            # partial overlap with the next range
    if nxt == 0 or st.ranges[2 * (nxt - 1) + 1] < first:
        # disjoint from the previous range: insert a new one at nxt
        if not grow(<void **>&st.ranges, &st.ranges_cap, 2 * (st.n_ranges + 1),
                    sizeof(int64_t), False):
            return -1
        memmove(&st.ranges[2 * (nxt + 1)], &st.ranges[2 * nxt],
                (st.n_ranges - nxt) * 2 * sizeof(int64_t))
        st.ranges[2 * nxt] = first
        st.ranges[2 * nxt + 1] = last
        st.n_ranges += 1
        pos = nxt
        nxt += 1
    elif st.ranges[2 * (nxt - 1) + 1] == first:
        st.ranges[2 * (nxt - 1) + 1] = last  # extends the previous range
        pos = nxt - 1
    else:
        return 0                            # starts inside the previous range
    if nxt < st.n_ranges and st.ranges[2 * nxt] == last:
        st.ranges[2 * pos + 1] = st.ranges[2 * nxt + 1]
        memmove(&st.ranges[2 * nxt], &st.ranges[2 * (nxt + 1)],
                (st.n_ranges - nxt - 1) * 2 * sizeof(int64_t))
        st.n_ranges -= 1
    return 1


cdef struct Assembler:
    # configuration
    size_t max_heaps
    size_t ready_cap
    int64_t max_heap_size
    bint allow_out_of_order
    bint stop_on_stop_item
    # state
    bint stopped
    size_t head
    LiveHeap *live              # max_heaps slots
    LiveHeap *ready             # ready_cap heaps waiting for Python
    size_t n_ready
    HeapStorage *storage        # max_heaps + ready_cap blocks
    HeapStorage **free_storage  # stack of unused blocks
    size_t n_free


cdef int assembler_init(Assembler *a, size_t max_heaps, int64_t max_heap_size,
                        bint allow_out_of_order, bint stop_on_stop_item) except -1:
    memset(a, 0, sizeof(Assembler))
    a.max_heaps = max_heaps
    a.ready_cap = max_heaps + READY_ROUND
    a.max_heap_size = max_heap_size
    a.allow_out_of_order = allow_out_of_order
    a.stop_on_stop_item = stop_on_stop_item
    cdef size_t n_storage = a.max_heaps + a.ready_cap
    a.live = <LiveHeap *>malloc(max_heaps * sizeof(LiveHeap))
    a.ready = <LiveHeap *>malloc(a.ready_cap * sizeof(LiveHeap))
    a.storage = <HeapStorage *>malloc(n_storage * sizeof(HeapStorage))
    a.free_storage = <HeapStorage **>malloc(n_storage * sizeof(HeapStorage *))
    if a.live == NULL or a.ready == NULL or a.storage == NULL or a.free_storage == NULL:
        assembler_free(a)
        raise MemoryError()
    memset(a.storage, 0, n_storage * sizeof(HeapStorage))
    cdef size_t i
    for i in range(max_heaps):
        a.live[i].cnt = -1
    for i in range(n_storage):
        a.free_storage[i] = &a.storage[i]
    a.n_free = n_storage
    a.head = max_heaps - 1
    return 0


cdef void assembler_free(Assembler *a) noexcept nogil:
    cdef size_t i
    if a.storage != NULL:
        for i in range(a.max_heaps + a.ready_cap):
            storage_free(&a.storage[i])
    free(a.live)
    free(a.ready)
    free(a.storage)
    free(a.free_storage)
    a.live = NULL
    a.ready = NULL
    a.storage = NULL
    a.free_storage = NULL


cdef inline bint assembler_has_room(Assembler *a) noexcept nogil:
    """Whether one more packet (and a possible stop-flush) fits in the ready list."""
    return a.n_ready + 2 + a.max_heaps <= a.ready_cap


cdef void heap_to_ready(Assembler *a, LiveHeap *h, int reason, uint64_t *stats) noexcept nogil:
    if DAQD_DEBUG and a.n_ready >= a.ready_cap:
        abort()                 # assembler_has_room() must prevent this
    h.reason = reason
    stats[<int>STAT_HEAPS] += 1
    if reason == READY_COMPLETE:
        stats[<int>STAT_HEAPS_COMPLETE] += 1
    elif reason == READY_EVICTED:
        stats[<int>STAT_INCOMPLETE_HEAPS_EVICTED] += 1
    else:
        stats[<int>STAT_INCOMPLETE_HEAPS_FLUSHED] += 1
    a.ready[a.n_ready] = h[0]
    a.n_ready += 1
    h.cnt = -1
    h.st = NULL


cdef void release_storage(Assembler *a, HeapStorage *st) noexcept nogil:
    storage_reset(st)
    a.free_storage[a.n_free] = st
    a.n_free += 1


cdef void assembler_flush(Assembler *a, uint64_t *stats) noexcept nogil:
    """Move every live heap, oldest first, to the ready list (spead2 flush)."""
    cdef size_t i
    for i in range(a.max_heaps):
        a.head += 1
        if a.head == a.max_heaps:
            a.head = 0
        if a.live[a.head].cnt != -1:
            heap_to_ready(a, &a.live[a.head], READY_FLUSHED, stats)


cdef bint packet_too_large(Assembler *a, const PacketHeader *p) noexcept nogil:
    """Would this packet make its heap larger than max_heap_size?"""
    if p.heap_length > a.max_heap_size:
        return True
    if p.payload_offset + p.payload_length > a.max_heap_size:
        return True
    cdef int i
    cdef uint64_t ptr
    for i in range(p.n_items):
        ptr = load_be64(p.pointers + 8 * i)
        if not ptr_is_immediate(ptr) and \
                <int64_t>ptr_value(ptr, p.heap_address_bits) > a.max_heap_size:
            return True
    return False


cdef StatIndex live_heap_add_pointers(
    Assembler *a, LiveHeap *h, const PacketHeader *p
) noexcept nogil:
    cdef HeapStorage *st = h.st
    cdef int i
    cdef size_t j
    cdef uint64_t ptr, item_id
    cdef bint seen
    cdef int bits = h.heap_address_bits
    for i in range(p.n_items):
        ptr = load_be64(p.pointers + 8 * i)
        if not ptr_is_immediate(ptr):
            if <int64_t>ptr_value(ptr, bits) > h.min_length:
                h.min_length = <int64_t>ptr_value(ptr, bits)
        item_id = ptr_id(ptr, bits)
        if item_id != 0 and item_id <= PAYLOAD_LENGTH_ID:
            continue
        # NULL items stay: as addressed items they can end the previous item.
        if st.seen_cap == 0:
            seen = False
            for j in range(st.n_pointers):
                if st.pointers[j] == ptr:
                    seen = True
                    break
            if seen:
                continue
        if not grow(<void **>&st.pointers, &st.pointers_cap, st.n_pointers + 1,
                    sizeof(uint64_t), False):
            return STAT_PACKETS_REJECTED_NO_MEMORY
        if st.seen_cap == 0 and st.n_pointers >= INLINE_POINTERS:
            if not seen_rebuild(st, st.n_pointers + 1):
                return STAT_PACKETS_REJECTED_NO_MEMORY
        if st.seen_cap != 0:
            if 2 * (st.n_pointers + 1) > st.seen_cap:
                if not seen_rebuild(st, st.n_pointers + 1):
                    return STAT_PACKETS_REJECTED_NO_MEMORY
            if not seen_insert(st, ptr):
                continue
        st.pointers[st.n_pointers] = ptr
        st.n_pointers += 1
        if item_id == STREAM_CTRL_ID and ptr_is_immediate(ptr) \
                and ptr_value(ptr, bits) == CTRL_STREAM_STOP:
            h.end_of_stream = True
    return N_STATS


cdef inline StatIndex live_heap_accept(
    LiveHeap *h, const PacketHeader *p, bint allow_out_of_order, int64_t max_heap_size,
    int64_t pointer_bytes
) noexcept nogil:
    """spead2's rules for adding a packet to its live heap (both modes).

    `pointer_bytes` is the pointer memory the heap would hold with this packet.
    Returns N_STATS when the packet is accepted (its range is then recorded in
    out-of-order mode), else the reject counter.
    """
    if h.heap_length >= 0 and p.heap_length >= 0 and p.heap_length != h.heap_length:
        return STAT_PACKETS_REJECTED_INCONSISTENT_HEAP
    if p.heap_length >= 0 and p.heap_length < h.min_length:
        return STAT_PACKETS_REJECTED_INCONSISTENT_HEAP
    if p.heap_address_bits != h.heap_address_bits:
        return STAT_PACKETS_REJECTED_INCONSISTENT_HEAP
    # Pointer memory counts against max_heap_size too, so a stream of empty
    # packets full of distinct pointers cannot grow a heap without bound.
    if pointer_bytes > max_heap_size:
        return STAT_PACKETS_REJECTED_HEAP_TOO_LARGE
    cdef int64_t first = p.payload_offset
    cdef int rc
    if allow_out_of_order:
        if <int64_t>(h.st.n_ranges + 1) * 16 > max_heap_size:
            return STAT_PACKETS_REJECTED_HEAP_TOO_LARGE
        rc = add_payload_range(h.st, first, first + p.payload_length)
        if rc == 0:
            return STAT_PACKETS_REJECTED_DUPLICATE
        if rc < 0:
            return STAT_PACKETS_REJECTED_NO_MEMORY
    elif first != h.received_length:
        # The common network duplicate repeats the packet just received; it
        # is counted as such, anything else as out of order.
        if first == h.last_offset and h.n_packets > 0:
            return STAT_PACKETS_REJECTED_DUPLICATE
        return STAT_PACKETS_REJECTED_OUT_OF_ORDER
    return N_STATS


cdef StatIndex live_heap_add_packet(
    Assembler *a, LiveHeap *h, const PacketHeader *p
) noexcept nogil:
    """Add a packet to its heap; N_STATS when accepted, else the reject counter."""
    cdef HeapStorage *st = h.st
    cdef StatIndex verdict = live_heap_accept(
        h, p, a.allow_out_of_order, a.max_heap_size,
        <int64_t>(st.n_pointers + <size_t>p.n_items) * 8)
    if verdict != N_STATS:
        return verdict
    cdef int64_t first = p.payload_offset
    cdef int64_t last = p.payload_offset + p.payload_length
    # Accepted: from here on the heap changes.
    cdef size_t need
    cdef bint exact
    if p.heap_length >= 0:
        exact = True
        if h.heap_length < 0:
            h.heap_length = p.heap_length
            if h.heap_length > h.min_length:
                h.min_length = h.heap_length
    else:
        exact = False
        if last > h.min_length:
            h.min_length = last
    need = <size_t>h.min_length
    if need > st.payload_cap:
        if not exact and need < 2 * st.payload_cap:
            need = 2 * st.payload_cap
        if <int64_t>need > a.max_heap_size:
            need = <size_t>a.max_heap_size
        if not grow(<void **>&st.payload, &st.payload_cap, need, 1, True):
            return STAT_PACKETS_REJECTED_NO_MEMORY
    cdef StatIndex status = live_heap_add_pointers(a, h, p)
    if status != N_STATS:
        return status
    if p.payload_length > 0:
        memcpy(st.payload + first, p.payload, <size_t>p.payload_length)
        h.received_length += p.payload_length
    h.last_offset = first
    h.n_packets += 1
    return N_STATS


cdef void assembler_add_packet(
    Assembler *a, const PacketHeader *p, uint64_t *stats
) noexcept nogil:
    """spead2's stream_base::add_packet for one decoded packet."""
    cdef size_t i, position = 0
    cdef LiveHeap *h = NULL
    cdef int64_t cnt = p.heap_cnt
    cdef bint whole = p.heap_length >= 0 and p.payload_length == p.heap_length
    if whole:
        stats[<int>STAT_SINGLE_PACKET_HEAPS] += 1
    if packet_too_large(a, p):
        stats[<int>STAT_PACKETS_REJECTED_HEAP_TOO_LARGE] += 1
        return
    if whole:
        # A packet that is a whole heap never joins a live heap (spead2): it
        # takes the next slot of the window like any new heap.
        pass
    elif a.live[a.head].cnt == cnt:
        position = a.head
        h = &a.live[position]
    else:
        for i in range(a.max_heaps):
            if a.live[i].cnt == cnt:
                position = i
                h = &a.live[i]
                break
    cdef bint new_heap = h == NULL
    if new_heap and not a.allow_out_of_order and p.payload_offset != 0:
        # In order, a heap can only start at offset 0 (spead2): this packet's
        # predecessors were lost, or its heap has already left the window.
        stats[<int>STAT_PACKETS_REJECTED_OUT_OF_ORDER] += 1
        return
    if new_heap:
        a.head += 1
        if a.head == a.max_heaps:
            a.head = 0
        position = a.head
        h = &a.live[position]
        if h.cnt != -1:
            heap_to_ready(a, h, READY_EVICTED, stats)
        memset(h, 0, sizeof(LiveHeap))
        h.cnt = cnt
        h.heap_length = -1
        h.heap_address_bits = p.heap_address_bits
        a.n_free -= 1
        h.st = a.free_storage[a.n_free]
    cdef StatIndex status = live_heap_add_packet(a, h, p)
    if status != N_STATS:
        stats[<int>status] += 1
        if new_heap:
            # Only a failed allocation can reject a new heap's first packet.
            release_storage(a, h.st)
            h.cnt = -1
            h.st = NULL
        return
    stats[<int>STAT_PAYLOAD_BYTES] += <uint64_t>p.payload_length
    cdef bint end_of_stream = a.stop_on_stop_item and h.end_of_stream
    if h.received_length == h.heap_length and h.received_length == h.min_length:
        if end_of_stream:
            stats[<int>STAT_STOP_HEAPS] += 1
            release_storage(a, h.st)
            h.cnt = -1
            h.st = NULL
        else:
            heap_to_ready(a, h, READY_COMPLETE, stats)
    if end_of_stream:
        a.stopped = True
        assembler_flush(a, stats)


cdef size_t assembler_add_batch(
    Assembler *a, const uint8_t **data, const size_t *length, size_t n, uint64_t *stats
) noexcept nogil:
    """Decode and assemble packets until done or the ready list is full.

    Returns how many packets were consumed.
    """
    cdef PacketHeader hdr
    cdef DecodeStatus status
    cdef size_t i
    for i in range(n):
        if a.stopped:
            stats[<int>STAT_PACKETS_REJECTED_AFTER_STOP] += n - i
            return n
        if not assembler_has_room(a):
            return i
        stats[<int>STAT_PACKETS] += 1
        stats[<int>STAT_BYTES] += length[i]
        status = decode_packet(data[i], length[i], &hdr)
        if status == DECODE_OK and hdr.size != length[i]:
            # spead2 discards a datagram whose header describes fewer bytes
            # than it holds (byte-stream readers always pass exact sizes).
            status = DECODE_PAYLOAD_LENGTH
        if status != DECODE_OK:
            stats[<int>decode_status_stat(status)] += 1
            continue
        assembler_add_packet(a, &hdr, stats)
    return n
