"""``daqd top`` driven headless (Textual's pilot) against a real daemon fed known heaps."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import assert_one_line_error
from cli_helpers import daqd as run_daqd
from daemon_helpers import (
    W1Sender,
    chunk_daemon,
    daemon_toml,
    free_port,
    write_config,
)

from daqd.tools.top.app import DetailScreen, TopApp
from daqd.tools.top.feed import Feed
from daqd.tools.top.model import Monitor

pytestmark = pytest.mark.network


def table_text(app: TopApp) -> list[list[str]]:
    """The main table's rows as the screen shows them (the totals row last)."""
    table = app.query_one("#streams", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def head_text(app: TopApp) -> str:
    return str(app.query_one("#head", Static).render())


async def until(pilot, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Let the app run until `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen within {timeout} s"
        await pilot.pause(0.1)


def column(name: str) -> int:
    from daqd.tools.top.cells import COLUMNS

    return COLUMNS.index(name)


def test_top_shows_a_live_daemon_its_loss_keys_and_then_stale(tmp_path: Path):
    with chunk_daemon(tmp_path) as (daemon, ready, port):
        sender = W1Sender(port, heaps=256)
        sender.send(64)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad:
            for _ in range(3):                      # not SPEAD: rejected, bad magic
                bad.sendto(b"\x00" * 64, ("127.0.0.1", port))
        endpoint = ready["stats"]
        app = TopApp(Feed([endpoint]), Monitor([endpoint], stale_after=1.0))

        async def drive() -> None:
            async with app.run_test(size=(220, 30)) as pilot:
                def packets_shown(n: int) -> Callable[[], bool]:
                    return lambda: any(r[1] == "adc0" and r[column("packets")] == f"{n:,}"
                                       for r in table_text(app)[:-1])

                await until(pilot, packets_shown(67), "67 packets on adc0's row")
                row = table_text(app)[0]
                assert row[column("daemon")] == "test-daqd"
                assert row[column("loss (total)")] == "3"
                assert row[column("largest reason")] == "packets_rejected_bad_magic"
                assert row[column("heaps|chunks/s")].endswith("chunks")
                totals = table_text(app)[-1]
                assert totals[0] == "TOTAL" and totals[column("packets")] == "67"
                assert totals[column("loss (total)")] == "3"

                # s: the sort changes, and the header says which
                assert "sort: name" in head_text(app)
                await pilot.press("s")
                assert "sort: packets/s" in head_text(app)

                # p: the screen freezes while statistics go on arriving
                await pilot.press("p")
                assert "PAUSED" in head_text(app)
                sender.send(32)
                await until(pilot, lambda: app.monitor.rows[(endpoint, "adc0")]
                            .counters.get("packets") == 99, "99 packets in the model")
                assert table_text(app)[0][column("packets")] == "67"
                await pilot.press("p")
                await until(pilot, packets_shown(99), "99 packets after resuming")

                # enter: the stream's detail, every counter; escape goes back
                await pilot.press("enter")
                assert isinstance(app.screen, DetailScreen)
                detail = str(app.screen.query_one("#detail", Static).render())
                assert "test-daqd/adc0" in detail
                for name in ("packets", "heaps", "chunks_completed",
                             "packets_rejected_bad_magic", "chunk_heaps_too_old"):
                    assert f"\n  {name} " in detail
                assert "packets_rejected_bad_magic: 3" in detail
                assert "binary:" in detail and "text:" in detail
                await pilot.press("p")                      # p works here too
                assert app.paused and "PAUSED" in head_text(app)
                await pilot.press("p")
                await pilot.press("escape")
                assert not isinstance(app.screen, DetailScreen)

                # the daemon dies (SIGKILL, no last word): its row stays, marked stale,
                # and the screen still runs
                sender.close()
                daemon.close()
                await until(pilot, lambda: table_text(app)[0][column("daemon")]
                            == "test-daqd (stale)", "the stale mark")
                assert table_text(app)[0][1] == "adc0"
                assert table_text(app)[-1][column("packets/s")] == "0.0"

                await pilot.press("q")
            assert app.return_code == 0

        asyncio.run(asyncio.wait_for(drive(), 90))


def test_top_marks_a_stream_waiting_for_start_until_it_starts(tmp_path: Path):
    """``explicit_start``: the row says the stream waits for ``start-receiving``."""
    with chunk_daemon(tmp_path, stream_keys={"explicit_start": True}) as (daemon, ready, _):
        endpoint = ready["stats"]
        app = TopApp(Feed([endpoint]), Monitor([endpoint], stale_after=5.0))

        async def drive() -> None:
            async with app.run_test(size=(220, 30)) as pilot:
                await until(pilot, lambda: table_text(app)[0][column("daemon")]
                            == "test-daqd (waiting for start)", "the waiting mark")
                started = run_daqd("start-receiving", "--config", str(daemon.config_path))
                assert started.returncode == 0, started.stderr
                await until(pilot, lambda: table_text(app)[0][column("daemon")]
                            == "test-daqd", "the mark gone once started")
                await pilot.press("q")

        asyncio.run(asyncio.wait_for(drive(), 60))


def test_top_shows_the_newest_data_time_in_utc_or_ticks(tmp_path: Path):
    """With [stream.time], the newest chunk's UTC and its lag; without, its ticks."""
    clock = '[stream.time]\nsync_time = "2026-12-07T00:00:00Z"\ntimestamp_rate = 65536.0\n'
    for name in "ab":
        (tmp_path / name).mkdir()
    with chunk_daemon(tmp_path / "a", extra=clock) as (_, ready, port), \
            chunk_daemon(tmp_path / "b") as (_, ready_b, port_b):
        for p in (port, port_b):
            sender = W1Sender(p, heaps=64)
            sender.send(64)             # chunks 0-7 begun; 0-5 complete (max_chunks 2)
            sender.close()
        endpoints = [ready["stats"], ready_b["stats"]]
        app = TopApp(Feed(endpoints), Monitor(endpoints))

        async def drive() -> None:
            async with app.run_test(size=(260, 30)) as pilot:
                def shown() -> list[str]:
                    return sorted(r[column("newest data")] for r in table_text(app)[:-1])

                # chunk 5 starts at 5 x 65536 ticks: 00:00:05 UTC at 65536 ticks per second
                await until(pilot, lambda: len(shown()) == 2 and shown()[1] == "327680"
                            and shown()[0].startswith("00:00:05.000 (lag "), "data times")
                float(shown()[0].split("lag ")[1].split(" s)")[0].replace(",", ""))   # a number
                await pilot.press("enter")
                detail = str(app.screen.query_one("#detail", Static).render())
                assert "\n  newest data time: " in detail
                assert "\n  capture: capturing, block " in detail
                await pilot.press("q")

        asyncio.run(asyncio.wait_for(drive(), 60))


def test_top_waits_for_a_silent_endpoint_without_blocking(tmp_path: Path):
    """Nothing publishes at the endpoint: the screen runs and says whom it waits for."""
    endpoint = f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    app = TopApp(Feed([endpoint]), Monitor([endpoint]))

    async def drive() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: f"waiting for: {endpoint}" in head_text(app), "waiting")
            assert table_text(app) == [table_text(app)[-1]]       # only the totals row
            await pilot.press("s")
            assert "sort: packets/s" in head_text(app)
            await pilot.press("q")

    asyncio.run(asyncio.wait_for(drive(), 30))


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --endpoint E or --config F"),
    (["--endpoint", "nonsense"], "--endpoint nonsense: not a ZeroMQ endpoint"),
])
def test_top_bad_arguments_are_one_line_and_status_2(args: list[str], message: str):
    assert_one_line_error(run_daqd("top", *args), message)


def test_top_config_with_a_wildcard_stats_port_is_a_usage_problem(tmp_path: Path):
    path = write_config(tmp_path, daemon_toml(tmp_path) + "[[stream]]\nname = \"a\"\n"
                        "sources = [\"udp://127.0.0.1:7148\"]\n")
    assert_one_line_error(run_daqd("top", "--config", str(path)), "wildcard port")


def test_top_two_daemons_from_their_configurations_and_the_totals_row(tmp_path: Path):
    """Endpoints taken from two configurations; one row each and their sum in TOTAL."""
    from daemon_helpers import DaemonProcess, chunk_stream_config

    from daqd.tools.top.command import endpoints_of

    daemons, senders, paths = [], [], []
    try:
        for i, heaps in enumerate((40, 24)):
            tmp = tmp_path / f"d{i}"
            tmp.mkdir()
            port, stats = free_port(), f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
            text = chunk_stream_config(tmp, port=port).replace(
                'stats = "tcp://127.0.0.1:*"', f'stats = "{stats}"').replace(
                'name = "test-daqd"', f'name = "daq{i}"')
            paths.append(str(write_config(tmp, text)))
            daemons.append(DaemonProcess(Path(paths[-1])))
            daemons[-1].ready()
            senders.append(W1Sender(port, heaps=heaps))
            senders[-1].send(heaps)
        from daqd.config import load

        endpoints = endpoints_of((), [load(p, host=False) for p in paths])
        assert len(endpoints) == 2
        app = TopApp(Feed(endpoints), Monitor(endpoints))

        async def drive() -> None:
            async with app.run_test(size=(220, 30)) as pilot:
                await until(pilot, lambda: table_text(app)[-1][column("packets")] == "64",
                            "64 packets in the totals row")
                rows = table_text(app)
                assert [(r[0], r[1], r[column("packets")]) for r in rows[:-1]] == [
                    ("daq0", "adc0", "40"), ("daq1", "adc0", "24")]
                assert rows[-1][:2] == ["TOTAL", "2 stream(s)"]

                # one daemon stops cleanly: its last status says so, then it goes stale;
                # the totals keep its counts and drop its rates
                assert daemons[0].stop() == 0
                await until(pilot, lambda: table_text(app)[0][0] == "daq0 (stopped, stale)",
                            "daq0 stopped and stale", timeout=20)
                assert table_text(app)[1][0] == "daq1"
                assert table_text(app)[-1][column("packets")] == "64"
                await pilot.press("q")

        asyncio.run(asyncio.wait_for(drive(), 60))
    finally:
        for sender in senders:
            sender.close()
        for daemon in daemons:
            daemon.close()


def test_fill_bar_and_substream_strip():
    from daqd.tools.top.cells import bar, strip

    assert bar(None) == "-"
    assert bar(0.5) == "█████░░░░░  50%"
    assert bar(1.0) == "██████████ 100%"
    assert strip([]) == "-"
    assert strip([0, 0, 0]) == "···"
    assert strip([0, 8, 4, 1]) == "·█▄▁"


def test_top_print_after_prints_the_table_as_text(tmp_path: Path):
    with chunk_daemon(tmp_path) as (daemon, ready, port):
        sender = W1Sender(port, heaps=32)
        sender.send(32)
        sender.close()
        done = run_daqd("top", "--endpoint", ready["stats"], "--print-after", "1.5")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split()[:4] == ["daemon", "stream", "packets", "packets/s"]
        assert lines[1].split()[:3] == ["test-daqd", "adc0", "32"]
        assert lines[2].split()[:4] == ["TOTAL", "1", "stream(s)", "32"]


def test_top_is_listed_and_has_help():
    assert " top " in run_daqd("--help").stdout
    done = run_daqd("top", "--help")
    assert done.returncode == 0 and done.stderr == ""
    assert "q quits, p pauses" in " ".join(done.stdout.split())


def test_top_missing_configuration_is_one_line(tmp_path: Path):
    assert_one_line_error(run_daqd("top", "--config", str(tmp_path / "nope.toml")), "nope.toml")


def test_top_substream_loss_strip_against_known_missing_heaps(tmp_path: Path):
    """Four substreams; substream 2 loses a heap in each of 6 chunks, substream 3 in one."""
    from daemon_helpers import DaemonProcess, sinks_toml, udp_stream_toml
    from spead_packets import heap_packets

    port = free_port()
    text = daemon_toml(tmp_path) + udp_stream_toml("adc0", port) + """
[stream.chunk]
timestamp_item = 0x1600
timestamp_step = 8192
heaps_per_chunk = 2
heap_bytes = 64
substream_item = 0x4101
substreams = 4
max_chunks = 2
pool = 16
""" + sinks_toml(tmp_path, "binary")
    daemon = DaemonProcess(write_config(tmp_path, text))
    try:
        ready = daemon.ready()
        packets, cnt = [], 1
        for chunk in range(10):          # chunks 6-9 only push 0-5 out of the window
            for slot in range(2):
                for sub in range(4):
                    lost = chunk < 6 and (sub == 2 and slot == 0 or
                                          sub == 3 and slot == 1 and chunk == 4)
                    if not lost:
                        packets += heap_packets(cnt, [(0x1600, (chunk * 2 + slot) * 8192),
                                                      (0x4101, sub), (0x3000, bytes(64))])
                    cnt += 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in packets:
                s.sendto(p, ("127.0.0.1", port))
        endpoint = ready["stats"]
        app = TopApp(Feed([endpoint]), Monitor([endpoint]))

        async def drive() -> None:
            async with app.run_test(size=(220, 30)) as pilot:
                def strip_shown() -> bool:
                    rows = table_text(app)
                    return len(rows) == 2 and rows[0][column("substream loss")] == "··█▁"
                await until(pilot, strip_shown, "the strip ··█▁")
                await pilot.press("enter")
                detail = str(app.screen.query_one("#detail", Static).render())
                assert "heaps missing per substream since start: [0, 0, 6, 1]" in detail
                await pilot.press("q")

        asyncio.run(asyncio.wait_for(drive(), 60))
    finally:
        daemon.close()
