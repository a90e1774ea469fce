# The reference workloads (DESIGN.md): generator, sim: source and senders.
#
# Every packet carries the six item pointers of spead2's sender with
# repeat_pointers: HEAP_CNT, HEAP_SIZE, HEAP_OFFSET, PAYLOAD_LENGTH, the
# immediate timestamp 0x1600 and the data item 0x3300 at address 0, in
# SPEAD-64-48.  Heap i (from 0) has HEAP_CNT first_cnt + i and timestamp
# i * step.  Payload bytes are a fixed pattern except the first 8 bytes of
# each packet, which hold (HEAP_CNT << 16 | packet index) so that misplaced
# data is visible.

cdef enum:
    SIM_HEADER_BYTES = 56
    TIMESTAMP_ID = 0x1600
    DATA_ID = 0x3300

# For Python (daqd.recv.workloads names the workloads from these).
WORKLOAD_TIMESTAMP_ITEM = TIMESTAMP_ID
WORKLOAD_DATA_ITEM = DATA_ID
WORKLOAD_HEADER_BYTES = SIM_HEADER_BYTES
WORKLOAD_FIRST_CNT = 1                  # HEAP_CNT of a SimReader's first heap, by default


WORKLOADS = {
    # name: (heap payload bytes, packets per heap, timestamp step)
    "W1": (8192, 1, 8192),
    "W2": (1024, 1, 1024),
    "W3": (65536, 8, 65536),
}


cdef inline uint64_t imm(uint64_t item_id, uint64_t value) noexcept nogil:
    return (1ULL << 63) | (item_id << 48) | (value & 0xFFFFFFFFFFFFULL)


