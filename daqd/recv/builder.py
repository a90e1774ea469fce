"""A ``[[stream]]`` section's receive side, built from the section itself.

`build_receiver` opens the section's sources and makes one compiled stream
per source (``HeapStream``, or in chunk mode a ``ChunkStream`` of one shared
``ChunkGroup``).  Each key reaches its object here and only here:

- ``[stream.chunk]``: every key is a `ChunkGroup` argument of the same name
  (`group_arguments`; ``substream_item = -1`` means none);
- ``[[stream]]`` keys of the compiled stream (`STREAM_KEYS`) and of the
  sources (`SOURCE_KEYS`); ``name``, ``sources`` and the nested tables are the
  section's structure.

tests/recv/test_config_keys.py shows every key of the schema takes effect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daqd import _spead
from daqd.recv.sources import Source, open_source
from daqd.recv.uri import stream_udp_port

if TYPE_CHECKING:
    from daqd.config import ChunkConfig, StreamConfig

#: ``[[stream]]`` keys that are arguments of the compiled stream (HeapStream, ChunkStream).
STREAM_KEYS = ("max_heaps", "allow_out_of_order", "max_heap_size", "stop_on_stop_item")
#: ``[[stream]]`` keys that are arguments of `open_source`.
SOURCE_KEYS = ("max_packet_size", "socket_buffer")


def _arguments(section: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(section, k) for k in keys}


def group_arguments(chunk: ChunkConfig) -> dict[str, Any]:
    """Return the `ChunkGroup` arguments of a ``[stream.chunk]`` section: all its keys."""
    args = dataclasses.asdict(chunk)
    if args["substream_item"] < 0:
        args["substream_item"] = None
    args["extra_items"] = list(args["extra_items"])
    return args


def build_group(chunk: ChunkConfig) -> Any:
    """Make the chunk group (layout, pool, rings, window) of a ``[stream.chunk]`` section."""
    return _spead.ChunkGroup(**group_arguments(chunk))


def build_stream(section: StreamConfig, group: Any = None) -> Any:
    """Make one compiled stream of `section`: a `ChunkStream` of `group`, or a `HeapStream`."""
    args = _arguments(section, STREAM_KEYS)
    if group is not None:
        return group.add_stream(**args)
    return _spead.HeapStream(**args)


@dataclass
class Receiver:
    """The receive side of one stream: its sources, their compiled streams, the chunk group.

    Attributes
    ----------
    sources : list of Source
        Opened (sockets bound), one per URI, in the section's order.
    streams : list
        The compiled stream of each source (same order).
    group : daqd._spead.ChunkGroup or None
        Chunk mode: the chunks every stream fills; None in heap mode.
    udp_port : int or None
        The UDP port the stream's packets are addressed to, where a source
        says (pcap frames).
    warnings : list of str
        What an operator should hear about (e.g. a smaller socket buffer).
    """

    sources: list[Source] = field(default_factory=list)
    streams: list[Any] = field(default_factory=list)
    group: Any = None
    udp_port: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def chunk_mode(self) -> bool:
        """Whether heaps are placed into chunks (else they become heap records)."""
        return self.group is not None

    def close(self) -> None:
        """Release every source's sockets, files and mappings."""
        for source in self.sources:
            source.close()


def build_receiver(section: StreamConfig) -> Receiver:
    """Open `section`'s sources and make their compiled streams (and chunk group).

    Allocates the chunk pool first, then binds the sources: a source that
    cannot be opened closes the ones already open.

    Raises
    ------
    SourceError
        A source cannot be opened (one line naming it).
    """
    group = build_group(section.chunk) if section.chunk is not None else None
    receiver = Receiver(group=group, udp_port=stream_udp_port(section.sources))
    try:
        for uri in section.sources:
            source = open_source(uri, **_arguments(section, SOURCE_KEYS))
            receiver.warnings.extend(source.warnings)
            receiver.sources.append(source)
            receiver.streams.append(build_stream(section, group))
    except BaseException:
        receiver.close()
        raise
    return receiver
