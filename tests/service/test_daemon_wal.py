"""The write-ahead log at daemon level: SIGKILL the real daemon, restart it, check every record.

A sender thread feeds numbered heaps over UDP at a steady pace.  The daemon
(heap mode, a FIFO buffer with a WAL, a text and a binary sink, each writing
one file per run or rotating every few dozen records) is killed with SIGKILL
at seeded random moments, and started again with the same configuration
(the stale pidfile is taken over).  A last run ends with SIGTERM, and the
published files are then checked record for record.

What is proven, and why the check is sound
------------------------------------------
Heap ``n`` (``n`` = 1, 2, ...) has heap counter ``n``, an immediate item
0x1600 = ``n`` and an addressed item 0x3300 whose 24 bytes are a hash of
``n``, so any record's line and bytes are predictable from ``n`` alone.

The sender holds (sends nothing) from the moment a daemon is spawned until
the test has seen its ``ready`` log event; its socket is bound by then.  So
``first[k]``, the first number sent after run ``k``'s ``ready``, is the first
heap run ``k`` can receive, and nothing sent before it is waiting in its
socket.  Between a kill (the process reaped) and the next spawn the sender
goes on: those heaps hit a closed port and are legitimately lost.  Loopback
UDP neither reorders nor, at this pace, drops (the daemon's socket-buffer
drop counter is checked, and a drop would show as a gap, failing the test
rather than hiding a loss), and single-packet heaps complete in arrival order, so
run ``k`` receives exactly the numbers ``first[k], first[k] + 1, ...`` up to
some number before ``end[k]`` (the next number the sender had not yet sent
when the process was reaped).  A FIFO buffer that never drops (checked:
``records_dropped == 0`` in every message seen) accepts them in that order, so
the records run ``k`` had accepted when it died are ``first[k] ...
first[k] + A - 1`` for some ``A``.

``records_accepted`` only counts a record once its WAL append has returned.
The test keeps the value ``N[k]`` from the last ``stats.wal0`` message its
SUB socket received before sending SIGKILL; it was published earlier, so
``N[k] <= A``.  The check then proves, from the files alone:

- every line and every binary record is exactly what heap ``n`` carried, text
  and binary agree record for record, nothing else is in the files
  (no garbage, no torn line or record);
- the numbers are strictly increasing across the files in name order (each
  record once, in order);
- for each killed run, the numbers from its window ``[first[k], end[k])``
  are ``first[k], first[k] + 1, ..., first[k] + m - 1`` with ``m >= N[k]``:
  every record the daemon had reported accepted before the kill is present,
  and what is present is a gap-free prefix of what the run received (a
  record received but not yet logged may be missing, nothing before it);
- the last run, stopped by SIGTERM once it had received everything sent to
  it, wrote its whole window.

Numbers outside every window (sent while no daemon was listening) cannot
appear, since each must fall into some window.  Some runs are killed within
40 ms of their first log line, while they take over the pidfile, replay the
WAL into the sinks and bind their sockets: they are sent nothing and have no
window, and must neither lose nor duplicate what earlier runs left.  (Files
started after the last done mark, e.g. for such a replay or by a rotation
inside a flush, stay ``.tmp`` orphans holding records the WAL replays; they
are never published, and only published files are read.)
"""

import hashlib
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    DaemonProcess,
    Subscriber,
    daemon_toml,
    free_port,
    udp_stream_toml,
    wait_until,
)
from spead_packets import heap_packets

from daqd.sinks.binary import read_header

pytestmark = pytest.mark.network

SEQ_ITEM = 0x1600
PAYLOAD_ITEM = 0x3300
PAYLOAD_BYTES = 24
STREAM = "wal0"


def payload(n: int) -> bytes:
    """The addressed item of heap `n`: 24 bytes no other heap has."""
    return hashlib.blake2b(n.to_bytes(8, "little"), digest_size=PAYLOAD_BYTES).digest()


def expected_line(n: int) -> str:
    """The text sink's line for heap `n` (template ``{cnt} {items[5632]} {items[13056]}``)."""
    return f"{n} {n} {payload(n).hex()}"


def wal_config(tmp: Path, port: int, rotate: bool) -> str:
    """A heap-mode stream with a WAL-backed FIFO buffer, a text and a binary sink.

    With `rotate`, the sinks start a new file every ~70 records (text: lines of
    about 60 bytes) and 40 records (binary: 4096 header bytes and 40 records
    of 24), so most flushes
    (150 records or 0.25 s) rotate, and a kill often falls between a file's
    rotation and the done mark that lets it be published.
    """
    text_rotation = "rotate_bytes = 4096" if rotate else ""      # the least rotate_bytes
    binary_rotation = f"rotate_bytes = {4096 + 40 * PAYLOAD_BYTES}" if rotate else ""
    return daemon_toml(tmp, "wal-daqd", 0.1) + udp_stream_toml(STREAM, port) + f"""
[stream.buffer]
kind = "fifo"
capacity = 100000
when_full = "block"
flush_count = 150
flush_interval = 0.25
wal = "{tmp}/wal/{{stream}}.wal"

[[stream.sinks]]
kind = "text"
path = "{tmp}/data/{{stream}}-{{seq:04d}}.txt"
{text_rotation}
template = "{{cnt}} {{items[{SEQ_ITEM}]}} {{items[{PAYLOAD_ITEM}]}}"

[[stream.sinks]]
kind = "binary"
path = "{tmp}/data/{{stream}}-{{seq:04d}}.bin"
{binary_rotation}
"""


