# The live-heap window: heap assembly by spead2's rules, the one copy that heap
# mode (heap_stream.pxi) and chunk mode (chunk_stream.pxi) share.
#
# Mirrors spead2's stream_base/live_heap rules (recv_stream.cpp,
# recv_live_heap.cpp, 4.5.1) so that daqd and spead2 yield the same heaps:
# - a window of `max_heaps` live heaps in a ring; a packet of an unknown heap
#   takes the next slot, evicting whatever heap was there; a packet that is a
#   whole heap (PAYLOAD_LENGTH == HEAP_SIZE) never joins a live heap;
# - `heap_windows` such rings side by side (spead2's StreamConfig.substreams):
#   a heap lives in ring heap_cnt % heap_windows only, so the heaps of N
#   senders numbering theirs cnt = k*N + i cannot evict one another; a flush
#   empties ring 0 first, each ring oldest heap first, as spead2's
#   flush_unlocked does;
# - in-order mode accepts a packet only at the offset where the heap's received
#   bytes end, and starts a heap only from a packet at offset 0 (so a heap with
#   a lost packet stays incomplete, and a late packet of a finished heap does
#   not resurrect it); allow_out_of_order keeps a sorted set of received ranges
#   and rejects overlaps;
# - a heap is complete when received == HEAP_SIZE == min_length (the largest
#   offset or item address seen);
# - a complete heap carrying a stream-control stop item ends the stream and is
#   not delivered (stop_on_stop_item): every other live heap is flushed.  With
#   stop_boundary (the daemon's default; not spead2's) the stop heap is a
#   capture boundary instead: counted and not delivered, every other live heap
#   (chunk mode: every open chunk of the stream) is flushed, and the stream
#   goes on taking packets.
#
# What becomes of a heap's bytes, and of a heap that leaves the window, is the
# mode's policy, as spead2's chunk stream is a policy (allocate, place, ready)
# on top of its live heaps:
#   heap mode     the payload and item pointers are kept in the heap's storage,
#   (ReadyHeaps)  and a heap that leaves goes to the ready list for Python
#                 (heap_stream.pxi: _heaps_*).  Nothing is allocated for a
#                 packet whose heap would be larger than max_heap_size (unlike
#                 spead2): it is counted and dropped first.  The payload bytes
#                 reserved by the live heaps together stay within
#                 max_live_heap_bytes: a heap that needs more evicts the oldest
#                 other live heaps first, and a heap that alone would exceed it
#                 is refused, packet by packet, before anything is allocated.
#   chunk mode    a heap's first packet places the heap in a chunk, each
#   (ChunkStream) packet's payload is copied straight to its place there, and a
#                 heap that leaves complete sets its presence (chunk_stream.pxi:
#                 _chunks_*).  A packet without HEAP_SIZE is rejected (spead2's
#                 chunk streams need it too).
# The policy is chosen at compile time, not through a function pointer: the
# window's functions take the mode's state, `owner`, as the fused type
# WindowOwner (a HeapStream's ReadyHeaps, or the ChunkStream), and Cython
# writes one C function per mode, each with only its own mode's branches (no
# indirect call, no policy test per packet; with -O3 gcc then inlines the
# whole batch loop into each mode's process()).  An `inline` function with a
# constant policy argument, called from the two modes, was tried first: gcc
# kept one shared out-of-line window_add_packet that tested the policy per
# packet (as fast, within the noise); fused types make the specialisation sure.
#
# Storage (payload, pointer list, range set) lives in HeapStorage blocks that
# are reused: a live slot takes one from the free stack; it goes back when the
# heap leaves (chunk mode), or once Python has converted the ready heap (heap
# mode).  Nothing is allocated per packet in steady state.

cdef enum:
    READY_COMPLETE = 0
    READY_EVICTED = 1
    READY_FLUSHED = 2
    # Pointers kept in a plain array are deduplicated by linear search up to
    # this many; beyond it a hash set takes over (spead2 does the same).
    INLINE_POINTERS = 16

