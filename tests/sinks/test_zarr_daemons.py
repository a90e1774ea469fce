"""One Zarr store written by real daemons: two at once, and one killed and restarted.

Each daemon is ``daqd run`` in a subprocess with its own UDP port and its
own substream range of one store on local disk; spead2 sends each its heaps,
leaving some out.  The store is read back with zarr and xarray: exactly the
data sent, ``present`` exact to the slot, nothing else.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import DaemonProcess, Subscriber, free_port, write_config
from zarr_senders import HPC, STEP, expected, read_store, send, zarr_daemon_toml

pytestmark = pytest.mark.network

CHUNKS = 16
TOTAL = 4           # substreams of the store: daemon A has 0-1, daemon B 2-3


def lossy(chunks: range, substreams: range, seed: int) -> set[tuple[int, int, int]]:
    """About one heap in ten, and the whole of one chunk, left out by the sender."""
    rng = random.Random(seed)
    gone = {(c, h, s) for c in chunks for h in range(HPC) for s in substreams
            if rng.random() < 0.1}
    whole = chunks[len(chunks) // 2]
    return gone | {(whole, h, s) for h in range(HPC) for s in substreams}


def every_heap(chunks: range, substreams: range) -> set[tuple[int, int, int]]:
    return {(c, h, s) for c in chunks for h in range(HPC) for s in substreams}


def test_two_daemons_write_one_store_at_once(tmp_path):
    store = tmp_path / "data" / "adc0.zarr"
    plans = []
    daemons = []
    try:
        for k, offset in enumerate((0, 2)):
            port = free_port()
            state = tmp_path / f"d{k}"
            state.mkdir()
            cfg = write_config(state, zarr_daemon_toml(
                tmp_path, str(tmp_path / "data" / "{stream}.zarr"), port, offset, TOTAL,
                name=f"zarr-{k}", state=str(state)))
            daemons.append(DaemonProcess(cfg))
            subs = range(offset, offset + 2)
            plans.append((port, subs, offset, lossy(range(CHUNKS), subs, seed=k)))
        subs_ = [Subscriber(daemon.ready()["stats"]) for daemon in daemons]
        threads = [threading.Thread(target=send, args=(port, range(CHUNKS), subs, offset,
                                                       dropped))
                   for port, subs, offset, dropped in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for sub in subs_:       # every chunk but the one left out whole
            _until_accepted(sub, CHUNKS - 1)
            sub.close()
        codes = [daemon.stop() for daemon in daemons]
    finally:
        for daemon in daemons:
            daemon.close()
    assert codes == [0, 0], "\n".join(daemons[0].lines[-10:] + daemons[1].lines[-10:])
    sent = set()
    for _, subs, _, dropped in plans:
        sent |= every_heap(range(CHUNKS), subs) - dropped
    want_present, want_data = expected(CHUNKS, TOTAL, sent)

    got = read_store(store)
    assert got["present"].shape[1:] == (HPC, TOTAL)
    np.testing.assert_array_equal(got["present"][:CHUNKS], want_present)
    assert not got["present"][CHUNKS:].any()
    np.testing.assert_array_equal(got["data"][:CHUNKS].reshape(want_data.shape), want_data)
    np.testing.assert_array_equal(got["timestamp"][:CHUNKS],
                                  np.arange(CHUNKS, dtype=np.uint64) * HPC * STEP)

    import xarray as xr

    ds = xr.open_zarr(store, consolidated=False)
    assert dict(ds.sizes)["substream"] == TOTAL
    np.testing.assert_array_equal(ds.present.values[:CHUNKS], want_present)
    both = ds.data.values[:CHUNKS].reshape(want_data.shape)
    np.testing.assert_array_equal(both, want_data)
    assert ds.attrs["daqd_layout"]["substreams_total"] == TOTAL


def test_a_daemon_killed_and_restarted_goes_on_in_place(tmp_path):
    store = tmp_path / "data" / "adc0.zarr"
    port = free_port()
    # Records reach the sink in fours: at the kill, some are in the store and the
    # rest only in the write-ahead log.
    buffer = f"""
[stream.buffer]
kind = "fifo"
capacity = 64
flush_count = 4
flush_interval = 60
wal = "{tmp_path}/wal/{{stream}}.wal"
"""
    cfg = write_config(tmp_path, zarr_daemon_toml(
        tmp_path, str(tmp_path / "data" / "{stream}.zarr"), port, 0, 2, buffer=buffer))
    subs = range(2)
    dropped = lossy(range(CHUNKS), subs, seed=7) - {(c, h, s) for c in (0, 5, 8, 15)
                                                    for h in range(HPC) for s in subs}
    # Chunks 6 and 7 (each missing a heap, so neither completes early) push 0-5 out
    # of the window; they are still open at the kill, received and never accepted.
    dropped |= {(6, 0, 0), (7, 0, 0)}
    daemon = DaemonProcess(cfg)
    try:
        sub = Subscriber(daemon.ready()["stats"])
        send(port, range(0, 8), subs, 0, dropped, stop=False)
        _until_accepted(sub, 6)
        sub.close()
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    finally:
        daemon.close()
    kept = read_store(store)["present"]
    written = int(kept.any(axis=(1, 2)).sum())
    # A flush is due at four records: it writes the four, five or six waiting when
    # the flusher wakes (chunks reach the buffer in bursts: the group wakes its
    # consumer once per few chunks); the rest are in the log only (so are all of
    # them until the flush's done mark).  What was written is the first chunks.
    assert 4 <= written <= 6 and not kept[written:].any()

    daemon = DaemonProcess(cfg)
    try:
        sub = Subscriber(daemon.ready()["stats"])
        send(port, range(8, CHUNKS), subs, 0, dropped)
        _until_accepted(sub, CHUNKS - 8)
        sub.close()
        code = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, "\n".join(daemon.lines[-20:])
    (recovered,) = [e for e in daemon.events if e["event"] == "recovered from the write-ahead log"]
    assert recovered["records_lost"] == 0 and recovered["replayed"] >= 6 - written
    lost_at_kill = every_heap(range(6, 8), subs)
    want_present, want_data = expected(CHUNKS, 2,
                                       every_heap(range(CHUNKS), subs) - dropped - lost_at_kill)
    got = read_store(store)
    np.testing.assert_array_equal(got["present"][:CHUNKS], want_present)
    assert not got["present"][CHUNKS:].any()
    np.testing.assert_array_equal(got["data"][:CHUNKS].reshape(want_data.shape), want_data)


def _until_accepted(sub: Subscriber, records: int) -> None:
    def accepted(topic: str, message: dict) -> bool:
        if topic != "stats.adc0":
            return False
        return message.get("buffer", {}).get("records_accepted", 0) >= records
    sub.until(accepted, 30)
