# Readers: fill a batch of packets in C memory without the GIL.
#
# Reader.fill() runs inside the stream's nogil region.  It sets `n` packets in
# `pkt_data`/`pkt_len` (pointers into the reader's own buffer, valid until the
# next fill) and returns:
#   > 0          packets in the batch
#   READ_AGAIN   nothing arrived within the poll timeout; call again
#   READ_EOF     the source has ended
#   READ_ERROR   a system call failed; `errno_value` says why
# Per-packet problems never raise: they are counted in `stats`.

from libc.errno cimport errno, EINTR, EAGAIN
from posix.unistd cimport read, write
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
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_TRUNC

cdef enum:
    READ_AGAIN = 0
    READ_EOF = -1
    READ_ERROR = -2


cdef class Reader:
    """Base of every packet source; see the module comment for the contract."""

    cdef const uint8_t **pkt_data
    cdef size_t *pkt_len
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

    cdef int alloc_batch(self, size_t capacity) except -1:
        self.capacity = capacity
        self.pkt_data = <const uint8_t **>malloc(capacity * sizeof(uint8_t *))
        self.pkt_len = <size_t *>malloc(capacity * sizeof(size_t))
        if self.pkt_data == NULL or self.pkt_len == NULL:
            raise MemoryError()
        return 0

    def __dealloc__(self):
        free(self.pkt_data)
        free(self.pkt_len)
        free(self.tap_buf)
        free(self.tap_lens)

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        return READ_EOF

    cdef void tap_batch(self, uint64_t *stats) noexcept nogil:
        """Copy the batch's packets into the tap; count those it has no room for."""
        cdef size_t i, length
        for i in range(self.pos, self.n):
            length = self.pkt_len[i]
            if self.tap_n >= self.tap_packets_cap or \
                    self.tap_used + length > self.tap_bytes_cap:
                stats[<int>STAT_TAP_DROPPED] += self.n - i
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
        """Ask a blocking fill() to return at its next poll timeout."""
        self.stop_flag = True

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


