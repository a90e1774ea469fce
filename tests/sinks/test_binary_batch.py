"""The binary sink writes a flush's records in one call as N calls of one would.

A flush hands the sink a slice of records at once (``write(records)``): the
sink cuts it into files where rotation says (bytes, capture blocks), writes
each file's part with one ``pwritev`` and counts per record.  These cases
compare one write of N records with N writes of one, byte for byte and
counter for counter; make a short write for real (a file size limit,
``RLIMIT_FSIZE``, in a child process: the kernel writes up to the limit and
returns a short count, then refuses); and check what a buffer counts for a
binary sink that fails for real and then recovers.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.datatime import CaptureBlock
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink
from daqd.sinks.base import write_all

HPC, HEAP_BYTES = 4, 1024
RECORD_BYTES = HPC * HEAP_BYTES
CHUNK = ChunkConfig(timestamp_item=0x1600, timestamp_step=HEAP_BYTES, heaps_per_chunk=HPC,
                    heap_bytes=HEAP_BYTES)
WALL = 1796601700.25


def record(i: int, block: CaptureBlock | None = None) -> ChunkRecord:
    """Chunk record `i`: every data byte is ``i % 251``."""
    return ChunkRecord(i, i * HPC * HEAP_BYTES, np.full((HPC, 1, HEAP_BYTES), i % 251, np.uint8),
                       np.ones((HPC, 1), np.uint8), capture_block=block)


def sink_in(directory, **config):
    directory.mkdir()
    return make_sink(SinkContext("adc0", SinkConfig("binary", str(directory / "{stream}-{seq}.bin"),
                                                    **config),
                                 CHUNK, wall_clock=lambda: WALL))


def outcome(sink, directory):
    """Every file's name and bytes, the sink's counters and checkpoint (names relative)."""
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    stats = {k: v for k, v in sink.stats().items()
             if k not in ("name", "current_file", "last_file")}
    return files, stats, json.dumps(sink.checkpoint()).replace(str(directory), "DIR")


BLOCKS = [CaptureBlock("a", 0, None), CaptureBlock("b", 40 * RECORD_BYTES, None)]
CASES = {
    "one file": ({}, lambda i: None),
    "rotate by bytes": ({"rotate_bytes": 4096 + 3 * RECORD_BYTES}, lambda i: None),
    "rotate, no header": ({"rotate_bytes": 2 * RECORD_BYTES + 1, "header": False},
                          lambda i: None),
    "capture blocks": ({}, lambda i: BLOCKS[0] if i < 5 else None if i < 7 else BLOCKS[1]),
    "blocks and bytes": ({"rotate_bytes": 4096 + 2 * RECORD_BYTES},
                         lambda i: BLOCKS[0] if i < 6 else BLOCKS[1]),
}


@pytest.mark.parametrize("case", CASES)
def test_one_write_of_many_is_many_writes_of_one(tmp_path, case):
    config, block_of = CASES[case]
    records = [record(i, block_of(i)) for i in range(13)]
    batched, single = sink_in(tmp_path / "batched", **config), sink_in(tmp_path / "single",
                                                                        **config)
    batched.write(records[:1])
    batched.write(records[1:])                  # a file is open: the batch goes on in it
    for r in records:
        single.write([r])
    assert outcome(batched, tmp_path / "batched") == outcome(single, tmp_path / "single")
    batched.close()
    single.close()
    files, stats, _ = outcome(batched, tmp_path / "batched")
    assert (files, stats) == outcome(single, tmp_path / "single")[:2]
    assert stats["records"] == 13 and stats["bytes"] == 13 * RECORD_BYTES
    data = b"".join(body[4096:] if config.get("header", True) else body
                    for body in files.values())
    assert data == b"".join(r.data.tobytes() for r in records)


def test_write_all_more_buffers_than_iov_max_in_order(tmp_path):
    """More buffers than one pwritev takes: written in order, in several calls."""
    buffers = [bytes([i % 256]) * (i % 7) for i in range(2500)]    # empty ones too
    path = tmp_path / "many"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        total = sum(map(len, buffers))
        assert write_all(fd, buffers, 10, total) == total
        assert write_all(fd, [b"x"], 0) == 1
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" + b"\0" * 9 + b"".join(buffers)


SHORT_WRITE = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np
    from daqd.sinks.base import write_all

    path, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of a signal
    buffers = [np.full(4096, i, np.uint8) for i in range(1, 5)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    first = os.pwritev(fd, [b"ab"], 0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    short = os.pwritev(fd, buffers, 2)                  # what the kernel does at the limit
    os.ftruncate(fd, 2)
    try:
        write_all(fd, buffers, 2, 4 * 4096)
        error = None
    except OSError as exc:
        error = exc.errno
    size = os.fstat(fd).st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    again = write_all(fd, buffers, 2, 4 * 4096)
    os.close(fd)
    print(json.dumps({"short": short, "error": error, "size": size, "again": again}))
""")


