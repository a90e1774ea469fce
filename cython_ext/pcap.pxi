# Classic pcap files: read (PcapReader) and write (pcap_write_frame, pcap_frames).
#
# Byte order and timestamp resolution come from the magic number; link types
# Ethernet (1, with up to two VLAN tags), Linux cooked capture v1 (113) and
# v2 (276), and raw IP (101) are understood.  IPv4 fragments, non-UDP frames
# and (with ?port=) other destination ports are skipped and counted; a record
# cut off by the end of the file is counted and ends the replay.

cdef enum:
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_LINUX_SLL2 = 276
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_IPV6 = 0x86DD
    ETHERTYPE_VLAN = 0x8100
    ETHERTYPE_QINQ = 0x88A8
    IPPROTO_UDP_ = 17


cdef inline uint32_t pcap_u32(const uint8_t *p, bint swapped) noexcept nogil:
    cdef uint32_t v = load_le32(p)
    if swapped:
        v = load_be32(p)
    return v


cdef inline const uint8_t *udp_payload(
    const uint8_t *ip, size_t length, int port, size_t *out_len, uint64_t *stats
) noexcept nogil:
    """UDP payload of an IPv4/IPv6 packet, or NULL (counted) if there is none."""
    cdef size_t ihl, total, udp_len
    cdef const uint8_t *udp
    if length < 1:
        stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
        return NULL
    if (ip[0] >> 4) == 4:
        if length < 20:
            stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
            return NULL
        ihl = (ip[0] & 0xF) * 4
        total = load_be16(ip + 2)
        if ihl < 20 or total < ihl:
            stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
            return NULL
        if ip[9] != IPPROTO_UDP_:
            stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
            return NULL
        if load_be16(ip + 6) & 0x3FFF:         # more-fragments flag or an offset
            stats[<int>STAT_PCAP_FRAMES_SKIPPED_FRAGMENT] += 1
            return NULL
        if total < length:
            length = total                      # drop Ethernet padding
    elif (ip[0] >> 4) == 6:
        if length < 40:
            stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
            return NULL
        if ip[6] != IPPROTO_UDP_:               # extension headers are not followed
            stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
            return NULL
        ihl = 40
        total = 40 + load_be16(ip + 4)
        if total < length:
            length = total
    else:
        stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
        return NULL
    if length < ihl + 8:
        stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
        return NULL
    udp = ip + ihl
    if port >= 0 and load_be16(udp + 2) != port:
        stats[<int>STAT_PCAP_FRAMES_SKIPPED_PORT] += 1
        return NULL
    udp_len = load_be16(udp + 4)
    if udp_len < 8:
        stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
        return NULL
    if udp_len > length - ihl:
        # Snapped capture: hand over what was captured; decoding will count it.
        stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
        udp_len = length - ihl
    out_len[0] = udp_len - 8
    return udp + 8


