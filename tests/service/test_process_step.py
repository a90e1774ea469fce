"""The processing step (``[stream.process]``) in a real daemon.

``examples/integrate`` is pip-installed as a user would (`example_helpers`);
a daemon receives W1 from its built-in generator in chunk mode, integrates
4 chunks per record and writes HDF5 and binary files, which must hold the
sums of the heaps' payloads as the simulator sent them.  A step that raises
on some chunks drops those (counted under ``records_process_error``) and the
daemon writes the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from cli_helpers import assert_one_line_error, daqd
from daemon_helpers import (
    DaemonProcess,
    daemon_toml,
    free_port,
    send_w1,
    toml_table,
    w1_payloads,
    wait_until,
    write_config,
)
from example_helpers import install_example, with_site

from daqd.tools.chunkfile import open_chunk_file

HEAPS_PER_CHUNK = 8
CHUNKS = 4                  # integrated per record
RECORDS = 3
HEAPS = HEAPS_PER_CHUNK * CHUNKS * RECORDS


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``examples/integrate``, pip-installed into a directory of its own."""
    return install_example("integrate", tmp_path_factory.mktemp("integrate"))


def config_text(tmp: Path, process: dict, heaps: int = HEAPS) -> str:
    """W1 from the built-in generator in chunk mode, through `process`, into hdf5 and binary."""
    return (daemon_toml(tmp)
            + toml_table("stream", array=True, name="adc0", sources=[f"sim:W1?heaps={heaps}"])
            # A pool of 6 chunks for 12 integrated: each must go back once the step used it.
            + toml_table("stream.chunk", heaps_per_chunk=HEAPS_PER_CHUNK, heap_bytes=8192,
                         max_chunks=2, pool=6)
            + toml_table("stream.buffer", kind="fifo", flush_count=2, flush_interval=0.2)
            + "[stream.process]\n" + "".join(f"{k} = {v}\n" for k, v in process.items())
            + "".join(toml_table("stream.sinks", array=True, kind=kind,
                                 path=f"{tmp}/data/{{stream}}-{{seq:04d}}.{ext}")
                      for kind, ext in (("hdf5", "h5"), ("binary", "bin"))))


def run(tmp: Path, site: Path, process: dict, heaps: int = HEAPS) -> DaemonProcess:
    """Run the daemon until its finite source ends; return it (exited 0)."""
    config = write_config(tmp, config_text(tmp, process, heaps))
    proc = daqd("validate", "--config", str(config), env=with_site(site))
    assert proc.returncode == 0, proc.stderr
    daemon = DaemonProcess(config, env={"PYTHONPATH": with_site(site)["PYTHONPATH"]})
    try:
        assert daemon.wait() == 0, "\n".join(daemon.lines[-20:])
    finally:
        daemon.close()
    return daemon


def expected_sums(heaps: int) -> np.ndarray:
    """The W1 payloads summed over each group of CHUNKS chunks: (records, hpc, 1, 8192)."""
    payloads = np.frombuffer(b"".join(w1_payloads(heaps)), np.uint8)
    per_chunk = payloads.reshape(-1, CHUNKS, HEAPS_PER_CHUNK, 1, 8192).astype(np.uint32)
    return per_chunk.sum(axis=1)


def stopped(daemon: DaemonProcess) -> dict:
    """The ``stopped`` log line's figures of stream adc0."""
    return next(e for e in daemon.events if e.get("event") == "stopped")["adc0"]


