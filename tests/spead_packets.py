"""A small pure-Python SPEAD encoder/decoder for building test packets.

Deliberately independent of daqd: packets are assembled byte by byte from the
SPEAD specification (version 4, SPEAD-64-XX flavours), so that tests can build
valid packets of any flavour as well as every kind of malformed one.

Also holds `spead2_decode`, which feeds a list of datagrams through spead2's
in-process transport and returns the heaps it yields in a normalised form that
can be compared with daqd's `HeapStream.add_packets`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from daqd import _spead
from daqd.recv.workloads import WORKLOADS

MAGIC = 0x53
VERSION = 4

NULL_ID = 0x0
HEAP_CNT_ID = 0x1
HEAP_SIZE_ID = 0x2
HEAP_OFFSET_ID = 0x3
PAYLOAD_LENGTH_ID = 0x4
DESCRIPTOR_ID = 0x5
STREAM_CTRL_ID = 0x6
CTRL_STREAM_START = 0
CTRL_STREAM_STOP = 2

STRUCTURE_IDS = frozenset({NULL_ID, HEAP_CNT_ID, HEAP_SIZE_ID, HEAP_OFFSET_ID,
                           PAYLOAD_LENGTH_ID})

#: Every SPEAD-64-XX flavour: heap address bits XX.
FLAVOURS = (8, 16, 24, 32, 40, 48, 56)


# ---------------------------------------------------------------------------
# Encoding


def header(n_items: int, address_bits: int = 48, *, magic: int = MAGIC,
           version: int = VERSION, id_bytes: int | None = None,
           addr_bytes: int | None = None) -> bytes:
    """The 8-byte packet header (every field overridable for malformed packets)."""
    if addr_bytes is None:
        addr_bytes = address_bits // 8
    if id_bytes is None:
        id_bytes = 8 - addr_bytes
    return bytes([magic, version, id_bytes, addr_bytes, 0, 0]) + struct.pack(">H", n_items)


def pointer(item_id: int, value: int, *, immediate: bool, address_bits: int = 48) -> int:
    """One 64-bit item pointer as an integer."""
    id_bits = 63 - address_bits
    assert 0 <= item_id < (1 << id_bits), f"item id {item_id:#x} does not fit {id_bits} bits"
    assert 0 <= value < (1 << address_bits), f"value {value:#x} does not fit"
    return (int(immediate) << 63) | (item_id << address_bits) | value


def imm(item_id: int, value: int, address_bits: int = 48) -> int:
    """An immediate item pointer."""
    return pointer(item_id, value, immediate=True, address_bits=address_bits)


def addr(item_id: int, address: int, address_bits: int = 48) -> int:
    """An addressed item pointer (value at `address` in the heap payload)."""
    return pointer(item_id, address, immediate=False, address_bits=address_bits)


def raw_packet(pointers: list[int], payload: bytes = b"", address_bits: int = 48,
               **header_overrides: int) -> bytes:
    """A packet from explicit pointers (no structure items added)."""
    n_items = header_overrides.pop("n_items", len(pointers))
    return (header(n_items, address_bits, **header_overrides)
            + b"".join(struct.pack(">Q", p) for p in pointers) + payload)


def packet(cnt: int, payload: bytes = b"", *, offset: int = 0, heap_size: int | None = None,
           length: int | None = None, items: list[int] = (), address_bits: int = 48,
           with_size: bool = True) -> bytes:
    """A well-formed packet of heap `cnt`.

    `heap_size` defaults to ``offset + len(payload)`` (a single-packet heap when
    offset is 0); pass ``with_size=False`` to omit HEAP_SIZE.  `length`
    overrides PAYLOAD_LENGTH (to make it lie).  `items` are extra pointers.
    """
    b = address_bits
    ptrs = [imm(HEAP_CNT_ID, cnt, b)]
    if with_size:
        ptrs.append(imm(HEAP_SIZE_ID, offset + len(payload) if heap_size is None else heap_size,
                        b))
    ptrs.append(imm(HEAP_OFFSET_ID, offset, b))
    ptrs.append(imm(PAYLOAD_LENGTH_ID, len(payload) if length is None else length, b))
    ptrs.extend(items)
    return raw_packet(ptrs, payload, b)


def heap_packets(cnt: int, items: list[tuple[int, bytes | int]], *, address_bits: int = 48,
                 packet_payload: int = 1024, with_size: bool = True,
                 stop: bool = False) -> list[bytes]:
    """Split one heap into packets the way a SPEAD sender does.

    `items` are (id, value): an int is sent immediate, bytes addressed.  Every
    packet repeats all item pointers (spead2's repeat_pointers); payloads are
    `packet_payload` bytes except the last.
    """
    b = address_bits
    ptrs: list[int] = []
    payload = b""
    for item_id, value in items:
        if isinstance(value, int):
            ptrs.append(imm(item_id, value, b))
        else:
            ptrs.append(addr(item_id, len(payload), b))
            payload += value
    if stop:
        ptrs.append(imm(STREAM_CTRL_ID, CTRL_STREAM_STOP, b))
    size = len(payload)
    out = []
    offset = 0
    while True:
        chunk = payload[offset:offset + packet_payload]
        out.append(packet(cnt, chunk, offset=offset, heap_size=size, items=ptrs,
                          address_bits=b, with_size=with_size))
        offset += len(chunk)
        if offset >= size:
            break
    return out


def stop_heap(cnt: int, address_bits: int = 48) -> bytes:
    """A single-packet heap carrying only the stream-control stop item."""
    return packet(cnt, b"", heap_size=0, items=[imm(STREAM_CTRL_ID, CTRL_STREAM_STOP,
                                                     address_bits)],
                  address_bits=address_bits)


# ---------------------------------------------------------------------------
# Decoding (independent reference for tests)


@dataclass
class Decoded:
    """The header fields of a packet that decodes."""

    heap_cnt: int
    heap_length: int
    payload_offset: int
    payload_length: int
    n_items: int
    address_bits: int
    size: int
    pointers: list[int] = field(default_factory=list)


def decode(data: bytes) -> Decoded | str:
    """Decode like SPEAD/spead2: a Decoded, or the daqd reject counter name."""
    if len(data) < 8:
        return "packets_rejected_too_short"
    if data[0] != MAGIC:
        return "packets_rejected_bad_magic"
    if data[1] != VERSION:
        return "packets_rejected_bad_version"
    id_bits, addr_bits = data[2] * 8, data[3] * 8
    if id_bits == 0 or addr_bits == 0 or id_bits + addr_bits != 64:
        return "packets_rejected_bad_flavour"
    n_items = struct.unpack_from(">H", data, 6)[0]
    if 8 + 8 * n_items > len(data):
        return "packets_rejected_items_overflow"
    fields = {HEAP_CNT_ID: -1, HEAP_SIZE_ID: -1, HEAP_OFFSET_ID: -1, PAYLOAD_LENGTH_ID: -1}
    ptrs = list(struct.unpack_from(f">{n_items}Q", data, 8))
    mask = (1 << addr_bits) - 1
    for p in ptrs:
        if p >> 63:
            item_id = (p & ((1 << 63) - 1)) >> addr_bits
            if item_id in fields:
                fields[item_id] = p & mask
    if -1 in (fields[HEAP_CNT_ID], fields[HEAP_OFFSET_ID], fields[PAYLOAD_LENGTH_ID]):
        return "packets_rejected_missing_items"
    size = 8 + 8 * n_items + fields[PAYLOAD_LENGTH_ID]
    if size > len(data):
        return "packets_rejected_payload_length"
    if fields[HEAP_SIZE_ID] >= 0 and \
            fields[HEAP_OFFSET_ID] + fields[PAYLOAD_LENGTH_ID] > fields[HEAP_SIZE_ID]:
        return "packets_rejected_payload_outside_heap"
    return Decoded(fields[HEAP_CNT_ID], fields[HEAP_SIZE_ID], fields[HEAP_OFFSET_ID],
                   fields[PAYLOAD_LENGTH_ID], n_items, addr_bits, size, ptrs)


def max_extent(d: Decoded) -> int:
    """The largest heap size this packet implies (HEAP_SIZE, payload end, addresses)."""
    mask = (1 << d.address_bits) - 1
    extent = max(d.heap_length, d.payload_offset + d.payload_length)
    for p in d.pointers:
        if not p >> 63:
            extent = max(extent, p & mask)
    return extent


REJECT_COUNTERS = tuple(n for n in _spead.STAT_NAMES if n.startswith("packets_rejected_"))


# ---------------------------------------------------------------------------
# Normalised heaps, for comparing daqd with spead2


def daqd_heap_key(heap) -> tuple:
    """(cnt, contiguous, detail) for a daqd Heap."""
    if heap.complete:
        items = sorted(
            (it.id, it.immediate, it.value if it.immediate else bytes(it.value))
            for it in heap.items
            if it.id not in STRUCTURE_IDS
        )
        return (heap.cnt, True, tuple(items))
    return (heap.cnt, False, (heap.received, heap.length))


def spead2_heap_key(heap) -> tuple:
    """(cnt, contiguous, detail) for a spead2 Heap or IncompleteHeap."""
    import spead2.recv

    if isinstance(heap, spead2.recv.IncompleteHeap):
        return (heap.cnt, False, (heap.received_length, heap.heap_length))
    items = []
    for it in heap.get_items():
        if it.id in STRUCTURE_IDS:
            continue
        if it.is_immediate:
            items.append((it.id, True, it.immediate_value))
        else:
            items.append((it.id, False, bytes(memoryview(it))))
    return (heap.cnt, True, tuple(sorted(items)))


def inproc_queue(spead2, datagrams):
    """A stopped spead2 InprocQueue holding `datagrams`.

    spead2's in-process transport mishandles an empty packet (garbage header,
    bad_alloc or deadlock); every decoder drops it anyway, so it is left out.
    """
    queue = spead2.InprocQueue()
    for d in datagrams:
        if len(d) > 0:
            queue.add_packet(bytes(d))
    queue.stop()
    return queue


def spead2_decode(datagrams: list[bytes], *, max_heaps: int = 4,
                  allow_out_of_order: bool = False,
                  stop_on_stop_item: bool = True) -> list[tuple]:
    """Heaps spead2 yields for `datagrams` (in-process transport), normalised."""
    import spead2
    import spead2.recv

    thread_pool = spead2.ThreadPool()
    config = spead2.recv.StreamConfig(max_heaps=max_heaps,
                                      allow_out_of_order=allow_out_of_order,
                                      stop_on_stop_item=stop_on_stop_item)
    ring = spead2.recv.RingStreamConfig(heaps=len(datagrams) + max_heaps + 4,
                                        contiguous_only=False)
    stream = spead2.recv.Stream(thread_pool, config, ring)
    stream.add_inproc_reader(inproc_queue(spead2, datagrams))
    try:
        return [spead2_heap_key(h) for h in stream]
    finally:
        stream.stop()


def daqd_decode(datagrams: list[bytes], **kwargs) -> tuple[list[tuple], dict[str, int]]:
    """Heaps daqd yields for `datagrams` (HeapStream.add_packets), normalised, and counters."""

    stream = _spead.HeapStream(**kwargs)
    heaps = stream.add_packets([bytes(d) for d in datagrams])
    return [daqd_heap_key(h) for h in heaps], stream.stats()


# ---------------------------------------------------------------------------
# Classic pcap files (little-endian, microsecond, Ethernet/IPv4/UDP frames)

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def udp_frame(payload: bytes, dst_port: int = 7148, src_port: int = 40000) -> bytes:
    """An Ethernet II / IPv4 / UDP frame carrying `payload`."""
    udp = struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    eth = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00"
    return eth + ip + udp


def pcap_record(frame: bytes, ts: int = 0) -> bytes:
    """One pcap record: 16-byte record header then the frame."""
    return struct.pack("<IIII", ts, 0, len(frame), len(frame)) + frame


def pcap_file(payloads: list[bytes], dst_port: int = 7148) -> bytes:
    """A whole pcap file with one UDP frame per payload."""
    return PCAP_HEADER + b"".join(pcap_record(udp_frame(p, dst_port), i)
                                  for i, p in enumerate(payloads))


# ---------------------------------------------------------------------------
# The reference workloads (DESIGN.md), as daqd's SimReader sends them


def sim_packets(workload: str, heaps: int) -> list[bytes]:
    """The packets of `heaps` heaps of a reference workload (SimReader), as bytes."""
    reader = _spead.SimReader(workload, heaps=heaps)
    out: list[bytes] = []
    while (batch := reader.read_batch()) is not None:
        out.extend(batch[0])
    return out


def expected_sim_heaps(workload: str, n: int, first_cnt: int = 1) -> list[dict]:
    """The records `n` heaps of a workload must decode to (cython_ext/sim.pxi), built here.

    Heap i has HEAP_CNT first_cnt + i, timestamp i * step in item 0x1600 and
    its payload in 0x3300: per packet, ``(HEAP_CNT << 16 | packet index)``
    big-endian, then the fixed pattern.
    """
    w = WORKLOADS[workload]
    payload = w.heap_bytes // w.packets_per_heap
    pattern = bytes((j * 7 + 3) & 0xFF for j in range(payload))
    out = []
    for i in range(n):
        cnt = first_cnt + i
        data = b"".join(((cnt << 16) | k).to_bytes(8, "big") + pattern[8:]
                        for k in range(w.packets_per_heap))
        out.append({"cnt": cnt, "complete": True,
                    "items": [(0x1600, True, i * w.timestamp_step), (0x3300, False, data)],
                    "descriptors": [], "start": False, "stop": False})
    return out
