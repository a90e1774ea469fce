"""``daqd validate`` makes every check ``daqd run`` makes, before anything is allocated.

Issue 12, finding 6: each configuration below passed ``validate`` and then
made ``run`` end in a traceback (exit 1) or run although wrong (exit 0).  Now
both commands refuse it with the same one line naming the key, exit 2.  The
real CLI runs as a subprocess; ``run`` under an address-space limit, so a
check that let a huge allocation through fails here fast instead of taking
the machine's memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_helpers import assert_one_line_error, daqd

# Address space a `daqd run` in these tests may take (a failed check would allocate GiBs).
RUN_ADDRESS_SPACE = 4 << 30

BASE = """
[daemon]
{daemon}
[zmq]
{zmq}
[[stream]]
name = {name}
sources = [{sources}]
{stream}
[stream.chunk]
{chunk}
[stream.buffer]
{buffer}
[[stream.sinks]]
kind = "binary"
path = "{tmp}/data/{{stream}}.bin"
{sink}
{extra}
"""

# The issue's cases first, then their neighbours: (tables' additions, the key named).
CASES = {
    # run: traceback, exit 1
    "pool-1e9": ({"chunk": "pool = 1000000000"}, "stream[0].chunk.pool = 1000000000"),
    "circular-capacity-1e9": ({"buffer": "capacity = 1000000000"},
                              "stream[0].buffer.capacity = 1000000000"),
    "max_heaps-1e9": ({"stream": "max_heaps = 1000000000"}, "stream[0].max_heaps = 1000000000"),
    "socket_buffer-2**31": ({"stream": "socket_buffer = 2147483648",
                             "sources": '"udp://127.0.0.1:0"'},
                            "stream[0].socket_buffer = 2147483648"),
    "dtype-object": ({"chunk": 'dtype = "object"'}, "stream[0].chunk.dtype = 'object'"),
    "dtype-str": ({"chunk": 'dtype = "U2"'}, "stream[0].chunk.dtype = 'U2'"),
    "dtype-void": ({"chunk": 'dtype = "V"'}, "stream[0].chunk.dtype = 'V'"),
    "same-sink-twice": ({"extra": '[[stream.sinks]]\nkind = "binary"\n'
                                  'path = "{tmp}/data/{{stream}}.bin"'},
                        "stream[0].sinks[1].path"),
    "same-file-two-streams": ({"sink": "", "extra": '[[stream]]\nname = "w"\n'
                               'sources = ["sim:W1?heaps=8"]\n[[stream.sinks]]\nkind = "text"\n'
                               'path = "{tmp}/data/v.bin"'}, "stream[1].sinks[0].path"),
    "wal-in-read-only-dir": ({"buffer": 'wal = "{ro}/wal/{{stream}}.wal"'},
                             "stream[0].buffer.wal"),
    "sink-in-read-only-dir": ({"sink": "", "extra": '[[stream.sinks]]\nkind = "text"\n'
                                          'path = "{ro}/{{stream}}.txt"'},
                              "stream[0].sinks[1].path"),
    "pidfile-in-read-only-dir": ({"daemon": 'pidfile = "{ro}/run/daqd.pid"'},
                                 "daemon.pidfile"),
    "ipc-endpoint-in-read-only-dir": ({"zmq": 'control = "ipc://{ro}/control"'},
                                      "zmq.control"),
    "wal-field-not-stream": ({"buffer": 'wal = "{tmp}/wal/{{seq}}.wal"'},
                             "stream[0].buffer.wal"),
    "wal-smaller-than-a-chunk": ({"buffer": 'wal = "{tmp}/x.wal"\nwal_max_bytes = 65536'},
                                 "stream[0].buffer.wal_max_bytes = 65536"),
    "extra-items-beyond-the-group": ({"chunk": "extra_items = [" + ", ".join(
        str(0x4000 + i) for i in range(64)) + "]"}, "stream[0].chunk.extra_items"),
    # run: accepted although wrong, exit 0
    "all-flush-conditions-off": ({"buffer": "flush_count = 0\nflush_interval = 0"},
                                 "stream[0].buffer.flush_count = 0"),
    "flush_count-beyond-capacity": ({"buffer": "flush_count = 17"},
                                    "stream[0].buffer.flush_count = 17"),
    "rotate_bytes-1": ({"sink": "rotate_bytes = 1"}, "stream[0].sinks[0].rotate_bytes = 1"),
    "stream-name-../../etc/x": ({"name": '"../../etc/x"'}, "stream[0].name = '../../etc/x'"),
    "stream-name-..": ({"name": '".."'}, "stream[0].name = '..'"),
    "stream-name-empty": ({"name": '""'}, "stream[0].name = ''"),
    "stream-name-NUL": ({"name": '"a\\u0000b"'}, "stream[0].name = 'a\\x00b'"),
    "flush_custom-os:system": ({"buffer": 'flush_custom = ["os:system"]'},
                               "stream[0].buffer.flush_custom[0] = 'os:system'"),
    "interval-nan": ({"zmq": "interval = nan"}, "zmq.interval = nan"),
    # the memory budget: the machine's available memory, or daemon.memory_budget
    "pool-beyond-MemAvailable": ({"chunk": "heaps_per_chunk = 64\npool = 1048576"},
                                 "stream[0].chunk.pool = 1048576: expected a configuration "
                                 "that fits in"),
    "pool-beyond-memory_budget": ({"daemon": "memory_budget = 268435456",
                                   "chunk": "pool = 8192"},
                                  "stream[0].chunk.pool = 8192: expected a configuration that "
                                  "fits in 256.0 MiB (daemon.memory_budget); it needs 514"),
}


# Keys of the base tables a case may replace.
DEFAULTS = {"daemon": {"name": '"v"', "pidfile": '"{tmp}/run/daqd.pid"'},
            "zmq": {"stats": '""', "control": '""'},
            "chunk": {"heaps_per_chunk": "8"},
            "buffer": {"kind": '"circular"', "capacity": "16", "flush_count": "4",
                       "flush_interval": "1.0"}}


def config_text(tmp: Path, ro: Path | None = None, **parts: str) -> str:
    """BASE with a case's lines added to its tables (a key given replaces the base's)."""
    fields = {"name": '"v"', "sources": '"sim:W1?heaps=64"',
              "stream": "", "sink": "", "extra": "", **parts}
    for table, keys in DEFAULTS.items():
        lines = dict(keys)
        for line in filter(None, parts.get(table, "").splitlines()):
            k, v = line.split(" = ", 1)
            lines[k] = v
        fields[table] = "\n".join(f"{k} = {v}" for k, v in lines.items())
    return BASE.format(tmp=tmp, **{k: v.format(tmp=tmp, ro=ro) for k, v in fields.items()})


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (RUN_ADDRESS_SPACE, RUN_ADDRESS_SPACE))


def run(config: Path, *args: str) -> subprocess.CompletedProcess:
    """``daqd run`` on `config`, limited in address space, bounded in time."""
    return daqd("run", "--config", str(config), "--log-format", "json", "--duration", "20",
                *args, preexec_fn=limit_address_space, cwd=config.parent)


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[Path]:
    """`path` made read-only for root too: a read-only tmpfs, else an immutable directory."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode == 0:
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    done2 = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done2.returncode != 0:
        pytest.skip("no read-only directory for root here: mount -t tmpfs -o ro: "
                    f"{done.stderr.strip()}; chattr +i: {done2.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def same_but_figures(line: str) -> str:
    """`line` with its memory figures ("21.7 GiB") blanked."""
    return re.sub(r"\d+(\.\d+)? [KMGT]?i?B\b", "N B", line)


@pytest.mark.parametrize("case", CASES)
def test_validate_and_run_refuse_it_with_the_same_line(case, tmp_path):
    parts, named = CASES[case]
    with contextlib.ExitStack() as stack:
        ro = stack.enter_context(read_only_directory(tmp_path / "ro")) if "{ro}" in str(
            parts) else None
        config = tmp_path / "daqd.toml"
        config.write_text(config_text(tmp_path, ro, **parts))
        checked = daqd("validate", "--config", str(config))
        assert_one_line_error(checked, named)
        assert checked.stderr.startswith(f"daqd: error: {config}: ")
        ran = run(config)
        assert_one_line_error(ran, named)
        # The same check, the same line (the machine's available memory, named in
        # the budget's line, may move between the two runs).
        assert same_but_figures(ran.stderr) == same_but_figures(checked.stderr)
    assert not (tmp_path / "data").exists()         # refused before anything was made


def test_a_good_configuration_validates_and_runs(tmp_path):
    config = tmp_path / "daqd.toml"
    config.write_text(config_text(tmp_path))
    checked = daqd("validate", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: valid: v (chunk mode")
    assert " (MemAvailable)" in checked.stdout          # what it needs of the budget
    ran = run(config)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "data" / "v.bin").stat().st_size > 8 * 8 * 8192     # 8 chunks of W1
    events = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "stopped" for e in events)


def test_clients_of_a_running_daemon_skip_the_machine_checks(tmp_path):
    """``daqd status`` asks a daemon that holds the memory: the budget is not checked again."""
    text = config_text(tmp_path, daemon="memory_budget = 1048576",
                       zmq='control = "tcp://127.0.0.1:1"\ncontrol_insecure_tcp = true')
    config = tmp_path / "daqd.toml"
    config.write_text(text)
    assert_one_line_error(daqd("validate", "--config", str(config)), "memory_budget")
    asked = daqd("status", "--config", str(config), "--timeout", "0.2")
    assert "fits in" not in asked.stderr and "Traceback" not in asked.stderr


def test_a_write_ahead_log_another_daemon_holds_is_one_line_at_run(tmp_path):
    """Not a configuration mistake (validate passes it, as it does a port in use), but run
    says it in one line, exit 2, as it does a port or a pidfile in use."""
    config = tmp_path / "daqd.toml"
    config.write_text(config_text(tmp_path, buffer='wal = "{tmp}/x.wal"'))
    with open(tmp_path / "x.wal", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert daqd("validate", "--config", str(config)).returncode == 0
        ran = run(config)
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last == (f"daqd: error: {tmp_path}/x.wal: cannot open the write-ahead log: "
                    f"write-ahead log {tmp_path}/x.wal is in use by another process")
