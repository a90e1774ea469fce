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
The frames are written by the compiled core's one pcap frame writer
(``_spead.pcap_frames``, the same as ``daqd simulate x.pcap``'s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daqd import _spead
from daqd.pipeline.records import PacketRecord
from daqd.sinks.base import ByteSink, Piece
from daqd.sinks.paths import PATH_FIELDS_BY_KIND

MAX_UDP_PAYLOAD: int = _spead.MAX_UDP_PAYLOAD
FILE_HEADER: bytes = _spead.PCAP_FILE_HEADER
#: SPEAD's customary UDP port, for frames of a stream whose sources name none.
DEFAULT_UDP_PORT: int = _spead.DEFAULT_UDP_PORT


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
    seconds = int(record.received)
    nanoseconds = min(int(round((record.received - seconds) * 1e9)), 999_999_999)
    data, dropped = _spead.pcap_frames(record.blob, record.lengths, port,
                                       seconds * 1_000_000_000 + nanoseconds)
    return data, int(dropped)


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
