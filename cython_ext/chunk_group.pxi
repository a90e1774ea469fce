# Chunk mode, the chunks: Chunk and ChunkGroup (layout, pool, free and data
# rings, the group's chunk window).  ChunkStream (chunk_stream.pxi) fills them.
#
# The chunk window follows spead2's chunk_stream_state::allocate (4.5.1): at
# most max_chunks chunks are open, head..tail; a heap of a newer chunk opens
# every chunk up to it, closing the oldest ones; a heap older than the head is
# too old; a jump of max_chunks or more closes the whole window and restarts it
# just below the new chunk.  Chunk ids are 0 .. 2**63 - 1 and the window's ends
# are unsigned (the tail may be 2**63), compared by difference, never by sum, so
# no chunk id a hook returns can overflow them.  daqd differs twice: the window
# starts at the first heap's chunk (spead2 opens every chunk from 0 up to it,
# empty chunks that would read as loss), and a run of `too_old_reset`
# consecutive too-old heaps (a sender restarted, a timestamp wrapped) re-anchors
# the window at the new timestamps, where spead2 would call every later heap too
# old.
#
# Chunks belong to a ChunkGroup: the pool (allocated once), the free ring of
# unused chunks, the data ring of completed ones, and the group's window.  Any
# number of ChunkStreams (one per NIC, per polarisation, ...) fill the same
# chunks, each from its own thread, as spead2's chunk stream groups do.  Each
# stream keeps its own window of the chunks it writes to (a StreamWindow, of
# stream_chunks chunks, max_chunks unless narrower), holding a reference
# ("writer") on each, so the group lock is taken once per chunk, never per
# heap.  A chunk the group evicts is handed to the data ring
# only when no stream writes to it any more.  In "lossless" eviction the
# evicting stream waits until every other stream has moved past it.  In "lossy"
# eviction nobody waits: a stream that is not inside a batch (idle, blocked on
# its source, or waiting on the group) is "parked", and the evicting stream
# lets go of the evicted chunks for it at once; a stream inside a batch lets go
# of them at the end of the batch.  Its later heaps for them are too old.
#
# A stop heap on a capture-boundary stream (stop_boundary) puts the stream "at
# a boundary": it lets go of its chunks and holds no lossless eviction back.
# Once every stream of the group is at a boundary or finished (the streams of
# one source, StreamWindow.boundary_key, count as one), the group closes the
# capture: every open chunk is completed, the window un-anchored,
# each stream starts afresh (boundary_reached).  Until then a stream at its
# boundary writes to no chunk the group still has open (too old).
# A stream inside a batch then (another receive thread of the source) keeps
# the capture's chunks to the end of its batch (boundary_held); capture_end
# marks the capture's last chunk in the data ring, which no get_batch passes
# (capture_untaken: the consumer closes the capture's files at 0).
#
# Every wait on the group (a free chunk, a lossless eviction) releases the group
# lock, so after it nothing is assumed: ChunkGroup.extend() re-reads the whole
# window state and starts over.  A lone ChunkStream is a group of one.

cimport cython
from cpython.pycapsule cimport (
    PyCapsule_New, PyCapsule_SetContext, PyCapsule_IsValid, PyCapsule_GetPointer,
    PyCapsule_GetContext,
)

from libc.string cimport memchr
from libc.stdint cimport UINT64_MAX
from libc.errno cimport ETIMEDOUT

import numpy as np

cdef extern from "daqd_place.h" nogil:
    ctypedef struct daqd_place_data:
        const uint8_t *packet
        size_t packet_size
        const int64_t *items
        size_t n_items
        int64_t heap_length
        int64_t chunk_id
        size_t heap_index
        size_t heap_offset
        uint64_t *extra
        size_t n_extra
        uint64_t *counters
        size_t n_counters
    ctypedef void (*daqd_place_fn)(daqd_place_data *data, void *user_data)
    const char *DAQD_PLACE_CAPSULE
    const char *DAQD_PLACE_CAPSULE_V2
    enum: DAQD_PLACE_MAX_COUNTERS


#: The placement hook ABI versions this build loads (daqd_place.h), by capsule name.
PLACE_CAPSULES = {1: DAQD_PLACE_CAPSULE.decode(), 2: DAQD_PLACE_CAPSULE_V2.decode()}
#: Counters a placement hook may declare (daqd_place.h DAQD_PLACE_MAX_COUNTERS).
MAX_PLACE_COUNTERS = DAQD_PLACE_MAX_COUNTERS


def place_hook_version(place):
    """The ABI version of a placement hook: 1 or 2 (the name of its capsule).

    Parameters
    ----------
    place : capsule or tuple
        A PyCapsule, or a tuple whose first element is one (the others keep
        alive what its context points to).

    Raises
    ------
    TypeError
        `place` is neither, or its capsule has a name this build does not know.
    """
    capsule = place[0] if isinstance(place, tuple) and place else place
    if PyCapsule_IsValid(capsule, DAQD_PLACE_CAPSULE):
        return 1
    if PyCapsule_IsValid(capsule, DAQD_PLACE_CAPSULE_V2):
        return 2
    raise TypeError("place must be a PyCapsule named "
                    + " or ".join(repr(n) for n in PLACE_CAPSULES.values())
                    + f" or a tuple starting with one, not {type(capsule).__name__}")


def check_place_counters(names, int version):
    """Check the names of a hook's counters; return them as a tuple.

    Each is a lower-case identifier (``[a-z][a-z0-9_]*``, at most 48
    characters), once; at most MAX_PLACE_COUNTERS; only a version 2 hook has any.
    """
    names = tuple(names)
    if names and version < 2:
        raise ValueError(f"a version {version} placement hook ({PLACE_CAPSULES[version]!r}) "
                         f"has no counters; declare them with {PLACE_CAPSULES[2]!r}")
    if len(names) > DAQD_PLACE_MAX_COUNTERS:
        raise ValueError(f"at most {DAQD_PLACE_MAX_COUNTERS} placement hook counters, "
                         f"not {len(names)}")
    for name in names:
        if not (isinstance(name, str) and 0 < len(name) <= 48 and name[0].isascii()
                and name[0].islower()
                and all(c.isascii() and (c.islower() or c.isdigit() or c == "_")
                        for c in name)):
            raise ValueError(f"placement hook counter {name!r}: not a lower-case "
                             "identifier of at most 48 characters")
    if len(set(names)) != len(names):
        raise ValueError(f"placement hook counters named twice: {', '.join(names)}")
    return names


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_condattr_init(pthread_condattr_t *a)
    int pthread_condattr_setclock(pthread_condattr_t *a, int clock)
    int pthread_condattr_destroy(pthread_condattr_t *a)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)

cdef extern from "daqd_spin.h" nogil:
    void daqd_cpu_relax()
    int daqd_mutex_init(pthread_mutex_t *m)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)
    enum: MADV_HUGEPAGE

cdef enum:
    SPIN_PAUSES = 32            # pause instructions between two checks of a spin
    MAX_PLACE_ITEMS = 64
    MAX_GROUP_STREAMS = 64
    HUGE_PAGE = 2 << 20
    CHUNK_FREE = 0
    CHUNK_OPEN = 1              # in the window, being filled
    CHUNK_READY = 2             # in the data ring
    CHUNK_HELD = 3              # handed to the consumer
    TAKE_BATCH = 64             # chunks get_batch takes from the data ring per lock