#: max_heaps of a HeapStream or ChunkStream not given one (daqd.config's default too).
DEFAULT_MAX_HEAPS = 8
#: max_heap_size of a HeapStream or ChunkStream not given one (daqd.config's default too).
DEFAULT_MAX_HEAP_SIZE = 128 << 20
#: max_live_heap_bytes of a stream not given one (daqd.config's default too): the payload
#: bytes a HeapStream's live (partial) heaps may hold together.
DEFAULT_MAX_LIVE_HEAP_BYTES = 64 << 20
#: The least max_live_heap_bytes accepted: one W3 heap (64 KiB).
MIN_MAX_LIVE_HEAP_BYTES = 1 << 16
#: The most heap_windows (spead2's substreams) a stream may have.
MAX_HEAP_WINDOWS = 4096

cdef class WindowStream
cdef class ChunkStream(WindowStream)

cdef inline StatIndex decode_status_stat(DecodeStatus status) noexcept nogil:
    """The STAT_PACKETS_REJECTED_* counter for a failed decode.

    stats.pxd lists the eight reject counters in DecodeStatus's order (both
    say so; tests/core/test_spead_decode.py checks each reason's counter).
    """
    return <StatIndex>(<int>STAT_PACKETS_REJECTED_TOO_SHORT
                       + <int>status - <int>DECODE_TOO_SHORT)


# ----------------------------------------------------------------------
# Heap storage

cdef struct HeapStorage:
    uint8_t *payload            # heap mode: the heap's bytes
    size_t payload_cap
    uint64_t *pointers          # heap mode: item pointers other than the packet-structure ones
    size_t n_pointers
    size_t pointers_cap
    uint64_t *seen              # open-addressing hash set (0 = empty slot)
    size_t seen_cap             # power of two, 0 while unused
    bint seen_zero              # the all-zero pointer is in the set
    int64_t *ranges             # sorted [first, last) pairs, out-of-order mode
    size_t n_ranges
    size_t ranges_cap


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


# ----------------------------------------------------------------------
# Live heaps and the window

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
    # chunk mode: where the heap was placed (set by _chunks_on_packet)
    int64_t chunk_id            # -1: not placed; its packets are discarded
    uint8_t *dest               # the heap's first byte in its chunk's data
    uint8_t *present            # its presence byte (the first one with packet presence)
    bint empty                  # HEAP_SIZE 0: nothing to place
    int64_t held                # heap mode: payload bytes reserved (Window.live_bytes)


cdef struct ReadyHeaps:         # heap mode's window owner (heap_stream.pxi)
    LiveHeap *heaps             # heaps that have left the window, for Python
    size_t n
    size_t cap


ctypedef ReadyHeaps *ReadyHeapsPtr

# The mode whose policy the window runs (see the top of this file).
ctypedef fused WindowOwner:
    ReadyHeapsPtr
    ChunkStream


cdef extern from "daqd_copy.h" nogil:
    ctypedef void (*daqd_copy_fn)(uint8_t *dst, const uint8_t *src, size_t n) noexcept nogil
    void daqd_copy_standard(uint8_t *dst, const uint8_t *src, size_t n)
    void daqd_copy_nontemporal(uint8_t *dst, const uint8_t *src, size_t n)
    void daqd_copy_init()
    void daqd_copy_fence()

#: A stream's payload copies (its ``memcpy``): spead2's MEMCPY_STD and
#: MEMCPY_NONTEMPORAL, and ``auto`` (the default), as its mode always has
#: copied: heap mode with memcpy (Python reads the heap next), chunk mode with
#: streaming stores (a sink reads the chunk much later).
MEMCPY_MODES = ("auto", "standard", "nontemporal")


cdef struct Window:
    # configuration
    daqd_copy_fn copy           # the payload copy (the stream's memcpy)
    size_t max_heaps            # live heaps of one ring
    size_t n_windows            # rings (heap_windows; spead2's substreams)
    size_t n_live               # max_heaps * n_windows slots in `live`
    int64_t max_heap_size
    int64_t max_live_heap_bytes  # heap mode: payload bytes of the live heaps together
    bint allow_out_of_order
    bint stop_on_stop_item
    bint stop_boundary          # a stop heap flushes and the stream goes on
    bint allow_unsized_heaps    # heap mode: packets without HEAP_SIZE are taken (spead2)
    # state
    bint stopped                # a stop item has ended the stream
    bint closed                 # no packet is taken any more (stopped, or finished)
    size_t *heads               # each ring's newest heap's slot (index into `live`)
    int64_t live_bytes          # heap mode: payload bytes the live heaps reserved
    LiveHeap *live              # n_live slots, ring k at [k * max_heaps, (k + 1) * max_heaps)
    HeapStorage *storage        # n_storage blocks
    HeapStorage **free_storage  # stack of unused blocks
    size_t n_storage
    size_t n_free


