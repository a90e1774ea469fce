"""Chunk mode: daqd's ChunkStream against spead2 4.5.1's ChunkRingStream, and on its own.

spead2 is the reference for placement (cython_ext/chunk_group.pxi follows spead2's
chunk_stream_state::allocate): the same packets go through both receivers
with the same layout (``_spead2compat.Spead2Placement``) and the delivered chunks
must match chunk for chunk -- chunk ids, ``present``, ``extra``, and ``data``
wherever present (tests/spead2_chunks.py, which also lists the deliberate
differences the comparison works around).  Where spead2's counters have a
daqd counterpart they must agree too.

The second half tests what only daqd has: pool accounting, ``when_full``,
``too_old_reset``, stop items, a consumer thread, and a steady state that
allocates nothing.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_chunks as sc
from spead_packets import heap_packets, raw_packet

from daqd import _spead
from daqd.recv.workloads import WORKLOADS as REFERENCE_WORKLOADS

TS_ID = 0x1600
SUB_ID = 0x1601
X1_ID = 0x1700
X2_ID = 0x1701
DATA_ID = 0x3300

ABSENT = np.uint64(2**64 - 1)

# A small layout: a timestamp step unlike the heap size, 4 heaps per chunk.
STEP = 100
HEAP = 64
HPC = 4
SMALL = {"timestamp_step": STEP, "heap_bytes": HEAP, "heaps_per_chunk": HPC}


# --------------------------------------------------------------------------
# Every ChunkStream a test creates must end with its whole pool free.


@pytest.fixture(autouse=True)
def pool_accounting(monkeypatch):
    """Track every ChunkStream built during a test; afterwards all chunks must be free."""
    made = []
    real = _spead.ChunkStream

    def tracked(*args, **kwargs):
        stream = real(*args, **kwargs)
        made.append(stream)
        return stream

    monkeypatch.setattr(_spead, "ChunkStream", tracked)
    yield made
    for stream in made:
        sc.assert_pool_free(stream)


# --------------------------------------------------------------------------
# Packet building


def payload_of(cnt: int, n: int) -> bytes:
    """Random bytes of heap `cnt` (seeded by it), never zero (so zeroed slots stand out)."""
    return np.random.default_rng(cnt).integers(1, 256, n, dtype=np.uint8).tobytes()


def make_heap(cnt: int, ts: int | None, *, heap_bytes: int = HEAP, per_packet: int | None = None,
              sub: int | None = None, extras: tuple = (), size: int | None = None,
              stop: bool = False) -> list[bytes]:
    """The packets of one heap: timestamp (None: left out), substream, extras, data item."""
    # heap_packets sends only Python ints as immediates (not numpy integers)
    items: list = []
    if ts is not None:
        items.append((TS_ID, int(ts)))
    if sub is not None:
        items.append((SUB_ID, int(sub)))
    items.extend((i, int(v)) for i, v in extras)
    n = heap_bytes if size is None else size
    items.append((DATA_ID, payload_of(cnt, n)))
    return heap_packets(cnt, items, packet_payload=per_packet or max(n, 1), stop=stop)


def stream_of(indices, *, step: int = STEP, first_cnt: int = 1, **kw) -> list[bytes]:
    """Packets of heaps with timestamps index * step, one heap per index, in order."""
    out: list[bytes] = []
    for k, i in enumerate(indices):
        out += make_heap(first_cnt + k, i * step, **kw)
    return out


def unsized(p: bytes) -> bytes:
    """`p` without its HEAP_SIZE pointer."""
    n_items = int.from_bytes(p[6:8], "big")
    ptrs = [int.from_bytes(p[8 + 8 * i:16 + 8 * i], "big") for i in range(n_items)]
    keep = [q for q in ptrs if not (q >> 63 and ((q >> 48) & 0x7FFF) == 0x2)]
    return raw_packet(keep, p[8 + 8 * n_items:])


# --------------------------------------------------------------------------
# Reference workloads


# The reference workloads' layouts (64 heaps per chunk), and heaps to send of each.
WORKLOADS = {name: (w.layout(), 64 * 2 + 9 if name == "W3" else 64 * 5 + 17)
             for name, w in REFERENCE_WORKLOADS.items()}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_reference_workload(workload):
    layout, heaps = WORKLOADS[workload]
    packets = sc.sim_packets(workload, heaps)
    got, dq, s2 = sc.compare(packets, **layout)
    assert [c["chunk_id"] for c in got] == list(range((heaps + 63) // 64))
    present = np.concatenate([c["present"].reshape(-1) for c in got])
    assert present[:heaps].all() and not present[heaps:].any()
    assert dq["chunk_heaps_present"] == heaps == s2["heaps"]
    assert dq["chunk_slots_missing"] == len(got) * 64 - heaps
    # daqd reading the SimReader itself (ChunkStream.chunks) gives the same chunks.
    direct, dq2 = sc.daqd_chunk_receive(reader=_spead.SimReader(workload, heaps=heaps),
                                        **layout)
    for a, b in zip(direct, got, strict=True):
        assert a["chunk_id"] == b["chunk_id"]
        np.testing.assert_array_equal(a["present"], b["present"])
        np.testing.assert_array_equal(a["data"], b["data"])
    assert dq2["chunk_heaps_present"] == heaps


def test_reference_workload_from_byte_stream():
    """spead2's buffer reader over W1 bytes, daqd's ByteStreamReader over the same bytes."""
    layout, heaps = WORKLOADS["W1"]
    packets = sc.sim_packets("W1", heaps)
    ref, s2 = sc.spead2_chunk_receive(packets, transport="buffer", **layout)
    got, dq = sc.daqd_chunk_receive(reader=_spead.ByteStreamReader(b"".join(packets)),
                                    **layout)
    sc.assert_chunks_match(got, ref)
    assert sc.counter_mismatches(dq, s2) == {}
    assert dq["packets"] == s2["packets"] == heaps


def test_first_chunk_not_zero():
    """Deliberate difference 1: daqd opens no empty chunks before the first heap's."""
    packets = stream_of(range(10 * HPC + 1, 14 * HPC))
    got, dq, s2 = sc.compare(packets, max_chunks=3, **SMALL)
    assert got[0]["chunk_id"] == 10
    assert dq["chunk_slots_missing"] == 1