WHEN_FULL = ("wait", "drop")
#: Most placement and extra items a group reads per heap, and most streams (sources)
#: it takes: daqd.config checks a configuration against them before anything is built.
GROUP_MAX_ITEMS = MAX_PLACE_ITEMS
GROUP_MAX_STREAMS = MAX_GROUP_STREAMS
EVICTION = ("lossless", "lossy")
#: Seconds a stream waiting on the other streams spins before it sleeps (ChunkGroup's `spin`).
DEFAULT_SPIN = 50e-6
#: Most chunks the consumer waits for, once chunks are coming, before it is woken
#: (ChunkGroup's `consumer_batch`: at most this, and half the chunks the pool has beyond
#: the window), and the longest it waits for them (seconds).
CONSUMER_BATCH = 8
cdef double CONSUMER_LINGER_S = 1e-3
CONSUMER_LINGER = CONSUMER_LINGER_S


cdef struct StreamWindow:
    # One stream's window of the group's chunks: chunk ids head..tail-1, each
    # with a writer reference (pool index, -1: the chunk could not be opened).
    # Changed only under the group lock: by its stream, or, while the stream is
    # parked, by the group (lossy eviction).  Its stream reads it without the
    # lock only while not parked.
    uint64_t head
    uint64_t tail
    size_t head_pos
    Py_ssize_t *chunks          # a ring of max_chunks entries
    bint parked                 # lossy group: not inside a batch, writes to no chunk
    bint finished
    # At a capture boundary: the stream had a stop heap and has placed no heap
    # since (its window is empty and holds no lossless eviction back).  Once
    # every stream of the group is at a boundary or finished, the group
    # completes its open chunks and starts afresh (ChunkGroup.boundary_reached).
    bint at_boundary
    # Streams with the same key (>= 0; -1: none) are one source's (its receive
    # threads' sockets): for capture boundaries one stream, so a stop heap on
    # any of them is the source's boundary (ChunkGroup.boundary_reached).
    Py_ssize_t boundary_key
    uint64_t epoch              # the group's `boundaries` when the window was last reset
    size_t slot                 # index in the group's stream_heads and windows
    # The stream's waits on the group (worker_blocked, worker_blocked_ns), kept
    # here rather than in its batch counters so that stats() sees a wait while
    # it lasts: changed by the waiting stream and read by stats(), both under
    # the group lock.
    uint64_t blocked_times      # waits for a free chunk or a lossless eviction
    uint64_t blocked_ns         # their time, the current wait's excepted
    uint64_t blocked_since      # monotonic ns the current wait began, 0: none