cdef int window_check(size_t max_heaps, int64_t max_heap_size,
                      int64_t max_live_heap_bytes, size_t heap_windows) except -1:
    """The one check of a stream's window arguments (both modes)."""
    if max_heaps < 1:
        raise ValueError("max_heaps must be at least 1")
    if heap_windows < 1 or heap_windows > MAX_HEAP_WINDOWS:
        raise ValueError(f"heap_windows must be 1 to {MAX_HEAP_WINDOWS}")
    if max_heap_size < 0:
        raise ValueError("max_heap_size must be >= 0")
    if max_live_heap_bytes < MIN_MAX_LIVE_HEAP_BYTES:
        raise ValueError(f"max_live_heap_bytes must be at least {MIN_MAX_LIVE_HEAP_BYTES}")
    return 0


cdef int window_init(Window *w, size_t max_heaps, int64_t max_heap_size,
                     int64_t max_live_heap_bytes, bint allow_out_of_order,
                     bint stop_on_stop_item, bint stop_boundary,
                     size_t spare_storage, size_t heap_windows) except -1:
    """Allocate an empty window; `spare_storage` blocks beyond one per live slot
    (heap mode: for the heaps waiting in the ready list)."""
    window_check(max_heaps, max_heap_size, max_live_heap_bytes, heap_windows)
    memset(w, 0, sizeof(Window))
    w.max_heaps = max_heaps
    w.n_windows = heap_windows
    w.n_live = max_heaps * heap_windows
    w.max_heap_size = max_heap_size
    w.max_live_heap_bytes = max_live_heap_bytes
    w.allow_out_of_order = allow_out_of_order
    w.stop_on_stop_item = stop_on_stop_item
    w.stop_boundary = stop_boundary
    w.n_storage = w.n_live + spare_storage
    w.live = <LiveHeap *>malloc(w.n_live * sizeof(LiveHeap))
    w.heads = <size_t *>malloc(heap_windows * sizeof(size_t))
    w.storage = <HeapStorage *>malloc(w.n_storage * sizeof(HeapStorage))
    w.free_storage = <HeapStorage **>malloc(w.n_storage * sizeof(HeapStorage *))
    if w.live == NULL or w.heads == NULL or w.storage == NULL or w.free_storage == NULL:
        free(w.storage)
        w.storage = NULL
        window_free(w)
        raise MemoryError()
    memset(w.live, 0, w.n_live * sizeof(LiveHeap))
    memset(w.storage, 0, w.n_storage * sizeof(HeapStorage))
    cdef size_t i
    for i in range(w.n_live):
        w.live[i].cnt = -1
    for i in range(w.n_storage):
        w.free_storage[i] = &w.storage[i]
    w.n_free = w.n_storage
    for i in range(heap_windows):
        w.heads[i] = i * max_heaps + max_heaps - 1   # so that the first heap takes the ring's start
    return 0


cdef void window_free(Window *w) noexcept nogil:
    cdef size_t i
    if w.storage != NULL:
        for i in range(w.n_storage):
            storage_free(&w.storage[i])
    free(w.live)
    free(w.heads)
    free(w.storage)
    free(w.free_storage)
    w.heads = NULL
    w.live = NULL
    w.storage = NULL
    w.free_storage = NULL


cdef inline void window_release_storage(Window *w, HeapStorage *st) noexcept nogil:
    storage_reset(st)
    w.free_storage[w.n_free] = st
    w.n_free += 1


cdef inline void window_unreserve(Window *w, LiveHeap *h) noexcept nogil:
    """The heap leaves the window: its reserved bytes leave the live total."""
    w.live_bytes -= h.held
    h.held = 0


