"""The zarr sink's transactions, regions, growth and failure counting, on real stores.

Stores are fsspec ``memory://`` (one per test) or local directories; a full
disk is a real small tmpfs (`fs_helpers.small_tmpfs`, skipped without root).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fs_helpers import fill_up, small_tmpfs

from daqd.config import parse
from daqd.pipeline.datatime import CaptureBlock
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink, recover_sink
from daqd.sinks.zarr_store import COORD_CHUNK, MIN_EXTENT, extent_for

HPC, SUBS, HEAP = 4, 2, 64
TICKS = 100 * HPC           # timestamp_step 100
_stores = itertools.count()


def context(path: str, *, offset: int = 0, total: int = 4, origin: int = 0, hpc: int = HPC,
            codec: str = "", time: str = "", extra: str = "", chunking: int = 0,
            fsync: str = "on-rotate", dtype: str = "uint16") -> SinkContext:
    text = f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7999"]
[stream.chunk]
timestamp_step = 100
heaps_per_chunk = {hpc}
heap_bytes = {HEAP}
dtype = "{dtype}"
substream_item = 0x4101
substreams = {SUBS}
{extra}
{time}
[[stream.sinks]]
kind = "zarr"
path = "{path}"
substreams_total = {total}
substream_offset = {offset}
substream_chunk = {chunking}
origin = {origin}
codec = "{codec}"
fsync = "{fsync}"
"""
    cfg = parse(text, host=False)
    s = cfg.streams[0]
    return SinkContext.for_stream(s, s.sinks[0], config_text=text)


def memory_url() -> str:
    return f"memory://zarr-sink-tests/{next(_stores)}/{{stream}}.zarr"


def record(index: int, tag: int = 0, origin: int = 0, hpc: int = HPC,
           missing: tuple[tuple[int, int], ...] = ()) -> ChunkRecord:
    samples = HEAP // 2
    data = ((np.arange(hpc * SUBS * samples).reshape(hpc, SUBS, samples)
             + 1000 * index + 7 * tag) % 65536).astype(np.uint16)
    present = np.ones((hpc, SUBS), np.uint8)
    for h, s in missing:
        present[h, s] = 0
        data[h, s] = 0
    ts = origin + index * 100 * hpc
    return ChunkRecord(ts // (100 * hpc), ts, data, present)


def opened(ctx: SinkContext) -> zarr.Group:
    return zarr.open_group(ctx.config.path.format(stream="adc0"), mode="r")


def test_two_regions_fill_one_array_and_presence_is_exact():
    url = memory_url()
    a, b = make_sink(context(url, offset=0)), make_sink(context(url, offset=2))
    a.write([record(0, 1), record(1, 1, missing=((3, 1),))])
    b.write([record(1, 2), record(2, 2, missing=((0, 0),))])
    g = opened(a.context)
    assert g["data"].shape == (MIN_EXTENT, HPC, 4, HEAP // 2)
    present = g["present"][:4]
    want = np.zeros((4, HPC, 4), np.uint8)
    want[0, :, :2] = want[1] = want[2, :, 2:] = 1
    want[1, 3, 1] = want[2, 0, 2] = 0
    np.testing.assert_array_equal(present, want)
    np.testing.assert_array_equal(g["data"][1, :, 0:2], record(1, 1, missing=((3, 1),)).data)
    np.testing.assert_array_equal(g["data"][1, :, 2:4], record(1, 2).data)
    # The time coordinate: one per index, written by chunks of COORD_CHUNK records.
    np.testing.assert_array_equal(g["timestamp"][:], np.arange(MIN_EXTENT) * TICKS)
    assert g.attrs["daqd_layout"]["substreams_total"] == 4
    assert set(g["writers"].group_keys()) == {"0", "2"}
    assert a.stats()["records"] == 2 and a.stats()["errors"] == 0


def test_the_spead_descriptors_are_group_attributes_kept_up_to_date():
    known: list[dict] = []
    ctx = dataclasses.replace(context(memory_url()), descriptors=lambda: list(known))
    sink = make_sink(ctx)
    sink.write([record(0)])
    g = opened(ctx)
    assert g.attrs["spead_descriptors"] == [] == g["writers/0"].attrs["spead_descriptors"]
    # A descriptor heap arrives later: the next write says so, in both places.
    known.append({"id": 0x1600, "name": "timestamp", "description": "ADC sample counter",
                  "shape": [], "format": [["u", 48]], "dtype": None})
    sink.write([record(1)])
    g = opened(ctx)
    assert g.attrs["spead_descriptors"] == known == g["writers/0"].attrs["spead_descriptors"]
    assert g.attrs["daqd_layout"]["substreams_total"] == 4      # the rest of the attributes kept


def test_a_record_written_again_rewrites_its_own_slots():
    url = memory_url()
    sink = make_sink(context(url))
    records = [record(i) for i in range(3)]
    sink.write(records)
    before = {n: opened(sink.context)[n][:3] for n in ("data", "present", "timestamp")}
    again = make_sink(context(url))               # a restarted daemon, replaying its log
    again.write(records[1:])
    after = opened(sink.context)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name][:3], values)
    assert not after["present"][3:].any()
    report = recover_sink(sink.context, sink.checkpoint())
    assert report["error"] == "" and report["orphans"] == []


