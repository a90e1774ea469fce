"""Rotation by time and by size, as a property (hypothesis): any sequence of flushes.

A second angle on the lines `tests/sinks/test_sink_files.py` checks with one
hand-picked sequence each: a model of the rule the README states (a file is
finished at a flush once it is ``rotate_seconds`` old, even an empty flush; a
record that would take it past ``rotate_bytes`` starts a new one, unless the
file is empty) predicts every file's records, and the real binary sink on a
fake clock must write exactly those files.  Whole seconds keep the clock
arithmetic exact, so ``>=`` against ``>`` is decided.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sink_files import RECORD_BYTES, Clocks, chunk_ids, names, record, sink_for

# (seconds the clock moves before the flush, records in the flush)
FLUSHES = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), min_size=1, max_size=25)


def expected_files(flushes: list[tuple[int, int]], rotate_seconds: int,
                   rotate_bytes: int) -> list[list[int]]:
    """The record ids of each file the rule makes, in order."""
    files: list[list[int]] = []
    current: list[int] | None = None
    opened = now = 0
    next_id = 0
    for advance, count in flushes:
        now += advance
        if current is not None and rotate_seconds and now - opened >= rotate_seconds:
            files.append(current)
            current = None
        for _ in range(count):
            if current is not None and rotate_bytes and current \
                    and (len(current) + 1) * RECORD_BYTES > rotate_bytes:
                files.append(current)
                current = None
            if current is None:
                current, opened = [], now
            current.append(next_id)
            next_id += 1
    if current is not None:
        files.append(current)
    return files


@settings(max_examples=60, deadline=None)
@given(flushes=FLUSHES, rotate_seconds=st.sampled_from([0, 1, 10, 30, 60]),
       rotate_bytes=st.sampled_from([0, 10, RECORD_BYTES, 96, 2 * RECORD_BYTES,
                                     3 * RECORD_BYTES, 200, 7 * RECORD_BYTES]))
def test_files_are_cut_where_the_rotation_rule_says(flushes, rotate_seconds, rotate_bytes):
    clocks = Clocks()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        sink = sink_for(directory, header=False, rotate_seconds=rotate_seconds,
                        rotate_bytes=rotate_bytes, clocks=clocks)
        next_id = 0
        for advance, count in flushes:
            clocks.advance(advance)
            sink.write([record(i) for i in range(next_id, next_id + count)])
            sink.commit()
            next_id += count
        sink.close()
        files = [chunk_ids(directory / name) for name in names(directory)]
    assert files == expected_files(flushes, rotate_seconds, rotate_bytes)
