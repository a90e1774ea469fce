# Chunk mode, the stream: ChunkStream, heaps placed straight into the chunks
# of its ChunkGroup (chunk_group.pxi).
#
# The receive loop (ChunkStream.process, one nogil region per batch) decodes
# each packet, finds its live heap (the same spead2 rules as heap mode:
# live_heap_accept), and on a heap's first packet decides where the heap goes:
# declaratively (timestamp // step -> chunk and slot, optional substream axis)
# or through a compiled placement hook (daqd_place.h).  Payload bytes are then
# copied once, from the receive buffer into the heap's slot in the chunk.

@cython.final
cdef class ChunkStream:
    """Chunk-mode receive stream (DESIGN.md, INTERFACES.md [stream.chunk]).

    ``ChunkStream(**layout)`` makes a stream with a group of its own (every
    ChunkGroup argument is accepted); ``ChunkStream(group=g)`` (or
    ``self.group.add_stream()``) joins an existing group, whose chunks it fills
    together with the group's other streams.

    Parameters
    ----------
    group : ChunkGroup, optional
        The chunks to fill; by default a new group from the other arguments.
    max_heaps, allow_out_of_order, stop_on_stop_item, max_heap_size
        As for heap mode.
    too_old_reset
        Consecutive too-old heaps that re-anchor the window (0: never);
        default two chunks' worth of heaps.  Only a stream alone in its group
        re-anchors (in a group of several, a stream left behind by the others,
        even once they have finished, would deliver chunk ids again).
    """

    cdef readonly ChunkGroup group
    cdef readonly size_t max_heaps
    cdef readonly bint allow_out_of_order
    cdef readonly bint stop_on_stop_item
    cdef readonly int64_t max_heap_size
    cdef readonly uint64_t too_old_reset
    cdef ChunkHeap *live
    cdef HeapStorage *live_storage     # out-of-order range sets, one per live slot
    cdef size_t live_head
    cdef bint stopped_flag
    cdef StreamWindow win               # this stream's window of the group's chunks
    cdef uint64_t too_old_run
    cdef uint64_t counters[<int>N_STATS]

    def __init__(self, ChunkGroup group=None, *, size_t max_heaps=8,
                 bint allow_out_of_order=False, bint stop_on_stop_item=True,
                 int64_t max_heap_size=128 << 20, too_old_reset=None, **group_kwargs):
        if group is None:
            group = ChunkGroup(**group_kwargs)
        elif group_kwargs:
            raise TypeError(f"layout arguments belong to the group: {', '.join(group_kwargs)}")
        if max_heaps == 0:
            raise ValueError("max_heaps must be at least 1")
        self.group = group
        self.max_heaps = max_heaps
        self.allow_out_of_order = allow_out_of_order
        self.stop_on_stop_item = stop_on_stop_item
        self.max_heap_size = max_heap_size
        self.too_old_reset = 2 * group.n_slots if too_old_reset is None else too_old_reset
        self.live = <ChunkHeap *>malloc(max_heaps * sizeof(ChunkHeap))
        self.live_storage = <HeapStorage *>malloc(max_heaps * sizeof(HeapStorage))
        self.win.chunks = <Py_ssize_t *>malloc(group.max_chunks * sizeof(Py_ssize_t))
        if self.live == NULL or self.live_storage == NULL or self.win.chunks == NULL:
            raise MemoryError()
        memset(self.live, 0, max_heaps * sizeof(ChunkHeap))
        memset(self.live_storage, 0, max_heaps * sizeof(HeapStorage))
        cdef size_t i
        for i in range(max_heaps):
            self.live[i].h.cnt = -1
            self.live[i].h.st = &self.live_storage[i]
        for i in range(group.max_chunks):
            self.win.chunks[i] = -1
        self.win.parked = True          # outside a batch (it holds no chunk yet)
        self.live_head = max_heaps - 1
        memset(self.counters, 0, sizeof(self.counters))
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
        cdef size_t i
        if self.live_storage != NULL:
            for i in range(self.max_heaps):
                storage_free(&self.live_storage[i])
        free(self.live)
        free(self.live_storage)
        free(self.win.chunks)

    def __getattr__(self, name):
        # Layout, pool and consumer side live in the group.
        return getattr(self.group, name)

    # ------------------------------------------------------------------
    # This stream's window

    cdef void sync_with_group(self, uint64_t *stats) noexcept nogil:
        """Let go of chunks the group has evicted (lossless: restarts, stops)."""
        if self.group.head_hint <= self.win.head or self.win.head == self.win.tail:
            return
        pthread_mutex_lock(&self.group.lock)
        self.group.win_release_below(&self.win, self.group.head_chunk)
        self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)

    cdef void set_parked(self, bint parked, uint64_t *stats) noexcept nogil:
        """Lossy group: enter (False) or leave (True) a batch.  Either way the
        chunks the group evicted meanwhile are let go of; while parked, the
        group lets go of them itself."""
        pthread_mutex_lock(&self.group.lock)
        self.win.parked = parked
        if self.win.head < self.group.head_chunk and self.win.head < self.win.tail:
            self.group.win_release_below(&self.win, self.group.head_chunk)
            self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)

    cdef void forget_placements(self) noexcept nogil:
        """Live heaps lose their slots (their chunks are about to leave for good)."""
        cdef size_t i
        for i in range(self.max_heaps):
            self.live[i].chunk_id = -1

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
        pthread_mutex_lock(&self.group.lock)
        if self.group.anchored and (cid < self.group.head_chunk or cid < self.win.head):
            self.too_old_run += 1
            if (self.too_old_reset == 0 or self.too_old_run < self.too_old_reset
                    or self.group.n_streams > 1):
                pthread_mutex_unlock(&self.group.lock)
                return STAT_CHUNK_HEAPS_TOO_OLD
            # The group's only stream: start afresh at the new chunk.
            stats[<int>STAT_CHUNK_WINDOW_RESETS] += 1
            self.forget_placements()
            self.group.win_release_below(&self.win, self.win.tail)
            self.group.reanchor(cid, stats)
            self.win.head = self.win.tail = cid
            self.win.head_pos = 0
            self.group.win_publish(&self.win)
        self.too_old_run = 0
        self.group.extend(&self.win, cid, stats)
        if cid < self.group.head_chunk or cid < self.win.head:
            verdict = STAT_CHUNK_HEAPS_TOO_OLD      # evicted while this stream waited
        else:
            self.group.win_acquire_to(&self.win, cid)
            out[0] = self.group.window_chunk(cid)
            if out[0] < 0:
                verdict = STAT_CHUNK_HEAPS_NO_FREE_CHUNK
        self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)
        return verdict

    # ------------------------------------------------------------------
    # Placement

    cdef StatIndex place(self, ChunkHeap *ch, const PacketHeader *p, const int64_t *items,
                         uint64_t *stats) noexcept nogil:
        """Decide where the heap of first packet `p` goes; N_STATS when placed."""
        cdef int64_t chunk_id
        cdef size_t slot, heap_index, heap_offset, last_present
        cdef uint64_t index, substream = 0
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
            if <uint64_t>items[0] % self.group.timestamp_step:
                return STAT_CHUNK_HEAPS_REJECTED_MISALIGNED
            if self.group.has_substream:
                if items[1] < 0 or <uint64_t>items[1] >= self.group.substreams:
                    return STAT_CHUNK_HEAPS_REJECTED_SUBSTREAM
                substream = <uint64_t>items[1]
            index = <uint64_t>items[0] // self.group.timestamp_step
            chunk_id = <int64_t>(index // self.group.heaps_per_chunk)
            slot = (<size_t>(index % self.group.heaps_per_chunk) * self.group.substreams
                    + <size_t>substream)
            heap_index = slot * self.group.packets_per_heap
            heap_offset = slot * self.group.heap_bytes
        cdef Py_ssize_t c = -1
        cdef StatIndex verdict = self.chunk_for(chunk_id, &c, stats)
        if verdict != N_STATS:
            return verdict
        ch.chunk_id = chunk_id
        ch.dest = self.group.data_base + <size_t>c * self.group.chunk_stride + heap_offset
        ch.present = self.group.present_base + <size_t>c * self.group.present_per_chunk + heap_index
        if self.group.n_extra:
            memcpy(self.group.extra_base
                   + (<size_t>c * self.group.n_slots + slot) * self.group.n_extra,
                   extra, self.group.n_extra * sizeof(uint64_t))
        return N_STATS

    # ------------------------------------------------------------------
    # Packets

    cdef void scan_pointers(self, LiveHeap *h, const PacketHeader *p,
                            int64_t *items) noexcept nogil:
        """Update min_length and the stop flag of `h`; item values into `items`."""
        cdef int i
        cdef size_t j
        cdef uint64_t ptr, item_id, value
        cdef int bits = p.heap_address_bits
        for i in range(p.n_items):
            ptr = load_be64(p.pointers + 8 * i)
            value = ptr_value(ptr, bits)
            if not ptr_is_immediate(ptr):
                if <int64_t>value > h.min_length:
                    h.min_length = <int64_t>value
                continue
            item_id = ptr_id(ptr, bits)
            if item_id == STREAM_CTRL_ID and value == CTRL_STREAM_STOP:
                h.end_of_stream = True
            if items != NULL:
                for j in range(self.group.n_item_ids):
                    if self.group.item_ids[j] == item_id:
                        items[j] = <int64_t>value

    cdef inline bint writable(self, const ChunkHeap *ch) noexcept nogil:
        """Whether the heap's chunk is still in this stream's window."""
        return ch.chunk_id >= 0 and <uint64_t>ch.chunk_id >= self.win.head

    cdef void heap_done(self, ChunkHeap *ch, int reason, uint64_t *stats) noexcept nogil:
        """A live heap leaves the window (spead2's heap_ready)."""
        stats[<int>STAT_HEAPS] += 1
        if reason == READY_COMPLETE:
            stats[<int>STAT_HEAPS_COMPLETE] += 1
            if self.writable(ch):
                if not self.group.packet_presence:
                    ch.present[0] = 1
                    stats[<int>STAT_CHUNK_HEAPS_PRESENT] += 1
            elif ch.chunk_id >= 0:
                # Placed, but its chunk left the window first (spead2 counts it so too).
                stats[<int>STAT_CHUNK_HEAPS_TOO_OLD] += 1
            elif ch.empty:
                stats[<int>STAT_CHUNK_HEAPS_REJECTED_SIZE] += 1   # a complete heap of 0 bytes
        elif reason == READY_EVICTED:
            stats[<int>STAT_INCOMPLETE_HEAPS_EVICTED] += 1
        else:
            stats[<int>STAT_INCOMPLETE_HEAPS_FLUSHED] += 1
        ch.h.cnt = -1

    cdef void finish_nogil(self, uint64_t *stats) noexcept nogil:
        cdef size_t i
        if self.win.finished:
            return
        for i in range(self.max_heaps):
            self.live_head += 1
            if self.live_head == self.max_heaps:
                self.live_head = 0
            if self.live[self.live_head].h.cnt != -1:
                self.heap_done(&self.live[self.live_head], READY_FLUSHED, stats)
        pthread_mutex_lock(&self.group.lock)
        self.win.finished = True
        self.group.win_release_below(&self.win, self.win.tail)     # publishes "finished"
        self.group.stream_ended(stats)
        self.group.close_ready(stats)
        pthread_mutex_unlock(&self.group.lock)

    cdef void add_packet(self, const PacketHeader *p, uint64_t *stats) noexcept nogil:
        if p.heap_length < 0:
            stats[<int>STAT_PACKETS_REJECTED_UNSIZED] += 1    # spead2 chunk streams need HEAP_SIZE
            return
        cdef bint whole = p.payload_length == p.heap_length
        if whole:
            stats[<int>STAT_SINGLE_PACKET_HEAPS] += 1
        cdef ChunkHeap *ch = NULL
        cdef size_t i
        cdef int64_t cnt = p.heap_cnt
        if whole:
            pass                # never joins a live heap (spead2), takes a new slot
        elif self.live[self.live_head].h.cnt == cnt:
            ch = &self.live[self.live_head]
        else:
            for i in range(self.max_heaps):
                if self.live[i].h.cnt == cnt:
                    ch = &self.live[i]
                    break
        cdef bint new_heap = ch == NULL
        cdef int64_t items[<int>MAX_PLACE_ITEMS]
        cdef StatIndex verdict
        if new_heap:
            if not self.allow_out_of_order and p.payload_offset != 0:
                stats[<int>STAT_PACKETS_REJECTED_OUT_OF_ORDER] += 1
                return
            self.live_head += 1
            if self.live_head == self.max_heaps:
                self.live_head = 0
            ch = &self.live[self.live_head]
            if ch.h.cnt != -1:
                self.heap_done(ch, READY_EVICTED, stats)
            storage_reset(ch.h.st)
            ch.h.cnt = cnt
            ch.h.heap_length = -1
            ch.h.received_length = 0
            ch.h.min_length = 0
            ch.h.last_offset = 0
            ch.h.heap_address_bits = p.heap_address_bits
            ch.h.n_packets = 0
            ch.h.end_of_stream = False
            ch.chunk_id = -1
            ch.empty = p.heap_length == 0
        verdict = live_heap_accept(&ch.h, p, self.allow_out_of_order, self.max_heap_size, 0)
        if verdict != N_STATS:
            stats[<int>verdict] += 1
            if new_heap:
                ch.h.cnt = -1
            return
        if not new_heap:
            self.scan_pointers(&ch.h, p, NULL)
        else:
            for i in range(self.group.n_item_ids):
                items[i] = -1
            self.scan_pointers(&ch.h, p, items)
            if not ch.empty:
                verdict = self.place(ch, p, items, stats)
                if verdict == N_STATS:
                    stats[<int>STAT_CHUNK_HEAPS_PLACED] += 1
                else:
                    stats[<int>verdict] += 1
        if ch.h.heap_length < 0:
            ch.h.heap_length = p.heap_length
            if ch.h.heap_length > ch.h.min_length:
                ch.h.min_length = ch.h.heap_length
        if self.writable(ch):
            if p.payload_length > 0:
                daqd_copy_payload(ch.dest + p.payload_offset, p.payload,
                                  <size_t>p.payload_length)
                stats[<int>STAT_PAYLOAD_BYTES] += <uint64_t>p.payload_length
            if self.group.packet_presence:
                ch.present[<size_t>p.payload_offset // self.group.packet_presence] = 1
        elif not ch.empty:
            stats[<int>STAT_CHUNK_PACKETS_DISCARDED] += 1
        ch.h.received_length += p.payload_length
        ch.h.last_offset = p.payload_offset
        ch.h.n_packets += 1
        cdef bint end_of_stream = self.stop_on_stop_item and ch.h.end_of_stream
        if ch.h.received_length == ch.h.heap_length and ch.h.received_length == ch.h.min_length:
            if end_of_stream:
                stats[<int>STAT_STOP_HEAPS] += 1
                ch.h.cnt = -1
            else:
                self.heap_done(ch, READY_COMPLETE, stats)
        if end_of_stream:
            self.stopped_flag = True
            self.finish_nogil(stats)

    cdef void add_batch(self, Reader reader, uint64_t *stats) noexcept nogil:
        cdef PacketHeader hdr
        cdef DecodeStatus status
        cdef size_t i, n = reader.n
        for i in range(reader.pos, n):
            if self.stopped_flag or self.win.finished:
                stats[<int>STAT_PACKETS_REJECTED_AFTER_STOP] += n - i
                break
            stats[<int>STAT_PACKETS] += 1
            stats[<int>STAT_BYTES] += reader.pkt_len[i]
            status = decode_packet(reader.pkt_data[i], reader.pkt_len[i], &hdr)
            if status == DECODE_OK and hdr.size != reader.pkt_len[i]:
                status = DECODE_PAYLOAD_LENGTH      # as in heap mode (spead2)
            if status != DECODE_OK:
                stats[<int>decode_status_stat(status)] += 1
                continue
            self.add_packet(&hdr, stats)
        reader.pos = n

    # ------------------------------------------------------------------
    # Python API

    @property
    def stopped(self):
        """Whether a stop item has ended the stream."""
        return self.stopped_flag

    def process(self, Reader reader):
        """Receive and place one batch from `reader` (GIL released throughout).

        Only one thread may call process() (and finish()) on a stream.

        Returns
        -------
        int
            Packets handled (>= 0), or -1 once the reader has ended.
        """
        cdef uint64_t local[<int>N_STATS]
        cdef int rc = 1
        cdef size_t before = reader.pos
        memset(local, 0, sizeof(local))
        cdef bint lossy = not self.group.lossless
        with nogil:
            if not lossy:
                self.sync_with_group(local)
            if reader.pos >= reader.n:
                rc = reader.fill(local)
                before = 0
                if rc > 0:
                    local[<int>STAT_BATCHES] += 1
                    local[<int>STAT_MAX_BATCH] = reader.n
                    if reader.tap_buf != NULL:
                        reader.tap_batch(local)
            if reader.pos < reader.n:
                if lossy:
                    self.set_parked(False, local)
                self.add_batch(reader, local)
                if lossy:
                    self.set_parked(True, local)
            merge_stats(self.counters, local)
        if rc == READ_ERROR:
            raise OSError(reader.errno_value, os.strerror(reader.errno_value))
        if rc == READ_EOF:
            return -1
        return <int>(reader.pos - before) if rc > 0 else 0

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
        while True:
            rc = self.process(reader)
            while (chunk := g.take_ready()) is not None:
                yield chunk
            if rc < 0 or self.stopped_flag:
                break
        self.finish()
        while (chunk := g.take_ready()) is not None:
            yield chunk

    def get(self, timeout=None):
        """The group's next completed chunk (see ChunkGroup.get)."""
        return self.group.get(timeout)

    def __iter__(self):
        return iter(self.group)

    def stats(self):
        """A snapshot of this stream's counters, name -> value."""
        return _stats_dict(self.counters)

    def add_packets(self, packets):
        """Place packets given as bytes objects (tests and tools)."""
        reader = ByteListReader(packets)
        while self.process(reader) >= 0 and not self.stopped_flag:
            pass
