"""The clock and the observation in every output file (issue 13, item 4).

A real daemon with ``[stream.time]`` and the built-in simulator writes HDF5,
binary and text files whose UTC is ``sync_time + timestamp / timestamp_rate``
for every record; sinks built by `build_sinks` from a parsed configuration
start a file per capture block, exactly, whatever the flush boundaries; the
written span survives a rollback and a crash; the descriptors spead2 sent are
in the files.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_helpers import DaemonProcess, write_config

from daqd.config import parse
from daqd.pipeline.datatime import CaptureBlock
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.sinks import build_sinks, recover_sink
from daqd.sinks.binary import load, read_header

HPC = 8
STEP = 8192
CHUNK_TICKS = HPC * STEP
SYNC = "2026-12-07T00:00:00Z"
SYNC_UNIX = 1796601600                       # the same, in Unix seconds
RATE = 1712e6
CHUNKS = 8


def exact_utc(ticks: int) -> float:
    """UTC of `ticks` computed exactly, then rounded once (what the files must hold)."""
    return float(SYNC_UNIX + Fraction(ticks) / Fraction(repr(RATE)))


# ----------------------------------------------------------------------
# The daemon, the simulator, [stream.time]


@pytest.fixture(scope="module")
def daemon_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("obs")
    cfg = write_config(tmp, f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"

[zmq]
stats = ""
control = ""

[[stream]]
name = "adc0"
sources = ["sim:W1?heaps={HPC * CHUNKS}"]

[stream.time]
sync_time = "{SYNC}"
timestamp_rate = {RATE}

[stream.chunk]
heaps_per_chunk = {HPC}
heap_bytes = 8192
timestamp_step = {STEP}
max_chunks = 2
pool = 16

[stream.buffer]
kind = "fifo"
capacity = 64

[[stream.sinks]]
kind = "hdf5"
path = "{tmp}/data/{{stream}}-{{capture_block}}.h5"

[[stream.sinks]]
kind = "binary"
path = "{tmp}/data/{{stream}}.bin"

[[stream.sinks]]
kind = "text"
path = "{tmp}/data/{{stream}}.txt"
template = "{{chunk_id}} {{timestamp}} {{utc:%Y-%m-%dT%H:%M:%S.%f}} {{capture_block}}"
""")
    daemon = DaemonProcess(cfg)
    try:
        assert daemon.wait() == 0, "\n".join(daemon.lines[-20:])    # a finite source
    finally:
        daemon.close()
    return tmp / "data"


def startup_block(daemon_files: Path) -> str:
    """The id of the capture block the daemon opened at startup (its start, Unix seconds)."""
    (path,) = daemon_files.glob("adc0-*.h5")
    block = path.stem.removeprefix("adc0-")
    assert block.isdigit(), path
    return block


def test_hdf5_utc_is_the_clock_of_every_record(daemon_files):
    block = startup_block(daemon_files)
    with h5py.File(daemon_files / f"adc0-{block}.h5") as h5:    # the block open at startup
        ts = h5["timestamp"][:].tolist()
        assert len(ts) == CHUNKS and ts == sorted(ts)
        assert h5["utc"].dtype == np.float64 and h5["utc"].shape == (CHUNKS,)
        assert h5["utc"][:].tolist() == [exact_utc(t) for t in ts]
        attrs = dict(h5.attrs)
    assert attrs["sync_time"] == SYNC_UNIX and attrs["timestamp_rate"] == RATE
    assert (attrs["written_start"], attrs["written_end"]) == (ts[0], ts[-1] + CHUNK_TICKS)
    assert attrs["written_start_utc"] == exact_utc(ts[0])
    assert attrs["written_end_utc"] == exact_utc(ts[-1] + CHUNK_TICKS)
    assert (attrs["capture_block_id"], attrs["capture_stop"]) == (block, -1)
    assert json.loads(attrs["spead_descriptors"]) == []      # chunk mode keeps none (yet)


def test_binary_header_has_the_clock_and_the_written_span(daemon_files):
    meta, data = load(str(daemon_files / "adc0.bin"))
    assert len(data) == CHUNKS
    block = startup_block(daemon_files)
    with h5py.File(daemon_files / f"adc0-{block}.h5") as h5:
        ts = h5["timestamp"][:].tolist()
    assert meta["sync_time"] == SYNC_UNIX and meta["timestamp_rate"] == RATE
    # The header was rewritten in place when the file was finished, at its size.
    assert (meta["written_start"], meta["written_end"]) == (ts[0], ts[-1] + CHUNK_TICKS)
    assert meta["written_end_utc"] == exact_utc(ts[-1] + CHUNK_TICKS)
    assert meta["header_bytes"] % 4096 == 0 and meta["spead_descriptors"] == []
    assert meta["capture_block_id"] == block
    from daqd.tools.chunkfile import open_chunk_file

    with open_chunk_file(str(daemon_files / "adc0.bin")) as f:      # what daqd plot reads
        assert (f.sync_time, f.timestamp_rate) == (SYNC_UNIX, RATE)


