# Chunk mode, the stream: ChunkStream, heaps placed straight into the chunks
# of its ChunkGroup (chunk_group.pxi).
#
# A ChunkStream is the chunk-mode policy of the live-heap window (window.pxi),
# as spead2's chunk stream is a policy on its live heaps: the window
# (ChunkStream.process, one nogil region per batch) decodes each packet and
# finds its live heap by the same spead2 rules as heap mode, then calls the
# hooks at the end of this file.  On a heap's first packet, place() decides
# where the heap goes (spead2's allocate + place): declaratively (timestamp //
# step -> chunk and slot, optional substream axis) or through a compiled
# placement hook (daqd_place.h), and opens its chunk in the group if need be.
# Payload bytes are then copied once, from the receive buffer into the heap's
# slot in the chunk; a heap that leaves the window complete sets its presence
# (spead2's ready).

cdef enum:
    DESCRIPTOR_HEAPS = 4              # descriptor heaps whose later packets are recognised
    DESCRIPTOR_BUFFER = 65536         # bytes of their packets kept between two takes
    LEFT_CHUNK = -2                   # a live heap's chunk_id: placed, its chunk gone since

#: Bytes of descriptor-heap packets a chunk stream keeps between two takes.
DESCRIPTOR_PACKET_BYTES = DESCRIPTOR_BUFFER


