"""Sinks: file names, rotation, temporary files, fsync policies, checkpoint and recovery."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from daqd.config import ChunkConfig, ConfigError, SinkConfig, parse
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.sinks import SinkContext, make_sink, recover_sink
from daqd.sinks.binary import load

CHUNK = ChunkConfig(heaps_per_chunk=4, heap_bytes=16)       # 64 data bytes per record
RECORD_BYTES = 64


class Clocks:
    """A monotonic and a wall clock that only move when told to."""

    def __init__(self, wall=1767225600.0):          # 2026-01-01T00:00:00Z
        self.mono, self.wall = 1000.0, wall

    def advance(self, seconds):
        self.mono += seconds
        self.wall += seconds


def record(i):
    return ChunkRecord(i, i * 4, np.full((4, 1, 16), i % 256, np.uint8),
                       np.ones((4, 1), np.uint8))


def sink_for(tmp_path, kind="binary", path="{stream}-{seq:04d}.bin", clocks=None, chunk=CHUNK,
             **config):
    clocks = clocks or Clocks()
    ctx = SinkContext("adc0", SinkConfig(kind, str(tmp_path / path), **config), chunk, "",
                      clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
    return make_sink(ctx)


def names(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def chunk_ids(path):
    """Chunk ids in a headerless binary file of `record`s (each record is filled with its id)."""
    data = np.fromfile(path, np.uint8).reshape(-1, RECORD_BYTES)
    return data[:, 0].tolist()


# ----------------------------------------------------------------------
# Names


def test_path_template_fields(tmp_path):
    clocks = Clocks(wall=1767323045.5)                  # 2026-01-02T03:04:05.5Z
    sink = sink_for(tmp_path, path="{stream}/{start:%Y/%m%d}/x-{start:%H%M%S}-{seq:03d}-"
                    "{chunk_id}.bin", clocks=clocks, header=False, rotate_bytes=2 * RECORD_BYTES)
    sink.write([record(i) for i in range(7, 11)])
    sink.close()
    assert names(tmp_path) == ["adc0/2026/0102/x-030405-000-7.bin",
                               "adc0/2026/0102/x-030405-001-9.bin"]


def test_existing_files_are_never_overwritten(tmp_path):
    (tmp_path / "adc0-0000.bin").write_bytes(b"old 0")
    (tmp_path / "adc0-0001.bin.tmp").write_bytes(b"left by a crash")
    sink = sink_for(tmp_path, header=False)
    sink.write([record(1)])
    sink.close()
    assert (tmp_path / "adc0-0000.bin").read_bytes() == b"old 0"
    assert (tmp_path / "adc0-0001.bin.tmp").read_bytes() == b"left by a crash"
    assert chunk_ids(tmp_path / "adc0-0002.bin") == [1]


def test_without_seq_a_number_goes_before_the_extension(tmp_path):
    (tmp_path / "run.bin").write_bytes(b"old")
    sink = sink_for(tmp_path, path="run.bin", header=False, rotate_bytes=RECORD_BYTES)
    sink.write([record(1), record(2)])
    sink.close()
    assert names(tmp_path) == ["run.1.bin", "run.2.bin", "run.bin"]
    assert (tmp_path / "run.bin").read_bytes() == b"old"
    assert chunk_ids(tmp_path / "run.1.bin") == [1] and chunk_ids(tmp_path / "run.2.bin") == [2]


def test_a_name_taken_while_the_file_was_written_is_not_replaced(tmp_path):
    sink = sink_for(tmp_path, path="run.bin", header=False)
    sink.write([record(1)])
    (tmp_path / "run.bin").write_bytes(b"someone else's")
    sink.close()
    assert (tmp_path / "run.bin").read_bytes() == b"someone else's"
    assert chunk_ids(tmp_path / "run.1.bin") == [1]
    assert sink.stats()["last_file"].endswith("run.1.bin")


def test_only_the_temporary_name_exists_until_the_file_is_complete(tmp_path):
    sink = sink_for(tmp_path, header=False)
    sink.write([record(1)])
    assert names(tmp_path) == ["adc0-0000.bin.tmp"]
    assert sink.stats()["current_file"].endswith("adc0-0000.bin.tmp")
    sink.write([record(2)])
    sink.reopen()                                   # SIGHUP: finished, pending
    assert names(tmp_path) == ["adc0-0000.bin.tmp"]
    assert sink.checkpoint()["file"] is None
    sink.commit()                                   # the buffer's WAL covers it now
    assert names(tmp_path) == ["adc0-0000.bin"]
    sink.write([record(3)])
    assert names(tmp_path) == ["adc0-0000.bin", "adc0-0001.bin.tmp"]
    sink.close()
    assert names(tmp_path) == ["adc0-0000.bin", "adc0-0001.bin"]
    assert chunk_ids(tmp_path / "adc0-0000.bin") == [1, 2]
    assert chunk_ids(tmp_path / "adc0-0001.bin") == [3]
    stats = sink.stats()
    assert (stats["files"], stats["records"], stats["bytes"]) == (2, 3, 3 * RECORD_BYTES)
    assert stats["current_file"] == "" and stats["errors"] == 0


# ----------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize("per_flush", [1, 3, 10])
def test_rotation_by_bytes(tmp_path, per_flush):
    sink = sink_for(tmp_path, header=False, rotate_bytes=3 * RECORD_BYTES + 10)
    for i in range(0, 10, per_flush):
        sink.write([record(j) for j in range(i, min(i + per_flush, 10))])
    sink.close()
    files = names(tmp_path)
    assert [chunk_ids(tmp_path / f) for f in files] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert all(os.path.getsize(tmp_path / f) <= 3 * RECORD_BYTES + 10 for f in files)


def test_rotation_by_bytes_counts_the_header(tmp_path):
    sink = sink_for(tmp_path, rotate_bytes=4096 + 2 * RECORD_BYTES)
    sink.write([record(i) for i in range(5)])
    sink.close()
    sizes = [load(str(tmp_path / f))[1].shape[0] for f in names(tmp_path)]
    assert sizes == [2, 2, 1]


def test_files_finished_in_a_write_wait_for_commit(tmp_path):
    sink = sink_for(tmp_path, header=False, rotate_bytes=2 * RECORD_BYTES)
    sink.write([record(i) for i in range(5)])
    assert names(tmp_path) == ["adc0-0000.bin.tmp", "adc0-0001.bin.tmp", "adc0-0002.bin.tmp"]
    state = sink.checkpoint()
    assert state["pending"] == [
        {"tmp": str(tmp_path / f"adc0-000{i}.bin.tmp"), "final": str(tmp_path / f"adc0-000{i}.bin"),
         "records": 2} for i in (0, 1)]
    assert state["file"]["tmp"].endswith("adc0-0002.bin.tmp") and state["file"]["records"] == 1
    stats = sink.stats()
    assert (stats["files"], stats["unfinished_files"]) == (0, 2)
    sink.commit()
    assert names(tmp_path) == ["adc0-0000.bin", "adc0-0001.bin", "adc0-0002.bin.tmp"]
    assert sink.checkpoint()["pending"] == []
    stats = sink.stats()
    assert (stats["files"], stats["unfinished_files"]) == (2, 0)
    assert stats["last_file"].endswith("adc0-0001.bin")
    sink.commit()                                    # nothing pending: nothing to do
    sink.close()                                     # publishes the rest
    assert [chunk_ids(tmp_path / f) for f in names(tmp_path)] == [[0, 1], [2, 3], [4]]


def test_a_failed_write_keeps_no_file_it_finished(tmp_path, monkeypatch):
    sink = sink_for(tmp_path, header=False, rotate_bytes=2 * RECORD_BYTES)
    sink.write([record(0)])
    real = os.pwritev
    calls = []

    def fail_third(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", fail_third)
    with pytest.raises(OSError):
        sink.write([record(i) for i in range(1, 6)])     # file 0 filled, file 1 done, file 2
    monkeypatch.undo()
    assert names(tmp_path) == ["adc0-0000.bin.tmp"]
    assert sink.checkpoint()["pending"] == [] and sink.checkpoint()["file"]["records"] == 1
    sink.write([record(i) for i in range(1, 6)])
    sink.close()
    assert [chunk_ids(tmp_path / f) for f in names(tmp_path)] == [[0, 1], [2, 3], [4, 5]]


def test_a_record_larger_than_rotate_bytes_gets_a_file_of_its_own(tmp_path):
    sink = sink_for(tmp_path, header=False, rotate_bytes=10)
    sink.write([record(1), record(2)])
    sink.close()
    assert [chunk_ids(tmp_path / f) for f in names(tmp_path)] == [[1], [2]]


def test_rotation_by_time(tmp_path):
    clocks = Clocks()
    sink = sink_for(tmp_path, header=False, rotate_seconds=60, clocks=clocks)
    sink.write([record(1)])
    clocks.advance(59.9)
    sink.write([record(2)])
    clocks.advance(0.1)                              # the file is now 60 s old
    sink.write([record(3)])
    assert names(tmp_path) == ["adc0-0000.bin.tmp", "adc0-0001.bin.tmp"]
    sink.commit()
    assert names(tmp_path) == ["adc0-0000.bin", "adc0-0001.bin.tmp"]
    clocks.advance(61)
    sink.write([])                                   # an empty flush still rotates
    assert [p["final"] for p in sink.checkpoint()["pending"]] == \
        [str(tmp_path / "adc0-0001.bin")]
    sink.commit()
    assert names(tmp_path) == ["adc0-0000.bin", "adc0-0001.bin"]
    sink.close()
    assert chunk_ids(tmp_path / "adc0-0000.bin") == [1, 2]
    assert chunk_ids(tmp_path / "adc0-0001.bin") == [3]


# ----------------------------------------------------------------------
# fsync policies


@pytest.fixture
def fsyncs(monkeypatch):
    """Count os.fsync calls by kind of target (file or directory)."""
    counts = {"file": 0, "dir": 0}
    real = os.fsync

    def counting(fd):
        counts["dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"] += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return counts


@pytest.mark.parametrize("kind", ["binary", "hdf5"])
def test_fsync_every_flush(tmp_path, fsyncs, kind):
    sink = sink_for(tmp_path, kind=kind, fsync="every-flush")
    for i in range(4):
        before = fsyncs["file"]
        sink.write([record(i)])
        assert fsyncs["file"] == before + 1
    assert fsyncs["dir"] >= 1                       # the new file's directory entry
    sink.close()


def test_fsync_on_rotate_only_when_a_file_is_finished(tmp_path, fsyncs):
    sink = sink_for(tmp_path, fsync="on-rotate", rotate_bytes=4096 + 2 * RECORD_BYTES)
    sink.write([record(0)])
    sink.write([record(1)])
    assert fsyncs["file"] == 0
    sink.write([record(2)])                         # finishes the first file
    assert fsyncs["file"] == 1
    sink.close()
    assert fsyncs["file"] == 2 and fsyncs["dir"] >= 2


def test_fsync_never(tmp_path, fsyncs):
    sink = sink_for(tmp_path, fsync="never", rotate_bytes=1)
    sink.write([record(0), record(1)])
    sink.close()
    assert fsyncs == {"file": 0, "dir": 0}
    assert len(names(tmp_path)) == 2


def test_sync_fsyncs_whatever_the_policy(tmp_path, fsyncs):
    sink = sink_for(tmp_path, fsync="never")
    sink.sync()                                      # nothing written yet: nothing to do
    sink.write([record(0)])
    sink.sync()
    assert fsyncs["file"] == 1 and fsyncs["dir"] == 1
    sink.sync()                                      # nothing new: nothing to do
    assert fsyncs["file"] == 1
    sink.close()


def test_sync_covers_pending_files_and_published_names(tmp_path, fsyncs):
    sink = sink_for(tmp_path, fsync="never", rotate_bytes=4096 + RECORD_BYTES)
    sink.write([record(0), record(1), record(2)])    # two pending files and a current one
    assert fsyncs == {"file": 0, "dir": 0}
    sink.sync()
    assert fsyncs == {"file": 3, "dir": 3}
    sink.commit()                                    # "never": renamed without a dir fsync
    assert fsyncs == {"file": 3, "dir": 3}
    sink.sync()                                      # the new names are made durable
    assert fsyncs == {"file": 3, "dir": 4}
    sink.close()


# ----------------------------------------------------------------------
# Checkpoint and recovery after a crash

CRASHING_WRITER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from daqd.config import ChunkConfig, SinkConfig
    from daqd.pipeline.records import ChunkRecord
    from daqd.sinks import SinkContext, make_sink

    kind, path, rotate = sys.argv[1], sys.argv[2], int(sys.argv[3])
    chunk = ChunkConfig(heaps_per_chunk=4, heap_bytes=16)
    sink = make_sink(SinkContext("adc0", SinkConfig(kind, path, rotate_bytes=rotate), chunk))
    rec = lambda i: ChunkRecord(i, i * 4, np.full((4, 1, 16), i, np.uint8),
                                np.ones((4, 1), np.uint8))
    sink.write([rec(0), rec(1)])
    sink.write([rec(2)])
    sink.sync()
    print(json.dumps(sink.checkpoint()), flush=True)
    sink.write([rec(3), rec(4), rec(5)])     # written, never marked done in the WAL
    os._exit(0)                              # crash: no close, no rename
""")


