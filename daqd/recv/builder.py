"""A ``[[stream]]`` section's receive side, built from the section itself.

`build_receiver` makes a section's receive side with its chunk pool
allocated; `Receiver.open` then opens the sources and makes one compiled
stream per source (``HeapStream``, or in chunk mode a ``ChunkStream`` of one
shared ``ChunkGroup``).  Each key reaches its object here and only here:

- ``[stream.chunk]``: every key is a `ChunkGroup` argument of the same name
  (`group_arguments`; ``substream_item = -1`` means none; ``place`` names a
  hook loaded with its factory's ``place_args``, `daqd.recv.place_hooks`);
- ``[[stream]]`` keys of the compiled stream (`STREAM_KEYS`; in heap mode
  `HEAP_STREAM_KEYS` too; and ``exit_on_stop_heap``: its `stop_boundary` is
  the opposite), of the sources (`SOURCE_KEYS`) and of the receive threads
  (`THREAD_KEYS`: a socket, compiled stream and thread each, pinned to a CPU
  by `Source.pin_thread`); ``name``, ``sources`` and the nested tables are
  the section's structure.

tests/test_config_keys.py shows every key of the schema takes effect.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from daqd import _spead
from daqd.pipeline.records import ChunkRecord
from daqd.recv.place_hooks import load_place_hook
from daqd.recv.sources import Source, open_sources
from daqd.recv.uri import stream_udp_port

if TYPE_CHECKING:
    from daqd.config import ChunkConfig, StreamConfig

#: ``[[stream]]`` keys that are arguments of the compiled stream (HeapStream, ChunkStream).
STREAM_KEYS = ("max_heaps", "allow_out_of_order", "max_heap_size", "stop_on_stop_item",
               "max_live_heap_bytes", "memcpy", "allow_unsized_heaps", "heap_windows",
               "explicit_start")
#: ``[[stream]]`` keys that are arguments of the compiled stream in heap mode only (HeapStream):
#: ``contiguous_only`` (chunk mode marks an incomplete heap's slot in ``present`` instead).
HEAP_STREAM_KEYS = ("contiguous_only",)
#: ``[[stream]]`` keys that are arguments of `open_source`.
SOURCE_KEYS = ("max_packet_size", "socket_buffer")
#: ``[[stream]]`` keys of the receive threads: ``threads`` (sockets per source,
#: `open_sources`) and ``affinity`` (each one's CPU, `Source.cpu`).
THREAD_KEYS = ("threads", "affinity")


def _arguments(section: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(section, k) for k in keys}


def group_arguments(chunk: ChunkConfig) -> dict[str, Any]:
    """Return the `ChunkGroup` arguments of a ``[stream.chunk]`` section: all its keys.

    ``place`` (a ``"package.module:name"`` string) becomes the loaded hook's
    ``place``, ``place_items`` and ``place_counters``; ``place_args`` are its
    factory's arguments (`daqd.recv.place_hooks`).
    """
    args = dataclasses.asdict(chunk)
    if args["substream_item"] < 0:
        args["substream_item"] = None
    args["extra_items"] = list(args["extra_items"])
    spec, place_args = args.pop("place"), dict(args.pop("place_args"))
    if spec:
        args.update(load_place_hook(spec, args, place_args).group_arguments())
    return args


def build_group(chunk: ChunkConfig) -> Any:
    """Make the chunk group (layout, pool, rings, window) of a ``[stream.chunk]`` section."""
    return _spead.ChunkGroup(**group_arguments(chunk))


#: Bytes a chunk's data is rounded up to in the pool (ChunkGroup: each chunk page-aligned),
#: and the alignment slack of the whole pool (a huge page).
CHUNK_ALIGN = 4096
POOL_SLACK = 2 << 20
#: Bytes of a live-heap slot's bookkeeping (LiveHeap, HeapStorage, free stack), payload aside.
LIVE_SLOT_BYTES = 256


def chunk_bytes(chunk: ChunkConfig) -> int:
    """Bytes of one chunk: its data (page-aligned in the pool), presence flags and extras."""
    slots = chunk.heaps_per_chunk * chunk.substreams
    data = -(-slots * chunk.heap_bytes // CHUNK_ALIGN) * CHUNK_ALIGN
    presence = slots * (chunk.heap_bytes // chunk.packet_presence if chunk.packet_presence else 1)
    return data + presence + slots * len(chunk.extra_items) * 8


def largest_record_bytes(section: StreamConfig) -> int:
    """Bytes of the largest record the stream makes: a chunk, or a heap of max_heap_size."""
    return chunk_bytes(section.chunk) if section.chunk is not None else section.max_heap_size


def expected_record_bytes(section: StreamConfig) -> int:
    """Bytes of a record as the memory budget counts it: a chunk, or a one-packet heap.

    Heap mode carries small heaps (slow control, metadata, events), so a heap
    record is counted as one packet; a stream of large heaps may hold up to
    ``capacity x max_heap_size`` in its buffer.
    """
    if section.chunk is not None:
        return chunk_bytes(section.chunk)
    return min(section.max_heap_size, section.max_packet_size)


def live_heap_bytes(section: StreamConfig) -> int:
    """Bytes the partial heaps of a stream may hold at once, at most (all its sources).

    Every source (each of its ``threads``) has ``heap_windows`` windows of
    ``max_heaps`` live heaps.  In heap mode their payloads together stay within
    ``max_live_heap_bytes`` per source and thread (the window evicts or
    refuses beyond it); in chunk mode the payload goes straight
    into a chunk (counted with the pool) and only the slot's bookkeeping remains.
    """
    payload = 0
    slots = section.max_heaps * section.heap_windows
    if section.chunk is None:
        payload = min(section.max_live_heap_bytes, slots * section.max_heap_size)
    return len(section.sources) * section.threads * (slots * LIVE_SLOT_BYTES + payload)


def memory_needs(section: StreamConfig) -> list[tuple[str, str, int]]:
    """List what the receive side of `section` may allocate: (key, what, bytes) triples.

    `key` is the ``[[stream]]``-relative key that sizes it most.
    """
    if section.chunk is None:
        return [("max_live_heap_bytes", "live heaps (max_live_heap_bytes per source)",
                 live_heap_bytes(section))]
    return [("max_heaps", "live heaps", live_heap_bytes(section)),
            ("chunk.pool", "chunk pool (pool x chunk)",
             section.chunk.pool * chunk_bytes(section.chunk) + POOL_SLACK)]


def build_stream(section: StreamConfig, group: Any = None, source: int | None = None) -> Any:
    """Make one compiled stream of `section`: a `ChunkStream` of `group`, or a `HeapStream`.

    In the daemon a stop heap is a capture boundary (the stream flushes what it
    holds and goes on) unless ``exit_on_stop_heap`` says it ends the stream, as
    it does a library stream (spead2's behaviour).  A heap stream hands out
    incomplete heaps (they become records) only with ``contiguous_only = false``.
    The chunk streams of one source (index `source`: its ``threads`` sockets)
    are one for capture boundaries (the group's ``boundary_key``).
    """
    args = _arguments(section, STREAM_KEYS)
    args["stop_boundary"] = not section.exit_on_stop_heap
    if group is not None:
        return group.add_stream(**args, boundary_key=source)
    return _spead.HeapStream(**args, **_arguments(section, HEAP_STREAM_KEYS))


@dataclass
class Receiver:
    """The receive side of one stream: the chunk group, its sources and their streams.

    Made by `build_receiver` with the chunk pool allocated; `open` then binds
    the sources (the daemon does so last, after its buffers and write-ahead
    log are ready).

    Attributes
    ----------
    section : StreamConfig
        The ``[[stream]]`` section it is built from.
    group : daqd._spead.ChunkGroup or None
        Chunk mode: the chunks every stream fills; None in heap mode.
    udp_port : int or None
        The UDP port the stream's packets are addressed to, where a source
        says (pcap frames).
    sources : list of Source
        Once open: one per URI and receive thread (``threads`` sockets of a
        ``udp://`` URI, one after the other), in the section's order (sockets bound).
    streams : list
        The compiled stream of each source (same order).
    """

    section: Any
    group: Any = None
    udp_port: int | None = None
    sources: list[Source] = field(default_factory=list)
    streams: list[Any] = field(default_factory=list)
    _missing: np.ndarray | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if not self.section.explicit_start:
            self._started.set()

    @property
    def waiting_for_start(self) -> bool:
        """Whether the sources are bound but no packet is taken yet (``explicit_start``)."""
        return not self._started.is_set()

    def start(self) -> bool:
        """Let every stream take packets (spead2's ``stream.start()``); safe from any thread.

        Returns
        -------
        bool
            True if the streams were waiting for it, False if they were taking packets already.
        """
        waiting = self.waiting_for_start
        for stream in self.streams:
            stream.start()
        self._started.set()
        return waiting

    def wait_start(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for `start`; whether the streams may take packets."""
        return self._started.wait(timeout)

    @property
    def chunk_mode(self) -> bool:
        """Whether heaps are placed into chunks (else they become heap records)."""
        return self.group is not None

    @property
    def chunks_to_spare(self) -> int | None:
        """Chunk mode: completed chunks the pool can leave waiting for the disk.

        That is ``pool - max_chunks`` (at least 1): the window still fills
        ``max_chunks``.  None in heap mode.
        """
        if self.group is None:
            return None
        return max(1, self.section.chunk.pool - self.section.chunk.max_chunks)

    def open(self) -> list[str]:
        """Open every source and make its compiled stream; the warnings to pass on.

        Raises
        ------
        SourceError
            A source cannot be opened (one line naming it); the ones already
            open are closed.
        """
        warnings: list[str] = []
        threads, affinity = self.section.threads, self.section.affinity
        try:
            for n, uri in enumerate(self.section.sources):
                opened = open_sources(uri, threads, **_arguments(self.section, SOURCE_KEYS))
                warnings.extend(opened[0].warnings)     # the same for each of its sockets
                for k, source in enumerate(opened):
                    i = len(self.sources)
                    source.thread = f"{uri}#{k}" if threads > 1 else uri
                    source.cpu = affinity[i % len(affinity)] if affinity else None
                    self.sources.append(source)
                    self.streams.append(build_stream(self.section, self.group, n))
        except BaseException:
            self.close()
            raise
        if not self.waiting_for_start:      # started before the sources opened
            for stream in self.streams:
                stream.start()
        return warnings

    def poll_sources(self) -> None:
        """Count what the sources report between packets.

        That is the kernel's drops on each UDP socket, read now: the statistics
        path calls it, and the daemon once more before it closes the sources.
        """
        for source, stream in zip(self.sources, self.streams, strict=True):
            if source.reader is not None:
                stream.poll_source(source.reader)

    def source_stats(self) -> list[dict[str, int]]:
        """Each source's counters (its stream's), the sources polled first."""
        self.poll_sources()
        return [stream.stats() for stream in self.streams]

    def replay_progress(self) -> dict[str, tuple[int, int]]:
        """How far each finite source (``file:``, ``pcap:``) of known size has been read.

        ``{uri: (bytes read, bytes in all)}``; network sources, pipes and
        ``sim:`` without a size are left out.  Safe from any thread (an estimate).
        """
        out = {}
        for source in self.sources:
            if source.reader is not None:
                done, total = source.reader.progress()
                if total:
                    out[source.uri] = (int(done), int(total))
        return out

    def close(self) -> None:
        """Release every source's sockets, files and mappings."""
        for source in self.sources:
            source.close()

    def chunk_record(self, chunk: Any) -> ChunkRecord:
        """Wrap a completed chunk as a record (no copy), counting its missing heap slots."""
        return self.chunk_records((chunk,))[0]

    def chunk_records(self, chunks: Sequence[Any]) -> list[ChunkRecord]:
        """Wrap completed chunks as records, in order (`chunk_record` of each, one clock read)."""
        records = ChunkRecord.from_chunks(chunks)
        if not records:
            return records
        present = records[0].present
        if self._missing is None:
            self._missing = np.zeros(present.shape[1], np.int64)
        if present.ndim == 2 and present.shape[1] == 1 and present.dtype == np.uint8:
            # One substream, a byte per slot: the zero bytes are the missing
            # slots (bytes.count, a fraction of a count_nonzero call), summed
            # as Python integers and added to the array once per batch.
            self._missing[0] += sum(r.present.tobytes().count(0) for r in records)
        else:
            for record in records:
                have = record.slots_present     # (heaps_per_chunk, substreams)
                self._missing += have.shape[0] - np.count_nonzero(have, axis=0)
        return records

    def heaps_missing_per_substream(self) -> list[int]:
        """Heap slots of completed chunks that arrived incomplete, per substream."""
        if self._missing is not None:
            return [int(x) for x in self._missing]
        return [0] * (self.group.substreams if self.group is not None else 0)

    def gauges(self) -> dict[str, int]:
        """Return the receive side's gauges.

        Chunk mode: the pool's free and data rings and its size; heap mode: the
        payload bytes the sources' live heaps hold (`live_heap_bytes`).
        """
        if self.group is None:
            return {"live_heap_bytes": sum(s.live_heap_bytes for s in self.streams)}
        return {"free_ring": self.group.free_ring_size, "data_ring": self.group.data_ring_size,
                "pool": self.group.pool}


def build_receiver(section: StreamConfig) -> Receiver:
    """Make `section`'s receive side: the chunk group (pool allocated), not yet open."""
    group = build_group(section.chunk) if section.chunk is not None else None
    return Receiver(section, group=group, udp_port=stream_udp_port(section.sources))