@cython.final
cdef class ChunkStream(WindowStream):
    """Chunk-mode receive stream (DESIGN.md, INTERFACES.md [stream.chunk]).

    ``ChunkStream(**layout)`` makes a stream with a group of its own (every
    ChunkGroup argument is accepted); ``ChunkStream(group=g)`` (or
    ``self.group.add_stream()``) joins an existing group, whose chunks it fills
    together with the group's other streams.

    Parameters
    ----------
    group : ChunkGroup, optional
        The chunks to fill; by default a new group from the other arguments.
    max_heaps, allow_out_of_order, stop_on_stop_item, stop_boundary, max_heap_size, heap_windows,
    explicit_start
        As for heap mode; at a capture boundary (stop_boundary) the stream's
        open chunks are completed too (`boundary_nogil`).
    boundary_key
        Streams of the group with the same key (an int >= 0) are one source's,
        one for capture boundaries: a stop heap on any of them is the source's
        boundary, the group closing the capture without one on the others
        (their heaps already placed stay in their chunks).  None: the stream
        alone (the default).  Shared keys need a lossy group (ValueError).
    max_live_heap_bytes
        Accepted and checked as for heap mode, without effect: a chunk
        stream's heaps reserve no memory of their own (their payload goes
        straight into the group's preallocated chunks).
    too_old_reset
        Consecutive too-old heaps that re-anchor the window (0: never);
        default two chunks' worth of heaps.  Only a stream alone in its group
        re-anchors (in a group of several, a stream left behind by the others,
        even once they have finished, would deliver chunk ids again).
    memcpy
        The payload copy, one of `MEMCPY_MODES` (spead2's ``memcpy``); ``auto``
        (the default) is ``"nontemporal"``: a chunk is written once and read much later,
        so caching it would only evict the receive buffers.
    allow_unsized_heaps
        Accepted for the stream keys both modes share, and forced false, as
        spead2's chunk stream forces it: a heap is placed from its first
        packet, which must say the heap's size (``packets_rejected_unsized``).
    """

    cdef readonly ChunkGroup group
    cdef readonly uint64_t too_old_reset
    cdef StreamWindow win               # this stream's window of the group's chunks
    cdef uint64_t too_old_run
    # Descriptor heaps fit no chunk: their packets are kept here for Python
    # (`take_descriptor_packets`), each as a native uint32 length and the bytes.
    cdef uint8_t *desc_buf
    cdef readonly size_t descriptor_bytes
    cdef int64_t desc_cnts[DESCRIPTOR_HEAPS]
    cdef size_t desc_next
    # The placement hook's own counters (daqd_place.h, ABI v2), added to by the hook.
    cdef uint64_t place_counts[<int>DAQD_PLACE_MAX_COUNTERS]
    cdef size_t n_place_counts

    def __init__(self, ChunkGroup group=None, *, size_t max_heaps=DEFAULT_MAX_HEAPS,
                 bint allow_out_of_order=False, bint stop_on_stop_item=True,
                 bint stop_boundary=False, int64_t max_heap_size=DEFAULT_MAX_HEAP_SIZE,
                 int64_t max_live_heap_bytes=DEFAULT_MAX_LIVE_HEAP_BYTES, too_old_reset=None,
                 memcpy="auto", allow_unsized_heaps=False, size_t heap_windows=1,
                 bint explicit_start=False, boundary_key=None, **group_kwargs):
        window_check(max_heaps, max_heap_size, max_live_heap_bytes, heap_windows)
        if group is None:
            group = ChunkGroup(**group_kwargs)
        elif group_kwargs:
            raise TypeError(f"layout arguments belong to the group: {', '.join(group_kwargs)}")
        self.group = group
        memset(self.place_counts, 0, sizeof(self.place_counts))
        self.n_place_counts = len(group.place_counters)
        self.too_old_reset = 2 * group.n_slots if too_old_reset is None else too_old_reset
        self.init_window(max_heaps, max_heap_size, max_live_heap_bytes, allow_out_of_order,
                         stop_on_stop_item, stop_boundary, 0, heap_windows)
        self.init_copy(memcpy, "nontemporal")
        self.explicit_start = explicit_start
        self.started = not explicit_start
        self.win.chunks = <Py_ssize_t *>malloc(group.max_chunks * sizeof(Py_ssize_t))
        if self.win.chunks == NULL:
            raise MemoryError()
        cdef size_t i
        for i in range(group.max_chunks):
            self.win.chunks[i] = -1
        self.win.parked = True          # outside a batch (it holds no chunk yet)
        if boundary_key is not None and boundary_key < 0:
            raise ValueError(f"boundary_key must be >= 0 (or None), not {boundary_key}")
        self.win.boundary_key = -1 if boundary_key is None else boundary_key
        if boundary_key is not None and group.lossless and any(
                (<ChunkStream>s).win.boundary_key == boundary_key for s in group.streams):
            # A lossless stream is never parked by its batches, so a sibling's
            # boundary could let go of its chunks while it writes into them.
            raise ValueError(f"boundary_key {boundary_key} is another stream's: streams share "
                             f"a boundary only in a lossy group (eviction='lossy')")
        self.desc_buf = <uint8_t *>malloc(DESCRIPTOR_BUFFER)
        if self.desc_buf == NULL:
            raise MemoryError()
        for i in range(<size_t>DESCRIPTOR_HEAPS):
            self.desc_cnts[i] = -1
        cdef bint ended
        with nogil:
            pthread_mutex_lock(&group.lock)
            ended = group.ended or group.n_streams == MAX_GROUP_STREAMS
            if not ended:
                group.active_streams += 1
                self.win.slot = group.n_streams
                group.stream_heads[self.win.slot] = 0
                group.windows[self.win.slot] = &self.win
                group.n_streams += 1
            pthread_mutex_unlock(&group.lock)
        if ended:
            raise RuntimeError(f"the group has ended or has {MAX_GROUP_STREAMS} streams already")
        group.streams.append(self)

    def __dealloc__(self):
        free(self.win.chunks)
        free(self.desc_buf)

    def __getattr__(self, name):
        # Layout, pool and consumer side live in the group.
        return getattr(self.group, name)

    # ------------------------------------------------------------------
    # This stream's window

    cdef void sync_with_group(self, uint64_t *stats) noexcept nogil:
        """Let go of chunks the group has evicted (lossless: restarts, stops)."""
        if ((self.group.head_hint <= self.win.head or self.win.head == self.win.tail)
                and self.win.epoch == self.group.boundaries):
            return
        self.group.lock_deferring()
        self.sync_epoch(stats)
        if self.win.head < self.win.tail:
            self.group.win_release_below(&self.win, self.group.head_chunk)
        self.group.close_ready(stats)
        self.group.unlock_deferred()

    cdef void set_parked(self, bint parked, uint64_t *stats) noexcept nogil:
        """Lossy group: enter (False) or leave (True) a batch.  Either way the
        chunks the group evicted meanwhile are let go of; while parked, the
        group lets go of them itself."""
        self.group.lock_deferring()
        self.win.parked = parked
        self.sync_epoch(stats)
        if self.win.head < self.group.head_chunk and self.win.head < self.win.tail:
            self.group.win_release_below(&self.win, self.group.head_chunk)
            self.group.close_ready(stats)
        self.group.unlock_deferred()

    cdef void sync_epoch(self, uint64_t *stats) noexcept nogil:
        """(Group lock held.)  After the group closed a capture (boundary_reached),
        this stream's window starts afresh at 0.

        It is empty since the stream's boundary, or, for another stream of a
        source at its boundary (`boundary_key`), holds chunks of the closed
        capture: it lets go of them and its live heaps lose their places (their
        later packets are discarded, the heaps counted as too old).
        """
        if self.win.epoch != self.group.boundaries:
            self.win.epoch = self.group.boundaries
            if self.win.head < self.win.tail:
                self.group.win_release_below(&self.win, self.win.tail)
                self.group.close_ready(stats)
            self.forget_placements(LEFT_CHUNK)
            self.win.head = self.win.tail = 0
            self.win.head_pos = 0
            self.group.win_publish(&self.win)      # a new stream's head (0)

    cdef void forget_placements(self, int64_t mark=-1) noexcept nogil:
        """Live heaps lose their slots (their chunks are about to leave for good);
        `mark` LEFT_CHUNK: each is counted as too old when it leaves the window."""
        cdef size_t i
        for i in range(self.w.n_live):
            self.w.live[i].chunk_id = mark

    cdef StatIndex chunk_for(self, int64_t chunk_id, Py_ssize_t *out,
                             uint64_t *stats) noexcept nogil:
        """The pool index of `chunk_id`'s chunk (>= 0), opening chunks as needed."""
        cdef size_t pos
        cdef StatIndex verdict = N_STATS
        cdef uint64_t cid = <uint64_t>chunk_id
        if self.win.head <= cid < self.win.tail:
            self.too_old_run = 0
            pos = <size_t>(cid - self.win.head) + self.win.head_pos
            if pos >= self.group.max_chunks:
                pos -= self.group.max_chunks
            out[0] = self.win.chunks[pos]
            return N_STATS if out[0] >= 0 else STAT_CHUNK_HEAPS_NO_FREE_CHUNK
        self.group.lock_deferring()
        self.sync_epoch(stats)
        if self.win.at_boundary and self.group.anchored and cid < self.group.tail_chunk:
            # After its stop heap, before the group closed the capture (another
            # stream's stop heap has not come): a chunk still open for the
            # previous capture is not this stream's to write to any more.
            self.group.unlock_deferred()
            return STAT_CHUNK_HEAPS_TOO_OLD
        if self.group.anchored and (cid < self.group.head_chunk or cid < self.win.head):
            self.too_old_run += 1
            if (self.too_old_reset == 0 or self.too_old_run < self.too_old_reset
                    or self.group.n_streams > 1):
                self.group.unlock_deferred()
                return STAT_CHUNK_HEAPS_TOO_OLD
            # The group's only stream: start afresh at the new chunk.
            stats[<int>STAT_CHUNK_WINDOW_RESETS] += 1
            self.forget_placements(LEFT_CHUNK)     # counted as too old once they leave
            self.group.win_release_below(&self.win, self.win.tail)
            self.group.reanchor(cid, stats)
            self.win.head = self.win.tail = cid
            self.win.head_pos = 0
            self.group.win_publish(&self.win)
        self.too_old_run = 0
        self.group.extend(&self.win, cid, stats)
        self.sync_epoch(stats)             # a capture closed while it waited
        if cid < self.group.head_chunk or cid < self.win.head:
            verdict = STAT_CHUNK_HEAPS_TOO_OLD      # evicted while this stream waited
        else:
            self.win.at_boundary = False            # published with its window next
            self.group.win_acquire_to(&self.win, cid)
            out[0] = self.group.window_chunk(cid)
            if out[0] < 0:
                verdict = STAT_CHUNK_HEAPS_NO_FREE_CHUNK
        self.group.close_ready(stats)
        self.group.unlock_deferred()
        return verdict

    # ------------------------------------------------------------------
    # Placement

    cdef StatIndex place(self, LiveHeap *h, const PacketHeader *p, const int64_t *items,
                         uint64_t *stats) noexcept nogil:
        """Decide where the heap of first packet `p` goes; N_STATS when placed."""
        cdef int64_t chunk_id
        cdef size_t slot, heap_index, heap_offset, last_present
        cdef uint64_t index, timestamp, substream = 0
        cdef daqd_place_data pd
        cdef uint64_t extra[<int>MAX_PLACE_ITEMS]
        cdef size_t first_extra = self.group.n_item_ids - self.group.n_extra
        cdef size_t i
        for i in range(self.group.n_extra):
            extra[i] = <uint64_t>items[first_extra + i]
        if self.group.place_fn != NULL:
            pd.packet = p.pointers - 8
            pd.packet_size = p.size
            pd.items = items
            pd.n_items = first_extra
            pd.heap_length = p.heap_length
            pd.chunk_id = -1
            pd.heap_index = 0
            pd.heap_offset = 0
            pd.extra = extra
            pd.n_extra = self.group.n_extra
            pd.counters = self.place_counts
            pd.n_counters = self.n_place_counts
            self.group.place_fn(&pd, self.group.place_user)
            if pd.chunk_id < 0:
                return STAT_CHUNK_HEAPS_REJECTED_BY_PLACE
            last_present = pd.heap_index
            if self.group.packet_presence and p.heap_length > 0:
                last_present += <size_t>(p.heap_length - 1) // self.group.packet_presence
            if last_present >= self.group.present_per_chunk \
                    or pd.heap_offset > self.group.chunk_bytes \
                    or <uint64_t>p.heap_length > self.group.chunk_bytes - pd.heap_offset:
                return STAT_CHUNK_HEAPS_REJECTED_PLACEMENT
            chunk_id = pd.chunk_id
            heap_index = pd.heap_index
            heap_offset = pd.heap_offset
            slot = heap_index // self.group.packets_per_heap
        else:
            if <uint64_t>p.heap_length != self.group.heap_bytes:
                return STAT_CHUNK_HEAPS_REJECTED_SIZE
            if items[0] < 0:
                return STAT_CHUNK_HEAPS_REJECTED_NO_TIMESTAMP
            timestamp = <uint64_t>items[0]
            if self.group.step_shift >= 0:
                if timestamp & (self.group.timestamp_step - 1):
                    return STAT_CHUNK_HEAPS_REJECTED_MISALIGNED
                index = timestamp >> self.group.step_shift
            else:
                if timestamp % self.group.timestamp_step:
                    return STAT_CHUNK_HEAPS_REJECTED_MISALIGNED
                index = timestamp // self.group.timestamp_step
            if self.group.has_substream:
                if items[1] < 0 or <uint64_t>items[1] >= self.group.substreams:
                    return STAT_CHUNK_HEAPS_REJECTED_SUBSTREAM
                substream = <uint64_t>items[1]
            if self.group.chunk_shift >= 0:
                chunk_id = <int64_t>(index >> self.group.chunk_shift)
                slot = <size_t>(index & (self.group.heaps_per_chunk - 1))
            else:
                chunk_id = <int64_t>(index // self.group.heaps_per_chunk)
                slot = <size_t>(index % self.group.heaps_per_chunk)
            slot = slot * self.group.substreams + <size_t>substream
            heap_index = slot * self.group.packets_per_heap
            heap_offset = slot * self.group.heap_bytes
        cdef Py_ssize_t c = -1
        cdef StatIndex verdict = self.chunk_for(chunk_id, &c, stats)
        if verdict != N_STATS:
            return verdict
        h.chunk_id = chunk_id
        h.dest = self.group.data_base + <size_t>c * self.group.chunk_stride + heap_offset
        h.present = self.group.present_base + <size_t>c * self.group.present_per_chunk + heap_index
        if self.group.n_extra:
            memcpy(self.group.extra_base
                   + (<size_t>c * self.group.n_slots + slot) * self.group.n_extra,
                   extra, self.group.n_extra * sizeof(uint64_t))
        return N_STATS

    # ------------------------------------------------------------------
    # Packets

    cdef inline void scan_items(self, const PacketHeader *p, int64_t *items) noexcept nogil:
        """The values of the placement's immediate items in packet `p` into `items`
        (a heap's first packet; what every packet's pointers say of the heap itself,
        decode_packet has gathered).

        Only the pointers decode_packet marked in `other_immediates` are looked
        at, unless the packet has more than 64 pointers or the placement asks
        for a packet-structure item itself (`ChunkGroup.structure_items`).
        """
        cdef int i
        cdef size_t j
        cdef uint64_t ptr, item_id
        cdef int bits = p.heap_address_bits
        # Locals: `items` could alias the group's arrays as far as gcc knows.
        cdef size_t n_ids = self.group.n_item_ids
        cdef const uint64_t *ids = self.group.item_ids
        cdef uint64_t todo = p.other_immediates
        cdef int first = p.n_items
        if self.group.structure_items or p.n_items > 64:
            todo = 0
            first = 0
        while todo:
            i = count_trailing_zeros(todo)
            todo &= todo - 1
            ptr = load_be64(p.pointers + 8 * i)
            item_id = ptr_id(ptr, bits)
            for j in range(n_ids):
                if ids[j] == item_id:
                    items[j] = <int64_t>ptr_value(ptr, bits)
        for i in range(first, p.n_items):
            ptr = load_be64(p.pointers + 8 * i)
            if ptr_is_immediate(ptr):
                item_id = ptr_id(ptr, bits)
                for j in range(n_ids):
                    if ids[j] == item_id:
                        items[j] = <int64_t>ptr_value(ptr, bits)

    cdef inline bint writable(self, const LiveHeap *h) noexcept nogil:
        """Whether the heap's chunk is still in this stream's window."""
        return h.chunk_id >= 0 and <uint64_t>h.chunk_id >= self.win.head

    cdef inline void on_packet(self, LiveHeap *h, const PacketHeader *p, bint new_heap,
                               uint64_t *stats) noexcept nogil:
        """The window accepted packet `p` of heap `h`: place the heap on its first
        packet, then copy the payload to its place (or count it discarded)."""
        cdef int64_t items[<int>MAX_PLACE_ITEMS]
        cdef StatIndex verdict
        cdef size_t i
        if p.max_address > h.min_length:
            h.min_length = p.max_address
        if p.stream_stop:
            h.end_of_stream = True
        if new_heap:
            for i in range(self.group.n_item_ids):
                items[i] = -1
            self.scan_items(p, items)
            if not h.empty:
                verdict = self.place(h, p, items, stats)
                if verdict == N_STATS:
                    stats[<int>STAT_CHUNK_HEAPS_PLACED] += 1
                else:
                    stats[<int>verdict] += 1
        if self.writable(h):
            if p.payload_length > 0:
                self.w.copy(h.dest + p.payload_offset, p.payload, <size_t>p.payload_length)
                stats[<int>STAT_PAYLOAD_BYTES] += <uint64_t>p.payload_length
            if self.group.packet_presence:
                h.present[<size_t>p.payload_offset // self.group.packet_presence] = 1
        elif not h.empty:
            stats[<int>STAT_CHUNK_PACKETS_DISCARDED] += 1
            self.keep_descriptor_packet(p, stats)

    cdef void keep_descriptor_packet(self, const PacketHeader *p,
                                     uint64_t *stats) noexcept nogil:
        """Copy a discarded packet of a descriptor heap for `take_descriptor_packets`.

        A packet belongs to a descriptor heap when it carries an addressed
        DESCRIPTOR_ID pointer, or when its heap counter is one of the last
        DESCRIPTOR_HEAPS such heaps' (its later packets).  Packets that do not
        fit what is left of the buffer are counted (STAT_DESCRIPTOR_PACKETS_DROPPED).
        """
        cdef size_t i
        cdef int j
        cdef uint64_t ptr
        cdef uint32_t size
        cdef bint known = False
        for i in range(<size_t>DESCRIPTOR_HEAPS):
            if self.desc_cnts[i] == p.heap_cnt:
                known = True
                break
        if not known:
            for j in range(p.n_items):
                ptr = load_be64(p.pointers + 8 * j)
                if not ptr_is_immediate(ptr) \
                        and ptr_id(ptr, p.heap_address_bits) == DESCRIPTOR_ID:
                    known = True
                    break
            if not known:
                return
            self.desc_cnts[self.desc_next % DESCRIPTOR_HEAPS] = p.heap_cnt
            self.desc_next += 1
        if self.descriptor_bytes + sizeof(uint32_t) + p.size > DESCRIPTOR_BUFFER:
            stats[<int>STAT_DESCRIPTOR_PACKETS_DROPPED] += 1
            return
        size = <uint32_t>p.size
        memcpy(self.desc_buf + self.descriptor_bytes, &size, sizeof(uint32_t))
        memcpy(self.desc_buf + self.descriptor_bytes + sizeof(uint32_t), p.pointers - 8, p.size)
        self.descriptor_bytes += sizeof(uint32_t) + p.size

    def take_descriptor_packets(self):
        """Return the packets of descriptor heaps kept since the last call (bytes, in order).

        Descriptor heaps fit no chunk, so the placement discards them; their
        packets are kept (up to DESCRIPTOR_PACKET_BYTES between two calls) for
        `daqd.recv.descriptors` to decode.  Call it from the thread that runs
        `process`, between batches.
        """
        cdef list out = []
        cdef size_t pos = 0
        cdef uint32_t size
        while pos < self.descriptor_bytes:
            memcpy(&size, self.desc_buf + pos, sizeof(uint32_t))
            out.append(self.desc_buf[pos + sizeof(uint32_t):pos + sizeof(uint32_t) + size])
            pos += sizeof(uint32_t) + size
        self.descriptor_bytes = 0
        return out

    cdef inline void on_ready(self, const LiveHeap *h, uint64_t *stats) noexcept nogil:
        """A heap left the window (counted there): a complete one sets its presence."""
        if h.reason != READY_COMPLETE:
            return
        if self.writable(h):
            if not self.group.packet_presence:
                h.present[0] = 1
                stats[<int>STAT_CHUNK_HEAPS_PRESENT] += 1
        elif h.chunk_id >= 0 or h.chunk_id == LEFT_CHUNK:
            # Placed, but its chunk left the window first (spead2 counts it so too).
            stats[<int>STAT_CHUNK_HEAPS_TOO_OLD] += 1
        elif h.empty:
            stats[<int>STAT_CHUNK_HEAPS_REJECTED_SIZE] += 1   # a complete heap of 0 bytes

    cdef void finish_nogil(self, uint64_t *stats) noexcept nogil:
        if self.win.finished:
            return
        self.w.closed = True
        window_flush(&self.w, stats, self)
        pthread_mutex_lock(&self.group.lock)
        self.win.finished = True
        self.group.win_release_below(&self.win, self.win.tail)     # publishes "finished"
        self.group.stream_ended(stats)
        if not self.group.ended:
            self.group.boundary_reached(stats)  # the others may all be at a boundary
        self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)

    cdef void boundary_nogil(self, uint64_t *stats) noexcept nogil:
        """A stop heap on a capture-boundary stream: live heaps leave, then the
        stream lets go of its chunks and is at a boundary.  Once every stream of
        the group is (or has finished; alone in its group, at once), the group
        completes every open chunk and un-anchors the window, so the next
        capture starts a new window at whatever chunk id comes (lower or
        higher).  Until then this stream's heaps for chunks the group still
        has open, or behind its window, are counted as too old."""
        window_flush(&self.w, stats, self)
        self.forget_placements()
        self.too_old_run = 0
        pthread_mutex_lock(&self.group.lock)
        self.win.at_boundary = True         # holds no lossless eviction back from now on
        self.group.win_release_below(&self.win, self.win.tail)
        self.group.boundary_reached(stats)
        self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)

    # ------------------------------------------------------------------
    # Python API

    cdef int receive(self, Reader reader, uint64_t *stats, size_t *used) noexcept nogil:
        return window_receive(&self.w, reader, stats, used, self)

    cdef bint wants_python(self, Reader reader) noexcept nogil:
        return self.descriptor_bytes > 0 or WindowStream.wants_python(self, reader)

    def finish(self):
        """End this stream: live heaps are flushed, its chunks let go; the
        last stream of a group to finish hands every open chunk to the data ring."""
        cdef uint64_t local[<int>N_STATS]
        memset(local, 0, sizeof(local))
        with nogil:
            self.finish_nogil(local)
            merge_stats(self.counters, local)

    def chunks(self, Reader reader):
        """Receive from `reader` in this thread, yielding each chunk as it completes.

        At the end of the reader (or a stop item) the stream is finished and
        the remaining chunks follow.  Release every chunk (``with chunk:``).
        """
        cdef ChunkGroup g = self.group
        self.check_started()
        while True:
            rc = self.process(reader)
            while (chunk := g.take_ready()) is not None:
                yield chunk
            if rc < 0 or self.w.stopped:
                break
        self.finish()
        while (chunk := g.take_ready()) is not None:
            yield chunk

    def get(self, timeout=None):
        """The group's next completed chunk (see ChunkGroup.get)."""
        return self.group.get(timeout)

    def __iter__(self):
        return iter(self.group)

    cdef void snapshot(self, uint64_t *out) noexcept:
        """This stream's counters, with its waits on the group up to now (even
        one still going on: stats() shows a blocked stream as blocked)."""
        cdef uint64_t times, ns, since, now
        memcpy(out, self.counters, sizeof(self.counters))
        with nogil:
            # The clock is read under the lock too: a wait that ends meanwhile
            # adds its time (measured with the lock held) before or after, never
            # less than was shown.
            pthread_mutex_lock(&self.group.lock)
            times = self.win.blocked_times
            ns = self.win.blocked_ns
            since = self.win.blocked_since
            if since:
                now = monotonic_ns()
                if now > since:
                    ns += now - since
            pthread_mutex_unlock(&self.group.lock)
        out[<int>STAT_WORKER_BLOCKED] += times
        out[<int>STAT_WORKER_BLOCKED_NS] += ns
        self.add_polled(out)

    def stats(self):
        """A snapshot of this stream's counters, name -> value."""
        cdef uint64_t out[<int>N_STATS]
        cdef size_t i
        self.snapshot(out)
        stats = _stats_dict(out)
        for i in range(self.n_place_counts):
            stats["place_" + self.group.place_counters[i]] = self.place_counts[i]
        return stats

    def add_packets(self, packets):
        """Place packets given as bytes objects (tests and tools)."""
        self.check_started()
        reader = ByteListReader(packets)
        while self.process(reader) >= 0 and not self.w.stopped:
            pass