def test_text_utc_field_and_clock_line(daemon_files):
    lines = (daemon_files / "adc0.txt").read_text().splitlines()
    assert lines[0] == f"# sync_time={float(SYNC_UNIX)!r} timestamp_rate={RATE!r}"
    assert lines[1] == "# chunk_id timestamp utc capture_block"
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == CHUNKS
    for _, ts, utc, block in rows:
        want = dt.datetime.fromtimestamp(exact_utc(int(ts)), dt.UTC)
        assert utc == want.strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert block == startup_block(daemon_files)


@pytest.mark.parametrize("kind", ["hdf5", "binary"])
def test_an_event_sinks_metadata_goes_into_its_files(tmp_path, kind):
    from daqd.sinks import SinkContext, make_sink

    stream = parse(config_text(tmp_path)).streams[0]
    (section,) = [s for s in stream.sinks if s.kind == kind]
    event = {"trigger_label": "frb-123", "trigger_start": 24, "trigger_end": 40,
             "records_missing": 0, "note": None}
    sink = make_sink(SinkContext.for_stream(stream, section, metadata=event))
    sink.write([chunk(i, None) for i in (3, 4)])
    sink.close()
    (path,) = [p for p in tmp_path.rglob(f"*.{'h5' if kind == 'hdf5' else 'bin'}")]
    if kind == "hdf5":
        with h5py.File(path) as h5:
            meta = dict(h5.attrs)
        assert "note" not in meta                                   # None: no attribute
    else:
        meta = read_header(str(path))
        assert meta["note"] is None
    assert {k: meta[k] for k in event if k != "note"} == \
        {"trigger_label": "frb-123", "trigger_start": 24, "trigger_end": 40,
         "records_missing": 0}
    assert (meta["written_start"], meta["written_end"]) == (24, 40)


def test_utc_in_a_template_needs_the_clock(tmp_path):
    from daqd.config import ConfigError

    text = f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]
[stream.chunk]
heaps_per_chunk = 8
[[stream.sinks]]
kind = "text"
path = "{tmp_path}/{{stream}}.txt"
template = "{{chunk_id}} {{utc:%H:%M:%S}}"
"""
    with pytest.raises(ConfigError, match=r"\{utc\} needs the stream's clock"):
        parse(text)
    parse(text + f'[stream.time]\nsync_time = "{SYNC}"\ntimestamp_rate = {RATE}\n')


# ----------------------------------------------------------------------
# Capture blocks: one file per block, exact, whatever the flush boundaries


def config_text(tmp: Path, rotate: str = "") -> str:
    return f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]

[stream.time]
sync_time = "{SYNC}"
timestamp_rate = {RATE}

[stream.chunk]
heaps_per_chunk = 4
heap_bytes = 16
timestamp_step = 2

[[stream.sinks]]
kind = "hdf5"
path = "{tmp}/h5/{{stream}}-{{capture_block}}-{{seq}}.h5"
{rotate}

[[stream.sinks]]
kind = "binary"
path = "{tmp}/bin/{{capture_block}}/{{stream}}-{{seq}}.bin"
{rotate}

[[stream.sinks]]
kind = "text"
path = "{tmp}/txt/{{stream}}-{{capture_block}}-{{seq}}.txt"
template = "{{chunk_id}} {{capture_block}}"
"""


def chunk(i: int, block: CaptureBlock | None) -> ChunkRecord:
    return ChunkRecord(i, i * 8, np.full((4, 1, 16), i, np.uint8), np.ones((4, 1), np.uint8),
                       capture_block=block)