cdef inline void window_drop_heap(Window *w, LiveHeap *h) noexcept nogil:
    """Empty a live slot without delivering its heap."""
    window_unreserve(w, h)
    window_release_storage(w, h.st)
    h.cnt = -1
    h.st = NULL


cdef inline void window_heap_ready(Window *w, LiveHeap *h, int reason, uint64_t *stats,
                                   WindowOwner owner) noexcept nogil:
    """A heap leaves the window (spead2's heap_ready): counted, then the policy's."""
    window_unreserve(w, h)
    h.reason = reason
    stats[<int>STAT_HEAPS] += 1
    if reason == READY_COMPLETE:
        stats[<int>STAT_HEAPS_COMPLETE] += 1
    elif reason == READY_EVICTED:
        stats[<int>STAT_INCOMPLETE_HEAPS_EVICTED] += 1
    else:
        stats[<int>STAT_INCOMPLETE_HEAPS_FLUSHED] += 1
    if WindowOwner is ReadyHeapsPtr:
        _heaps_on_ready(owner, h)        # takes the storage along
    else:
        _chunks_on_ready(owner, h, stats)
        window_drop_heap(w, h)


cdef inline size_t window_next_slot(const Window *w, size_t ring, size_t slot) noexcept nogil:
    """The slot after `slot` in ring `ring` (wrapping round within the ring)."""
    slot += 1
    if slot == (ring + 1) * w.max_heaps:
        slot = ring * w.max_heaps
    return slot


cdef inline void window_flush(Window *w, uint64_t *stats, WindowOwner owner) noexcept nogil:
    """Every live heap leaves: ring by ring, each oldest first (spead2's flush)."""
    cdef size_t i, k
    for k in range(w.n_windows):
        for i in range(w.max_heaps):
            w.heads[k] = window_next_slot(w, k, w.heads[k])
            if w.live[w.heads[k]].cnt != -1:
                window_heap_ready(w, &w.live[w.heads[k]], READY_FLUSHED, stats, owner)


cdef StatIndex packet_too_large(const Window *w, const PacketHeader *p) noexcept nogil:
    """Would this packet make its heap larger than max_heap_size (heap_too_large), or
    larger on its own than the live heaps' budget (heap_over_budget)?  N_STATS if not."""
    cdef int64_t extent = p.heap_length
    if p.payload_offset + p.payload_length > extent:
        extent = p.payload_offset + p.payload_length
    cdef int i
    cdef uint64_t ptr
    for i in range(p.n_items):
        ptr = load_be64(p.pointers + 8 * i)
        if not ptr_is_immediate(ptr) and \
                <int64_t>ptr_value(ptr, p.heap_address_bits) > extent:
            extent = <int64_t>ptr_value(ptr, p.heap_address_bits)
    if extent > w.max_heap_size:
        return STAT_PACKETS_REJECTED_HEAP_TOO_LARGE
    if extent > w.max_live_heap_bytes:
        return STAT_PACKETS_REJECTED_HEAP_OVER_BUDGET
    return N_STATS


cdef bint window_reserve(Window *w, LiveHeap *h, int64_t nbytes, uint64_t *stats,
                         ReadyHeaps *owner) noexcept nogil:
    """Heap mode: reserve `nbytes` more payload bytes for live heap `h`, evicting the
    oldest other live heaps while the live heaps' total would exceed the budget.

    An evicted heap whose bytes can never become items (not contiguous) gives its
    payload memory back at once.  False if `h` alone would exceed the budget.
    With several rings (heap_windows) they are visited in order, each from its
    oldest heap on.
    """
    cdef size_t i, k, slot = 0
    cdef LiveHeap *old
    if h.held + nbytes > w.max_live_heap_bytes:
        return False
    for i in range(w.n_live):
        if w.live_bytes + nbytes <= w.max_live_heap_bytes:
            break
        k = i // w.max_heaps
        if i % w.max_heaps == 0:
            slot = w.heads[k]
        slot = window_next_slot(w, k, slot)     # from the ring's oldest slot on
        old = &w.live[slot]
        if old == h or old.cnt == -1:
            continue
        if old.received_length != old.min_length and old.st.payload != NULL:
            free(old.st.payload)
            old.st.payload = NULL
            old.st.payload_cap = 0
        window_heap_ready(w, old, READY_EVICTED, stats, owner)
    w.live_bytes += nbytes
    h.held += nbytes
    return True