# ----------------------------------------------------------------------
# The chunk-mode policy: the hooks the window calls (window.pxi)

cdef inline void _chunks_on_receive(ChunkStream cs, uint64_t *stats) noexcept nogil:
    """Before a batch is read: lossless, let go of the chunks the group evicted."""
    if cs.group.lossless:
        cs.sync_with_group(stats)


cdef inline void _chunks_on_batch(ChunkStream cs, bint entering, uint64_t *stats) noexcept nogil:
    """Around a batch's packets: lossy, the stream is parked outside it."""
    if not cs.group.lossless:
        cs.set_parked(not entering, stats)


cdef inline void _chunks_on_packet(ChunkStream cs, LiveHeap *h, const PacketHeader *p,
                                   bint new_heap, uint64_t *stats) noexcept nogil:
    cs.on_packet(h, p, new_heap, stats)


cdef inline void _chunks_on_ready(ChunkStream cs, const LiveHeap *h,
                                  uint64_t *stats) noexcept nogil:
    cs.on_ready(h, stats)


cdef inline void _chunks_on_boundary(ChunkStream cs, uint64_t *stats) noexcept nogil:
    """A stop heap marked a capture boundary: complete the stream's chunks, go on."""
    cs.boundary_nogil(stats)


cdef inline void _chunks_on_stop(ChunkStream cs, uint64_t *stats) noexcept nogil:
    """A stop item ended the stream: finish it (every live heap flushed)."""
    cs.finish_nogil(stats)
