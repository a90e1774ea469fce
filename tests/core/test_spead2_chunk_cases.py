"""spead2 4.5.1's chunk-stream receive tests, case by case, against daqd's chunk mode.

Covers tests/test_recv_chunk_stream.py and tests/test_recv_chunk_stream_group.py
of spead2 4.5.1 (heap-mode cases: tests/core/test_spead2_recv_cases.py).  spead2's
tests place heaps with numba callbacks: position item 0x1000 -> chunk
position // 10, slot position % 10, 1024-byte heaps.  Here daqd's declarative
layout does the same (timestamp_item 0x1000, timestamp_step 1, 10 heaps per
chunk), and spead2 runs the same layout (``_spead2compat.Spead2Placement``) on the
same packets (tests/spead2_chunks.py compares chunk for chunk, around the
documented differences listed there).  Layouts a declarative rule cannot
express (a chunk-id bias from user data) use a placement hook written with
ctypes, for daqd (daqd_place.h) and for spead2 (chunk_place_data) alike.

spead2 case (class.test)                          where it is covered
------------------------------------------------  -------------------------------------------------
test_recv_chunk_stream.py
TestChunkStreamConfig.test_default_construct      test_chunk_stream_config_default_construct;
                                                  test_default_max_chunks[stream] (documented)
TestChunkStreamConfig.test_zero_max_chunks        test_chunk_stream_config_zero_max_chunks
TestChunkStreamConfig.test_set_place_none         test_set_place_none
TestChunkStreamConfig.test_set_place_empty_tuple  test_set_place_rejected[empty_tuple]
TestChunkStreamConfig.test_set_place_non_tuple    test_set_place_rejected[non_tuple]
TestChunkStreamConfig.test_set_place_non_capsule  test_set_place_rejected[non_capsule]
TestChunkStreamConfig.test_set_place_bad_signature
                                                  existing: test_place_hook.py::
                                                  test_place_must_be_a_daqd_capsule
TestChunkStreamConfig.test_set_place_plain        test_set_place_plain
TestChunkStreamConfig.test_set_place_bind         test_set_place_bind
TestChunk.test_default_construct                  n/a: daqd's chunks belong to the pool (no
TestChunk.test_set_properties                     constructor, no settable buffers)
TestChunkRingbuffer.test_missing_buffers          n/a: no user-built chunks to put in a ring
TestChunkRingbuffer.test_qsize                    n/a: the rings are internal (their sizes:
                                                  data_ring_size, free_ring_size, pool_counts(),
                                                  checked throughout test_chunk_placement.py)
TestChunkRingbuffer.test_stop                     existing: test_chunk_placement.py::
                                                  test_get_times_out_and_ends (after the end the
                                                  remaining chunks, then None)
TestChunkRingbuffer.test_round_trip               n/a: reference counts of user chunk objects
TestChunkRingbuffer.test_get_nowait               existing: test_chunk_placement.py::
                                                  test_get_times_out_and_ends (get(0) raises)
TestChunkRingbuffer.test_put_nowait               n/a: consumers never put; release() (test_chunk_
                                                  placement.py::test_release_twice_raises)
TestChunkRingbuffer.test_iterate                  existing: test_chunk_placement.py::
                                                  test_when_full_wait_consumer_releases_late
TestChunkRingbuffer.test_block                    existing: test_chunk_placement.py::
                                                  test_consumer_thread_with_process_thread
TestChunkRingbuffer.test_add_remove_producer      existing: test_chunk_group.py (the group ends
                                                  when its last stream finishes:
                                                  test_two_streams_fill_the_same_chunks,
                                                  test_stream_cannot_join_an_ended_group)
TestChunkRingStream.test_cleanup                  test_cleanup[send_end, no_end]
TestChunkRingStream.test_basic                    test_basic[plain, extra]
TestChunkRingStream.test_out_of_order             test_out_of_order[spead2_case] (documented
                                                  difference: window starts at the first heap's
                                                  chunk), test_out_of_order[first_heap_chunk_0]
TestChunkRingStream.test_jump                     test_jump
TestChunkRingStream.test_heap_too_old             test_heap_too_old
TestChunkRingStream.test_extra                    test_basic[extra] (same packets and placement)
TestChunkRingStream.test_shared_ringbuffer        n/a: each daqd group has its own pool and data
                                                  ring, and chunks carry no stream_id
TestChunkRingStream.test_missing_place_callback   n/a: the declarative layout has defaults; there
                                                  is no stream without a placement
TestChunkRingStream.test_packet_too_old           existing: test_chunk_placement.py::
                                                  test_heaps_completing_after_their_chunk_left
TestChunkRingStream.test_packet_presence          existing: test_chunk_placement.py::
                                                  test_packet_presence_with_lost_packets[True]
test_recv_chunk_stream_group.py
TestChunkStreamGroupConfig.test_default_construct test_group_config_default_construct
                                                  (documented: eviction defaults to lossless);
                                                  test_default_max_chunks[group] (documented)
TestChunkStreamGroupConfig.test_zero_max_chunks   test_group_config_zero_max_chunks
TestChunkStreamGroupConfig.test_max_chunks        test_group_config_max_chunks
TestChunkStreamGroupConfig.test_eviction_mode     test_group_config_eviction_mode
TestChunkStreamRingGroupSequence.* (12 cases: test_len, test_getitem_simple,
    test_getitem_wrap, test_getitem_bad, test_getitem_slice, test_getitem_slice_gc,
    test_iter, test_reversed, test_contains, test_count, test_index, test_registered)
                                                  n/a: ChunkGroup is not a sequence of its
                                                  streams (add_stream() returns each stream)
TestChunkStreamRingGroup.test_full_in_order       test_group_case[full_in_order-*]; its streams
                                                  also wait for free chunks (4 in all):
                                                  test_group_case_pool_of_4[*],
                                                  test_streams_waiting_for_a_free_chunk (spead2
                                                  side: ..._spead2), test_chunk_group_stress.py
TestChunkStreamRingGroup.test_missing_stream      test_group_case[missing_stream-*]
TestChunkStreamRingGroup.test_half_missing_stream test_group_case[half_missing_stream-*];
                                                  minimal: test_lossy_eviction_does_not_wait_for_
                                                  an_idle_stream (spead2 side:
                                                  test_lossy_idle_stream_spead2)
TestChunkStreamRingGroup.test_missing_chunks      test_group_case[missing_chunks-*]; minimal:
                                                  test_lossless_jump_by_every_stream (spead2
                                                  side: test_lossless_jump_by_every_stream_spead2)
TestChunkStreamRingGroup.test_lossless_late_stream
                                                  existing: test_chunk_group.py::
                                                  test_lossless_waits_for_the_slow_stream
TestChunkStreamRingGroup.test_large_chunk_ids     test_large_chunk_ids (run in a subprocess: it
                                                  used to hang), test_chunk_ids_near_int64_max;
                                                  spead2 side: test_large_chunk_ids_spead2
                                                  (one stream, a hook adding the bias: daqd's
                                                  declarative chunk ids stay below 2**56)
TestChunkStreamRingGroup.test_unblock_stop        test_unblock_stop[lossy, lossless]
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spead2_chunks as sc
import spead2_helpers as h
from spead_packets import heap_packets, inproc_queue

from daqd import _spead

HEAP_PAYLOAD_SIZE = 1024
HEAPS_PER_CHUNK = 10
POSITION_ID, PAYLOAD_ID, EXTRA_ID = 0x1000, 0x1001, 0x1002
LAYOUT = {"timestamp_item": POSITION_ID, "timestamp_step": 1,
          "heaps_per_chunk": HEAPS_PER_CHUNK, "heap_bytes": HEAP_PAYLOAD_SIZE}
# spead2's fixture: max_heaps 128 ("artificially high"), 4 chunks
STREAM = {"max_chunks": 4, "max_heaps": 128}


def heap_payload(position: int) -> bytes:
    """spead2's make_heap_payload: 16-bit pairs (position, index)."""
    words = np.zeros(HEAP_PAYLOAD_SIZE // 2, np.uint16)
    words[0::2] = position
    words[1::2] = np.arange(HEAP_PAYLOAD_SIZE // 4)
    return words.tobytes()


def sender_packets(positions, *, end: bool = True) -> list[bytes]:
    """spead2's send_heaps: a descriptor heap, one heap per position, a stop heap.

    Sent by spead2's own sender (default StreamConfig), so every heap is one packet.
    """
    ig = spead2.send.ItemGroup()
    ig.add_item(POSITION_ID, "position", "position in stream", (), format=[("u", 32)])
    ig.add_item(PAYLOAD_ID, "payload", "payload data", (HEAP_PAYLOAD_SIZE,), dtype=np.uint8)
    ig.add_item(EXTRA_ID, "extra", "extra data to capture", (), format=[("u", 32)])
    heaps = [ig.get_heap(descriptors="all", data="none")]
    for i in positions:
        ig["position"].value = i
        ig["payload"].value = np.frombuffer(heap_payload(i), np.uint8)
        ig["extra"].value = i ^ 0xBEEF
        heaps.append(ig.get_heap(descriptors="none", data="all"))
    if end:
        heaps.append(ig.get_end())
    return h.split_packets(h.spead2_stream_bytes(heaps))


def present_of(chunks) -> list[tuple[int, list[int]]]:
    return [(c["chunk_id"], c["present"].reshape(-1).tolist()) for c in chunks]


def check_payloads(chunks) -> None:
    """Every present slot holds its position's payload (spead2's check_chunk)."""
    for c in chunks:
        for slot in np.flatnonzero(c["present"].reshape(-1)):
            position = c["chunk_id"] * HEAPS_PER_CHUNK + int(slot)
            assert c["data"][slot, 0].tobytes() == heap_payload(position)


# --------------------------------------------------------------------------
# A placement hook written with ctypes: chunk = bias + position // 10 (spead2's
# place_bias), for daqd (daqd_place.h) and for spead2 (chunk_place_data).
# Both receivers call it without the GIL; a ctypes callback takes the GIL itself.


class DaqdPlaceData(ctypes.Structure):
    _fields_ = [("packet", ctypes.c_void_p), ("packet_size", ctypes.c_size_t),
                ("items", ctypes.POINTER(ctypes.c_int64)), ("n_items", ctypes.c_size_t),
                ("heap_length", ctypes.c_int64), ("chunk_id", ctypes.c_int64),
                ("heap_index", ctypes.c_size_t), ("heap_offset", ctypes.c_size_t),
                ("extra", ctypes.POINTER(ctypes.c_uint64)), ("n_extra", ctypes.c_size_t)]


class Spead2PlaceData(ctypes.Structure):
    _fields_ = [("packet", ctypes.c_void_p), ("packet_size", ctypes.c_size_t),
                ("items", ctypes.POINTER(ctypes.c_int64)), ("chunk_id", ctypes.c_int64),
                ("heap_index", ctypes.c_size_t), ("heap_offset", ctypes.c_size_t),
                ("batch_stats", ctypes.c_void_p), ("extra", ctypes.c_void_p),
                ("extra_offset", ctypes.c_size_t), ("extra_size", ctypes.c_size_t)]


def _place(d, length: int, position: int, bias: int) -> None:
    if length == HEAP_PAYLOAD_SIZE and position >= 0:
        d.chunk_id = bias + position // HEAPS_PER_CHUNK
        d.heap_index = position % HEAPS_PER_CHUNK
        d.heap_offset = d.heap_index * HEAP_PAYLOAD_SIZE


@ctypes.CFUNCTYPE(None, ctypes.POINTER(DaqdPlaceData), ctypes.c_void_p)
def daqd_place_plain(data, user):
    d = data.contents                          # place_items: [position]; no user data
    _place(d, d.heap_length, d.items[0], 0)


@ctypes.CFUNCTYPE(None, ctypes.POINTER(DaqdPlaceData), ctypes.POINTER(ctypes.c_int64))
def daqd_place_bias(data, user):
    d = data.contents                          # place_items: [position]
    _place(d, d.heap_length, d.items[0], user[0])


@ctypes.CFUNCTYPE(None, ctypes.POINTER(Spead2PlaceData), ctypes.c_size_t,
                  ctypes.POINTER(ctypes.c_int64))
def spead2_place_bias(data, size, user):
    d = data.contents                          # items: [HEAP_LENGTH, position]
    _place(d, d.items[0], d.items[1], user[0])


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_set_context = ctypes.pythonapi.PyCapsule_SetContext
_capsule_set_context.argtypes = [ctypes.py_object, ctypes.c_void_p]
DAQD_CAPSULE = ctypes.create_string_buffer(b"daqd.place_v1")
SPEAD2_CAPSULE = ctypes.create_string_buffer(b"void (void *, size_t, void *)")


def place_tuple(fn, name, bias: int) -> tuple:
    """(capsule, keep-alives): the function, user data = the bias (an int64)."""
    user = np.array([bias], np.int64)
    capsule = _capsule_new(ctypes.cast(fn, ctypes.c_void_p), name, None)
    _capsule_set_context(capsule, user.ctypes.data)
    return (capsule, fn, user)


def hook_packets(n_heaps: int) -> list[bytes]:
    return [p for i in range(n_heaps)
            for p in heap_packets(i + 1, [(POSITION_ID, i), (PAYLOAD_ID, heap_payload(i))],
                                  packet_payload=HEAP_PAYLOAD_SIZE)]


def spead2_hook_chunks(bias: int, n_heaps: int) -> list[tuple[int, int]]:
    """(chunk_id, heaps present) of spead2's chunks, placed by the ctypes hook."""
    data_ring, free_ring = spead2.recv.ChunkRingbuffer(4), spead2.recv.ChunkRingbuffer(4)
    stream = spead2.recv.ChunkRingStream(
        h.THREAD_POOL, spead2.recv.StreamConfig(max_heaps=128),
        spead2.recv.ChunkStreamConfig(items=[spead2.HEAP_LENGTH_ID, POSITION_ID], max_chunks=4,
                                      place=place_tuple(spead2_place_bias, SPEAD2_CAPSULE,
                                                        bias)),
        data_ring, free_ring)
    for _ in range(4):
        stream.add_free_chunk(spead2.recv.Chunk(
            present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
            data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8)))
    stream.add_inproc_reader(inproc_queue(spead2, hook_packets(n_heaps)))
    out = []
    for chunk in data_ring:
        present = np.asarray(chunk.present)
        data = np.asarray(chunk.data).reshape(HEAPS_PER_CHUNK, HEAP_PAYLOAD_SIZE)
        for slot in np.flatnonzero(present):
            position = (chunk.chunk_id - bias) * HEAPS_PER_CHUNK + int(slot)
            assert data[slot].tobytes() == heap_payload(position)
        out.append((int(chunk.chunk_id), int(present.sum())))
        present[:] = 0
        stream.add_free_chunk(chunk)
    stream.stop()
    return out


def daqd_hook_chunks(bias: int, n_heaps: int) -> list[tuple[int, int]]:
    """The same with daqd's ChunkStream and the daqd version of the hook."""
    stream = _spead.ChunkStream(**LAYOUT, place=place_tuple(daqd_place_bias, DAQD_CAPSULE, bias),
                                place_items=[POSITION_ID], max_chunks=4, max_heaps=128, pool=16,
                                when_full="drop", too_old_reset=0)
    packets = hook_packets(n_heaps)
    out = []

    def take(chunk) -> None:
        with chunk:
            for slot in np.flatnonzero(chunk.present.reshape(-1)):
                position = (chunk.chunk_id - bias) * HEAPS_PER_CHUNK + int(slot)
                assert chunk.data[slot, 0].tobytes() == heap_payload(position)
            out.append((int(chunk.chunk_id), int(chunk.present.sum())))

    for start in range(0, len(packets), HEAPS_PER_CHUNK):
        stream.add_packets(packets[start:start + HEAPS_PER_CHUNK])
        while stream.data_ring_size:
            take(stream.get(0))
    stream.finish()
    while (chunk := stream.get(0)) is not None:
        take(chunk)
    assert stream.stats()["chunk_heaps_no_free_chunk"] == 0
    return out


def assert_hook_chunks_match(daqd: list[tuple[int, int]], ref: list[tuple[int, int]]) -> None:
    """Equal from daqd's first chunk on; spead2's chunks before it must be empty (difference 1)."""
    assert daqd, "daqd delivered nothing"
    first = daqd[0][0]
    assert all(n == 0 for cid, n in ref if cid < first)
    assert daqd == [(cid, n) for cid, n in ref if cid >= first]


# --------------------------------------------------------------------------
# TestChunkStreamConfig


def test_chunk_stream_config_default_construct():
    """No hook by default (the declarative layout) and no packet presence, as spead2."""
    ref = spead2.recv.ChunkStreamConfig()
    assert ref.place is None and ref.packet_presence_payload_size == 0
    stream = _spead.ChunkStream(pool=4)
    assert stream.group.packet_presence == 0
    assert stream.group.timestamp_item == 0x1600          # the declarative layout's default


@pytest.mark.parametrize("kind", ["stream", "group"])
def test_default_max_chunks(kind):
    """Documented difference (README): daqd's default is INTERFACES.md's 4, spead2's 2."""
    if kind == "stream":
        assert _spead.ChunkStream(pool=4).group.max_chunks == 4
        assert spead2.recv.ChunkStreamConfig.DEFAULT_MAX_CHUNKS == 2
    else:
        assert _spead.ChunkGroup(pool=4).max_chunks == 4
        assert spead2.recv.ChunkStreamGroupConfig.DEFAULT_MAX_CHUNKS == 2


def test_chunk_stream_config_zero_max_chunks():
    with pytest.raises(ValueError):
        spead2.recv.ChunkStreamConfig().max_chunks = 0
    with pytest.raises(ValueError):
        _spead.ChunkStream(max_chunks=0)


def test_set_place_none():
    """place=None is the declarative layout: heaps are placed by their timestamp."""
    assert spead2.recv.ChunkStreamConfig(place=None).place is None
    got, _ = sc.daqd_chunk_receive(sender_packets(range(HEAPS_PER_CHUNK)), place=None, **LAYOUT)
    assert present_of(got) == [(0, [1] * HEAPS_PER_CHUNK)]


@pytest.mark.parametrize("place, spead2_error", [((), IndexError), (1, TypeError),
                                                 ((1,), TypeError)],
                         ids=["empty_tuple", "non_tuple", "non_capsule"])
def test_set_place_rejected(place, spead2_error):
    """Refused at construction.  (For the empty tuple spead2 raises IndexError, daqd its
    TypeError naming the capsule it wants: an API detail, not receive behaviour.)"""
    with pytest.raises(spead2_error):
        spead2.recv.ChunkStreamConfig(place=place)
    with pytest.raises(TypeError, match="daqd.place_v1"):
        _spead.ChunkStream(place=place)


def test_set_place_plain():
    """A bare capsule, no user data (its context is NULL)."""
    capsule = _capsule_new(ctypes.cast(daqd_place_plain, ctypes.c_void_p), DAQD_CAPSULE, None)
    stream = _spead.ChunkStream(**LAYOUT, place=capsule, place_items=[POSITION_ID], pool=4)
    stream.add_packets(hook_packets(HEAPS_PER_CHUNK + 1))
    stream.finish()
    got = []
    while (chunk := stream.get(0)) is not None:
        with chunk:
            got.append((chunk.chunk_id, chunk.present.reshape(-1).tolist()))
    assert got == [(0, [1] * HEAPS_PER_CHUNK), (1, [1] + [0] * (HEAPS_PER_CHUNK - 1))]


def test_set_place_bind():
    """A (capsule, keep-alives) tuple with user data: the same chunks as spead2's."""
    bias = 3
    ref = spead2_hook_chunks(bias, 5 * HEAPS_PER_CHUNK + 3)
    got = daqd_hook_chunks(bias, 5 * HEAPS_PER_CHUNK + 3)
    assert got == [(bias + i, HEAPS_PER_CHUNK) for i in range(5)] + [(bias + 5, 3)]
    assert_hook_chunks_match(got, ref)


# --------------------------------------------------------------------------
# TestChunkRingStream


@pytest.mark.parametrize("send_end", [True, False], ids=["send_end", "no_end"])
def test_cleanup(send_end):
    """1000 heaps and nobody takes a chunk: the stream and its pool go away cleanly."""
    stream = _spead.ChunkStream(**LAYOUT, **STREAM, pool=6, when_full="drop")
    stream.add_packets(sender_packets(range(1000), end=send_end))
    stats = stream.stats()
    assert stats["chunk_heaps_no_free_chunk"] > 0
    assert stream.stopped is send_end
    counts = stream.pool_counts()
    assert counts["free"] == 0 and sum(counts.values()) == 6
    del stream
    gc.collect()


@pytest.mark.parametrize("extra", [False, True], ids=["plain", "extra"])
def test_basic(extra):
    """103 heaps in order: chunks 0..10, the last one with 3 heaps.  With `extra`, the
    extra item 0x1002 of each heap lands in ``extra`` (spead2's place_extra/test_extra)."""
    kw = {"extra_items": (EXTRA_ID,)} if extra else {}
    got, dq, s2 = sc.compare(sender_packets(range(103)), **LAYOUT, **STREAM, **kw)
    assert [c["chunk_id"] for c in got] == list(range(11))
    assert all(c["present"].all() for c in got[:-1])
    assert got[-1]["present"].reshape(-1).tolist() == [1, 1, 1] + [0] * 7
    check_payloads(got)
    # the descriptor heap and the stop heap are not placed
    assert s2["rejected_heaps"] == 2
    if extra:
        extras = np.concatenate([c["extra"] for c in got])[:103, 0, 0]
        np.testing.assert_array_equal(extras, np.arange(103) ^ 0xBEEF)


@pytest.mark.parametrize("first", [37, 7], ids=["spead2_case", "first_heap_chunk_0"])
def test_out_of_order(first):
    """Heaps 7, 17, ..., 87 in a scrambled order, within the window of 4 chunks.

    spead2's own order starts with heap 37: spead2's window starts at chunk 0,
    daqd's at chunk 3, the first heap's (README: deliberate difference), so the
    later heaps 7, 27 and 17 of chunks 0..2 are too old for daqd only.  Started
    from chunk 0 (heap 7 first) the two agree exactly.
    """
    positions = [37, 7, 27, 47, 17, 87, 57, 77, 67]
    positions.remove(first)
    positions.insert(0, first)
    packets = sender_packets(positions)
    slot7 = [0] * 7 + [1, 0, 0]
    if first == 7:
        got, dq, s2 = sc.compare(packets, **LAYOUT, **STREAM)
        assert present_of(got) == [(i, slot7) for i in range(9)]
        return
    ref, s2 = sc.spead2_chunk_receive(packets, **LAYOUT, **STREAM)
    got, dq = sc.daqd_chunk_receive(packets, **LAYOUT, **STREAM)
    assert present_of(ref) == [(i, slot7) for i in range(9)]
    assert present_of(got) == [(i, slot7) for i in range(3, 9)]
    assert s2["too_old_heaps"] == 0
    assert dq["chunk_heaps_too_old"] == 3
    sc.assert_chunks_match(got, [c for c in ref if c["chunk_id"] >= 3])
    check_payloads(got)


def test_jump():
    """Heaps 100 and 200: spead2 gives chunks 7, 8, 9, 10, 17, 18, 19, 20; daqd starts at 10."""
    got, dq, s2 = sc.compare(sender_packets([100, 200]), **LAYOUT, **STREAM)
    assert [c["chunk_id"] for c in got] == [10, 17, 18, 19, 20]
    assert [int(c["present"].sum()) for c in got] == [1, 0, 0, 0, 1]
    check_payloads(got)


def test_heap_too_old():
    """Heaps 10..40, then 0 (just too late), then 41..49."""
    positions = list(range(10, 41)) + [0] + list(range(41, 50))
    got, dq, s2 = sc.compare(sender_packets(positions), **LAYOUT, **STREAM)
    assert [c["chunk_id"] for c in got] == [1, 2, 3, 4]
    assert all(c["present"].all() for c in got)
    assert dq["chunk_heaps_too_old"] == s2["too_old_heaps"] == 1
    assert s2["rejected_heaps"] == 2          # descriptors and stop heap
    check_payloads(got)


# --------------------------------------------------------------------------
# TestChunkStreamGroupConfig


def test_group_config_default_construct():
    """Documented difference (README, stream.chunk.eviction): daqd defaults to lossless."""
    ref = spead2.recv.ChunkStreamGroupConfig()
    assert ref.eviction_mode == spead2.recv.ChunkStreamGroupConfig.EvictionMode.LOSSY
    assert _spead.ChunkGroup(pool=4).lossless is True


def test_group_config_zero_max_chunks():
    with pytest.raises(ValueError):
        spead2.recv.ChunkStreamGroupConfig(max_chunks=0)
    with pytest.raises(ValueError):
        _spead.ChunkGroup(max_chunks=0)


def test_group_config_max_chunks():
    assert spead2.recv.ChunkStreamGroupConfig(max_chunks=3).max_chunks == 3
    group = _spead.ChunkGroup(max_chunks=3, pool=4)
    assert group.max_chunks == 3
    with pytest.raises(AttributeError):
        group.max_chunks = 4


def test_group_config_eviction_mode():
    mode = spead2.recv.ChunkStreamGroupConfig.EvictionMode
    assert spead2.recv.ChunkStreamGroupConfig(eviction_mode=mode.LOSSLESS).eviction_mode \
        == mode.LOSSLESS
    assert _spead.ChunkGroup(eviction="lossless", pool=4).lossless is True
    assert _spead.ChunkGroup(eviction="lossy", pool=4).lossless is False


# --------------------------------------------------------------------------
# TestChunkStreamRingGroup: 4 streams, heap i to stream i % 4

STREAMS = 4
GROUP_CHUNKS = 20
GROUP_SCENARIOS = {
    "full_in_order": lambda i: True,
    "missing_stream": lambda i: i % STREAMS != 2,
    "half_missing_stream": lambda i: i < 7 * HEAPS_PER_CHUNK or i % STREAMS != 2,
    "missing_chunks": lambda i: i // HEAPS_PER_CHUNK not in (1, 6, 7, 13, 14, 15, 16, 17, 18),
}


def group_packets(scenario: str) -> list[list[bytes]]:
    """Each stream's packets: heap i (random payload, seeded) to stream i % 4."""
    data = np.random.default_rng(1).integers(
        0, 256, (GROUP_CHUNKS * HEAPS_PER_CHUNK, HEAP_PAYLOAD_SIZE), np.uint8)
    keep = GROUP_SCENARIOS[scenario]
    per: list[list[bytes]] = [[] for _ in range(STREAMS)]
    for i in range(GROUP_CHUNKS * HEAPS_PER_CHUNK):
        if keep(i):
            per[i % STREAMS] += heap_packets(i + 1, [(POSITION_ID, i),
                                                     (PAYLOAD_ID, data[i].tobytes())],
                                             packet_payload=HEAP_PAYLOAD_SIZE)
    return per


def spead2_group_chunks(per_stream: list[list[bytes]], layout: dict = LAYOUT,
                        max_chunks: int = 4) -> tuple[list[tuple[int, list, bytes]], int]:
    """spead2's lossless group (deterministic): non-empty chunks (id, present, data), and
    its too-old heaps."""
    group, members = h.spead2_chunk_group(layout, streams=len(per_stream), max_chunks=max_chunks,
                                            chunks=4, max_heaps=128)
    for member, packets in zip(members, per_stream, strict=True):
        member.add_inproc_reader(inproc_queue(spead2, packets))
    out = []
    for chunk in group.data_ringbuffer:
        present = np.asarray(chunk.present)
        data = np.asarray(chunk.data).reshape(layout["heaps_per_chunk"], layout["heap_bytes"])
        if present.any():
            out.append((int(chunk.chunk_id), present.tolist(),
                        (data * present[:, None]).tobytes()))
        present[:] = 0
        group.add_free_chunk(chunk)
    group.stop()
    return out, sum(m.stats["too_old_heaps"] for m in members)


def daqd_group_chunks(per_stream: list[list[bytes]], eviction: str, pool: int = 0
                      ) -> tuple[list[tuple[int, list, bytes]], list[int]]:
    """daqd's group: non-empty chunks (id, present, data), and every chunk id delivered.

    Lossless: one thread per stream, each given all its packets (as spead2's
    readers are), and a consumer thread.  Lossy: one thread feeding the streams
    heap by heap in order and taking each chunk as soon as it is ready, the
    deterministic form of spead2's slow feeding in its lossy runs, with a pool of 8
    (spead2's test has 4 chunks in all).  With `pool`, a pool of that size and
    when_full="wait" (the streams wait for the consumer, as spead2's do).
    """
    lossless = eviction == "lossless"
    # Lossless: a pool larger than every chunk id the run can deliver, so that no stream ever
    # waits for a free chunk (test_group_case_pool_of_4 is the same with waits).
    group = _spead.ChunkGroup(**LAYOUT, max_chunks=4, pool=pool or (32 if lossless else 8),
                              eviction=eviction, when_full="wait" if pool else "drop",
                              wait_timeout=30.0)
    streams = [group.add_stream(max_heaps=128) for _ in per_stream]
    out: list[tuple[int, list, bytes]] = []
    ids: list[int] = []

    def take(chunk) -> None:
        with chunk:
            ids.append(int(chunk.chunk_id))
            present = chunk.present.reshape(-1)
            if present.any():
                out.append((int(chunk.chunk_id), present.tolist(), chunk.data.tobytes()))

    if lossless:
        def consume() -> None:
            for chunk in group:
                take(chunk)

        def feed(stream, packets) -> None:
            stream.add_packets(packets)
            stream.finish()

        threads = [threading.Thread(target=consume)] + [
            threading.Thread(target=feed, args=pair)
            for pair in zip(streams, per_stream, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        return out, ids
    heads = [0] * len(per_stream)
    while any(heads[k] < len(p) for k, p in enumerate(per_stream)):
        # the stream whose next packet has the lowest HEAP_CNT (bytes 10..16)
        k = min((k for k, p in enumerate(per_stream) if heads[k] < len(p)),
                key=lambda k: int.from_bytes(per_stream[k][heads[k]][10:16], "big"))
        streams[k].add_packets([per_stream[k][heads[k]]])
        heads[k] += 1
        while group.data_ring_size:
            take(group.get(0))
    for stream in streams:
        stream.finish()
    while (chunk := group.get(0)) is not None:
        take(chunk)
    return out, ids


@pytest.mark.parametrize("eviction", ["lossy", "lossless"])
@pytest.mark.parametrize("scenario", list(GROUP_SCENARIOS))
def test_group_case(scenario, eviction):
    per_stream = group_packets(scenario)
    expected, too_old = spead2_group_chunks(per_stream)
    assert too_old == 0
    kept = [i for i in range(GROUP_CHUNKS * HEAPS_PER_CHUNK) if GROUP_SCENARIOS[scenario](i)]
    assert sum(sum(p) for _, p, _ in expected) == len(kept)       # spead2: every heap
    got, ids = daqd_group_chunks(per_stream, eviction)
    assert ids == sorted(set(ids)), f"chunk ids delivered out of order or twice: {ids}"
    assert [(c, p) for c, p, _ in got] == [(c, p) for c, p, _ in expected]
    assert [d for _, _, d in got] == [d for _, _, d in expected]


@pytest.mark.parametrize("scenario", list(GROUP_SCENARIOS))
def test_group_case_pool_of_4(scenario):
    """spead2's own condition: 4 chunks in all (max_chunks 4), so the streams of the
    lossless group wait for the consumer to give chunks back; still every heap."""
    per_stream = group_packets(scenario)
    expected, _ = spead2_group_chunks(per_stream)
    got, ids = daqd_group_chunks(per_stream, "lossless", pool=4)
    assert ids == sorted(set(ids)), f"chunk ids delivered out of order or twice: {ids}"
    assert [(c, p) for c, p, _ in got] == [(c, p) for c, p, _ in expected]
    assert [d for _, _, d in got] == [d for _, _, d in expected]


# Minimal reproductions of the two group discrepancies (64-byte heaps, 2 per chunk)

SMALL = {"timestamp_item": POSITION_ID, "timestamp_step": 1, "heaps_per_chunk": 2,
         "heap_bytes": 64}


def small_heap(cnt: int, position: int) -> list[bytes]:
    return heap_packets(cnt, [(POSITION_ID, position), (PAYLOAD_ID, bytes([cnt]) * 64)],
                        packet_payload=64)


JUMP_FEEDS = [(small_heap(1, 0), small_heap(3, 10)), (small_heap(2, 1), small_heap(4, 11))]


def test_lossless_jump_by_every_stream_spead2():
    """The reference for the next test: spead2 4.5.1, the same packets, a lossless group."""
    expected, too_old = spead2_group_chunks([first + second for first, second in JUMP_FEEDS],
                                            SMALL, max_chunks=2)
    assert [(cid, p) for cid, p, _ in expected] == [(0, [1, 1]), (5, [1, 1])]
    assert too_old == 0


def test_lossless_jump_by_every_stream():
    """2 streams, lossless, max_chunks 2: each places a heap in chunk 0, then in chunk 5.

    Packets: stream 0 gets heap 1 (position 0) then heap 3 (position 10); stream 1
    heap 2 (position 1) then heap 4 (position 11).  spead2 4.5.1 (same packets,
    lossless group, test_lossless_jump_by_every_stream_spead2): chunk 0 [1, 1],
    chunk 4 [0, 0] (padding), chunk 5 [1, 1].  (daqd used to restart the window once
    per jumping stream: 0 [1, 1], 4 [0, 0], 5 [0, 1], 4 [0, 0], 5 [0, 0], a heap too old.)
    """
    feeds = JUMP_FEEDS
    group = _spead.ChunkGroup(**SMALL, max_chunks=2, pool=16, eviction="lossless")
    streams = [group.add_stream(), group.add_stream()]
    both_in_chunk_0 = threading.Barrier(2)
    got = []

    def consume() -> None:
        for chunk in group:
            with chunk:
                got.append((int(chunk.chunk_id), chunk.present.reshape(-1).tolist()))

    def feed(stream, first, second) -> None:
        stream.add_packets(first)
        both_in_chunk_0.wait(10)
        stream.add_packets(second)
        stream.finish()

    threads = [threading.Thread(target=consume)] + [
        threading.Thread(target=feed, args=(s, *f)) for s, f in zip(streams, feeds, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert group.stats()["chunk_heaps_too_old"] == 0
    assert [g for g in got if any(g[1])] == [(0, [1, 1]), (5, [1, 1])]
    assert [cid for cid, _ in got] == sorted({cid for cid, _ in got})


IDLE_BUSY_PACKETS = [p for i in range(0, 20, 2) for p in small_heap(i + 1, i)]


def test_lossy_idle_stream_spead2():
    """The reference for the next test: spead2 4.5.1's lossy group, stream 1's queue open."""
    group, (idle, busy) = h.spead2_chunk_group(SMALL, streams=2, max_chunks=2, chunks=16,
                                               lossless=False, max_heaps=128)
    queues = [spead2.InprocQueue(), spead2.InprocQueue()]
    idle.add_inproc_reader(queues[0])
    busy.add_inproc_reader(queues[1])
    idle_packets = small_heap(100, 1)
    for p in idle_packets:
        queues[0].add_packet(p)
    until_taken(idle, len(idle_packets))        # stream 1's heap placed before stream 0's
    for p in IDLE_BUSY_PACKETS:
        queues[1].add_packet(p)
    ready = []
    deadline = time.monotonic() + 5
    while len(ready) < 8 and time.monotonic() < deadline:
        try:
            chunk = group.data_ringbuffer.get_nowait()
        except spead2.Empty:
            time.sleep(0.01)
            continue
        ready.append(int(chunk.chunk_id))
        np.asarray(chunk.present)[:] = 0
        group.add_free_chunk(chunk)
    for q in queues:
        q.stop()
    group.stop()
    assert ready == list(range(8))               # while stream 1 is idle


def test_lossy_eviction_does_not_wait_for_an_idle_stream():
    """2 streams, lossy, max_chunks 2: stream 1 places one heap in chunk 0, then is idle.

    Stream 0 then fills slot 0 of chunks 0..9.  spead2 4.5.1 (same packets,
    stream 1's queue left open, test_lossy_idle_stream_spead2): chunks 0..7 are
    ready while stream 1 is idle.  (daqd used to deliver none until stream 1 finished.)
    """
    group = _spead.ChunkGroup(**SMALL, max_chunks=2, pool=32, eviction="lossy")
    idle, busy = group.add_stream(), group.add_stream()
    idle.add_packets(small_heap(100, 1))
    busy.add_packets(IDLE_BUSY_PACKETS)
    ready = group.data_ring_size
    busy.finish()
    idle.finish()
    while (chunk := group.get(0)) is not None:
        chunk.release()
    assert ready == 8


# Streams waiting for a free chunk.  spead2's group tests run 4 streams on a free
# ring of 4 chunks, so its streams wait for the consumer to give chunks back.

def _free_chunk_race_feeds() -> tuple[list[bytes], ...]:
    """The packets of the free-chunk race: (a's first, b's first, a's second, b's second)."""
    return (small_heap(1, 0) + small_heap(2, 2), small_heap(11, 1) + small_heap(12, 3),
            small_heap(3, 4), small_heap(13, 5))


def test_streams_waiting_for_a_free_chunk_spead2():
    """The reference for the next test: spead2 4.5.1, the same packets, a lossy group
    with 2 chunks in all.  Its stream asking for chunk 2 waits for a free chunk (holding
    the group's lock); the other then finds chunk 2 open: every heap is placed."""
    a_first, b_first, a_second, b_second = _free_chunk_race_feeds()
    group, (a, b) = h.spead2_chunk_group(SMALL, streams=2, max_chunks=2, chunks=2,
                                         lossless=False, max_heaps=128)
    queues = [spead2.InprocQueue(), spead2.InprocQueue()]
    a.add_inproc_reader(queues[0])
    b.add_inproc_reader(queues[1])
    # Chunks 0 and 1 get both streams' heaps before either asks for chunk 2: each
    # first feed is taken (spead2's own packet count) before the next is queued.
    for stream, queue, packets in ((a, queues[0], a_first), (b, queues[1], b_first)):
        for p in packets:
            queue.add_packet(p)
        until_taken(stream, len(packets))
    for queue, packets in ((queues[0], a_second), (queues[1], b_second)):
        for p in packets:
            queue.add_packet(p)
    got = []

    def take(chunk) -> None:
        present = np.asarray(chunk.present)
        got.append((int(chunk.chunk_id), present.tolist()))
        present[:] = 0
        group.add_free_chunk(chunk)

    take(group.data_ringbuffer.get())           # chunk 0, once a stream asks for chunk 2
    for q in queues:                            # (a stop comes after the queued packets)
        q.stop()
    for chunk in group.data_ringbuffer:         # the rest, once both streams have ended
        take(chunk)
    group.stop()
    assert got == [(0, [1, 1]), (1, [1, 1]), (2, [1, 1])]


def _print_free_chunk_race() -> None:
    """Subprocess entry point: two streams waiting for one free chunk (JSON on stdout).

    Pool of 2, max_chunks 2, lossy, when_full='wait'.  Streams a and b each place a
    heap in chunks 0 and 1 (pool used up); then a (thread) places heap 3 in chunk 2 and
    waits for a free chunk; then b (thread) places heap 13 in chunk 2 and waits too;
    the consumer takes chunk 0 and gives it back; one stream opens chunk 2 with it, the
    other finds chunk 2 open (both wait well within wait_timeout).  daqd used to let the
    second waiter open a further chunk past the window (never delivered, heap lost), or
    under load crash or hang.
    """
    a_first, b_first, a_second, b_second = _free_chunk_race_feeds()
    group = _spead.ChunkGroup(**SMALL, max_chunks=2, pool=2, eviction="lossy",
                              when_full="wait", wait_timeout=5.0)
    a, b = group.add_stream(), group.add_stream()
    a.add_packets(a_first)
    b.add_packets(b_first)
    threads = [threading.Thread(target=a.add_packets, args=(a_second,)),
               threading.Thread(target=b.add_packets, args=(b_second,))]
    for waiting, t in enumerate(threads, start=1):
        t.start()
        until_waiting(group, waiting)            # a waits first, then b too
    got = []
    with group.get(5.0) as chunk:
        got.append((int(chunk.chunk_id), chunk.present.reshape(-1).tolist()))
    for t in threads:
        t.join(10)
    a.finish()
    b.finish()
    while (chunk := group.get(5.0)) is not None:
        with chunk:
            got.append((int(chunk.chunk_id), chunk.present.reshape(-1).tolist()))
    print(json.dumps({"chunks": got, "pool": group.pool_counts(), "stats": group.stats()}))


def test_streams_waiting_for_a_free_chunk():
    """As spead2 (test_streams_waiting_for_a_free_chunk_spead2): every heap placed."""
    result = run_in_subprocess("_print_free_chunk_race()", timeout=10.0)
    assert result is not None, "daqd hung"
    stats = result["stats"]
    assert stats["chunk_heaps_no_free_chunk"] == 0
    assert stats["worker_blocked"] == 2                        # a, then b, waited
    # every chunk back in the pool, and every placed heap in a delivered chunk
    assert result["pool"] == {"free": 2, "open": 0, "ready": 0, "held": 0}
    assert result["chunks"] == [[0, [1, 1]], [1, [1, 1]], [2, [1, 1]]]
    assert stats["chunk_heaps_present"] == 6


# Large chunk ids (spead2: the last chunk id is 2**63 - 1), through the ctypes hook


def _print_daqd_hook_chunks(bias: int, n_heaps: int) -> None:
    """Subprocess entry point: daqd_hook_chunks as JSON on stdout."""
    print(json.dumps(daqd_hook_chunks(bias, n_heaps)))


def until_taken(stream, packets: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until spead2 `stream` has taken `packets` packets (its own count)."""
    deadline = time.monotonic() + timeout
    while stream.stats["packets"] < packets:
        assert time.monotonic() < deadline, f"spead2 took {stream.stats['packets']} packets"
        time.sleep(0.001)


def until_waiting(group, streams: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until `streams` streams of `group` wait on it: threads ordered by
    the group's own state, not by sleeping."""
    deadline = time.monotonic() + timeout
    while group.waiting_streams < streams:
        assert time.monotonic() < deadline, \
            f"{group.waiting_streams} streams waiting after {timeout} s, not {streams}"
        time.sleep(0.001)


def run_in_subprocess(call: str, timeout: float):
    """`call` (one of this module's _print_* functions) in a child process, its JSON
    output decoded; None if it did not finish within `timeout` seconds.  A compiled
    loop cannot be interrupted, and a crash must not take pytest with it."""
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('cases', {__file__!r})\n"
            "m = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            f"m.{call}\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return None
    assert proc.returncode == 0, f"daqd crashed ({proc.returncode}): {proc.stderr.decode()}"
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("last", [2**63 - 1, 2**63 - 2])
def test_large_chunk_ids_spead2(last):
    """The reference for the next two tests: spead2 4.5.1 through the ctypes hook."""
    bias = last + 1 - GROUP_CHUNKS
    ref = spead2_hook_chunks(bias, GROUP_CHUNKS * HEAPS_PER_CHUNK)
    assert [x for x in ref if x[1]] == [(bias + i, HEAPS_PER_CHUNK) for i in range(GROUP_CHUNKS)]
    assert [cid for cid, _ in ref] == sorted(set(cid for cid, _ in ref))


def test_large_chunk_ids():
    """spead2's case: 20 chunks of 10 heaps, the last one chunk 2**63 - 1.

    daqd's window arithmetic used to overflow int64 here (`chunk_id >= tail_chunk +
    max_chunks` wrapped negative; `tail_chunk += 1` past INT64_MAX never ended): a hang.
    """
    bias = 2**63 - GROUP_CHUNKS
    ref = spead2_hook_chunks(bias, GROUP_CHUNKS * HEAPS_PER_CHUNK)
    got = run_in_subprocess(f"_print_daqd_hook_chunks({bias}, {GROUP_CHUNKS * HEAPS_PER_CHUNK})",
                            timeout=3.0)
    assert got is not None, "daqd did not finish (hung in its receive loop)"
    assert_hook_chunks_match([tuple(x) for x in got], ref)


def test_chunk_ids_near_int64_max():
    """The same with every chunk id one lower (last 2**63 - 2): daqd used to deliver
    chunks 2**63-7 .. 2**63-3 again, empty, between the full ones."""
    bias = 2**63 - GROUP_CHUNKS - 1
    ref = spead2_hook_chunks(bias, GROUP_CHUNKS * HEAPS_PER_CHUNK)
    got = daqd_hook_chunks(bias, GROUP_CHUNKS * HEAPS_PER_CHUNK)
    assert_hook_chunks_match(got, ref)


# Stopping a group that is stuck


@pytest.mark.parametrize("eviction", ["lossy", "lossless"])
def test_unblock_stop(eviction):
    """A stream blocked is freed by stop_waiting_for_chunks; the consumer's loop then
    ends, chunk ids consecutive.  Lossless: the busy stream waits for the idle one to
    move past chunk 0.  Lossy: a lossy group does not wait for an idle stream (test_lossy_
    eviction_does_not_wait_for_an_idle_stream), so the busy stream is blocked by a pool
    the consumer has not given back yet (the consumer starts after the stop)."""
    group = _spead.ChunkGroup(**SMALL, max_chunks=2, pool=4, eviction=eviction,
                              when_full="wait", wait_timeout=30.0)
    idle, busy = group.add_stream(), group.add_stream()
    idle.add_packets(small_heap(100, 1))                 # in chunk 0, never finishes
    ids = []
    consume_now = threading.Event()
    if eviction == "lossless":
        consume_now.set()

    def consume() -> None:
        consume_now.wait(10)
        for chunk in group:
            with chunk:
                ids.append(int(chunk.chunk_id))

    consumer = threading.Thread(target=consume)
    feeder = threading.Thread(target=busy.add_packets,
                              args=([p for i in range(0, 40, 2) for p in small_heap(i + 1, i)],))
    consumer.start()
    feeder.start()
    until_waiting(group, 1)                              # the busy stream is blocked
    assert feeder.is_alive()
    group.stop_waiting_for_chunks()
    feeder.join(10)
    assert not feeder.is_alive()
    # Lossy: the consumer starts only once the feeder is done, so no chunk comes
    # back to the pool while the feeder still places (a chunk placed after a
    # dropped one would leave a gap in the ids).
    consume_now.set()
    busy.finish()
    idle.finish()
    consumer.join(10)
    assert not consumer.is_alive()
    assert ids == list(range(len(ids)))

