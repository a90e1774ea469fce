"""A ``file:`` replay in the daemon reports how far it has read (issue 14, item 6).

The replay is held part way for real: the receive thread is wedged at its first
record, in the flush predicate it asks (tests/stall_flusher.py), with the first
read of the file done.  (Wedging the flusher instead raced: a flusher woken by
the producers' count never asks the predicate itself.)  The statistics then
carry ``replay``: bytes read of the file's size; once the thread moves again
the replay runs to the end and the daemon exits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    control,
    daemon_toml,
    sinks_toml,
    toml_table,
    wait_until,
    write_config,
)
from stall_flusher import RECEIVER_SPEC, stall_environment

from daqd.service.daemon import ReplayProgress

HEAPS = 4096


def test_a_held_file_replay_reports_bytes_read_of_its_size(tmp_path):
    source = tmp_path / "w1.spead"
    made = daqd("simulate", f"file:{source}", "--heaps", str(HEAPS), "--progress", "off")
    assert made.returncode == 0, made.stderr
    size = source.stat().st_size
    marker = tmp_path / "stall"
    marker.touch()                          # the receive thread wedges at its first record
    text = (daemon_toml(tmp_path, interval=0.1)
            + toml_table("stream", array=True, name="replay", sources=[f"file:{source}"])
            + buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=8,
                          flush_custom=[RECEIVER_SPEC])
            + sinks_toml(tmp_path, "text"))
    daemon = DaemonProcess(write_config(tmp_path, text), env=stall_environment(marker))
    try:
        ready = daemon.ready()
        wait_until(Path(f"{marker}.entered").exists, 20, "the receive thread wedged")
        held = control(ready["control"], {"command": "status"})["streams"]["replay"][
            "replay"][f"file:{source}"]
        assert held["total_bytes"] == size
        assert 0 < held["done_bytes"] < size          # held part way: its first read
        marker.unlink()
        assert daemon.wait(60) == 0                     # the replay ran to its end
    finally:
        if marker.exists():
            os.unlink(marker)
        daemon.close()
    written = "".join(p.read_text() for p in (tmp_path / "data").glob("replay-*.txt"))
    records = [line for line in written.splitlines() if not line.startswith("#")]
    assert len(records) == HEAPS                          # every heap, one line each


def test_the_log_line_gives_the_rate_and_the_time_to_go():
    now = [100.0]
    progress = ReplayProgress(clock=lambda: now[0])
    first = progress.report("s", {"file:x": (1000, 10_000)})
    assert first == {"file:x": {"done_bytes": 1000, "total_bytes": 10_000, "percent": 10.0}}
    now[0] += 2.0
    second = progress.report("s", {"file:x": (5000, 10_000)})["file:x"]
    assert second["rate_bytes_s"] == 2000 and second["eta_s"] == 2.5
    assert second["percent"] == 50.0