cdef inline StatIndex live_heap_accept(
    const Window *w, LiveHeap *h, const PacketHeader *p, int64_t pointer_bytes
) noexcept nogil:
    """spead2's rules for adding a packet to its live heap.

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
    if pointer_bytes > w.max_heap_size:
        return STAT_PACKETS_REJECTED_HEAP_TOO_LARGE
    cdef int64_t first = p.payload_offset
    cdef int rc
    if w.allow_out_of_order:
        if <int64_t>(h.st.n_ranges + 1) * 16 > w.max_heap_size:
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


cdef inline void window_add_packet(Window *w, const PacketHeader *p, uint64_t *stats,
                                   WindowOwner owner) noexcept nogil:
    """spead2's stream_base::add_packet for one decoded packet."""
    cdef size_t i, ring = 0, base
    cdef LiveHeap *h = NULL
    cdef int64_t cnt = p.heap_cnt
    cdef bint whole = p.heap_length >= 0 and p.payload_length == p.heap_length
    cdef StatIndex verdict
    if whole:
        stats[<int>STAT_SINGLE_PACKET_HEAPS] += 1
    if WindowOwner is ChunkStream:
        if p.heap_length < 0:
            stats[<int>STAT_PACKETS_REJECTED_UNSIZED] += 1  # chunk placement needs HEAP_SIZE
            return
    else:
        if p.heap_length < 0 and not w.allow_unsized_heaps:
            stats[<int>STAT_PACKETS_REJECTED_UNSIZED] += 1  # spead2: "it has no HEAP_LEN"
            return
        verdict = packet_too_large(w, p)
        if verdict != N_STATS:
            stats[<int>verdict] += 1
            return
    if w.n_windows > 1:
        ring = <size_t>(<uint64_t>cnt % w.n_windows)    # spead2: heap_cnt % substreams
    base = ring * w.max_heaps
    if whole:
        # A packet that is a whole heap never joins a live heap (spead2): it
        # takes the next slot of the window like any new heap.
        pass
    elif w.live[w.heads[ring]].cnt == cnt:
        h = &w.live[w.heads[ring]]
    else:
        for i in range(base, base + w.max_heaps):
            if w.live[i].cnt == cnt:
                h = &w.live[i]
                break
    cdef bint new_heap = h == NULL
    if new_heap:
        if not w.allow_out_of_order and p.payload_offset != 0:
            # In order, a heap can only start at offset 0 (spead2): this packet's
            # predecessors were lost, or its heap has already left the window.
            stats[<int>STAT_PACKETS_REJECTED_OUT_OF_ORDER] += 1
            return
        w.heads[ring] = window_next_slot(w, ring, w.heads[ring])
        h = &w.live[w.heads[ring]]
        if h.cnt != -1:
            window_heap_ready(w, h, READY_EVICTED, stats, owner)
        memset(h, 0, sizeof(LiveHeap))
        h.cnt = cnt
        h.heap_length = -1
        h.heap_address_bits = p.heap_address_bits
        h.chunk_id = -1
        h.empty = p.heap_length == 0
        if DAQD_DEBUG and w.n_free == 0:
            abort()             # one block per live slot (and ready heap) is there
        w.n_free -= 1
        h.st = w.free_storage[w.n_free]
    verdict = live_heap_accept(
        w, h, p,
        <int64_t>(h.st.n_pointers + <size_t>p.n_items) * 8 if WindowOwner is ReadyHeapsPtr else 0)
    if verdict == N_STATS:
        # Accepted: from here on the heap changes.
        if p.heap_length >= 0:
            if h.heap_length < 0:
                h.heap_length = p.heap_length
                if h.heap_length > h.min_length:
                    h.min_length = h.heap_length
        elif p.payload_offset + p.payload_length > h.min_length:
            h.min_length = p.payload_offset + p.payload_length
        if WindowOwner is ReadyHeapsPtr:
            verdict = _heaps_on_packet(w, h, p, stats, owner)
        else:
            _chunks_on_packet(owner, h, p, new_heap, stats)
    if verdict != N_STATS:
        stats[<int>verdict] += 1
        if new_heap:
            # Only a failed allocation (or reservation) rejects a new heap's first packet.
            window_drop_heap(w, h)
        return
    h.received_length += p.payload_length
    h.last_offset = p.payload_offset
    h.n_packets += 1
    cdef bint end_of_stream = w.stop_on_stop_item and h.end_of_stream
    cdef bint complete = h.received_length == h.heap_length and h.received_length == h.min_length
    if end_of_stream and w.stop_boundary:
        # A capture boundary, once the stop heap is complete: it is counted and
        # dropped, everything the stream holds is flushed, the stream goes on.
        if complete:
            stats[<int>STAT_STOP_HEAPS] += 1
            window_drop_heap(w, h)
            if WindowOwner is ReadyHeapsPtr:
                window_flush(w, stats, owner)
            else:
                _chunks_on_boundary(owner, stats)
        return
    if complete:
        if end_of_stream:
            stats[<int>STAT_STOP_HEAPS] += 1
            window_drop_heap(w, h)
        else:
            window_heap_ready(w, h, READY_COMPLETE, stats, owner)
    if end_of_stream:
        w.stopped = True
        w.closed = True
        if WindowOwner is ReadyHeapsPtr:
            window_flush(w, stats, owner)
        else:
            _chunks_on_stop(owner, stats)