# --------------------------------------------------------------------------
# Byte streams: file, stdin, TCP and in-memory buffers, packets back to back.

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
    cdef uint8_t *buf
    cdef size_t bufsize
    cdef size_t start, end      # unconsumed bytes are buf[start:end]
    cdef size_t max_packet_size
    cdef size_t to_skip         # bytes of an over-long packet still to skip
    cdef int timeout_ms
    cdef object keepalive       # the Python buffer or file object behind fd/buf
    cdef const uint8_t[::1] view

    def __init__(self, object source, *, size_t max_packet_size=9200, size_t batch=64,
                 size_t bufsize=4 << 20, int timeout_ms=200, bint finite=True):
        self.alloc_batch(batch)
        self.max_packet_size = max_packet_size
        self.timeout_ms = timeout_ms
        self.finite = finite
        if isinstance(source, int):
            self.fd = source
            self.bufsize = max(bufsize, 2 * max_packet_size + 16)
            self.buf = <uint8_t *>malloc(self.bufsize)
            if self.buf == NULL:
                raise MemoryError()
        else:
            self.fd = -1
            self.view = memoryview(source).cast("B")
            self.keepalive = source
            self.end = self.view.shape[0]
            if self.end:
                self.buf = <uint8_t *>&self.view[0]

    def __dealloc__(self):
        if self.fd >= 0:
            free(self.buf)

    def keep(self, obj):
        """Keep `obj` (a socket or file owning the descriptor) alive with the reader."""
        self.keepalive = obj

    def close(self):
        if self.keepalive is not None and hasattr(self.keepalive, "close"):
            self.keepalive.close()

    cdef int read_more(self) noexcept nogil:
        """Read into the buffer; READ_AGAIN, READ_EOF, READ_ERROR or > 0."""
        cdef pollfd pfd
        cdef ssize_t got
        if self.fd < 0:
            return READ_EOF
        if self.start > 0:
            memmove(self.buf, self.buf + self.start, self.end - self.start)
            self.end -= self.start
            self.start = 0
        pfd.fd = self.fd
        pfd.events = POLLIN
        pfd.revents = 0
        got = poll(&pfd, 1, self.timeout_ms)
        if got == 0 or (got < 0 and errno == EINTR):
            return READ_AGAIN
        if got < 0:
            self.errno_value = errno
            return READ_ERROR
        got = read(self.fd, self.buf + self.end, self.bufsize - self.end)
        if got < 0:
            if errno == EINTR or errno == EAGAIN:
                return READ_AGAIN
            self.errno_value = errno
            return READ_ERROR
        if got == 0:
            return READ_EOF
        self.end += <size_t>got
        return 1

    cdef void resync(self, uint64_t *stats) noexcept nogil:
        """Skip to the next byte pair that could start a SPEAD header."""
        cdef size_t i = self.start + 1
        cdef int bits
        while i < self.end:
            if self.buf[i] == SPEAD_MAGIC:
                if i + 8 > self.end:
                    break       # maybe a header; decide once more bytes arrive
                if decode_header_flavour(self.buf + i, 8, &bits) == DECODE_OK:
                    break
            i += 1
        stats[<int>STAT_STREAM_BYTES_SKIPPED] += i - self.start
        self.start = i

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef PacketHeader hdr
        cdef DecodeStatus status
        cdef size_t avail, limit
        cdef int rc
        self.n = 0
        self.pos = 0
        while self.n < self.capacity:
            if self.stop_flag:
                self.eof = True
                return READ_EOF
            if self.to_skip:
                avail = self.end - self.start
                if avail > self.to_skip:
                    avail = self.to_skip
                self.start += avail
                self.to_skip -= avail
                stats[<int>STAT_STREAM_BYTES_SKIPPED] += avail
                if self.to_skip == 0:
                    continue
                if self.eof:
                    self.to_skip = 0        # the stream ended inside the packet
                    continue
                if self.n > 0:
                    return <int>self.n      # hand over what we have first
                rc = self.read_more()
                if rc == READ_EOF:
                    self.eof = True
                elif rc <= 0:
                    return rc
                continue
            avail = self.end - self.start
            limit = avail if avail < self.max_packet_size else self.max_packet_size
            status = decode_packet(self.buf + self.start, limit, &hdr)
            if status == DECODE_OK:
                self.pkt_data[self.n] = self.buf + self.start
                self.pkt_len[self.n] = hdr.size
                self.n += 1
                self.start += hdr.size
                continue
            if status == DECODE_PAYLOAD_LENGTH and hdr.size > self.max_packet_size:
                # Longer than any packet accepted: skip it whole by its declared size.
                stats[<int>STAT_REJECT_PAYLOAD_LENGTH] += 1
                self.to_skip = hdr.size
                continue
            # Too few bytes may only mean the rest has not been read yet.
            if (status == DECODE_TOO_SHORT or status == DECODE_ITEMS_OVERFLOW
                    or status == DECODE_PAYLOAD_LENGTH) \
                    and avail < self.max_packet_size and not self.eof:
                if self.n > 0:
                    return <int>self.n      # hand over what we have first
                rc = self.read_more()
                if rc == READ_EOF:
                    self.eof = True
                    continue
                if rc <= 0:
                    return rc
                continue
            if avail == 0:
                self.eof = True
                return <int>self.n if self.n > 0 else READ_EOF
            stats[<int>decode_status_stat(status)] += 1
            if self.eof and (status == DECODE_TOO_SHORT or status == DECODE_ITEMS_OVERFLOW
                             or status == DECODE_PAYLOAD_LENGTH):
                # A packet cut off by the end of the stream.
                stats[<int>STAT_STREAM_BYTES_SKIPPED] += avail
                self.start = self.end
                continue
            self.resync(stats)
        return <int>self.n


# --------------------------------------------------------------------------
# UDP: recvmmsg batches.

