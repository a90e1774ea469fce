"""Sinks under disk errors: nothing half written, nothing lost without being counted.

Each case fails a write for real (a file size limit, a full file system, a
directory removed or made unwritable), checks that `write()` raised having
kept none of the flush, then clears the condition and checks that the same
records written again appear exactly once.
"""

import contextlib
import errno
import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.records import ChunkRecord, PacketRecord
from daqd.sinks import SinkContext, make_sink
from daqd.sinks.binary import load

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fs_helpers import small_tmpfs

KINDS = ["binary", "text", "pcap", "hdf5"]
HEAP_BYTES = 16384                       # 4 heaps: 64 KiB records
CHUNK = ChunkConfig(heaps_per_chunk=4, heap_bytes=HEAP_BYTES)



def make_record(kind, i):
    """Record number `i` for sink `kind`: every data byte (or first column) is i."""
    if kind == "pcap":
        return PacketRecord(bytes([i]) * (4 * 8192), np.full(4, 8192, np.uint32))
    return ChunkRecord(i, i * 4, np.full((4, 1, HEAP_BYTES), i, np.uint8),
                       np.ones((4, 1), np.uint8))


def rolled_back(sink, kind, tmp, size_before):
    """After a failed write: the file holds what its checkpoint says and no more.

    Byte sinks are cut back to the checkpoint's bytes.  HDF5 cannot cut bytes
    out of a file: every dataset is back to the checkpoint's rows, and the file
    is no larger than before the write (the reservation that failed was given
    back), read through the sink's own open handle (HDF5 opens a file once).
    """
    state = sink.checkpoint()["file"]
    if kind != "hdf5":
        return os.path.getsize(tmp) == state["bytes"]
    h5 = sink._file.handle
    rows = {name: h5[name].shape[0] for name in ("data", "present", "chunk_id", "timestamp")}
    return rows == dict.fromkeys(rows, state["rows"]) and os.path.getsize(tmp) <= size_before


# The same, for child processes.
RECORDS = ("import numpy as np, os\nfrom daqd.pipeline.records import ChunkRecord, PacketRecord\n"
           f"HEAP_BYTES = {HEAP_BYTES}\n" + inspect.getsource(make_record)
           + inspect.getsource(rolled_back))


def read_ids(kind, path):
    """The record numbers in a finished file, failing on any partial record."""
    if kind == "hdf5":
        with h5py.File(path, "r") as f:
            ids = f["chunk_id"][:].tolist()
            for row, i in enumerate(ids):
                assert (f["data"][row] == i).all()
            return ids
    if kind == "text":
        text = open(path).read()
        assert text.endswith("\n")
        return [int(line.split()[0]) for line in text.splitlines()[1:]]
    if kind == "pcap":
        blob = open(path, "rb").read()
        ids, pos = [], 24
        while pos < len(blob):
            (incl,) = struct.unpack_from("<I", blob, pos + 8)
            assert pos + 16 + incl <= len(blob), "partial frame"
            ids.append(blob[pos + 16 + 42])
            pos += 16 + incl
        return ids[::4]                                  # four packets per record
    meta, data = load(path)
    assert (os.path.getsize(path) - meta["header_bytes"]) % meta["record_bytes"] == 0
    return [int(row[0, 0, 0]) for row in data]