cdef inline void prefetch_payload(const PacketHeader *p) noexcept nogil:
    """Ask for every cache line of a packet's payload (the next one's, while this
    one is placed).

    A byte stream's packets come from memory the reader has not read (a file
    buffer, a buffer handed in): without it the payload copy waits on each
    page's first lines.  From memory it took W2 from 0.35 to 0.5 of the copy
    limit and W1, W3 from 0.7 to 0.8 (README, "Where the time goes").  A UDP
    batch or a TCP peer's buffer, just written by the kernel, is in the cache
    already: it is not prefetched (`Reader.prefetch_payloads`).
    """
    cdef const uint8_t *q = p.payload
    cdef const uint8_t *end = p.payload + p.payload_length
    while q + 256 <= end:               # four lines a turn: a quarter of the loop's overhead
        cache_prefetch(q)
        cache_prefetch(q + 64)
        cache_prefetch(q + 128)
        cache_prefetch(q + 192)
        q += 256
    while q < end:
        cache_prefetch(q)
        q += 64


cdef inline size_t window_add_batch(
    Window *w, const uint8_t **data, const size_t *length, const PacketHeader *decoded,
    bint prefetch, size_t n, uint64_t *stats, WindowOwner owner
) noexcept nogil:
    """Decode and add packets until done (or, heap mode, the ready list is full).

    `decoded` is NULL, or the packets' headers as the reader decoded them (a
    byte stream decodes each packet to cut it out: decoding it again here would
    give the same header); with them, `prefetch`: prefetch each next packet's
    payload.  Returns how many packets were consumed.
    """
    cdef PacketHeader hdr
    cdef const PacketHeader *p
    cdef DecodeStatus status
    cdef size_t i
    for i in range(n):
        if w.closed:
            stats[<int>STAT_PACKETS_REJECTED_AFTER_STOP] += n - i
            return n
        if WindowOwner is ReadyHeapsPtr and not _heaps_have_room(owner, w):
            return i
        stats[<int>STAT_PACKETS] += 1
        stats[<int>STAT_BYTES] += length[i]
        if decoded != NULL:
            if prefetch and i + 1 < n:
                prefetch_payload(&decoded[i + 1])
            p = &decoded[i]
        else:
            status = decode_packet(data[i], length[i], &hdr)
            if status == DECODE_OK and hdr.size != length[i]:
                # spead2 discards a datagram whose header describes fewer bytes
                # than it holds (byte-stream readers always pass exact sizes).
                status = DECODE_PAYLOAD_LENGTH
            if status != DECODE_OK:
                stats[<int>decode_status_stat(status)] += 1
                continue
            p = &hdr
        # One call site, so that gcc inlines the window into the batch loop.
        window_add_packet(w, p, stats, owner)
    return n