cdef inline timespec deadline_after(double seconds) noexcept nogil:
    cdef timespec ts
    cdef uint64_t t = monotonic_ns() + <uint64_t>(seconds * 1e9)
    ts.tv_sec = <long>(t // 1000000000ULL)
    ts.tv_nsec = <long>(t % 1000000000ULL)
    return ts


cdef inline size_t count_zero_bytes(const uint8_t *p, size_t n) noexcept nogil:
    """The bytes of ``p[0:n]`` that are 0, counted eight at a time (a chunk's presence)."""
    cdef size_t i = 0, nonzero = 0
    cdef uint64_t x
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        # The top bit of each byte that is not 0 (no carry leaves a byte), moved to
        # the bottom; the multiplication sums the eight bytes into the top one.
        x = (((x & 0x7F7F7F7F7F7F7F7FULL) + 0x7F7F7F7F7F7F7F7FULL) | x) & 0x8080808080808080ULL
        nonzero += <size_t>(((x >> 7) * 0x0101010101010101ULL) >> 56)
        i += 8
    while i < n:
        nonzero += p[i] != 0
        i += 1
    return n - nonzero


cdef inline int log2_exact(uint64_t x) noexcept nogil:
    """log2(x) when `x` is a power of two, else -1."""
    if x == 0 or (x & (x - 1)) != 0:
        return -1
    cdef int shift = 0
    while x > 1:
        x >>= 1
        shift += 1
    return shift


cdef class ChunkGroup


@cython.final
cdef class Chunk:
    """One chunk of the pool, handed out by a ChunkGroup (or its ChunkStream).

    `data` (heaps_per_chunk, substreams, samples), `present` (heaps_per_chunk,
    substreams[, packets_per_heap]) and `extra` (heaps_per_chunk, substreams,
    len(extra_items)) are views of memory allocated once; a slot whose heap
    did not arrive complete has present == 0 (and zeroed data).  Release the
    chunk (or leave its ``with`` block) to give it back to the pool; the views
    must not be used after that.
    """

    cdef readonly ChunkGroup group
    cdef readonly size_t index
    cdef readonly object data
    cdef readonly object present
    cdef readonly object extra

    @property
    def chunk_id(self):
        """The chunk's number: timestamp // (timestamp_step * heaps_per_chunk)."""
        return self.group.chunk_ids[self.index]

    @property
    def timestamp(self):
        """Timestamp of the chunk's first heap slot."""
        return int(self.group.chunk_ids[self.index]) * int(self.group.chunk_step)

    def release(self):
        """Give the chunk back to the pool's free ring."""
        self.group.release_chunk(self.index)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"<Chunk {self.chunk_id} of pool slot {self.index}>"


@cython.final
cdef class ChunkGroup:
    """The chunks of one or more ChunkStreams: layout, pool, rings and window.

    Parameters
    ----------
    timestamp_item, timestamp_step, heaps_per_chunk, heap_bytes, dtype
        The declarative layout: a heap with timestamp T goes to chunk
        T // step // heaps_per_chunk, slot (T // step) % heaps_per_chunk.
    substream_item, substreams
        Optional second axis: the slot's substream index comes from this item.
    extra_items
        Immediate items whose values are stored per heap in ``extra``
        (2**64 - 1 where the heap's first packet lacks one).
    max_chunks, pool
        Chunks open at once; chunks allocated (pool >= max_chunks).
    stream_chunks
        Each stream's own window: the chunks behind its newest one it may still
        write to (0: max_chunks; at most max_chunks).  spead2 has the two apart
        too (ChunkStreamConfig.max_chunks, ChunkStreamGroupConfig.max_chunks).
        Equal, a lossless group's streams meet at every new chunk (it opens only
        once each stream needs it); narrower, a stream may run up to
        ``max_chunks - stream_chunks`` chunks ahead of the slowest first.
    consumer_batch
        Once the consumer is taking chunks, it is woken when this many are
        ready, or CONSUMER_LINGER (1 ms) after it started waiting, or at once
        when fewer chunks than this are free: one wake-up per batch rather than
        per chunk, for a chunk up to 1 ms later (default: CONSUMER_BATCH, at
        most half the chunks of the pool beyond max_chunks; 1: every chunk at
        once).  A consumer that found no chunk in its last wait is woken by the
        first; a lingering one also as soon as a stream leaves fewer than this
        free (so that no stream waits, or drops, for a chunk it holds back).
    spin
        Seconds a stream that has to wait on the other streams (a lossless
        eviction) spins, yielding its CPU between checks, before it sleeps on
        the group's condition variable: most such waits are shorter than the
        sleep and wake-up (0: sleep at once).  A wait for a free chunk never
        spins (the consumer it waits for may need the CPU).
    when_full, wait_timeout
        No free chunk: "wait" up to wait_timeout seconds for the consumer, then
        drop; "drop" at once.  Both count (worker_blocked, chunk_heaps_no_free_chunk).
    eviction
        "lossless" or "lossy": whether evicting a chunk waits for every stream
        of the group to finish writing to it (see the module comment).
    packet_presence
        0, or a packet payload size: ``present`` then has one byte per packet
        of that size in each heap (spead2's packet presence).
    zero_missing
        Zero the data of slots without a complete heap when a chunk completes
        (declarative layout only: a hook's offsets are its own).
    place, place_items
        A compiled placement hook (a capsule named "daqd.place_v1" or
        "daqd.place_v2", or a tuple starting with one; see daqd_place.h) and
        the immediate items it is given; replaces the timestamp/substream rule.
    place_counters
        Names of a version 2 hook's own counters (spead2's ``add_stat``): the
        hook adds to them, each stream reports them as ``place_<name>``.
    """

    # layout
    cdef readonly uint64_t timestamp_item
    cdef readonly uint64_t timestamp_step
    cdef readonly size_t heaps_per_chunk
    cdef readonly uint64_t substream_item
    cdef readonly size_t substreams
    cdef readonly size_t heap_bytes
    cdef readonly object dtype
    cdef readonly tuple extra_items
    cdef readonly size_t packet_presence
    cdef size_t packets_per_heap        # presence bytes per slot
    cdef bint has_substream
    cdef uint64_t chunk_step            # timestamp span of one chunk
    # Placement without a division where the layout allows (a 64-bit div is
    # tens of cycles): log2 of timestamp_step and heaps_per_chunk when powers
    # of two, else -1 (set_shifts).
    cdef int step_shift
    cdef int chunk_shift
    cdef size_t n_slots                 # heaps_per_chunk * substreams
    cdef size_t chunk_bytes
    cdef size_t chunk_stride
    cdef size_t present_per_chunk
    cdef size_t n_extra
    # placement items: [timestamp, substream?, extras...] or the hook's place_items
    cdef uint64_t item_ids[<int>MAX_PLACE_ITEMS]
    cdef size_t n_item_ids
    cdef bint structure_items           # an item id of HEAP_CNT .. PAYLOAD_LENGTH among them
    cdef daqd_place_fn place_fn
    cdef void *place_user
    cdef readonly tuple place_counters  # the hook's counter names (ABI v2)
    cdef readonly int place_version     # 0: no hook
    cdef object place_keepalive
    cdef readonly bint zero_missing
    # pool
    cdef readonly size_t pool
    cdef object raw                     # owns the data memory
    cdef object present_all
    cdef object extra_all
    cdef uint8_t *data_base
    cdef uint8_t *present_base
    cdef uint64_t *extra_base
    cdef int64_t *chunk_ids
    cdef uint8_t *state
    cdef int *writers                   # streams holding each chunk in their window
    cdef list chunk_objects
    cdef list streams
    # everything below is guarded by lock
    cdef pthread_mutex_t lock
    cdef pthread_cond_t wake_cond       # the window, a stream head or the free ring changed
    cdef pthread_cond_t data_cond
    # The consumer, once chunks are coming (it took one), waits up to
    # CONSUMER_LINGER for consumer_batch of them (lingering), and the streams
    # wake it only then: one wake-up per batch, not per chunk (wait_ready).
    cdef readonly size_t consumer_batch
    cdef bint consumer_active           # get() handed out a chunk since it last found none
    cdef bint consumer_lingering        # the consumer waits for a batch (not for one chunk)
    cdef size_t n_waiting               # streams asleep on wake_cond
    cdef size_t n_spinning              # streams spinning before they sleep (spin_for_wake)
    # wake() calls: a waiter spins on it (read without the lock) before it sleeps
    cdef volatile uint64_t wake_seq
    cdef readonly double spin           # seconds a waiter spins before it sleeps
    cdef bint sync_ready
    # A stream at a chunk change signals the consumer only once it has let go of
    # the lock (lock_deferring / unlock_deferred): signalled with the lock held,
    # the consumer would wake only to sleep again on the lock, and the stream's
    # unlock would have to wake it a second time (two futex wakes per batch).
    cdef bint defer_data_signal         # set by the lock holder, for as long as it holds it
    cdef bint data_signal_pending       # a signal of data_cond deferred to the unlock
    cdef size_t *free_ring
    cdef size_t free_head, free_count
    cdef size_t *data_ring
    cdef size_t data_head, data_count
    cdef size_t *closing                # evicted chunks waiting for their writers
    cdef size_t closing_head, closing_count
    # Chunks handed to the data ring (close_chunk) and taken from it (take_ready*),
    # since the start, and how many had been handed over once every chunk of the
    # last closed capture is (boundary_reached: those handed over by then, and
    # those still in `closing`, held by a stream mid-batch, e.g. another
    # receive thread of a source at its boundary, which leave it first).  A
    # batch taken never goes past capture_end, and the consumer closes the
    # capture's files once chunks_taken reaches it (capture_untaken).
    cdef uint64_t chunks_handed, chunks_taken, capture_end
    cdef readonly size_t max_chunks
    cdef readonly size_t stream_chunks  # a stream's window (<= max_chunks)
    cdef bint anchored
    cdef uint64_t head_chunk, tail_chunk
    cdef size_t head_pos, tail_pos
    cdef Py_ssize_t *window             # pool index per chunk of head..tail, -1: none
    cdef volatile uint64_t head_hint    # head_chunk, read by streams without the lock
    cdef size_t active_streams
    # each stream's window head: 0 before its first heap, UINT64_MAX once finished
    cdef uint64_t stream_heads[<int>MAX_GROUP_STREAMS]
    cdef StreamWindow *windows[<int>MAX_GROUP_STREAMS]
    cdef size_t n_streams
    cdef readonly bint ended            # every stream ended, every chunk handed over
    cdef readonly uint64_t boundaries   # captures the group closed (boundary_reached)
    cdef volatile bint stop_waiting
    cdef readonly bint drop_when_full
    cdef readonly bint lossless
    cdef readonly double wait_timeout

    def __cinit__(self):
        self.sync_ready = False

    def __init__(self, *, uint64_t timestamp_item=0x1600, uint64_t timestamp_step=8192,
                 size_t heaps_per_chunk=64, size_t heap_bytes=8192, dtype="uint8",
                 substream_item=None, size_t substreams=1, extra_items=(),
                 size_t max_chunks=4, size_t pool=16, size_t stream_chunks=0,
                 str when_full="wait",
                 double wait_timeout=1.0, str eviction="lossless", size_t packet_presence=0,
                 zero_missing=None, place=None, place_items=(), place_counters=(),
                 double spin=DEFAULT_SPIN, consumer_batch=None):
        if timestamp_step == 0:
            raise ValueError("timestamp_step must be at least 1")
        if heaps_per_chunk == 0 or substreams == 0 or heap_bytes == 0:
            raise ValueError("heaps_per_chunk, substreams and heap_bytes must be at least 1")
        if max_chunks == 0:
            raise ValueError("max_chunks must be at least 1")
        if pool < max_chunks:
            raise ValueError(f"pool ({pool}) must be at least max_chunks ({max_chunks})")
        if stream_chunks > max_chunks:
            raise ValueError(f"stream_chunks ({stream_chunks}) must be at most max_chunks "
                             f"({max_chunks})")
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {', '.join(WHEN_FULL)}, not {when_full!r}")
        if eviction not in EVICTION:
            raise ValueError(f"eviction must be one of {', '.join(EVICTION)}, not {eviction!r}")
        if wait_timeout < 0:
            raise ValueError("wait_timeout must be >= 0")
        if not 0 <= spin <= 0.01:
            raise ValueError(f"spin must be between 0 and 0.01 seconds, not {spin}")
        self.dtype = np.dtype(dtype)
        if heap_bytes % self.dtype.itemsize:
            raise ValueError(f"heap_bytes ({heap_bytes}) is not a multiple of the "
                             f"{self.dtype} item size ({self.dtype.itemsize})")
        if packet_presence and heap_bytes % packet_presence:
            raise ValueError(f"heap_bytes ({heap_bytes}) is not a multiple of "
                             f"packet_presence ({packet_presence})")
        self.timestamp_item = timestamp_item
        self.timestamp_step = timestamp_step
        self.heaps_per_chunk = heaps_per_chunk
        self.heap_bytes = heap_bytes
        self.has_substream = substream_item is not None
        self.substream_item = substream_item if substream_item is not None else 0
        self.substreams = substreams
        if not self.has_substream and substreams != 1 and place is None:
            raise ValueError("substreams > 1 needs a substream_item (or a place hook)")
        self.extra_items = tuple(int(x) for x in extra_items)
        self.n_extra = len(self.extra_items)
        self.packet_presence = packet_presence
        self.packets_per_heap = heap_bytes // packet_presence if packet_presence else 1
        self.chunk_step = timestamp_step * heaps_per_chunk
        self.step_shift = log2_exact(timestamp_step)
        self.chunk_shift = log2_exact(heaps_per_chunk)
        self.n_slots = heaps_per_chunk * substreams
        self.chunk_bytes = self.n_slots * heap_bytes
        self.chunk_stride = (self.chunk_bytes + 4095) & ~(<size_t>4095)
        self.present_per_chunk = self.n_slots * self.packets_per_heap
        self.max_chunks = max_chunks
        self.stream_chunks = stream_chunks or max_chunks
        self.pool = pool
        self.drop_when_full = when_full == "drop"
        self.lossless = eviction == "lossless"
        self.wait_timeout = wait_timeout
        self.spin = spin
        if consumer_batch is None:
            # Lossy groups too: what two unpaced streams from memory lose (as too
            # old) is the same with a wake-up per chunk (README, "The chunk group:
            # lossy batches, boundaries per source").
            consumer_batch = min(CONSUMER_BATCH, max(1, (int(pool) - int(max_chunks)) // 2))
        if not 1 <= consumer_batch <= pool:
            raise ValueError(f"consumer_batch must be between 1 and pool ({pool}), "
                             f"not {consumer_batch}")
        self.consumer_batch = consumer_batch
        self.zero_missing = (place is None) if zero_missing is None else zero_missing
        self.streams = []
        self.setup_items(place, place_items, place_counters)
        self.allocate_pool()
        self.allocate_state()
        daqd_copy_init()

    cdef setup_items(self, place, place_items, place_counters):
        ids = list(place_items) if place is not None else (
            [self.timestamp_item] + ([self.substream_item] if self.has_substream else []))
        ids += list(self.extra_items)
        if len(ids) > MAX_PLACE_ITEMS:
            raise ValueError(f"at most {MAX_PLACE_ITEMS} placement and extra items")
        self.n_item_ids = len(ids)
        self.structure_items = False
        for i, item in enumerate(ids):
            self.item_ids[i] = item
            if HEAP_CNT_ID <= item <= PAYLOAD_LENGTH_ID:
                self.structure_items = True
        self.place_counters = ()
        self.place_version = 0
        if place is None:
            if tuple(place_counters):
                raise ValueError("place_counters without a place hook")
            return
        # A capsule, or (as for spead2) a tuple whose first element is the
        # capsule and whose other elements own whatever the context points to.
        capsule = place[0] if isinstance(place, tuple) and place else place
        version = place_hook_version(place)
        self.place_counters = check_place_counters(place_counters, version)
        name = DAQD_PLACE_CAPSULE if version == 1 else DAQD_PLACE_CAPSULE_V2
        self.place_fn = <daqd_place_fn>PyCapsule_GetPointer(capsule, name)
        self.place_user = PyCapsule_GetContext(capsule)
        self.place_version = version
        self.place_keepalive = place

    cdef allocate_pool(self):
        # One block for every chunk's data, aligned to a huge page (and each
        # chunk to a page) so copies are aligned and THP can back it; touched
        # once now, so the first heaps do not pay for page faults.
        cdef size_t total = self.pool * self.chunk_stride
        self.raw = np.empty(total + HUGE_PAGE, np.uint8)
        cdef uint8_t[::1] raw_view = self.raw
        cdef size_t addr = <size_t>&raw_view[0]
        cdef size_t skip = (HUGE_PAGE - addr % HUGE_PAGE) % HUGE_PAGE
        self.data_base = &raw_view[0] + skip
        with nogil:
            madvise(self.data_base, total - total % HUGE_PAGE, MADV_HUGEPAGE)
            memset(self.data_base, 0, total)
        present_shape = (self.pool, self.heaps_per_chunk, self.substreams)
        if self.packet_presence:
            present_shape += (self.packets_per_heap,)
        self.present_all = np.zeros(present_shape, np.uint8)
        self.extra_all = np.zeros(
            (self.pool, self.heaps_per_chunk, self.substreams, self.n_extra), np.uint64)
        cdef uint8_t[::1] present_view = self.present_all.reshape(-1)
        self.present_base = &present_view[0]
        cdef uint64_t[::1] extra_view
        if self.n_extra:
            extra_view = self.extra_all.reshape(-1)
            self.extra_base = &extra_view[0]
        samples = self.heap_bytes // self.dtype.itemsize
        self.chunk_objects = []
        cdef Chunk c
        cdef size_t i
        for i in range(self.pool):
            c = Chunk.__new__(Chunk)
            c.group = self
            c.index = i
            start = skip + i * self.chunk_stride
            c.data = self.raw[start:start + self.chunk_bytes].view(self.dtype).reshape(
                self.heaps_per_chunk, self.substreams, samples)
            c.present = self.present_all[i]
            c.extra = self.extra_all[i]
            self.chunk_objects.append(c)

    cdef allocate_state(self):
        self.window = <Py_ssize_t *>malloc(self.max_chunks * sizeof(Py_ssize_t))
        self.chunk_ids = <int64_t *>malloc(self.pool * sizeof(int64_t))
        self.state = <uint8_t *>malloc(self.pool)
        self.writers = <int *>malloc(self.pool * sizeof(int))
        self.free_ring = <size_t *>malloc(self.pool * sizeof(size_t))
        self.data_ring = <size_t *>malloc(self.pool * sizeof(size_t))
        self.closing = <size_t *>malloc(self.pool * sizeof(size_t))
        if (self.window == NULL or self.chunk_ids == NULL or self.state == NULL
                or self.writers == NULL or self.free_ring == NULL or self.data_ring == NULL
                or self.closing == NULL):
            raise MemoryError()
        cdef size_t i
        for i in range(self.max_chunks):
            self.window[i] = -1
        for i in range(self.pool):
            self.chunk_ids[i] = -1
            self.state[i] = CHUNK_FREE
            self.writers[i] = 0
            self.free_ring[i] = i
        self.free_count = self.pool
        cdef pthread_condattr_t attr
        daqd_mutex_init(&self.lock)        # adaptive: spins briefly when taken
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&self.wake_cond, &attr)
        pthread_cond_init(&self.data_cond, &attr)
        pthread_condattr_destroy(&attr)
        self.sync_ready = True

    def __dealloc__(self):
        free(self.window)
        free(self.chunk_ids)
        free(self.state)
        free(self.writers)
        free(self.free_ring)
        free(self.data_ring)
        free(self.closing)
        if self.sync_ready:
            pthread_cond_destroy(&self.wake_cond)
            pthread_cond_destroy(&self.data_cond)
            pthread_mutex_destroy(&self.lock)

    # ------------------------------------------------------------------
    # Pool and rings (lock held)

    cdef inline void signal_data(self) noexcept nogil:
        """Wake the consumer (data_cond), at once or, deferring, once the lock is let go of."""
        if self.defer_data_signal:
            self.data_signal_pending = True
        else:
            pthread_cond_signal(&self.data_cond)

    cdef inline void lock_deferring(self) noexcept nogil:
        """Take the lock; the consumer's wake-ups wait for unlock_deferred."""
        pthread_mutex_lock(&self.lock)
        self.defer_data_signal = True

    cdef inline void unlock_deferred(self) noexcept nogil:
        """Let go of a lock_deferring lock, then wake the consumer if need be."""
        cdef bint pending = self.data_signal_pending
        self.defer_data_signal = False
        self.data_signal_pending = False
        pthread_mutex_unlock(&self.lock)
        if pending:
            pthread_cond_signal(&self.data_cond)

    cdef inline void wake(self) noexcept nogil:
        """Wake every stream waiting on the group: something they wait for changed."""
        self.wake_seq += 1                  # ends the spin of a waiter not yet asleep
        if self.n_waiting:
            pthread_cond_broadcast(&self.wake_cond)

    cdef int wait_for_change(self, StreamWindow *by, const timespec *until,
                             uint64_t *stats, bint spin) noexcept nogil:
        """Wait (the lock released) until woken or `until`; 0, or ETIMEDOUT.

        With `spin`, spin first (spin_for_wake): for a wait on the other
        streams, which run on CPUs of their own.  A wait for a free chunk
        sleeps at once: the consumer it waits for may need this very CPU.

        The waiting stream writes to no chunk meanwhile, so it is parked: it
        lets go of the chunks already evicted first (they may be what the
        others, or the consumer, wait for), and a lossy eviction may let go of
        more for it while it waits.
        """
        cdef bint parked = False
        cdef bint deferring = self.defer_data_signal
        cdef int rc
        if by != NULL:
            if by.head < self.head_chunk and by.head < by.tail:
                self.win_release_below(by, self.head_chunk)
                self.close_ready(stats)
            parked = by.parked
            by.parked = True
            by.blocked_since = monotonic_ns()
        # The lock is let go of: the consumer is woken now (others take the lock meanwhile).
        self.defer_data_signal = False
        if self.data_signal_pending:
            self.data_signal_pending = False
            pthread_cond_signal(&self.data_cond)
        if spin and self.spin_for_wake(until):
            rc = 0
        else:
            self.n_waiting += 1
            rc = pthread_cond_timedwait(&self.wake_cond, &self.lock, until)
            self.n_waiting -= 1
        self.defer_data_signal = deferring
        if by != NULL:
            by.parked = parked
            by.blocked_ns += monotonic_ns() - by.blocked_since
            by.blocked_since = 0
        return rc

    cdef bint spin_for_wake(self, const timespec *deadline) noexcept nogil:
        """Spin (the lock released) up to `spin` seconds, and not past `deadline`, for
        a wake(); True if one came.

        The waits between receive threads are mostly shorter than a sleep on
        the condition variable and the wake-up that ends it (daqd_spin.h).
        The spinner yields its CPU between checks, so a thread it waits for
        that shares the CPU (the consumer) still runs.  Either way the caller
        holds the lock again on return; a wake() after the last check finds it
        asleep (n_waiting), as the lock is held from that check to the sleep.
        """
        cdef uint64_t seq = self.wake_seq
        cdef uint64_t now, until
        cdef int i
        if self.spin <= 0 or self.stop_waiting:
            return False
        self.n_spinning += 1
        pthread_mutex_unlock(&self.lock)
        now = monotonic_ns()
        until = now + <uint64_t>(self.spin * 1e9)
        if <uint64_t>deadline.tv_sec * 1000000000ULL + <uint64_t>deadline.tv_nsec < until:
            until = <uint64_t>deadline.tv_sec * 1000000000ULL + <uint64_t>deadline.tv_nsec
        while self.wake_seq == seq and not self.stop_waiting and now < until:
            for i in range(SPIN_PAUSES):
                daqd_cpu_relax()
            if self.wake_seq != seq:
                break
            sched_yield()
            now = monotonic_ns()
        pthread_mutex_lock(&self.lock)
        self.n_spinning -= 1
        return self.wake_seq != seq or self.stop_waiting

    cdef inline void note_blocked(self, StreamWindow *by, uint64_t *stats) noexcept nogil:
        """A stream starts waiting on the group (counted once per chunk it waits for)."""
        if by != NULL:
            by.blocked_times += 1
        else:
            stats[<int>STAT_WORKER_BLOCKED] += 1

    cdef bint wait_blocked(self, StreamWindow *by, bint blocked, uint64_t *stats) noexcept nogil:
        """Wait a poll period for the window to move (lossless eviction, a jump);
        the first wait for a chunk counts the stream as blocked.  Returns True."""
        cdef timespec until
        if not blocked:
            self.note_blocked(by, stats)
        until = deadline_after(0.2)
        self.wait_for_change(by, &until, stats, True)
        return True

    cdef Py_ssize_t take_free(self, uint64_t chunk_id) noexcept nogil:
        """A chunk from the free ring for `chunk_id`, or -1 if it is empty."""
        cdef Py_ssize_t c
        if self.free_count == 0:
            return -1
        c = <Py_ssize_t>self.free_ring[self.free_head]
        self.free_head = (self.free_head + 1) % self.pool
        self.free_count -= 1
        self.state[c] = CHUNK_OPEN
        self.chunk_ids[c] = <int64_t>chunk_id
        return c

    cdef void close_chunk(self, size_t c, uint64_t *stats) noexcept nogil:
        """Account for a chunk's slots and hand it to the data ring."""
        cdef uint8_t *present = self.present_base + c * self.present_per_chunk
        cdef uint8_t *data = self.data_base + c * self.chunk_stride
        cdef size_t i, missing = 0
        cdef size_t unit = self.heap_bytes // self.packets_per_heap
        if self.packet_presence:
            # Count slots, not packets: a slot is missing if any packet is.
            for i in range(self.n_slots):
                if memchr(present + i * self.packets_per_heap, 0, self.packets_per_heap) != NULL:
                    missing += 1
        else:
            missing = count_zero_bytes(present, self.present_per_chunk)
        if missing and self.zero_missing:
            for i in range(self.present_per_chunk):
                if not present[i]:
                    memset(data + i * unit, 0, unit)
        stats[<int>STAT_CHUNK_SLOTS_MISSING] += missing
        stats[<int>STAT_CHUNKS_COMPLETED] += 1
        daqd_copy_fence()       # streaming stores visible before another thread reads
        self.state[c] = CHUNK_READY
        self.data_ring[(self.data_head + self.data_count) % self.pool] = c
        self.data_count += 1
        self.chunks_handed += 1
        if (not self.consumer_lingering or self.data_count >= self.consumer_batch
                or self.free_count < self.consumer_batch):
            self.signal_data()

    cdef void close_ready(self, uint64_t *stats) noexcept nogil:
        """Hand evicted chunks nobody writes to any more to the data ring, in order."""
        cdef size_t c
        while self.closing_count:
            c = self.closing[self.closing_head]
            if self.writers[c] > 0:
                break
            self.closing_head = (self.closing_head + 1) % self.pool
            self.closing_count -= 1
            self.close_chunk(c, stats)

    cdef uint64_t lowest_stream_head(self) noexcept nogil:
        cdef uint64_t low = UINT64_MAX
        cdef size_t i
        for i in range(self.n_streams):
            if self.stream_heads[i] < low:
                low = self.stream_heads[i]
        return low

    # ------------------------------------------------------------------
    # Stream windows (lock held)

    cdef void win_publish(self, StreamWindow *w) noexcept nogil:
        """Record how far a stream has moved on (lossless eviction waits on it)."""
        cdef uint64_t head = UINT64_MAX if w.finished or w.at_boundary else w.head
        if self.stream_heads[w.slot] != head:
            self.stream_heads[w.slot] = head
            self.wake()

    cdef void win_release_below(self, StreamWindow *w, uint64_t chunk_id) noexcept nogil:
        """Let go of a stream's chunks older than `chunk_id`."""
        cdef Py_ssize_t c
        while w.head < w.tail and w.head < chunk_id:
            c = w.chunks[w.head_pos]
            if c >= 0:
                self.writers[c] -= 1
            w.chunks[w.head_pos] = -1
            w.head += 1
            w.head_pos += 1
            if w.head_pos == self.max_chunks:
                w.head_pos = 0
        if w.head == w.tail and w.head < chunk_id:
            w.head = w.tail = chunk_id
            w.head_pos = 0
        self.win_publish(w)

    cdef void win_acquire_to(self, StreamWindow *w, uint64_t chunk_id) noexcept nogil:
        """Extend a stream's window to `chunk_id` (head_chunk <= chunk_id < tail_chunk):
        it holds at most stream_chunks chunks (its ring has room for max_chunks)."""
        cdef uint64_t width = self.stream_chunks
        cdef uint64_t low = chunk_id + 1 - width if chunk_id >= width else 0
        cdef size_t pos
        cdef Py_ssize_t c
        if low < self.head_chunk:
            low = self.head_chunk
        # Afterwards head >= low >= head_chunk, so head..chunk_id lies in the group's window.
        self.win_release_below(w, low)
        while w.tail <= chunk_id:
            c = self.window_chunk(w.tail)
            if c >= 0:
                self.writers[c] += 1
            pos = <size_t>(w.tail - w.head) + w.head_pos
            if pos >= self.max_chunks:
                pos -= self.max_chunks
            w.chunks[pos] = c
            w.tail += 1

    cdef void release_parked(self) noexcept nogil:
        """Lossy eviction: let go of evicted chunks for every parked stream."""
        cdef size_t i
        cdef StreamWindow *w
        for i in range(self.n_streams):
            w = self.windows[i]
            if w.parked and w.head < self.head_chunk and w.head < w.tail:
                self.win_release_below(w, self.head_chunk)

    # ------------------------------------------------------------------
    # Window (lock held)

    cdef void evict_head(self, uint64_t *stats) noexcept nogil:
        """Move the oldest chunk out of the window, to the data ring once nobody
        writes to it."""
        cdef Py_ssize_t c = self.window[self.head_pos]
        if c >= 0:
            self.closing[(self.closing_head + self.closing_count) % self.pool] = <size_t>c
            self.closing_count += 1
        self.window[self.head_pos] = -1
        self.head_chunk += 1
        self.head_hint = self.head_chunk
        self.head_pos += 1
        if self.head_pos == self.max_chunks:
            self.head_pos = 0
        if not self.lossless:
            self.release_parked()
        self.close_ready(stats)
        self.wake()

    cdef void reanchor(self, uint64_t chunk_id, uint64_t *stats) noexcept nogil:
        """Evict every open chunk and start the window afresh at `chunk_id`
        (too_old_reset, in a group of one stream)."""
        while self.head_chunk != self.tail_chunk:
            self.evict_head(stats)
        self.head_chunk = self.tail_chunk = chunk_id
        self.head_hint = chunk_id
        self.head_pos = self.tail_pos = 0

    cdef void extend(self, StreamWindow *by, uint64_t chunk_id, uint64_t *stats) noexcept nogil:
        """Open chunks up to `chunk_id`, evicting the oldest (spead2's get_chunk).

        Returns once chunk_id < tail_chunk (it may also have fallen below
        head_chunk meanwhile: too old).  Every wait releases the lock, so each
        step re-reads the window from scratch.  Lossless, the head never
        passes a chunk some stream has not moved past (spead2: the group's
        head is the lowest of its streams' heads); lossy, it moves regardless.
        """
        cdef uint64_t max_chunks = self.max_chunks
        # the first chunk of the window that ends at chunk_id
        cdef uint64_t target = chunk_id - (max_chunks - 1) if chunk_id >= max_chunks - 1 else 0
        cdef uint64_t low
        cdef bint blocked = False, have_deadline = False, timed_out = False
        cdef bint gated
        cdef timespec until
        cdef Py_ssize_t c
        while True:
            if not self.anchored:
                # The first heap, or the first after a capture boundary (also one
                # that closed while this stream waited).
                self.anchored = True
                self.head_chunk = self.tail_chunk = chunk_id
                self.head_hint = chunk_id
                self.head_pos = self.tail_pos = 0
            if chunk_id < self.tail_chunk:
                break
            if self.head_chunk != self.tail_chunk and (
                    chunk_id - self.tail_chunk >= max_chunks
                    or self.tail_chunk - self.head_chunk == max_chunks):
                # The head chunk has to leave.  This stream first lets go of
                # every chunk it will not need, as spead2's stream flushes its
                # own window before asking the group.
                if by != NULL:
                    self.win_release_below(by, target)
                if (self.lossless and not self.stop_waiting
                        and self.lowest_stream_head() <= self.head_chunk):
                    blocked = self.wait_blocked(by, blocked, stats)
                    continue
                self.evict_head(stats)
                continue
            if chunk_id - self.tail_chunk >= max_chunks:
                # A jump: the (now empty) window moves on to end at chunk_id,
                # lossless no further than every stream has moved.
                if by != NULL:
                    self.win_release_below(by, target)
                low = target
                gated = self.lossless and not self.stop_waiting
                if gated:
                    low = self.lowest_stream_head()
                    if low > target:
                        low = target
                if low > self.head_chunk:
                    self.head_chunk = self.tail_chunk = low
                    self.head_hint = low
                    self.head_pos = self.tail_pos = 0
                    self.wake()
                    continue
                blocked = self.wait_blocked(by, blocked, stats)
                continue
            if self.free_count == 0 and self.consumer_lingering:
                self.signal_data()      # the consumer lingers no more
            if (self.free_count == 0 and not self.drop_when_full and not self.stop_waiting
                    and not timed_out):
                if not have_deadline:
                    if not blocked:
                        self.note_blocked(by, stats)
                        blocked = True
                    until = deadline_after(self.wait_timeout)
                    have_deadline = True
                if self.wait_for_change(by, &until, stats, False) == ETIMEDOUT:
                    timed_out = True
                continue
            c = self.take_free(self.tail_chunk)
            if self.consumer_lingering and self.free_count < self.consumer_batch:
                # The free ring runs low: the consumer takes what is ready now,
                # before a stream has to wait (or drop) for a chunk it holds back.
                self.signal_data()
            self.window[self.tail_pos] = c
            self.tail_chunk += 1
            self.tail_pos += 1
            if self.tail_pos == self.max_chunks:
                self.tail_pos = 0
            self.wake()         # streams waiting for this very chunk

    cdef inline Py_ssize_t window_chunk(self, uint64_t chunk_id) noexcept nogil:
        """The pool index of a chunk in head..tail (or -1)."""
        cdef size_t pos = <size_t>(chunk_id - self.head_chunk) + self.head_pos
        if pos >= self.max_chunks:
            pos -= self.max_chunks
        return self.window[pos]

    cdef bint boundary_reached(self, uint64_t *stats) noexcept nogil:
        """Close the capture if every stream is at a capture boundary or finished
        (one at least at a boundary; the streams of one source, `boundary_key`,
        count as one, at a boundary once any of them is): every open chunk is completed, the window
        un-anchored (the next heap, whatever its chunk id, starts a new one),
        and each stream starts afresh, as a new one (its head 0, so a lossless
        eviction waits for its first heap; its window reset by its next heap,
        `ChunkStream.sync_epoch`).  A stream whose stop heap never comes (a dead
        source) keeps this from happening: the group's window stays where it
        was, and later heaps behind it are counted as too old.  Returns True
        when the capture was closed."""
        cdef size_t i
        cdef bint any_boundary = False
        cdef StreamWindow *w
        for i in range(self.n_streams):
            w = self.windows[i]
            if w.finished:
                continue
            if w.at_boundary:
                any_boundary = True
            elif not self.source_at_boundary(w.boundary_key):
                return False
        if not any_boundary:
            return False
        # Every evicted chunk goes to the data ring once nobody writes to it: the
        # streams at a boundary hold none; another stream of a source at its
        # boundary (a receive thread whose socket had no stop heap) lets go of
        # its chunks here if parked, else at the end of its batch (and forgets
        # its heaps' places: ChunkStream.sync_epoch).
        while self.head_chunk != self.tail_chunk:
            self.evict_head(stats)
        for i in range(self.n_streams):
            w = self.windows[i]
            if w.parked and not w.finished and w.head < w.tail:
                self.win_release_below(w, w.tail)
        self.close_ready(stats)
        # What is left in `closing` (the window is empty) is the closed
        # capture's, still held by streams mid-batch; later evictions queue
        # behind it.
        self.capture_end = self.chunks_handed + self.closing_count
        self.anchored = False
        self.boundaries += 1
        for i in range(self.n_streams):
            w = self.windows[i]
            if not w.finished:
                w.at_boundary = False
                self.stream_heads[i] = 0
        self.wake()
        return True

    cdef bint source_at_boundary(self, Py_ssize_t key) noexcept nogil:
        """Whether a stream of source `key` (>= 0) that has not finished is at a boundary."""
        cdef size_t i
        cdef StreamWindow *w
        if key < 0:
            return False
        for i in range(self.n_streams):
            w = self.windows[i]
            if w.boundary_key == key and w.at_boundary and not w.finished:
                return True
        return False

    cdef void stream_ended(self, uint64_t *stats) noexcept nogil:
        """One stream has finished; after the last one every chunk is handed over."""
        if self.active_streams > 0:
            self.active_streams -= 1
        if self.active_streams == 0:
            while self.head_chunk != self.tail_chunk:
                self.evict_head(stats)
            self.close_ready(stats)
            self.ended = True
            pthread_cond_broadcast(&self.data_cond)
        self.wake()

    # ------------------------------------------------------------------
    # Consumer side (Python)

    cdef int release_chunk(self, size_t c) except -1:
        if c >= self.pool or self.state[c] != CHUNK_HELD:
            raise RuntimeError(f"chunk {c} released twice or never handed out")
        # With the GIL held: the work is short (the lock is only ever held
        # briefly, by threads that never wait for the GIL meanwhile), and a
        # thread that gave the GIL up here would wait for it again behind the
        # other Python threads (the consumer's and flusher's per-chunk calls).
        self.clear_chunk(c)
        pthread_mutex_lock(&self.lock)
        self.state[c] = CHUNK_FREE
        self.push_free(c)
        self.wake()
        pthread_mutex_unlock(&self.lock)
        return 0

    cdef inline void clear_chunk(self, size_t c) noexcept nogil:
        """Zero a released chunk's presence and extra items (its data is overwritten)."""
        memset(self.present_base + c * self.present_per_chunk, 0, self.present_per_chunk)
        if self.n_extra:
            memset(self.extra_base + c * self.n_slots * self.n_extra, 0,
                   self.n_slots * self.n_extra * sizeof(uint64_t))

    cdef inline void push_free(self, size_t c) noexcept nogil:
        """(Lock held.)  Put released chunk `c` at the end of the free ring."""
        self.chunk_ids[c] = -1
        self.free_ring[(self.free_head + self.free_count) % self.pool] = c
        self.free_count += 1

    cdef int release_chunks(self, list chunks) except -1:
        """Give every chunk of `chunks` back to the free ring under one lock (release_many).

        Checked first, all of them (a Chunk of this group, handed out, once in
        the list), so that an error releases none.  A chunk's state is set to
        CHUNK_FREE by the check (nothing reads the state of a held chunk but
        the consumer, which holds the GIL here) and set back on an error.
        """
        cdef Py_ssize_t i, j, n = len(chunks)
        for i in range(n):
            item = chunks[i]
            if type(item) is not Chunk or (<Chunk>item).group is not self \
                    or self.state[(<Chunk>item).index] != CHUNK_HELD:
                for j in range(i):
                    self.state[(<Chunk>chunks[j]).index] = CHUNK_HELD
                if type(item) is not Chunk:
                    raise TypeError(f"release_many takes Chunks, not {type(item).__name__}")
                if (<Chunk>item).group is not self:
                    raise ValueError(f"{item!r} is another group's chunk")
                raise RuntimeError(f"chunk {(<Chunk>item).index} released twice or never "
                                   "handed out")
            self.state[(<Chunk>item).index] = CHUNK_FREE
        for i in range(n):
            self.clear_chunk((<Chunk>chunks[i]).index)
        pthread_mutex_lock(&self.lock)          # the GIL kept: see release_chunk
        for i in range(n):
            self.push_free((<Chunk>chunks[i]).index)
        if n:
            self.wake()
        pthread_mutex_unlock(&self.lock)
        return 0

    cdef int wait_ready(self, bint forever, const timespec *until) noexcept nogil:
        """(Lock held.)  Wait until a chunk is ready or every stream has ended, or
        `until` unless `forever`; 0, or ETIMEDOUT.

        A consumer that took a chunk last time lingers first: it waits up to
        CONSUMER_LINGER (and not past `until`) for consumer_batch chunks, and
        the streams signal it only when there are that many, or fewer free
        chunks than that (close_chunk, or a stream taking a free chunk in
        extend), so that at high rates it is woken once per batch and
        the streams never wait (or drop) for a chunk it holds back.  If none came, it waits for the
        first, and the streams signal it with each chunk.
        """
        cdef timespec t
        cdef int rc = 0
        if self.consumer_active and self.consumer_batch > 1:
            t = deadline_after(CONSUMER_LINGER_S)
            if not forever and (until.tv_sec < t.tv_sec or (
                    until.tv_sec == t.tv_sec and until.tv_nsec < t.tv_nsec)):
                t = until[0]
            self.consumer_lingering = True
            while (self.data_count < self.consumer_batch
                   and self.free_count >= self.consumer_batch and not self.ended and rc == 0):
                rc = pthread_cond_timedwait(&self.data_cond, &self.lock, &t)
            self.consumer_lingering = False
            if self.data_count or self.ended:
                return 0
            self.consumer_active = False
            rc = 0
        while self.data_count == 0 and not self.ended and rc == 0:
            if forever:
                t = deadline_after(0.2)
                pthread_cond_timedwait(&self.data_cond, &self.lock, &t)
            else:
                rc = pthread_cond_timedwait(&self.data_cond, &self.lock, until)
        return rc

    cdef Chunk take_ready(self):
        """The next chunk of the data ring, or None."""
        cdef Py_ssize_t c = -1
        pthread_mutex_lock(&self.lock)          # the GIL kept: see release_chunk
        if self.data_count:
            c = <Py_ssize_t>self.data_ring[self.data_head]
            self.data_head = (self.data_head + 1) % self.pool
            self.data_count -= 1
            self.chunks_taken += 1
            self.state[c] = CHUNK_HELD
            self.consumer_active = True
        pthread_mutex_unlock(&self.lock)
        return self.chunk_objects[c] if c >= 0 else None

    cdef list take_ready_batch(self, size_t most):
        """Every chunk of the data ring, oldest first (at most `most`, 0: no limit), under
        one lock per TAKE_BATCH of them; an empty list if none."""
        cdef size_t taken[<int>TAKE_BATCH]
        cdef size_t i, n, c
        cdef list out = []
        while True:
            n = 0
            pthread_mutex_lock(&self.lock)      # the GIL kept: see release_chunk
            if not out and self.chunks_taken < self.capture_end:
                # Not past the last chunk of a closed capture (capture_untaken).
                if most == 0 or <uint64_t>most > self.capture_end - self.chunks_taken:
                    most = <size_t>(self.capture_end - self.chunks_taken)
            while self.data_count and n < TAKE_BATCH and (most == 0 or len(out) + n < most):
                c = self.data_ring[self.data_head]
                self.data_head = (self.data_head + 1) % self.pool
                self.data_count -= 1
                self.chunks_taken += 1
                self.state[c] = CHUNK_HELD
                taken[n] = c
                n += 1
            if n:
                self.consumer_active = True
            pthread_mutex_unlock(&self.lock)
            # The chunks' objects exist already: only the list is made, the lock
            # released (an allocation may run the garbage collector, and a
            # finaliser might release a chunk, which takes the lock).
            for i in range(n):
                out.append(self.chunk_objects[taken[i]])
            if n < TAKE_BATCH or (most != 0 and <size_t>len(out) >= most):
                return out

    def get_batch(self, size_t max_chunks=0, timeout=None):
        """Every completed chunk ready now, oldest first, waiting for the first if need be.

        The same chunks in the same order as as many `get` calls, for one lock
        of the group (per 64 chunks) rather than one per chunk.

        Parameters
        ----------
        max_chunks : int, optional
            Most chunks returned (0, the default: every chunk ready).
        timeout : float, optional
            Longest wait for the first chunk, in seconds (None: no limit).

        Returns
        -------
        list of Chunk
            At least one chunk; empty once every stream has ended and every
            chunk has been taken (where `get` returns None).

        Raises
        ------
        TimeoutError
            No chunk arrived within `timeout` seconds.
        """
        cdef timespec until
        cdef bint forever = timeout is None
        cdef int rc = 0
        cdef list chunks = self.take_ready_batch(max_chunks)
        if chunks:
            return chunks
        if not forever:
            until = deadline_after(max(0.0, timeout))
        while True:
            with nogil:
                pthread_mutex_lock(&self.lock)
                rc = self.wait_ready(forever, &until)
                pthread_mutex_unlock(&self.lock)
            chunks = self.take_ready_batch(max_chunks)
            if chunks or self.ended:
                return chunks
            if rc != 0:
                raise TimeoutError(f"no chunk within {timeout} s")

    def release_many(self, chunks):
        """Give several chunks back to the free ring at once (one lock, one wake-up).

        The same as ``chunk.release()`` for each, in order; the list is checked
        first, so that an error releases none of its chunks.

        Parameters
        ----------
        chunks : iterable of Chunk
            Chunks of this group handed out by `get` or `get_batch`, each once.

        Raises
        ------
        TypeError, ValueError, RuntimeError
            An item is not a Chunk, is another group's, or is not handed out
            (released already, or listed twice).
        """
        self.release_chunks(chunks if type(chunks) is list else list(chunks))

    def get(self, timeout=None):
        """The next completed chunk, waiting for it if need be.

        Returns None once every stream has ended and every chunk has been taken.

        Raises
        ------
        TimeoutError
            No chunk arrived within `timeout` seconds.
        """
        cdef timespec until
        cdef bint forever = timeout is None
        cdef int rc = 0
        # A chunk that is ready already is taken without giving the GIL up.
        chunk = self.take_ready()
        if chunk is not None:
            return chunk
        if not forever:
            until = deadline_after(max(0.0, timeout))
        while True:
            with nogil:
                pthread_mutex_lock(&self.lock)
                rc = self.wait_ready(forever, &until)
                pthread_mutex_unlock(&self.lock)
            # get() is the only consumer: a chunk seen here is still there.
            chunk = self.take_ready()
            if chunk is not None or self.ended:
                return chunk
            if rc != 0:
                raise TimeoutError(f"no chunk within {timeout} s")

    def __iter__(self):
        """Completed chunks until every stream has ended (a consumer thread's loop)."""
        while True:
            chunk = self.get()
            if chunk is None:
                return
            yield chunk

    def stop_waiting_for_chunks(self):
        """Make streams blocked on the free ring or a lossless eviction stop waiting."""
        self.stop_waiting = True
        with nogil:
            pthread_mutex_lock(&self.lock)
            pthread_cond_broadcast(&self.wake_cond)
            pthread_mutex_unlock(&self.lock)

    def add_stream(self, **kwargs):
        """A new ChunkStream filling this group's chunks (see ChunkStream)."""
        return ChunkStream(group=self, **kwargs)

    def pool_counts(self):
        """How many pool chunks are free, open (incl. evicted, still written), ready, held."""
        counts = {"free": 0, "open": 0, "ready": 0, "held": 0}
        names = ("free", "open", "ready", "held")
        cdef size_t i
        for i in range(self.pool):
            counts[names[self.state[i]]] += 1
        return counts

    @property
    def free_ring_size(self):
        """Chunks in the free ring."""
        return self.free_count

    @property
    def data_ring_size(self):
        """Completed chunks waiting for the consumer."""
        return self.data_count

    @property
    def boundary_held(self):
        """Chunks of the last closed capture (`boundaries`) not yet in the data ring.

        A receive thread of a source at its boundary that was inside a batch
        when the group closed the capture lets go of that capture's chunks at
        the end of its batch; until then they are counted here.
        """
        cdef uint64_t end, handed
        with nogil:
            pthread_mutex_lock(&self.lock)
            end, handed = self.capture_end, self.chunks_handed
            pthread_mutex_unlock(&self.lock)
        return end - handed if end > handed else 0

    @property
    def capture_untaken(self):
        """Chunks of the last closed capture (`boundaries`) not yet taken from the data ring.

        Held by a stream (`boundary_held`) or waiting in the data ring: 0 once
        `get`/`get_batch` returned every chunk of the capture.  `get_batch`
        never returns chunks of two captures together: a batch ends at the
        last chunk of a closed capture.
        """
        cdef uint64_t end, taken
        with nogil:
            pthread_mutex_lock(&self.lock)
            end, taken = self.capture_end, self.chunks_taken
            pthread_mutex_unlock(&self.lock)
        return end - taken if end > taken else 0

    @property
    def waiting_streams(self):
        """Streams waiting on the group right now (for a free chunk, or for the window to
        move; spinning or asleep): what a test orders its threads by, instead of sleeping."""
        return self.n_waiting + self.n_spinning

    def stats(self):
        """The counters of every stream of the group, summed (maxima: the maximum)."""
        cdef uint64_t total[<int>N_STATS]
        cdef uint64_t one[<int>N_STATS]
        cdef ChunkStream s
        memset(total, 0, sizeof(total))
        for s in self.streams:
            s.snapshot(one)
            merge_stats(total, one)
        return _stats_dict(total)
