# Readers: fill a batch of packets in C memory without the GIL.
#
# Reader.fill() runs inside the stream's nogil region.  It sets `n` packets in
# `pkt_data`/`pkt_len` (pointers into the reader's own buffer, valid until the
# next fill) and, when `pkt_hdr` is not NULL (a reader that decodes each packet
# to find where it ends: a byte stream), each packet's decoded header there, so
# that the stream does not decode it again; fill() returns:
#   > 0          packets in the batch
#   READ_AGAIN   nothing arrived within the poll timeout; call again
#   READ_EOF     the source has ended
#   READ_ERROR   a system call failed; `errno_value` says why
# Per-packet problems never raise: they are counted in `stats`.

from libc.errno cimport errno, EINTR, EAGAIN
from posix.unistd cimport read, write
from posix.stat cimport struct_stat, fstat, S_ISREG
from posix.time cimport clock_gettime, CLOCK_MONOTONIC, timespec, nanosleep

import numpy as np

cdef extern from "<errno.h>" nogil:
    enum: ENOBUFS

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN
    enum: POLLOUT

cdef extern from "<sys/socket.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    enum: SOL_SOCKET
    enum: SO_RXQ_OVFL
    int setsockopt(int sockfd, int level, int optname, const void *optval, unsigned int optlen)
    int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen)
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_TRUNC

#: max_packet_size of a reader not given one (the configuration's default too).
DEFAULT_MAX_PACKET_SIZE = 9200

cdef enum:
    READ_AGAIN = 0
    READ_EOF = -1
    READ_ERROR = -2


cdef inline uint64_t monotonic_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds (pacing, waits, blocked time)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef class Reader:
    """Base of every packet source; see the module comment for the contract."""

    cdef const uint8_t **pkt_data
    cdef size_t *pkt_len
    cdef PacketHeader *pkt_hdr  # NULL, or each packet's header, decoded by fill()
    # With pkt_hdr: the window prefetches each next packet's payload while it
    # places one (bytes from memory or a file, not in the cache yet); not for
    # bytes a read() from a socket has just written (window.pxi, prefetch_payload).
    cdef bint prefetch_payloads
    cdef size_t capacity        # packets per batch
    cdef size_t n               # packets in the current batch
    cdef size_t pos             # packets of the batch already consumed
    cdef int errno_value
    cdef readonly bint finite   # ends by itself (file, pcap, sim with heaps=N)
    cdef readonly bint eof
    cdef volatile bint stop_flag
    # Packet tap (for the pcap sink): a copy of every packet of each batch,
    # back to back in tap_buf, until take_tap() hands them over.
    cdef uint8_t *tap_buf
    cdef uint32_t *tap_lens
    cdef size_t tap_bytes_cap, tap_packets_cap, tap_used, tap_n

    def __cinit__(self, *args, **kwargs):
        self.capacity = 0

    cdef int alloc_batch(self, size_t capacity, bint decoded=False) except -1:
        """Allocate the batch arrays (`decoded`: the headers too, for a reader
        whose fill() decodes every packet it hands out)."""
        self.capacity = capacity
        self.pkt_data = <const uint8_t **>malloc(capacity * sizeof(uint8_t *))
        self.pkt_len = <size_t *>malloc(capacity * sizeof(size_t))
        if self.pkt_data == NULL or self.pkt_len == NULL:
            raise MemoryError()
        if decoded:
            self.pkt_hdr = <PacketHeader *>malloc(capacity * sizeof(PacketHeader))
            if self.pkt_hdr == NULL:
                raise MemoryError()
        return 0

    def __dealloc__(self):
        free(self.pkt_data)
        free(self.pkt_len)
        free(self.pkt_hdr)
        free(self.tap_buf)
        free(self.tap_lens)

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        return READ_EOF

    cdef uint64_t poll_drops(self) noexcept nogil:
        """Drops the source's kernel reports now, not counted yet (UdpReader)."""
        return 0

    cdef void tap_batch(self, uint64_t *stats) noexcept nogil:
        """Copy the batch's packets into the tap; count those it has no room for."""
        cdef size_t i, length
        for i in range(self.pos, self.n):
            length = self.pkt_len[i]
            if self.tap_n >= self.tap_packets_cap or \
                    self.tap_used + length > self.tap_bytes_cap:
                stats[<int>STAT_PACKETS_TAP_DROPPED] += self.n - i
                return
            memcpy(self.tap_buf + self.tap_used, self.pkt_data[i], length)
            self.tap_lens[self.tap_n] = <uint32_t>length
            self.tap_used += length
            self.tap_n += 1

    def enable_tap(self, size_t max_bytes, size_t max_packets):
        """Keep a copy of every packet received, up to `max_bytes` and
        `max_packets` between two take_tap() calls (more is counted as
        ``packets_tap_dropped``).  Allocated once, here."""
        if self.tap_buf != NULL:
            raise RuntimeError("the packet tap is already enabled")
        if max_bytes == 0 or max_packets == 0:
            raise ValueError("the packet tap needs room for at least one packet")
        self.tap_buf = <uint8_t *>malloc(max_bytes)
        self.tap_lens = <uint32_t *>malloc(max_packets * sizeof(uint32_t))
        if self.tap_buf == NULL or self.tap_lens == NULL:
            free(self.tap_buf)
            free(self.tap_lens)
            self.tap_buf = NULL
            self.tap_lens = NULL
            raise MemoryError()
        self.tap_bytes_cap = max_bytes
        self.tap_packets_cap = max_packets
        self.tap_used = 0
        self.tap_n = 0

    def take_tap(self):
        """The packets tapped since the last call, as ``(blob, lengths)``
        (bytes back to back, uint32 array), or None if there are none."""
        if self.tap_n == 0:
            return None
        blob = self.tap_buf[:self.tap_used]
        lengths = np.empty(self.tap_n, np.uint32)
        cdef uint32_t[::1] view = lengths
        memcpy(&view[0], self.tap_lens, self.tap_n * sizeof(uint32_t))
        self.tap_used = 0
        self.tap_n = 0
        return blob, lengths

    def stop(self):
        """Ask a blocking fill() to return at its next poll timeout (a UDP reader
        then hands over what its socket held at the stop before it ends)."""
        self.stop_flag = True

    def progress(self):
        """(bytes consumed, bytes in all) of a finite source, for progress reports.

        Read from another thread while the reader runs (an estimate, never a
        count): 0 in all where the size is not known (a network source).
        """
        return 0, 0

    def close(self):
        """Release the source's OS resources (idempotent)."""

    def read_batch(self):
        """Fill one batch and return its packets as bytes (tests and tools only)."""
        cdef uint64_t stats[<int>N_STATS]
        memset(stats, 0, sizeof(stats))
        cdef int rc
        with nogil:
            rc = self.fill(stats)
        if rc == READ_ERROR:
            raise OSError(self.errno_value, os.strerror(self.errno_value))
        if rc == READ_EOF:
            return None
        packets = [self.pkt_data[i][:self.pkt_len[i]] for i in range(self.n)]
        self.pos = self.n
        return packets, _stats_dict(stats)