cdef class UdpReader(Reader):
    """Datagrams from a bound UDP socket, received in recvmmsg batches."""

    cdef int fd
    cdef uint8_t *buf
    cdef size_t slot                # bytes per datagram slot
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef int timeout_ms
    cdef object sock
    cdef uint8_t *control           # one SO_RXQ_OVFL control message per slot
    cdef size_t control_size
    cdef uint32_t kernel_drops      # last cumulative drop count the kernel reported

    def __init__(self, sock, *, size_t max_packet_size=9200, size_t batch=64,
                 int timeout_ms=200):
        self.alloc_batch(batch)
        self.sock = sock
        self.fd = sock.fileno()
        self.timeout_ms = timeout_ms
        self.finite = False
        # One spare byte per slot: a datagram that fills it is too long.
        self.slot = max_packet_size + 1
        self.buf = <uint8_t *>malloc(batch * self.slot)
        self.msgs = <mmsghdr *>malloc(batch * sizeof(mmsghdr))
        self.iovs = <iovec *>malloc(batch * sizeof(iovec))
        self.control_size = CMSG_SPACE(sizeof(uint32_t))
        self.control = <uint8_t *>malloc(batch * self.control_size)
        if self.buf == NULL or self.msgs == NULL or self.iovs == NULL or self.control == NULL:
            raise MemoryError()
        memset(self.msgs, 0, batch * sizeof(mmsghdr))
        # The kernel then reports, with each datagram, how many it has dropped
        # on this socket so far: loss before daqd ever saw a packet is counted.
        cdef int on = 1
        setsockopt(self.fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof(on))
        cdef size_t i
        for i in range(batch):
            self.iovs[i].iov_base = self.buf + i * self.slot
            self.iovs[i].iov_len = self.slot
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.buf)
        free(self.msgs)
        free(self.iovs)
        free(self.control)

    def close(self):
        self.sock.close()

    cdef void reset_control(self) noexcept nogil:
        cdef size_t i
        for i in range(self.capacity):
            self.msgs[i].msg_hdr.msg_control = self.control + i * self.control_size
            self.msgs[i].msg_hdr.msg_controllen = self.control_size

    cdef void count_kernel_drops(self, int got, uint64_t *stats) noexcept nogil:
        cdef int i
        cdef cmsghdr *c
        cdef uint32_t drops, newest = self.kernel_drops
        for i in range(got):
            c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
                    memcpy(&drops, CMSG_DATA(c), sizeof(uint32_t))
                    # The count is cumulative and wraps at 2**32.
                    if <uint32_t>(drops - newest) < 0x80000000U:
                        newest = drops
                c = CMSG_NXTHDR(&self.msgs[i].msg_hdr, c)
        stats[<int>STAT_SOCKET_DROPS] += <uint32_t>(newest - self.kernel_drops)
        self.kernel_drops = newest

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef pollfd pfd
        cdef int got, i
        cdef unsigned int length
        self.n = 0
        self.pos = 0
        if self.stop_flag:
            return READ_EOF
        self.reset_control()
        got = recvmmsg(self.fd, self.msgs, <unsigned int>self.capacity, MSG_DONTWAIT, NULL)
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
            self.reset_control()
            got = recvmmsg(self.fd, self.msgs, <unsigned int>self.capacity, MSG_DONTWAIT, NULL)
        if got < 0:
            if errno == EAGAIN or errno == EINTR:
                return READ_AGAIN
            self.errno_value = errno
            return READ_ERROR
        self.count_kernel_drops(got, stats)
        for i in range(got):
            length = self.msgs[i].msg_len
            if length >= self.slot or (self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC):
                stats[<int>STAT_REJECT_TRUNCATED] += 1
                continue
            self.pkt_data[self.n] = self.buf + <size_t>i * self.slot
            self.pkt_len[self.n] = length
            self.n += 1
        return <int>self.n if self.n > 0 else READ_AGAIN
