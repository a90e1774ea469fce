# Heap mode: HeapStream, and the Heap and Item objects its ready heaps become
# (with the GIL, once per heap).

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
    """

    __slots__ = ("cnt", "complete", "items", "received", "length", "reason",
                 "address_bits", "n_packets")

    def __init__(self, cnt, complete, items, received, length, reason, address_bits,
                 n_packets):
        self.cnt = cnt
        self.complete = complete
        self.items = items
        self.received = received
        self.length = length
        self.reason = reason
        self.address_bits = address_bits
        self.n_packets = n_packets

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
    complete = contiguous
    return Heap(h.cnt, complete, items, h.received_length, h.heap_length,
                _REASONS[h.reason], bits, h.n_packets)


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
