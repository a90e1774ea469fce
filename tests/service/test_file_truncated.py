"""A ``file:`` source truncated while the daemon reads it (issue 16, item 5).

The daemon reads a regular file through a mapping; truncating a mapped file
makes a touch beyond its new end a SIGBUS, which used to be able to kill the
daemon.  Here the file is truncated for real while the receive thread is held
at its first record (tests/stall_flusher.py), part way through the mapping's
first window: the daemon reads to the new end, counts what it lost as
``file_bytes_truncated`` (in ``daqd status`` and the ``stopped`` line), warns
once, writes every whole heap before the cut, goes on, and stops with 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    control,
    daemon_toml,
    free_port,
    sinks_toml,
    toml_table,
    udp_stream_toml,
    wait_until,
    write_config,
)
from stall_flusher import RECEIVER_SPEC, stall_environment

from daqd.recv.workloads import WORKLOADS

HEAPS = 2048                # W1: one 8248-byte packet per heap, 16.9 MB
CUT_AT = 2 << 20            # inside the first window (4 MiB): pages there fault


@pytest.mark.network
def test_a_file_truncated_while_read_ends_there_counted_and_the_daemon_goes_on(tmp_path):
    source = tmp_path / "w1.spead"
    made = daqd("simulate", f"file:{source}", "--heaps", str(HEAPS), "--progress", "off")
    assert made.returncode == 0, made.stderr
    size = source.stat().st_size
    marker = tmp_path / "stall"
    marker.touch()                          # the receive thread wedges at its first record
    uri = f"file:{source}"
    # A second stream, on a UDP port, keeps the daemon up after the file ends.
    text = (daemon_toml(tmp_path, interval=0.1)
            + toml_table("stream", array=True, name="replay", sources=[uri])
            + buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=8,
                          flush_custom=[RECEIVER_SPEC])
            + sinks_toml(tmp_path, "text")
            + udp_stream_toml("live", free_port()))
    daemon = DaemonProcess(write_config(tmp_path, text), env=stall_environment(marker))
    try:
        ready = daemon.ready()
        wait_until(Path(f"{marker}.entered").exists, 20, "the receive thread wedged")
        os.truncate(source, CUT_AT)         # under the mapping, the first batch cut
        marker.unlink()
        ended = daemon.wait_event("source ended")
        assert ended["source"] == uri
        counters = control(ready["control"], {"command": "status"})["streams"]["replay"][
            "counters"]
        assert counters["file_bytes_truncated"] == size - CUT_AT
        assert daemon.stop() == 0
    finally:
        if marker.exists():
            os.unlink(marker)
        daemon.close()
    warnings = [e for e in daemon.events if e.get("event") == "file truncated while being read"]
    assert len(warnings) == 1, daemon.lines[-20:]
    assert (warnings[0]["source"], warnings[0]["size_at_open"], warnings[0]["size_read"],
            warnings[0]["bytes_lost"]) == (uri, size, CUT_AT, size - CUT_AT)
    stopped = daemon.events[-1]
    assert stopped["event"] == "stopped"
    assert stopped["replay"]["file_bytes_truncated"] == size - CUT_AT
    whole = CUT_AT // WORKLOADS["W1"].packet_size           # heaps wholly before the cut
    assert stopped["replay"]["heaps"] == whole
    written = "".join(p.read_text() for p in (tmp_path / "data").glob("replay-*.txt"))
    records = [line for line in written.splitlines() if not line.startswith("#")]
    assert len(records) == whole
