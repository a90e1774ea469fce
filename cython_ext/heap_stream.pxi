# Heap mode: HeapStream, the heap-mode policy of the live-heap window
# (window.pxi: the heap's payload and item pointers kept in its storage, the
# heaps that leave in a ready list), and the Heap and Item objects the ready
# heaps become (with the GIL, once per heap).

cdef enum:
    # Room for the ready heaps one round of packets can produce.
    READY_ROUND = 64


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


cdef StatIndex heap_add_pointers(LiveHeap *h, const PacketHeader *p) noexcept nogil:
    """Keep the packet's item pointers (each once) and note a stop item."""
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


cdef inline bint _heaps_have_room(const ReadyHeaps *r, const Window *w) noexcept nogil:
    """Whether one more packet (and a possible stop-flush) fits in the ready list."""
    return r.n + 2 + w.n_live <= r.cap


cdef inline StatIndex _heaps_on_packet(Window *w, LiveHeap *h, const PacketHeader *p,
                                       uint64_t *stats, ReadyHeaps *ready) noexcept nogil:
    """Keep an accepted packet's payload and item pointers in the heap's storage,
    its payload bytes reserved in the live heaps' budget first.

    N_STATS, or STAT_PACKETS_REJECTED_NO_MEMORY (or _HEAP_OVER_BUDGET).
    """
    cdef HeapStorage *st = h.st
    cdef size_t need = <size_t>h.min_length
    if need > st.payload_cap:
        if p.heap_length < 0 and need < 2 * st.payload_cap:
            need = 2 * st.payload_cap
        if <int64_t>need > w.max_heap_size:
            need = <size_t>w.max_heap_size
        if <int64_t>need > w.max_live_heap_bytes:
            need = <size_t>w.max_live_heap_bytes
    if <int64_t>need > h.held:
        if not window_reserve(w, h, <int64_t>need - h.held, stats, ready):
            return STAT_PACKETS_REJECTED_HEAP_OVER_BUDGET
    if need > st.payload_cap:
        if not grow(<void **>&st.payload, &st.payload_cap, need, 1, True):
            return STAT_PACKETS_REJECTED_NO_MEMORY
    cdef StatIndex status = heap_add_pointers(h, p)
    if status != N_STATS:
        return status
    if p.payload_length > 0:
        w.copy(st.payload + p.payload_offset, p.payload, <size_t>p.payload_length)
    stats[<int>STAT_PAYLOAD_BYTES] += <uint64_t>p.payload_length
    return N_STATS


cdef inline void _heaps_on_ready(ReadyHeaps *r, LiveHeap *h) noexcept nogil:
    """A heap left the window: into the ready list, with its storage."""
    if DAQD_DEBUG and r.n >= r.cap:
        abort()                 # _heaps_have_room() must prevent this
    r.heaps[r.n] = h[0]
    r.n += 1
    h.cnt = -1
    h.st = NULL


cdef int _compare_sort_keys(const void *a, const void *b) noexcept nogil:
    # (key, index) pairs: ordering by index too makes qsort stable.
    cdef const uint64_t *x = <const uint64_t *>a
    cdef const uint64_t *y = <const uint64_t *>b
    if x[0] != y[0]:
        return -1 if x[0] < y[0] else 1
    if x[1] != y[1]:
        return -1 if x[1] < y[1] else 1
    return 0


class Item:
    """One item of a received heap.

    Attributes
    ----------
    id : int
        The SPEAD item identifier.
    immediate : bool
        Whether the value was carried in the item pointer.
    value : int or bytes
        The immediate value, or the bytes of an addressed item.
    """

    __slots__ = ("id", "immediate", "value")

    def __init__(self, id, immediate, value):
        self.id = id
        self.immediate = immediate
        self.value = value

    def __repr__(self):
        return f"Item(id={self.id:#x}, immediate={self.immediate}, value={self.value!r})"


