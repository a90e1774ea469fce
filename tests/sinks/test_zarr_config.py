"""Zarr sink keys checked at load, and ``daqd zarr-init``, through the real command line.

Every bad value is one line naming the key (``daqd validate``: status 2, no
traceback); a store of another layout is refused by ``validate`` and by
``zarr-init`` before any daemon writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, daqd

from daqd.config import ConfigError, parse


def config_text(tmp: Path, sink: str, chunk: str = "substream_item = 0x4101\nsubstreams = 2",
                mode: str = "chunk") -> str:
    chunk_table = f"[stream.chunk]\nheaps_per_chunk = 4\nheap_bytes = 64\n{chunk}\n" \
        if mode == "chunk" else ""
    return f"""
[daemon]
pidfile = "{tmp}/run/daqd.pid"
[zmq]
stats = ""
control = ""
[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7999"]
{chunk_table}
[[stream.sinks]]
{sink}
"""


ZARR = 'kind = "zarr"\npath = "{tmp}/data/{{stream}}.zarr"\n'


@pytest.mark.parametrize(("sink", "key", "mode"), [
    (ZARR + "substreams_total = 3\nsubstream_offset = 2", "substream_offset", "chunk"),
    (ZARR + "substreams_total = 4\nsubstream_offset = 1", "substream_chunk", "chunk"),
    (ZARR + "substreams_total = 4\nsubstream_offset = 2\nsubstream_chunk = 4",
     "substream_chunk", "chunk"),
    (ZARR + 'codec = "gzip"', "codec", "chunk"),
    (ZARR + "origin = 100", "origin", "chunk"),
    (ZARR + "rotate_bytes = 8192", "rotate_bytes", "chunk"),
    (ZARR, "kind", "heap"),
    ('kind = "binary"\npath = "{tmp}/data/x.bin"\norigin = 5', "origin", "chunk"),
    ('kind = "hdf5"\npath = "{tmp}/data/x.h5"\nsubstreams_total = 4', "substreams_total",
     "chunk"),
    ('kind = "zarr"\npath = "{tmp}/data/{{seq}}.zarr"', "path", "chunk"),
])
def test_a_bad_zarr_key_is_one_line_naming_it(tmp_path, sink, key, mode):
    text = config_text(tmp_path, sink.format(tmp=tmp_path), mode=mode)
    with pytest.raises(ConfigError) as info:
        parse(text, "z.toml")
    assert f".{key} = " in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_regions_that_align_are_accepted(tmp_path):
    sink = ZARR.format(tmp=tmp_path) + "substreams_total = 8\nsubstream_offset = 6\n" \
        "substream_chunk = 2\norigin = 65536\ncodec = \"blosc\""
    cfg = parse(config_text(tmp_path, sink), "z.toml")
    assert (cfg.streams[0].sinks[0].substream_offset, cfg.streams[0].sinks[0].codec) == \
        (6, "blosc")


def test_zarr_init_creates_and_validate_then_refuses_another_layout(tmp_path):
    sink = ZARR.format(tmp=tmp_path) + "substreams_total = 4\nsubstream_offset = 2"
    path = tmp_path / "a.toml"
    path.write_text(config_text(tmp_path, sink))
    made = daqd("zarr-init", "--config", str(path), "--records", "5000")
    assert made.returncode == 0, made.stderr
    store = tmp_path / "data" / "adc0.zarr"
    assert made.stdout == f"{store}: created; 5000 records along time, 4 substreams\n"
    group = zarr.open_group(str(store), mode="r")
    assert group["data"].shape == (5000, 4, 4, 64)
    again = daqd("zarr-init", "--config", str(path))
    assert again.stdout == f"{store}: exists, layout matches; 5000 records along time, " \
        "4 substreams\n"
    assert daqd("validate", "--config", str(path)).returncode == 0

    other = tmp_path / "b.toml"
    other.write_text(config_text(tmp_path, sink + "\norigin = 32768"))
    for command in ("validate", "zarr-init"):
        proc = daqd(command, "--config", str(other))
        assert_one_line_error(proc, "origin")
        assert "the store's origin is 0, this daemon's is 32768" in proc.stderr


def test_zarr_init_without_a_zarr_sink_is_one_line(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text(config_text(tmp_path, f'kind = "binary"\npath = "{tmp_path}/x.bin"'))
    assert_one_line_error(daqd("zarr-init", "--config", str(path)), "no zarr sink")
    assert_one_line_error(daqd("zarr-init", "--config", str(path), "--stream", "nope"),
                          "--stream")


def two_streams(tmp: Path, offsets: tuple[int, int]) -> str:
    streams = ""
    for k, offset in enumerate(offsets):
        streams += f"""
[[stream]]
name = "s{k}"
sources = ["udp://127.0.0.1:{7990 + k}"]
[stream.chunk]
heaps_per_chunk = 4
heap_bytes = 64
substream_item = 0x4101
substreams = 2
[[stream.sinks]]
kind = "zarr"
path = "{tmp}/data/obs.zarr"
substreams_total = 4
substream_offset = {offset}
"""
    return f'[daemon]\npidfile = "{tmp}/run/daqd.pid"\n[zmq]\nstats = ""\ncontrol = ""\n' \
        + streams


def test_streams_of_one_daemon_may_share_a_store_in_regions_of_their_own(tmp_path):
    cfg = parse(two_streams(tmp_path, (0, 2)), "z.toml")
    assert [s.sinks[0].substream_offset for s in cfg.streams] == [0, 2]
    with pytest.raises(ConfigError) as info:
        parse(two_streams(tmp_path, (2, 2)), "z.toml")
    assert "stream[1].sinks[0].substream_offset = 2" in str(info.value), str(info.value)
    assert "stream[0].sinks[0].path does not write (it has substreams 2-3)" in str(info.value)
