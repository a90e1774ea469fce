"""Progress of ``daqd simulate`` and ``daqd dump``: log lines off a terminal, a bar on one.

No figure here is timed: a paced send (``--rate``) lasts at least its bytes
over its rate, so a log line every 0.1 s must appear; waits are bounded.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli_helpers import assert_one_line_error, daqd

from daqd.recv.sources import open_source
from daqd.tools.progress import Progress

HEAPS = 6000                     # W1: 8248-byte packets, one per heap: 49.5 MB
RATE = 40e6                      # so the send lasts at least 1.2 s
LINE = re.compile(r"^daqd: (simulate|dump): [\d.]+[kMG]?B of 49\.5MB \((\d+)%\), (\d+) heaps, "
                  r"[\d.]+[kMG]?B/s(, ETA \d\d:\d\d)?$")


def test_paced_simulate_into_a_file_logs_bytes_heaps_rate_and_eta(tmp_path):
    target = tmp_path / "w1.spead"
    proc = daqd("simulate", f"file:{target}", "--heaps", str(HEAPS), "--rate", str(RATE),
                "--progress", "log", "--progress-interval", "0.1")
    assert proc.returncode == 0, proc.stderr
    *lines, last = proc.stderr.strip().splitlines()
    assert json.loads(last)["heaps"] == HEAPS          # the summary stays the last line
    assert lines, proc.stderr
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    heaps = [int(m.group(3)) for m in matches]
    assert heaps == sorted(heaps) and 0 < heaps[-1] <= HEAPS
    assert any(m.group(4) for m in matches), lines     # the size is known: an ETA


def test_a_short_job_prints_no_progress_line(tmp_path):
    """Off a terminal the first line waits an interval: stderr stays the one JSON summary."""
    target = tmp_path / "w1.pcap"
    assert daqd("simulate", str(target), "--heaps", "50").returncode == 0
    proc = daqd("dump", f"pcap:{target}")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert json.loads(line)["heaps_printed"] == 50


def test_readers_say_how_far_they_have_read(tmp_path):
    target = tmp_path / "w1.pcap"
    assert daqd("simulate", str(target), "--heaps", "50").returncode == 0
    size = target.stat().st_size
    for uri in (f"pcap:{target}", f"file:{target}"):
        source = open_source(uri)
        try:
            assert source.reader.progress() == (0, size) or uri.startswith("pcap:")
            while source.reader.read_batch() is not None:
                pass
            done, total = source.reader.progress()
            assert total == size and done > size - 4096, (uri, done, total)
        finally:
            source.close()


def test_log_lines_follow_the_probe():
    """Progress asks its probe each interval and writes what it says."""
    done = [0]
    out = io.StringIO()
    with Progress("dump", lambda: (done[0], 1000), lambda: done[0] // 10, mode="log",
                  interval=0.05, stream=out):
        deadline = time.monotonic() + 10
        done[0] = 250
        while "25%" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    first = next(line for line in out.getvalue().splitlines() if "25%" in line)
    assert first.startswith("daqd: dump: 250B of 1.00kB (25%), 25 heaps, ")


def test_on_a_terminal_a_bar(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # 120 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "daqd", "simulate", f"file:{tmp_path / 'w1.spead'}", "--heaps",
         str(HEAPS), "--rate", str(RATE)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:         # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        assert proc.wait(30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace")
    assert "simulate:" in text and "%|" in text, text[-2000:]
    assert re.search(r"\d+ heaps", text), text[-2000:]
    assert "49.5M/49.5M" in text, text[-2000:]          # the bar's last state: all sent


def test_a_bad_progress_mode_is_one_line(tmp_path):
    proc = daqd("simulate", f"file:{tmp_path / 'x'}", "--heaps", "1", "--progress", "loud")
    assert_one_line_error(proc, "--progress")