class Heap:
    """A heap that has left assembly.

    Attributes
    ----------
    cnt : int
        HEAP_CNT.
    complete : bool
        Every byte of HEAP_SIZE arrived.  A heap that never carried HEAP_SIZE
        but whose packets are contiguous is delivered with its items as spead2
        does, and has ``complete`` True as well.
    items : list of Item
        Items other than the packet-structure ones (ids 0 to 4); empty for an
        incomplete heap.
    received : int
        Payload bytes received.
    length : int
        HEAP_SIZE, or -1 if no packet carried it.
    reason : str
        ``"complete"``, ``"evicted"`` or ``"flushed"``.
    address_bits : int
        XX of the heap's SPEAD-64-XX flavour.
    payload_ranges : list of (int, int), or None
        An incomplete heap's received payload as sorted ``[start, end)``
        ranges, adjacent ones merged (spead2's ``IncompleteHeap.payload_ranges``
        with ``incomplete_keep_payload_ranges``; in order, one range from 0);
        None for a complete heap.
    """

    __slots__ = ("cnt", "complete", "items", "received", "length", "reason",
                 "address_bits", "n_packets", "payload_ranges")

    def __init__(self, cnt, complete, items, received, length, reason, address_bits,
                 n_packets, payload_ranges=None):
        self.cnt = cnt
        self.complete = complete
        self.items = items
        self.received = received
        self.length = length
        self.reason = reason
        self.address_bits = address_bits
        self.n_packets = n_packets
        self.payload_ranges = payload_ranges

    def _control_values(self):
        for item in self.items:
            if item.id == STREAM_CTRL_ID:
                if item.immediate:
                    yield item.value
                elif len(item.value) <= 8:
                    yield int.from_bytes(item.value, "big")

    @property
    def is_start(self):
        """Whether the heap carries a stream-control start item."""
        return CTRL_STREAM_START in self._control_values()

    @property
    def is_stop(self):
        """Whether the heap carries a stream-control stop item."""
        return CTRL_STREAM_STOP in self._control_values()

    def __repr__(self):
        return (f"Heap(cnt={self.cnt}, complete={self.complete}, reason={self.reason!r}, "
                f"received={self.received}, length={self.length}, items={len(self.items)})")


_REASONS = ("complete", "evicted", "flushed")


cdef object heap_from_live(LiveHeap *h):
    """Build a Heap from a ready LiveHeap (spead2's heap constructor rules)."""
    cdef HeapStorage *st = h.st
    cdef bint contiguous = h.received_length == h.min_length
    cdef list items = []
    cdef size_t n = st.n_pointers
    cdef size_t i
    cdef uint64_t ptr, sort_mask, item_id
    cdef int bits = h.heap_address_bits
    cdef int64_t start, end
    cdef uint64_t *keys
    if contiguous and n > 0:
        # Addressed items end where the next addressed item starts, so sort
        # by (immediate flag, address), stably, as spead2 does.
        sort_mask = (1ULL << 63) | ((1ULL << bits) - 1)
        keys = <uint64_t *>malloc(2 * n * sizeof(uint64_t))
        if keys == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                keys[2 * i] = st.pointers[i] & sort_mask
                keys[2 * i + 1] = i
            qsort(keys, n, 2 * sizeof(uint64_t), _compare_sort_keys)
            for i in range(n):
                ptr = st.pointers[keys[2 * i + 1]]
                item_id = ptr_id(ptr, bits)
                if item_id == 0:
                    continue
                if ptr_is_immediate(ptr):
                    items.append(Item(item_id, True, ptr_value(ptr, bits)))
                    continue
                start = <int64_t>ptr_value(ptr, bits)
                if i + 1 < n and not ptr_is_immediate(st.pointers[keys[2 * i + 3]]):
                    end = <int64_t>ptr_value(st.pointers[keys[2 * i + 3]], bits)
                else:
                    end = h.min_length
                if start == end:
                    continue
                items.append(Item(item_id, False, st.payload[start:end]))
        finally:
            free(keys)
    cdef list ranges = None
    if not contiguous:
        if st.n_ranges:
            ranges = [(st.ranges[2 * i], st.ranges[2 * i + 1]) for i in range(st.n_ranges)]
        elif h.received_length > 0:
            ranges = [(0, h.received_length)]   # in order: what arrived runs from 0
        else:
            ranges = []
    return Heap(h.cnt, contiguous, items, h.received_length, h.heap_length,
                _REASONS[h.reason], bits, h.n_packets, ranges)


