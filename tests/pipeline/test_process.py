"""The processing step's wrapper (`daqd.pipeline.process`): counts, releases, checks.

The daemon tests (tests/service/test_process_step.py) run the example
integrator in a real daemon; these check what it does with each outcome of
a step, on chunk records whose release is seen.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from daqd.config import ChunkConfig, ProcessConfig, StreamConfig
from daqd.pipeline.process import Processor, build_process, resolve
from daqd.pipeline.records import ChunkRecord

CHUNK = ChunkConfig(heaps_per_chunk=4, heap_bytes=16)


def stream(call: str, **options) -> StreamConfig:
    return StreamConfig("adc0", ("sim:W1",), chunk=CHUNK, process=ProcessConfig(call, options))


def record(released: list[int], chunk_id: int = 0) -> ChunkRecord:
    """A chunk record of CHUNK's layout whose release (its last) is noted in `released`."""
    return ChunkRecord(chunk_id, 0, np.ones((4, 1, 16), np.uint8), np.ones((4, 1), np.uint8),
                       _release=lambda: released.append(chunk_id))


def failing(record: ChunkRecord) -> ChunkRecord:
    """Fail on odd chunks."""
    if record.chunk_id % 2:
        raise RuntimeError("odd")
    return record


def test_an_exception_drops_the_record_counted_and_released():
    step = Processor(failing, CHUNK, "adc0")
    released: list[int] = []
    outs = [step(record(released, i)) for i in range(4)]
    assert [o.chunk_id if o is not None else None for o in outs] == [0, None, 2, None]
    assert released == [1, 3]               # the returned ones are the buffer's to release
    c = step.counters()
    assert (c["process_records"], c["process_outputs"], c["process_errors"],
            c["records_process_error"]) == (4, 2, 2, 2)


def test_a_new_record_releases_the_chunk_and_follows_the_layout():
    step = build_process(stream("process_steps:Scale", factor=3, dtype="uint32"))
    assert step is not None
    assert step.layout == dataclasses.replace(CHUNK, dtype="uint32", heap_bytes=64)
    released: list[int] = []
    out = step(record(released))
    assert released == [0]
    assert out is not None and out.data.dtype == np.uint32 and (out.data == 3).all()


def test_a_record_that_does_not_fit_the_layout_is_dropped():
    step = build_process(stream("process_steps:wrong_shape"))
    released: list[int] = []
    assert step(record(released)) is None
    assert released == [0]
    assert step.counters()["records_process_bad_layout"] == 1


@pytest.mark.parametrize(("call", "options", "problem"), [
    ("process_steps:passthrough", {"x": 1}, "takes no options"),
    ("process_steps:Scale", {"bogus": 1}, "unexpected keyword"),
    ("process_steps", {}, "package.module:name"),
    ("process_steps:CHUNK_NONE", {}, "has no attribute"),
])
def test_what_cannot_make_a_step(call, options, problem):
    with pytest.raises(ValueError, match=problem):
        resolve(call, options)


def test_a_layout_of_another_type_is_refused():
    class Bad:
        def layout(self, chunk):
            return {"dtype": "uint8"}

        def __call__(self, record):
            return record

    with pytest.raises(ValueError, match="dataclasses.replace"):
        Processor(Bad(), CHUNK)


def test_heap_mode_has_no_processing_step(tmp_path):
    from daqd.config import ConfigError, parse

    text = ('[[stream]]\nname = "a"\nsources = ["sim:W1"]\n'
            '[stream.process]\ncall = "process_steps:passthrough"\n'
            f'[[stream.sinks]]\nkind = "binary"\npath = "{tmp_path}/x.bin"\n')
    with pytest.raises(ConfigError, match=r"stream\[0\]\.process\.call .*heap mode"):
        parse(text, host=False)


def test_options_must_be_a_table(tmp_path):
    from daqd.config import ConfigError, parse

    text = ('[[stream]]\nname = "a"\nsources = ["sim:W1"]\n[stream.chunk]\n'
            '[stream.process]\ncall = "process_steps:Scale"\noptions = 3\n'
            f'[[stream.sinks]]\nkind = "binary"\npath = "{tmp_path}/x.bin"\n')
    with pytest.raises(ConfigError, match=r"stream\[0\]\.process\.options = 3: expected a table"):
        parse(text, host=False)


def test_a_record_whose_presence_does_not_fit_is_dropped():
    def bad_present(record):
        return ChunkRecord(record.chunk_id, 0, record.data.copy(), np.ones((4, 2), np.uint8))

    step = Processor(bad_present, CHUNK)
    released: list[int] = []
    assert step(record(released)) is None
    assert step.counters()["records_process_bad_layout"] == 1
