"""Two processes grow one local store's time axis at once: no resize is lost.

Each writer (``zarr_grow_writer.py``, a real process) writes records at time
indexes that cross every power of two from 1024 to 2**17, the second a third
ahead of the first, so both grow the arrays at about the same moments, to
different extents.  A writer's resize computed from a shape read before the
other's could land last and hide the other's records; the store's lock
(`resize_lock`, checked on its own with a writer held back by it) makes the
read-and-grow one step, and every record is there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from daqd.sinks.zarr_store import resize_lock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zarr_grow_writer import indexes, value

HERE = Path(__file__).resolve().parent


def writer(store: Path, offset: int, go: Path, *todo: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "zarr_grow_writer.py"), str(store),
                             str(offset), str(go), *map(str, todo)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(w: subprocess.Popen, records: int) -> None:
    out, err = w.communicate(timeout=120)
    assert w.returncode == 0, err
    assert out.split()[:2] == [str(records), "0"], out


def test_two_writers_growing_one_store_at_once_lose_nothing(tmp_path):
    store = tmp_path / "adc0.zarr"
    go = tmp_path / "go"
    writers = [writer(store, offset, go) for offset in (0, 2)]
    go.touch()
    for w, offset in zip(writers, (0, 2), strict=True):
        finished(w, len(indexes(offset)))
    group = zarr.open_group(str(store), mode="r")
    extent = 1 << max(indexes(2)).bit_length()
    for name in ("data", "present", "timestamp"):
        assert group[name].shape[0] == extent, name
    for offset in (0, 2):
        todo = indexes(offset)
        region = slice(offset, offset + 2)
        present = group["present"].get_orthogonal_selection((todo, slice(None), region))
        assert present.all()
        data = group["data"].get_orthogonal_selection((todo, slice(None), region, slice(None)))
        for row, index in zip(data, todo, strict=True):
            np.testing.assert_array_equal(row, value(index, offset))
    # Nothing else was written: one present chunk per record and writer.
    chunks = [p for p in (store / "present").iterdir() if p.name.startswith("c.")]
    assert len(chunks) == len(indexes(0)) + len(indexes(2))


def test_a_writer_grows_the_store_only_under_its_lock(tmp_path):
    store = tmp_path / "adc0.zarr"
    go = tmp_path / "go"
    go.touch()
    finished(writer(store, 0, go, 0), 1)                   # the store, 1024 records long
    with resize_lock(str(store)):
        late = writer(store, 2, go, 5000)                  # must grow it to 8192
        with pytest.raises(subprocess.TimeoutExpired):
            late.wait(3)                                   # blocked: we hold the lock
        assert zarr.open_group(str(store), mode="r")["present"].shape[0] == 1024
    finished(late, 1)
    group = zarr.open_group(str(store), mode="r")
    assert group["present"].shape[0] == 8192 and group["present"][5000, :, 2:].all()