cdef class HeapStream(WindowStream):
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
    stop_boundary : bool
        With stop_on_stop_item: a stop heap is a capture boundary instead (every
        live heap is flushed to the ready list, the stream goes on).
    max_live_heap_bytes : int
        Payload bytes the live (partial) heaps may reserve together: a heap
        that needs more evicts the oldest others; one that alone would need
        more is refused (``packets_rejected_heap_over_budget``).
    memcpy : str, optional
        The payload copy, one of `MEMCPY_MODES` (spead2's ``memcpy``); ``auto``
        (the default) is ``"standard"``: Python reads a heap's payload next.
    allow_unsized_heaps : bool
        Take packets without HEAP_SIZE (spead2's default); false: reject them
        (``packets_rejected_unsized``), as spead2's ``allow_unsized_heaps=False``.
    contiguous_only : bool
        Hand out only heaps whose payload arrived contiguously (``complete``),
        as spead2's ring stream with ``contiguous_only=True`` (its default);
        the others are still counted (``incomplete_heaps_*``).  By default
        False: every heap is handed out, an incomplete one flagged, with its
        ``payload_ranges`` (spead2's ``contiguous_only=False`` with
        ``incomplete_keep_payload_ranges``).
    heap_windows : int
        Rings of ``max_heaps`` live heaps each (spead2's ``substreams``): a
        heap lives in ring ``heap_cnt % heap_windows``, so heaps of different
        rings never evict one another.
    explicit_start : bool
        Take no packet until `start` (spead2's ``explicit_start``):
        `process` returns 0 without reading, and the source's packets wait
        where they are (a socket's buffer; the kernel's drops are counted).
    """

    cdef ReadyHeaps ready
    cdef readonly bint contiguous_only

    def __cinit__(self, size_t max_heaps=DEFAULT_MAX_HEAPS, bint allow_out_of_order=False,
                  int64_t max_heap_size=DEFAULT_MAX_HEAP_SIZE, bint stop_on_stop_item=True,
                  int64_t max_live_heap_bytes=DEFAULT_MAX_LIVE_HEAP_BYTES,
                  bint stop_boundary=False, memcpy="auto", bint allow_unsized_heaps=True,
                  bint contiguous_only=False, size_t heap_windows=1, bint explicit_start=False):
        window_check(max_heaps, max_heap_size, max_live_heap_bytes, heap_windows)
        self.ready.cap = max_heaps * heap_windows + READY_ROUND
        self.init_window(max_heaps, max_heap_size, max_live_heap_bytes, allow_out_of_order,
                         stop_on_stop_item, stop_boundary, self.ready.cap, heap_windows)
        self.init_copy(memcpy, "standard")
        self.w.allow_unsized_heaps = self.allow_unsized_heaps = allow_unsized_heaps
        self.contiguous_only = contiguous_only
        self.explicit_start = explicit_start
        self.started = not explicit_start
        self.ready.heaps = <LiveHeap *>malloc(self.ready.cap * sizeof(LiveHeap))
        if self.ready.heaps == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.ready.heaps)

    cdef int receive(self, Reader reader, uint64_t *stats, size_t *used) noexcept nogil:
        cdef int rc = window_receive(&self.w, reader, stats, used, &self.ready)
        if self.w.copy != daqd_copy_standard:
            daqd_copy_fence()       # streaming stores visible before any thread reads a heap
        return rc

    cdef bint wants_python(self, Reader reader) noexcept nogil:
        return self.ready.n > 0 or WindowStream.wants_python(self, reader)

    def pop_ready(self):
        """Heaps that have left assembly since the last call, in order."""
        cdef list out = []
        cdef size_t i
        cdef LiveHeap *h
        try:
            for i in range(self.ready.n):
                h = &self.ready.heaps[i]
                if self.contiguous_only and h.received_length != h.min_length:
                    continue            # incomplete: counted, not handed out
                out.append(heap_from_live(h))
        finally:
            for i in range(self.ready.n):
                window_release_storage(&self.w, self.ready.heaps[i].st)
            self.ready.n = 0
        return out

    def flush(self):
        """End assembly: every live heap leaves, oldest first; returns all ready heaps."""
        out = self.pop_ready()
        window_flush(&self.w, self.counters, &self.ready)
        out.extend(self.pop_ready())
        return out

    def add_packets(self, packets):
        """Assemble packets given as bytes objects; returns the heaps that left."""
        return self.run(ByteListReader(packets))

    def run(self, Reader reader, bint flush=True):
        """Process `reader` to its end (or a stop item); returns the heaps, in order."""
        cdef list out = []
        self.check_started()
        while self.process(reader) >= 0:
            out.extend(self.pop_ready())
            if self.w.stopped:
                break
        if flush:
            out.extend(self.flush())
        else:
            out.extend(self.pop_ready())
        return out

    def stats(self):
        """A snapshot of the counters, name -> value."""
        cdef uint64_t out[<int>N_STATS]
        memcpy(out, self.counters, sizeof(self.counters))
        self.add_polled(out)
        return _stats_dict(out)
