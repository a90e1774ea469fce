"""The pidfile with real processes: live owners refuse, dead owners' files are replaced."""

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from daqd.errors import UsageProblem
from daqd.service.pidfile import (
    DaemonAlreadyRunning,
    PidFile,
    PidFileError,
    read_pid,
    wait_until_released,
)

WAIT = 10.0          # upper bound of every wait; never a speed requirement

# Takes the pidfile (after GO exists, if given), says so, holds it until stdin closes.
HOLDER = textwrap.dedent("""
    import os, sys, time
    from daqd.service.pidfile import PidFile
    path, go = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    if go:
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
    pidfile = PidFile(path)
    try:
        pidfile.acquire()
    except Exception as exc:
        print("refused", type(exc).__name__, exc, flush=True)
        sys.exit(2)
    print("held", os.getpid(), flush=True)
    sys.stdin.readline()
    pidfile.release()
    print("released", flush=True)
""")


class Holder:
    """A separate process running HOLDER."""

    def __init__(self, path, go=None):
        args = [sys.executable, "-c", HOLDER, str(path)] + ([str(go)] if go else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid

    def line(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        assert ready, "the holder process said nothing"
        return self.proc.stdout.readline().strip()

    def finish(self):
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        return self.proc.wait(WAIT), rest

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def holders():
    started = []

    def start(path, go=None):
        started.append(Holder(path, go))
        return started[-1]

    yield start
    for holder in started:
        holder.kill()


def test_a_live_owner_refuses_a_second_daemon_naming_pidfile_and_pid(tmp_path, holders):
    path = tmp_path / "run" / "daqd.pid"
    owner = holders(path)
    assert owner.line() == f"held {owner.pid}"
    assert path.read_text() == f"{owner.pid}\n"
    assert read_pid(path) == owner.pid

    second = holders(path)
    assert second.line() == (f"refused DaemonAlreadyRunning daqd is already running as pid "
                             f"{owner.pid} (pidfile {path})")
    assert second.proc.wait(WAIT) == 2

    with pytest.raises(DaemonAlreadyRunning) as refused:
        PidFile(path).acquire()
    assert isinstance(refused.value, UsageProblem)          # one line, exit status 2
    assert refused.value.pid == owner.pid and refused.value.path == str(path)
    assert "\n" not in str(refused.value)
    assert path.read_text() == f"{owner.pid}\n"              # left untouched


def test_a_sigkilled_owners_pidfile_is_detected_and_replaced(tmp_path, holders, json_logs):
    path = tmp_path / "daqd.pid"
    owner = holders(path)
    assert owner.line().startswith("held")
    os.kill(owner.pid, signal.SIGKILL)
    owner.proc.wait(WAIT)
    assert path.read_text() == f"{owner.pid}\n"              # the crash left it behind
    assert read_pid(path) is None

    with PidFile(path) as pidfile:
        assert pidfile.held
        assert path.read_text() == f"{os.getpid()}\n"
        assert read_pid(path) == os.getpid()
        stale = [e for e in json_logs() if e["logger"] == "daqd.pidfile"]
        assert len(stale) == 1 and stale[0]["level"] == "warning"
        assert stale[0]["stale_content"] == str(owner.pid)
        assert stale[0]["pidfile"] == str(path)
    assert not path.exists()


def test_a_clean_exit_removes_the_pidfile(tmp_path, holders):
    path = tmp_path / "daqd.pid"
    owner = holders(path)
    assert owner.line().startswith("held")
    assert owner.finish() == (0, "released\n")
    assert not path.exists()
    assert read_pid(path) is None
    assert [p.name for p in tmp_path.iterdir()] == []       # no temporary left either


def test_concurrent_starts_let_exactly_one_daemon_in(tmp_path, holders):
    path = tmp_path / "daqd.pid"
    go = tmp_path / "go"
    racers = [holders(path, go) for _ in range(6)]
    for racer in racers:
        assert racer.line() == "ready"
    go.touch()
    outcomes = {racer.pid: racer.line() for racer in racers}
    winners = [pid for pid, line in outcomes.items() if line.startswith("held")]
    assert len(winners) == 1, outcomes
    for pid, line in outcomes.items():
        if pid != winners[0]:
            assert line.startswith("refused DaemonAlreadyRunning"), line
            assert f"pid {winners[0]} " in line
    assert read_pid(path) == winners[0]


def test_missing_directories_are_created_and_release_is_idempotent(tmp_path):
    path = tmp_path / "a" / "b" / "daqd.pid"
    pidfile = PidFile(path)
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(RuntimeError):
        pidfile.acquire()
    pidfile.release()
    pidfile.release()
    assert not path.exists() and not pidfile.held


def test_a_pidfile_that_cannot_be_created_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PidFileError) as failed:
        PidFile(blocker / "daqd.pid").acquire()
    assert not isinstance(failed.value, DaemonAlreadyRunning)
    assert str(blocker / "daqd.pid") in str(failed.value) and "\n" not in str(failed.value)


@pytest.mark.parametrize("content", ["", "garbage\n", "0\n", f"{os.getpid()}\n"])
def test_an_unlocked_pidfile_names_no_daemon_whatever_it_says(tmp_path, content):
    path = tmp_path / "daqd.pid"
    path.write_text(content)
    assert read_pid(path) is None
    with PidFile(path):
        assert read_pid(path) == os.getpid()


def test_read_pid_of_no_file_is_none(tmp_path):
    assert read_pid(tmp_path / "absent.pid") is None


def test_wait_until_released_follows_the_lock(tmp_path, holders):
    path = tmp_path / "daqd.pid"
    owner = holders(path)
    assert owner.line().startswith("held")
    assert wait_until_released(path, timeout=0.1) is False
    owner.proc.stdin.close()                                   # the daemon exits cleanly
    assert wait_until_released(path, timeout=WAIT) is True
    assert owner.proc.wait(WAIT) == 0
