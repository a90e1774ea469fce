"""The real daemon reads descriptors of a PySPEAD-0.5.2-style stream with ``bug_compat``.

``daqd simulate --bug-compat pyspead-0.5.2`` writes a W1 stream whose
descriptors have PySPEAD 0.5.2's bugs; ``daqd run`` reads it (chunk mode, a
``file:`` source, an HDF5 sink) with and without ``bug_compat``, and the
descriptors its file keeps (``spead_descriptors``) must be those spead2
4.5.1 decodes from the same bytes with the same ``bug_compat``.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import spead2
import spead2.recv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import daqd
from daemon_helpers import DaemonProcess, buffer_toml, daemon_toml, sinks_toml, toml_table
from spead2_helpers import THREAD_POOL

pytestmark = pytest.mark.network


def spead2_descriptors(data: bytes, mask: int) -> dict[str, dict]:
    stream = spead2.recv.Stream(THREAD_POOL, spead2.recv.StreamConfig(bug_compat=mask))
    stream.add_buffer_reader(data)
    out = {}
    for heap in stream:
        for raw in heap.get_descriptors():
            dtype = None
            if raw.numpy_header:
                dtype = spead2.Descriptor._parse_numpy_header(raw.numpy_header.decode())[2]
                if mask & spead2.BUG_COMPAT_SWAP_ENDIAN:
                    dtype = dtype.newbyteorder()        # as Descriptor.from_raw
            out[raw.name.decode()] = {"shape": list(raw.shape),
                                      "format": [list(f) for f in raw.format], "dtype": dtype}
    return out


@pytest.mark.parametrize("bug_compat", ["pyspead-0.5.2", ""])
def test_daemon_keeps_the_descriptors_spead2_reads(tmp_path, bug_compat):
    stream_file = tmp_path / "old.spead"
    sent = daqd("simulate", f"file:{stream_file}", "--workload", "W1", "--heaps", "16",
                "--bug-compat", "pyspead-0.5.2")
    assert sent.returncode == 0, sent.stderr
    config = tmp_path / "daqd.toml"
    config.write_text(
        daemon_toml(tmp_path)
        + toml_table("stream", array=True, name="adc0", sources=[f"file:{stream_file}"],
                     bug_compat=bug_compat, exit_on_stop_heap=True)
        + toml_table("stream.chunk", timestamp_item=0x1600, timestamp_step=8192,
                     heaps_per_chunk=8, heap_bytes=8192, max_chunks=2, pool=8)
        + buffer_toml(kind="fifo", capacity=8, flush_count=1)
        + sinks_toml(tmp_path, "hdf5"))
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait(60) == 0, "\n".join(daemon.lines[-20:])
    finally:
        daemon.close()
    (path,) = sorted((tmp_path / "data").glob("*.h5"))
    with h5py.File(path) as h5:
        kept = json.loads(h5.attrs["spead_descriptors"])
        assert h5["present"][:].all() and len(h5["chunk_id"]) == 2
    mask = 7 if bug_compat else 0
    theirs = spead2_descriptors(stream_file.read_bytes(), mask)
    ours = {d["name"]: d for d in kept}
    assert set(ours) == set(theirs) == {"timestamp", "samples", "workload"}
    assert ours["workload"]["shape"] == theirs["workload"]["shape"]
    assert ours["timestamp"]["format"] == theirs["timestamp"]["format"]
    assert (ours["workload"]["shape"] == [None]) == bool(bug_compat)
    assert np.dtype(ast.literal_eval(ours["samples"]["dtype"])["descr"]) == \
        theirs["samples"]["dtype"]
