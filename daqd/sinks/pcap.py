"""The ``pcap`` sink: raw SPEAD packets as a classic pcap capture.

Each file is a classic (not pcapng) pcap file: little-endian, nanosecond
timestamps (magic 0xA1B23C4D), link type Ethernet, snap length 262144,
readable by tcpdump, Wireshark, libpcap (so spead2's pcap reader) and daqd's
own ``pcap:`` source.  Every packet of a `PacketRecord` becomes one frame:

    16-byte record header   ts (record.received), captured = original length
    Ethernet II             02:00:00:00:00:00 -> 02:00:00:00:00:00, type IPv4
    IPv4                    127.0.0.1 -> 127.0.0.1, don't fragment, TTL 64,
                            header checksum set
    UDP                     port -> port (the stream's UDP port), no checksum
    payload                 the SPEAD packet as received

All packets of one record share its receive time.  A packet longer than an
IPv4 UDP datagram can carry (65507 bytes, possible from a ``tcp://``
source) cannot be framed: it is left out and counted in ``lost_packets``.
The file header is always written (the ``header`` key does not apply).
The headers of a record's packets are built together with numpy and the
frames assembled in one array, not packet by packet.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from daqd.pipeline.records import PacketRecord
from daqd.sinks.base import ByteSink, Piece
from daqd.sinks.paths import PATH_FIELDS_BY_KIND

MAX_UDP_PAYLOAD = 65535 - 20 - 8
#: SPEAD's customary UDP port, for frames of a stream whose sources name none.
DEFAULT_UDP_PORT = 7148
SNAPLEN = 262144
FILE_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, 1)
FRAME_HEADER_BYTES = 16 + 14 + 20 + 8

_MAC = b"\x02\x00\x00\x00\x00\x00"
_LOOPBACK = b"\x7f\x00\x00\x01"


def _header_template(port: int) -> np.ndarray:
    """Return the 58 header bytes every frame shares (lengths, times, checksum zero)."""
    eth = _MAC + _MAC + b"\x08\x00"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, 17, 0, _LOOPBACK, _LOOPBACK)
    udp = struct.pack(">HHHH", port, port, 0, 0)
    return np.frombuffer(bytes(16) + eth + ip + udp, np.uint8)


def _ones_complement_sum(words: bytes) -> int:
    total = sum(struct.unpack(f">{len(words) // 2}H", words))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def frames(record: PacketRecord, port: int) -> tuple[np.ndarray, int]:
    """Build the pcap records (header + frame) of `record`'s packets.

    Parameters
    ----------
    record : PacketRecord
        Packets back to back in ``blob``, their sizes in ``lengths``.
    port : int
        UDP source and destination port written in every frame.

    Returns
    -------
    frames : numpy.ndarray
        uint8, the records back to back, ready to append to a pcap file.
    dropped : int
        Packets too long for a UDP datagram, left out.
    """
    lengths = np.asarray(record.lengths, dtype=np.int64)
    blob = np.frombuffer(record.blob, np.uint8)
    too_long = lengths > MAX_UDP_PAYLOAD
    dropped = int(np.count_nonzero(too_long))
    if dropped:
        blob = blob[np.repeat(~too_long, lengths)]
        lengths = lengths[~too_long]
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.uint8), dropped
    template = _header_template(port)
    headers = np.tile(template, (n, 1))
    seconds = int(record.received)
    nanoseconds = min(int(round((record.received - seconds) * 1e9)), 999_999_999)
    headers[:, 0:4] = np.frombuffer(struct.pack("<I", seconds), np.uint8)
    headers[:, 4:8] = np.frombuffer(struct.pack("<I", nanoseconds), np.uint8)
    frame_len = (lengths + 42).astype("<u4")
    headers[:, 8:12] = frame_len.view(np.uint8).reshape(n, 4)
    headers[:, 12:16] = headers[:, 8:12]
    ip_len = (lengths + 28).astype(">u2")
    headers[:, 32:34] = ip_len.view(np.uint8).reshape(n, 2)
    # The IPv4 header checksum: only the total length differs between frames.
    base = _ones_complement_sum(template[30:50].tobytes())
    total = base + ip_len.astype(np.uint32)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    headers[:, 40:42] = (~total & 0xFFFF).astype(">u2").view(np.uint8).reshape(n, 2)
    headers[:, 54:56] = (lengths + 8).astype(">u2").view(np.uint8).reshape(n, 2)
    # Scatter: each packet's header goes just before its payload.
    starts = np.arange(n, dtype=np.int64) * FRAME_HEADER_BYTES
    starts[1:] += np.cumsum(lengths[:-1])
    out = np.empty(n * FRAME_HEADER_BYTES + int(lengths.sum()), np.uint8)
    header_at = (starts[:, None] + np.arange(FRAME_HEADER_BYTES)).ravel()
    is_payload = np.ones(out.size, bool)
    is_payload[header_at] = False
    out[header_at] = headers.ravel()
    out[is_payload] = blob
    return out, dropped


class PcapSink(ByteSink):
    """Packets as Ethernet/IPv4/UDP frames in classic pcap files."""

    kind = "pcap"
    accepts = (PacketRecord,)
    path_fields = PATH_FIELDS_BY_KIND["pcap"]

    def __init__(self, context: Any):
        super().__init__(context)
        self.port = DEFAULT_UDP_PORT if context.udp_port is None else int(context.udp_port)
        self.lost_packets = 0

    def _encode(self, record: Any) -> Piece:
        data, dropped = frames(record, self.port)
        return Piece(record, data.nbytes, [data], dropped=dropped)

    def _written(self, pieces: list[Piece]) -> None:
        self.lost_packets += sum(p.dropped for p in pieces)

    def _header(self, first: Piece) -> bytes:
        return FILE_HEADER

    def _wants_header(self) -> bool:
        return True                 # a pcap file is not valid without it

    def stats(self) -> dict[str, Any]:
        """Return the common counters plus ``lost_packets`` (too long to frame)."""
        return {**super().stats(), "lost_packets": self.lost_packets}