class NumberedSender:
    """Sends heap 1, 2, 3, ... to a UDP port at a steady pace, in a thread.

    `hold` stops it (when it returns no send is under way) and `resume` starts
    it again, returning the first number it will send.  An unconnected socket:
    a closed port's ICMP errors do not come back as send errors.
    """

    def __init__(self, port: int, per_tick: int = 2, tick: float = 0.002):
        self.address = ("127.0.0.1", port)
        self.per_tick = per_tick
        self.tick = tick
        self.next = 1
        self.sending = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.tick):
            with self.lock:
                if not self.sending:
                    continue
                for _ in range(self.per_tick):
                    n = self.next
                    (packet,) = heap_packets(n, [(SEQ_ITEM, n), (PAYLOAD_ITEM, payload(n))])
                    self.sock.sendto(packet, self.address)
                    self.next = n + 1

    def hold(self) -> int:
        """Stop sending; the next number to be sent."""
        with self.lock:
            self.sending = False
            return self.next

    def resume(self) -> int:
        """Start sending; the first number it will send."""
        with self.lock:
            self.sending = True
            return self.next

    def position(self) -> int:
        """The next number to be sent (every smaller one has been sent)."""
        with self.lock:
            return self.next

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@dataclass
class Run:
    """One daemon process: its window of numbers and what it reported."""

    pid: int
    first: int | None = None        # first number sent after its `ready`
    end: int | None = None          # next number unsent when it was reaped
    accepted: int = 0               # records_accepted in its last message before the kill


def published(directory: Path, suffix: str) -> list[Path]:
    """Published files of the stream, in name ({seq}) order."""
    return sorted(directory.glob(f"{STREAM}-*{suffix}"),
                  key=lambda p: int(p.name[len(STREAM) + 1:].split(".")[0]))


def text_numbers(directory: Path) -> list[int]:
    """Numbers of the text files' lines, each line checked exactly."""
    numbers = []
    for path in published(directory, ".txt"):
        text = path.read_text()
        assert text.endswith("\n"), f"{path}: torn last line"
        header, *lines = text.splitlines()
        assert header == f"# cnt items[{SEQ_ITEM}] items[{PAYLOAD_ITEM}]", path
        for line in lines:
            n = int(line.split(" ", 1)[0])
            assert line == expected_line(n), f"{path}: garbage line {line!r}"
            numbers.append(n)
    return numbers


def binary_numbers(directory: Path, sent: int) -> list[int]:
    """Numbers of the binary files' records (24 bytes each), each record checked exactly."""
    number_of = {payload(n): n for n in range(1, sent + 1)}
    numbers = []
    for path in published(directory, ".bin"):
        meta = read_header(str(path))
        assert meta["mode"] == "heap" and meta["stream"] == STREAM
        body = path.read_bytes()[meta["header_bytes"]:]
        assert len(body) % PAYLOAD_BYTES == 0, f"{path}: torn record"
        records = [body[i:i + PAYLOAD_BYTES] for i in range(0, len(body), PAYLOAD_BYTES)]
        for i, record in enumerate(records):
            assert record in number_of, f"{path}: garbage record {i}: {record.hex()}"
            numbers.append(number_of[record])
        if records:
            # the header names the first record's heap counter
            assert meta["first_chunk_id"] == number_of[records[0]], path
    return numbers


def kill_during_start_up(daemon: DaemonProcess, rng: random.Random) -> None:
    """SIGKILL within 40 ms of the daemon's first log line (pidfile, WAL recovery, sockets)."""
    wait_until(lambda: daemon.events or daemon.proc.poll() is not None, 30, "a first log line")
    assert daemon.proc.poll() is None, "\n".join(daemon.lines[-20:])
    time.sleep(rng.uniform(0.0, 0.04))
    daemon.signal(signal.SIGKILL)
    daemon.wait(30)


