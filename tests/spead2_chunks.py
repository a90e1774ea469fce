"""Chunk-mode helpers: the same packets through spead2's ChunkRingStream and daqd's ChunkStream.

Both receivers are given one declarative layout (``_spead2compat.Spead2Placement`` is
daqd's layout rule as a spead2 place callback) and return the chunks they
deliver in one plain form, so that tests can compare them chunk for chunk::

    {"chunk_id": int, "data": ndarray, "present": ndarray, "extra": ndarray}

``data`` is (heaps_per_chunk, substreams, heap_bytes // itemsize) of the
layout's dtype, ``present`` is uint8 (heaps_per_chunk, substreams) or, with
packet presence, (heaps_per_chunk, substreams, heap_bytes // packet_presence),
and ``extra`` is uint64 (heaps_per_chunk, substreams, len(extra_items)).  All
are copies, taken before the chunk goes back to its pool.

The deliberate differences between the two (see ``assert_chunks_match``):

1. spead2 starts its window at chunk 0 (and opens every chunk up to the first
   heap's); daqd starts at the first heap's chunk.  spead2's chunks before
   daqd's first one must be empty.
2. daqd zeroes the data of slots that are not present; spead2 leaves whatever
   was there.  Data are compared only where present (spead2's chunks are
   zeroed here before they go back to its free ring, so stale data from an
   earlier chunk cannot leak into a comparison either).
3. daqd's ``too_old_reset``: comparisons pass ``too_old_reset=0``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import spead2
import spead2.recv
from spead_packets import (
    inproc_queue,
    sim_packets,  # noqa: F401  (sc.sim_packets in tests)
)

from daqd import _spead, _spead2compat

# spead2 logs rejected packets and heaps; tests look at the results.
logging.getLogger("spead2").setLevel(logging.CRITICAL)

THREAD_POOL = spead2.ThreadPool()

#: Layout arguments shared by ChunkStream and Spead2Placement.
LAYOUT_KEYS = ("timestamp_item", "timestamp_step", "heaps_per_chunk", "heap_bytes",
               "substream_item", "substreams", "extra_items", "packet_presence")
#: Stream arguments both receivers understand.
STREAM_KEYS = ("max_chunks", "max_heaps", "allow_out_of_order", "stop_on_stop_item", "memcpy")
#: daqd-only arguments (ChunkStream); spead2 has no equivalent.
DAQD_ONLY_KEYS = ("too_old_reset", "zero_missing", "when_full", "wait_timeout",
                  "max_heap_size", "pool", "batch", "allow_no_free_chunk", "reader")

#: spead2 counter -> daqd counter(s) whose sum must equal it.
COUNTER_MAP = {
    "packets": ("packets",),
    "heaps": ("heaps",),
    "incomplete_heaps_evicted": ("incomplete_heaps_evicted",),
    "incomplete_heaps_flushed": ("incomplete_heaps_flushed",),
    "single_packet_heaps": ("single_packet_heaps",),
    "too_old_heaps": ("chunk_heaps_too_old",),
    "rejected_heaps": tuple(n for n in _spead.STAT_NAMES
                            if n.startswith("chunk_heaps_rejected_")),
}

DEFAULTS: dict[str, Any] = {
    "timestamp_item": 0x1600, "timestamp_step": 8192, "heaps_per_chunk": 64,
    "heap_bytes": 8192, "substream_item": None, "substreams": 1, "extra_items": (),
    "packet_presence": 0, "max_chunks": 4, "max_heaps": 8, "allow_out_of_order": False,
    "stop_on_stop_item": True, "dtype": "uint8",
}


def _layout(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.get(k, DEFAULTS[k]) for k in LAYOUT_KEYS}


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arguments for spead2_chunk_receive, arguments for daqd_chunk_receive)."""
    unknown = set(kwargs) - set(LAYOUT_KEYS) - set(STREAM_KEYS) - set(DAQD_ONLY_KEYS) \
        - {"dtype", "timeout", "transport"}
    if unknown:
        raise TypeError(f"unknown arguments {sorted(unknown)}")
    s2 = {k: v for k, v in kwargs.items() if k not in DAQD_ONLY_KEYS}
    dq = {k: v for k, v in kwargs.items() if k not in ("timeout", "transport")}
    return s2, dq


