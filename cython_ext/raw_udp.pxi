# The socket limit of ``daqd bench --mode udp``: a receiver that only counts.
#
# `RawUdpReceiver` is a UdpReader (the same socket options: the buffer the
# caller gave the socket, UDP GRO or not, SO_RXQ_OVFL with its control
# messages; the same recvmmsg batch and slots) whose loop does nothing with a
# datagram but count it: no decoding, no window, no copy.  What it sustains is
# what the kernel's receive path and recvmmsg allow on that socket.  It ends
# at the sender's end: the first datagram shorter than `min_size` (the
# benchmark's sender ends each trial with a stop heap, a short packet), or at
# `stop()` after the datagrams then queued.
#
# With `dst` and `copy_bytes` it also copies the last `copy_bytes` of every
# datagram into `dst` (one after another, from the start again at its end),
# with a chunk stream's copy: the socket limit plus the payload copy a
# receiver cannot avoid, and nothing of SPEAD (no decoding, window or
# placement).  Between it and the count alone lies the copy; between it and
# daqd, daqd's own per-packet work.


@cython.final
cdef class RawUdpReceiver(UdpReader):
    """Count the datagrams arriving on `sock` (see the file's comment).

    Parameters
    ----------
    sock : socket.socket
        A bound UDP socket, set up as for a `UdpReader`.
    min_size : int
        Datagrams shorter than this end the count (the sender's end marker);
        they are not counted.
    max_packet_size, batch, timeout_ms, gro
        As for `UdpReader`.
    dst : writable buffer of uint8, optional
        Where the payloads are copied (pre-touched by the caller); None: no copy.
    copy_bytes : int
        With `dst`: the bytes at the end of each datagram copied (its payload).
    memcpy : str
        With `dst`: ``nontemporal`` (a chunk stream's copy) or ``standard``.

    Raises
    ------
    ValueError
        `dst` without `copy_bytes` (or smaller than it), or `memcpy` names no copy.
    """

    cdef size_t min_size
    cdef readonly uint64_t datagrams      # counted (GRO segments one by one)
    cdef readonly uint64_t messages       # messages recvmmsg returned
    cdef readonly uint64_t calls          # recvmmsg calls that returned messages
    cdef readonly uint64_t nbytes         # bytes of the counted datagrams
    cdef readonly bint ended              # the end marker arrived
    cdef readonly uint64_t copied         # payload bytes copied into dst
    cdef uint64_t stats[<int>N_STATS]
    cdef uint8_t[::1] dst
    cdef uint8_t *dst_base                # NULL: no copies
    cdef size_t dst_size, dst_pos, copy_bytes
    cdef daqd_copy_fn copy

    def __init__(self, sock, *, size_t min_size=1, size_t max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 size_t batch=64, int timeout_ms=200, bint gro=True, dst=None,
                 size_t copy_bytes=0, str memcpy="nontemporal"):
        if dst is not None:
            if memcpy not in ("standard", "nontemporal"):
                raise ValueError(f"memcpy must be standard or nontemporal, not {memcpy!r}")
            self.dst = dst
            if copy_bytes == 0 or copy_bytes > <size_t>self.dst.shape[0]:
                raise ValueError(f"copy_bytes={copy_bytes}: expected 1 to the size of dst "
                                 f"({self.dst.shape[0]} bytes)")
            self.dst_base = &self.dst[0]
            self.dst_size = self.dst.shape[0]
            self.copy_bytes = copy_bytes
            daqd_copy_init()
            self.copy = daqd_copy_standard if memcpy == "standard" else daqd_copy_nontemporal
        super().__init__(sock, max_packet_size=max_packet_size, batch=batch,
                         timeout_ms=timeout_ms, gro=gro)
        self.min_size = min_size
        memset(self.stats, 0, sizeof(self.stats))

    def run(self):
        """Count until the end marker or `stop()`; return the datagrams counted.

        Raises
        ------
        OSError
            A system call failed.
        """
        cdef int rc
        with nogil:
            rc = self.count_loop()
        if rc == READ_ERROR:
            raise OSError(self.errno_value, os.strerror(self.errno_value))
        return self.datagrams

    def kernel_drops(self):
        """Datagrams the kernel dropped on the socket while counting (SO_RXQ_OVFL)."""
        return self.stats[<int>STAT_PACKETS_DROPPED_SOCKET_BUFFER] + self.poll_drops()

    cdef int count_loop(self) noexcept nogil:
        cdef pollfd pfd
        cdef int got
        pfd.fd = self.fd
        pfd.events = POLLIN
        while not self.ended:
            if self.stop_flag:
                # What was queued at the stop, then the end (UdpReader.drain).
                got = self.drain(self.stats)
                if got == READ_EOF:
                    return 0
                self.count_pending()
                continue
            got = self.receive()
            if got < 0 and errno == EAGAIN:
                pfd.revents = 0
                got = poll(&pfd, 1, self.timeout_ms)
                if got < 0 and errno != EINTR:
                    self.errno_value = errno
                    return READ_ERROR
                continue
            if got < 0:
                if errno == EINTR:
                    continue
                self.errno_value = errno
                return READ_ERROR
            self.read_control(got, self.stats)
            self.got = got
            self.count_pending()
        return 0

    cdef void count_pending(self) noexcept nogil:
        """Count the datagrams of the messages of the last recvmmsg."""
        cdef int i
        cdef size_t length, size, segments, last
        if self.got > 0:
            self.calls += 1
        for i in range(self.got):
            length = self.msgs[i].msg_len
            size = self.gro_size[i]
            self.messages += 1
            if size == 0 or size > length:
                size = length
            if size == 0:
                self.ended = True
                break
            segments = (length + size - 1) // size
            last = length - (segments - 1) * size
            if last < self.min_size:
                segments -= 1               # the end marker, cut off a GRO message
                self.ended = True
            self.datagrams += segments
            self.nbytes += length if not self.ended else length - last
            if self.dst_base != NULL:
                self.copy_payloads(self.buf + <size_t>i * self.slot, size, segments, length)
            if self.ended:
                break
        if self.dst_base != NULL:
            daqd_copy_fence()
        self.got = self.next_msg = 0
        self.n = 0

    cdef void copy_payloads(self, const uint8_t *message, size_t size, size_t segments,
                            size_t length) noexcept nogil:
        """Copy the payload (last `copy_bytes`) of each of a message's first `segments`."""
        cdef size_t k, part, offset = 0
        for k in range(segments):
            part = length - offset if length - offset < size else size
            if part >= self.copy_bytes:
                if self.dst_pos + self.copy_bytes > self.dst_size:
                    self.dst_pos = 0
                self.copy(self.dst_base + self.dst_pos, message + offset + part - self.copy_bytes,
                          self.copy_bytes)
                self.dst_pos += self.copy_bytes
                self.copied += self.copy_bytes
            offset += part