cdef class PcapReader(Reader):
    """UDP payloads of a classic pcap file (memory-mapped)."""

    cdef const uint8_t[::1] view
    cdef object keepalive
    cdef size_t size, offset
    cdef bint swapped
    cdef uint32_t linktype
    cdef int port

    def progress(self):
        """(bytes of the capture read so far, its size)."""
        return self.offset, self.size

    def __init__(self, data, *, int port=-1, size_t batch=64):
        self.alloc_batch(batch)
        self.finite = True
        self.keepalive = data
        self.view = memoryview(data).cast("B")
        self.size = self.view.shape[0]
        self.port = port
        if self.size < 24:
            raise ValueError("not a pcap file (shorter than the 24-byte file header)")
        cdef bytes magic = bytes(self.view[:4])
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            self.swapped = False
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            self.swapped = True
        elif magic == b"\x0a\x0d\x0d\x0a":
            raise ValueError("pcapng is not supported; convert it with "
                             "'editcap -F pcap IN OUT' or 'tshark -F pcap'")
        else:
            raise ValueError(f"not a pcap file (magic {magic.hex()})")
        self.linktype = pcap_u32(&self.view[20], self.swapped) & 0xFFFF
        if self.linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL,
                                 LINKTYPE_LINUX_SLL2):
            raise ValueError(f"unsupported pcap link type {self.linktype}")
        self.offset = 24

    def close(self):
        self.view = None
        if hasattr(self.keepalive, "close"):
            try:
                self.keepalive.close()
            except BufferError:
                pass

    cdef int fill(self, uint64_t *stats) noexcept nogil:
        cdef const uint8_t *base = &self.view[0]
        cdef const uint8_t *frame
        cdef const uint8_t *payload
        cdef size_t incl, frame_len, hdr_len, payload_len = 0
        cdef uint16_t ethertype
        cdef int tags
        self.n = 0
        self.pos = 0
        while self.n < self.capacity:
            if self.stop_flag or self.offset >= self.size:
                break
            if self.offset + 16 > self.size:
                stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
                self.offset = self.size
                break
            incl = pcap_u32(base + self.offset + 8, self.swapped)
            if incl > self.size - self.offset - 16:
                stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
                self.offset = self.size
                break
            frame = base + self.offset + 16
            frame_len = incl
            self.offset += 16 + incl
            if self.linktype == LINKTYPE_ETHERNET:
                if frame_len < 14:
                    stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
                    continue
                ethertype = load_be16(frame + 12)
                hdr_len = 14
                tags = 0
                while (ethertype == ETHERTYPE_VLAN or ethertype == ETHERTYPE_QINQ) and tags < 2:
                    if frame_len < hdr_len + 4:
                        break
                    ethertype = load_be16(frame + hdr_len + 2)
                    hdr_len += 4
                    tags += 1
            elif self.linktype == LINKTYPE_LINUX_SLL:
                if frame_len < 16:
                    stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
                    continue
                ethertype = load_be16(frame + 14)
                hdr_len = 16
            elif self.linktype == LINKTYPE_LINUX_SLL2:
                if frame_len < 20:
                    stats[<int>STAT_PCAP_RECORDS_TRUNCATED] += 1
                    continue
                ethertype = load_be16(frame)
                hdr_len = 20
            else:
                hdr_len = 0
                ethertype = ETHERTYPE_IPV4 if frame_len and (frame[0] >> 4) == 4 \
                    else ETHERTYPE_IPV6
            if ethertype != ETHERTYPE_IPV4 and ethertype != ETHERTYPE_IPV6:
                stats[<int>STAT_PCAP_FRAMES_SKIPPED_NOT_UDP] += 1
                continue
            payload = udp_payload(frame + hdr_len, frame_len - hdr_len, self.port,
                                  &payload_len, stats)
            if payload == NULL:
                continue
            self.pkt_data[self.n] = payload
            self.pkt_len[self.n] = payload_len
            self.n += 1
        if self.n == 0:
            self.eof = True
            return READ_EOF
        return <int>self.n


# --------------------------------------------------------------------------
# Writing: the one pcap frame writer, behind send(mode="pcap") (``daqd
# simulate x.pcap``) and the pcap sink (pcap_frames()).
#
# Each packet becomes one record: the 16-byte record header (captured length
# = original length), Ethernet II 02:00:00:00:00:00 -> 02:00:00:00:00:00 type
# IPv4, IPv4 127.0.0.1 -> 127.0.0.1 (don't fragment, TTL 64, header checksum
# set), UDP port -> port (no checksum), then the packet.  A packet longer than
# one IPv4 UDP datagram can carry is not framed.

cdef enum:
    PCAP_FRAME_HEADER_BYTES = 58        # record header + Ethernet + IPv4 + UDP
    UDP_MAX_PAYLOAD = 65507             # 65535 - 20 (IPv4) - 8 (UDP)
    PCAP_SNAPLEN = 262144               # libpcap's MAXIMUM_SNAPLEN (PCAP_FILE_HEADER)

#: The largest packet pcap_frames() (and send(mode="pcap")) can frame.
MAX_UDP_PAYLOAD = UDP_MAX_PAYLOAD
#: SPEAD's customary UDP port: pcap frames of packets whose port nobody named.
DEFAULT_UDP_PORT = 7148