def shapes(**kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of data, present and extra of one chunk for a layout."""
    lay = _layout(kwargs)
    dtype = np.dtype(kwargs.get("dtype", "uint8"))
    hpc, subs, hb = lay["heaps_per_chunk"], lay["substreams"], lay["heap_bytes"]
    present = (hpc, subs)
    if lay["packet_presence"]:
        present += (hb // lay["packet_presence"],)
    return {"data": (hpc, subs, hb // dtype.itemsize), "present": present,
            "extra": (hpc, subs, len(lay["extra_items"]))}


def _spead2_stats(stream: Any) -> dict[str, int]:
    stats = stream.stats
    return {c.name: int(stats[c.name]) for c in stats.config}


# --------------------------------------------------------------------------
# spead2


def spead2_chunk_receive(packets: Sequence[bytes], *, dtype: str = "uint8",
                         max_chunks: int = 4, max_heaps: int = 8,
                         allow_out_of_order: bool = False, stop_on_stop_item: bool = True,
                         transport: str = "inproc", timeout: float = 30.0,
                         memcpy: str = "auto",
                         **layout: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Chunks spead2's ChunkRingStream delivers for `packets`, and its counters.

    `transport` is ``"inproc"`` (an InprocQueue: datagram boundaries kept;
    empty packets are left out, as they crash spead2's in-process transport
    and every decoder drops them anyway) or ``"buffer"`` (the packets back to
    back through a buffer reader; well-formed packets only).  A consumer
    thread drains the data ring and gives every chunk back to the free ring
    (zeroed), so a pool of ``max_chunks + 2`` chunks never runs dry for long.
    """
    unknown = set(layout) - set(LAYOUT_KEYS)
    if unknown:
        raise TypeError(f"unknown arguments {sorted(unknown)}")
    lay = _layout(layout)
    shp = shapes(dtype=dtype, **lay)
    placement = _spead2compat.Spead2Placement(**lay)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=placement.items, max_chunks=max_chunks, place=placement.place,
        max_heap_extra=placement.max_heap_extra)
    if lay["packet_presence"]:
        chunk_config.enable_packet_presence(lay["packet_presence"])
    stream_config = spead2.recv.StreamConfig(
        max_heaps=max_heaps, allow_out_of_order=allow_out_of_order,
        stop_on_stop_item=stop_on_stop_item,
        memcpy=spead2.MEMCPY_NONTEMPORAL if memcpy == "nontemporal" else spead2.MEMCPY_STD)
    pool = max_chunks + 2
    data_ring = spead2.recv.ChunkRingbuffer(pool)
    free_ring = spead2.recv.ChunkRingbuffer(pool)
    stream = spead2.recv.ChunkRingStream(THREAD_POOL, stream_config, chunk_config,
                                         data_ring, free_ring)
    n_data = int(np.prod(shp["data"])) * np.dtype(dtype).itemsize
    n_present = int(np.prod(shp["present"]))
    n_extra = int(np.prod(shp["extra"])) * 8
    for _ in range(pool):
        kw: dict[str, Any] = {"present": np.zeros(n_present, np.uint8),
                              "data": np.zeros(n_data, np.uint8)}
        if n_extra:
            kw["extra"] = np.zeros(n_extra, np.uint8)
        stream.add_free_chunk(spead2.recv.Chunk(**kw))

    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for chunk in data_ring:
                present = np.asarray(chunk.present)
                data = np.asarray(chunk.data)
                record = {
                    "chunk_id": int(chunk.chunk_id),
                    "data": data.view(dtype).reshape(shp["data"]).copy(),
                    "present": present.reshape(shp["present"]).copy(),
                    "extra": (np.asarray(chunk.extra).view(np.uint64).reshape(shp["extra"]).copy()
                              if n_extra else np.zeros(shp["extra"], np.uint64)),
                }
                out.append(record)
                present[:] = 0
                data[:] = 0
                if n_extra:
                    np.asarray(chunk.extra)[:] = 0
                stream.add_free_chunk(chunk)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    if transport == "inproc":
        stream.add_inproc_reader(inproc_queue(spead2, packets))
    elif transport == "buffer":
        stream.add_buffer_reader(b"".join(bytes(p) for p in packets))
    else:
        raise ValueError(transport)
    thread.join(timeout)
    if thread.is_alive():
        stream.stop()
        thread.join(5)
        raise TimeoutError("spead2 chunk stream did not end in time")
    if errors:
        raise errors[0]
    # Only after stop() (which joins the readers) are the counters final.
    stream.stop()
    return out, _spead2_stats(stream)


# --------------------------------------------------------------------------
# daqd


def chunk_record(chunk: Any) -> dict[str, Any]:
    """The plain form of a daqd Chunk (copies)."""
    return {"chunk_id": int(chunk.chunk_id), "timestamp": int(chunk.timestamp),
            "data": chunk.data.copy(), "present": chunk.present.copy(),
            "extra": chunk.extra.copy()}


def assert_pool_free(stream: Any) -> None:
    """Every chunk of the pool is back in the free ring."""
    counts = stream.pool_counts()
    assert counts == {"free": stream.pool, "open": 0, "ready": 0, "held": 0}, counts
    assert stream.free_ring_size == stream.pool
    assert stream.data_ring_size == 0