def test_records_before_origin_are_counted_not_written():
    url = memory_url()
    sink = make_sink(context(url, origin=5 * TICKS))
    sink.write([record(i) for i in range(7)])
    stats = sink.stats()
    assert stats["lost"] == {"before_origin": 5, "layout": 0}
    assert (stats["lost_records"], stats["records"]) == (5, 2)
    g = opened(sink.context)
    assert g["present"][:2, :, :2].all() and not g["present"][2:].any()
    assert list(g["timestamp"][:2]) == [5 * TICKS, 6 * TICKS]


def test_a_record_of_another_shape_is_counted_not_written():
    sink = make_sink(context(memory_url()))
    sink.write([record(0, hpc=HPC * 2), record(1)])
    assert sink.stats()["lost"]["layout"] == 1 and sink.stats()["records"] == 1


def test_a_store_of_another_layout_is_refused_in_one_line():
    url = memory_url()
    make_sink(context(url)).write([record(0)])
    other = make_sink(context(url, origin=TICKS))
    with pytest.raises(OSError) as info:
        other.write([record(1, origin=TICKS)])
    message = str(info.value)
    assert "\n" not in message and "origin" in message, message
    assert message.endswith(f"the store's origin is 0, this daemon's is {TICKS} (every "
                            "writer needs the same layout)"), message
    assert other.stats()["errors"] == 1 and other.stats()["last_error"] == message
    assert not opened(other.context)["present"][1:].any()


def test_a_directory_of_other_files_is_not_made_a_store(tmp_path):
    (tmp_path / "adc0.zarr").mkdir()
    (tmp_path / "adc0.zarr" / "notes.txt").write_text("mine")
    sink = make_sink(context(str(tmp_path / "{stream}.zarr")))
    with pytest.raises(OSError, match="neither empty nor a Zarr group"):
        sink.write([record(0)])
    assert sorted(p.name for p in (tmp_path / "adc0.zarr").iterdir()) == ["notes.txt"]


def test_the_time_axis_grows_in_powers_of_two_and_a_lost_resize_is_repaired():
    url = memory_url()
    sink = make_sink(context(url))
    sink.write([record(5000)])
    g = opened(sink.context)
    assert g["present"].shape[0] == extent_for(5000) == 8192
    # Another writer's resize, based on a shape read before ours, wins last.
    for name in ("data", "present", "timestamp"):
        stale = zarr.open_array(url.format(stream="adc0") + f"/{name}", mode="r+")
        zarr.core.sync.sync(stale._async_array.resize((MIN_EXTENT, *stale.shape[1:]),
                                                      delete_outside_chunks=False))
    assert opened(sink.context)["present"].shape[0] == MIN_EXTENT
    sink.write([record(6)])             # an object store: shapes checked at every write
    g = opened(sink.context)
    assert g["present"].shape[0] == 8192 and g["present"][5000, :, :2].all()
    np.testing.assert_array_equal(g["data"][5000, :, :2], record(5000).data)


@pytest.mark.parametrize("codec", ["zstd", "blosc"])
def test_codecs_round_trip(codec):
    sink = make_sink(context(memory_url(), codec=codec))
    sink.write([record(i) for i in range(3)])
    g = opened(sink.context)
    assert [type(c).__name__ for c in g["data"].compressors][0].lower().startswith(codec)
    np.testing.assert_array_equal(g["data"][2, :, :2], record(2).data)


# A record dtype is Zarr's "structured" type, which has no v3 specification yet.
@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
@pytest.mark.parametrize("dtype", [">i2", "i1,i1"])
def test_big_endian_and_record_dtypes_round_trip(tmp_path, dtype):
    sink = make_sink(context(str(tmp_path / "{stream}.zarr"), dtype=dtype))
    raw = record(3).data.view(np.uint8)             # the bytes the pool chunk would hold
    data = raw.view(np.dtype(dtype))
    sink.write([ChunkRecord(3, 3 * TICKS, data, np.ones((HPC, SUBS), np.uint8))])
    g = opened(sink.context)
    assert g["data"].dtype == np.dtype(dtype).newbyteorder("=")    # zarr reads native
    np.testing.assert_array_equal(g["data"][3, :, :2], data)


