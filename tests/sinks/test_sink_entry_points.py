"""Sink kinds from other packages: ``examples/udp_summary_sink`` installed as a user would.

The example package is installed with pip (``--target``, a directory of its
own put on the daemon's ``PYTHONPATH``: nothing shared is changed, and it is
gone with the temporary directory).  Its entry point adds the kind
``udp-summary``; a real daemon writes to it and the test receives the
datagrams.  A kind that is not installed, or whose class lacks part of the
Sink protocol, is one line from ``daqd validate``.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import DaemonProcess, daemon_toml, toml_table, write_config
from example_helpers import install_example, with_site

from daqd.recv.workloads import WORKLOADS

HEAPS = 64
HEAPS_PER_CHUNK = 8


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example sink package, pip-installed into a directory of its own."""
    return install_example("udp_summary_sink", tmp_path_factory.mktemp("udp_summary_sink"))


def config_text(tmp: Path, sink_path: str, kind: str = "udp-summary") -> str:
    """A chunk-mode stream of W1 from the built-in generator, into one sink of `kind`."""
    return (daemon_toml(tmp)
            + toml_table("stream", array=True, name="adc0",
                         sources=[f"sim:W1?heaps={HEAPS}"])
            + toml_table("stream.chunk", heaps_per_chunk=HEAPS_PER_CHUNK,
                         heap_bytes=WORKLOADS["W1"].heap_bytes, pool=16)
            + toml_table("stream.buffer", kind="fifo", flush_count=2, flush_interval=0.2,
                         wal=f"{tmp}/wal/{{stream}}.wal")
            + toml_table("stream.sinks", array=True, kind=kind, path=sink_path))


def test_installed_kind_receives_every_record(tmp_path, site):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10.0)
        port = receiver.getsockname()[1]
        config = write_config(tmp_path, config_text(tmp_path, f"udp://127.0.0.1:{port}"))
        proc = daqd("validate", "--config", str(config), env=with_site(site))
        assert proc.returncode == 0, proc.stderr
        daemon = DaemonProcess(config, env={"PYTHONPATH": with_site(site)["PYTHONPATH"]})
        try:
            assert daemon.wait() == 0, "\n".join(daemon.lines[-20:])
        finally:
            daemon.close()
        summaries = [json.loads(receiver.recv(65536)) for _ in range(HEAPS // HEAPS_PER_CHUNK)]
    assert [s["chunk_id"] for s in summaries] == list(range(HEAPS // HEAPS_PER_CHUNK))
    assert {s["stream"] for s in summaries} == {"adc0"}
    assert all(s["heaps_present"] == s["heaps"] == HEAPS_PER_CHUNK for s in summaries)


def test_uninstalled_kind_is_one_line(tmp_path):
    config = write_config(tmp_path, config_text(tmp_path, "udp://127.0.0.1:9", "udp-summary"))
    proc = daqd("validate", "--config", str(config))
    assert_one_line_error(proc, "stream[0].sinks[0].kind")
    assert "udp-summary" in proc.stderr and "binary" in proc.stderr


def test_a_path_the_kind_refuses_is_one_line(tmp_path, site):
    """The class's own check (``udp_summary_sink``: a udp:// address) runs at validate."""
    config = write_config(tmp_path, config_text(tmp_path, "data/summaries.txt"))
    proc = daqd("validate", "--config", str(config), env=with_site(site))
    assert_one_line_error(proc, "stream[0].sinks[0].kind")
    assert "expected udp://HOST:PORT" in proc.stderr


def test_class_without_the_protocol_is_one_line(tmp_path):
    """A package whose entry point names a class lacking commit and recover."""
    site = tmp_path / "site"
    dist = site / "broken_sink-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-sink\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[daqd.sinks]\nbroken = broken_sink:Sink\n")
    (site / "broken_sink.py").write_text(
        "class Sink:\n    accepts = ()\n"
        + "".join(f"    def {m}(self): pass\n"
                  for m in ("write", "sync", "checkpoint", "reopen", "close", "stats")))
    config = write_config(tmp_path, config_text(tmp_path, "x", "broken"))
    proc = daqd("validate", "--config", str(config), env=with_site(site))
    assert_one_line_error(proc, "stream[0].sinks[0].kind")
    assert "commit, recover" in proc.stderr