cdef inline int window_receive(Window *w, Reader reader, uint64_t *stats, size_t *used,
                               WindowOwner owner) noexcept nogil:
    """One step of a stream (its process()): fill the reader's batch if it is used
    up, then add what is left of it to the window.

    Returns the fill() result (1 when the batch still had packets); `used` is
    set to the packets consumed.
    """
    cdef int rc = 1
    used[0] = 0
    if WindowOwner is ChunkStream:
        _chunks_on_receive(owner, stats)
    if reader.pos >= reader.n:
        rc = reader.fill(stats)
        if rc > 0:
            stats[<int>STAT_BATCHES] += 1
            if reader.n > stats[<int>STAT_MAX_BATCH]:     # (several batches per process())
                stats[<int>STAT_MAX_BATCH] = reader.n
            if reader.tap_buf != NULL:
                reader.tap_batch(stats)
    if reader.pos < reader.n:
        if WindowOwner is ChunkStream:
            _chunks_on_batch(owner, True, stats)
        used[0] = window_add_batch(w, reader.pkt_data + reader.pos, reader.pkt_len + reader.pos,
                                   reader.pkt_hdr + reader.pos if reader.pkt_hdr != NULL
                                   else NULL, reader.prefetch_payloads, reader.n - reader.pos,
                                   stats, owner)
        reader.pos += used[0]
        if WindowOwner is ChunkStream:
            _chunks_on_batch(owner, False, stats)
    return rc


cdef int receive_result(Reader reader, int rc, size_t used) except -2:
    """What a stream's process() returns after window_receive (with the GIL)."""
    if rc == READ_ERROR:
        raise OSError(reader.errno_value, os.strerror(reader.errno_value))
    if rc == READ_EOF and reader.pos >= reader.n:
        return -1
    return <int>used