@pytest.mark.parametrize("flushes", [[4, 10], [1] * 14, [3, 4, 2, 5], [5, 1, 8]])
def test_a_file_per_capture_block_exactly(tmp_path, flushes):
    (tmp_path / "h5").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "txt").mkdir()
    stream = parse(config_text(tmp_path)).streams[0]
    sinks, _ = build_sinks(stream, "")
    a = CaptureBlock("cb-a", start=16)
    b = CaptureBlock("cb-b", start=64)
    blocks = [None, None, a, a, a, a, None, b, b, b, b, b, a, a]   # a again: a new file
    records = [chunk(i, blk) for i, blk in enumerate(blocks)]
    pos = 0
    for n in flushes:
        for sink in sinks:
            sink.write(records[pos:pos + n])
        if pos + n > 2 and a.stop is None:
            a.stop = 48             # set after block a's first file started, before it ends
        pos += n
    for sink in sinks:
        sink.close()
    want = [("none", [0, 1]), ("cb-a", [2, 3, 4, 5]), ("none", [6]),
            ("cb-b", [7, 8, 9, 10, 11]), ("cb-a", [12, 13])]
    h5_files = sorted((tmp_path / "h5").iterdir(), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    got = []
    for path in h5_files:
        with h5py.File(path) as h5:
            ids = h5["chunk_id"][:].tolist()
            block_id = h5.attrs.get("capture_block_id")
            assert path.name.startswith(f"adc0-{block_id or 'none'}-")
            assert (h5.attrs["written_start"], h5.attrs["written_end"]) == \
                (ids[0] * 8, ids[-1] * 8 + 8)
            assert h5["utc"][:].tolist() == [exact_utc(i * 8) for i in ids]
            if block_id == "cb-a":
                assert (h5.attrs["capture_start"], h5.attrs["capture_stop"]) == (16, 48)
                assert h5.attrs["capture_stop_utc"] == exact_utc(48)
            elif block_id == "cb-b":
                assert (h5.attrs["capture_start"], h5.attrs["capture_stop"]) == (64, -1)
                assert "capture_stop_utc" not in h5.attrs
            got.append((block_id or "none", ids))
    assert got == want
    bins = []
    for path in sorted((tmp_path / "bin").rglob("*.bin"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        meta, data = load(str(path))
        assert meta.get("capture_block_id", "none") == path.parent.name
        bins.append((path.parent.name, [int(r[0, 0, 0]) for r in data]))
    assert bins == want
    texts = []
    for path in sorted((tmp_path / "txt").iterdir(), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        rows = [line.split() for line in path.read_text().splitlines()
                if not line.startswith("#")]
        assert {r[1] for r in rows} == {path.stem.split("-", 1)[1].rsplit("-", 1)[0]}
        texts.append((rows[0][1], [int(r[0]) for r in rows]))
    assert texts == want


def test_capture_block_ids_name_one_file():
    from daqd.sinks.paths import PathTemplate

    template = PathTemplate("data/{stream}-{capture_block}.h5")
    assert template.render("adc0", 0, 0, 0, CaptureBlock("a/b")) == "data/adc0-a_b.h5"
    assert template.render("adc0", 0, 0, 0, None) == "data/adc0-none.h5"
    with pytest.raises(ValueError, match="unknown field"):
        PathTemplate("data/{capture_block}.pcap", ("stream", "start", "seq"))


# ----------------------------------------------------------------------
# The written span after a rollback and after a crash

def big_config(tmp: Path, kind: str) -> str:
    return f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]
[stream.chunk]
heaps_per_chunk = 4
heap_bytes = 65536
timestamp_step = 2
[[stream.sinks]]
kind = "{kind}"
path = "{tmp}/{{stream}}.{kind}"
"""


def written_span(kind: str, path: str) -> tuple[int, int]:
    if kind == "hdf5":
        with h5py.File(path) as h5:
            return int(h5.attrs["written_start"]), int(h5.attrs["written_end"])
    meta = read_header(path)
    return meta["written_start"], meta["written_end"]


@pytest.mark.parametrize("kind", ["binary", "hdf5"])
def test_a_rollback_keeps_the_written_span(tmp_path, kind):
    # Block x's file goes into the directory x, which is a file: its creation
    # fails after records 2 and 3 went into the current file, so the write is undone.
    text = big_config(tmp_path, kind).replace("{stream}.", "{capture_block}/{stream}.")
    sink = build_sinks(parse(text).streams[0], "")[0][0]
    x = CaptureBlock("x", start=72)
    rec = [ChunkRecord(i, i * 8, np.full((4, 1, 1 << 16), i, np.uint8), np.ones((4, 1), np.uint8),
                       capture_block=x if i == 9 else None) for i in range(10)]
    sink.write(rec[:2])
    (tmp_path / "x").write_text("in the way\n")
    with pytest.raises(OSError):
        sink.write([rec[2], rec[3], rec[9]])
    state = sink.checkpoint()["file"]
    assert (state["records"], state["written_start"], state["written_end"]) == (2, 0, 16)
    (tmp_path / "x").unlink()
    sink.write([rec[4], rec[9]])                          # 2 and 3 left out for good
    sink.close()
    assert written_span(kind, str(tmp_path / "none" / f"adc0.{kind}")) == (0, 40)
    assert written_span(kind, str(tmp_path / "x" / f"adc0.{kind}")) == (72, 80)


CRASHING_WRITER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from daqd.config import parse
    from daqd.pipeline.datatime import CaptureBlock
    from daqd.pipeline.records import ChunkRecord
    from daqd.sinks import build_sinks

    text, kind = sys.argv[1], sys.argv[2]
    stream = parse(text).streams[0]
    sinks, _ = build_sinks(stream, "")
    (sink,) = [s for s in sinks if s.kind == kind]
    block = CaptureBlock("obs-7", start=40)
    rec = lambda i: ChunkRecord(i, i * 8, np.full((4, 1, 1 << 16), i, np.uint8),
                                np.ones((4, 1), np.uint8), capture_block=block)
    sink.write([rec(5), rec(6)])
    sink.write([rec(7)])
    block.stop = 64
    sink.sync()
    print(json.dumps(sink.checkpoint()), flush=True)
    sink.write([rec(8), rec(9)])      # written, never marked done in the WAL
    os._exit(0)                       # crash: no close, no rename
""")


@pytest.mark.parametrize("kind", ["binary", "hdf5"])
def test_recovery_writes_the_span_and_block_of_what_the_file_keeps(tmp_path, kind):
    text = big_config(tmp_path, kind).replace("{stream}.", "{stream}-{capture_block}.")
    out = subprocess.run([sys.executable, "-c", CRASHING_WRITER, text, kind],
                         capture_output=True, text=True, timeout=60, check=True)
    state = json.loads(out.stdout)
    stream = parse(text).streams[0]
    sinks, _ = build_sinks(stream, "")
    report = recover_sink(sinks[0].context, state)
    assert report["error"] == "" and report["file"] == str(tmp_path / f"adc0-obs-7.{kind}")
    assert written_span(kind, report["file"]) == (40, 64)      # records 5..7, not 8, 9
    if kind == "hdf5":
        with h5py.File(report["file"]) as h5:
            meta = dict(h5.attrs)
    else:
        meta = read_header(report["file"])
    assert (meta["capture_block_id"], meta["capture_start"], meta["capture_stop"]) == \
        ("obs-7", 40, 64)


# ----------------------------------------------------------------------
# Descriptors: what spead2 sent, in the files


def descriptor_heaps(first_cnt: int = 1) -> tuple[bytes, bytes]:
    """spead2's bytes of a heap with descriptors and values, and of one with values only."""
    import spead2
    import spead2.send

    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    ig.add_item(0x1600, "timestamp", "ADC sample counter", shape=(), format=[("u", 48)])
    ig.add_item(0x1700, "temperature", "cryostat stage 2, K", shape=(2,), dtype=">f4")
    ig["timestamp"].value = 1234
    ig["temperature"].value = np.array([4.5, 4.25], ">f4")
    out = []
    for descriptors, ts in (("all", 1234), ("none", 1240)):
        ig["timestamp"].value = ts
        stream = spead2.send.BytesStream(spead2.ThreadPool())
        stream.set_cnt_sequence(first_cnt, 1)
        stream.send_heap(ig.get_heap(descriptors=descriptors, data="all"))
        first_cnt += 1
        out.append(stream.getvalue())
    return out[0], out[1]


def check_descriptors(found: list[dict]) -> None:
    got = {d["id"]: d for d in found}
    assert got[0x1600]["name"] == "timestamp" and got[0x1600]["format"] == [["u", 48]]
    assert got[0x1600]["description"] == "ADC sample counter"
    assert got[0x1700]["name"] == "temperature"
    assert "'>f4'" in got[0x1700]["dtype"] and "(2,)" in got[0x1700]["dtype"]


def run_daemon(tmp: Path, stream_toml: str) -> None:
    daemon = DaemonProcess(write_config(tmp, f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"

[zmq]
stats = ""
control = ""
{stream_toml}"""))
    try:
        assert daemon.wait() == 0, "\n".join(daemon.lines[-20:])    # a finite source
    finally:
        daemon.close()


def test_heap_mode_files_carry_the_descriptors_spead2_sent(tmp_path):
    with_descriptors, values_only = descriptor_heaps()
    source = tmp_path / "heaps.spead"
    source.write_bytes(with_descriptors + values_only)
    run_daemon(tmp_path, f"""
[[stream]]
name = "sensors"
sources = ["file:{source}"]
[stream.time]
sync_time = "{SYNC}"
timestamp_rate = {RATE}
timestamp_item = 0x1600
[[stream.sinks]]
kind = "binary"
path = "{tmp_path}/{{stream}}.bin"
[[stream.sinks]]
kind = "text"
path = "{tmp_path}/{{stream}}.txt"
template = "{{cnt}} {{utc:%H:%M:%S.%f}} {{temperature:.2f}}"
""")
    meta = read_header(str(tmp_path / "sensors.bin"))
    check_descriptors(meta["spead_descriptors"])
    assert (meta["written_start"], meta["written_end"]) == (1234, 1241)
    assert meta["sync_time"] == SYNC_UNIX and meta["timestamp_rate"] == RATE
    lines = (tmp_path / "sensors.txt").read_text().splitlines()
    stamps = [dt.datetime.fromtimestamp(exact_utc(t), dt.UTC).strftime("%H:%M:%S.%f")
              for t in (1234, 1240)]
    assert [line.split()[1:] for line in lines[2:]] == [[s, "[4.50,4.25]"] for s in stamps]


def test_chunk_mode_files_carry_the_descriptors_spead2_sent(tmp_path):
    from spead_packets import sim_packets

    with_descriptors, _ = descriptor_heaps(first_cnt=10**6)
    source = tmp_path / "w1.spead"
    packets = sim_packets("W1", 2 * HPC)
    # The descriptor heap arrives between the chunks, as a sender reissues them.
    source.write_bytes(b"".join(packets[:HPC]) + with_descriptors + b"".join(packets[HPC:]))
    run_daemon(tmp_path, f"""
[[stream]]
name = "adc0"
sources = ["file:{source}"]
[stream.chunk]
heaps_per_chunk = {HPC}
heap_bytes = 8192
timestamp_step = {STEP}
[[stream.sinks]]
kind = "hdf5"
path = "{tmp_path}/{{stream}}.h5"
[[stream.sinks]]
kind = "binary"
path = "{tmp_path}/{{stream}}.bin"
[[stream.sinks]]
kind = "zarr"
path = "{tmp_path}/{{stream}}.zarr"
""")
    with h5py.File(tmp_path / "adc0.h5") as h5:
        assert h5["chunk_id"][:].tolist() == [0, 1]
        check_descriptors(json.loads(h5.attrs["spead_descriptors"]))   # set when finished
        assert "sync_time" not in h5.attrs and "utc" not in h5   # no [stream.time]
    check_descriptors(read_header(str(tmp_path / "adc0.bin"))["spead_descriptors"])
    import zarr

    group = zarr.open_group(str(tmp_path / "adc0.zarr"), mode="r")
    check_descriptors(group.attrs["spead_descriptors"])         # as the HDF5 file's
    check_descriptors(group["writers/0"].attrs["spead_descriptors"])


# ----------------------------------------------------------------------
# Capture blocks through the write-ahead log


def test_records_replayed_from_the_log_keep_their_capture_block(tmp_path):
    from daqd.pipeline.records import decode_record
    from daqd.pipeline.wal import WriteAheadLog

    for d in ("h5", "bin", "txt"):
        (tmp_path / d).mkdir()
    a = CaptureBlock("cb-a", start=16, stop=48)
    records = [chunk(i, blk) for i, blk in enumerate([None, a, a, a, None])]
    heap = HeapRecord(7, {0x1600: 5}, received=1.5, capture_block=a)
    wal = WriteAheadLog(tmp_path / "w", fsync="never")
    for seq, record in enumerate([*records, heap]):
        wal.append(seq, record.encode())
    wal.close()
    wal = WriteAheadLog(tmp_path / "w", fsync="never")      # as after a restart
    replayed = [decode_record(blob) for _, blob in wal.records(-1)]
    wal.close()
    assert replayed[0].capture_block is None and replayed[4].capture_block is None
    block = replayed[1].capture_block
    assert (block.id, block.start, block.stop) == ("cb-a", 16, 48)
    assert replayed[2].capture_block is block and replayed[5].capture_block is block
    assert records[1].encode() == replayed[1].encode()
    sinks, _ = build_sinks(parse(config_text(tmp_path)).streams[0], "")
    for sink in sinks:
        sink.write(replayed[:5])
        sink.close()
    names = sorted(p.name for p in (tmp_path / "h5").iterdir())
    assert names == ["adc0-cb-a-1.h5", "adc0-none-0.h5", "adc0-none-2.h5"]
