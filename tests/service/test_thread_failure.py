"""A stream thread that fails stops the daemon: it drains and exits 1.

The failure is real: a flush predicate that raises in the stream's chunk
thread (tests/failing_flush.py), as a bug in user code or in daqd would.
Before, the daemon logged the error, went on with a stream that could no
longer deliver a chunk, and exited 0 at SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    buffer_toml,
    chunk_stream_config,
    free_port,
    send_w1,
    write_config,
)
from failing_flush import SPEC
from stall_flusher import daemon_import_environment


def test_a_failed_chunk_thread_drains_and_exits_1_naming_it(tmp_path):
    port = free_port()
    text = chunk_stream_config(tmp_path, port=port, buffer=buffer_toml(
        kind="fifo", capacity=64, when_full="block", flush_custom=[SPEC]))
    daemon = DaemonProcess(write_config(tmp_path, text), env=daemon_import_environment())
    try:
        daemon.ready()
        send_w1(port, 64)                   # the first chunk's put raises
        assert daemon.wait(60) == 1         # by itself: no signal sent
    finally:
        daemon.close()
    failed = [e for e in daemon.events if e.get("event") == "thread failed"]
    assert [e["error"] for e in failed] == ["adc0:chunks: RuntimeError: a predicate that fails"]
    (draining,) = [e for e in daemon.events if e.get("event") == "draining"]
    assert draining["reason"] == "thread failed: adc0"
    (stopped,) = [e for e in daemon.events if e.get("event") == "stopped after a thread failed"]
    assert stopped["failures"] == ["adc0:chunks: RuntimeError: a predicate that fails"]
