"""A UDP socket buffer the kernel caps says so at start-up, with the sysctl to raise.

The daemon asks for ``socket_buffer`` bytes with SO_RCVBUF, which Linux caps at
``net.core.rmem_max`` whoever asks.  A stream asking for more than the
machine's limit gets one ``source warning`` naming its source, what it got,
what it asked for and the ``sysctl`` line; a stream asking for no more than
the limit gets none.  The limit is read, never changed (other processes on
the machine share it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import DaemonProcess, daemon_toml, free_port, toml_table, write_config

pytestmark = pytest.mark.network

RMEM_MAX = Path("/proc/sys/net/core/rmem_max")
INT_MAX = 2**31 - 1


def rmem_max() -> int:
    try:
        return int(RMEM_MAX.read_text())
    except (OSError, ValueError):
        pytest.skip(f"{RMEM_MAX} cannot be read: not Linux, or /proc is not mounted")


def test_a_socket_buffer_beyond_rmem_max_is_a_warning_naming_the_sysctl(tmp_path):
    limit = rmem_max()
    if limit > INT_MAX // 2:
        pytest.skip(f"net.core.rmem_max is {limit}: no socket_buffer (at most {INT_MAX}) "
                    "is beyond it")
    wanted = 2 * limit                  # what the kernel will not grant
    fits = min(limit, 1 << 20)
    big_port, fit_port = free_port(), free_port()
    cfg = write_config(tmp_path, daemon_toml(tmp_path)
                       + toml_table("stream", array=True, name="big",
                                    sources=[f"udp://127.0.0.1:{big_port}"],
                                    socket_buffer=wanted)
                       + toml_table("stream", array=True, name="fits",
                                    sources=[f"udp://127.0.0.1:{fit_port}"],
                                    socket_buffer=fits))
    daemon = DaemonProcess(cfg)
    try:
        daemon.ready()
        assert daemon.stop() == 0
    finally:
        daemon.close()
    warnings = [e for e in daemon.events if e.get("event") == "source warning"]
    assert [w["stream"] for w in warnings] == ["big"], warnings
    text = warnings[0]["warning"]
    assert text.startswith(f"udp://127.0.0.1:{big_port}: socket buffer is {limit} bytes, "
                           f"not the {wanted} asked for"), text
    assert text.endswith(f"sysctl -w net.core.rmem_max={wanted})"), text
    assert warnings[0]["level"] == "warning"
