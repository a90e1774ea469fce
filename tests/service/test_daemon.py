"""The real daemon, started as a subprocess, fed over UDP, watched over ZeroMQ."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    W1Sender,
    buffer_toml,
    chunk_daemon,
    chunk_stream_config,
    control,
    free_port,
    send_w1,
    subscribed,
    w1_payloads,
    write_config,
)

from daqd.sinks.binary import load as load_binary

pytestmark = pytest.mark.network

HEAPS_PER_CHUNK = 8


def binary_chunks(tmp_path: Path) -> np.ndarray:
    files = sorted((tmp_path / "data").glob("*.bin"))
    assert files, "no binary file"
    return np.concatenate([load_binary(str(f))[1].reshape(-1, HEAPS_PER_CHUNK * 8192)
                           for f in files])


def test_daqd_simulate_over_udp_into_chunk_files_and_stop_item_ends_the_run(tmp_path):
    # exit_on_stop_heap: the stop heap ends the source (by default it is a capture boundary)
    with chunk_daemon(tmp_path, stream_keys={"exit_on_stop_heap": True}) as (daemon, ready,
                                                                              port):
        sub = subscribed(ready["stats"])
        heaps = 40 * HEAPS_PER_CHUNK
        result = subprocess.run(
            [sys.executable, "-m", "daqd", "simulate", f"udp://127.0.0.1:{port}",
             "--workload", "W1", "--heaps", str(heaps), "--rate", "50e6"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        sent = json.loads(result.stderr)
        # The stop heap ends the only (UDP) source: the daemon drains and exits 0.
        assert daemon.wait() == 0
        _, last = sub.until(lambda topic, m: topic == "status" and m["state"] == "stopped")
        sub.close()
    assert not list((tmp_path / "data").glob("*.tmp")), "a file was left unfinalised"
    data = binary_chunks(tmp_path)
    expected = np.frombuffer(b"".join(w1_payloads(heaps)), np.uint8).reshape(-1, data.shape[1])
    assert data.shape == expected.shape
    np.testing.assert_array_equal(data, expected)
    lines = [ln for f in sorted((tmp_path / "data").glob("*.txt"))
             for ln in f.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == heaps // HEAPS_PER_CHUNK
    stats = [e for e in daemon.events if e.get("event") == "stopped"]
    assert stats, daemon.lines[-5:]
    assert sent["packets"] == heaps             # plus one stop heap
    assert last["buffers"]["adc0"]["records_flushed"] == heaps // HEAPS_PER_CHUNK


def test_counters_published_match_what_was_sent(tmp_path):
    with chunk_daemon(tmp_path) as (daemon, ready, port):
        sub = subscribed(ready["stats"])
        heaps = 24 * HEAPS_PER_CHUNK
        send_w1(port, heaps, stop=False)
        _, message = sub.until(lambda topic, m: topic == "stats.adc0"
                               and m["counters"]["packets"] >= heaps)
        counters = message["counters"]
        assert counters["packets"] == heaps
        assert counters["heaps"] == heaps
        assert counters["chunk_heaps_placed"] == heaps
        assert counters["packets_dropped_socket_buffer"] == 0
        assert message["schema"] == "daqd.stats/1"
        assert message["daemon"] == "test-daqd"
        assert "free_ring" in message["gauges"]
        assert message["sources"] == {f"udp://127.0.0.1:{port}": {
            "packets": heaps, "bytes": heaps * (8192 + 56), "heaps": heaps,
            "batches": counters["batches"], "packets_dropped_socket_buffer": 0,
            "incomplete_heaps_evicted": 0, "chunk_heaps_too_old": 0, "stop_heaps": 0,
            "packets_rejected": 0}}
        assert set(message["rates"]) >= {"packets", "heaps"}
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        _, final = sub.until(lambda topic, m: topic == "stats.adc0"
                             and m["counters"]["chunks_completed"] == heaps // HEAPS_PER_CHUNK)
        sub.close()
    assert final["heaps_missing_per_substream"] == [0]
    assert binary_chunks(tmp_path).shape[0] == heaps // HEAPS_PER_CHUNK


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def buffered(endpoint):
    return control(endpoint, "status")["streams"]["adc0"]["buffer"]["size"]


def stream_counters(endpoint):
    return control(endpoint, "status")["streams"]["adc0"]["counters"]


def test_every_control_request(tmp_path):
    # max_chunks = 2: after sending n chunks' worth of heaps, n - 2 chunks are complete.
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, buffer=buffer_toml(
            kind="circular", capacity=16, when_full="overwrite-oldest",
            flush_count=0, flush_interval=3600)))     # flushed on demand only
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        sender = W1Sender(port)
        status = control(endpoint, {"command": "status"})
        assert status["ok"] and status["state"] == "running"
        assert "adc0" in status["streams"]
        # Nothing flushes by itself (all thresholds off): chunks 0-3 wait in the buffer.
        sender.send(6 * HEAPS_PER_CHUNK)
        wait_until(lambda: buffered(endpoint) == 4)
        assert not list((tmp_path / "data").glob("*.bin*"))
        assert control(endpoint, {"command": "flush"})["ok"]
        wait_until(lambda: buffered(endpoint) == 0)
        # capture-stop: chunks 4 and 5 complete while still receiving, and are let go
        assert control(endpoint, {"command": "capture-stop"})["ok"]
        sender.send(2 * HEAPS_PER_CHUNK)
        wait_until(lambda: control(endpoint, "status")["streams"]["adc0"]["counters"][
            "records_not_captured"] == 2)
        assert buffered(endpoint) == 0
        assert control(endpoint, {"command": "capture-start"})["ok"]
        sender.send(2 * HEAPS_PER_CHUNK)           # chunks 6 and 7 complete
        wait_until(lambda: buffered(endpoint) == 2)
        # trigger writes event files of their own (issue 13): never the buffer into the
        # running sinks; without [stream.trigger] it is refused, and the buffer stays
        reply = control(endpoint, {"command": "trigger", "label": "test"})
        assert reply["ok"] is False and "no stream has a [stream.trigger]" in reply["error"]
        assert buffered(endpoint) == 2
        assert control(endpoint, {"command": "flush"})["ok"]
        wait_until(lambda: buffered(endpoint) == 0)
        reset = control(endpoint, {"command": "reset-counters"})
        assert reset["ok"]
        assert control(endpoint, "status")["streams"]["adc0"]["counters"]["packets"] == 0
        for bad in (b"{not json", b"[1, 2]", b'{"command": "explode"}', b"", b'{"x": 1}'):
            reply = control(endpoint, bad)
            assert reply["ok"] is False and reply["error"], bad
        assert control(endpoint, "status")["ok"]            # the socket survived
        assert control(endpoint, {"command": "stop"})["ok"]
        assert daemon.wait() == 0
    finally:
        daemon.close()
    assert not list((tmp_path / "data").glob("*.tmp"))
    # 4 flushed, 2 let go while not capturing, 2 flushed, 2 closed by the stop
    ids = [int(line.split()[0]) for f in sorted((tmp_path / "data").glob("*.txt"))
           for line in f.read_text().splitlines() if not line.startswith("#")]
    assert ids == [0, 1, 2, 3, 6, 7, 8, 9]
    assert binary_chunks(tmp_path).shape[0] == 8


def test_sigkill_leaves_a_stale_pidfile_that_the_next_run_replaces(tmp_path):
    cfg = write_config(tmp_path, chunk_stream_config(tmp_path))
    first = DaemonProcess(cfg)
    try:
        first.ready()
        pidfile = tmp_path / "run" / "daqd.pid"
        assert int(pidfile.read_text().split()[0]) == first.proc.pid
        second = DaemonProcess(cfg)
        assert second.wait(30) == 2                        # refused: the pidfile is held
        assert any("pid" in ln and str(first.proc.pid) in ln for ln in second.lines), \
            second.lines
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.close()
    assert pidfile.exists()                                # stale: left by the crash
    third = DaemonProcess(cfg)
    try:
        third.ready()
        assert int(pidfile.read_text().split()[0]) == third.proc.pid
        assert third.stop() == 0
    finally:
        third.close()
    assert not pidfile.exists()


def running(pid):
    """Whether `pid` is a live process (a zombie nobody has reaped yet is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_start_and_stop_in_the_background(tmp_path):
    cfg = write_config(tmp_path, chunk_stream_config(tmp_path))
    daqd = [sys.executable, "-m", "daqd"]
    started = subprocess.run([*daqd, "start", "--config", str(cfg)], capture_output=True,
                             text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "run" / "daqd.pid").read_text().split()[0])
    try:
        again = subprocess.run([*daqd, "start", "--config", str(cfg)], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 2
        assert again.stderr.count("\n") == 1 and str(pid) in again.stderr
        stopped = subprocess.run([*daqd, "stop", "--config", str(cfg)], capture_output=True,
                                 text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert f"pid {pid}" in stopped.stderr
        assert not running(pid)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = (tmp_path / "run" / "daqd.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in log if line.startswith("{")]
    assert "ready" in events and "stopped" in events
    again = subprocess.run([*daqd, "stop", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "not running" in again.stderr


def test_start_of_a_daemon_that_fails_after_it_was_launched_is_status_1_with_its_last_line(
        tmp_path):
    """The configuration is valid, so ``start`` launches the daemon; the daemon then fails
    (its UDP port is taken).  ``start`` exits 1 with one line carrying the daemon's status
    and its last log line, and no pidfile is left behind."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        cfg = write_config(tmp_path, chunk_stream_config(tmp_path, port=port))
        started = subprocess.run([sys.executable, "-m", "daqd", "start", "--config", str(cfg)],
                                 capture_output=True, text=True, timeout=90)
    finally:
        taken.close()
    log = (tmp_path / "run" / "daqd.log").read_text().strip().splitlines()
    assert started.returncode == 1, started.stderr
    assert started.stderr.count("\n") == 1 and "Traceback" not in started.stderr
    assert started.stderr.startswith("daqd: error: the daemon exited with status 2 before it "
                                     "was ready: ")
    assert started.stderr.rstrip("\n").endswith(log[-1])
    assert f"udp://127.0.0.1:{port}" in log[-1] and "Address already in use" in log[-1]
    assert not (tmp_path / "run" / "daqd.pid").exists()


def test_second_signal_during_drain_exits_at_once(tmp_path):
    # The sink's directory turns into a file, so nothing can be written; the
    # buffer fills and the chunk consumer blocks in put() (block_timeout 30 s),
    # which the drain waits for.  A second SIGTERM cuts the drain short.
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, buffer=buffer_toml(
            kind="fifo", capacity=2, when_full="block", block_timeout=30.0,
            flush_count=1)))
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        assert not (tmp_path / "data").exists()              # made at the first write
        (tmp_path / "data").write_text("not a directory")
        send_w1(port, 6 * HEAPS_PER_CHUNK, stop=False)
        wait_until(lambda: buffered(endpoint) == 2)
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("draining")
        time.sleep(0.5)
        assert daemon.proc.poll() is None           # still draining (blocked put)
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(25)                      # bounded below the 30 s block_timeout
    finally:
        daemon.close()
    assert code == 1
    assert json.loads(daemon.lines[-1])["event"].startswith("second signal")


def test_sighup_reopens_and_sigusr1_flushes(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, chunk_stream_config(
        tmp_path, port=port, buffer=buffer_toml(
            kind="fifo", capacity=64,
            flush_count=0, flush_interval=3600)))     # flushed on demand only
    daemon = DaemonProcess(cfg)
    try:
        endpoint = daemon.ready()["control"]
        sender = W1Sender(port)
        sender.send(5 * HEAPS_PER_CHUNK)         # chunks 0-2 complete
        wait_until(lambda: buffered(endpoint) == 3)
        daemon.signal(signal.SIGUSR1)
        wait_until(lambda: buffered(endpoint) == 0)
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reopening sink files")
        wait_until(lambda: len(list((tmp_path / "data").glob("*.bin"))) == 1)
        sender.send(2 * HEAPS_PER_CHUNK)         # chunks 3, 4 complete
        wait_until(lambda: buffered(endpoint) == 2)
        # Every heap sent is in the open chunks 5 and 6 before the stop: what the
        # stop closes does not hang on its reading the socket's rest in time.
        wait_until(lambda: stream_counters(endpoint)["heaps"] == 7 * HEAPS_PER_CHUNK)
        assert daemon.stop() == 0                              # 5, 6 closed and flushed
    finally:
        daemon.close()
    # The daemon's own account first: every chunk completed reached the files.
    last = next(e for e in daemon.events if e.get("event") == "stopped")
    stopped = last["adc0"]
    assert last["errors"] == 0, "\n".join(daemon.lines[-30:])    # no thread failed
    assert (stopped["chunks_completed"], stopped["records_flushed"], stopped["lost"]) \
        == (7, 7, {}), stopped
    files = sorted((tmp_path / "data").glob("*.bin"))
    assert len(files) == 2                               # one before SIGHUP, one after
    assert binary_chunks(tmp_path).shape[0] == 7


@pytest.mark.parametrize("problem,expected", [
    ('[[stream]]\nname = "a"\nsources = ["udp://127.0.0.1:1"]\nmax_heaps = 0\n',
     "stream[0].max_heaps = 0: expected at least 1"),
    ('[[stream]]\nname = "a"\nsources = ["bogus://x"]\n', "stream[0].sources[0]"),
    ('[zmq]\nstats = "tcp://0.0.0.0:5556"\n[[stream]]\nname = "a"\nsources = ["sim:W1"]\n',
     "zmq.stats"),
    ('[daemon]\nnmae = "x"\n', "daemon.nmae"),
    ("[[stream]\n", "not valid TOML"),
])
def test_bad_configuration_is_one_line_and_status_2(tmp_path, problem, expected):
    cfg = write_config(tmp_path, problem)
    for command in ("validate", "run", "start"):
        result = subprocess.run([sys.executable, "-m", "daqd", command, "--config", str(cfg)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert expected in result.stderr and str(cfg) in result.stderr
        assert "Traceback" not in result.stderr


def test_validate_accepts_the_shipped_configurations(tmp_path):
    for path in sorted((Path(__file__).resolve().parents[2] / "config").glob("*.toml")):
        # system paths of the examples moved under tmp_path (validate checks directories)
        text = path.read_text().replace("/var/lib/daqd", str(tmp_path / "lib")).replace(
            "/run/daqd", str(tmp_path / "run"))
        copy = tmp_path / path.name
        copy.write_text(text)
        result = subprocess.run([sys.executable, "-m", "daqd", "validate", "--config",
                                 str(copy)], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout
    assert not list(tmp_path.glob("lib")), "validate created a directory"


def test_readme_first_command_runs_the_default_configuration(tmp_path):
    """`daqd run --duration N` with no --config: data arrives within seconds."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    assert "daqd run --duration" in first
    result = subprocess.run([sys.executable, "-m", "daqd", "run", "--duration", "3"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.index("ready") < names.index("draining") < names.index("stopped")
    first_stats = next(e for e in events if e["event"] == "stats")
    assert first_stats["packets"] > 0 and first_stats["chunks_completed"] > 0
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["errors"] == 0
    chunks = stopped["sim0"]["chunks_completed"]
    assert chunks == stopped["sim0"]["records_flushed"] > 0
    binary = list((tmp_path / "data").glob("sim0-*.bin"))
    text = list((tmp_path / "data").glob("sim0-*.txt"))
    assert len(binary) == 1 and len(text) == 1
    assert load_binary(str(binary[0]))[1].shape[0] == chunks
    assert len(text[0].read_text().splitlines()) == chunks + 1        # + header line
    assert not list((tmp_path / "data").glob("*.tmp"))