def files_ids(kind, directory):
    """Record numbers across every finished file, in name order; no temp files left."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    assert not [p for p in paths if p.name.endswith(".tmp")]
    return [i for p in paths for i in read_ids(kind, str(p))]


def make(kind, path, **config):
    return make_sink(SinkContext("adc0", SinkConfig(kind, str(path), **config), CHUNK))


# ----------------------------------------------------------------------
# EFBIG: a file size limit (RLIMIT_FSIZE), in a child process

SIZE_LIMITED_WRITER = RECORDS + textwrap.dedent("""
    import json, os, resource, signal, sys
    from daqd.config import ChunkConfig, SinkConfig
    from daqd.sinks import SinkContext, make_sink

    kind, path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of a signal
    chunk = ChunkConfig(heaps_per_chunk=4, heap_bytes=HEAP_BYTES)
    sink = make_sink(SinkContext("adc0", SinkConfig(kind, path), chunk))
    sink.write([make_record(kind, 0)])
    written = [0]
    tmp = sink.checkpoint()["file"]["tmp"]
    per_record = sink.stats()["bytes"]
    room = int(5.5 * per_record) + (300 << 10 if kind == "hdf5" else 0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(tmp) + room,
                                               resource.RLIM_INFINITY))
    failure = None
    i = 1
    while failure is None and i < 100:
        batch = [make_record(kind, i), make_record(kind, i + 1)]
        size_before = os.path.getsize(tmp)
        try:
            sink.write(batch)
        except OSError as exc:
            failure = exc.errno
            cut_back = rolled_back(sink, kind, tmp, size_before)
            try:
                sink.write(batch)                        # still too big: fails again
                again = None
            except OSError as exc2:
                again = exc2.errno
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
            sink.write(batch)                            # the condition cleared
        written += [i, i + 1]
        i += 2
    sink.close()
    print(json.dumps({"failure": failure, "again": again, "cut_back": cut_back,
                      "written": written, "stats": sink.stats()}))
