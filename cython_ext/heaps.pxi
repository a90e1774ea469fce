# Converting ready heaps into Python objects (with the GIL, once per heap).

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
