"""The compiled placement hook: examples/place_hook built and used by a ChunkStream."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import heap_packets

from daqd import _spead, _spead2compat

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "place_hook"
TRUSTING = Path(__file__).resolve().parent / "trusting_place"
TS, FREQ, SLOT, OFFSET = 0x1600, 0x4103, 0x4104, 0x4105
STEP, HPC, FIRST, PER_HEAP, SUBS, HEAP_BYTES = 256, 4, 1024, 64, 4, 256


def build_hook(source: Path, name: str, work: Path):
    """Build a hook as the example's README says, in a scratch copy, and import it."""
    for file in (f"{name}.pyx", "setup.py"):
        shutil.copy(source / file, work / file)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=work,
                   check=True, capture_output=True)
    so = next(work.glob(f"{name}*.so"))
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frequency_place(tmp_path_factory):
    return build_hook(EXAMPLE, "frequency_place", tmp_path_factory.mktemp("place_hook"))


@pytest.fixture(scope="module")
def trusting_place(tmp_path_factory):
    """A buggy hook: slot and offset taken from the packet unchecked."""
    return build_hook(TRUSTING, "trusting_place", tmp_path_factory.mktemp("trusting_place"))


def make_stream(module, **kwargs):
    hook = module.FrequencyPlacement(
        timestamp_step=STEP, heaps_per_chunk=HPC, first_channel=FIRST,
        channels_per_heap=PER_HEAP, substreams=SUBS, heap_bytes=HEAP_BYTES)
    return _spead.ChunkStream(
        timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
        substreams=SUBS, place=hook.place, place_items=hook.items,
        place_counters=hook.counters, max_chunks=2, pool=4, **kwargs)


def heap(cnt, timestamp, channel, size=HEAP_BYTES):
    payload = bytes([cnt % 251]) * size
    return heap_packets(cnt, [(TS, timestamp), (FREQ, channel), (0x3300, payload)],
                        packet_payload=128)


