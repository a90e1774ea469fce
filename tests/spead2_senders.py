"""Heaps as spead2 4.5.1 sends them, with the heap counter chosen by the test."""

from __future__ import annotations

import numpy as np
import spead2
import spead2.send
from spead2_helpers import THREAD_POOL, split_packets

#: The addressed item of `heap_packets`.
PAYLOAD_ITEM = 0x5000


def heap_packets(cnt: int, nbytes: int, max_packet_size: int = 256) -> list[bytes]:
    """The datagrams of heap `cnt`: one addressed item of `nbytes`, cut by spead2's sender
    into packets of at most `max_packet_size` bytes (several, for more than ~200 bytes)."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    ig.add_item(PAYLOAD_ITEM, "payload", "", shape=(nbytes,), dtype="u1")
    ig[PAYLOAD_ITEM].value = (np.arange(nbytes) + cnt).astype(np.uint8)
    stream = spead2.send.BytesStream(THREAD_POOL,
                                     spead2.send.StreamConfig(max_packet_size=max_packet_size))
    stream.send_heap(ig.get_heap(descriptors="none", data="all"), cnt)
    return split_packets(stream.getvalue())