cdef class ByteListReader(Reader):
    """Packets from a list of bytes objects, delivered as one batch."""

    cdef list packets
    cdef size_t count

    def __init__(self, packets):
        self.packets = [bytes(p) for p in packets]
        self.count = len(self.packets)
        self.alloc_batch(self.count if self.count > 0 else 1)
        self.finite = True
        cdef size_t i
        for i in range(self.count):
            self.pkt_data[i] = <const uint8_t *>(<bytes>self.packets[i])
            self.pkt_len[i] = len(<bytes>self.packets[i])

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        self.pos = 0
        self.n = 0
        if self.eof or self.count == 0:
            self.eof = True
            return READ_EOF
        self.eof = True
        self.n = self.count
        return <int>self.n


# --------------------------------------------------------------------------
# Byte streams: file, stdin, TCP and in-memory buffers, packets back to back.
#
# The cutting of one byte stream into packets is a struct and two functions,
# so that a reader of one stream (ByteStreamReader) and the TCP server's
# reader of many peers (tcp_server.pxi, one ByteStream per peer) share it.

cdef struct ByteStream:
    uint8_t *buf
    size_t bufsize
    size_t start, end           # unconsumed bytes are buf[start:end]
    size_t to_skip              # bytes of an over-long packet still to skip
    bint eof                    # no more bytes will come (they may still be cut up)

cdef enum:
    TAKE_FULL = 0               # the batch is full
    TAKE_MORE = 1               # the stream needs more bytes to go on
    TAKE_END = 2                # the stream has ended and every byte is accounted for


cdef void bytes_resync(ByteStream *s, uint64_t *stats) noexcept nogil:
    """Skip to the next byte pair that could start a SPEAD header."""
    cdef size_t i = s.start + 1
    cdef int bits
    while i < s.end:
        if s.buf[i] == SPEAD_MAGIC:
            if i + 8 > s.end:
                break       # maybe a header; decide once more bytes arrive
            if decode_header_flavour(s.buf + i, 8, &bits) == DECODE_OK:
                break
        i += 1
    stats[<int>STAT_STREAM_BYTES_SKIPPED] += i - s.start
    s.start = i


