"""Sinks: where a buffer's flushes go (binary, text, pcap and hdf5 files; zarr stores).

Every sink follows the Sink protocol of docs/dev-pipeline.md::

    sinks, packet_sinks = build_sinks(stream_config, config_text, udp_port)
    sink = make_sink(SinkContext(stream, config, chunk, config_text, udp_port))
    sink.write(records)         # one flush, all or nothing (OSError: nothing kept);
                                # files it finishes wait, pending, for commit()
    sink.sync(); sink.checkpoint(); sink.commit(); sink.reopen(); sink.close(); sink.stats()
    recover_sink(context, state)    # after a crash, with the last checkpoint()

An event file (``[stream.trigger]``, `daqd.pipeline.events`) is made by
`build_event_sink`: one sink of the trigger's kind writing one file, whose
name is chosen (free) when the event is asked for.

The kinds are imported when first used, so loading a configuration does not
import h5py or zarr.  Other packages add kinds through entry points of the
group ``daqd.sinks`` (`ENTRY_POINT_GROUP`): the name is the kind, the object a
class with the Sink protocol's methods (`PROTOCOL`), made as the built-in ones
are, ``cls(context)``, and recovered as they are, ``cls.recover(context, state)``;
an optional class method ``check(config)`` refuses settings at validate
(`check_config`).
`kinds` lists them all; `sink_class` finds one and checks it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daqd.pipeline.datatime import Clock, Timeline
from daqd.pipeline.records import PacketRecord
from daqd.sinks.paths import event_path

if TYPE_CHECKING:   # daqd.config imports daqd.sinks.paths to check sink keys
    from daqd.config import ChunkConfig, SinkConfig, StreamConfig, TriggerConfig

#: Sink kinds an event file may be (``[stream.trigger] kind``): those of records.
EVENT_KINDS = ("binary", "text", "hdf5")
#: kind -> (module, class)
KINDS = {
    "binary": ("daqd.sinks.binary", "BinarySink"),
    "text": ("daqd.sinks.text", "TextSink"),
    "pcap": ("daqd.sinks.pcap", "PcapSink"),
    "hdf5": ("daqd.sinks.hdf5", "Hdf5Sink"),
    "zarr": ("daqd.sinks.zarr", "ZarrSink"),
}
#: The entry point group through which other packages add sink kinds.
ENTRY_POINT_GROUP = "daqd.sinks"
#: The Sink protocol (docs/dev-pipeline.md): what a sink class must have.
PROTOCOL = ("write", "sync", "checkpoint", "commit", "reopen", "close", "stats", "recover")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Return the sink kinds installed packages declare, by name (read each time: installs)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def kinds() -> tuple[str, ...]:
    """Return every sink kind: the built-in ones (`KINDS`), then those of entry points."""
    return (*KINDS, *(name for name in sorted(_entry_points()) if name not in KINDS))


def check_protocol(cls: Any) -> str:
    """Return what `cls` lacks of the Sink protocol ("" when it has it all)."""
    if not inspect.isclass(cls):
        return f"{cls!r} is not a class"
    missing = [name for name in PROTOCOL if not callable(getattr(cls, name, None))]
    if missing:
        return f"{cls.__module__}.{cls.__qualname__} has no " + ", ".join(missing)
    if not hasattr(cls, "accepts"):
        return f"{cls.__module__}.{cls.__qualname__} has no accepts (the record types it writes)"
    return ""


@dataclass(frozen=True)
class SinkContext:
    """What a sink needs to know besides its own configuration.

    Attributes
    ----------
    stream : str
        The stream's name (``{stream}``, file attributes and headers).
    config : SinkConfig
        This sink's ``[[stream.sinks]]`` entry.
    chunk : ChunkConfig or None
        The stream's chunk layout; None in heap mode.
    config_text : str
        The whole configuration file, stored in HDF5 files.
    udp_port : int or None
        UDP port written in pcap frames (None: SPEAD's customary 7148).
    clock, wall_clock : callable
        Monotonic seconds (rotation ages) and Unix seconds (file names,
        headers); replaceable in tests.
    timeline : Timeline
        The stream's data time (`daqd.pipeline.datatime`): record spans, and
        UTC when ``[stream.time]`` configures a clock.  Default: no clock,
        chunks spanning ``heaps_per_chunk * timestamp_step`` from `chunk`.
    metadata : dict
        Further file metadata of this sink's files (e.g. an event file's
        trigger window), written with the stream's own.
    descriptors : callable
        The stream's SPEAD item descriptors known so far, as
        `daqd.recv.descriptors.decode_descriptors` gives them (a list of
        dicts: ``id``, ``name``, ``description``, ``shape``, ``format``,
        ``dtype``); read when a file starts and when it is finished.
    """

    stream: str
    config: SinkConfig
    chunk: ChunkConfig | None = None
    config_text: str = ""
    udp_port: int | None = None
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    wall_clock: Callable[[], float] = field(default=time.time, compare=False)
    timeline: Timeline = field(default=None, compare=False)  # type: ignore[assignment]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    descriptors: Callable[[], list[dict[str, Any]]] = field(default=list, compare=False)

    def __post_init__(self) -> None:
        if self.timeline is None:       # no clock; chunks still span their timestamps
            chunk = self.chunk
            ticks = chunk.timestamp_step * chunk.heaps_per_chunk if chunk is not None else None
            object.__setattr__(self, "timeline", Timeline(Clock(), ticks))

    @classmethod
    def for_stream(cls, stream: StreamConfig, sink: SinkConfig, config_text: str = "",
                   udp_port: int | None = None, metadata: dict[str, Any] | None = None,
                   descriptors: Callable[[], list[dict[str, Any]]] | None = None,
                   ) -> SinkContext:
        """Build the context of one of `stream`'s sinks (`metadata`, `descriptors`: see above)."""
        return cls(stream.name, sink, stream.chunk, config_text, udp_port,
                   timeline=stream.timeline, metadata=dict(metadata or {}),
                   descriptors=descriptors or list)