def test_chunks_along_substreams_and_extra_items_and_utc_and_capture_blocks():
    ctx = context(memory_url(), offset=2, chunking=1, extra="extra_items = [0x1700]",
                  time='[stream.time]\nsync_time = "1000"\ntimestamp_rate = 100.0')
    sink = make_sink(ctx)
    first = record(0)
    first.capture_block = CaptureBlock("cb/1", start=0)
    second = record(1)
    second.extra = np.full((HPC, SUBS, 1), 9, np.uint64)
    second.capture_block = first.capture_block
    sink.write([first, second])
    g = opened(ctx)
    assert g["data"].chunks == (1, HPC, 1, HEAP // 2)
    assert list(g["utc"][:2]) == [1000.0, 1000.0 + TICKS / 100]
    assert g["timestamp"].chunks == g["utc"].chunks == (COORD_CHUNK,)
    assert g["extra"][0, :, 2:].tolist() == [[[2**64 - 1]] * 2] * HPC
    assert (g["extra"][1, :, 2:] == 9).all() and (g["extra"][1, :, :2] == 2**64 - 1).all()
    assert g.attrs["sync_time"] == 1000.0 and g.attrs["timestamp_rate"] == 100.0
    block = g["capture_blocks/cb_1"].attrs
    assert (block["capture_block_id"], block["capture_start"]) == ("cb/1", 0)


def test_local_store_sync_and_presence_written_after_data(tmp_path):
    ctx = context(str(tmp_path / "{stream}.zarr"), fsync="every-flush")
    sink = make_sink(ctx)
    sink.write([record(0), record(1)])
    sink.sync()
    files = sorted(p.name for p in (tmp_path / "adc0.zarr" / "present").iterdir())
    assert files == ["c.0.0.0", "c.1.0.0", "zarr.json"]
    assert sink._dirty == set()
    # Presence was written after data: no data chunk is newer than its presence chunk.
    for i in range(2):
        data = (tmp_path / "adc0.zarr" / "data" / f"c.{i}.0.0.0").stat().st_mtime_ns
        present = (tmp_path / "adc0.zarr" / "present" / f"c.{i}.0.0").stat().st_mtime_ns
        assert data <= present


@pytest.mark.parametrize("policy", ["never", "on-rotate"])
def test_sync_makes_every_written_file_durable_whatever_the_policy(tmp_path, monkeypatch,
                                                                    policy):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real(fd)))
    sink = make_sink(context(str(tmp_path / "{stream}.zarr"), fsync=policy))
    sink.write([record(0), record(1)])
    assert synced == []                     # neither policy fsyncs in write()
    sink.sync()                             # what the write-ahead log asks before a mark
    store = tmp_path / "adc0.zarr"
    files = {str(p) for p in store.rglob("*") if p.is_file()}
    assert files <= set(synced), files - set(synced)     # data, present, coordinates, metadata
    assert str(store) in synced and str(store / "data") in synced      # their directories
    synced.clear()
    sink.sync()
    assert synced == []                     # nothing new to sync


def test_a_full_disk_is_counted_and_the_records_retried_complete(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "2m") as mnt:
        ctx = context(str(mnt / "{stream}.zarr"))
        sink = make_sink(ctx)
        sink.write([record(0)])
        ballast = fill_up(mnt, room=3 * 1024)
        records = [record(i) for i in range(1, 40)]
        with pytest.raises(OSError) as info:
            sink.write(records)
        assert info.value.errno == errno.ENOSPC
        stats = sink.stats()
        assert stats["errors"] == 1 and stats["last_error"].startswith("ENOSPC")
        # Whatever the failed flush left, a slot marked present holds all its data.
        g = zarr.open_group(str(mnt / "adc0.zarr"), mode="r")
        present, data = g["present"][:40], g["data"][:40]
        for r in records:
            i = r.chunk_id
            if present[i, :, :2].any():
                np.testing.assert_array_equal(data[i, :, :2], r.data)
        ballast.unlink()
        sink.write(records)                 # the buffer's retry at its next flush
        g = zarr.open_group(str(mnt / "adc0.zarr"), mode="r")
        assert g["present"][:40, :, :2].all()
        np.testing.assert_array_equal(g["data"][39, :, :2], records[-1].data)
        np.testing.assert_array_equal(g["timestamp"][:40], np.arange(40) * TICKS)
        assert sink.stats()["records"] == 40


def test_a_failing_store_does_not_hold_the_other_sinks_back(tmp_path):
    from daqd.config import BufferConfig
    from daqd.pipeline.buffers import build_buffer

    url = memory_url()
    make_sink(context(url)).write([record(0)])
    failing = make_sink(context(url, origin=TICKS))         # another layout: every write fails
    binary = make_sink(SinkContext("adc0", failing.config.__class__(
        "binary", str(tmp_path / "{stream}.bin")), failing.context.chunk))
    buffer = build_buffer(BufferConfig(kind="fifo", capacity=16, flush_count=0,
                                       flush_interval=0), [failing, binary], name="adc0")
    for i in range(1, 5):
        assert buffer.put(record(i, origin=TICKS))
    buffer.flush("test")
    stats = buffer.stats()["sinks"]
    assert stats[binary.name]["written"] == 4 and stats[binary.name]["errors"] == 0
    assert stats[failing.name]["written"] == 0 and stats[failing.name]["errors"] == 1
    assert "origin" in stats[failing.name]["last_error"]
    assert failing.stats()["errors"] == 1
    buffer.close()
    binary.close()