def test_a_short_write_goes_on_where_it_stopped(tmp_path):
    """A real short write (a file size limit): the rest is tried at once, from where the
    kernel stopped, and its failure raised; with room, the same call writes it all."""
    path = tmp_path / "limited"
    limit = 2 + 2 * 4096 + 1000                 # two buffers and part of the third
    done = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(path), str(limit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["short"] == limit - 2                 # the kernel wrote up to the limit
    assert result["error"] == errno.EFBIG               # the rest was refused, not dropped
    assert result["size"] == limit                      # everything up to the limit, written
    assert result["again"] == 4 * 4096
    blob = path.read_bytes()
    assert blob == b"ab" + b"".join(bytes([i]) * 4096 for i in range(1, 5))


FAILING_SINK = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np
    from daqd.config import ChunkConfig, SinkConfig
    from daqd.pipeline.buffers import Buffer
    from daqd.pipeline.records import ChunkRecord
    from daqd.sinks import SinkContext, make_sink

    directory, record_bytes = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    chunk = ChunkConfig(heaps_per_chunk=4, heap_bytes=record_bytes // 4)
    sink = make_sink(SinkContext("adc0", SinkConfig("binary", directory + "/{stream}.bin"),
                                 chunk))
    buffer = Buffer("fifo", 32, "drop-newest", flush_slice=4)
    buffer.set_primary_sink(sink)
    buffer.recover()
    releases = []

    def put(i):
        data = np.full((4, 1, record_bytes // 4), i, np.uint8)
        assert buffer.put(ChunkRecord(i, i, data, np.ones((4, 1), np.uint8),
                                      _release=lambda: releases.append(i)))

    out = {}
    for i in range(3):
        put(i)
    buffer.flush_now("first")                           # the file has a header and 3 records
    tmp = sink.checkpoint()["file"]["tmp"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(tmp) + 5 * record_bytes // 2,
                                               resource.RLIM_INFINITY))
    for i in range(3, 13):
        put(i)
    out["flushed"] = buffer.flush_now("limited")        # 10 records: slices of 4, 4 and 2
    out["failing"] = buffer.stats()
    out["size"] = os.path.getsize(tmp)
    out["released"] = sorted(releases)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    out["again"] = buffer.flush_now("room")
    out["after"] = buffer.stats()
    out["sink"] = sink.stats()
    out["released_after"] = sorted(releases)
    buffer.close()
    sink.close()
    print(json.dumps(out))
""")


def test_a_binary_sink_failing_for_real_counts_per_record(tmp_path):
    """A file size limit mid-flush: the slice that fails is cut back and held (none of
    it counted written), the flush stops writing to the sink, and the next flush writes
    what was held, counted record by record."""
    record_bytes = 4 * 4096
    done = subprocess.run([sys.executable, "-c", FAILING_SINK, str(tmp_path), str(record_bytes)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])     # (after the buffer's log lines)
    failing = out["failing"]["sinks"][next(iter(out["failing"]["sinks"]))]
    # The first slice (records 3-6) passed the limit: cut back, nothing of the flush written.
    assert out["flushed"] == 0 and out["released"] == [0, 1, 2]
    assert failing["written"] == 3 and failing["bytes"] == 3 * record_bytes
    assert failing["errors"] == 1 and failing["failing"]
    assert "File too large" in failing["last_error"]
    assert failing["backlog"] == 10 and failing["lost"] == 0
    assert out["size"] == 4096 + 3 * record_bytes       # cut back to where it stood
    assert out["failing"]["records_flushed"] == 3 and out["failing"]["size"] == 10
    after = out["after"]["sinks"][next(iter(out["after"]["sinks"]))]
    assert out["again"] == 10 and out["released_after"] == list(range(13))
    assert after["written"] == 13 and after["bytes"] == 13 * record_bytes
    assert after["errors"] == 1 and not after["failing"] and after["backlog"] == 0
    assert out["after"]["records_flushed"] == 13
    assert out["after"]["bytes_flushed"] == 13 * record_bytes
    assert out["sink"]["records"] == 13 and out["sink"]["errors"] == 1
    files = list(tmp_path.glob("*.bin"))
    assert len(files) == 1
    blob = files[0].read_bytes()[4096:]
    assert blob == b"".join(bytes([i]) * record_bytes for i in range(13))
