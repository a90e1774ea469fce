"""`file:` sources read through a mapping (issue 16, item 5).

A regular file is read by `ByteStreamReader(fd, mapped=True)`: the cutter
works on the mapping itself, a window at a time.  It must hand out exactly
what the read() reader hands out (packets, counters, chunks), and survive the
file being truncated under it: a page beyond the new end raises SIGBUS, which
daqd's handler turns into zero pages, the reader ending at the new size with
``file_bytes_truncated``.  A SIGBUS that is not about a mapped file still
reaches the handler before daqd's (faulthandler) and kills the process.

The truncations run in a child process: were the guard broken, SIGBUS would
kill the test run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from daqd import _spead
from daqd.recv.sources import open_source
from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.params import HEAPS_PER_CHUNK, MAX_CHUNKS, MAX_HEAPS, POOL

MAP_WINDOW = 4 << 20        # readers.pxi's window; the files below span several
ROOT = Path(__file__).resolve().parents[2]


def build_file(path: Path, workload: str, heaps: int) -> int:
    """Write `heaps` heaps of `workload` to `path` as a byte stream; return its size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _spead.send(_spead.SimReader(workload, heaps=heaps, batch=256), fd, "stream")
    finally:
        os.close(fd)
    return path.stat().st_size


def open_reader(path: Path, mapped: bool):
    f = open(path, "rb")                    # kept (and closed) by the reader
    reader = _spead.ByteStreamReader(f.fileno(), mapped=mapped)
    reader.keep(f)
    return reader


def read_all(reader) -> tuple[list[bytes], dict[str, int], list[int]]:
    """Every batch's packets, the summed counters and the batch sizes."""
    packets: list[bytes] = []
    totals: dict[str, int] = {}
    sizes = []
    while (batch := reader.read_batch()) is not None:
        packets.extend(batch[0])
        sizes.append(len(batch[0]))
        for name, value in batch[1].items():
            totals[name] = totals.get(name, 0) + value
    return packets, {k: v for k, v in totals.items() if v}, sizes


def chunks_of(workload: str, reader) -> tuple[list[tuple[int, str, bytes]], dict[str, int]]:
    """Run a ChunkStream over `reader`: each chunk (id, data digest, present), the counters."""
    layout = WORKLOADS[workload].layout(HEAPS_PER_CHUNK)
    stream = _spead.ChunkStream(**layout, max_chunks=MAX_CHUNKS, pool=POOL, max_heaps=MAX_HEAPS)
    out = []
    for chunk in stream.chunks(reader):
        out.append((chunk.chunk_id, hashlib.sha256(np.asarray(chunk.data)).hexdigest(),
                    bytes(np.asarray(chunk.present))))
        chunk.release()
    return out, stream.stats()


@pytest.mark.parametrize("workload", ["W1", "W2", "W3"])
def test_mapped_and_read_give_the_same_chunks_and_counters(tmp_path, workload):
    w = WORKLOADS[workload]
    heaps = HEAPS_PER_CHUNK * max(3, (3 * MAP_WINDOW) // (HEAPS_PER_CHUNK * w.packets_per_heap
                                                          * w.packet_size) + 1)
    path = tmp_path / f"{workload}.spead"
    size = build_file(path, workload, heaps)
    assert size > 2 * MAP_WINDOW            # several windows, packets across their edges
    read = open_reader(path, mapped=False)
    mapped = open_reader(path, mapped=True)
    try:
        assert mapped.mapped and not read.mapped
        by_read, read_stats = chunks_of(workload, read)
        by_map, map_stats = chunks_of(workload, mapped)
        assert mapped.progress() == (size, size)
        assert mapped.truncation is None
    finally:
        read.close()
        mapped.close()
    assert len(by_map) == heaps // HEAPS_PER_CHUNK
    assert by_map == by_read
    assert map_stats == read_stats
    assert map_stats["bytes"] == size and map_stats["file_bytes_truncated"] == 0