cdef enum:
    # bytes_take prefetches the header lines of the packet this many packets
    # ahead, assuming packets of the size of the one just cut (the usual
    # stream of equal packets): the next header's address is only known from
    # this one's, and from memory each header would be a cache miss in a chain.
    HEADER_PREFETCH_PACKETS = 16
    HEADER_PREFETCH_BYTES = 128


cdef int bytes_take(ByteStream *s, Reader r, size_t max_packet_size, StatIndex cut_stat,
                    uint64_t *stats) noexcept nogil:
    """Cut packets out of `s` into `r`'s batch until TAKE_FULL, TAKE_MORE or TAKE_END.

    The bytes of a packet cut off by the end of the stream are counted under
    `cut_stat` (a file: stream_bytes_skipped; a TCP peer: tcp_bytes_truncated).
    """
    cdef PacketHeader hdr
    cdef PacketHeader *out
    cdef DecodeStatus status
    cdef size_t avail, limit, ahead
    cdef bint cut
    while r.n < r.capacity:
        if s.to_skip:
            avail = s.end - s.start
            if avail > s.to_skip:
                avail = s.to_skip
            s.start += avail
            s.to_skip -= avail
            stats[<int>STAT_STREAM_BYTES_SKIPPED] += avail
            if s.to_skip == 0:
                continue
            if s.eof:
                s.to_skip = 0           # the stream ended inside the packet
                continue
            return TAKE_MORE
        avail = s.end - s.start
        if avail == 0:
            return TAKE_END if s.eof else TAKE_MORE
        limit = avail if avail < max_packet_size else max_packet_size
        # Decoded straight into the batch's header (a reader that keeps them).
        out = &r.pkt_hdr[r.n] if r.pkt_hdr != NULL else &hdr
        status = decode_packet(s.buf + s.start, limit, out)
        if status == DECODE_OK:
            ahead = s.start + HEADER_PREFETCH_PACKETS * out.size
            if ahead + HEADER_PREFETCH_BYTES <= s.end:
                cache_prefetch(s.buf + ahead)
                cache_prefetch(s.buf + ahead + 64)
            r.pkt_data[r.n] = s.buf + s.start
            r.pkt_len[r.n] = out.size
            r.n += 1
            s.start += out.size
            continue
        hdr.size = out.size
        if (status == DECODE_PAYLOAD_LENGTH and hdr.size > max_packet_size) \
                or status == DECODE_PAYLOAD_OUTSIDE_HEAP \
                or (status == DECODE_MISSING_ITEMS and hdr.size > 0):
            # Longer than any packet accepted, or unusable but of a known
            # size: skip it whole by its declared size (its bytes counted
            # as skipped), never searching its payload for packets.
            stats[<int>decode_status_stat(status)] += 1
            s.to_skip = hdr.size
            continue
        cut = status == DECODE_TOO_SHORT or status == DECODE_ITEMS_OVERFLOW \
            or status == DECODE_PAYLOAD_LENGTH
        # Too few bytes may only mean the rest has not been read yet.
        if cut and avail < max_packet_size and not s.eof:
            return TAKE_MORE
        stats[<int>decode_status_stat(status)] += 1
        if cut and s.eof:
            # A packet cut off by the end of the stream.
            stats[<int>cut_stat] += avail
            s.start = s.end
            continue
        bytes_resync(s, stats)
    return TAKE_FULL


cdef int bytes_read(ByteStream *s, int fd, size_t *count) noexcept nogil:
    """Read what `fd` has into the stream's buffer (no wait): 1 (`count` bytes
    read), READ_AGAIN (nothing yet), READ_EOF, or READ_ERROR (errno says why)."""
    cdef ssize_t got
    if s.start > 0:
        memmove(s.buf, s.buf + s.start, s.end - s.start)
        s.end -= s.start
        s.start = 0
    got = read(fd, s.buf + s.end, s.bufsize - s.end)
    if got < 0:
        if errno == EINTR or errno == EAGAIN:
            return READ_AGAIN
        return READ_ERROR
    if got == 0:
        return READ_EOF
    s.end += <size_t>got
    count[0] = <size_t>got
    return 1


cdef extern from "daqd_sigbus.h" nogil:
    int daqd_sigbus_install()
    int daqd_map_register(const void *base, size_t size)
    void daqd_map_unregister(int slot)
    unsigned daqd_map_truncations(int slot)
    size_t daqd_map_zeroed_from(int slot)
    void *daqd_map_file(int fd, size_t size)
    int daqd_populate_read(const void *addr, size_t length)
    int munmap(void *addr, size_t length)
    void daqd_map_zeros(void *base, size_t size)

cdef extern from "<errno.h>" nogil:
    enum: EMFILE_MAPS "EMFILE"

