"""A completed chunk's missing slots: counted (``chunk_slots_missing``) and zeroed.

``ChunkGroup.close_chunk`` counts the presence bytes that are 0 eight at a time
(``count_zero_bytes``), then zeroes the data of the missing slots if the group
has ``zero_missing``.  These tests drive chunks whose presence is not a whole
number of words (13 heaps: a word and 5 bytes over), with random losses, through
a pool small enough that every chunk is reused, so that a slot left missing
shows whatever an earlier chunk wrote there unless it is zeroed.  spead2 4.5.1's
chunk stream, given the same packets, is the reference for placement and
presence (tests/spead2_chunks.py).
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_chunks as sc
from spead_packets import heap_packets

TS_ID = 0x1600
DATA_ID = 0x3300
HEAP = 16
HPC = 13            # presence bytes per chunk: one 8-byte word and 5 more
CHUNKS = 24
LAYOUT = {"timestamp_step": HEAP, "heap_bytes": HEAP, "heaps_per_chunk": HPC,
          "timestamp_item": TS_ID}


def packets_of(indices: list[int]) -> list[bytes]:
    """One single-packet heap per index (timestamp index * HEAP), no payload byte 0."""
    out: list[bytes] = []
    for k, i in enumerate(indices):
        payload = bytes((7 * k + j) % 255 + 1 for j in range(HEAP))
        out += heap_packets(k + 1, [(TS_ID, i * HEAP), (DATA_ID, payload)])
    return out


def sent_indices(seed: int) -> list[int]:
    """The first two chunks whole (so every pool chunk has been written), then random losses."""
    rng = random.Random(seed)
    whole = list(range(2 * HPC))
    return whole + [i for i in range(2 * HPC, CHUNKS * HPC) if rng.random() > 0.3]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_missing_slots_match_spead2_and_are_counted(seed):
    sent = sent_indices(seed)
    got, dq, _ = sc.compare(packets_of(sent), max_chunks=2, **LAYOUT)
    delivered = {c["chunk_id"] for c in got}
    expected_missing = sum(1 for i in range(CHUNKS * HPC)
                           if i // HPC in delivered and i not in set(sent))
    present = np.concatenate([c["present"].reshape(-1) for c in got])
    assert dq["chunk_slots_missing"] == expected_missing == int((present == 0).sum())
    assert expected_missing > 0


@pytest.mark.parametrize("zero_missing", [True, False])
def test_missing_slots_zeroed_only_with_zero_missing(zero_missing):
    sent = sent_indices(4)
    # A pool of 3 chunks for 24: each chunk's memory holds three earlier chunks' heaps.
    got, dq = sc.daqd_chunk_receive(packets_of(sent), max_chunks=2, pool=3,
                                    zero_missing=zero_missing, **LAYOUT)
    assert [c["chunk_id"] for c in got] == list(range(CHUNKS))
    stale = 0
    missing = 0
    for c in got:
        data = c["data"].view(np.uint8).reshape(HPC, HEAP)
        for slot in np.flatnonzero(c["present"].reshape(-1) == 0):
            missing += 1
            if zero_missing:
                assert not data[slot].any(), (c["chunk_id"], slot)
            else:
                stale += bool(data[slot].any())
    assert dq["chunk_slots_missing"] == missing > 0
    if not zero_missing:
        assert stale > 0        # the test can tell zeroed slots from stale ones