def garbled_stream(tmp_path: Path) -> bytes:
    """W1 packets with garbage between some (one run across a window's edge) and the
    last packet cut short."""
    clean = tmp_path / "clean.spead"
    build_file(clean, "W1", 80 * 8)         # 5.3 MB: two windows
    data = clean.read_bytes()
    size = WORKLOADS["W1"].packet_size
    packets = [data[i:i + size] for i in range(0, len(data), size)]
    rng = random.Random(16)
    out = bytearray()
    for k, packet in enumerate(packets):
        if k % 37 == 5 or MAP_WINDOW - 3 * size < len(out) < MAP_WINDOW:
            out += bytes(rng.randrange(0x54, 0x100) for _ in range(rng.randrange(1, 300)))
        out += packet
    return bytes(out[:-1000])               # the last packet cut off by the end


def test_mapped_and_read_agree_on_garbage_and_a_cut_last_packet(tmp_path):
    path = tmp_path / "garbled.spead"
    data = garbled_stream(tmp_path)
    path.write_bytes(data)
    packets, heaps, counters = {}, {}, {}
    for way in ("read", "mapped", "memory"):
        reader = _spead.ByteStreamReader(data) if way == "memory" else \
            open_reader(path, way == "mapped")
        packets[way] = read_all(reader)[0]
        reader.close()
        reader = _spead.ByteStreamReader(data) if way == "memory" else \
            open_reader(path, way == "mapped")
        stream = _spead.HeapStream()
        heaps[way] = [(h.cnt, h.complete) for h in stream.run(reader)]
        counters[way] = stream.stats()
        reader.close()
    assert packets["mapped"] == packets["read"] == packets["memory"]
    assert heaps["mapped"] == heaps["read"] == heaps["memory"]
    assert counters["mapped"] == counters["read"]
    # From memory the batches are not cut at the read()/window size.
    in_batches = ("batches", "max_batch")
    assert {k: v for k, v in counters["memory"].items() if k not in in_batches} == \
        {k: v for k, v in counters["mapped"].items() if k not in in_batches}
    stats = counters["mapped"]
    assert stats["stream_bytes_skipped"] > 1000
    assert stats["packets_rejected_payload_length"] == 1      # the cut last packet
    assert stats["bytes"] + stats["stream_bytes_skipped"] == len(data)
    assert stats["file_bytes_truncated"] == 0


def test_an_empty_file_ends_at_once(tmp_path):
    path = tmp_path / "empty.spead"
    path.touch()
    reader = open_reader(path, mapped=True)
    try:
        assert reader.mapped and reader.finite
        assert reader.read_batch() is None
        assert reader.progress() == (0, 0) and reader.truncation is None
    finally:
        reader.close()


def test_only_a_regular_file_is_mapped(tmp_path):
    path = tmp_path / "w1.spead"
    build_file(path, "W1", 8)
    regular = open_source(f"file:{path}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["dd", f"if={path}", f"of={fifo}", "status=none"])
    piped = open_source(f"file:{fifo}")
    try:
        assert regular.reader.mapped and not piped.reader.mapped
        assert read_all(piped.reader)[0] == read_all(regular.reader)[0]
    finally:
        regular.close()
        piped.close()
        assert writer.wait(20) == 0
    with pytest.raises(ValueError, match="only a regular file can be mapped"):
        _spead.ByteStreamReader(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), mapped=True)


def test_a_file_that_says_it_is_empty_is_read():
    """``/proc`` files say they hold 0 bytes: read() finds their bytes (not SPEAD)."""
    source = open_source("file:/proc/self/status")
    try:
        assert not source.reader.mapped
        stream = _spead.HeapStream()
        stream.run(source.reader)
        assert stream.stats()["stream_bytes_skipped"] > 100
    finally:
        source.close()


def run_child(code: str, timeout: float = 120,
              faulthandler: bool = True) -> subprocess.CompletedProcess:
    """Run `code` in a child Python with daqd importable; its result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONFAULTHANDLER", None)
    if faulthandler:
        env["PYTHONFAULTHANDLER"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


TRUNCATE = """
    import json, os
    from daqd import _spead
    path, heaps, cut_at, reads = {args}
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    _spead.send(_spead.SimReader("W1", heaps=heaps, batch=256), fd, "stream")
    os.close(fd)
    size = os.path.getsize(path)
    other = path + ".other"                 # a second mapped file, left alone
    with open(other, "wb") as f:
        f.write(open(path, "rb").read(1 << 20))
    readers = [_spead.ByteStreamReader(os.open(p, os.O_RDONLY), mapped=True)
               for p in (path, other)]
    before = sum(len(readers[0].read_batch()[0]) for _ in range(reads))
    os.truncate(path, cut_at)
    stream = _spead.HeapStream()            # the rest, every counter kept
    stream.run(readers[0])
    totals = stream.stats()
    other_packets = 0
    while (batch := readers[1].read_batch()) is not None:
        other_packets += len(batch[0])
    print(json.dumps({{"size": size, "before": before, "stats": totals,
                      "truncation": readers[0].truncation, "progress": readers[0].progress(),
                      "other": [other_packets, readers[1].truncation]}}))