def daqd_chunk_receive(packets: Sequence[bytes] | None = None, *, max_chunks: int = 4,
                       pool: int | None = None, batch: int = 1,
                       too_old_reset: int | None = 0, when_full: str = "drop",
                       allow_no_free_chunk: bool = False, reader: Any = None,
                       **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Chunks daqd's ChunkStream delivers for `packets`, and its counters.

    Packets go in `batch` at a time (one ``process`` call each) and completed
    chunks are taken after every batch, so a pool of ``max_chunks * (batch +
    1)`` chunks (the default) can never run dry: one heap closes at most
    `max_chunks` chunks and opens as many.  The stream is built with
    ``when_full="drop"`` so that an undersized pool shows up at once as
    ``chunk_heaps_no_free_chunk`` (asserted 0 unless `allow_no_free_chunk`).
    With `reader` instead of `packets`, ``ChunkStream.chunks(reader)`` is used.
    ``too_old_reset`` defaults to 0 here (spead2 behaviour).  At the end every
    chunk must be back in the free ring.
    """
    if pool is None:
        pool = max_chunks * (batch + 1)
    stream = _spead.ChunkStream(max_chunks=max_chunks, pool=pool, too_old_reset=too_old_reset,
                                when_full=when_full, **kwargs)
    chunk_step = stream.timestamp_step * stream.heaps_per_chunk
    out: list[dict[str, Any]] = []

    def take(chunk: Any) -> None:
        with chunk:
            rec = chunk_record(chunk)
            assert rec["timestamp"] == rec["chunk_id"] * chunk_step
            out.append(rec)
        assert stream.pool_counts()["held"] == 0

    if reader is not None:
        assert packets is None
        for chunk in stream.chunks(reader):
            take(chunk)
    else:
        packets = [bytes(p) for p in packets]
        for start in range(0, len(packets), batch):
            r = _spead.ByteListReader(packets[start:start + batch])
            while stream.process(r) >= 0:
                pass
            while stream.data_ring_size:
                take(stream.get(0))
            if stream.stopped:
                break
        if not stream.stopped:
            stream.finish()
        while (chunk := stream.get(0)) is not None:
            take(chunk)
        assert stream.get(0) is None
    assert_pool_free(stream)
    stats = stream.stats()
    assert stats["chunks_completed"] == len(out)
    if not allow_no_free_chunk:
        assert stats["chunk_heaps_no_free_chunk"] == 0, "daqd_chunk_receive: pool too small"
    return out, stats


# --------------------------------------------------------------------------
# Comparison


def present_mask(present: np.ndarray, data_shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask over `data` from `present` (per heap, or per packet unit)."""
    if present.ndim == 2:
        return np.broadcast_to(present[:, :, None].astype(bool), data_shape)
    unit = data_shape[2] // present.shape[2]
    return np.repeat(present.astype(bool), unit, axis=2)


def assert_chunks_match(daqd: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """daqd's chunks equal spead2's, around the deliberate differences."""
    ids = [c["chunk_id"] for c in daqd]
    assert ids == sorted(set(ids)), f"daqd chunk ids not increasing: {ids}"
    first = ids[0] if ids else None
    for c in ref:
        if first is None or c["chunk_id"] < first:
            assert not c["present"].any(), \
                f"spead2 chunk {c['chunk_id']} before daqd's first ({first}) holds data"
            assert not c["extra"].any()
    ref = [c for c in ref if first is not None and c["chunk_id"] >= first]
    assert ids == [c["chunk_id"] for c in ref], \
        f"chunk ids differ: daqd {ids}, spead2 {[c['chunk_id'] for c in ref]}"
    for d, s in zip(daqd, ref, strict=True):
        cid = d["chunk_id"]
        assert d["present"].shape == s["present"].shape
        np.testing.assert_array_equal(d["present"], s["present"], err_msg=f"present, chunk {cid}")
        np.testing.assert_array_equal(d["extra"], s["extra"], err_msg=f"extra, chunk {cid}")
        mask = present_mask(d["present"], d["data"].shape)
        np.testing.assert_array_equal(d["data"][mask], s["data"][mask],
                                      err_msg=f"data, chunk {cid}")
        # zero_missing: daqd's slots without their data are zero
        assert not d["data"][~mask].any(), f"chunk {cid}: data where nothing is present"


def counter_mismatches(daqd_stats: dict[str, int], spead2_stats: dict[str, int]
                       ) -> dict[str, tuple[int, int]]:
    """{spead2 counter: (daqd value, spead2 value)} where they differ."""
    out = {}
    for s_name, d_names in COUNTER_MAP.items():
        d = sum(daqd_stats[n] for n in d_names)
        if d != spead2_stats[s_name]:
            out[s_name] = (d, spead2_stats[s_name])
    return out


def compare(packets: Sequence[bytes], *, counters: bool = True,
            **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
    """Run both receivers on `packets`, assert the chunks (and counters) match.

    Returns daqd's chunks, daqd's counters and spead2's counters.
    """
    s2_kwargs, dq_kwargs = split_kwargs(kwargs)
    ref, s2_stats = spead2_chunk_receive(packets, **s2_kwargs)
    got, dq_stats = daqd_chunk_receive(packets, **dq_kwargs)
    assert_chunks_match(got, ref)
    if counters:
        mism = counter_mismatches(dq_stats, s2_stats)
        assert mism == {}, mism
    return got, dq_stats, s2_stats