cdef enum:
    # A mapped file is shown to the cutter this many bytes at a time (the
    # read() path's buffer size): each window is populated in one call
    # (MADV_POPULATE_READ) before the cutter touches it, and the file's size
    # is checked before each, so a truncation is mostly seen before any page
    # beyond the new end is touched; garbage is never searched beyond it.
    MAP_WINDOW = 4 << 20


cdef class ByteStreamReader(Reader):
    """Packets back to back on a byte stream (file, stdin, TCP, memory).

    A stream has no packet boundaries of its own: each packet's length comes
    from its header.  Where a header cannot be decoded, spead2 gives up on the
    rest of the stream; daqd counts the packet, then skips forward to the next
    plausible SPEAD header (counting the skipped bytes) and carries on.  A
    packet whose header decodes but declares more than max_packet_size bytes is
    skipped whole by its declared size, as spead2's TCP reader does (counted
    once, as packets_rejected_payload_length; its bytes as skipped), so nothing
    in its payload is taken for a packet.
    """

    cdef int fd                 # -1 for an in-memory buffer
    cdef ByteStream bs
    cdef size_t max_packet_size
    cdef int timeout_ms
    cdef object keepalive       # the Python buffer or file object behind fd/buf
    cdef const uint8_t[::1] view
    # A mapped regular file (`mapped`): bs.buf is the mapping, bs.end the end of
    # the window the cutter may see.
    cdef readonly bint mapped
    cdef uint8_t *map_base      # NULL: nothing mapped (not mapped, empty, or closed)
    cdef size_t map_size        # bytes mapped (the file's size when opened)
    cdef size_t map_end         # where the file's bytes end (map_size, less once truncated)
    cdef int map_slot           # its slot in daqd_sigbus.h's registry; -1: none
    cdef unsigned map_faults    # the slot's truncation faults already dealt with
    cdef bint map_populate      # MADV_POPULATE_READ is used (see `populate`)

    def progress(self):
        """(bytes read from the file so far, its size); (0, 0) for a pipe or memory."""
        if self.mapped:
            return self.bs.start, self.map_end
        if self.fd < 0:
            return 0, 0
        try:
            st = os.fstat(self.fd)
            if not (st.st_mode & 0o170000 == 0o100000):     # not a regular file
                return 0, 0
            return os.lseek(self.fd, 0, os.SEEK_CUR), st.st_size
        except OSError:
            return 0, 0

    def __init__(self, object source, *, size_t max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 size_t batch=64, size_t bufsize=4 << 20, int timeout_ms=200,
                 bint finite=True, bint mapped=False, bint populate=True):
        """Read `source`: a file descriptor, or a buffer (bytes, memoryview, ...).

        `mapped`: `source` is the descriptor of a regular file, read through a
        read-only mapping of its size now rather than with read() (a file that
        grows is read to that size); truncation while it is read is survived
        (`truncation`).  `populate`: each window of the mapping is populated in
        one call (MADV_POPULATE_READ) before it is cut.
        """
        self.alloc_batch(batch, True)
        self.prefetch_payloads = True
        self.max_packet_size = max_packet_size
        self.timeout_ms = timeout_ms
        self.finite = finite
        self.map_slot = -1
        if mapped:
            self.map_open(source, populate)
        elif isinstance(source, int):
            self.fd = source
            self.bs.bufsize = max(bufsize, 2 * max_packet_size + 16)
            self.bs.buf = <uint8_t *>malloc(self.bs.bufsize)
            if self.bs.buf == NULL:
                raise MemoryError()
        else:
            self.fd = -1
            self.view = memoryview(source).cast("B")
            self.keepalive = source
            self.bs.end = self.view.shape[0]
            self.bs.eof = True
            if self.bs.end:
                self.bs.buf = <uint8_t *>&self.view[0]

    cdef int map_open(self, int fd, bint populate) except -1:
        """Map regular file `fd` and show the cutter its first window."""
        cdef struct_stat st
        cdef void *base
        if fstat(fd, &st) != 0:
            raise OSError(errno, os.strerror(errno))
        if not S_ISREG(st.st_mode):
            raise ValueError("only a regular file can be mapped")
        self.fd = fd
        self.mapped = True
        self.bs.eof = True
        if st.st_size == 0:
            return 0                    # nothing to map (mmap refuses 0 bytes)
        if daqd_sigbus_install() != 0:
            raise OSError(errno, os.strerror(errno))
        base = daqd_map_file(fd, <size_t>st.st_size)
        if base == NULL:
            raise OSError(errno, os.strerror(errno))
        self.map_slot = daqd_map_register(base, <size_t>st.st_size)
        if self.map_slot < 0:
            munmap(base, <size_t>st.st_size)
            raise OSError(EMFILE_MAPS, "too many files mapped at once")
        self.map_base = <uint8_t *>base
        self.map_size = self.map_end = <size_t>st.st_size
        self.map_populate = populate
        self.bs.buf = self.map_base
        self.bs.bufsize = self.map_size
        self.bs.eof = False
        self.map_advance(NULL)
        return 0

    cdef void map_advance(self, uint64_t *stats) noexcept nogil:
        """Show the cutter the next window of the mapping (the file's size checked first)."""
        cdef struct_stat st
        cdef size_t end
        if fstat(self.fd, &st) == 0 and <size_t>st.st_size < self.map_end:
            self.map_cut(<size_t>st.st_size, stats)
        end = self.bs.end + MAP_WINDOW
        if end > self.map_end:
            end = self.map_end
        if self.map_populate and end > self.bs.end:
            if daqd_populate_read(self.bs.buf + self.bs.end, end - self.bs.end) == 1:
                self.map_populate = False   # Linux < 5.14: faults taken page by page
        if end > self.bs.end:
            self.bs.end = end
        self.bs.eof = self.bs.end == self.map_end

    cdef bint map_check(self, uint64_t *stats) noexcept nogil:
        """After a fault inside the mapping (file truncated, or unreadable), end
        the file where its bytes end now; whether it did."""
        cdef struct_stat st
        cdef unsigned faults = daqd_map_truncations(self.map_slot)
        cdef size_t size
        if faults == self.map_faults:
            return False
        size = daqd_map_zeroed_from(self.map_slot)
        self.map_faults = faults
        if fstat(self.fd, &st) == 0 and <size_t>st.st_size < size:
            size = <size_t>st.st_size
        self.map_cut(size, stats)
        return True

    cdef void map_cut(self, size_t size, uint64_t *stats) noexcept nogil:
        """The file's bytes now end at `size`: end the stream there (or where
        the packets handed out end) and count the bytes lost (`stats` NULL:
        nothing cut yet, nothing to count)."""
        cdef size_t end = size if size < self.map_end else self.map_end
        if end < self.bs.start:
            end = self.bs.start         # already handed out (may have held zeros)
        if stats != NULL:
            stats[<int>STAT_FILE_BYTES_TRUNCATED] += self.map_end - end
        self.map_end = end
        if self.bs.end > end:
            self.bs.end = end
        self.bs.eof = self.bs.end == self.map_end

    @property
    def truncation(self):
        """None, or (size when opened, where its bytes ended) of a mapped file that
        was truncated (or became unreadable) while it was read."""
        if self.map_end == self.map_size:
            return None
        return self.map_size, self.map_end

    cdef void map_release(self, bint unmap) noexcept:
        """Let the file go: its pages replaced by zero pages (`unmap` False: the
        addresses stay readable, so a receive thread that did not stop still
        reads nothing but zeros), or unmapped."""
        if self.map_slot >= 0:
            daqd_map_unregister(self.map_slot)
            self.map_slot = -1
        if self.map_base == NULL:
            return
        if unmap:
            munmap(self.map_base, self.map_size)
            self.map_base = NULL
        else:
            daqd_map_zeros(self.map_base, self.map_size)
        self.bs.end = self.bs.start
        self.bs.to_skip = 0
        self.bs.eof = True

    def __dealloc__(self):
        if self.mapped:
            self.map_release(True)
        elif self.fd >= 0:
            free(self.bs.buf)

    def keep(self, obj):
        """Keep `obj` (a socket or file owning the descriptor) alive with the reader."""
        self.keepalive = obj

    def close(self):
        if self.mapped:
            self.map_release(False)     # unmapped when the reader goes
        if self.keepalive is not None and hasattr(self.keepalive, "close"):
            self.keepalive.close()

    cdef int read_more(self) noexcept nogil:
        """Wait for the descriptor, then read: READ_AGAIN, READ_EOF, READ_ERROR or > 0."""
        cdef pollfd pfd
        cdef int got
        cdef size_t count
        pfd.fd = self.fd
        pfd.events = POLLIN
        pfd.revents = 0
        got = poll(&pfd, 1, self.timeout_ms)
        if got == 0 or (got < 0 and errno == EINTR):
            return READ_AGAIN
        if got < 0:
            self.errno_value = errno
            return READ_ERROR
        got = bytes_read(&self.bs, self.fd, &count)
        if got == READ_ERROR:
            self.errno_value = errno
        return got

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef int rc
        # A mapped file: the cut as it stood before bytes_take, to cut again
        # from if a page faulted meanwhile (the cutter then read zeros).
        cdef uint64_t before[<int>N_STATS]
        cdef size_t start = 0, to_skip = 0
        self.n = 0
        self.pos = 0
        while True:
            if self.stop_flag:
                self.eof = True
                return READ_EOF
            if self.map_slot >= 0:
                self.map_check(stats)   # a fault since the last batch was cut
                memcpy(before, stats, sizeof(before))
                start = self.bs.start
                to_skip = self.bs.to_skip
            rc = bytes_take(&self.bs, self, self.max_packet_size, STAT_STREAM_BYTES_SKIPPED,
                            stats)
            if self.map_slot >= 0 and \
                    daqd_map_truncations(self.map_slot) != self.map_faults:
                memcpy(stats, before, sizeof(before))
                self.bs.start = start
                self.bs.to_skip = to_skip
                self.n = 0
                continue                # cut again, up to the file's end now
            if rc == TAKE_FULL:
                return <int>self.n
            if rc == TAKE_END:
                self.eof = True
                return <int>self.n if self.n > 0 else READ_EOF
            if self.n > 0:
                return <int>self.n      # hand over what we have before reading
            if self.mapped:
                self.map_advance(stats)
                continue
            rc = self.read_more()
            if rc == READ_EOF:
                self.bs.eof = True
            elif rc <= 0:
                return rc