@pytest.mark.parametrize("workload, packet_presence", [("W1", 0), ("W3", 0), ("W3", 8192)])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_loss_reference_workload(workload, packet_presence, seed):
    layout, heaps = WORKLOADS[workload]
    packets = sc.sim_packets(workload, heaps)
    rng = random.Random(seed)
    kept = [packets[0]] + [p for p in packets[1:] if rng.random() > 0.1]
    got, dq, s2 = sc.compare(kept, packet_presence=packet_presence,
                             **layout)
    assert dq["chunk_slots_missing"] > len(got) * 64 - heaps
    if workload == "W3":
        assert dq["incomplete_heaps_evicted"] + dq["incomplete_heaps_flushed"] > 0
    if packet_presence:
        assert got[0]["present"].shape == (64, 1, 8)
        # one presence byte per packet whose payload landed in a chunk
        assert int(sum(c["present"].sum() for c in got)) == dq["payload_bytes"] // 8192
        # in-order: the packets of a heap whose first packet was lost are rejected
        assert dq["packets_rejected_out_of_order"] > 0


# --------------------------------------------------------------------------
# Reordering, too-old heaps, window jumps


@pytest.mark.parametrize("swaps", [
    [(3, 4)],                       # last heap of chunk 0 <-> first of chunk 1
    [(3, 4), (7, 8), (11, 12)],     # across every boundary
    [(2, 9)],                       # chunk 0 <-> chunk 2 (window of 3)
    [(5, 13)],                      # chunk 1 <-> chunk 3
    [(1, 14)],                      # chunk 0 arrives after chunk 3 opened: too old
])
@pytest.mark.parametrize("per_packet", [None, 16])
def test_reorder_within_window(swaps, per_packet):
    order = list(range(4 * HPC))
    for a, b in swaps:
        order[a], order[b] = order[b], order[a]
    packets = []
    for i in order:
        packets += make_heap(i + 1, i * STEP, per_packet=per_packet)
    got, dq, s2 = sc.compare(packets, max_chunks=3, **SMALL)
    # (1, 14): chunk 3 opens after heap 0, so the window is 1..3 and heaps 1, 2 and 3
    # (chunk 0) are too old
    too_old = 3 if (1, 14) in swaps else 0
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"] == too_old
    assert dq["chunk_heaps_present"] == 4 * HPC - too_old


def test_too_old_heap():
    packets = stream_of(range(4 * HPC))               # chunks 0..3, window of 2
    packets += make_heap(100, 0)                      # chunk 0: closed long ago
    packets += make_heap(101, (HPC + 1) * STEP)       # chunk 1: closed
    packets += make_heap(102, (2 * HPC + 1) * STEP)   # chunk 2: still open, refills a slot
    got, dq, s2 = sc.compare(packets, max_chunks=2, **SMALL)
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"] == 2
    assert [c["chunk_id"] for c in got] == [0, 1, 2, 3]
    # the late heap overwrote slot 1 of chunk 2 with its own payload
    assert got[2]["data"][1, 0].tobytes() == payload_of(102, HEAP)
    assert dq["chunk_packets_discarded"] == 2


LATE = {
    # name: (heaps of two packets: A, A2 in chunk 1, B in chunk 3; packet order)
    "two_heaps": [("A", 0), ("A2", 0), ("B", 0), ("A", 1), ("A2", 1)],
    "one_heap": [("A", 0), ("B", 0), ("A", 1), ("B", 1)],
}


