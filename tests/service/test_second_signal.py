"""SIGINT drains as SIGTERM does; a second SIGTERM/SIGINT cuts the drain short, and says
what it discarded (issue 12, 9; issue 18).

The real daemon, a heap-mode stream fed over loopback TCP (lossless, so every
heap sent is accepted whatever the machine's load), one text sink.  A
flush predicate wedges the flusher thread (tests/stall_flusher.py), so the
records sent after it are accepted into the buffer and never written, and the
drain started by a first SIGTERM cannot finish.  The second SIGTERM must exit
with status 1, remove the pidfile, publish a last ``status`` message
(``state`` ``interrupted``, with ``discarded``) and end the log with a line
whose count equals the records accepted minus the lines in the sink's files.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    Subscriber,
    buffer_toml,
    control,
    daemon_toml,
    free_port,
    sinks_toml,
    toml_table,
    wait_until,
    write_config,
)
from spead_packets import sim_packets
from stall_flusher import SPEC, stall_environment

pytestmark = pytest.mark.network

WRITTEN = 3000          # heaps written before the flusher wedges
DISCARDED = 5000        # heaps accepted afterwards, never written


def buffer_stats(endpoint: str) -> dict:
    return control(endpoint, {"command": "status"})["streams"]["adc0"]["buffer"]


def lines_in_files(directory: Path) -> int:
    """Text lines written by the sink, in published and unfinished (.tmp) files alike."""
    return sum(len(path.read_text().splitlines()) for path in directory.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_second_signal_counts_what_it_discards_and_removes_the_pidfile(tmp_path, signum):
    port = free_port(socket.SOCK_STREAM)
    marker = tmp_path / "stall"
    packets = sim_packets("W2", WRITTEN + DISCARDED)         # one packet per heap
    stream = toml_table("stream", array=True, name="adc0", sources=[f"tcp://127.0.0.1:{port}"])
    cfg = write_config(tmp_path, daemon_toml(tmp_path) + stream
                       + buffer_toml(kind="fifo", capacity=4 * DISCARDED, when_full="block",
                                     flush_count=1000, flush_interval=3600.0,
                                     flush_custom=[SPEC])
                       + sinks_toml(tmp_path, "text", header=False))
    pidfile = tmp_path / "run" / "daqd.pid"
    daemon = DaemonProcess(cfg, env=stall_environment(marker))
    sub = sender = None
    try:
        ready = daemon.ready()
        endpoint = ready["control"]
        sub = Subscriber(ready["stats"])
        sender = socket.create_connection(("127.0.0.1", port), timeout=10)
        sender.sendall(b"".join(packets[:WRITTEN]))
        wait_until(lambda: buffer_stats(endpoint)["records_accepted"] == WRITTEN, 20,
                   "the first heaps accepted")
        assert control(endpoint, {"command": "flush"})["ok"]     # whatever count left over
        wait_until(lambda: buffer_stats(endpoint)["records_flushed"] == WRITTEN, 20,
                   "the first heaps written")
        marker.touch()                                        # wedge the flusher
        wait_until(Path(f"{marker}.entered").exists, 10, "the flusher wedged")
        sender.sendall(b"".join(packets[WRITTEN:]))
        wait_until(lambda: buffer_stats(endpoint)["records_accepted"] == WRITTEN + DISCARDED,
                   20, "every heap accepted")
        accepted = buffer_stats(endpoint)["records_accepted"]
        assert pidfile.exists()
        daemon.signal(signum)
        assert daemon.wait_event("draining")["reason"] == signum.name
        assert daemon.proc.poll() is None                     # the drain cannot finish
        daemon.signal(signum)
        code = daemon.wait(30)
        final = sub.until(lambda topic, m: topic == "status" and m["state"] == "interrupted",
                          10)[1]
    finally:
        for closable in (sub, sender):
            if closable is not None:
                closable.close()
        daemon.close()
    assert code == 1
    assert not pidfile.exists()
    last = json.loads(daemon.lines[-1])
    assert last["event"].startswith("second signal")
    assert last["signal"] == signum.name
    written = lines_in_files(tmp_path / "data")
    assert written == WRITTEN
    assert last["discarded"] == {"adc0": {"records": accepted - written}}
    assert last["discarded_total"] == accepted - written == DISCARDED
    assert final["discarded"] == last["discarded"]


def test_sigint_drains_writes_everything_and_exits_0(tmp_path):
    """One SIGINT (Ctrl-C in a terminal) is a stop like SIGTERM: every record accepted is
    written (none had been: the flush thresholds are far away), a last "stopped" status is
    published, the pidfile is removed, exit 0."""
    port = free_port(socket.SOCK_STREAM)
    heaps = 500
    stream = toml_table("stream", array=True, name="adc0", sources=[f"tcp://127.0.0.1:{port}"])
    cfg = write_config(tmp_path, daemon_toml(tmp_path) + stream
                       + buffer_toml(kind="fifo", capacity=4 * heaps, when_full="block",
                                     flush_count=4 * heaps, flush_interval=3600.0)
                       + sinks_toml(tmp_path, "text", header=False))
    pidfile = tmp_path / "run" / "daqd.pid"
    daemon = DaemonProcess(cfg)
    sub = sender = None
    try:
        ready = daemon.ready()
        endpoint = ready["control"]
        sub = Subscriber(ready["stats"])
        sender = socket.create_connection(("127.0.0.1", port), timeout=10)
        sender.sendall(b"".join(sim_packets("W2", heaps)))
        wait_until(lambda: buffer_stats(endpoint)["records_accepted"] == heaps, 20,
                   "every heap accepted")
        assert buffer_stats(endpoint)["records_flushed"] == 0
        daemon.signal(signal.SIGINT)
        code = daemon.wait(60)
        final = sub.until(lambda topic, m: topic == "status" and m["state"] == "stopped", 10)[1]
    finally:
        for closable in (sub, sender):
            if closable is not None:
                closable.close()
        daemon.close()
    assert code == 0, "\n".join(daemon.lines[-10:])
    assert [e["reason"] for e in daemon.events if e.get("event") == "draining"] == ["SIGINT"]
    assert daemon.events[-1]["event"] == "stopped"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in daemon.lines)
    assert final["buffers"]["adc0"]["records_flushed"] == heaps
    assert not pidfile.exists()
    assert lines_in_files(tmp_path / "data") == heaps
