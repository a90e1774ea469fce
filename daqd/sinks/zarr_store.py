"""A Zarr store that many daqd daemons write at once: its layout, opening it, growing it.

The store is one Zarr (format 3) group per stream at the sink's ``path``, a
local path or an fsspec URL (``file://``, ``memory://``, ``s3://`` with s3fs).
Its arrays share the first axis, *time*: one record (chunk) per index, the
index being ``(timestamp - origin) // (timestamp_step * heaps_per_chunk)``, so
daemons agree on it without talking and a restarted daemon goes on in place::

    data        (time, heaps_per_chunk, substreams_total, samples)   configured dtype
    present     (time, heaps_per_chunk, substreams_total)            uint8, 1 = heap received
    timestamp   (time,)                                              uint64, a chunk's first slot
    utc         (time,)                                              float64, with a clock
    extra       (time, heaps_per_chunk, substreams_total, n_extra)   uint64, when configured

``data``, ``present`` and ``extra`` are chunked by one record along time and
by ``substream_chunk`` along the substream axis, whose boundaries fall on
every daemon's region, so no two daemons ever write the same Zarr chunk.
``timestamp`` and ``utc`` are the time axis's coordinates, a function of the
index alone (``origin`` a multiple of a chunk's ticks, ``timestamp =
origin + index * timestamp_step * heaps_per_chunk``): they are chunked by
`COORD_CHUNK` records, and whichever daemon first writes a record in such a
chunk writes the whole chunk's values, the same bytes any other would write.
A time index no daemon wrote has ``present == 0`` everywhere; its
coordinates are there if a record near it was written.  The group's attributes hold the layout
(``daqd_layout``, checked by every later writer), ``daqd_version``,
``stream`` and the clock; ``writers/<offset>`` holds each daemon's own
(its configuration, its region) and ``capture_blocks/<id>`` each capture
block's metadata.

Growing the time axis from several writers.  Zarr keeps an array's shape in
its ``zarr.json``; a resize rewrites that object, so two writers resizing at
once may lose one update (the later, smaller shape wins; no chunk is
deleted, but the chunks past it are hidden).  daqd avoids that three ways:

- a writer only ever grows an array, to ``max(shape read just now, need)``,
  in steps that are powers of two (at least `MIN_EXTENT` records), so
  writers that need about the same extent write the same shape;
- on a local path (or ``file://``) the read-and-grow runs under an exclusive
  `fcntl.flock` on the store's directory (flock works on NFS too), so no
  update is lost;
- on an object store, where there is no lock, each writer reads the shapes
  again at every write and grows them back over what it has written (a lost
  update is repaired at that writer's next flush and at its close), and
  ``daqd zarr-init --records N`` can create the arrays long enough for the
  whole observation, so that nobody resizes at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec, ZstdCodec

import daqd
from daqd.sinks.zarr_layout import ZarrLayout, is_local, local_root

FORMAT = "daqd.zarr/1"
#: The shortest time axis the sink creates or grows to.
MIN_EXTENT = 1024
#: ``timestamp`` of a time index no record was written at, and ``extra`` where a
#: record has no extra items.
MISSING = MISSING_EXTRA = 2**64 - 1
#: Records per chunk of the time coordinates (``timestamp``, ``utc``).
COORD_CHUNK = 1024
#: Chunk keys ``c.T.0.S.0``: one directory per array rather than directories
#: per time index, which cost a third of a local write's time.
CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}
#: Arrays along time, in the order they are resized (``present`` last).
TIME_ARRAYS = ("data", "extra", "timestamp", "utc", "present")


class LayoutMismatch(OSError):
    """An existing store whose layout differs from this daemon's (one line)."""

    def __init__(self, message: str):
        super().__init__(errno.EINVAL, message)

    def __str__(self) -> str:
        return str(self.strerror)


def open_store(url: str) -> Any:
    """Open a Zarr store: `LocalStore` for a local path, `FsspecStore` for other URLs.

    ``file://`` is opened as a `LocalStore` too, whose writes are atomic
    (a temporary file renamed), so a reader never sees half a chunk.
    """
    if is_local(url):
        return zarr.storage.LocalStore(local_root(url))
    return zarr.storage.FsspecStore.from_url(url, read_only=False)


@contextlib.contextmanager
def resize_lock(url: str) -> Iterator[None]:
    """Hold the store's lock for a read-and-grow (local stores; a no-op elsewhere)."""
    if not is_local(url):
        yield
        return
    root = local_root(url)
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                # releases the lock


def extent_for(index: int) -> int:
    """Return the time extent that holds `index`: a power of two, at least `MIN_EXTENT`."""
    need = index + 1
    return max(MIN_EXTENT, 1 << (need - 1).bit_length())


def _compressors(codec: str) -> Any:
    if codec == "zstd":
        return ZstdCodec(level=1)
    if codec == "blosc":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    return None