def test_hook_places_by_frequency(frequency_place):
    stream = make_stream(frequency_place)
    packets, expect = [], {}
    cnt = 1
    for t in range(2 * HPC):
        for sub in (3, 0, 2, 1):
            packets += heap(cnt, t * STEP, FIRST + sub * PER_HEAP)
            expect[(t // HPC, t % HPC, sub)] = cnt % 251
            cnt += 1
    stream.add_packets(packets)
    stream.finish()
    seen = 0
    while (chunk := stream.get(0)) is not None:
        with chunk:
            assert chunk.present.all()
            for (cid, t, sub), value in expect.items():
                if cid == chunk.chunk_id:
                    assert (chunk.data[t, sub] == value).all()
                    seen += 1
    assert seen == len(expect)
    stats = stream.stats()
    assert stats["chunk_heaps_present"] == len(expect)
    assert stream.pool_counts()["free"] == 4


def test_hook_rejections_are_counted(frequency_place):
    stream = make_stream(frequency_place)
    stream.add_packets(
        heap(1, 0, FIRST + 1)                        # off the channel grid: hook rejects
        + heap(2, 0, FIRST + SUBS * PER_HEAP)        # beyond the last substream
        + heap(3, 0, FIRST, size=HEAP_BYTES // 2)    # wrong heap size
        + heap(4, 0, FIRST))                         # placed
    stream.finish()
    stats = stream.stats()
    assert stats["chunk_heaps_rejected_by_place"] == 3
    assert stats["place_off_grid_heaps"] == 2        # the hook's own counter (ABI v2)
    assert stats["chunk_heaps_placed"] == 1
    assert stats["chunk_packets_discarded"] == 2 + 2 + 1
    while (chunk := stream.get(0)) is not None:
        chunk.release()


def test_hook_counters_are_per_stream_and_abi_versioned(frequency_place, trusting_place):
    """Each stream of a group keeps the hook's counters of its own heaps; a version 1
    hook (trusting_place) still loads, and cannot declare counters."""
    first = make_stream(frequency_place)
    second = first.group.add_stream()
    first.add_packets(heap(1, 0, FIRST + 1))
    second.add_packets(heap(2, 0, FIRST + 1) + heap(3, STEP, FIRST + 3))
    assert (first.stats()["place_off_grid_heaps"], second.stats()["place_off_grid_heaps"]) \
        == (1, 2)
    assert first.group.place_version == 2 and first.group.place_counters == ("off_grid_heaps",)
    old = trusting_place.TrustingPlacement(STEP, TS, SLOT, OFFSET)
    assert _spead.place_hook_version(old.place) == 1
    assert "place_off_grid_heaps" not in _spead.ChunkStream(
        place=old.place, place_items=old.items, heap_bytes=HEAP_BYTES).stats()
    with pytest.raises(ValueError, match="version 1 placement hook .* has no counters"):
        _spead.ChunkStream(place=old.place, place_items=old.items, place_counters=["x"])


@pytest.mark.parametrize("names, words", [
    (["Bad"], "not a lower-case identifier"), (["a", "a"], "named twice"),
    ([f"c{i}" for i in range(17)], "at most 16")])
def test_hook_counter_names_are_checked(frequency_place, names, words):
    hook = frequency_place.FrequencyPlacement(
        timestamp_step=STEP, heaps_per_chunk=HPC, first_channel=FIRST,
        channels_per_heap=PER_HEAP, substreams=SUBS, heap_bytes=HEAP_BYTES)
    with pytest.raises(ValueError, match=words):
        _spead.ChunkStream(place=hook.place, place_items=hook.items, place_counters=names,
                           heap_bytes=HEAP_BYTES, substreams=SUBS)


def test_place_must_be_a_daqd_capsule():
    with pytest.raises(TypeError, match="daqd.place_v1"):
        _spead.ChunkStream(place=object())
    spead2_style = _spead2compat.Spead2Placement().place    # a spead2 capsule is not daqd's
    with pytest.raises(TypeError):
        _spead.ChunkStream(place=spead2_style)


def test_hook_data_matches_declarative_layout(frequency_place):
    """Where both can express a layout, hook and declarative placement agree."""
    packets = []
    for i in range(3 * HPC * SUBS):
        t, sub = divmod(i, SUBS)
        packets += heap(i + 1, t * STEP, FIRST + sub * PER_HEAP)
    hooked = make_stream(frequency_place)
    # Declarative: substream item holding the substream index directly.
    declared = _spead.ChunkStream(timestamp_step=STEP, heaps_per_chunk=HPC,
                                  heap_bytes=HEAP_BYTES, substream_item=0x4104,
                                  substreams=SUBS, max_chunks=2, pool=4)
    declared_packets = []
    for i in range(3 * HPC * SUBS):
        t, sub = divmod(i, SUBS)
        payload = bytes([(i + 1) % 251]) * HEAP_BYTES
        declared_packets += heap_packets(i + 1, [(TS, t * STEP), (0x4104, sub),
                                                 (0x3300, payload)], packet_payload=128)
    out = []
    for stream, pkts in ((hooked, packets), (declared, declared_packets)):
        stream.add_packets(pkts)
        stream.finish()
        chunks = []
        while (chunk := stream.get(0)) is not None:
            with chunk:
                chunks.append((chunk.chunk_id, chunk.data.copy(), chunk.present.copy()))
        out.append(chunks)
    assert len(out[0]) == len(out[1]) == 3
    for a, b in zip(*out, strict=True):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])


def test_a_buggy_hook_cannot_place_outside_the_chunk(trusting_place):
    """daqd checks a hook's slot and offset against the chunk's shape: a heap the hook
    puts (partly) outside the chunk is rejected and counted, and nothing is written."""
    hook = trusting_place.TrustingPlacement(STEP, TS, SLOT, OFFSET)
    # one substream, no packet presence: HPC slots, HPC * HEAP_BYTES data bytes per chunk
    stream = _spead.ChunkStream(timestamp_step=STEP, heaps_per_chunk=HPC, heap_bytes=HEAP_BYTES,
                                place=hook.place, place_items=hook.items, max_chunks=1, pool=4)
    chunk_bytes = HPC * HEAP_BYTES
    wrong = [(HPC, 0),                                 # slot one past the last
             (1, chunk_bytes),                         # data just past the chunk
             (2, chunk_bytes - HEAP_BYTES // 2)]       # data overrunning the end by half a heap
    packets = []
    for cnt, (slot, offset) in enumerate(wrong, start=1):
        packets += heap_packets(cnt, [(TS, 0), (SLOT, slot), (OFFSET, offset),
                                      (0x3300, bytes([0xEE]) * HEAP_BYTES)], packet_payload=128)
    packets += heap_packets(9, [(TS, 0), (SLOT, 1), (OFFSET, HEAP_BYTES),
                                (0x3300, bytes([9]) * HEAP_BYTES)], packet_payload=128)
    stream.add_packets(packets)
    stream.finish()
    stats = stream.stats()
    assert stats["chunk_heaps_rejected_placement"] == len(wrong)
    assert stats["chunk_heaps_placed"] == 1
    chunks = []
    while (chunk := stream.get(0)) is not None:
        with chunk:
            chunks.append((chunk.chunk_id, chunk.present.copy(), chunk.data.copy()))
    assert len(chunks) == 1
    chunk_id, present, data = chunks[0]
    assert chunk_id == 0
    assert present.ravel().tolist() == [0, 1, 0, 0]
    assert (data.reshape(HPC, HEAP_BYTES)[1] == 9).all()
    assert not (data == 0xEE).any()
    assert stream.pool_counts()["free"] == 4