def sink_class(kind: str) -> type[Any]:
    """Return the class that implements sink `kind` (built in, or an entry point's).

    Raises
    ------
    ValueError
        `kind` is none of `kinds()`, or its entry point does not load, or
        what it names lacks part of the Sink protocol (one line saying what).
    """
    if kind in KINDS:
        module, name = KINDS[kind]
        builtin: type[Any] = getattr(importlib.import_module(module), name)
        return builtin
    entry = _entry_points().get(kind)
    if entry is None:
        raise ValueError(f"unknown sink kind {kind!r} (expected "
                         + ", ".join(kinds()) + ")")
    try:
        cls = entry.load()
    except Exception as exc:    # whatever a package's import raises: one line
        raise ValueError(f"sink kind {kind!r}: entry point {entry.value} does not load "
                         f"({type(exc).__name__}: {exc})") from None
    problem = check_protocol(cls)
    if problem:
        raise ValueError(f"sink kind {kind!r}: {problem} (the Sink protocol: "
                         + ", ".join(PROTOCOL) + ")")
    return cls  # type: ignore[no-any-return]


def check_config(config: Any) -> None:
    """Check a ``[[stream.sinks]]`` entry of a kind from another package, before a run.

    The class's optional ``check(config)`` class method raises ValueError
    (one line) for settings it cannot work with, e.g. a `path` that is not the
    address it expects; built-in kinds are checked by `daqd.config`.

    Raises
    ------
    ValueError
        The kind is unknown or its class lacks the protocol (`sink_class`), or
        its ``check`` refused the entry.
    """
    cls = sink_class(config.kind)
    check = getattr(cls, "check", None)
    if config.kind in KINDS or check is None:
        return
    try:
        check(config)
    except Exception as exc:    # another package's check: its message, one line
        raise ValueError(f"sink kind {config.kind!r}: {exc}") from None


def build_sinks(stream: StreamConfig, config_text: str = "", udp_port: int | None = None,
                descriptors: Callable[[], list[dict[str, Any]]] | None = None,
                ) -> tuple[list[Any], list[Any]]:
    """Make the sinks of a stream's ``[[stream.sinks]]`` sections, in order.

    `descriptors` gives the stream's SPEAD descriptors known so far
    (`SinkContext.descriptors`), for the files to describe their items.

    Returns
    -------
    records, packets : list, list
        The sinks of the stream's records (chunks or heaps), and those of its
        raw packets (pcap), which are fed by a packet tap in the readers.
    """
    records: list[Any] = []
    packets: list[Any] = []
    for section in stream.sinks:
        sink = make_sink(SinkContext.for_stream(stream, section, config_text, udp_port,
                                                descriptors=descriptors))
        (packets if PacketRecord in sink.accepts else records).append(sink)
    return records, packets


@dataclass(frozen=True)
class EventFileConfig:
    """An event file's sink settings: a `SinkConfig`'s keys, for one file of a given name.

    No rotation, fsynced before it is published, with the kind's header.
    """

    kind: str
    path: str
    rotate_bytes: int = 0
    rotate_seconds: float = 0.0
    fsync: str = "on-rotate"
    header: bool = True
    template: str = ""


