"""Shared helpers for the spead2 interoperability tests.

spead2 is the reference decoder: the functions here decode bytes or lists of
datagrams with spead2 and with daqd and turn both results into the same plain
records, so that tests can compare them with ``==``; `spead2_chunk_group`
makes spead2's chunk stream group for a daqd chunk layout.  There is also a small
pcap-file writer (Ethernet with or without an 802.1Q tag, Linux cooked
capture v1/v2, either byte order, micro- or nanosecond timestamps) so that
pcap input can be built without external tools.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import spead2
import spead2.recv
import spead2.send

from daqd import _spead, _spead2compat
from daqd.recv.descriptors import decode_descriptors

# Items spead2's Python Heap.get_items() leaves out besides ids 0..4:
# descriptors (they come back through get_descriptors instead).
DESCRIPTOR_ID = 0x05

THREAD_POOL = spead2.ThreadPool()


# --------------------------------------------------------------------------
# Packets


def split_packets(data: bytes) -> list[bytes]:
    """Split back-to-back SPEAD packets (as spead2's BytesStream writes them).

    Pure Python, independent of daqd: header, item pointers, PAYLOAD_LENGTH.
    """
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0x53 and data[pos + 1] == 4, f"no SPEAD header at {pos}"
        address_bits = data[pos + 3] * 8
        n_items = struct.unpack_from(">H", data, pos + 6)[0]
        payload_length = None
        for i in range(n_items):
            (p,) = struct.unpack_from(">Q", data, pos + 8 + 8 * i)
            if p >> 63 and ((p & ~(1 << 63)) >> address_bits) == 4:
                payload_length = p & ((1 << address_bits) - 1)
        assert payload_length is not None
        size = 8 + 8 * n_items + payload_length
        out.append(bytes(data[pos:pos + size]))
        pos += size
    return out


def packet_fields(packet: bytes) -> dict[str, int]:
    """HEAP_CNT, HEAP_SIZE, HEAP_OFFSET, PAYLOAD_LENGTH of one packet (pure Python)."""
    address_bits = packet[3] * 8
    n_items = struct.unpack_from(">H", packet, 6)[0]
    names = {1: "cnt", 2: "length", 3: "offset", 4: "payload_length"}
    out = {"length": -1}
    for i in range(n_items):
        (p,) = struct.unpack_from(">Q", packet, 8 + 8 * i)
        item_id = (p & ~(1 << 63)) >> address_bits
        if p >> 63 and item_id in names:
            out[names[item_id]] = p & ((1 << address_bits) - 1)
    return out


def spead2_stream_bytes(heaps: Sequence[Any], *, max_packet_size: int = 1472,
                        repeat_pointers: bool = False) -> bytes:
    """Send spead2 send-heaps through a BytesStream; returns the bytes."""
    config = spead2.send.StreamConfig(max_packet_size=max_packet_size)
    stream = spead2.send.BytesStream(THREAD_POOL, config)
    for heap in heaps:
        heap.repeat_pointers = repeat_pointers
        stream.send_heap(heap)
    return stream.getvalue()


# --------------------------------------------------------------------------
# Records


def _sorted_items(items: Iterable[tuple[int, bool, Any]]) -> list[tuple[int, bool, Any]]:
    return sorted(items, key=lambda t: (t[0], t[1], t[2] if t[1] else -1,
                                        b"" if t[1] else t[2]))


def spead2_descriptor(d: Any) -> dict[str, Any]:
    """A spead2 RawDescriptor in the form of daqd's descriptor dicts."""
    return {
        "id": d.id,
        "name": d.name.decode("utf-8", errors="replace"),
        "description": d.description.decode("utf-8", errors="replace"),
        "shape": [None if s is None or s < 0 else s for s in d.shape],
        "format": [[c, bits] for c, bits in d.format],
        "dtype": d.numpy_header.decode("utf-8", errors="replace") or None,
    }


def _desc_key(d: dict[str, Any]) -> tuple:
    return (d["id"], d["name"], d["description"], repr(d["shape"]), repr(d["format"]),
            d["dtype"] or "")


def spead2_record(heap: Any) -> dict[str, Any]:
    """A comparable record of a heap from spead2's ring (Heap or IncompleteHeap)."""
    if isinstance(heap, spead2.recv.IncompleteHeap):
        return {"cnt": heap.cnt, "complete": False,
                "received": heap.received_length, "length": heap.heap_length}
    items = []
    for item in heap.get_items():
        if item.is_immediate:
            items.append((item.id, True, item.immediate_value))
        else:
            items.append((item.id, False, bytes(memoryview(item))))
    return {
        "cnt": heap.cnt,
        "complete": True,
        "items": _sorted_items(items),
        "descriptors": sorted((spead2_descriptor(d) for d in heap.get_descriptors()),
                              key=_desc_key),
        "start": heap.is_start_of_stream(),
        "stop": heap.is_end_of_stream(),
    }


def daqd_record(heap: Any) -> dict[str, Any]:
    """The same record for a daqd Heap."""
    if not heap.complete:
        return {"cnt": heap.cnt, "complete": False,
                "received": heap.received, "length": heap.length}
    items = [(item.id, bool(item.immediate), item.value if item.immediate else bytes(item.value))
             for item in heap.items if item.id != DESCRIPTOR_ID]
    return {
        "cnt": heap.cnt,
        "complete": True,
        "items": _sorted_items(items),
        "descriptors": sorted(decode_descriptors(heap), key=_desc_key),
        "start": heap.is_start,
        "stop": heap.is_stop,
    }


def dump_record(json_record: dict[str, Any]) -> dict[str, Any]:
    """The record of one ``daqd dump`` JSON line (addressed values as hex)."""
    if not json_record["complete"]:
        return {"cnt": json_record["cnt"], "complete": False,
                "received": json_record["received"], "length": json_record["length"]}
    items = [(it["id"], True, it["value"]) if it["immediate"]
             else (it["id"], False, bytes.fromhex(it["hex"]))
             for it in json_record["items"]]
    return {
        "cnt": json_record["cnt"],
        "complete": True,
        "items": _sorted_items(items),
        "descriptors": sorted(json_record.get("descriptors", []), key=_desc_key),
        "start": json_record["start"],
        "stop": json_record["stop"],
    }


def dump_view(record: dict[str, Any]) -> dict[str, Any]:
    """What ``daqd dump`` can show of a record: structure ids 0..5 are not listed."""
    if not record["complete"]:
        return record
    out = dict(record)
    out["items"] = [t for t in record["items"] if t[0] > 5]
    return out


# --------------------------------------------------------------------------
# Decoding


def make_spead2_stream(max_heaps: int = 4, allow_out_of_order: bool = False
                       ) -> spead2.recv.Stream:
    return spead2.recv.Stream(
        THREAD_POOL,
        spead2.recv.StreamConfig(max_heaps=max_heaps, allow_out_of_order=allow_out_of_order),
        spead2.recv.RingStreamConfig(contiguous_only=False),
    )


def collect_spead2(stream: spead2.recv.Stream, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every heap of a spead2 stream until it stops; bounded by `timeout`."""
    return start_collecting_spead2(stream, timeout)()


def start_collecting_spead2(stream: spead2.recv.Stream,
                            timeout: float = 20.0) -> Callable[[], list[dict[str, Any]]]:
    """Start taking a spead2 stream's heaps in a thread (while the test sends).

    Returns a function that waits for the stream to stop (`timeout` seconds
    from now at most) and returns the heaps as records, or raises what the
    thread raised.
    """
    out: list[dict[str, Any]] = []
    result: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            for heap in stream:
                out.append(spead2_record(heap))
        except BaseException as exc:  # pragma: no cover - reported below
            result.put(exc)
        else:
            result.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout

    def wait() -> list[dict[str, Any]]:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            stream.stop()
            thread.join(5)
            raise TimeoutError("spead2 stream did not end in time")
        exc = result.get()
        if exc is not None:
            raise exc
        # Stopping joins the readers: only then are spead2's statistics final
        # (read straight after the ring stops they can miss the last batch).
        stream.stop()
        return out

    return wait


def spead2_decode_bytes(data: bytes, *, max_heaps: int = 4,
                        allow_out_of_order: bool = False) -> tuple[list[dict], Any]:
    """spead2's decode of a byte stream (add_buffer_reader): records, stats."""
    stream = make_spead2_stream(max_heaps, allow_out_of_order)
    stream.add_buffer_reader(data)
    records = collect_spead2(stream)
    return records, stream.stats


def spead2_decode_packets(packets: Sequence[bytes], *, max_heaps: int = 4,
                          allow_out_of_order: bool = False) -> tuple[list[dict], Any]:
    """spead2's decode of datagrams, boundaries kept (InprocQueue): records, stats."""
    stream = make_spead2_stream(max_heaps, allow_out_of_order)
    q = spead2.InprocQueue()
    stream.add_inproc_reader(q)
    for p in packets:
        q.add_packet(p)
    q.stop()
    records = collect_spead2(stream)
    return records, stream.stats


def spead2_chunk_group(layout: dict[str, Any], *, streams: int, max_chunks: int, chunks: int,
                       lossless: bool = True, stream_chunks: int | None = None,
                       max_heaps: int = 4) -> tuple[Any, list[Any]]:
    """Make a spead2 ``ChunkStreamRingGroup`` placing as daqd's `layout` does.

    Parameters
    ----------
    layout : dict
        daqd's layout arguments (``Spead2Placement``: timestamp_step,
        heaps_per_chunk, heap_bytes, ...).  With ``substreams`` in it, a chunk's
        present is (heaps_per_chunk, substreams) and its data (heaps_per_chunk,
        substreams, heap_bytes), the shapes of daqd's chunks; else both are flat.
    streams : int
        Members of the group, each on a thread pool of its own (a lossless
        member blocks its pool's thread while it waits).
    max_chunks : int
        The group's window (``ChunkStreamGroupConfig.max_chunks``).
    chunks : int
        Free chunks given to the group, zeroed; its rings hold as many.
    lossless : bool
        Eviction mode LOSSLESS (else LOSSY).
    stream_chunks : int, optional
        Each stream's window (``ChunkStreamConfig.max_chunks``); default the group's.
    max_heaps : int
        Each stream's ``StreamConfig.max_heaps``.

    Returns
    -------
    tuple
        The group and its members (streams, with no reader yet).
    """
    placement = _spead2compat.Spead2Placement(**layout)
    mode = spead2.recv.ChunkStreamGroupConfig.EvictionMode
    group = spead2.recv.ChunkStreamRingGroup(
        spead2.recv.ChunkStreamGroupConfig(max_chunks=max_chunks,
                                           eviction_mode=mode.LOSSLESS if lossless else mode.LOSSY),
        spead2.recv.ChunkRingbuffer(chunks), spead2.recv.ChunkRingbuffer(chunks))
    hpc, heap_bytes = layout["heaps_per_chunk"], layout["heap_bytes"]
    shape = (hpc, layout["substreams"]) if "substreams" in layout else (hpc,)
    for _ in range(chunks):
        data = np.zeros((*shape, heap_bytes), np.uint8)
        group.add_free_chunk(spead2.recv.Chunk(
            present=np.zeros(shape, np.uint8),
            data=data if len(shape) > 1 else data.reshape(-1)))
    config = spead2.recv.ChunkStreamConfig(
        items=placement.items, place=placement.place,
        max_chunks=max_chunks if stream_chunks is None else stream_chunks)
    stream_config = spead2.recv.StreamConfig(max_heaps=max_heaps)
    members = [group.emplace_back(spead2.ThreadPool(), stream_config, config)
               for _ in range(streams)]
    return group, members


def daqd_stream(max_heaps: int = 4, allow_out_of_order: bool = False,
                max_heap_size: int = 128 << 20, stop_on_stop_item: bool = True):
    return _spead.HeapStream(max_heaps, allow_out_of_order, max_heap_size, stop_on_stop_item)


def daqd_decode_uri(uri: str, **kwargs: Any) -> tuple[list[dict], dict]:
    """daqd's decode of a finite source URI (pcap:, file:, sim:): records, counters."""
    from daqd.recv.sources import open_source

    src = open_source(uri)
    try:
        stream = daqd_stream(**kwargs)
        records = [daqd_record(x) for x in stream.run(src.reader)]
    finally:
        src.close()
    return records, stream.stats()


def daqd_decode_bytes(data: bytes, **kwargs: Any) -> tuple[list[dict], dict, list]:
    """daqd's decode of a byte stream: records, counters, raw heaps."""
    stream = daqd_stream(**kwargs)
    heaps = stream.run(_spead.ByteStreamReader(data))
    return [daqd_record(h) for h in heaps], stream.stats(), heaps


def daqd_decode_packets(packets: Sequence[bytes], **kwargs: Any) -> tuple[list[dict], dict, list]:
    """daqd's decode of datagrams (add_packets): records, counters, raw heaps."""
    stream = daqd_stream(**kwargs)
    heaps = stream.add_packets(list(packets))
    return [daqd_record(h) for h in heaps], stream.stats(), heaps


def rejected_total(counters: dict[str, int]) -> int:
    """Packets counted as rejected for a reason once they reached the decoder."""
    return sum(v for k, v in counters.items()
               if k.startswith("packets_rejected_")
               and k not in ("packets_rejected_after_stop", "packets_rejected_truncated"))


# --------------------------------------------------------------------------
# pcap files

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(payload: bytes, *, proto: int = 17, flags_frag: int = 0x4000,
                src: str = "10.0.0.1", dst: str = "10.0.0.2", ident: int = 0) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_frag, 64,
                         proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack(">H", _ip_checksum(header)) + header[12:]
    return header + payload


def udp_datagram(payload: bytes, dst_port: int, src_port: int = 40000) -> bytes:
    return struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload


def ipv4_udp(payload: bytes, dst_port: int, **kwargs: Any) -> bytes:
    return ipv4_packet(udp_datagram(payload, dst_port), **kwargs)


def link_frame(ip: bytes, linktype: int, *, vlan: bool = False, ethertype: int = 0x0800) -> bytes:
    """Wrap a network-layer packet in the link-layer header of `linktype`."""
    if linktype == LINKTYPE_ETHERNET:
        macs = bytes.fromhex("020000000002" "020000000001")
        if vlan:
            return macs + struct.pack(">HHH", 0x8100, 0x0064, ethertype) + ip
        return macs + struct.pack(">H", ethertype) + ip
    if linktype == LINKTYPE_LINUX_SLL:
        # packet type, ARPHRD_ETHER, address length, 8 address bytes, protocol
        return struct.pack(">HHH8sH", 0, 1, 6, bytes.fromhex("0200000000010000"),
                           ethertype) + ip
    if linktype == LINKTYPE_LINUX_SLL2:
        # protocol, reserved, interface index, ARPHRD_ETHER, packet type,
        # address length, 8 address bytes
        return struct.pack(">HHIHBB8s", ethertype, 0, 2, 1, 0, 6,
                           bytes.fromhex("0200000000010000")) + ip
    raise ValueError(linktype)


def pcap_bytes(frames: Sequence[bytes], *, linktype: int = LINKTYPE_ETHERNET,
               big_endian: bool = False, nanosecond: bool = False,
               snaplen: int = 262144) -> bytes:
    """A classic pcap file holding `frames` (already link-layer framed)."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, frame in enumerate(frames):
        sub = (i * 1000 + 7) if nanosecond else i + 7
        out.append(struct.pack(e + "IIII", 1700000000 + i, sub, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def write_pcap(path: Any, frames: Sequence[bytes], **kwargs: Any) -> None:
    with open(path, "wb") as f:
        f.write(pcap_bytes(frames, **kwargs))
