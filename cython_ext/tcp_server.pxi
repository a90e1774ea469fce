# tcp:// sources: a listener that serves sender after sender, several at once.
#
# spead2's TCP reader accepts one connection and ends the stream when it
# closes; a daemon serving a port must outlive its peers.  TcpServerReader owns
# the listening socket and up to MAX_TCP_PEERS connections, and fill() runs
# without the GIL: packets already buffered are cut up first (peer after
# peer, round robin); only with an empty batch does it poll the listener and
# the peers together, accept whoever is waiting and read whatever arrived.
# Each peer's bytes are a ByteStream of their own (readers.pxi), so a packet
# never spans two peers, and a peer that closes mid-packet costs only that
# packet (its bytes counted as tcp_bytes_truncated).  As ByteStreamReader, it
# hands the stream each packet's header, decoded while cutting it out, so the
# window does not decode it again (`pkt_hdr`); it does not prefetch their
# payloads, which read() has just written.  `once` keeps spead2's
# behaviour: one connection, and the source ends when it closes.
#
# Idle peers cannot lock the port: when every slot is taken, a new connection
# evicts the peer that has sent nothing for the longest time
# (tcp_connections_evicted), and a peer that sends nothing for `idle_timeout`
# seconds is closed (tcp_connections_idle_closed); either way its partial
# packet's bytes count as tcp_bytes_truncated, as for a peer that closes.  The
# clock (CLOCK_MONOTONIC) is read once per poll, never per packet.
#
# Peer slots and their buffers are allocated on first use and kept, so a new
# connection allocates nothing once as many peers have come before.

from posix.unistd cimport close as close_fd

cdef extern from "<sys/socket.h>" nogil:
    struct sockaddr:
        pass
    int accept4(int sockfd, sockaddr *addr, unsigned int *addrlen, int flags)
    enum: SOCK_NONBLOCK
    enum: SOCK_CLOEXEC

cdef extern from "<errno.h>" nogil:
    enum: ECONNABORTED

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t ntohs(uint16_t value)
    uint32_t ntohl(uint32_t value)

cdef enum:
    # Connections served at once; a newcomer beyond them evicts the idlest (counted).
    MAX_TCP_PEERS = 16
    # Connection events kept for take_events() between two calls; more are only counted.
    TCP_EVENTS = 64
    TCP_PEER_BUFFER = 256 << 10

#: Connections a tcp:// source serves at once.
TCP_MAX_PEERS = MAX_TCP_PEERS


cdef struct TcpPeer:
    int fd                      # -1: the slot is free
    ByteStream bs
    uint32_t addr               # host byte order
    uint16_t port
    uint64_t received           # bytes read from this connection
    uint64_t active_ns          # monotonic time of its accept or its last bytes


cdef enum TcpEventKind:
    TCP_ACCEPTED
    TCP_CLOSED                  # by the peer (or a reset)
    TCP_EVICTED                 # by us: the idlest, to make room for a new peer
    TCP_IDLE_CLOSED             # by us: nothing for idle_timeout

_TCP_EVENT_NAMES = ("accepted", "closed", "evicted", "idle closed")


cdef struct TcpEvent:
    TcpEventKind kind
    uint32_t addr
    uint16_t port
    uint64_t received


cdef str _peer_name(uint32_t addr, uint16_t port):
    return (f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}"
            f":{port}")