""")


@pytest.mark.parametrize("kind", KINDS)
def test_file_size_limit_efbig(tmp_path, kind):
    out = subprocess.run(
        [sys.executable, "-c", SIZE_LIMITED_WRITER, kind, str(tmp_path / f"x-{{seq}}.{kind}")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["failure"] == errno.EFBIG and result["again"] == errno.EFBIG
    assert result["cut_back"]
    assert len(result["written"]) > 3                   # some flushes went through first
    assert files_ids(kind, tmp_path) == result["written"]
    stats = result["stats"]
    assert stats["errors"] == 2 and "EFBIG" in stats["last_error"]
    assert stats["records"] == len(result["written"]) and stats["lost_records"] == 0


# ----------------------------------------------------------------------
# ENOSPC: a small tmpfs


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    with small_tmpfs(tmp_path / "fs", "2m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("kind", KINDS)
def test_full_file_system_enospc(small_fs, kind):
    # Long text lines, so that a few pages hold only a few dozen records.
    padding = {"template": "{chunk_id} " + "-" * 200} if kind == "text" else {}
    sink = make(kind, small_fs / "out" / f"x-{{seq}}.{kind}", **padding)
    ballast = small_fs / "ballast"
    written, failure, i = [], None, 0
    while failure is None:
        batch = [make_record(kind, i), make_record(kind, i + 1)]
        tmp = sink.checkpoint()["file"]["tmp"] if i else None
        size_before = os.path.getsize(tmp) if tmp else 0
        try:
            sink.write(batch)
        except OSError as exc:
            failure = exc.errno
            # Data of the failed flush was cut back, not left on the full disk.
            assert tmp is not None and rolled_back(sink, kind, tmp, size_before)
            with pytest.raises(OSError):
                sink.write(batch)                        # still full
            assert rolled_back(sink, kind, tmp, size_before)
            ballast.unlink()                              # an operator frees space
            sink.write(batch)
        written += [i, i + 1]
        i += 2
        if i == 2:                                        # leave room for a few flushes
            room = (8 << 10) if kind == "text" else (600 << 10)
            ballast.write_bytes(b"\0" * (shutil.disk_usage(small_fs).free - room))
        assert i < 200
    sink.close()
    assert failure == errno.ENOSPC
    assert files_ids(kind, small_fs / "out") == written
    stats = sink.stats()
    assert stats["errors"] == 2 and "ENOSPC" in stats["last_error"]
    assert stats["lost_records"] == 0 and stats["records"] == len(written)


# ----------------------------------------------------------------------
# A directory removed while a file in it is written


@pytest.mark.parametrize("kind", KINDS)
def test_vanished_directory_is_recreated_and_its_records_counted(tmp_path, kind):
    sink = make(kind, tmp_path / "out" / "day" / f"x-{{seq}}.{kind}")
    sink.write([make_record(kind, 0), make_record(kind, 1)])
    shutil.rmtree(tmp_path / "out")                      # e.g. a cleanup job gone wrong
    sink.write([make_record(kind, 2)])                  # no exception: a new file
    sink.write([make_record(kind, 3)])
    sink.close()
    assert files_ids(kind, tmp_path / "out") == [2, 3]
    stats = sink.stats()
    assert stats["lost_records"] == 2 and stats["errors"] == 1
    assert "vanished" in stats["last_error"] and stats["records"] == 4


def test_directory_removed_between_finish_and_rename_is_counted(tmp_path, monkeypatch):
    sink = make("binary", tmp_path / "out" / "x-{seq}.bin")
    sink.write([make_record("binary", 0)])
    real_link = os.link

    def link_after_rmtree(src, dst, *args, **kwargs):
        shutil.rmtree(tmp_path / "out")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link_after_rmtree)
    sink.close()                                         # never raises
    stats = sink.stats()
    assert stats["unfinished_files"] == 0 and stats["files"] == 0
    assert stats["lost_records"] == 1 and "vanished" in stats["last_error"]


def test_a_pending_file_removed_before_it_is_published_is_counted(tmp_path):
    sink = make("binary", tmp_path / "x-{seq}.bin", rotate_bytes=1, fsync="never")
    sink.write([make_record("binary", i) for i in range(3)])   # a file each: 2 pending
    os.unlink(tmp_path / "x-0.bin.tmp")
    sink.sync()                                          # no raise: counted and forgotten
    assert [p["final"] for p in sink.checkpoint()["pending"]] == [str(tmp_path / "x-1.bin")]
    os.unlink(tmp_path / "x-1.bin.tmp")
    sink.commit()
    sink.close()
    stats = sink.stats()
    assert (stats["lost_records"], stats["unfinished_files"], stats["files"]) == (2, 0, 1)
    assert "vanished before it could be renamed" in stats["last_error"]
    assert files_ids("binary", tmp_path) == [2]


# ----------------------------------------------------------------------
# Permission denied (root ignores mode bits: an immutable or read-only directory)


@contextlib.contextmanager
def immutable(directory):
    try:
        subprocess.run(["chattr", "+i", str(directory)], check=True, capture_output=True,
                       timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chattr +i is not available here ({exc})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=False, timeout=10)


@contextlib.contextmanager
def read_only_bind(directory):
    try:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot bind-mount here ({exc})")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True,
                       capture_output=True, timeout=10)
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, timeout=10)


@pytest.mark.parametrize("lock, code", [(immutable, errno.EPERM),
                                        (read_only_bind, errno.EROFS)])
@pytest.mark.parametrize("kind", ["binary", "hdf5"])
def test_unwritable_directory_then_writable(tmp_path, kind, lock, code):
    out = tmp_path / "out"
    out.mkdir()
    sink = make(kind, out / f"x-{{seq}}.{kind}", rotate_bytes=1)   # a file per record
    sink.write([make_record(kind, 0)])
    with lock(out):
        with pytest.raises(OSError) as info:
            sink.write([make_record(kind, 1)])          # file 0 done, file 1 cannot be made
        assert info.value.errno in (code, errno.EACCES)
        assert sink.stats()["errors"] >= 1
    sink.write([make_record(kind, 1)])
    sink.close()
    assert files_ids(kind, out) == [0, 1]
    assert sink.stats()["lost_records"] == 0 and sink.stats()["unfinished_files"] == 0


def test_rename_refused_keeps_the_file_until_it_can_be_renamed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sink = make("binary", out / "x-{seq}.bin")
    sink.write([make_record("binary", 0)])
    with immutable(out):
        sink.close()                                     # does not raise
        assert sorted(p.name for p in out.iterdir()) == ["x-0.bin.tmp"]
        stats = sink.stats()
        assert stats["unfinished_files"] == 1 and stats["errors"] >= 1
        assert "EPERM" in stats["last_error"]
    sink.close()
    assert files_ids("binary", out) == [0] and sink.stats()["files"] == 1


def test_a_refused_rename_does_not_fail_writes_elsewhere(tmp_path):
    sink = make("binary", tmp_path / "{seq}" / "x.bin", rotate_bytes=1)
    sink.write([make_record("binary", 0)])
    with immutable(tmp_path / "0"):
        sink.write([make_record("binary", 1)])          # file 0 finished, pending
        sink.commit()                                    # cannot be renamed: no raise
        assert sink.stats()["unfinished_files"] == 1 and "EPERM" in sink.stats()["last_error"]
        assert (tmp_path / "0" / "x.bin.tmp").exists()
        assert [p["tmp"] for p in sink.checkpoint()["pending"]] == \
            [str(tmp_path / "0" / "x.bin.tmp")]       # recovery would publish it
    sink.write([make_record("binary", 2)])
    sink.commit()                                        # renamed now, with file 1
    assert sink.stats()["files"] == 2 and sink.stats()["unfinished_files"] == 0
    sink.close()
    assert files_ids("binary", tmp_path) == [0, 1, 2]
    assert sink.stats()["files"] == 3 and sink.stats()["unfinished_files"] == 0


# ----------------------------------------------------------------------
# Errors that cannot be produced for real on demand (EIO), by substitution


def test_io_error_with_a_failed_cut_back_is_repaired_by_the_next_write(tmp_path, monkeypatch):
    sink = make("binary", tmp_path / "x-{seq}.bin")
    sink.write([make_record("binary", 0)])
    good = sink.checkpoint()["file"]
    real_pwritev = os.pwritev

    def half_then_eio(fd, buffers, offset):
        real_pwritev(fd, [memoryview(buffers[0]).cast("B")[:1000]], offset)
        raise OSError(errno.EIO, "Input/output error")

    def ftruncate_eio(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwritev", half_then_eio)
    monkeypatch.setattr(os, "ftruncate", ftruncate_eio)
    with pytest.raises(OSError):
        sink.write([make_record("binary", 1)])
    assert os.path.getsize(good["tmp"]) == good["bytes"] + 1000     # partial bytes remain...
    assert sink.checkpoint()["file"] == good                      # ...but are not counted
    with pytest.raises(OSError):
        sink.sync()                                      # cannot reopen yet: still failing
    monkeypatch.undo()
    sink.write([make_record("binary", 1)])               # reopens, cuts back, writes
    sink.close()
    assert files_ids("binary", tmp_path) == [0, 1]


@pytest.mark.parametrize("kind", ["binary", "hdf5"])
def test_fsync_failure_fails_the_flush_and_keeps_nothing(tmp_path, monkeypatch, kind):
    sink = make(kind, tmp_path / f"x-{{seq}}.{kind}", fsync="every-flush")
    sink.write([make_record(kind, 0)])

    def fsync_eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync_eio)
    with pytest.raises(OSError):
        sink.write([make_record(kind, 1), make_record(kind, 2)])
    with pytest.raises(OSError):
        sink.sync()
    monkeypatch.undo()
    sink.write([make_record(kind, 1), make_record(kind, 2)])
    sink.close()
    assert files_ids(kind, tmp_path) == [0, 1, 2]
    assert sink.stats()["errors"] == 2


def test_hdf5_file_that_cannot_be_reopened_is_given_up_and_counted(tmp_path, monkeypatch):
    sink = make("hdf5", tmp_path / "x-{seq}.hdf5")
    sink.write([make_record("hdf5", 0), make_record("hdf5", 1)])
    tmp = sink.checkpoint()["file"]["tmp"]

    def damage(self, f, pieces):
        f.handle.close()
        with open(tmp, "r+b") as raw:
            raw.write(b"\0" * 512)                        # what a failed write may leave
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(type(sink), "_append", damage)
    with pytest.raises(OSError):
        sink.write([make_record("hdf5", 2)])
    monkeypatch.undo()
    sink.write([make_record("hdf5", 2)])                 # a new file
    sink.close()
    stats = sink.stats()
    assert stats["lost_records"] == 2 and "cannot be reopened" in stats["last_error"]
    assert read_ids("hdf5", str(tmp_path / "x-1.hdf5")) == [2]
    assert os.path.exists(tmp)                           # left for an operator, not published


def test_packet_record_helper_is_what_pcap_reads_back(tmp_path):
    sink = make("pcap", tmp_path / "x.pcap")
    sink.write([make_record("pcap", 7), PacketRecord(b"", np.zeros(0, np.uint32))])
    sink.close()
    assert read_ids("pcap", str(tmp_path / "x.pcap")) == [7]


def test_chunk_record_helper_is_what_binary_reads_back(tmp_path):
    sink = make("binary", tmp_path / "x.bin")
    sink.write([make_record("binary", 5)])
    sink.close()
    assert read_ids("binary", str(tmp_path / "x.bin")) == [5]
    assert isinstance(make_record("text", 1), ChunkRecord)