"""


@pytest.mark.parametrize(("heaps", "cut_at", "reads", "exact"), [
    # Inside the window being cut: the packet across the new end was cut from its
    # header, which was still there; its payload faults when it is copied (SIGBUS)
    # and reads zeros, and the file ends after it.
    (640, 1 << 20, 1, False),
    (2400, 2 << 20, 20, True),      # behind the cutter: what was handed out stays
    (2400, (MAP_WINDOW * 2) + 100, 1, True),    # beyond the window: seen at the next (fstat)
    (640, 0, 3, True),              # to nothing, part way through (the next header faults)
])
def test_a_file_truncated_while_mapped_ends_there_counted(tmp_path, heaps, cut_at, reads,
                                                          exact):
    path = tmp_path / "w1.spead"
    done = run_child(TRUNCATE.format(args=f"{str(path)!r}, {heaps}, {cut_at}, {reads}"))
    assert done.returncode == 0, done.stderr
    assert "Fatal Python error" not in done.stderr
    got = json.loads(done.stdout)
    size, stats = got["size"], got["stats"]
    packet = WORKLOADS["W1"].packet_size
    handed = max(cut_at, got["before"] * packet)        # the end, or what was cut before it
    end = got["truncation"][1]
    assert got["truncation"][0] == size
    if exact:
        assert end == handed
    else:
        assert handed < end < handed + packet
    assert stats["file_bytes_truncated"] == size - end
    assert got["progress"] == [end, end]                # read to where its bytes end
    packets = got["before"] + stats["packets"]
    assert packets == end // packet
    # Every byte of the file as opened is accounted for, once.
    assert packets * packet + stats["stream_bytes_skipped"] \
        + stats["file_bytes_truncated"] == size
    assert got["other"] == [(1 << 20) // packet, None]  # the other mapping untouched


SIGBUS_NOT_OURS = """
    import faulthandler, mmap, os
    from daqd import _spead
    if {faulthandler}:
        faulthandler.enable()
    path = {path!r}
    for name in (path, path + ".ours"):
        with open(name, "wb") as f:
            f.write(b"x" * (1 << 20))
    ours = _spead.ByteStreamReader(os.open(path + ".ours", os.O_RDONLY), mapped=True)
    f = open(path, "rb")
    theirs = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)    # not a reader's
    os.truncate(path, 4096)
    print("before", flush=True)
    theirs[900000]                          # SIGBUS, for an address daqd does not know
    print("survived", flush=True)
"""


def test_a_sigbus_not_about_a_mapped_file_reaches_faulthandler(tmp_path):
    done = run_child(SIGBUS_NOT_OURS.format(path=str(tmp_path / "x.bin"), faulthandler=True))
    assert done.stdout.split() == ["before"]
    assert done.returncode != 0
    assert "Fatal Python error: Bus error" in done.stderr


def test_without_faulthandler_a_sigbus_not_ours_kills_as_before(tmp_path):
    done = run_child(SIGBUS_NOT_OURS.format(path=str(tmp_path / "x.bin"), faulthandler=False),
                     faulthandler=False)
    assert done.stdout.split() == ["before"]
    assert done.returncode == -signal.SIGBUS            # the default action
    assert "Fatal Python error" not in done.stderr


def test_a_reader_closed_part_way_ends_there(tmp_path):
    """close() lets the file go at once (zero pages over it; unmapped when the
    reader goes): the reader ends where it was, a stream over it too."""
    path = tmp_path / "w1.spead"
    build_file(path, "W1", 1000)
    reader = open_reader(path, mapped=True)
    first = reader.read_batch()
    assert len(first[0]) == 64
    done = reader.progress()[0]
    reader.close()
    assert reader.read_batch() is None
    assert reader.progress()[0] == done
    stream = _spead.HeapStream()
    assert stream.run(reader) == []
    del reader