cdef size_t pcap_frame_header(uint8_t *out, size_t payload_len, uint16_t dst_port,
                              uint64_t ts_ns) noexcept nogil:
    """Write a record header and Ethernet/IPv4/UDP headers (58 bytes) for a payload.

    Nanosecond pcap, little-endian; addresses 127.0.0.1 -> 127.0.0.1.
    """
    cdef size_t frame_len = 42 + payload_len
    store_le32(out, <uint32_t>(ts_ns // 1000000000ULL))
    store_le32(out + 4, <uint32_t>(ts_ns % 1000000000ULL))
    store_le32(out + 8, <uint32_t>frame_len)
    store_le32(out + 12, <uint32_t>frame_len)
    cdef uint8_t *eth = out + 16
    memset(eth, 0, 12)
    eth[0] = 0x02                            # locally administered MACs
    eth[6] = 0x02
    store_be16(eth + 12, ETHERTYPE_IPV4)
    cdef uint8_t *ip = eth + 14
    ip[0] = 0x45
    ip[1] = 0
    store_be16(ip + 2, <uint16_t>(20 + 8 + payload_len))
    store_be16(ip + 4, 0)
    store_be16(ip + 6, 0x4000)               # don't fragment
    ip[8] = 64
    ip[9] = IPPROTO_UDP_
    store_be16(ip + 10, 0)
    memcpy(ip + 12, b"\x7f\x00\x00\x01\x7f\x00\x00\x01", 8)  # 127.0.0.1 both ways
    cdef uint32_t csum = 0
    cdef int i
    for i in range(0, 20, 2):
        csum += load_be16(ip + i)
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    store_be16(ip + 10, <uint16_t>(~csum & 0xFFFF))
    cdef uint8_t *udp = ip + 20
    store_be16(udp, dst_port)
    store_be16(udp + 2, dst_port)
    store_be16(udp + 4, <uint16_t>(8 + payload_len))
    store_be16(udp + 6, 0)                   # no checksum (allowed for IPv4)
    return 58


cdef inline size_t pcap_write_frame(uint8_t *out, const uint8_t *packet, size_t length,
                                    uint16_t port, uint64_t ts_ns) noexcept nogil:
    """Write one packet's record at `out`; the bytes written, 0 if it is too long."""
    if length > UDP_MAX_PAYLOAD:
        return 0
    pcap_frame_header(out, length, port, ts_ns)
    memcpy(out + PCAP_FRAME_HEADER_BYTES, packet, length)
    return PCAP_FRAME_HEADER_BYTES + length


def pcap_frames(const uint8_t[::1] blob not None, lengths, uint16_t port, uint64_t time_ns):
    """Frame packets as pcap records, ready to append to a pcap file.

    Parameters
    ----------
    blob : bytes-like
        The packets back to back.
    lengths : array of uint32
        Each packet's size (their sum at most ``len(blob)``).
    port : int
        UDP source and destination port of every frame.
    time_ns : int
        Timestamp of every record, nanoseconds since the epoch.

    Returns
    -------
    frames : numpy.ndarray
        uint8, the records back to back.
    dropped : int
        Packets longer than MAX_UDP_PAYLOAD, left out.
    """
    cdef const uint32_t[::1] lens = np.ascontiguousarray(lengths, dtype=np.uint32)
    cdef size_t n = lens.shape[0]
    cdef size_t i, total = 0, out_bytes = 0, kept = 0, off = 0, pos = 0
    for i in range(n):
        total += lens[i]
        if lens[i] <= UDP_MAX_PAYLOAD:
            out_bytes += PCAP_FRAME_HEADER_BYTES + lens[i]
            kept += 1
    if total > <size_t>blob.shape[0]:
        raise ValueError(f"the lengths add up to {total} bytes, the blob has {blob.shape[0]}")
    out = np.empty(out_bytes, np.uint8)
    if kept == 0:
        return out, n - kept
    cdef uint8_t[::1] view = out
    cdef uint8_t *dst = &view[0]
    cdef const uint8_t *src = &blob[0]
    with nogil:
        for i in range(n):
            pos += pcap_write_frame(dst + pos, src + off, lens[i], port, time_ns)
            off += lens[i]
    return out, n - kept


# The file header: nanosecond resolution, little-endian, version 2.4, link type Ethernet.
PCAP_FILE_HEADER = (b"\x4d\x3c\xb2\xa1"      # magic 0xA1B23C4D
                    b"\x02\x00\x04\x00"      # version 2.4
                    b"\x00\x00\x00\x00\x00\x00\x00\x00"
                    b"\x00\x00\x04\x00"      # snaplen 262144 (PCAP_SNAPLEN)
                    b"\x01\x00\x00\x00")     # LINKTYPE_ETHERNET
