"""A compiled processing step: a Cython extension named by ``[stream.process] call``.

The step is built as a user would build one (``cythonize`` through
setuptools, ``build_ext --inplace``), then named in a configuration:
`daqd.config` makes it and asks its layout, and `daqd.pipeline.process`
runs it on a chunk record (its ``__call__`` adds with the GIL released).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from daqd.config import parse
from daqd.pipeline.process import build_process
from daqd.pipeline.records import ChunkRecord

STEP = textwrap.dedent('''
    # cython: language_level=3
    import dataclasses

    import numpy as np

    from daqd.pipeline.records import ChunkRecord


    cdef class SumSubstreams:
        """Sum the substreams of each heap slot (uint8 -> uint32), without the GIL."""

        def layout(self, chunk):
            return dataclasses.replace(chunk, substreams=1, dtype="uint32",
                                       heap_bytes=chunk.heap_bytes * 4)

        def __call__(self, record):
            cdef const unsigned char[:, :, ::1] data = record.data
            out = np.zeros((data.shape[0], 1, data.shape[2]), np.uint32)
            cdef unsigned int[:, :, ::1] total = out
            cdef Py_ssize_t h, s, i
            with nogil:
                for h in range(data.shape[0]):
                    for s in range(data.shape[1]):
                        for i in range(data.shape[2]):
                            total[h, 0, i] += data[h, s, i]
            present = np.asarray(record.slots_present).all(axis=1, keepdims=True)
            return ChunkRecord(record.chunk_id, record.timestamp, out,
                               present.astype(np.uint8))
''')
SETUP = textwrap.dedent('''
    from Cython.Build import cythonize
    from setuptools import setup

    setup(name="sum_substreams", ext_modules=cythonize(["sum_substreams.pyx"], quiet=True))
''')


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("compiled_step")
    (work / "sum_substreams.pyx").write_text(STEP)
    (work / "setup.py").write_text(SETUP)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=work,
                   check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(work))
    yield work
    sys.path.remove(str(work))


def test_a_compiled_step_sums_substreams(compiled, tmp_path):
    text = ('[[stream]]\nname = "a"\nsources = ["sim:W1"]\n'
            '[stream.chunk]\nheaps_per_chunk = 4\nheap_bytes = 16\n'
            'substream_item = 0x4101\nsubstreams = 3\n'
            '[stream.process]\ncall = "sum_substreams:SumSubstreams"\n'
            f'[[stream.sinks]]\nkind = "hdf5"\npath = "{tmp_path}/x.h5"\n')
    stream = parse(text, host=False).streams[0]
    step = build_process(stream)
    assert step is not None
    assert (step.layout.substreams, step.layout.dtype, step.layout.heap_bytes) == (1, "uint32", 64)
    data = np.arange(4 * 3 * 16, dtype=np.uint8).reshape(4, 3, 16)
    released: list[int] = []
    out = step(ChunkRecord(7, 0, data, np.ones((4, 3), np.uint8),
                           _release=lambda: released.append(7)))
    assert released == [7]
    assert out is not None and out.chunk_id == 7
    np.testing.assert_array_equal(out.data, data.astype(np.uint32).sum(axis=1, keepdims=True))
    assert step.counters()["process_outputs"] == 1