cdef class TcpServerReader(Reader):
    """Packets from every connection to a listening TCP socket (``tcp://``).

    Parameters
    ----------
    fd : int
        A bound, listening, non-blocking socket; the reader owns it from now on
        (pass ``socket.detach()``) and closes it.
    max_packet_size : int
        Largest packet accepted (longer ones are skipped whole, as for files).
    once : bool
        spead2's behaviour: serve the first connection only; the reader ends
        when it closes.
    idle_timeout : float
        Seconds a peer may send nothing before it is closed (0: never).
    """

    cdef int listen_fd
    cdef TcpPeer slots[<int>MAX_TCP_PEERS]
    cdef size_t cursor              # the peer to cut packets from first
    cdef size_t max_packet_size
    cdef size_t bufsize
    cdef int timeout_ms
    cdef uint64_t idle_timeout_ns   # 0: idle peers stay (until evicted by a newcomer)
    cdef uint64_t now_ns            # the clock, read once per poll
    cdef readonly bint once
    cdef bint served                # once: the one connection has come and gone
    cdef bint accept_failed         # accept() failed (e.g. EMFILE): skip the listener once
    cdef pollfd pfds[<int>MAX_TCP_PEERS + 1]
    cdef int pfd_peer[<int>MAX_TCP_PEERS + 1]
    cdef TcpEvent events[<int>TCP_EVENTS]
    cdef size_t n_events
    cdef uint64_t events_lost[4]    # per TcpEventKind: events past TCP_EVENTS, not kept
    cdef pthread_mutex_t lock       # slots and events, against peers()/take_events()

    def __cinit__(self, *args, **kwargs):
        self.listen_fd = -1
        cdef size_t i
        for i in range(<size_t>MAX_TCP_PEERS):
            memset(&self.slots[i], 0, sizeof(TcpPeer))
            self.slots[i].fd = -1
        pthread_mutex_init(&self.lock, NULL)

    def __init__(self, int fd, *, size_t max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 size_t batch=64, int timeout_ms=200, bint once=False,
                 double idle_timeout=0.0):
        if not 0.0 <= idle_timeout <= 1e9:
            raise ValueError(f"idle_timeout={idle_timeout}: expected 0 to 1e9 seconds")
        self.alloc_batch(batch, True)     # bytes_take decodes: the stream need not again
        self.idle_timeout_ns = <uint64_t>(idle_timeout * 1e9)
        self.listen_fd = fd
        self.max_packet_size = max_packet_size
        self.bufsize = max(<size_t>TCP_PEER_BUFFER, 2 * max_packet_size + 16)
        self.timeout_ms = timeout_ms
        self.once = once
        self.finite = False

    def __dealloc__(self):
        self.close_all()
        cdef size_t i
        for i in range(<size_t>MAX_TCP_PEERS):
            free(self.slots[i].bs.buf)
        pthread_mutex_destroy(&self.lock)

    cdef void close_all(self) noexcept nogil:
        cdef size_t i
        pthread_mutex_lock(&self.lock)
        if self.listen_fd >= 0:
            close_fd(self.listen_fd)
            self.listen_fd = -1
        for i in range(<size_t>MAX_TCP_PEERS):
            if self.slots[i].fd >= 0:
                close_fd(self.slots[i].fd)
                self.slots[i].fd = -1
        pthread_mutex_unlock(&self.lock)

    def close(self):
        """Close the listener and every connection (idempotent)."""
        with nogil:
            self.close_all()

    # ------------------------------------------------------------------
    # connections (receive thread, no GIL)

    cdef void note_event(self, const TcpPeer *p, TcpEventKind kind) noexcept nogil:
        """Keep a connection event for take_events() (lock held)."""
        if self.n_events == TCP_EVENTS:
            self.events_lost[<int>kind] += 1    # counted all the same; only its peer is lost
            return
        self.events[self.n_events].kind = kind
        self.events[self.n_events].addr = p.addr
        self.events[self.n_events].port = p.port
        self.events[self.n_events].received = p.received
        self.n_events += 1

    cdef void accept_peers(self, uint64_t *stats) noexcept nogil:
        """Accept every connection waiting on the listener."""
        cdef sockaddr_in addr
        cdef unsigned int addrlen
        cdef int fd
        cdef size_t i
        cdef TcpPeer *p
        while self.listen_fd >= 0:
            addrlen = sizeof(addr)
            memset(&addr, 0, sizeof(addr))
            fd = accept4(self.listen_fd, <sockaddr *>&addr, &addrlen,
                         SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                # None left (EAGAIN), or one gave up meanwhile (ECONNABORTED);
                # anything else (out of descriptors) leaves the connection
                # waiting, and the listener readable: it is left out of the
                # next poll, so that fill() waits rather than spins.
                self.accept_failed = errno != EAGAIN and errno != EINTR \
                    and errno != ECONNABORTED
                return
            p = NULL
            for i in range(<size_t>MAX_TCP_PEERS):
                if self.slots[i].fd < 0:
                    p = &self.slots[i]
                    break
            if p == NULL and not self.once:
                # Every slot taken: the idlest peer makes room (if any may).
                p = self.idlest()
                if p != NULL:
                    self.drop_peer(p, TCP_EVICTED, STAT_TCP_CONNECTIONS_EVICTED, stats)
            if p != NULL and p.bs.buf == NULL:
                p.bs.buf = <uint8_t *>malloc(self.bufsize)
                p.bs.bufsize = self.bufsize
            if p == NULL or p.bs.buf == NULL:
                close_fd(fd)
                stats[<int>STAT_TCP_CONNECTIONS_REFUSED] += 1
                continue
            pthread_mutex_lock(&self.lock)
            p.fd = fd
            p.bs.start = p.bs.end = p.bs.to_skip = 0
            p.bs.eof = False
            p.addr = ntohl(addr.sin_addr.s_addr)
            p.port = ntohs(addr.sin_port)
            p.received = 0
            p.active_ns = self.now_ns
            self.note_event(p, TCP_ACCEPTED)
            if self.once:
                # spead2: the acceptor is closed once its one connection is made.
                close_fd(self.listen_fd)
                self.listen_fd = -1
            pthread_mutex_unlock(&self.lock)
            stats[<int>STAT_TCP_CONNECTIONS_ACCEPTED] += 1

    cdef void close_peer(self, TcpPeer *p, uint64_t *stats) noexcept nogil:
        """A peer's stream has ended and every byte of it is accounted for."""
        pthread_mutex_lock(&self.lock)
        close_fd(p.fd)
        p.fd = -1
        self.note_event(p, TCP_CLOSED)
        pthread_mutex_unlock(&self.lock)
        stats[<int>STAT_TCP_CONNECTIONS_CLOSED] += 1
        if self.once:
            self.served = True

    cdef TcpPeer *idlest(self) noexcept nogil:
        """The open peer that has sent nothing for the longest time (slots all taken).

        Never one whose bytes read in this poll are still to be cut into
        packets (they may hold whole ones), nor one whose stream has ended
        (it closes by itself once they are); NULL if every peer is such.
        """
        cdef size_t i
        cdef TcpPeer *p = NULL
        cdef TcpPeer *q
        for i in range(<size_t>MAX_TCP_PEERS):
            q = &self.slots[i]
            if q.fd < 0 or q.bs.eof or (q.active_ns == self.now_ns and q.bs.end > q.bs.start):
                continue
            if p == NULL or q.active_ns < p.active_ns:
                p = q
        return p

    cdef void drop_peer(self, TcpPeer *p, TcpEventKind kind, StatIndex reason,
                        uint64_t *stats) noexcept nogil:
        """Close a peer we give up on (evicted, idle): its partial packet is truncated.

        Only called where every whole packet buffered has been cut up already
        (fill() polls once take_buffered() has left nothing but partial ones).
        """
        stats[<int>STAT_TCP_BYTES_TRUNCATED] += p.bs.end - p.bs.start
        p.bs.start = p.bs.end = p.bs.to_skip = 0
        pthread_mutex_lock(&self.lock)
        close_fd(p.fd)
        p.fd = -1
        self.note_event(p, kind)
        pthread_mutex_unlock(&self.lock)
        stats[<int>reason] += 1
        if self.once:
            self.served = True      # its one connection is over, as if it had closed

    cdef void close_idle(self, uint64_t *stats) noexcept nogil:
        """Close the peers that have sent nothing for idle_timeout."""
        cdef size_t i
        if self.idle_timeout_ns == 0:
            return
        for i in range(<size_t>MAX_TCP_PEERS):
            if self.slots[i].fd >= 0 and not self.slots[i].bs.eof \
                    and self.now_ns - self.slots[i].active_ns >= self.idle_timeout_ns:
                self.drop_peer(&self.slots[i], TCP_IDLE_CLOSED,
                               STAT_TCP_CONNECTIONS_IDLE_CLOSED, stats)

    cdef void read_peer(self, TcpPeer *p, uint64_t *stats) noexcept nogil:
        cdef size_t count = 0
        cdef int rc = bytes_read(&p.bs, p.fd, &count)
        if rc > 0:
            p.received += count
            p.active_ns = self.now_ns
            stats[<int>STAT_TCP_BYTES_RECEIVED] += count
        elif rc == READ_EOF or rc == READ_ERROR:
            p.bs.eof = True         # closed or reset: what it sent is still cut up

    cdef bint take_buffered(self, uint64_t *stats) noexcept nogil:
        """Cut up the peers' buffered bytes into the batch; True once it is full."""
        cdef size_t k, i
        cdef int rc
        cdef TcpPeer *p
        for k in range(<size_t>MAX_TCP_PEERS):
            i = (self.cursor + k) % MAX_TCP_PEERS
            p = &self.slots[i]
            if p.fd < 0:
                continue
            rc = bytes_take(&p.bs, self, self.max_packet_size, STAT_TCP_BYTES_TRUNCATED, stats)
            if rc == TAKE_FULL:
                self.cursor = (i + 1) % MAX_TCP_PEERS     # the others go first next time
                return True
            if rc == TAKE_END:
                self.close_peer(p, stats)
        return False

    cdef void drop_unread(self, uint64_t *stats) noexcept nogil:
        """Stopping: bytes left in the buffers that make no whole packet are counted."""
        cdef size_t i
        for i in range(<size_t>MAX_TCP_PEERS):
            if self.slots[i].fd >= 0:
                stats[<int>STAT_TCP_BYTES_TRUNCATED] += (self.slots[i].bs.end
                                                         - self.slots[i].bs.start)
                self.slots[i].bs.start = self.slots[i].bs.end

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef int nfds = 0, got, j
        cdef size_t i
        self.n = 0
        self.pos = 0
        if self.take_buffered(stats) or self.n > 0:
            return <int>self.n
        if self.stop_flag or self.served:
            if self.stop_flag:
                self.drop_unread(stats)
            self.eof = True
            return READ_EOF
        # Nothing buffered makes a packet: wait for the listener or a peer.
        if self.accept_failed:
            self.accept_failed = False
        elif self.listen_fd >= 0:
            self.pfds[nfds].fd = self.listen_fd
            self.pfds[nfds].events = POLLIN
            self.pfds[nfds].revents = 0
            self.pfd_peer[nfds] = -1
            nfds += 1
        for i in range(<size_t>MAX_TCP_PEERS):
            if self.slots[i].fd >= 0 and not self.slots[i].bs.eof:
                self.pfds[nfds].fd = self.slots[i].fd
                self.pfds[nfds].events = POLLIN
                self.pfds[nfds].revents = 0
                self.pfd_peer[nfds] = <int>i
                nfds += 1
        got = poll(self.pfds, nfds, self.timeout_ms)
        self.now_ns = monotonic_ns()
        if got == 0 or (got < 0 and errno == EINTR):
            self.close_idle(stats)
            return READ_AGAIN
        if got < 0:
            self.errno_value = errno
            return READ_ERROR
        # Peers first, so that a peer's bytes count as activity before a
        # newcomer looks for the idlest one to evict.
        for j in range(nfds):
            if self.pfds[j].revents != 0 and self.pfd_peer[j] >= 0:
                self.read_peer(&self.slots[self.pfd_peer[j]], stats)
        if nfds > 0 and self.pfd_peer[0] < 0 and self.pfds[0].revents != 0:
            self.accept_peers(stats)
        self.close_idle(stats)
        self.take_buffered(stats)
        return <int>self.n if self.n > 0 else READ_AGAIN

    # ------------------------------------------------------------------
    # Python side (any thread)

    def peers(self):
        """The open connections: ``{"HOST:PORT": bytes received}``."""
        cdef size_t i
        out = {}
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for i in range(<size_t>MAX_TCP_PEERS):
                if self.slots[i].fd >= 0:
                    out[_peer_name(self.slots[i].addr, self.slots[i].port)] = \
                        self.slots[i].received
        finally:
            pthread_mutex_unlock(&self.lock)
        return out

    def take_events(self):
        """Connections accepted and ended since the last call, oldest first:
        ``(what, "HOST:PORT", bytes received)``, `what` one of ``"accepted"``,
        ``"closed"`` (by the peer), ``"evicted"`` (the idlest peer, for a new
        one), ``"idle closed"``.  At most 64 are kept between two calls; for
        the others, one ``(what, None, count)`` each at the end (the
        counters count every one)."""
        cdef size_t i
        cdef TcpEvent e
        cdef int k
        out = []
        if self.n_events == 0:
            return out
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for i in range(self.n_events):
                e = self.events[i]
                out.append((_TCP_EVENT_NAMES[<int>e.kind], _peer_name(e.addr, e.port),
                            e.received))
            for k in range(4):
                if self.events_lost[k]:
                    out.append((_TCP_EVENT_NAMES[k], None, self.events_lost[k]))
                    self.events_lost[k] = 0
            self.n_events = 0
        finally:
            pthread_mutex_unlock(&self.lock)
        return out