def run_rounds(tmp_path: Path, seed: int, kills: int, rotate: bool,
               ) -> tuple[list[Run], NumberedSender]:
    """Kill the daemon `kills` times at random, then run it once more and SIGTERM it."""
    rng = random.Random(seed)
    port = free_port()
    cfg = tmp_path / "daqd.toml"
    cfg.write_text(wal_config(tmp_path, port, rotate))
    pidfile = tmp_path / "run" / "daqd.pid"
    sender = NumberedSender(port)
    runs: list[Run] = []
    try:
        for k in range(kills + 1):
            sender.hold()
            daemon = DaemonProcess(cfg)
            run = Run(daemon.proc.pid)
            runs.append(run)
            try:
                if 0 < k < kills and rng.random() < 0.3:
                    # Now and then a kill during start-up: nothing is sent to that run.
                    kill_during_start_up(daemon, rng)
                    time.sleep(rng.uniform(0.05, 0.3))
                    continue
                ready = daemon.ready(30)
                assert int(pidfile.read_text().split()[0]) == run.pid   # stale one replaced
                sub = Subscriber(ready["stats"])
                run.first = sender.resume()
                if k == kills:
                    # The last run: everything sent reaches it, then a clean stop.
                    time.sleep(0.5)
                    run.end = sender.hold()
                    want = run.end - run.first

                    def received(sub=sub, want=want):
                        got = sub.next(1.0)
                        return got is not None and got[0] == f"stats.{STREAM}" \
                            and got[1]["buffer"]["records_accepted"] >= want

                    wait_until(received, 20, "every record sent accepted")
                    sub.close()
                    daemon.signal(signal.SIGTERM)
                    assert daemon.wait(60) == 0, "\n".join(daemon.lines[-20:])
                    break
                kill_at = time.monotonic() + rng.uniform(0.2, 1.2)
                while time.monotonic() < kill_at:
                    got = sub.next(max(0.001, kill_at - time.monotonic()))
                    if got is None or got[0] != f"stats.{STREAM}":
                        continue
                    message = got[1]
                    buffer = message["buffer"]
                    assert buffer["records_dropped"] == 0, buffer
                    assert message["counters"]["packets_dropped_socket_buffer"] == 0
                    run.accepted = buffer["records_accepted"]
                daemon.signal(signal.SIGKILL)
                daemon.wait(30)
                run.end = sender.position()
                sub.close()
                # The heaps sent now hit a closed port: legitimately lost.
                time.sleep(rng.uniform(0.05, 0.3))
            finally:
                daemon.close()
    finally:
        sender.close()
    assert not pidfile.exists()
    return runs, sender


def check_sink(sink: str, numbers: list[int], runs: list[Run]) -> None:
    """The checks of the module docstring on one sink's record numbers, in file order."""
    for a, b in zip(numbers, numbers[1:], strict=False):
        assert a < b, f"{sink}: record {b} after {a}: a record twice, or out of order"
    windows = [r for r in runs if r.first is not None]
    by_run: dict[int, list[int]] = {id(r): [] for r in windows}
    for n in numbers:
        owner = [r for r in windows if r.first <= n < r.end]
        assert owner, f"{sink}: record {n} was sent while no daemon was listening"
        by_run[id(owner[0])].append(n)
    for i, run in enumerate(windows):
        got = by_run[id(run)]
        assert got == list(range(run.first, run.first + len(got))), \
            f"{sink}: run {i}: a gap in the records it received: {got[:5]}..."
        assert len(got) >= run.accepted, \
            f"{sink}: run {i}: {run.accepted} records reported accepted, {len(got)} written"
    final = windows[-1]
    assert final is runs[-1], "the last run has no window"
    assert by_run[id(final)] == list(range(final.first, final.end)), \
        f"{sink}: the last run did not write everything it received"


def check_output(tmp_path: Path, runs: list[Run], sent: int) -> list[int]:
    """Check both sinks' published files; returns the record numbers found."""
    data = tmp_path / "data"
    text = text_numbers(data)
    check_sink("text", text, runs)
    binary = binary_numbers(data, sent)
    check_sink("binary", binary, runs)
    assert binary == text
    return text


@pytest.mark.parametrize("rotate", [False, True], ids=["one-file", "rotating"])
def test_sigkill_and_restart_lose_and_repeat_nothing_accepted(tmp_path, rotate):
    runs, sender = run_rounds(tmp_path, seed=20261121, kills=2, rotate=rotate)
    numbers = check_output(tmp_path, runs, sender.next - 1)
    # The test has teeth only if kills came after records were accepted, and
    # heaps were sent while no daemon listened.
    assert sum(r.accepted for r in runs[:-1]) > 0
    assert len(numbers) < sender.next - 1


@pytest.mark.slow
@pytest.mark.parametrize("rotate", [False, True], ids=["one-file", "rotating"])
@pytest.mark.parametrize("seed", [1, 2])
def test_many_sigkills_at_random_points(tmp_path, seed, rotate):
    runs, sender = run_rounds(tmp_path, seed=seed, kills=20, rotate=rotate)
    check_output(tmp_path, runs, sender.next - 1)
    assert sum(r.accepted for r in runs[:-1]) > 0