def _specs(layout: ZarrLayout) -> dict[str, tuple[Any, ...]]:
    """Map each array to (shape after time, dtype, chunks (time too), dimensions, fill)."""
    hpc, total, sc = layout.heaps_per_chunk, layout.substreams_total, layout.substream_chunk
    specs: dict[str, tuple[Any, ...]] = {
        "data": ((hpc, total, layout.samples), np.dtype(layout.dtype),
                 (1, hpc, sc, layout.samples), ["time", "heap", "substream", "sample"], 0),
        "present": ((hpc, total), np.dtype(np.uint8), (1, hpc, sc),
                    ["time", "heap", "substream"], 0),
        "timestamp": ((), np.dtype(np.uint64), (COORD_CHUNK,), ["time"], MISSING),
    }
    if layout.clock:
        specs["utc"] = ((), np.dtype(np.float64), (COORD_CHUNK,), ["time"], np.nan)
    if layout.extra_items:
        n = len(layout.extra_items)
        specs["extra"] = ((hpc, total, n), np.dtype(np.uint64), (1, hpc, sc, n),
                          ["time", "heap", "substream", "extra_item"], MISSING_EXTRA)
    return specs


def _store_layout(group: Any) -> dict[str, Any] | None:
    layout = group.attrs.get("daqd_layout")
    return dict(layout) if isinstance(layout, dict) else None


def check_layout(found: dict[str, Any] | None, layout: ZarrLayout, url: str) -> None:
    """Refuse a store laid out otherwise, with one line naming the first difference."""
    if found is None:
        raise LayoutMismatch(f"{url}: a Zarr group that daqd did not create (no daqd_layout "
                             "attribute)")
    want = layout.shared()
    for name, value in want.items():
        if found.get(name) != value:
            raise LayoutMismatch(f"{url}: the store's {name} is {found.get(name)!r}, this "
                                 f"daemon's is {value!r} (every writer needs the same layout)")


def find_layout(url: str) -> dict[str, Any] | None:
    """Return an existing store's ``daqd_layout`` (None when there is no group at `url`).

    Raises
    ------
    LayoutMismatch
        A Zarr group is there that daqd did not lay out.
    """
    try:
        group = zarr.open_group(open_store(url), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return None
    found = _store_layout(group)
    if found is None:
        raise LayoutMismatch(f"{url}: a Zarr group that daqd did not create (no daqd_layout "
                             "attribute)")
    return found


def open_or_create(url: str, layout: ZarrLayout, attrs: dict[str, Any] | None = None,
                   records: int = 0) -> tuple[Any, bool]:
    """Open the store's group, creating the group and its arrays if there is none.

    The first writer creates everything (under the resize lock on local
    stores); later ones check the layout (`LayoutMismatch`, one line).
    `records` is the time extent to create with (0: `MIN_EXTENT`); an
    existing store shorter than it is grown.

    Returns
    -------
    group, created : zarr.Group, bool
    """
    with resize_lock(url):
        store = open_store(url)
        try:
            group = zarr.open_group(store, mode="r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            group = None
            if is_local(url) and os.listdir(local_root(url)):
                raise LayoutMismatch(f"{url}: a directory that is neither empty nor a Zarr "
                                     "group; not writing a store into it") from None
        if group is not None:
            check_layout(_store_layout(group), layout, url)
            if records:
                grow(group, records - 1)
            return group, False
        group = zarr.create_group(store, attributes={
            "format": FORMAT, "daqd_version": daqd.__version__, "daqd_layout": layout.shared(),
            **(attrs or {})})
        extent = max(records, MIN_EXTENT)
        compressors = _compressors(layout.codec)
        for name, (shape, dtype, chunks, dims, fill) in _specs(layout).items():
            group.create_array(name, shape=(extent, *shape), dtype=dtype, chunks=chunks,
                               fill_value=fill, dimension_names=dims,
                               chunk_key_encoding=CHUNK_KEYS,
                               compressors=compressors if name in ("data", "extra") else None)
        return group, True


def group_attrs(stream: str, layout: ZarrLayout, timeline: Any,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the group attributes besides the layout: what an HDF5 chunk file carries.

    ``stream``, ``timestamp_step``, ``heaps_per_chunk``, ``substreams`` (the
    whole axis), ``heap_bytes``, ``extra_items``, ``origin``, the clock
    (``sync_time``, ``timestamp_rate``) and `metadata` (`SinkContext.metadata`).
    """
    return {"stream": stream, "timestamp_step": layout.timestamp_step,
            "heaps_per_chunk": layout.heaps_per_chunk, "substreams": layout.substreams_total,
            "heap_bytes": layout.heap_bytes, "extra_items": list(layout.extra_items),
            "origin": layout.origin, **timeline.clock.metadata(), **(metadata or {})}


def grow(group: Any, index: int) -> int:
    """Grow every time array of `group` to hold `index`, reading each shape afresh.

    Never shrinks: each array becomes ``max(its shape now, extent_for(index))``
    (the caller holds `resize_lock` on local stores).  Returns the smallest
    time extent the arrays now have.
    """
    want = extent_for(index)
    extents = []
    for name in TIME_ARRAYS:
        if name not in group:
            continue
        array = group[name]                 # metadata read now, not cached
        if array.shape[0] < want:
            array.resize((want, *array.shape[1:]))
        extents.append(max(array.shape[0], want))
    return min(extents)


def write_attrs(group: Any, path: str, attrs: dict[str, Any]) -> None:
    """Create (or update) the subgroup `path` with `attrs` (writers, capture blocks)."""
    sub = group.require_group(path)
    sub.attrs.update(attrs)


def safe_name(text: str) -> str:
    """`text` as one Zarr node name: anything but letters, digits, ``._-`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text) or "_"