def build_event_sink(stream: StreamConfig, trigger: TriggerConfig, event: int, label: str,
                     window: tuple[int, int], config_text: str = "",
                     wall_clock: Callable[[], float] = time.time,
                     descriptors: Callable[[], list[dict[str, Any]]] | None = None,
                     ) -> tuple[Any, str]:
    """Make the sink of one triggered event, and name its file.

    Parameters
    ----------
    stream : StreamConfig
        The stream (its name, chunk layout and data time).
    trigger : TriggerConfig
        Its ``[stream.trigger]`` section: ``kind`` and ``path``.
    event : int
        The event's number in the stream (``{event}``).
    label : str
        The trigger's label (``{label}``; checked by the caller).
    window : (int, int)
        The window ``[start, end)`` in ticks.
    config_text : str
        The configuration file's text (HDF5 files store it).
    wall_clock : callable
        Unix seconds (the file name's ``{start}`` without a clock).
    descriptors : callable, optional
        The stream's SPEAD descriptors known so far (`SinkContext.descriptors`).

    Returns
    -------
    sink, path
        The sink (no file yet) and the name the file will have.  Its
        `SinkContext.metadata` holds ``event``, ``trigger_label``,
        ``trigger_start`` and ``trigger_end`` (ticks; with a clock also
        ``trigger_start_utc``, ``trigger_end_utc``).
    """
    timeline = stream.timeline
    start_utc = timeline.utc(window[0])
    path = event_path(trigger.path, stream.name, label, event,
                      start_utc if start_utc is not None else wall_clock())
    metadata: dict[str, Any] = {"event": event, "trigger_label": label,
                                "trigger_start": window[0], "trigger_end": window[1]}
    if start_utc is not None:
        metadata["trigger_start_utc"] = start_utc
        metadata["trigger_end_utc"] = timeline.utc(window[1])
    literal = path.replace("{", "{{").replace("}", "}}")
    config: Any = EventFileConfig(trigger.kind, literal)
    context = SinkContext(stream.name, config, stream.chunk, config_text, None,
                          wall_clock=wall_clock, timeline=timeline, metadata=metadata,
                          descriptors=descriptors or list)
    return make_sink(context), path


def make_sink(context: SinkContext) -> Any:
    """Make the sink `context.config` describes (no file is created before a write).

    Raises
    ------
    ValueError
        A kind, path template or text template that cannot work (`daqd.config`
        reports these at load time already).
    """
    return sink_class(context.config.kind)(context)


def recover_sink(context: SinkContext, state: dict[str, Any]) -> dict[str, Any]:
    """After a crash: publish the files of `state` (a `checkpoint()`), cut back to it.

    `state` is the checkpoint the write-ahead log's last done mark holds: the
    mark covers every record in the files it names.  The files it lists as
    pending (finished, waiting for `commit()`) are published as they are.  The
    file being written (``FINAL.tmp``, or its final name if an earlier
    recovery published it) is truncated to the checkpointed size (HDF5: its
    datasets resized to the checkpointed rows) and published, so that records
    the log replays are not in it twice.  Directories are fsynced after.
    Nothing is raised: a file that cannot be repaired (e.g. an HDF5 file a
    crash left unreadable) is left as it is and the report says why.

    Any other ``.tmp`` file of the sink's template (``{stream}`` filled in) is
    left as it is, never published nor deleted, and listed under ``orphans``:
    one started after the checkpoint holds only records the log replays (an
    operator may delete it), but one given up earlier (e.g. an HDF5 file that
    could not be reopened) holds records the log no longer has, and the two
    cannot be told apart by name.  Their names are never reused.

    Returns
    -------
    dict
        ``file`` (the final name, or None), ``action``, ``published`` (the
        pending files renamed), ``orphans`` and ``error`` ("" when all went well).
    """
    cls = sink_class(context.config.kind)
    try:
        report: dict[str, Any] = cls.recover(context, state)
    except OSError as exc:
        from daqd.sinks.base import describe_error
        report = {"file": None, "action": "", "published": [], "orphans": [],
                  "error": describe_error(exc)}
    except Exception as exc:
        if context.config.kind in KINDS:
            raise
        # Another package's kind: its failure is reported, the daemon starts.
        report = {"file": None, "action": "", "published": [], "orphans": [],
                  "error": f"{type(exc).__name__}: {exc}"}
    return report


__all__ = ["ENTRY_POINT_GROUP", "EVENT_KINDS", "KINDS", "PROTOCOL", "EventFileConfig",
           "SinkContext", "build_event_sink", "build_sinks", "check_config", "check_protocol",
           "kinds", "make_sink", "recover_sink", "sink_class"]
