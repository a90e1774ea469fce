"""The ``daqd`` command line: help, one-line errors for bad URIs, simulate -> dump."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_helpers import assert_one_line_error, daqd

TIMEOUT = 60


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stderr.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# --help


@pytest.mark.parametrize("args", [[], ["dump"], ["simulate"]], ids=["daqd", "dump", "simulate"])
def test_help(args):
    proc = daqd(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert proc.stderr == ""


def test_no_arguments_is_a_one_line_usage_error():
    proc = daqd()
    assert_one_line_error(proc, "Missing command")
    assert proc.stderr.rstrip().endswith("(see 'daqd --help')")


# ---------------------------------------------------------------------------
# Bad URIs: one line naming the URI, exit 2


@pytest.mark.parametrize("uri", [
    "bogus://127.0.0.1:7148",          # unknown scheme
    "nocolon",                          # not a URI at all
    "udp://127.0.0.1",                  # missing port
    "udp://127.0.0.1:notaport",         # bad port
    "udp://127.0.0.1:99999",            # port out of range
    "tcp://127.0.0.1",                  # missing port
    "file:/nonexistent/dir/x.spead",    # missing file
    "pcap:/nonexistent/dir/x.pcap",     # missing file
    "udp://127.0.0.1:7148?bogus=1",     # unknown query option
    "sim:W1?bogus=1",                   # unknown query option
    "pcap:/dev/null?bogus=1",           # unknown query option
    "sim:W9",                           # unknown workload
    "sim:W1?heaps=abc",                 # bad number
    "file:",                            # no path
], ids=lambda u: u)
def test_bad_uri(uri):
    assert_one_line_error(daqd("dump", uri), uri)


def test_udp_port_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        uri = f"udp://127.0.0.1:{port}"
        assert_one_line_error(daqd("dump", uri), uri)


def test_bad_option_value_is_one_line():
    proc = daqd("dump", "sim:W1?heaps=1", "--max-heaps", "0")
    assert_one_line_error(proc, "'--max-heaps'")
    assert "0 is not in the range x>=1" in proc.stderr, proc.stderr


def test_simulate_bad_target(tmp_path):
    target = "bogus:somewhere"
    assert_one_line_error(daqd("simulate", target, "--heaps", "1"), target)


# ---------------------------------------------------------------------------
# simulate -> dump


def test_simulate_file_then_dump(tmp_path):
    path = tmp_path / "w2.spead"
    target = f"file:{path}"
    proc = daqd("simulate", target, "--workload", "W2", "--heaps", "100")
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stderr.strip().splitlines()[-1])
    assert sent["heaps"] == 100 and sent["packets"] == 100
    # 100 one-packet heaps of 1024 payload bytes + 56 header bytes, then a stop heap
    assert path.stat().st_size == 100 * (1024 + 56) + 48

    proc = daqd("dump", target)
    assert proc.returncode == 0, proc.stderr
    heaps = json_lines(proc.stdout)
    assert [h["cnt"] for h in heaps] == list(range(1, 101))
    assert all(h["complete"] for h in heaps)
    for i, h in enumerate(heaps):
        items = {item["id"]: item for item in h["items"]}
        assert items[0x1600] == {"id": 0x1600, "immediate": True, "value": i * 1024}
        assert len(bytes.fromhex(items[0x3300]["hex"])) == 1024
    counters = summary(proc)["counters"]
    assert counters["heaps_complete"] == 100
    assert counters["stop_heaps"] == 1
    assert counters["packets"] == 101
    assert counters["payload_bytes"] == 100 * 1024
    assert counters["stream_bytes_skipped"] == 0
    assert all(v == 0 for k, v in counters.items() if k.startswith("packets_rejected"))


def test_simulate_refuses_existing_file(tmp_path):
    path = tmp_path / "exists.spead"
    path.write_bytes(b"precious")
    target = f"file:{path}"
    assert_one_line_error(daqd("simulate", target, "--workload", "W2", "--heaps", "10"),
                          target)
    assert path.read_bytes() == b"precious"


def test_simulate_pcap_then_dump(tmp_path):
    path = tmp_path / "w1.pcap"
    proc = daqd("simulate", f"pcap:{path}", "--workload", "W1", "--heaps", "20")
    assert proc.returncode == 0, proc.stderr
    proc = daqd("dump", f"pcap:{path}")
    assert proc.returncode == 0, proc.stderr
    assert [h["cnt"] for h in json_lines(proc.stdout)] == list(range(1, 21))


def test_dump_sim_w3():
    proc = daqd("dump", "sim:W3?heaps=10")
    assert proc.returncode == 0, proc.stderr
    heaps = json_lines(proc.stdout)
    assert len(heaps) == 10
    assert [h["cnt"] for h in heaps] == list(range(1, 11))
    for h in heaps:
        assert h["complete"]
        data = [i for i in h["items"] if not i["immediate"]]
        assert sum(len(bytes.fromhex(i["hex"])) for i in data) == 65536
    counters = summary(proc)["counters"]
    assert counters["heaps_complete"] == 10
    assert counters["packets"] == 80
    assert counters["payload_bytes"] == 10 * 65536


def test_dump_count():
    proc = daqd("dump", "sim:W1?heaps=50", "--count", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(json_lines(proc.stdout)) == 3


def test_dump_stdin(tmp_path):
    path = tmp_path / "w2.spead"
    assert daqd("simulate", f"file:{path}", "--workload", "W2", "--heaps", "5").returncode == 0
    with open(path, "rb") as f:
        proc = subprocess.run([sys.executable, "-m", "daqd", "dump", "file:-"], stdin=f,
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert [h["cnt"] for h in json_lines(proc.stdout)] == [1, 2, 3, 4, 5]


def test_dump_garbage_file_counts(tmp_path):
    path = tmp_path / "junk.spead"
    path.write_bytes(bytes(range(256)) * 40)
    proc = daqd("dump", f"file:{path}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    counters = summary(proc)["counters"]
    assert counters["stream_bytes_skipped"] == 256 * 40


# ---------------------------------------------------------------------------
# Early close of stdout


def test_dump_into_closed_pipe_no_traceback():
    """`daqd dump ... | head -1`: the reader goes away after one line."""
    proc = subprocess.Popen([sys.executable, "-m", "daqd", "dump", "sim:W3?heaps=2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(first)["cnt"] == 1
    err = err.decode()
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 0, proc.returncode          # the reader leaving is no error
    printed = json.loads(err.strip().splitlines()[-1])["heaps_printed"]
    assert 1 <= printed < 2000                              # it stopped writing early


def test_dump_head_via_shell():
    cmd = f"{sys.executable} -m daqd dump 'sim:W1?heaps=5000' | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert len(proc.stdout.splitlines()) == 1
    assert json.loads(proc.stdout)["cnt"] == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