cdef class SimReader(Reader):
    """Generates a reference workload into a reusable batch buffer.

    Parameters
    ----------
    workload : str
        ``"W1"``, ``"W2"`` or ``"W3"``.
    heaps : int
        Heaps to generate, 0 for an endless stream.
    rate : float
        Bytes per second of whole packets, 0 for as fast as possible.
    batch : int
        Packets per batch.
    catch_up : bool
        With a `rate`: when the consumer falls behind the schedule, send
        at full speed until back on it (the default: the average rate is
        kept).  False: past `max_behind` seconds behind, the schedule starts
        again from now, so the rate never exceeds `rate` for long (no catch-up
        burst; the average rate is then below `rate`).
    max_behind : float
        How far behind the schedule the sender may fall without `catch_up`.
    """

    cdef uint8_t *buf
    cdef readonly size_t packet_size
    cdef readonly size_t heap_bytes
    cdef readonly size_t packets_per_heap
    cdef readonly uint64_t step
    cdef readonly uint64_t heaps
    cdef readonly uint64_t first_cnt
    cdef uint64_t next_packet         # packets generated so far
    cdef readonly double rate       # bytes per second of whole packets (0: full speed)
    cdef uint64_t start_ns
    cdef bint catch_up
    cdef uint64_t max_behind_ns
    cdef readonly uint64_t schedule_resets  # times the schedule started again (no catch-up)

    def __init__(self, str workload="W1", *, uint64_t heaps=0, double rate=0.0,
                 size_t batch=64, uint64_t first_cnt=WORKLOAD_FIRST_CNT, bint catch_up=True,
                 double max_behind=0.001):
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r} (expected W1, W2 or W3)")
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if max_behind < 0:
            raise ValueError("max_behind must be >= 0")
        self.catch_up = catch_up
        self.max_behind_ns = <uint64_t>(max_behind * 1e9)
        heap_bytes, per_heap, step = WORKLOADS[workload]
        self.alloc_batch(batch)
        self.heap_bytes = heap_bytes
        self.packets_per_heap = per_heap
        self.step = step
        self.heaps = heaps
        self.rate = rate
        self.first_cnt = first_cnt
        self.finite = heaps != 0
        self.packet_size = SIM_HEADER_BYTES + self.heap_bytes // self.packets_per_heap
        self.buf = <uint8_t *>malloc(batch * self.packet_size)
        if self.buf == NULL:
            raise MemoryError()
        cdef size_t i, j
        cdef uint8_t *pkt
        cdef size_t payload = self.packet_size - SIM_HEADER_BYTES
        for i in range(batch):
            pkt = self.buf + i * self.packet_size
            pkt[0] = SPEAD_MAGIC
            pkt[1] = SPEAD_VERSION
            pkt[2] = 2                          # 16-bit item ids
            pkt[3] = 6                          # 48-bit heap addresses
            pkt[4] = 0
            pkt[5] = 0
            store_be16(pkt + 6, 6)
            store_be64(pkt + 48, (<uint64_t>DATA_ID) << 48)  # addressed, offset 0
            for j in range(payload):
                pkt[SIM_HEADER_BYTES + j] = <uint8_t>(j * 7 + 3)
            self.pkt_data[i] = pkt
            self.pkt_len[i] = self.packet_size

    def __dealloc__(self):
        free(self.buf)

    @property
    def total_packets(self):
        """Packets in the whole finite stream (0 when endless)."""
        return self.heaps * self.packets_per_heap

    def progress(self):
        """(bytes of whole packets generated so far, of the whole stream; 0 when endless)."""
        return self.next_packet * self.packet_size, self.total_packets * self.packet_size

    cdef void pace(self, size_t n) noexcept nogil:
        """Sleep until `n` more packets are due at the configured rate."""
        cdef uint64_t now, due
        cdef timespec ts
        if self.rate <= 0:
            return
        if self.start_ns == 0:
            self.start_ns = monotonic_ns()
        due = self.start_ns + <uint64_t>(
            <double>((self.next_packet + n) * self.packet_size) / self.rate * 1e9)
        now = monotonic_ns()
        if not self.catch_up and now > due + self.max_behind_ns:
            self.start_ns += now - due          # behind: the schedule starts again now
            self.schedule_resets += 1
        elif due > now:
            ts.tv_sec = <long>((due - now) // 1000000000ULL)
            ts.tv_nsec = <long>((due - now) % 1000000000ULL)
            nanosleep(&ts, NULL)

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef size_t i, n = self.capacity
        cdef uint64_t k, heap, index, cnt
        cdef uint8_t *pkt
        cdef size_t payload = self.packet_size - SIM_HEADER_BYTES
        self.pos = 0
        self.n = 0
        if self.stop_flag:
            return READ_EOF
        if self.heaps:
            if self.next_packet >= self.heaps * self.packets_per_heap:
                self.eof = True
                return READ_EOF
            if self.heaps * self.packets_per_heap - self.next_packet < n:
                n = <size_t>(self.heaps * self.packets_per_heap - self.next_packet)
        self.pace(n)
        for i in range(n):
            k = self.next_packet + i
            heap = k // self.packets_per_heap
            index = k % self.packets_per_heap
            cnt = self.first_cnt + heap
            pkt = self.buf + i * self.packet_size
            store_be64(pkt + 8, imm(HEAP_CNT_ID, cnt))
            store_be64(pkt + 16, imm(HEAP_LENGTH_ID, self.heap_bytes))
            store_be64(pkt + 24, imm(PAYLOAD_OFFSET_ID, index * payload))
            store_be64(pkt + 32, imm(PAYLOAD_LENGTH_ID, payload))
            store_be64(pkt + 40, imm(TIMESTAMP_ID, heap * self.step))
            store_be64(pkt + SIM_HEADER_BYTES, (cnt << 16) | index)
        self.next_packet += n
        self.n = n
        return <int>n


def stop_packet(uint64_t cnt):
    """A single-packet heap carrying only the stream-control stop item."""
    cdef bytearray pkt = bytearray(8 + 5 * 8)
    cdef uint8_t *p = <uint8_t *>pkt
    p[0] = SPEAD_MAGIC
    p[1] = SPEAD_VERSION
    p[2] = 2
    p[3] = 6
    store_be16(p + 6, 5)
    store_be64(p + 8, imm(HEAP_CNT_ID, cnt))
    store_be64(p + 16, imm(HEAP_LENGTH_ID, 0))
    store_be64(p + 24, imm(PAYLOAD_OFFSET_ID, 0))
    store_be64(p + 32, imm(PAYLOAD_LENGTH_ID, 0))
    store_be64(p + 40, imm(STREAM_CTRL_ID, CTRL_STREAM_STOP))
    return bytes(pkt)


cdef int write_all(int fd, const uint8_t *data, size_t size) noexcept nogil:
    """write() until done; 0 or an errno value."""
    cdef ssize_t got
    cdef pollfd pfd
    while size > 0:
        got = write(fd, data, size)
        if got < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                pfd.fd = fd
                pfd.events = POLLOUT
                poll(&pfd, 1, 100)
                continue
            return errno
        data += got
        size -= <size_t>got
    return 0


cdef enum:
    SEND_DATAGRAM = 0
    SEND_STREAM = 1
    SEND_PCAP = 2


# UDP generic segmentation offload (Linux >= 4.18): one sendmsg of up to 64 KiB
# carries several equal-size datagrams, with a UDP_SEGMENT control message
# giving their size; the kernel cuts it into separate datagrams (on loopback
# as late as the receiving socket), which arrive exactly as if sent one by one.
from libc.stdlib cimport calloc

cdef extern from "<errno.h>" nogil:
    enum: EINVAL
    enum: EIO
    enum: EMSGSIZE
    enum: ENOPROTOOPT
    enum: EOPNOTSUPP

cdef extern from "<sys/socket.h>" nogil:
    size_t CMSG_LEN(size_t length)

cdef enum:
    DAQD_SOL_UDP = 17           # SOL_UDP, IPPROTO_UDP
    DAQD_UDP_SEGMENT = 103      # UDP_SEGMENT (linux/udp.h); older libc headers lack it
    GSO_MAX_BYTES = 65507       # UDP payload of one IPv4 datagram: 65535 - 20 - 8
    GSO_MAX_SEGMENTS = 64       # UDP_MAX_SEGMENTS of kernels before 6.x (now 128)


cdef inline size_t gso_segments(size_t size) noexcept nogil:
    """Datagrams of `size` bytes one GSO send may carry (0 or 1: GSO is no use)."""
    if size == 0 or size > 0xFFFF:
        return 0
    return min(<size_t>GSO_MAX_SEGMENTS, <size_t>GSO_MAX_BYTES // size)


def udp_gso_segments(size_t size):
    """How many `size`-byte datagrams one UDP GSO send carries (at most 64).

    Senders get the most out of GSO with batches a multiple of this.
    """
    return gso_segments(size)


cdef bint gso_refused(int err) noexcept nogil:
    """Whether a send error means "no GSO here" (send the datagrams one by one).

    EINVAL, EIO, ENOPROTOOPT and EOPNOTSUPP: this kernel, socket or route
    cannot segment (no UDP_SEGMENT, SO_NO_CHECK, no checksum offload, IPsec);
    EMSGSIZE: a datagram is over the path MTU, which the kernel would
    fragment when sent alone but refuses to segment.
    """
    return (err == EINVAL or err == EIO or err == ENOPROTOOPT or err == EOPNOTSUPP
            or err == EMSGSIZE)


cdef int send_datagrams(int fd, const uint8_t **data, const size_t *length, size_t n,
                        mmsghdr *msgs, iovec *iovs, uint64_t *dropped) noexcept nogil:
    """sendmmsg every packet as its own message; 0 or an errno value."""
    cdef size_t i, done
    cdef int got
    for i in range(n):
        iovs[i].iov_base = <void *>data[i]
        iovs[i].iov_len = length[i]
        msgs[i].msg_hdr.msg_iov = &iovs[i]
        msgs[i].msg_hdr.msg_iovlen = 1
        msgs[i].msg_hdr.msg_control = NULL
        msgs[i].msg_hdr.msg_controllen = 0
    done = 0
    while done < n:
        got = sendmmsg(fd, msgs + done, <unsigned int>(n - done), 0)
        if got < 0:
            if errno == EINTR or errno == EAGAIN \
                    or errno == ENOBUFS:    # the kernel dropped it: count it
                if errno == ENOBUFS:
                    dropped[0] += 1
                    done += 1
                continue
            return errno
        done += <size_t>got
    return 0


cdef int send_gso(int fd, const uint8_t **data, const size_t *length, size_t n,
                  mmsghdr *msgs, iovec *iovs, uint8_t *control, size_t *first,
                  uint64_t *dropped, int *gso) noexcept nogil:
    """Send a batch with UDP GSO, runs of equal-size packets as one message each.

    Runs of packets of one size (up to `gso_segments` of them) become one
    message with a UDP_SEGMENT control message; the packets' bytes are
    gathered with one iovec per stretch contiguous in memory.  A packet of
    its own goes as a plain message.  If the kernel refuses to segment
    (`gso_refused`), `gso[0]` is set to the errno value and the rest of the
    batch, and every later one, goes out packet by packet.  0 or an errno
    value.
    """
    cdef size_t i = 0, j, k, m = 0, v = 0, size, limit, done
    cdef size_t space = CMSG_SPACE(sizeof(uint16_t))
    cdef cmsghdr *c
    cdef uint16_t seg
    cdef int got, err
    cdef msghdr *h
    while i < n:
        size = length[i]
        limit = gso_segments(size)
        j = i + 1
        while j < n and j - i < limit and length[j] == size:
            j += 1
        h = &msgs[m].msg_hdr
        first[m] = i
        h.msg_iov = &iovs[v]
        h.msg_iovlen = 1
        iovs[v].iov_base = <void *>data[i]
        iovs[v].iov_len = size
        for k in range(i + 1, j):
            if <const uint8_t *>iovs[v].iov_base + iovs[v].iov_len == data[k]:
                iovs[v].iov_len += size
            else:
                v += 1
                h.msg_iovlen += 1
                iovs[v].iov_base = <void *>data[k]
                iovs[v].iov_len = size
        v += 1
        if j - i > 1:
            h.msg_control = control + m * space
            h.msg_controllen = space
            c = CMSG_FIRSTHDR(h)
            c.cmsg_level = DAQD_SOL_UDP
            c.cmsg_type = DAQD_UDP_SEGMENT
            c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            seg = <uint16_t>size
            memcpy(CMSG_DATA(c), &seg, sizeof(uint16_t))
        else:
            h.msg_control = NULL
            h.msg_controllen = 0
        m += 1
        i = j
    first[m] = n
    done = 0
    while done < m:
        got = sendmmsg(fd, msgs + done, <unsigned int>(m - done), 0)
        if got >= 0:
            done += <size_t>got
            continue
        err = errno
        if err == EINTR or err == EAGAIN:
            continue
        if err == ENOBUFS:          # the kernel dropped the message's datagrams
            dropped[0] += first[done + 1] - first[done]
            done += 1
            continue
        if msgs[done].msg_hdr.msg_control != NULL and gso_refused(err):
            gso[0] = err
            i = first[done]
            return send_datagrams(fd, data + i, length + i, n - i, msgs, iovs, dropped)
        return err
    return 0


cdef int send_batch(int fd, int mode, const uint8_t **data, const size_t *length, size_t n,
                    mmsghdr *msgs, iovec *iovs, uint8_t *control, size_t *first,
                    uint8_t *scratch, uint16_t port, uint64_t *dropped,
                    int *gso) noexcept nogil:
    """Send one batch of packets; 0 or an errno value.

    In datagram mode `gso[0]` == 0 sends with UDP GSO (`send_gso`), anything
    else (the errno value that turned GSO off, or -1) packet by packet.
    """
    cdef size_t i, done, off
    cdef int err
    if mode == SEND_DATAGRAM:
        if gso[0] == 0:
            return send_gso(fd, data, length, n, msgs, iovs, control, first, dropped, gso)
        return send_datagrams(fd, data, length, n, msgs, iovs, dropped)
    if mode == SEND_STREAM:
        # Packets of one batch may be contiguous (sim) or not (anything else).
        i = 0
        while i < n:
            done = length[i]
            while i + 1 < n and data[i] + done == data[i + 1]:
                i += 1
                done += length[i]
            err = write_all(fd, data[i] + length[i] - done, done)
            if err:
                return err
            i += 1
        return 0
    # pcap: one record per packet (pcap.pxi); one too long to frame is dropped
    off = 0
    for i in range(n):
        done = pcap_write_frame(scratch + off, data[i], length[i], port, monotonic_ns())
        if done == 0:
            dropped[0] += 1
        off += done
    return write_all(fd, scratch, off)


def send(Reader source, int fd, str mode, *, int port=DEFAULT_UDP_PORT, object max_packets=None,
         bint gso=False, dict info=None):
    """Send every packet of `source` to `fd` until it ends.

    Parameters
    ----------
    source : Reader
        Where packets come from (a SimReader for ``daqd simulate``).
    fd : int
        A connected UDP socket (``mode="udp"``), a stream socket or file
        (``"stream"``), or a file already holding a pcap file header
        (``"pcap"``).
    port : int
        UDP destination port recorded in pcap frames.
    max_packets : int, optional
        Stop after this many packets.
    gso : bool
        In ``"udp"`` mode, send runs of equal-size packets with UDP generic
        segmentation offload (several datagrams per system call; the same
        datagrams arrive).  Where the kernel refuses it, the packets go one
        by one, as without `gso`.
    info : dict, optional
        Filled in with ``"gso"``: whether GSO was still on at the end, and
        ``"gso_errno"``: the errno value that turned it off (0: none; -1:
        the socket has no UDP_SEGMENT option).

    Returns
    -------
    (packets, bytes, dropped) : tuple of int
    """
    cdef int imode = {"udp": SEND_DATAGRAM, "stream": SEND_STREAM, "pcap": SEND_PCAP}[mode]
    cdef size_t cap = source.capacity
    cdef size_t space = CMSG_SPACE(sizeof(uint16_t))
    cdef mmsghdr *msgs = <mmsghdr *>malloc(cap * sizeof(mmsghdr))
    cdef iovec *iovs = <iovec *>malloc(cap * sizeof(iovec))
    cdef uint8_t *control = NULL
    cdef size_t *first = NULL
    cdef uint8_t *scratch = NULL
    cdef uint64_t stats[<int>N_STATS]
    cdef uint64_t packets = 0, nbytes = 0, dropped = 0
    cdef uint64_t limit = max_packets if max_packets is not None else 0
    cdef int rc = 0, err = 0, gso_state = -1, value = 0
    cdef unsigned int value_size = sizeof(value)
    memset(stats, 0, sizeof(stats))
    cdef size_t i, n = 0, need = 0, scratch_size = 0
    if gso and imode == SEND_DATAGRAM:
        # Kernels before 4.18 have no such option: ENOPROTOOPT.
        if getsockopt(fd, DAQD_SOL_UDP, DAQD_UDP_SEGMENT, &value, &value_size) == 0:
            gso_state = 0
            control = <uint8_t *>calloc(cap, space)
            first = <size_t *>malloc((cap + 1) * sizeof(size_t))
    if msgs == NULL or iovs == NULL or (gso_state == 0 and (control == NULL or first == NULL)):
        free(msgs)
        free(iovs)
        free(control)
        free(first)
        raise MemoryError()
    memset(msgs, 0, cap * sizeof(mmsghdr))
    try:
        while True:
            need = 0
            with nogil:
                rc = source.fill(stats)
                if rc > 0:
                    n = source.n
                    if limit and packets + n > limit:
                        n = <size_t>(limit - packets)
                    for i in range(n):
                        need += source.pkt_len[i] + PCAP_FRAME_HEADER_BYTES
            if rc == READ_ERROR:
                raise OSError(source.errno_value, os.strerror(source.errno_value))
            if rc == READ_EOF:
                break
            if rc == READ_AGAIN:
                continue
            if imode == SEND_PCAP and need > scratch_size:
                free(scratch)
                scratch = <uint8_t *>malloc(need)
                if scratch == NULL:
                    raise MemoryError()
                scratch_size = need
            with nogil:
                err = send_batch(fd, imode, source.pkt_data, source.pkt_len, n, msgs, iovs,
                                 control, first, scratch, <uint16_t>port, &dropped, &gso_state)
                for i in range(n):
                    nbytes += source.pkt_len[i]
                packets += n
            source.pos = source.n
            if err:
                raise OSError(err, os.strerror(err))
            if limit and packets >= limit:
                break
    finally:
        free(msgs)
        free(iovs)
        free(control)
        free(first)
        free(scratch)
        if info is not None:
            info["gso"] = gso_state == 0
            info["gso_errno"] = gso_state if gso and imode == SEND_DATAGRAM else 0
    return packets, nbytes, dropped