def test_integrated_records_in_the_files(tmp_path, site):
    daemon = run(tmp_path, site, {"call": '"daqd_integrate:Integrator"',
                                  "options": f'{{ chunks = {CHUNKS}, dtype = "uint32" }}'})
    (h5,) = sorted((tmp_path / "data").glob("*.h5"))
    with h5py.File(h5) as f:
        data = f["data"][:]
        assert data.dtype == np.uint32
        assert f["chunk_id"][:].tolist() == list(range(RECORDS))
        assert f["timestamp"][:].tolist() == [r * CHUNKS * HEAPS_PER_CHUNK * 8192
                                              for r in range(RECORDS)]
        assert f["present"][:].all()
        assert f.attrs["timestamp_step"] == 8192 * CHUNKS
    np.testing.assert_array_equal(data, expected_sums(HEAPS))
    (binary,) = sorted((tmp_path / "data").glob("*.bin"))
    with open_chunk_file(str(binary)) as f:
        assert f.dtype == np.uint32
        binary_data = np.concatenate([b.data for b in f.blocks()])
    np.testing.assert_array_equal(binary_data, data)
    figures = stopped(daemon)["process"]
    assert figures["process_records"] == CHUNKS * RECORDS
    assert figures["process_outputs"] == RECORDS
    assert figures["process_errors"] == 0
    assert figures["process_seconds"] > 0
    assert stopped(daemon)["chunks_completed"] == CHUNKS * RECORDS
    assert stopped(daemon)["lost"] == {}


def test_a_failing_step_drops_records_not_the_daemon(tmp_path, site):
    (site / "odd_fails.py").write_text(
        "def step(record):\n"
        "    if record.chunk_id % 2:\n"
        "        raise RuntimeError('odd chunk')\n"
        "    return record\n")
    chunks = 6
    daemon = run(tmp_path, site, {"call": '"odd_fails:step"'}, heaps=chunks * HEAPS_PER_CHUNK)
    (h5,) = sorted((tmp_path / "data").glob("*.h5"))
    with h5py.File(h5) as f:
        assert f["chunk_id"][:].tolist() == [0, 2, 4]
    figures = stopped(daemon)["process"]
    assert figures["process_errors"] == figures["records_process_error"] == chunks // 2
    assert any(e.get("event") == "processing step failed" for e in daemon.events)


@pytest.mark.parametrize(("process", "problem"), [
    ({"call": '"no_such_module_xyz:step"'}, "cannot import no_such_module_xyz"),
    ({"call": '"daqd_integrate:Nothing"'}, "has no attribute Nothing"),
    ({"call": '"daqd_integrate"'}, "package.module:name"),
    ({"call": '"daqd_integrate:Integrator"', "options": "{ chunks = 0 }"}, "chunks = 0"),
])
def test_a_step_that_cannot_be_made_is_one_line(tmp_path, site, process, problem):
    config = write_config(tmp_path, config_text(tmp_path, process))
    proc = daqd("validate", "--config", str(config), env=with_site(site))
    assert_one_line_error(proc, "stream[0].process.call")
    assert problem in proc.stderr


def test_a_capture_boundary_ends_the_integration(tmp_path, site):
    """A stop heap on a UDP source: the group in progress is written into that capture's file."""
    port = free_port()
    text = config_text(tmp_path, {"call": '"daqd_integrate:Integrator"',
                                  "options": f"{{ chunks = {CHUNKS} }}"})
    text = text.replace(f'sources = ["sim:W1?heaps={HEAPS}"]',
                        f'sources = ["udp://127.0.0.1:{port}"]\nsocket_buffer = 4194304')
    config = write_config(tmp_path, text)
    daemon = DaemonProcess(config, env={"PYTHONPATH": with_site(site)["PYTHONPATH"]})
    try:
        daemon.ready()
        chunks = CHUNKS + 2                 # one whole group, then half of one
        send_w1(port, chunks * HEAPS_PER_CHUNK, stop=True)
        wait_until(lambda: list((tmp_path / "data").glob("*.h5")), 20, "the capture's file")
        (h5,) = sorted((tmp_path / "data").glob("*.h5"))
        with h5py.File(h5) as f:
            assert f["chunk_id"][:].tolist() == [0, 1]
            present = f["present"][:]
            data = f["data"][:]
        assert present[0].all() and not present[1].any()    # the half group: not all there
        payloads = np.frombuffer(b"".join(w1_payloads(chunks * HEAPS_PER_CHUNK)), np.uint8)
        heaps = payloads.reshape(chunks, HEAPS_PER_CHUNK, 1, 8192).astype(np.uint32)
        np.testing.assert_array_equal(data[0], heaps[:CHUNKS].sum(axis=0))
        np.testing.assert_array_equal(data[1], heaps[CHUNKS:].sum(axis=0))
        assert daemon.stop() == 0
    finally:
        daemon.close()