# --------------------------------------------------------------------------
# UDP: recvmmsg batches.

cdef extern from "<netinet/udp.h>" nogil:
    """
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    """
    enum: SOL_UDP
    enum: UDP_GRO

cdef extern from *:
    """
    #include <linux/sock_diag.h>
    #ifndef SO_MEMINFO
    #define SO_MEMINFO 55
    #endif
    /* A UDP reader's count of the kernel's drops is advanced by two threads
       (the receive loop and the statistics path), so atomically. */
    static inline uint32_t daqd_load_u32(const uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline int daqd_cas_u32(uint32_t *p, uint32_t *expected, uint32_t desired) {
        return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }
    """
    enum: SO_MEMINFO
    enum: SK_MEMINFO_RMEM_ALLOC
    enum: SK_MEMINFO_DROPS
    enum: SK_MEMINFO_VARS
    uint32_t daqd_load_u32(const uint32_t *p) nogil
    bint daqd_cas_u32(uint32_t *p, uint32_t *expected, uint32_t desired) nogil

cdef enum:
    # Receive slots of this many bytes with UDP GRO (more than the largest
    # UDP payload an IPv4 datagram, or a GRO super-datagram, can carry).
    GRO_SLOT = 65536


cdef class UdpReader(Reader):
    """Datagrams from a bound UDP socket, received in recvmmsg batches.

    With `gro` (the default) the socket asks the kernel for UDP GRO: runs of
    equal-size datagrams of one flow (GRO-merged by the NIC driver, or sent
    with UDP GSO on this machine) then arrive as one message of up to 64 KiB
    with their size in a control message, and are cut up here.  One message
    costs the kernel's receive path (and one copy call) what one datagram
    does, so small datagrams become much cheaper.  Where the kernel lacks
    UDP_GRO, the reader goes on without it (`gro` then reads False).

    Datagrams the kernel drops because the socket buffer is full are counted
    (``packets_dropped_socket_buffer``) from the socket's cumulative drop
    count, which the kernel reports two ways: with each datagram received
    (SO_RXQ_OVFL), and on request (SO_MEMINFO, `poll_drops`, which the
    statistics path calls, so that drops show without a further datagram).
    Both are the same counter, taken from where it stood when the reader was
    made; whichever way sees a drop first counts it, once.  After `stop()` the
    reader still hands over what the kernel held at that moment (at most the
    bytes then queued), then ends: what arrived before a stop is received.
    """

    cdef int fd
    cdef uint8_t *buf
    cdef size_t slot                # bytes per message slot
    cdef size_t max_packet_size
    cdef readonly size_t messages   # recvmmsg slots (fewer with GRO: see __init__)
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef int timeout_ms
    cdef object sock
    cdef uint8_t *control           # per slot: SO_RXQ_OVFL and UDP_GRO control messages
    cdef uint32_t *gro_size         # per slot: datagram size of a GRO message, else 0
    cdef size_t control_size
    # The kernel's cumulative drop count as far as counted (changed atomically:
    # claim_drops).
    cdef uint32_t kernel_drops
    cdef readonly bint gro
    cdef readonly bint drops_readable   # SO_MEMINFO works: drops counted without a datagram
    cdef bint draining                  # stop() seen: reading what was queued before it
    cdef size_t drain_budget            # bytes still to read of those
    # Messages of the last recvmmsg not yet cut up (a GRO batch may have more
    # datagrams than the batch holds): next message, and offset in it.
    cdef int got, next_msg
    cdef size_t next_offset
    cdef int used_msgs              # slots whose control length the kernel changed

    def __init__(self, sock, *, size_t max_packet_size=DEFAULT_MAX_PACKET_SIZE, size_t batch=64,
                 int timeout_ms=200, bint gro=True):
        self.sock = sock
        self.fd = sock.fileno()
        self.timeout_ms = timeout_ms
        self.finite = False
        self.max_packet_size = max_packet_size
        cdef int on = 1
        self.gro = gro and setsockopt(self.fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) == 0
        # One spare byte per slot: a datagram that fills it is too long.
        self.slot = max_packet_size + 1
        cdef size_t budget = batch * self.slot      # bytes one recvmmsg may take
        if self.gro and self.slot < GRO_SLOT:
            self.slot = GRO_SLOT
        # Still `batch` packets per batch with GRO (a chunk stream hands on
        # completed chunks between batches, so a batch must stay within its
        # window); datagrams beyond it wait for the next fill(), without a
        # system call.  With GRO, fewer message slots: a recvmmsg takes no
        # more bytes than `batch` datagrams would without, so the datagrams
        # are still in the core's cache when they are copied to their chunk
        # (64 slots of 64 KiB, 4 MiB, spilled the L2 cache and cost the copy
        # about 40 % more per W1 packet).
        self.messages = budget // self.slot
        if self.messages > batch:
            self.messages = batch
        if self.messages < 1:
            self.messages = 1
        self.alloc_batch(batch)
        self.buf = <uint8_t *>malloc(self.messages * self.slot)
        self.msgs = <mmsghdr *>malloc(self.messages * sizeof(mmsghdr))
        self.iovs = <iovec *>malloc(self.messages * sizeof(iovec))
        self.control_size = CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(int))
        self.control = <uint8_t *>malloc(self.messages * self.control_size)
        self.gro_size = <uint32_t *>malloc(self.messages * sizeof(uint32_t))
        if self.buf == NULL or self.msgs == NULL or self.iovs == NULL or self.control == NULL \
                or self.gro_size == NULL:
            raise MemoryError()
        memset(self.msgs, 0, self.messages * sizeof(mmsghdr))
        # The kernel then reports, with each datagram, how many it has dropped
        # on this socket so far: loss before daqd ever saw a packet is counted.
        setsockopt(self.fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof(on))
        # Drops before this reader existed are not its own: count from here.
        cdef uint32_t mem[<int>SK_MEMINFO_VARS]
        self.drops_readable = self.meminfo(mem)
        if self.drops_readable:
            self.kernel_drops = mem[<int>SK_MEMINFO_DROPS]
        cdef size_t i
        for i in range(self.messages):
            self.iovs[i].iov_base = self.buf + i * self.slot
            self.iovs[i].iov_len = self.slot
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.used_msgs = <int>self.messages

    def __dealloc__(self):
        free(self.buf)
        free(self.msgs)
        free(self.iovs)
        free(self.control)
        free(self.gro_size)

    def close(self):
        self.fd = -1                    # poll_drops() no longer asks the kernel
        self.sock.close()

    cdef bint meminfo(self, uint32_t *mem) noexcept nogil:
        """The socket's SO_MEMINFO counters (SK_MEMINFO_VARS of them); False if unknown."""
        cdef unsigned int size = <unsigned int>(<int>SK_MEMINFO_VARS * sizeof(uint32_t))
        if self.fd < 0:
            return False
        if getsockopt(self.fd, SOL_SOCKET, SO_MEMINFO, mem, &size) != 0:
            return False
        return size >= (<int>SK_MEMINFO_DROPS + 1) * sizeof(uint32_t)

    cdef uint64_t claim_drops(self, uint32_t cumulative) noexcept nogil:
        """The drops up to the kernel's cumulative count `cumulative` that are not
        counted yet, now counted (by whichever thread sees them first)."""
        cdef uint32_t seen = daqd_load_u32(&self.kernel_drops)
        # The count wraps at 2**32: `cumulative` is newer if less than 2**31 ahead.
        while <uint32_t>(<uint32_t>(cumulative - seen) - 1U) < 0x7fffffffU:
            if daqd_cas_u32(&self.kernel_drops, &seen, cumulative):
                return <uint32_t>(cumulative - seen)
        return 0

    cdef uint64_t poll_drops(self) noexcept nogil:
        if not self.drops_readable:
            return 0
        cdef uint32_t mem[<int>SK_MEMINFO_VARS]
        if not self.meminfo(mem):
            return 0
        return self.claim_drops(mem[<int>SK_MEMINFO_DROPS])

    cdef void reset_control(self) noexcept nogil:
        # Only the slots the last recvmmsg filled have a changed length.
        cdef int i
        for i in range(self.used_msgs):
            self.msgs[i].msg_hdr.msg_control = self.control + i * self.control_size
            self.msgs[i].msg_hdr.msg_controllen = self.control_size
        self.used_msgs = 0

    cdef int receive(self) noexcept nogil:
        self.reset_control()
        cdef int got = recvmmsg(self.fd, self.msgs, <unsigned int>self.messages,
                                MSG_DONTWAIT, NULL)
        self.used_msgs = got if got > 0 else 0
        return got

    cdef void read_control(self, int got, uint64_t *stats) noexcept nogil:
        """Count the kernel's drops; note each message's GRO datagram size."""
        cdef int i
        cdef cmsghdr *c
        cdef uint32_t drops, newest = daqd_load_u32(&self.kernel_drops)
        cdef int segment
        for i in range(got):
            segment = 0
            c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
                    memcpy(&drops, CMSG_DATA(c), sizeof(uint32_t))
                    # The count is cumulative and wraps at 2**32.
                    if <uint32_t>(drops - newest) < 0x80000000U:
                        newest = drops
                elif c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
                    memcpy(&segment, CMSG_DATA(c), sizeof(int))
                c = CMSG_NXTHDR(&self.msgs[i].msg_hdr, c)
            self.gro_size[i] = <uint32_t>segment if segment > 0 else 0
        stats[<int>STAT_PACKETS_DROPPED_SOCKET_BUFFER] += self.claim_drops(newest)

    cdef void cut_up(self, uint64_t *stats) noexcept nogil:
        """Put the datagrams of the pending messages into the batch, while it has room."""
        cdef size_t length, size, offset, part
        cdef const uint8_t *base
        cdef mmsghdr *m
        while self.next_msg < self.got and self.n < self.capacity:
            m = &self.msgs[self.next_msg]
            length = m.msg_len
            base = self.buf + <size_t>self.next_msg * self.slot
            size = self.gro_size[self.next_msg]
            if (m.msg_hdr.msg_flags & MSG_TRUNC) or length >= self.slot:
                stats[<int>STAT_PACKETS_REJECTED_TRUNCATED] += 1
                self.next_msg += 1
                continue
            if size == 0 or size > length:
                size = length           # one datagram
            # Datagrams of `size` bytes, the last maybe shorter (an empty
            # datagram is one too, for the decoder to count).
            offset = self.next_offset
            while self.n < self.capacity:
                part = length - offset if length - offset < size else size
                if part > self.max_packet_size:
                    stats[<int>STAT_PACKETS_REJECTED_TRUNCATED] += 1
                else:
                    self.pkt_data[self.n] = base + offset
                    self.pkt_len[self.n] = part
                    self.n += 1
                offset += part
                if offset >= length:
                    break
            if offset < length:
                self.next_offset = offset
            else:
                self.next_offset = 0
                self.next_msg += 1

    cdef int drain(self, uint64_t *stats) noexcept nogil:
        """After stop(): receive what the kernel held at the stop, then READ_EOF.

        At most the bytes queued at the first call are read (SO_MEMINFO's
        receive memory, at least the datagrams' bytes), so a sender that goes
        on cannot keep the stop waiting.
        """
        cdef uint32_t mem[<int>SK_MEMINFO_VARS]
        cdef int got, i
        cdef size_t length
        if not self.draining:
            self.draining = True
            self.drain_budget = mem[<int>SK_MEMINFO_RMEM_ALLOC] if self.meminfo(mem) else 0
        if self.drain_budget == 0:
            return READ_EOF
        got = self.receive()
        if got <= 0:
            self.drain_budget = 0
            return READ_EOF
        for i in range(got):
            length = self.msgs[i].msg_len if self.msgs[i].msg_len > 0 else 1
            self.drain_budget = self.drain_budget - length if length < self.drain_budget else 0
        self.read_control(got, stats)
        self.got = got
        self.cut_up(stats)
        return <int>self.n if self.n > 0 else READ_AGAIN

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef pollfd pfd
        cdef int got
        self.n = 0
        self.pos = 0
        if self.next_msg < self.got:
            # Datagrams left over from the last messages go first, even after
            # stop(): they have left the kernel, so only daqd can count them.
            self.cut_up(stats)
            return <int>self.n
        self.got = self.next_msg = 0
        self.next_offset = 0
        if self.stop_flag:
            return self.drain(stats)
        got = self.receive()
        if got < 0 and (errno == EAGAIN):
            pfd.fd = self.fd
            pfd.events = POLLIN
            pfd.revents = 0
            got = poll(&pfd, 1, self.timeout_ms)
            if got <= 0:
                if got < 0 and errno != EINTR:
                    self.errno_value = errno
                    return READ_ERROR
                return READ_AGAIN
            got = self.receive()
        if got < 0:
            if errno == EAGAIN or errno == EINTR:
                return READ_AGAIN
            self.errno_value = errno
            return READ_ERROR
        self.read_control(got, stats)
        self.got = got
        self.cut_up(stats)
        return <int>self.n if self.n > 0 else READ_AGAIN