cdef class WindowStream:
    """What a heap stream and a chunk stream share: the live-heap window, the counters,
    and process().

    The two modes (HeapStream, ChunkStream) subclass it and give `receive`, the
    window's batch loop specialised for their policy; it is not made on its own.
    """

    cdef Window w
    cdef uint64_t counters[<int>N_STATS]
    cdef readonly size_t max_heaps          # partial heaps alive at once (per heap window)
    cdef readonly size_t heap_windows       # rings of live heaps (spead2's substreams)
    cdef readonly bint allow_out_of_order   # a heap's packets in any order
    cdef readonly int64_t max_heap_size     # larger heaps (and range sets) are rejected
    cdef readonly int64_t max_live_heap_bytes   # heap mode: payload bytes of the live heaps
    cdef readonly bint stop_on_stop_item    # a stop item ends the stream
    cdef readonly bint stop_boundary        # ... or, with this, is a capture boundary
    cdef readonly str memcpy                # the payload copy: standard or nontemporal
    cdef readonly bint allow_unsized_heaps  # packets without HEAP_SIZE are taken (heap mode)
    cdef readonly bint explicit_start       # no packet taken until start()
    cdef readonly bint started              # start() called (always, without explicit_start)
    # Kernel drops found by poll_source() (the statistics path, with the GIL),
    # added in by stats(): the receive loop's own count is in `counters`.
    cdef uint64_t polled_drops

    def __cinit__(self, *args, **kwargs):
        if type(self) is WindowStream:
            raise TypeError("WindowStream is the base of HeapStream and ChunkStream; "
                            "make one of those")
        memset(self.counters, 0, sizeof(self.counters))

    def __dealloc__(self):
        window_free(&self.w)

    cdef int init_window(self, size_t max_heaps, int64_t max_heap_size,
                         int64_t max_live_heap_bytes, bint allow_out_of_order,
                         bint stop_on_stop_item, bint stop_boundary,
                         size_t spare_storage, size_t heap_windows) except -1:
        window_init(&self.w, max_heaps, max_heap_size, max_live_heap_bytes, allow_out_of_order,
                    stop_on_stop_item, stop_boundary, spare_storage, heap_windows)
        self.max_heaps = max_heaps
        self.heap_windows = heap_windows
        self.max_heap_size = max_heap_size
        self.max_live_heap_bytes = max_live_heap_bytes
        self.allow_out_of_order = allow_out_of_order
        self.stop_on_stop_item = stop_on_stop_item
        self.stop_boundary = stop_boundary
        return 0

    cdef int init_copy(self, memcpy, str default) except -1:
        """Choose the payload copy: `memcpy` (one of MEMCPY_MODES; auto: the mode's `default`)."""
        if memcpy not in MEMCPY_MODES:
            raise ValueError(f"memcpy must be one of {', '.join(MEMCPY_MODES)}, not {memcpy!r}")
        if memcpy == "auto":
            memcpy = default
        daqd_copy_init()
        self.w.copy = daqd_copy_standard if memcpy == "standard" else daqd_copy_nontemporal
        self.memcpy = memcpy
        return 0

    cdef int receive(self, Reader reader, uint64_t *stats, size_t *used) noexcept nogil:
        """One batch through the window (`window_receive` for the mode's policy)."""
        return READ_ERROR

    def start(self):
        """Begin taking packets (spead2's ``stream.start()``); with ``explicit_start``
        nothing is read before.  Idempotent; the thread calling process() sees it
        on its next call."""
        self.started = True

    cdef int check_started(self) except -1:
        """Refuse to run a stream to its reader's end before its start (it would wait forever)."""
        if not self.started:
            raise RuntimeError("the stream was made with explicit_start: call start() first")
        return 0

    @property
    def stopped(self):
        """Whether a stop item has ended the stream."""
        return self.w.stopped

    @property
    def stop_heaps(self):
        """Stop heaps seen so far (the ``stop_heaps`` counter, without a stats() dict)."""
        return self.counters[<int>STAT_STOP_HEAPS]

    @property
    def live_heap_bytes(self):
        """Heap mode: payload bytes the live (partial) heaps hold now (a gauge)."""
        return self.w.live_bytes

    def poll_source(self, Reader reader):
        """Count what `reader`'s source reports between packets: a UDP socket's
        drops, read from the kernel now (SO_MEMINFO), so that they show without
        a further datagram.  Any thread may call it (the statistics path does);
        a drop is counted once, here or by the receive loop.  Returns the drops
        it counted."""
        cdef uint64_t drops = reader.poll_drops()
        self.polled_drops += drops
        return drops

    cdef void add_polled(self, uint64_t *out) noexcept:
        """Add what poll_source() counted into a snapshot of the counters."""
        out[<int>STAT_PACKETS_DROPPED_SOCKET_BUFFER] += self.polled_drops

    cdef bint wants_python(self, Reader reader) noexcept nogil:
        """Whether the caller of process() has work to do now (what a batch left for it):
        here, a packet tap half full (a subclass adds its own)."""
        return reader.tap_buf != NULL and (2 * reader.tap_n >= reader.tap_packets_cap
                                           or 2 * reader.tap_used >= reader.tap_bytes_cap)

    def process(self, Reader reader, double budget=0.0):
        """Receive from `reader` and assemble or place it (GIL released throughout).

        One batch, or, with a `budget` (seconds), batch after batch for up to
        that long: a receive thread then takes the GIL about once per budget
        rather than once per batch, and never waits for it behind the
        consumer's and flusher's Python code in between.  The loop ends early
        when the reader has nothing (or has no more), a stop item arrived, or
        the batch left the caller something to take (ready heaps, descriptor
        heaps, a packet tap half full).

        Only one thread may call process() on a stream (and, in chunk mode, finish()).

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
        cdef int rc
        cdef size_t used = 0, step
        cdef uint64_t until
        if not self.started:
            return 0                # explicit_start: the packets wait in the source
        memset(local, 0, sizeof(local))
        with nogil:
            until = monotonic_ns() + <uint64_t>(budget * 1e9) if budget > 0 else 0
            while True:
                rc = self.receive(reader, local, &step)
                used += step
                if rc <= 0 or until == 0 or self.w.stopped or reader.eof \
                        or local[<int>STAT_STOP_HEAPS] != 0 \
                        or self.wants_python(reader) or monotonic_ns() >= until:
                    break
            merge_stats(self.counters, local)
        return receive_result(reader, rc, used)
