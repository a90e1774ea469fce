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
    """

    cdef size_t min_size
    cdef readonly uint64_t datagrams      # counted (GRO segments one by one)
    cdef readonly uint64_t messages       # messages recvmmsg returned
    cdef readonly uint64_t calls          # recvmmsg calls that returned messages
    cdef readonly uint64_t nbytes         # bytes of the counted datagrams
    cdef readonly bint ended              # the end marker arrived
    cdef uint64_t stats[<int>N_STATS]

    def __init__(self, sock, *, size_t min_size=1, size_t max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 size_t batch=64, int timeout_ms=200, bint gro=True):
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
            if self.ended:
                break
        self.got = self.next_msg = 0
        self.n = 0
