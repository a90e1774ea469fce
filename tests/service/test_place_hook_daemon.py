"""``[stream.chunk] place``: the example hook (examples/place_hook) built as a user
builds it, named in a configuration, checked by ``daqd validate`` and run in a real
daemon, its own counter in ``status`` and Prometheus."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import (
    DaemonProcess,
    control,
    control_endpoint,
    daemon_toml,
    free_port,
    sinks_toml,
    udp_stream_toml,
    wait_until,
    write_config,
)
from place_hook_build import build_example_hook
from spead_packets import heap_packets

from daqd import _spead

pytestmark = pytest.mark.network

TS, FREQ = 0x1600, 0x4103
STEP, HPC, FIRST, PER_HEAP, SUBS, HEAP_BYTES = 256, 4, 1024, 64, 4, 256


@pytest.fixture(scope="module")
def hook_env(tmp_path_factory):
    """The example built in a scratch copy (``python setup.py build_ext --inplace``, as its
    README says); the environment that puts it on the daemon's import path."""
    work = build_example_hook(tmp_path_factory.mktemp("place_hook"))
    path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def config_text(tmp: Path, port: int, place: str = "frequency_place:FrequencyPlacement",
                args: str = "{first_channel = 1024, channels_per_heap = 64}",
                prometheus: str = "") -> str:
    text = daemon_toml(tmp) + udp_stream_toml("adc0", port) + f"""
[stream.chunk]
timestamp_item = {TS}
timestamp_step = {STEP}
heaps_per_chunk = {HPC}
heap_bytes = {HEAP_BYTES}
substreams = {SUBS}
max_chunks = 2
pool = 8
place = "{place}"
place_args = {args}

[stream.buffer]
kind = "fifo"
capacity = 16
flush_count = 1
{sinks_toml(tmp, "binary")}
"""
    if prometheus:
        text = text.replace("[zmq]", f'prometheus = "{prometheus}"\n\n[zmq]', 1)
    return text


def heap(cnt: int, timestamp: int, channel: int) -> list[bytes]:
    return heap_packets(cnt, [(TS, timestamp), (FREQ, channel),
                              (0x3300, bytes([cnt % 251]) * HEAP_BYTES)], packet_payload=128)


def test_validate_loads_the_hook(tmp_path, hook_env):
    cfg = write_config(tmp_path, config_text(tmp_path, free_port()))
    proc = daqd("validate", "--config", str(cfg), env={**os.environ, **hook_env})
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


@pytest.mark.parametrize("place, args, words", [
    ("no_such_module_here:Hook", "{}", "cannot import no_such_module_here"),
    ("frequency_place:Nope", "{}", "has no attribute Nope"),
    ("frequency_place:FrequencyPlacement", "{first_channel = 1024}",
     "FrequencyPlacement(...) failed: TypeError"),
    ("json:dumps", "{}", "dumps(...) failed"),
    ("os:sep", "{}", "neither a hook factory nor a hook"),
    ("frequency_place:FrequencyPlacement",
     "{first_channel = 1024, channels_per_heap = 64}\nextra_items = " + str(
         list(range(0x2000, 0x2000 + _spead.GROUP_MAX_ITEMS - 1))), "extra_items, more than"),
])
def test_validate_refuses_what_is_no_hook(tmp_path, hook_env, place, args, words):
    cfg = write_config(tmp_path, config_text(tmp_path, free_port(), place=place, args=args))
    proc = daqd("validate", "--config", str(cfg), env={**os.environ, **hook_env})
    assert_one_line_error(proc, "chunk.place")
    assert words in proc.stderr, proc.stderr


def test_a_capsule_of_another_abi_is_refused(tmp_path, hook_env):
    """spead2's placement capsule (daqd._spead2compat) is not daqd's hook."""
    cfg = write_config(tmp_path, config_text(
        tmp_path, free_port(), place="daqd._spead2compat:Spead2Placement", args="{}"))
    proc = daqd("validate", "--config", str(cfg), env={**os.environ, **hook_env})
    assert_one_line_error(proc, "chunk.place")
    assert "not daqd's hook" in proc.stderr or "failed" in proc.stderr, proc.stderr


def test_the_daemon_places_with_the_hook_and_reports_its_counter(tmp_path, hook_env):
    port = free_port()
    cfg = write_config(tmp_path, config_text(tmp_path, port, prometheus="127.0.0.1:0"))
    endpoint = control_endpoint(tmp_path)
    daemon = DaemonProcess(cfg, env=hook_env)
    try:
        daemon.ready()
        url = daemon.wait_event("serving Prometheus metrics")["url"]
        packets, cnt = [], 1
        for t in range(2 * HPC):                    # two chunks, every slot
            for sub in range(SUBS):
                packets += heap(cnt, t * STEP, FIRST + sub * PER_HEAP)
                cnt += 1
        off_grid = [heap(cnt + i, 0, FIRST + 1 + i) for i in range(3)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in [p for h in off_grid for p in h] + packets:
                sock.sendto(packet, ("127.0.0.1", port))

        def counters():
            return control(endpoint, {"command": "status"})["streams"]["adc0"]["counters"]

        wait_until(lambda: counters()["chunk_heaps_placed"] == 2 * HPC * SUBS,
                   what="every on-grid heap placed")
        got = counters()
        assert got["place_off_grid_heaps"] == 3
        assert got["chunk_heaps_rejected_by_place"] == 3
        import urllib.request
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        assert 'daqd_place_off_grid_heaps_total{daemon="test-daqd",stream="adc0"} 3.0' in text
        status = daqd("status", "--config", str(cfg))
        assert status.returncode == 0, status.stderr
        assert [line.split()[:2] for line in status.stdout.splitlines()
                if "place_off_grid_heaps" in line] == [["place_off_grid_heaps", "3"]]
        assert daemon.stop() == 0
    finally:
        daemon.close()
    written = sorted((tmp_path / "data").glob("adc0-*.bin"))
    assert written and sum(p.stat().st_size for p in written) >= 2 * HPC * SUBS * HEAP_BYTES