def late_packets(order):
    heaps = {"A": make_heap(3, 4 * STEP, per_packet=HEAP // 2),
             "A2": make_heap(4, 5 * STEP, per_packet=HEAP // 2),
             "B": make_heap(5, 13 * STEP, per_packet=HEAP // 2)}
    return [heaps[name][j] for name, j in order]


@pytest.mark.parametrize("packet_presence", [0, HEAP // 2])
@pytest.mark.parametrize("order", list(LATE))
def test_heaps_completing_after_their_chunk_left(order, packet_presence):
    """Heaps placed on their first packet whose chunk leaves the window before they complete."""
    packets = late_packets(LATE[order])
    got, dq, s2 = sc.compare(packets, max_chunks=2, packet_presence=packet_presence, **SMALL)
    names = {name for name, _ in LATE[order]}
    late = sum(1 for name, j in LATE[order] if j == 1 and name != "B")
    assert dq["chunk_heaps_placed"] == len(names)
    assert dq["chunk_packets_discarded"] == late
    # placed, but complete only after their chunk left: too old, as spead2 counts them
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"] == late
    first = got[0]
    assert first["chunk_id"] == 1
    if packet_presence:
        # the first packets of A (and A2) landed in chunk 1, the late ones did not
        assert first["present"][:, 0, 0].tolist() == [1, len(names) == 3, 0, 0]
        assert not first["present"][:, 0, 1].any()
    else:
        assert not first["present"].any()


@pytest.mark.parametrize("order", list(LATE))
def test_too_old_counts_heaps_completing_late(order):
    packets = late_packets(LATE[order])
    ref, s2 = sc.spead2_chunk_receive(packets, max_chunks=2, **SMALL)
    got, dq = sc.daqd_chunk_receive(packets, max_chunks=2, **SMALL)
    assert s2["too_old_heaps"] == sum(1 for name, j in LATE[order] if j == 1 and name != "B")
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"]


@pytest.mark.parametrize("jump", [1, 2, 3, 4, 5, 50, 10**6])
@pytest.mark.parametrize("max_chunks", [1, 4])
def test_window_jump(jump, max_chunks):
    start = [0, 1, 2, 3, 4, 5]                                  # chunk 0, half of chunk 1
    target = (1 + jump) * HPC + 2                               # slot 2 of chunk 1 + jump
    late = [target - 1, target - HPC, target - 2 * HPC - 1, 6, 7, 3]
    after = [target + 1, target + HPC]
    packets = stream_of(start + [target] + late + after)
    got, dq, s2 = sc.compare(packets, max_chunks=max_chunks, **SMALL)
    ids = [c["chunk_id"] for c in got]
    assert ids[-1] == 2 + jump
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"]
    if jump >= max_chunks:
        # the window restarted just below the new chunk: at most max_chunks - 1 chunks
        # (empty unless late heaps fill them) between the old chunks and the new one
        assert all(i <= 1 or i >= 1 + jump - (max_chunks - 1) for i in ids)


# --------------------------------------------------------------------------
# Duplicates


@pytest.mark.parametrize("per_packet", [None, 16])
def test_duplicates_in_order(per_packet):
    base = stream_of(range(3 * HPC), per_packet=per_packet)
    doubled = [q for p in base for q in (p, p)]              # every packet twice in a row
    again = base + base[len(base) // 2:]                      # the second half resent later
    for packets in (doubled, again):
        got, dq, s2 = sc.compare(packets, max_chunks=2, **SMALL)
        assert all(c["present"].all() for c in got)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("packet_presence", [0, 16])
def test_duplicates_out_of_order_shuffled(seed, packet_presence):
    """W3-like heaps (4 packets each), packets shuffled within a few heaps, some twice."""
    rng = random.Random(seed)
    heaps = [make_heap(i + 1, i * STEP, per_packet=16) for i in range(5 * HPC)]
    packets = [heaps[0][0]]
    rest = [p for h in heaps for p in h][1:]
    keyed = [(i / 4 + rng.uniform(0, 3), p) for i, p in enumerate(rest)]
    keyed += [(k + rng.uniform(0, 2), p) for k, p in keyed if rng.random() < 0.2]
    packets += [p for _, p in sorted(keyed, key=lambda t: t[0])]
    got, dq, s2 = sc.compare(packets, max_chunks=3, max_heaps=8, allow_out_of_order=True,
                             packet_presence=packet_presence, **SMALL)
    assert dq["packets_rejected_duplicate"] > 0


# --------------------------------------------------------------------------
# Substreams, extra items, dtypes, packet presence


def test_substreams_and_extra_items():
    subs = 3
    layout = dict(SMALL, substream_item=SUB_ID, substreams=subs, extra_items=(X1_ID, X2_ID),
                  dtype="<u2")
    packets = []
    cnt = 1
    for i in range(3 * HPC):
        for s in range(subs):
            if (i + s) % 5 == 4:
                continue                                      # a missing heap
            extras = [(X1_ID, 1000 * i + s)]
            if s != 1:
                extras.append((X2_ID, 2**40 + i))
            packets += make_heap(cnt, i * STEP, sub=s, extras=tuple(extras))
            cnt += 1
    packets += make_heap(cnt, 2 * STEP, sub=subs)             # out of range
    packets += make_heap(cnt + 1, 2 * STEP, sub=None)         # missing
    got, dq, s2 = sc.compare(packets, max_chunks=2, **layout)
    assert dq["chunk_heaps_rejected_substream"] == s2["rejected_heaps"] == 2
    c0 = got[0]
    assert c0["data"].shape == (HPC, subs, HEAP // 2) and c0["data"].dtype == np.dtype("<u2")
    assert c0["extra"].shape == (HPC, subs, 2)
    assert c0["extra"][2, 0, 0] == 2000 and c0["extra"][2, 0, 1] == 2**40 + 2
    assert c0["extra"][2, 1, 1] == ABSENT
    # heaps with (i + s) % 5 == 4 were never sent: (2, 2) and (3, 1) in chunk 0
    assert c0["present"][2, 2] == 0 and not c0["extra"][2, 2].any()
    assert c0["present"][3, 1] == 0 and c0["present"].sum() == HPC * subs - 2


def test_extra_items_without_substreams():
    layout = dict(SMALL, extra_items=(X2_ID, TS_ID, X1_ID))
    packets = []
    for i in range(2 * HPC):
        extras = ((X1_ID, i),) if i % 2 else ()
        packets += make_heap(i + 1, i * STEP, extras=extras)
    got, dq, s2 = sc.compare(packets, max_chunks=2, **layout)
    ex = np.concatenate([c["extra"] for c in got])[:, 0, :]
    np.testing.assert_array_equal(ex[:, 0], ABSENT)
    np.testing.assert_array_equal(ex[:, 1], np.arange(2 * HPC) * STEP)
    np.testing.assert_array_equal(ex[1::2, 2], np.arange(1, 2 * HPC, 2))
    np.testing.assert_array_equal(ex[0::2, 2], ABSENT)


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_packet_presence_with_lost_packets(allow_out_of_order):
    per, n = 16, HEAP // 16
    packets = []
    lost = {(1, 2), (2, 0), (5, 3), (6, 1), (6, 2), (9, 0), (9, 1), (9, 2), (9, 3)}
    for i in range(3 * HPC):
        for j, p in enumerate(make_heap(i + 1, i * STEP, per_packet=per)):
            if (i, j) not in lost:
                packets.append(p)
    got, dq, s2 = sc.compare(packets, max_chunks=2, packet_presence=per,
                             allow_out_of_order=allow_out_of_order, **SMALL)
    present = np.concatenate([c["present"] for c in got])[:, 0, :]
    assert present.shape == (3 * HPC, n)
    if allow_out_of_order:
        expect = np.ones((3 * HPC, n), np.uint8)
        for i, j in lost:
            expect[i, j] = 0
        np.testing.assert_array_equal(present, expect)
    assert dq["chunk_slots_missing"] == len({i for i, _ in lost})


# --------------------------------------------------------------------------
# Layout rejections


REJECTIONS = {
    # name: (make_heap overrides, daqd counter)
    "size_larger": ({"size": 2 * HEAP}, "chunk_heaps_rejected_size"),
    "size_smaller": ({"size": HEAP // 2}, "chunk_heaps_rejected_size"),
    "no_timestamp": ({"ts": None}, "chunk_heaps_rejected_no_timestamp"),
    "misaligned": ({"ts": 5 * STEP + 1}, "chunk_heaps_rejected_misaligned"),
    "substream_missing": ({"sub": None}, "chunk_heaps_rejected_substream"),
    "substream_out_of_range": ({"sub": 2}, "chunk_heaps_rejected_substream"),
    "substream_huge": ({"sub": 2**47}, "chunk_heaps_rejected_substream"),
}
REJECT_COUNTERS = [n for n in _spead.STAT_NAMES if n.startswith("chunk_heaps_rejected_")]


@pytest.mark.parametrize("where", ["first", "middle"])
@pytest.mark.parametrize("per_packet", [None, 16])
@pytest.mark.parametrize("reason", list(REJECTIONS))
def test_layout_rejection(reason, per_packet, where):
    overrides, counter = REJECTIONS[reason]
    layout = dict(SMALL, substream_item=SUB_ID, substreams=2)
    good = []
    for i in range(3 * HPC):
        for s in range(2):
            if (i, s) != (5, 1):            # the slot the bad heap would take stays empty
                good.append(make_heap(len(good) + 1, i * STEP, sub=s, per_packet=per_packet))
    kw = {"ts": 5 * STEP, "sub": 1, "per_packet": per_packet}
    kw.update(overrides)
    bad = make_heap(500, **kw)
    pos = 0 if where == "first" else 9
    heaps = good[:pos] + [bad] + good[pos:]
    packets = [p for h in heaps for p in h]
    got, dq, s2 = sc.compare(packets, max_chunks=2, **layout)
    assert dq[counter] == 1
    assert sum(dq[n] for n in REJECT_COUNTERS) == 1 == s2["rejected_heaps"]
    assert dq["chunk_packets_discarded"] == len(bad)
    assert dq["chunk_heaps_present"] == len(good)
    assert [c["chunk_id"] for c in got] == [0, 1, 2]
    assert got[1]["present"][1, 1] == 0 and got[1]["present"].sum() == 2 * HPC - 1
    # the rejected heap's payload is nowhere
    needle = payload_of(500, kw.get("size", HEAP))[:16]
    assert all(needle not in c["data"].tobytes() for c in got)


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_heap_judged_on_its_first_packet(allow_out_of_order):
    """The timestamp is read from the heap's first packet only (as spead2's place call)."""
    good = stream_of(range(2 * HPC))
    late_ts = make_heap(100, 2 * STEP, per_packet=16)
    no_ts = make_heap(100, None, per_packet=16)
    # in order: the first packet lacks the timestamp -> rejected; out of order the
    # packet with the timestamp arrives first -> placed
    heap = [no_ts[0]] + late_ts[1:] if not allow_out_of_order else late_ts[1:] + [no_ts[0]]
    packets = good[:2] + heap + good[3:]
    got, dq, s2 = sc.compare(packets, max_chunks=2, allow_out_of_order=allow_out_of_order,
                             **SMALL)
    placed = allow_out_of_order
    assert dq["chunk_heaps_rejected_no_timestamp"] == s2["rejected_heaps"] == (not placed)
    assert got[0]["present"][2, 0] == placed
    if placed:
        assert got[0]["data"][2, 0].tobytes() == payload_of(100, HEAP)


def test_empty_heap_is_not_placed():
    """A complete heap of HEAP_SIZE 0 (not a stop heap) carries nothing to place.

    daqd counts it in chunk_heaps_rejected_size (docs/monitoring.md says so);
    spead2 never calls its place callback for a heap without payload, so its
    rejected_heaps stays 0: a counter difference the docs account for.
    """
    packets = stream_of(range(HPC)) + make_heap(50, 2 * STEP, size=0) + stream_of(
        range(HPC, 2 * HPC), first_cnt=60)
    got, dq, s2 = sc.compare(packets, max_chunks=2, counters=False, **SMALL)
    assert dq["chunk_heaps_rejected_size"] == 1
    assert dq["chunk_heaps_placed"] == 2 * HPC
    assert all(c["present"].all() for c in got)
    assert sc.counter_mismatches(dq, s2) == {"rejected_heaps": (1, 0)}


def test_unsized_heaps():
    """Packets without HEAP_SIZE cannot be placed (spead2 drops them too)."""
    good = stream_of(range(2 * HPC))
    packets = list(good)
    lone = [unsized(p) for p in make_heap(70, 3 * STEP, per_packet=16)]
    packets[4:4] = lone
    packets.append(unsized(make_heap(71, 9 * STEP)[0]))
    got, dq, s2 = sc.compare(packets, max_chunks=2, **SMALL)
    assert dq["packets_rejected_unsized"] == len(lone) + 1
    assert sum(dq[n] for n in REJECT_COUNTERS) == 0 == s2["rejected_heaps"]
    assert dq["packets"] == s2["packets"] == len(packets)
    assert [c["chunk_id"] for c in got] == [0, 1]
    assert all(c["present"].all() for c in got)


# --------------------------------------------------------------------------
# Stop items


def test_stop_item_against_spead2():
    packets = stream_of(range(2 * HPC + 2)) + [_spead.stop_packet(999)] + stream_of(
        range(2 * HPC + 2, 4 * HPC), first_cnt=100)
    got, dq, s2 = sc.compare(packets, max_chunks=3, **SMALL)
    assert [c["chunk_id"] for c in got] == [0, 1, 2]
    assert got[2]["present"][:, 0].tolist() == [1, 1, 0, 0]
    assert dq["stop_heaps"] == 1


# --------------------------------------------------------------------------
# Random loss, reordering and duplication (hypothesis) against spead2


def note_events(dq: dict[str, int]) -> None:
    """Which paths an example reached (pytest --hypothesis-show-statistics)."""
    for name in ("chunk_heaps_too_old", "incomplete_heaps_evicted", "packets_rejected_duplicate",
                 "packets_rejected_out_of_order", "chunk_packets_discarded",
                 "chunk_heaps_rejected_size", "chunk_heaps_rejected_substream"):
        if dq[name]:
            event(name)


@st.composite
def perturbed(draw):
    per_heap = draw(st.sampled_from([1, 4]))
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 3, 6, 20]), min_size=3, max_size=36))
    indices = [int(i) for i in np.cumsum([0] + gaps)]
    params = {
        "loss": draw(st.sampled_from([0.0, 0.05, 0.2])),
        "reorder": draw(st.sampled_from([0.0, 0.1, 0.4])),
        "dist": draw(st.integers(1, 12)),
        "dup": draw(st.sampled_from([0.0, 0.05, 0.2])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    kwargs = {
        "max_chunks": draw(st.integers(1, 4)),
        "max_heaps": draw(st.integers(1, 6)),
        "allow_out_of_order": draw(st.booleans()),
        "packet_presence": draw(st.sampled_from([0, 16])) if per_heap > 1 else 0,
    }
    return per_heap, indices, params, kwargs


def perturb(packets: list[bytes], loss: float, reorder: float, dist: int, dup: float,
            seed: int) -> list[bytes]:
    """Lose, swap and duplicate packets.

    The first packet (heap 0, chunk 0) stays first, so that both receivers'
    windows start at chunk 0: otherwise deliberate difference 1 (daqd's window
    starts at the first heap's chunk) would make late heaps of earlier chunks
    too old in daqd only.
    """
    rng = random.Random(seed)
    rest = [p for p in packets[1:] if rng.random() >= loss]
    for i in range(len(rest)):
        if rng.random() < reorder:
            j = min(len(rest) - 1, i + rng.randint(1, dist))
            rest[i], rest[j] = rest[j], rest[i]
    out = list(rest)
    for p in rest:
        if rng.random() < dup:
            out.insert(min(len(out), out.index(p) + rng.randint(0, dist)), p)
    return [packets[0]] + out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(perturbed())
def test_random_loss_reorder_duplication(case):
    per_heap, indices, params, kwargs = case
    packets = stream_of(indices, per_packet=HEAP // per_heap)
    packets = perturb(packets, **params)
    got, dq, s2 = sc.compare(packets, **SMALL, **kwargs)
    note_events(dq)


@st.composite
def mixed_streams(draw):
    """Heaps on two substreams with an extra item, some malformed, going back and forth."""
    per_heap = draw(st.sampled_from([1, 2, 4]))
    kwargs = {
        "max_chunks": draw(st.integers(1, 4)),
        "max_heaps": draw(st.integers(1, 6)),
        "allow_out_of_order": draw(st.booleans()),
        "packet_presence": draw(st.sampled_from([0, HEAP // per_heap])) if per_heap > 1 else 0,
    }
    params = {
        "n": draw(st.integers(2, 40)),
        "bad": draw(st.sampled_from([0.0, 0.1, 0.3])),
        "back": draw(st.sampled_from([0.0, 0.1, 0.3])),
        "loss": draw(st.sampled_from([0.0, 0.1])),
        "interleave": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "dup": draw(st.sampled_from([0.0, 0.1])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    return per_heap, kwargs, params


def mixed_packets(per_heap: int, n: int, bad: float, back: float, loss: float,
                  interleave: float, dup: float, seed: int) -> tuple[list[bytes], set[bytes]]:
    """The packets, and the set of empty-heap packets among them."""
    rng = random.Random(seed)
    per = HEAP // per_heap
    heaps = [make_heap(1, 0, sub=0, extras=((X1_ID, 5),), per_packet=per)]
    empty: set[bytes] = set()
    idx = 0
    for cnt in range(2, n + 2):
        if rng.random() < back:
            idx = max(0, idx - rng.randint(1, 12))
        else:
            idx += rng.choice([0, 1, 1, 1, 2, 5, 17])
        kw: dict = {"sub": rng.randint(0, 1), "per_packet": per, "ts": idx * STEP}
        if rng.random() < 0.5:
            kw["extras"] = ((X1_ID, rng.randint(0, 2**40)),)
        if rng.random() < bad:
            kind = rng.choice(["size", "no_ts", "misaligned", "sub", "no_sub", "empty"])
            kw.update({"size": {"size": 2 * HEAP}, "no_ts": {"ts": None},
                       "misaligned": {"ts": idx * STEP + 3}, "sub": {"sub": 2},
                       "no_sub": {"sub": None}, "empty": {"size": 0}}[kind])
        heap = make_heap(cnt, **kw)
        if kw.get("size") == 0:
            empty.update(heap)
        heaps.append(heap)
    # neighbouring heaps' packets interleaved; the very first packet stays first
    keyed = [(-1.0, heaps[0][0])] + [(j * 0.01, p) for j, p in enumerate(heaps[0][1:])]
    for i, heap in enumerate(heaps[1:], 1):
        shift = rng.uniform(0, 3) * interleave
        keyed += [(i + j * 0.01 + shift, p) for j, p in enumerate(heap)]
    packets = [p for _, p in sorted(keyed, key=lambda t: t[0])]
    packets = packets[:1] + [p for p in packets[1:] if rng.random() >= loss]
    out = list(packets)
    for p in packets[1:]:
        if rng.random() < dup:
            out.insert(rng.randint(1, len(out)), p)
    return out, empty


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_streams())
def test_random_mixed_streams(case):
    per_heap, kwargs, params = case
    packets, empty = mixed_packets(per_heap, **params)
    layout = dict(SMALL, substream_item=SUB_ID, substreams=2, extra_items=(X1_ID,))
    got, dq, s2 = sc.compare(packets, counters=False, **layout, **kwargs)
    note_events(dq)
    mism = sc.counter_mismatches(dq, s2)
    # complete empty heaps: daqd counts them as rejected (test_empty_heap_is_not_placed)
    n_empty = sum(p in empty for p in packets)
    d, s = mism.pop("rejected_heaps", (0, 0))
    assert d - s == n_empty
    assert mism == {}


# --------------------------------------------------------------------------
# daqd only: pool, when_full, too_old_reset, threads, allocation


def test_pool_accounting_sees_a_held_chunk(pool_accounting):
    """The autouse check: every stream is tracked, and a held chunk would fail it."""
    stream = _spead.ChunkStream(max_chunks=2, pool=4, **SMALL)
    assert pool_accounting == [stream]
    stream.add_packets(stream_of(range(HPC)))
    with pytest.raises(AssertionError):
        sc.assert_pool_free(stream)                     # one chunk open
    stream.finish()
    chunk = stream.get(0)
    with pytest.raises(AssertionError):
        sc.assert_pool_free(stream)                     # one chunk held
    chunk.release()
    sc.assert_pool_free(stream)


def test_release_twice_raises():
    stream = _spead.ChunkStream(max_chunks=2, pool=4, **SMALL)
    stream.add_packets(stream_of(range(2 * HPC)))
    stream.finish()
    chunk = stream.get(0)
    assert stream.pool_counts() == {"free": 2, "open": 0, "ready": 1, "held": 1}
    chunk.release()
    with pytest.raises(RuntimeError):
        chunk.release()
    with stream.get(0) as other:
        assert other.chunk_id == 1
    with pytest.raises(RuntimeError):
        other.release()
    with pytest.raises(RuntimeError):
        chunk.release()
    assert stream.get(0) is None
    sc.assert_pool_free(stream)


def test_get_times_out_and_ends():
    stream = _spead.ChunkStream(max_chunks=2, pool=4, **SMALL)
    stream.add_packets(stream_of(range(HPC)))               # one chunk, still open
    with pytest.raises(TimeoutError):
        stream.get(0.01)
    stream.finish()
    with stream.get(1) as chunk:
        assert chunk.chunk_id == 0 and chunk.present.all()
    assert stream.get(1) is None


def test_when_full_drop_consumer_holds_everything():
    per = 16
    n_per = HEAP // per
    stream = _spead.ChunkStream(max_chunks=2, pool=4, when_full="drop", too_old_reset=0,
                                **SMALL)
    stream.add_packets(stream_of(range(4 * HPC), per_packet=per))     # chunks 0..3
    held = [stream.get(0), stream.get(0)]                             # 0 and 1 held
    assert [c.chunk_id for c in held] == [0, 1]
    assert stream.pool_counts() == {"free": 0, "open": 2, "ready": 0, "held": 2}
    # chunks 4 and 5: chunk 2 and 3 close, no chunk left to open 4 and 5
    stream.add_packets(stream_of(range(4 * HPC, 6 * HPC), per_packet=per, first_cnt=100))
    s = stream.stats()
    assert s["chunk_heaps_no_free_chunk"] == 2 * HPC
    assert s["chunk_packets_discarded"] == 2 * HPC * n_per
    assert s["chunk_heaps_placed"] == 4 * HPC
    assert s["worker_blocked"] == 0
    # every packet accounted: placed heaps' payload or discarded
    assert s["packets"] == 6 * HPC * n_per
    assert s["payload_bytes"] == 4 * HPC * HEAP
    assert s["packets"] == s["payload_bytes"] // per + s["chunk_packets_discarded"]
    assert stream.pool_counts() == {"free": 0, "open": 0, "ready": 2, "held": 2}
    for c in held:
        c.release()
    ready = [stream.get(0), stream.get(0)]
    assert [c.chunk_id for c in ready] == [2, 3]
    for c in ready:
        assert c.present.all()
        c.release()
    # with chunks free again, the stream goes on
    stream.add_packets(stream_of(range(6 * HPC, 7 * HPC), per_packet=per, first_cnt=200))
    stream.finish()
    ids = []
    while (c := stream.get(0)) is not None:
        with c:
            ids.append((c.chunk_id, int(c.present.sum())))
    # chunk 4 and 5 never got a chunk; they are not delivered
    assert ids == [(6, HPC)]
    s = stream.stats()
    assert s["chunks_completed"] == 5
    sc.assert_pool_free(stream)


def test_when_full_wait_consumer_releases_late():
    heaps = 64 * 12
    stream = _spead.ChunkStream(timestamp_step=1024, heap_bytes=1024, heaps_per_chunk=64,
                                max_chunks=2, pool=3, when_full="wait", wait_timeout=30.0)
    reader = _spead.SimReader("W2", heaps=heaps)
    errors = []

    def produce():
        try:
            while stream.process(reader) >= 0:
                pass
            stream.finish()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
            stream.finish()

    thread = threading.Thread(target=produce)
    thread.start()
    got = []
    for chunk in stream:
        time.sleep(0.02)
        with chunk:
            got.append((chunk.chunk_id, bool(chunk.present.all())))
    thread.join(10)
    assert not thread.is_alive() and not errors
    assert got == [(i, True) for i in range(heaps // 64)]
    s = stream.stats()
    assert s["worker_blocked"] > 0
    assert s["chunk_heaps_no_free_chunk"] == 0
    assert s["chunk_packets_discarded"] == 0
    assert s["chunk_heaps_present"] == heaps
    assert s["chunk_slots_missing"] == 0
    sc.assert_pool_free(stream)


def test_too_old_reset_reanchors_after_restart():
    reset = 2 * HPC                                     # the default: two chunks of heaps
    first = stream_of(range(10 * HPC))                  # chunks 0..9
    restart = stream_of(range(6 * HPC), first_cnt=1000)  # timestamps from 0 again
    stream = _spead.ChunkStream(max_chunks=2, pool=32, **SMALL)
    assert stream.too_old_reset == reset
    got = []
    for chunk in stream.chunks(_spead.ByteListReader(first + restart)):
        with chunk:
            got.append((chunk.chunk_id, chunk.present[:, 0].tolist()))
    s = stream.stats()
    assert s["chunk_heaps_no_free_chunk"] == 0
    assert s["chunk_window_resets"] == 1
    assert s["chunk_heaps_too_old"] == reset - 1
    # the heap that completed the run re-anchored the window at its own chunk
    anchor = (reset - 1) // HPC
    slot = (reset - 1) % HPC
    expect = [(i, [1] * HPC) for i in range(10)]
    expect.append((anchor, [0] * slot + [1] * (HPC - slot)))
    expect += [(i, [1] * HPC) for i in range(anchor + 1, 6)]
    assert got == expect
    assert s["chunk_heaps_present"] == 10 * HPC + 6 * HPC - (reset - 1)


def test_too_old_reset_disabled_is_spead2():
    first = stream_of(range(10 * HPC))
    restart = stream_of(range(6 * HPC), first_cnt=1000)
    got, dq, s2 = sc.compare(first + restart, max_chunks=2, too_old_reset=0, **SMALL)
    assert [c["chunk_id"] for c in got] == list(range(10))
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"] == 6 * HPC
    assert dq["chunk_window_resets"] == 0


def test_too_old_reset_needs_a_consecutive_run():
    """Too-old heaps interleaved with good ones never re-anchor the window."""
    packets = stream_of(range(10 * HPC))
    for k in range(4 * HPC):
        packets += make_heap(2000 + k, k * STEP)                  # too old
        packets += make_heap(3000 + k, (10 * HPC + k) * STEP)     # current
    stream = _spead.ChunkStream(max_chunks=2, pool=32, too_old_reset=3, **SMALL)
    ids = []
    for chunk in stream.chunks(_spead.ByteListReader(packets)):
        with chunk:
            ids.append(chunk.chunk_id)
    assert ids == list(range(14))
    s = stream.stats()
    assert s["chunk_heaps_no_free_chunk"] == 0
    assert s["chunk_window_resets"] == 0 and s["chunk_heaps_too_old"] == 4 * HPC


def test_stop_item_ends_stream_and_flushes():
    before = stream_of(range(2 * HPC + 1))
    after = stream_of(range(2 * HPC + 1, 3 * HPC), first_cnt=100)
    stream = _spead.ChunkStream(max_chunks=4, pool=8, **SMALL)
    stream.add_packets(before + [_spead.stop_packet(99)] + after)
    assert stream.stopped
    s = stream.stats()
    assert s["stop_heaps"] == 1
    assert s["packets_rejected_after_stop"] == len(after)
    assert s["chunks_completed"] == 3
    got = []
    while (c := stream.get(0)) is not None:
        with c:
            got.append((c.chunk_id, int(c.present.sum())))
    assert got == [(0, HPC), (1, HPC), (2, 1)]


def test_stop_item_through_chunks_generator():
    stream = _spead.ChunkStream(max_chunks=4, pool=8, **SMALL)
    packets = stream_of(range(HPC + 2)) + [_spead.stop_packet(7)] + stream_of(range(8, 12))
    ids = []
    for chunk in stream.chunks(_spead.ByteListReader(packets)):
        with chunk:
            ids.append(chunk.chunk_id)
    assert ids == [0, 1]
    assert stream.stopped


def sim_slot_ok(data: np.ndarray, cnt: int) -> bool:
    """A SimReader heap payload: big-endian (cnt << 16 | packet index), then j * 7 + 3."""
    head = int.from_bytes(data[:8].tobytes(), "big")
    tail = ((np.arange(8, data.size) * 7 + 3) & 0xFF).astype(np.uint8)
    return head == (cnt << 16) and np.array_equal(data[8:], tail)


def test_consumer_thread_with_process_thread():
    chunks_n = 40
    stream = _spead.ChunkStream(max_chunks=4, pool=6)
    reader = _spead.SimReader("W1", heaps=64 * chunks_n)
    errors = []

    def produce():
        try:
            while stream.process(reader) >= 0:
                pass
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            stream.finish()

    thread = threading.Thread(target=produce)
    thread.start()
    ids = []
    while (chunk := stream.get(timeout=10)) is not None:
        with chunk:
            assert chunk.present.all()
            cid = chunk.chunk_id
            for k in (0, 17, 63):
                assert sim_slot_ok(chunk.data[k, 0], 1 + cid * 64 + k)
            ids.append(cid)
    thread.join(10)
    assert not errors and not thread.is_alive()
    assert ids == list(range(chunks_n))
    s = stream.stats()
    assert s["chunk_heaps_present"] == 64 * chunks_n and s["chunk_slots_missing"] == 0
    sc.assert_pool_free(stream)


def steady_state_growth(per_chunk=None, warmup: int = 300, measured: int = 3000) -> int:
    """Traced memory growth over `measured` chunks of an endless W2 stream."""
    stream = _spead.ChunkStream(timestamp_step=1024, heap_bytes=1024, max_chunks=4, pool=8)
    gen = stream.chunks(_spead.SimReader("W2", heaps=0))

    def run(n: int) -> None:
        for _ in range(n):
            chunk = next(gen)
            if per_chunk is not None:
                per_chunk(chunk)
            chunk.release()

    run(warmup)
    tracemalloc.start()
    try:
        run(50)
        before = tracemalloc.get_traced_memory()[0]
        run(measured)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gen.close()
        stream.finish()
        while (c := stream.get(0)) is not None:
            c.release()
    s = stream.stats()
    assert s["chunk_heaps_no_free_chunk"] == 0 and s["chunks_completed"] >= warmup + measured
    return after - before


def test_steady_state_allocates_nothing():
    assert steady_state_growth() < 64 * 1024


def test_steady_state_check_catches_a_leak():
    """The measurement above does see a numpy array leaked per chunk."""
    leaked = []
    growth = steady_state_growth(lambda c: leaked.append(c.present.copy()))
    assert growth > 64 * 1024
