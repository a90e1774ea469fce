"""``daqd plot``: files written by the real daemon and the real sinks, drawn, and the PNG read back.

The loss map's pixels are checked at the slots whose heaps were never sent:
with ``--loss-map`` one pixel per slot, and in the whole picture at the
places the panel's fixed box (``LOSS_MAP_BOX``) puts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import DaemonProcess, write_config
from spead_packets import sim_packets

from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.records import ChunkRecord
from daqd.sinks import SinkContext, make_sink
from daqd.tools import plot

HPC = 8
CHUNKS = 8
DROPPED = {3, 9, 10, 30, 45, 46, 47, 62}          # W1 heap i: record i // HPC, slot i % HPC


def rgb(path: Path) -> np.ndarray:
    """The PNG's pixels as 0-255 RGB."""
    image = matplotlib.image.imread(str(path))
    return np.rint(image[..., :3] * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def daemon_files(tmp_path_factory):
    """The daemon's hdf5 and binary files of W1 heaps 0..63 replayed without `DROPPED`."""
    tmp = tmp_path_factory.mktemp("plot")
    source = tmp / "w1.spead"
    packets = sim_packets("W1", HPC * CHUNKS)
    assert len(packets) == HPC * CHUNKS             # W1: one packet per heap
    source.write_bytes(b"".join(p for i, p in enumerate(packets) if i not in DROPPED))
    cfg = write_config(tmp, f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"

[zmq]
stats = ""
control = ""

[[stream]]
name = "adc0"
sources = ["file:{source}"]

[stream.chunk]
heaps_per_chunk = {HPC}
heap_bytes = 8192
timestamp_step = 8192
max_chunks = 2
pool = 16

[stream.buffer]
kind = "fifo"
capacity = 64

[[stream.sinks]]
kind = "hdf5"
path = "{tmp}/data/{{stream}}.h5"

[[stream.sinks]]
kind = "binary"
path = "{tmp}/data/{{stream}}.bin"

[[stream.sinks]]
kind = "zarr"
path = "{tmp}/data/{{stream}}.zarr"
""")
    daemon = DaemonProcess(cfg)
    try:
        assert daemon.wait() == 0, "\n".join(daemon.lines[-20:])    # a finite source
    finally:
        daemon.close()
    return tmp / "data" / "adc0.h5", tmp / "data" / "adc0.bin"


def expected_missing() -> np.ndarray:
    missing = np.zeros((CHUNKS, HPC), bool)
    for i in DROPPED:
        missing[i // HPC, i % HPC] = True
    return missing


def test_the_daemons_file_has_the_losses_the_test_made(daemon_files):
    h5_path, _ = daemon_files
    with h5py.File(h5_path) as h5:
        assert h5["present"].shape == (CHUNKS, HPC, 1)
        assert np.array_equal(h5["present"][:, :, 0] == 0, expected_missing())


def test_loss_map_alone_is_one_pixel_per_slot_red_where_heaps_were_lost(daemon_files, tmp_path):
    h5_path, _ = daemon_files
    out = tmp_path / "loss.png"
    proc = daqd("plot", str(h5_path), "--loss-map", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(DROPPED)} of {CHUNKS * HPC} heap slots missing" in proc.stderr
    pixels = rgb(out)
    assert pixels.shape == (CHUNKS, HPC, 3)
    missing = expected_missing()
    assert (pixels[missing] == plot.MISSING_RGB).all()
    assert (pixels[~missing] == plot.PRESENT_RGB).all()


def test_a_zarr_store_gives_the_same_loss_map(daemon_files, tmp_path):
    h5_path, _ = daemon_files
    out = tmp_path / "loss.png"
    proc = daqd("plot", str(h5_path.with_suffix(".zarr")), "--loss-map", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{CHUNKS} records; {len(DROPPED)} of {CHUNKS * HPC} heap slots missing" \
        in proc.stderr
    pixels = rgb(out)
    assert pixels.shape == (CHUNKS, HPC, 3)
    assert (pixels[expected_missing()] == plot.MISSING_RGB).all()
    assert (pixels[~expected_missing()] == plot.PRESENT_RGB).all()
    whole = daqd("plot", str(h5_path.with_suffix(".zarr")), "-o", str(tmp_path / "all.png"))
    assert whole.returncode == 0, whole.stderr


def box_pixel(box, shape, row, col, rows, cols):
    """The PNG pixel (y, x) at the centre of map cell (row, col) in an axes at `box`."""
    left, bottom, width, height = box
    h, w = shape[:2]
    x = (left + width * (col + 0.5) / cols) * w
    y = (1 - (bottom + height * (1 - (row + 0.5) / rows))) * h
    return int(y), int(x)


def test_whole_picture_shows_the_losses_in_its_loss_map_panel(daemon_files, tmp_path):
    h5_path, _ = daemon_files
    out = tmp_path / "all.png"
    proc = daqd("plot", str(h5_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    pixels = rgb(out)
    assert pixels.shape == (plot.FIGSIZE[1] * plot.DPI, plot.FIGSIZE[0] * plot.DPI, 3)
    missing = expected_missing()
    for row in range(CHUNKS):
        for col in range(HPC):
            y, x = box_pixel(plot.LOSS_MAP_BOX, pixels.shape, row, col, CHUNKS, HPC)
            want = plot.MISSING_RGB if missing[row, col] else plot.PRESENT_RGB
            assert tuple(pixels[y, x]) == want, (row, col)
            # The overview marks missing slots in the same colour; others are viridis.
            y, x = box_pixel(plot.OVERVIEW_BOX, pixels.shape, row, col, CHUNKS, HPC)
            assert (tuple(pixels[y, x]) == plot.MISSING_RGB) == missing[row, col], (row, col)


def test_default_output_is_beside_the_file(daemon_files, tmp_path):
    h5_path, _ = daemon_files
    copy = tmp_path / "copy.h5"
    copy.write_bytes(h5_path.read_bytes())
    assert daqd("plot", str(copy)).returncode == 0
    assert rgb(tmp_path / "copy.h5.png").shape[0] == plot.FIGSIZE[1] * plot.DPI


def test_binary_file_gives_the_overview_and_no_loss_map(daemon_files, tmp_path):
    _, bin_path = daemon_files
    out = tmp_path / "bin.png"
    proc = daqd("plot", str(bin_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "no presence recorded (binary file)" in proc.stderr
    pixels = rgb(out)
    y, x = box_pixel(plot.OVERVIEW_BOX, pixels.shape, 0, 0, CHUNKS, HPC)
    assert tuple(pixels[y, x]) not in (plot.MISSING_RGB, (255, 255, 255))
    proc = daqd("plot", str(bin_path), "--loss-map", "-o", str(tmp_path / "no.png"))
    assert_one_line_error(proc, "records no presence")
    assert not (tmp_path / "no.png").exists()


def test_substreams_side_by_side_and_absent_chunks_as_missing_rows(tmp_path):
    """Real hdf5 sink, two substreams of complex64: slot (heap h, substream s) is column 2h+s;
    a chunk id the file skips is a row of missing slots."""
    chunk = ChunkConfig(heaps_per_chunk=4, heap_bytes=64, dtype="complex64",
                        substream_item=0x4101, substreams=2, max_chunks=2, pool=4)
    sink = make_sink(SinkContext("x", SinkConfig("hdf5", str(tmp_path / "x.h5")), chunk, ""))
    lost = {(0, 1, 1), (2, 3, 0), (2, 0, 1)}              # (chunk id, heap, substream)
    rng = np.random.default_rng(1)
    for n in (0, 2, 5):                                   # chunks 1, 3 and 4 never arrive
        present = np.ones((4, 2), np.uint8)
        for r, h, s in lost:
            if r == n:
                present[h, s] = 0
        data = (rng.normal(size=(4, 2, 8)) + 1j * rng.normal(size=(4, 2, 8))).astype("c8")
        sink.write([ChunkRecord(n, n * 4 * 8192, data, present)])
    sink.close()
    out = tmp_path / "x.png"
    proc = daqd("plot", str(tmp_path / "x.h5"), "--loss-map", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    pixels = rgb(out)
    assert pixels.shape == (6, 8, 3)                      # one row per chunk id, 0 to 5
    red = {(int(r), int(c)) for r, c in zip(*np.nonzero((pixels == plot.MISSING_RGB).all(-1)),
                                            strict=True)}
    absent = {(r, c) for r in (1, 3, 4) for c in range(8)}
    assert red == {(r, 2 * h + s) for r, h, s in lost if r in (0, 2, 5)} | absent
    assert "27 of 48 heap slots missing" in proc.stderr
    proc = daqd("plot", str(tmp_path / "x.h5"), "-o", str(tmp_path / "all.png"))
    assert proc.returncode == 0, proc.stderr
    picture = rgb(tmp_path / "all.png")
    for r in range(6):
        for c in range(8):
            y, x = box_pixel(plot.LOSS_MAP_BOX, picture.shape, r, c, 6, 8)
            want = plot.MISSING_RGB if (r, c) in red else plot.PRESENT_RGB
            assert tuple(picture[y, x]) == want, (r, c)


@pytest.mark.parametrize("make, name", [
    (lambda p: None, "cannot read"),
    (lambda p: p.write_text("hello\n"), "neither an HDF5 file nor a daqd binary file"),
    (lambda p: h5py.File(p, "w").close(), "not a daqd chunk file"),
])
def test_a_file_that_cannot_be_drawn_is_one_line(tmp_path, make, name):
    path = tmp_path / "in.h5"
    make(path)
    assert_one_line_error(daqd("plot", str(path), "-o", str(tmp_path / "o.png")), name)


def test_a_binary_file_of_bytes_has_nothing_to_draw_in_one_line(tmp_path):
    """A binary file records no presence; of a non-numeric dtype it has no power either."""
    chunk = ChunkConfig(heaps_per_chunk=4, heap_bytes=64, dtype="S8", max_chunks=2, pool=4)
    sink = make_sink(SinkContext("x", SinkConfig("binary", str(tmp_path / "x.bin")), chunk, ""))
    sink.write([ChunkRecord(0, 0, np.zeros((4, 1, 8), "S8"), np.ones((4, 1), np.uint8))])
    sink.close()
    (path,) = tmp_path.glob("x*.bin")
    assert_one_line_error(daqd("plot", str(path), "-o", str(tmp_path / "o.png")),
                          "records neither numbers nor presence")


def test_output_into_a_missing_directory_is_one_line(daemon_files, tmp_path):
    h5_path, _ = daemon_files
    proc = daqd("plot", str(h5_path), "-o", str(tmp_path / "no" / "o.png"))
    assert_one_line_error(proc, "no directory")


def test_without_matplotlib_the_install_command_is_named(daemon_files):
    h5_path, _ = daemon_files
    code = ("import sys; sys.modules['matplotlib'] = None; from daqd.cli import main; "
            f"main(['plot', {str(h5_path)!r}, '-o', '/nonexistent-dir/x.png'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(proc, "pip install 'daqd[plot]'")


def test_files_with_stream_time_give_utc(daemon_files, tmp_path):
    """``sync_time``/``timestamp_rate`` attributes (``[stream.time]``, INTERFACES.md) give each
    record's UTC: ISO text or Unix seconds; a ``utc`` dataset is taken as written."""
    from daqd.tools.chunkfile import open_chunk_file

    h5_path, _ = daemon_files
    copy = tmp_path / "t.h5"
    copy.write_bytes(h5_path.read_bytes())
    with h5py.File(copy, "r+") as h5:
        h5.attrs["sync_time"] = "2026-12-07T00:00:00Z"
        h5.attrs["timestamp_rate"] = 1712e6
        ts = h5["timestamp"][:]
    with open_chunk_file(str(copy)) as f:
        (block,) = list(f.blocks(data=False))
    assert np.allclose(block.utc, 1796601600.0 + ts / 1712e6)
    assert daqd("plot", str(copy), "-o", str(tmp_path / "t.png")).returncode == 0
    with h5py.File(copy, "r+") as h5:
        h5.attrs["sync_time"] = 1796601600.0
        h5.create_dataset("utc", data=np.arange(CHUNKS, dtype=np.float64) + 5.0)
    with open_chunk_file(str(copy)) as f:
        (block,) = list(f.blocks(data=False))
    assert list(block.utc) == [5.0 + i for i in range(CHUNKS)]


def clocked_file(tmp_path, clock: bool) -> Path:
    """An hdf5 file written by the sink `build_sinks` makes, with or without ``[stream.time]``."""
    from daqd.config import parse
    from daqd.sinks import build_sinks

    time = '[stream.time]\nsync_time = "2026-12-07T00:00:00Z"\ntimestamp_rate = 1712e6\n'
    stream = parse(f"""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]
{time if clock else ""}
[stream.chunk]
heaps_per_chunk = 4
heap_bytes = 16
timestamp_step = 8192
[[stream.sinks]]
kind = "hdf5"
path = "{tmp_path}/{{stream}}.h5"
""").streams[0]
    (sink,), _ = build_sinks(stream)
    present = [np.array([[1], [1], [0], [1]], np.uint8), np.ones((4, 1), np.uint8),
               np.zeros((4, 1), np.uint8)]
    sink.write([ChunkRecord(i, 10**12 + i * 4 * 8192, np.full((4, 1, 16), i, np.uint8), p)
                for i, p in enumerate(present)])
    sink.close()
    return tmp_path / "adc0.h5"


@pytest.mark.parametrize("clock", [True, False])
def test_fraction_present_is_drawn_against_utc_when_the_file_has_the_clock(tmp_path, clock):
    from daqd.tools.chunkfile import open_chunk_file

    path = clocked_file(tmp_path, clock)
    with h5py.File(path) as h5:
        assert ("utc" in h5) == clock
        ts = h5["timestamp"][:]
    with open_chunk_file(str(path)) as f:
        fig, missing, slots = plot.draw_picture(f)
    assert (missing, slots) == (5, 12)
    (ax,) = [a for a in fig.axes if a.get_label() == "fraction"]
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [0.75, 1.0, 0.0]
    x = line.get_xdata()
    if clock:
        assert ax.get_xlabel() == "UTC"
        utc = 1796601600 + ts.astype(np.float64) / 1712e6
        assert list(x) == list((utc * 1e6).astype("datetime64[us]"))
        assert str(x[0]).startswith("2026-12-07T00:09:44.11")  # 10**12 ticks: 584.1 s after
    else:
        assert ax.get_xlabel() == "data time (timestamp ticks)"
        assert list(x) == ts.astype(np.float64).tolist()