def crash_after_checkpoint(kind, path, rotate_bytes=0):
    out = subprocess.run([sys.executable, "-c", CRASHING_WRITER, kind, path, str(rotate_bytes)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def read_ids(kind, path):
    if kind == "hdf5":
        with h5py.File(path, "r") as f:
            return f["chunk_id"][:].tolist()
    if kind == "text":
        return [int(line.split()[0]) for line in open(path) if not line.startswith("#")]
    return [int(row[0, 0, 0]) for row in load(path)[1]]


@pytest.mark.parametrize("kind", ["binary", "text", "hdf5"])
def test_recover_cuts_the_file_back_to_its_checkpoint(tmp_path, kind):
    path = str(tmp_path / f"adc0-{{seq}}.{kind}")
    state = crash_after_checkpoint(kind, path)
    assert state["file"]["records"] == 3
    assert names(tmp_path) == [f"adc0-0.{kind}.tmp"]
    ctx = SinkContext("adc0", SinkConfig(kind, path), CHUNK)
    report = recover_sink(ctx, state)
    assert report["error"] == "" and report["file"].endswith(f"adc0-0.{kind}")
    assert names(tmp_path) == [f"adc0-0.{kind}"]
    # Records 3..5 are the WAL's to replay: the recovered file must not hold them.
    assert read_ids(kind, report["file"]) == [0, 1, 2]
    sink = make_sink(ctx)                             # the restarted daemon replays them
    sink.write([record(i) for i in (3, 4, 5)])
    sink.close()
    assert read_ids(kind, str(tmp_path / f"adc0-1.{kind}")) == [3, 4, 5]


def test_recover_after_a_rotation_that_followed_the_checkpoint(tmp_path):
    path = str(tmp_path / "adc0-{seq}.binary")
    # 4 records per file: the crashed flush filled file 0 and began file 1, and
    # published neither (nothing is published before the WAL's done mark).
    state = crash_after_checkpoint("binary", path, rotate_bytes=4096 + 4 * RECORD_BYTES)
    assert names(tmp_path) == ["adc0-0.binary.tmp", "adc0-1.binary.tmp"]
    report = recover_sink(SinkContext("adc0", SinkConfig("binary", path), CHUNK), state)
    assert report["error"] == "" and report["file"].endswith("adc0-0.binary")
    assert read_ids("binary", report["file"]) == [0, 1, 2]
    assert report["orphans"] == [str(tmp_path / "adc0-1.binary.tmp")]   # listed, not published
    assert names(tmp_path) == ["adc0-0.binary", "adc0-1.binary.tmp"]


def test_recover_publishes_the_pending_files_its_checkpoint_lists(tmp_path):
    path = str(tmp_path / "adc0-{seq}.binary")
    # 2 records per file: at the checkpoint file 0 (0, 1) was pending and file 1
    # (2) current; the crashed flush finished file 1 (2, 3) and began file 2 (4, 5).
    state = crash_after_checkpoint("binary", path, rotate_bytes=4096 + 2 * RECORD_BYTES)
    assert [p["final"] for p in state["pending"]] == [str(tmp_path / "adc0-0.binary")]
    assert names(tmp_path) == ["adc0-0.binary.tmp", "adc0-1.binary.tmp", "adc0-2.binary.tmp"]
    ctx = SinkContext("adc0", SinkConfig("binary", path), CHUNK)
    report = recover_sink(ctx, state)
    assert report["error"] == "" and report["published"] == [str(tmp_path / "adc0-0.binary")]
    assert report["file"] == str(tmp_path / "adc0-1.binary")
    assert report["orphans"] == [str(tmp_path / "adc0-2.binary.tmp")]
    assert read_ids("binary", str(tmp_path / "adc0-0.binary")) == [0, 1]
    assert read_ids("binary", str(tmp_path / "adc0-1.binary")) == [2]
    # Recovering again (a crash during the replay) changes nothing.
    again = recover_sink(ctx, state)
    assert (again["error"], again["file"], again["published"], again["orphans"]) == \
        ("", report["file"], [], report["orphans"])
    assert read_ids("binary", str(tmp_path / "adc0-1.binary")) == [2]
    os.unlink(tmp_path / "adc0-0.binary")           # a pending file that is gone is reported
    os.rename(tmp_path / "adc0-1.binary", tmp_path / "adc0-1.binary.tmp")
    state["pending"][0]["final"] = str(tmp_path / "elsewhere.binary")
    assert "adc0-0.binary.tmp: gone (2 records lost)" in recover_sink(ctx, state)["error"]


def test_orphans_are_this_streams_only(tmp_path):
    for name in ("adc0-7.binary.tmp", "adc1-7.binary.tmp", "adc0-8.binary"):
        (tmp_path / name).write_bytes(b"x")
    path = str(tmp_path / "{stream}-{seq}.binary")
    report = recover_sink(SinkContext("adc0", SinkConfig("binary", path), CHUNK),
                          {"kind": "binary", "path": path, "file": None, "pending": []})
    assert report["orphans"] == [str(tmp_path / "adc0-7.binary.tmp")]
    assert sorted(os.listdir(tmp_path)) == ["adc0-7.binary.tmp", "adc0-8.binary",
                                            "adc1-7.binary.tmp"]       # nothing touched


def test_recover_reports_a_file_it_cannot_open(tmp_path):
    path = str(tmp_path / "adc0-{seq}.hdf5")
    state = crash_after_checkpoint("hdf5", path)
    tmp = state["file"]["tmp"]
    with open(tmp, "r+b") as f:
        f.write(b"\0" * 512)                          # destroy the superblock
    report = recover_sink(SinkContext("adc0", SinkConfig("hdf5", path), CHUNK), state)
    assert report["file"] is None and tmp in report["error"]
    assert names(tmp_path) == ["adc0-0.hdf5.tmp"]       # left for an operator


def test_recover_with_no_open_file_does_nothing(tmp_path):
    ctx = SinkContext("adc0", SinkConfig("binary", str(tmp_path / "x.bin")), CHUNK)
    sink = make_sink(ctx)
    assert recover_sink(ctx, sink.checkpoint())["error"] == ""
    assert names(tmp_path) == []


# ----------------------------------------------------------------------
# Configuration


def config_with_sink(sink_toml, chunk=True):
    return ("[[stream]]\nname = \"adc0\"\nsources = [\"sim:W1\"]\n"
            + ("[stream.chunk]\n" if chunk else "") + "[[stream.sinks]]\n" + sink_toml)


@pytest.mark.parametrize("sink_toml, chunk, key, words", [
    ('kind = "binary"\npath = "d/{stream}-{when}.bin"\n', True, "stream[0].sinks[0].path",
     "unknown field {when}"),
    ('kind = "binary"\npath = "d/{seq:q}.bin"\n', True, "stream[0].sinks[0].path",
     "cannot be formatted"),
    ('kind = "pcap"\npath = "d/{chunk_id}.pcap"\n', True, "stream[0].sinks[0].path",
     "unknown field {chunk_id}"),
    ('kind = "text"\npath = "d/x.txt"\ntemplate = "{chunk_id} {cnt}"\n', True,
     "stream[0].sinks[0].template", "unknown field {cnt}"),
    ('kind = "text"\npath = "d/x.txt"\ntemplate = "{cnt} {chunk_id}"\n', False,
     "stream[0].sinks[0].template", "unknown field {chunk_id}"),
    ('kind = "text"\npath = "d/x.txt"\ntemplate = "{fraction_present:d}"\n', True,
     "stream[0].sinks[0].template", "cannot be formatted"),
    ('kind = "binary"\npath = "d/x.bin"\ntemplate = "{chunk_id}"\n', True,
     "stream[0].sinks[0].template", "only text sinks"),
    ('kind = "binary"\npath = "d/x.bin"\nfsync = "sometimes"\n', True,
     "stream[0].sinks[0].fsync", "never, on-rotate, every-flush"),
])
def test_config_names_the_bad_sink_key(tmp_path, monkeypatch, sink_toml, chunk, key, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse(config_with_sink(sink_toml, chunk), "daqd.toml")
    message = str(info.value)
    assert "\n" not in message and f"daqd.toml: {key} = " in message and words in message


def test_config_accepts_templates_with_fields_in_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse(config_with_sink(
        'kind = "text"\npath = "d/{stream}/{start:%Y}/{seq:04d}.txt"\n'
        'template = "{chunk_id},{time}"\nrotate_seconds = 3600\nfsync = "every-flush"\n'))
    sink = config.streams[0].sinks[0]
    assert (sink.template, sink.rotate_seconds, sink.fsync) == \
        ("{chunk_id},{time}", 3600.0, "every-flush")
    assert not (tmp_path / "d" / "{stream}").exists()
    ctx = SinkContext.for_stream(config.streams[0], sink, config.text, 7150)
    assert (ctx.stream, ctx.chunk, ctx.udp_port) == ("adc0", config.streams[0].chunk, 7150)
    assert make_sink(ctx).accepts == (ChunkRecord,)


def test_heap_mode_records_go_to_heap_mode_sinks_only(tmp_path):
    sink = sink_for(tmp_path, chunk=None, header=False)
    sink.write([record(1), HeapRecord(1, {0x3300: b"abc"})])
    sink.close()
    assert (tmp_path / "adc0-0000.bin").read_bytes() == b"abc"
