"""The daqd configuration file: TOML loaded into frozen, typed objects.

Everything is checked before anything starts: unknown keys, wrong types,
out-of-range values and inconsistent combinations.  Each problem is one
`ConfigError` line naming the file, the key, the value and what was expected
(INTERFACES.md, "Configuration").  Keys and defaults are those of
INTERFACES.md; config/daqd.toml is the built-in default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.resources
import math
import os
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daqd import _spead, logs
from daqd.addresses import ipc_path, is_local_endpoint, open_to_others, split_host_port
from daqd.errors import SourceError, UsageProblem
from daqd.pipeline import buffers, flush
from daqd.pipeline import process as process_step
from daqd.pipeline import wal as wal_log
from daqd.pipeline.datatime import Clock, TimeError, Timeline, parse_utc
from daqd.pipeline.retention import retain_ticks, retained_chunks
from daqd.recv import builder as recv_builder
from daqd.recv.bug_compat import parse_bug_compat
from daqd.recv.place_hooks import load_place_hook
from daqd.recv.sources import DEFAULT_MAX_PACKET_SIZE, DEFAULT_SOCKET_BUFFER, split_problem
from daqd.recv.uri import NETWORK_SCHEMES, parse_uri
from daqd.recv.uri import SCHEMES as SOURCE_SCHEMES
from daqd.recv.workloads import WORKLOADS
from daqd.sinks import EVENT_KINDS
from daqd.sinks import KINDS as SINK_KINDS
from daqd.sinks import check_config as check_sink_config
from daqd.sinks.base import FSYNC_POLICIES as SINK_FSYNC_POLICIES
from daqd.sinks.paths import (
    EVENT_PATH_FIELDS,
    PATH_FIELDS,
    PATH_FIELDS_BY_KIND,
    PathTemplate,
    template_glob,
)
from daqd.sinks.text import check_template
from daqd.sinks.zarr_layout import CODECS as ZARR_CODECS
from daqd.sinks.zarr_layout import ZARR_KEYS, ZarrLayout, is_local, local_root

#: The built-in default configuration (no hardware needed), shipped as package data.
DEFAULT_CONFIG_NAME = "daqd.toml"


class ConfigError(UsageProblem):
    """A configuration problem, as one line naming file, key, value and expectation."""


def key(default: Any = dataclasses.MISSING, *, choices: Collection[Any] | None = None,
        minimum: float | None = None, maximum: float | None = None,
        off: float | None = None) -> Any:
    """Declare a configuration key: its default, and the values it accepts.

    `choices` are the values of a key that names a choice, taken from the
    layer the key configures (the one definition of them); `minimum` and
    `maximum` are the inclusive bounds of a number (of each number of a
    list), which every numeric key has; `off` is a value outside them with a
    meaning of its own (``rotate_bytes = 0``: never; ``memory_budget = 0``:
    the machine's).
    """
    metadata: dict[str, Any] = {}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    for name, value in (("minimum", minimum), ("maximum", maximum), ("off", off)):
        if value is not None:
            metadata[name] = value
    return field(default=default, metadata=metadata)


# Bounds shared by several keys.
#: The widest SPEAD item id (SPEAD-64-8: 55 bits).
ITEM_ID_MAX = (1 << 55) - 1
#: The longest wait or period a key may ask for, in seconds.
HOUR = 3600.0
DAY = 86400.0
#: setsockopt takes a C int.
INT_MAX = (1 << 31) - 1
#: The highest CPU number Linux knows (NR_CPUS is at most 8192).
MAX_CPU = 8191


@dataclass(frozen=True)
class DaemonConfig:
    """The `[daemon]` table (the service's own)."""

    name: str = "daqd"
    pidfile: str = "run/daqd.pid"
    log_format: str = key("auto", choices=logs.FORMAT_CHOICES)  # auto: JSON unless a terminal
    log_level: str = key("info", choices=logs.LEVEL_CHOICES)
    prometheus: str = ""                # HOST:PORT of the Prometheus text endpoint; "" = off
    # Bytes the configuration may plan to allocate (pools, buffers, live heaps, write-ahead
    # log replay); 0 = the machine's available memory (MemAvailable) when it is loaded.
    memory_budget: int = key(0, minimum=1 << 20, maximum=1 << 50, off=0)


#: The owner's alone: a socket file (0600) in a directory the daemon makes 0700.
DEFAULT_CONTROL = "ipc://run/control/daqd.sock"


@dataclass(frozen=True)
class ZmqConfig:
    """The `[zmq]` table (the service's own)."""

    stats: str = "tcp://127.0.0.1:5556"
    control: str = DEFAULT_CONTROL
    interval: float = key(1.0, minimum=0.01, maximum=HOUR)
    curve_secret_key: str = ""          # path of a zmq.auth secret key file
    curve_clients: str = ""             # directory of allowed client public keys
    curve_client_secret_key: str = ""   # clients (daqd status/stats/stop): their secret key file
    curve_server_key: str = ""          # clients: the daemon's public key file ("": the public
    #                                     half of curve_secret_key, when the client may read it)
    stats_hwm: int = key(100, minimum=1, maximum=1_000_000)  # messages queued per subscriber
    stats_nodrop: bool = False          # refuse (and count) rather than drop silently
    control_insecure_tcp: bool = False  # allow a tcp:// control socket without CURVE


@dataclass(frozen=True)
class ChunkConfig:
    """The `[stream.chunk]` table: chunk mode's declarative layout.

    Every key is a `daqd._spead.ChunkGroup` argument of the same name
    (`daqd.recv.builder.build_group`), but ``place`` (a hook's name: its
    ``place``, ``place_items`` and ``place_counters``) and ``place_args`` (the
    arguments of the hook's factory): `daqd.recv.place_hooks`.
    """

    timestamp_item: int = key(0x1600, minimum=0, maximum=ITEM_ID_MAX)
    timestamp_step: int = key(8192, minimum=1, maximum=1 << 56)
    heaps_per_chunk: int = key(64, minimum=1, maximum=1 << 20)
    heap_bytes: int = key(8192, minimum=1, maximum=1 << 30)
    dtype: str = "uint8"                        # a fixed-size numeric numpy dtype
    substream_item: int = key(-1, minimum=-1, maximum=ITEM_ID_MAX)   # -1: no substream axis
    substreams: int = key(1, minimum=1, maximum=1 << 16)
    extra_items: tuple[int, ...] = key((), minimum=0, maximum=ITEM_ID_MAX)
    max_chunks: int = key(4, minimum=1, maximum=1 << 16)
    # Each source's (each receive thread's) own window of chunks, at most max_chunks;
    # 0: max_chunks.  Narrower, lossless sources need not meet at every new chunk.
    stream_chunks: int = key(0, minimum=1, maximum=1 << 16, off=0)
    pool: int = key(16, minimum=1, maximum=1 << 20)
    when_full: str = key("wait", choices=_spead.WHEN_FULL)
    wait_timeout: float = key(1.0, minimum=0, maximum=HOUR)
    packet_presence: int = key(0, minimum=0, maximum=1 << 30)
    eviction: str = key("lossless", choices=_spead.EVICTION)  # several sources: wait for all?
    # A compiled placement hook, "package.module:name" (daqd.recv.place_hooks), and its
    # factory's further arguments (a TOML table, kept as sorted (name, value) pairs).
    place: str = ""
    place_args: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BufferConfig:
    """The `[stream.buffer]` table (`daqd.pipeline.buffers.build_buffer`)."""

    kind: str = key("circular", choices=buffers.KINDS)
    capacity: int = key(64, minimum=1, maximum=1 << 24)  # records held at most (both kinds)
    when_full: str = key("block", choices=buffers.WHEN_FULL)
    block_timeout: float = key(1.0, minimum=0, maximum=HOUR)  # a blocked put's wait, then drop
    flush_count: int = key(16, minimum=0, maximum=1 << 24)
    flush_bytes: int = key(0, minimum=0, maximum=1 << 50)
    flush_interval: float = key(5.0, minimum=0, maximum=DAY)
    flush_when: str = key("any", choices=flush.COMBINATIONS)
    flush_custom: tuple[str, ...] = ()  # "module:function" predicates, called with the buffer
    wal: str = ""                       # may contain {stream}
    wal_fsync: str = key("every-flush", choices=wal_log.FSYNC_POLICIES)
    wal_max_bytes: int = key(1 << 30, minimum=1 << 16, maximum=1 << 50)


@dataclass(frozen=True)
class SinkConfig:
    """One `[[stream.sinks]]` entry (`daqd.sinks.make_sink`; daqd/sinks/ describes the formats).

    Attributes
    ----------
    kind : str
        ``binary``, ``text``, ``pcap``, ``hdf5``, ``zarr`` (these two need
        chunk mode), or a kind an installed package adds (entry point group
        ``daqd.sinks``; checked against the Sink protocol when loaded).
    path : str
        File name template: ``{stream}``, ``{start:STRFTIME}`` (UTC), ``{seq}``
        and, except for pcap, ``{chunk_id}`` and ``{capture_block}``.
    rotate_bytes, rotate_seconds : int, float
        Start a new file before one would exceed this size, or once one is
        this old; 0 = never.
    fsync : str
        ``never``, ``on-rotate`` (a file is fsynced before it is published)
        or ``every-flush``.
    header : bool
        Write the binary header or the text header line (pcap always has one).
    template : str
        Text sinks: the line template ("" = the mode's default).
    substreams_total, substream_offset, substream_chunk, origin, codec
        Zarr sinks (`daqd.sinks.zarr_store`): the store's whole substream axis
        (0 = this stream's ``substreams``), where this daemon's substreams go
        in it, substreams per Zarr chunk along that axis (0 = this daemon's
        whole region), the data timestamp of time index 0, and the
        compression (``""``, ``zstd``, ``blosc``).
    """

    kind: str = key()                   # SINK_KINDS or an entry point's (_check_sink_kind)
    path: str = key()
    # A file smaller than a file-system block holds less than it wastes: 0 or >= 4096.
    rotate_bytes: int = key(0, minimum=4096, maximum=1 << 50, off=0)
    rotate_seconds: float = key(0.0, minimum=0, maximum=366 * DAY)
    fsync: str = key("on-rotate", choices=SINK_FSYNC_POLICIES)
    header: bool = True
    template: str = ""
    substreams_total: int = key(0, minimum=1, maximum=1 << 24, off=0)
    substream_offset: int = key(0, minimum=0, maximum=1 << 24)
    substream_chunk: int = key(0, minimum=1, maximum=1 << 24, off=0)
    origin: int = key(0, minimum=0, maximum=(1 << 64) - 1)
    codec: str = key("", choices=ZARR_CODECS)


@dataclass(frozen=True)
class TimeConfig:
    """The `[stream.time]` table: the instrument's clock (`daqd.pipeline.datatime`).

    Attributes
    ----------
    sync_time : str
        UTC of timestamp 0: ISO 8601 (a TOML date-time too) or Unix seconds;
        "" = no clock (data time in ticks only).
    timestamp_rate : float
        Timestamp ticks per second (e.g. the ADC sample rate); 0 = no clock.
    timestamp_item : int
        Heap mode: the immediate item holding a heap's timestamp; -1 = a
        heap's data time is its arrival.
    """

    sync_time: str = ""
    timestamp_rate: float = key(0.0, minimum=1e-6, maximum=1e15, off=0.0)
    timestamp_item: int = key(-1, minimum=-1, maximum=ITEM_ID_MAX)

    @property
    def clock(self) -> Clock:
        """The clock these keys describe (maybe not configured)."""
        return Clock(self.sync_time or None, self.timestamp_rate or None)


@dataclass(frozen=True)
class TriggerConfig:
    """The `[stream.trigger]` table: data time retained, and where triggered events go.

    `daqd.pipeline.retention.build_retention` builds the retention from it,
    `daqd.sinks.build_event_sink` each event's file, and
    `daqd.pipeline.events.Triggers` checks and runs the requests.

    Attributes
    ----------
    path : str
        Event file name template: ``{stream}``, ``{label}``, ``{event}``,
        ``{start:STRFTIME}`` (the window's start, UTC).
    retain_seconds : float
        Data time kept in memory for triggers, at least (chunk mode: ``pool``
        must hold it, beside ``max_chunks``).
    kind : str
        The sink kind of event files: ``binary``, ``text`` or ``hdf5``.
    max_post_seconds : float
        How far past the newest data time a window may reach (seconds of
        data time); an event waits at most this + 10 s of wall-clock time.
    """

    path: str = key()
    retain_seconds: float = key(2.0, minimum=1e-6, maximum=DAY)
    kind: str = key("hdf5", choices=EVENT_KINDS)
    max_post_seconds: float = key(10.0, minimum=0, maximum=DAY)


@dataclass(frozen=True)
class ProcessConfig:
    """The `[stream.process]` table: a processing step (`daqd.pipeline.process`).

    Attributes
    ----------
    call : str
        ``"package.module:name"``: the step (a callable), or a class made once
        with `options` into the step.  Chunk mode only.
    options : dict
        Keyword arguments of the class (a TOML table).
    """

    call: str = key()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamConfig:
    """One `[[stream]]` entry (`daqd.recv.builder.build_receiver` builds its receive side)."""

    name: str
    sources: tuple[str, ...]
    max_heaps: int = key(_spead.DEFAULT_MAX_HEAPS, minimum=1, maximum=4096)
    allow_out_of_order: bool = False
    max_packet_size: int = key(DEFAULT_MAX_PACKET_SIZE, minimum=64, maximum=1 << 20)
    max_heap_size: int = key(_spead.DEFAULT_MAX_HEAP_SIZE, minimum=64, maximum=1 << 36)
    socket_buffer: int = key(DEFAULT_SOCKET_BUFFER, minimum=0, maximum=INT_MAX)
    stop_on_stop_item: bool = True      # a stop item is stream control (false: an ordinary heap)
    exit_on_stop_heap: bool = False     # a stop heap ends the source (else: capture boundary)
    # Heap mode, per source: payload bytes its live (partial) heaps may hold together.
    max_live_heap_bytes: int = key(_spead.DEFAULT_MAX_LIVE_HEAP_BYTES,
                                   minimum=_spead.MIN_MAX_LIVE_HEAP_BYTES, maximum=1 << 40)
    # spead2's bug_compat: "pyspead-0.5.2" or BUG_COMPAT_* names joined with | (recv.bug_compat)
    bug_compat: str = ""
    # spead2's memcpy: the payload copy (auto: standard in heap mode, nontemporal in chunk mode)
    memcpy: str = key("auto", choices=_spead.MEMCPY_MODES)
    # spead2's allow_unsized_heaps: heap mode takes packets without HEAP_SIZE (chunk mode never)
    allow_unsized_heaps: bool = True
    # spead2's substreams: rings of max_heaps live heaps, a heap in ring heap_cnt % heap_windows.
    heap_windows: int = key(1, minimum=1, maximum=_spead.MAX_HEAP_WINDOWS)
    # spead2's explicit_start: sources bound at start, no packet taken before `start-receiving`.
    explicit_start: bool = False
    # spead2's contiguous_only: heap mode; false: incomplete heaps become records too.
    contiguous_only: bool = True
    # Receive threads per source: udp:// (unicast) only, each its own SO_REUSEPORT socket
    # on the same address, its own compiled stream and thread (daqd.recv.builder).
    threads: int = key(1, minimum=1, maximum=_spead.GROUP_MAX_STREAMS)
    # CPUs the receive threads pin themselves to, thread i to affinity[i % len] (spead2's
    # ThreadPool affinity); empty: not pinned.
    affinity: tuple[int, ...] = key((), minimum=0, maximum=MAX_CPU)
    chunk: ChunkConfig | None = None
    buffer: BufferConfig = field(default_factory=BufferConfig)
    sinks: tuple[SinkConfig, ...] = ()
    time: TimeConfig = field(default_factory=TimeConfig)
    trigger: TriggerConfig | None = None
    process: ProcessConfig | None = None

    @property
    def timeline(self) -> Timeline:
        """The stream's data time (`daqd.pipeline.datatime.Timeline`) from these keys."""
        c = self.chunk
        item = self.time.timestamp_item
        return Timeline(self.time.clock,
                        c.timestamp_step * c.heaps_per_chunk if c is not None else None,
                        item if c is None and item >= 0 else None)


@dataclass(frozen=True)
class SimulateConfig:
    """One `[[simulate]]` entry: a built-in sender of a reference workload.

    It lets a configuration run with no hardware: the daemon sends the
    workload to one of its own sources, e.g. over loopback UDP
    (`daqd.recv.workloads.WorkloadSender`).
    """

    target: str
    workload: str = key("W1", choices=WORKLOADS)
    rate: float = key(0.0, minimum=0, maximum=1e12)  # bytes per second; 0 = as fast as possible
    heaps: int = key(0, minimum=0, maximum=1 << 48)  # 0 = until the daemon stops
    stop: bool = True                   # end with a stop heap (a capture boundary, or
                                        # with exit_on_stop_heap the end of a finite run)


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration file."""

    path: str
    text: str
    daemon: DaemonConfig
    zmq: ZmqConfig
    streams: tuple[StreamConfig, ...]
    simulate: tuple[SimulateConfig, ...] = ()


#: The tables of the file: where each section class is found.
SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig, "zmq": ZmqConfig, "stream": StreamConfig,
    "stream.chunk": ChunkConfig, "stream.buffer": BufferConfig, "stream.sinks": SinkConfig,
    "stream.time": TimeConfig, "stream.trigger": TriggerConfig, "stream.process": ProcessConfig,
    "simulate": SimulateConfig,
}
# Fields that hold nested tables, filled by parse().
NESTED = ("ChunkConfig | None", "BufferConfig", "tuple[SinkConfig, ...]", "TimeConfig",
          "TriggerConfig | None", "ProcessConfig | None")


def schema_keys() -> list[str]:
    """Every key of the configuration file, as ``table.key`` (nested tables excluded)."""
    return [f"{table}.{f.name}" for table, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if f.type not in NESTED]


class _Loader:
    """Builds the dataclasses from parsed TOML, naming the first problem."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} = {value!r}: expected {expected}")

    def table(self, cls: type, data: Any, where: str) -> dict[str, Any]:
        """Check one table's scalar keys (nested tables are the caller's); return them."""
        if not isinstance(data, dict):
            raise self.fail(where, data, "a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                raise self.fail(f"{where}.{key}", data[key],
                                f"one of the keys {', '.join(sorted(fields))}")
        values = {name: self.value(fields[name], value, f"{where}.{name}")
                  for name, value in data.items() if fields[name].type not in NESTED}
        for name, f in fields.items():
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                    and name not in values:
                raise ConfigError(f"{self.path}: {where}: missing key {name}")
        return values

    def value(self, f: dataclasses.Field, value: Any, key: str) -> Any:
        kind = f.type
        if f.name == "sync_time":
            value = self.utc(value, key)
        elif f.name == "bug_compat":
            if not isinstance(value, str):
                raise self.fail(key, value, "a string")
            try:
                parse_bug_compat(value)
            except ValueError as exc:
                raise ConfigError(f"{self.path}: {key} = {value!r}: {exc}") from None
        elif kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(key, value, "true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, value, "an integer")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, value, "a number")
            value = float(value)
            if not math.isfinite(value):
                raise self.fail(key, value, "a finite number")
        elif kind == "str":
            if not isinstance(value, str):
                raise self.fail(key, value, "a string")
        elif kind.startswith("tuple[int"):
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise self.fail(key, value, "a list of integers")
            for i, v in enumerate(value):
                self.bounds(f.metadata, v, f"{key}[{i}]")
            return tuple(value)
        elif f.name == "flush_custom":
            value = self.predicates(value, key)
        elif f.name == "place_args":
            if not isinstance(value, dict) or not all(
                    isinstance(v, bool | int | float | str) for v in value.values()):
                raise self.fail(key, value, "a table of numbers, strings and booleans "
                                "(the place hook factory's keyword arguments)")
            return tuple(sorted(value.items()))
        elif kind.startswith("dict["):
            if not isinstance(value, dict):
                raise self.fail(key, value, "a table")

        elif kind.startswith("tuple[str"):
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) for v in value):
                raise self.fail(key, value, "a non-empty list of strings")
            value = tuple(value)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        if kind in ("int", "float"):
            self.bounds(f.metadata, value, key)
        return value

    def bounds(self, metadata: Any, value: float, key: str) -> None:
        """Check a number against its key's `minimum`, `maximum` and `off` value."""
        if "off" in metadata and value == metadata["off"]:
            return
        off = f"{metadata['off']} or " if "off" in metadata else ""
        if "minimum" in metadata and value < metadata["minimum"]:
            raise self.fail(key, value, f"{off}at least {metadata['minimum']}")
        if "maximum" in metadata and value > metadata["maximum"]:
            raise self.fail(key, value, f"{off}at most {metadata['maximum']}")

    def utc(self, value: Any, key: str) -> str:
        """Check a UTC time (ISO 8601, a TOML date-time, Unix seconds); return it as text."""
        if isinstance(value, str) and not value:
            return ""
        try:
            parse_utc(value, key)
        except TimeError:
            raise self.fail(key, value, "a UTC time: ISO 8601 (2026-12-07T00:00:00Z), a TOML "
                            "date-time or Unix seconds") from None
        return value.isoformat() if hasattr(value, "isoformat") else \
            value if isinstance(value, str) else repr(value)

    def predicates(self, value: Any, key: str) -> tuple[str, ...]:
        """Check flush predicates: "module:function" strings that import now."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, value, 'a list of "module:function" strings')
        for i, spec in enumerate(value):
            try:
                flush.resolve_predicate(spec)
            except ValueError as exc:
                raise self.fail(f"{key}[{i}]", spec,
                                f'"module:function" naming a predicate f(buffer) -> bool ({exc})'
                                ) from None
        return tuple(value)


def _check_source(loader: _Loader, key: str, uri: str,
                  schemes: tuple[str, ...] = SOURCE_SCHEMES) -> tuple[str, int] | None:
    """Check a source URI (`daqd.recv.uri`); the (scheme, port) it binds, if any."""
    try:
        parsed = parse_uri(uri, schemes)
    except SourceError as exc:
        raise loader.fail(key, uri, str(exc).removeprefix(f"{uri}: ")) from None
    if parsed.listens:
        assert parsed.port is not None
        return parsed.scheme, parsed.port
    return None


def _check_prometheus(loader: _Loader, address: str) -> None:
    """Check ``daemon.prometheus``; any interface may serve it, as it is read-only."""
    if not address:
        return
    try:
        split_host_port(address)
    except ValueError:
        raise loader.fail("daemon.prometheus", address,
                          'HOST:PORT (e.g. "127.0.0.1:9100", "[::1]:9100"), or "" for off'
                          ) from None


#: Longest ipc:// path: a Unix socket address holds 107 bytes and a NUL.
IPC_PATH_MAX = 107


def _check_endpoint(loader: _Loader, key: str, endpoint: str, zmq_cfg: ZmqConfig) -> None:
    path = ipc_path(endpoint)
    if path is not None and len(path.encode()) > IPC_PATH_MAX:
        raise loader.fail(key, endpoint, f"an ipc:// path of at most {IPC_PATH_MAX} bytes "
                          "(a Unix socket address)")
    if not endpoint or endpoint.startswith(("ipc://", "inproc://")):
        return
    if not endpoint.startswith("tcp://"):
        raise loader.fail(key, endpoint, 'a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or "")')
    if not is_local_endpoint(endpoint) and not zmq_cfg.curve_secret_key:
        raise loader.fail(key, endpoint, "a loopback or ipc:// endpoint, or CURVE keys "
                          "(zmq.curve_secret_key) to bind elsewhere")


def _check_control_access(loader: _Loader, zmq_cfg: ZmqConfig) -> None:
    """Keep the control socket the owner's alone, unless a key says otherwise.

    A file-system ``ipc://`` socket is made 0600 in a 0700 directory by the
    daemon; an abstract one (``ipc://@name``) has no permissions at all, and a
    TCP port on loopback is open to every local user: these need CURVE, or
    ``zmq.control_insecure_tcp = true`` for loopback TCP.
    """
    control = zmq_cfg.control
    if zmq_cfg.curve_secret_key:
        return
    if control.startswith("ipc://@"):
        raise loader.fail("zmq.control", control, "an ipc:// socket file path (an abstract "
                          "socket has no permissions: any local user could stop the daemon), "
                          "or CURVE keys (zmq.curve_secret_key)")
    if control.startswith("tcp://") and not zmq_cfg.control_insecure_tcp:
        raise loader.fail("zmq.control", control,
                          f"an ipc:// endpoint (the default, {DEFAULT_CONTROL!r}), CURVE keys "
                          "(zmq.curve_secret_key), or zmq.control_insecure_tcp = true to let "
                          "any local user control the daemon over TCP")


def _check_ipc_directory(loader: _Loader, key: str, endpoint: str, private: bool) -> None:
    """Check an ``ipc://`` socket file's directory: writable, or creatable.

    The daemon makes a missing one 0700.  `private` (a control socket without
    CURVE): no one else may enter an existing one.
    """
    path = ipc_path(endpoint)
    if path is None or path == "*":
        return
    directory = Path(path).parent
    _check_directory(loader, key, endpoint, directory)
    why = open_to_others(str(directory)) if private else None
    if why is not None:
        raise loader.fail(key, endpoint, f"a socket in a directory only this user may enter "
                          f"(a missing one is made 0700), or CURVE keys: {why}")


def _try_mkdir(loader: _Loader, key: str, value: str, directory: Path, existing: Path) -> None:
    """Check that `directory` can be made below `existing` (made, then removed).

    Another process may make (or use) the same directories meanwhile, e.g. a
    second daemon started at the same time with a sink beside this one's: a
    part that exists by then is fine and is left alone, and one this check
    made but someone has used since stays.
    """
    made: list[Path] = []
    try:
        for path in [*(existing / part for part in
                       reversed(directory.relative_to(existing).parents[:-1])), directory]:
            try:
                path.mkdir()
            except FileExistsError:
                if path.is_dir():
                    continue            # made by someone else meanwhile: not ours
                raise
            made.append(path)
    except OSError as exc:
        raise loader.fail(key, value, "a path whose directory can be created "
                          f"({exc.strerror})") from None
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):     # used by someone else since: kept
                path.rmdir()


def _check_sink_templates(loader: _Loader, where: str, sink: SinkConfig,
                          s: StreamConfig) -> Path:
    """Check a sink's path and text templates; return the path's field-free directory."""
    chunk = s.chunk
    allowed = PATH_FIELDS_BY_KIND.get(sink.kind, PATH_FIELDS)
    try:
        template = PathTemplate(sink.path, allowed)
    except ValueError as exc:
        raise loader.fail(f"{where}.path", sink.path, f"a file name template ({exc})") from None
    if sink.template and sink.kind != "text":
        raise loader.fail(f"{where}.template", sink.template,
                          f'"" (only text sinks have a template; this is {sink.kind})')
    if sink.kind == "text" and sink.template:
        try:
            check_template(sink.template, chunk is not None, s.timeline.has_utc)
        except ValueError as exc:
            raise loader.fail(f"{where}.template", sink.template,
                              f"a line template ({exc})") from None
    return template.static_directory


def _check_directory(loader: _Loader, key: str, value: str, directory: Path) -> None:
    """Check that files can be made in `directory` (made later if missing), making none."""
    directory = directory.absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise loader.fail(key, value, f"a path whose directory can be created ({existing} is "
                          "not a directory)")
    # os.access sees read-only mounts and immutable directories, for root too.
    if not os.access(existing, os.W_OK | os.X_OK):
        raise loader.fail(key, value, f"a path in a writable directory ({existing} is not "
                          "writable)")
    if existing != directory:
        _try_mkdir(loader, key, value, directory, existing)


def _fixed_numeric(dtype: np.dtype) -> bool:
    """Whether a dtype is a fixed-size number, or a record of them (e.g. complex int8)."""
    if dtype.fields is not None:
        return dtype.itemsize > 0 and all(
            _fixed_numeric(sub.subdtype[0] if sub.subdtype else sub)
            for sub, *_ in dtype.fields.values())
    return dtype.subdtype is None and dtype.kind in "biufc"


def _check_name(loader: _Loader, key: str, name: str) -> None:
    """Check a stream's name: part of file names ({stream}), so one safe path component."""
    if not name or name in (".", "..") or "/" in name or not name.isprintable():
        raise loader.fail(key, name, "a name usable as one file name component (not empty, "
                          "not . or .., no /, no control characters)")


def _check_chunk(loader: _Loader, where: str, s: StreamConfig, c: ChunkConfig,
                 host: bool = True) -> None:
    try:
        dtype = np.dtype(c.dtype)
    except TypeError:
        raise loader.fail(f"{where}.chunk.dtype", c.dtype, "a numpy dtype name") from None
    if not _fixed_numeric(dtype):
        raise loader.fail(f"{where}.chunk.dtype", c.dtype, "a fixed-size numeric dtype "
                          "(e.g. uint8, int16, float32, complex64), or a record of them")
    if c.heap_bytes % dtype.itemsize:
        raise loader.fail(f"{where}.chunk.heap_bytes", c.heap_bytes,
                          f"a multiple of the {c.dtype} item size ({dtype.itemsize})")
    if c.heap_bytes > s.max_heap_size:
        raise loader.fail(f"{where}.chunk.heap_bytes", c.heap_bytes,
                          f"at most max_heap_size ({s.max_heap_size}): larger heaps are "
                          "rejected")
    if c.timestamp_step * c.heaps_per_chunk >= 1 << 63:
        raise loader.fail(f"{where}.chunk.timestamp_step", c.timestamp_step,
                          "a step whose chunk (timestamp_step x heaps_per_chunk) is below 2**63")
    if c.pool < c.max_chunks:
        raise loader.fail(f"{where}.chunk.pool", c.pool,
                          f"at least max_chunks ({c.max_chunks})")
    if c.stream_chunks > c.max_chunks:
        raise loader.fail(f"{where}.chunk.stream_chunks", c.stream_chunks,
                          f"0 or at most max_chunks ({c.max_chunks}): a source's window lies "
                          "within the stream's")
    if c.substreams > 1 and c.substream_item < 0 and not c.place:
        raise loader.fail(f"{where}.chunk.substreams", c.substreams,
                          "1, or a substream_item (or a place hook) to index the substreams")
    items = 1 + (c.substream_item >= 0) + len(c.extra_items)
    if items > _spead.GROUP_MAX_ITEMS:
        raise loader.fail(f"{where}.chunk.extra_items", list(c.extra_items),
                          f"at most {_spead.GROUP_MAX_ITEMS} items with the timestamp and "
                          "substream items")
    if len(s.sources) * s.threads > _spead.GROUP_MAX_STREAMS:
        raise loader.fail(f"{where}.sources", list(s.sources),
                          f"at most {_spead.GROUP_MAX_STREAMS} sources x threads in chunk mode")
    if c.packet_presence and c.heap_bytes % c.packet_presence:
        raise loader.fail(f"{where}.chunk.packet_presence", c.packet_presence,
                          f"a divisor of heap_bytes ({c.heap_bytes})")
    if c.place_args and not c.place:
        raise loader.fail(f"{where}.chunk.place_args", dict(c.place_args),
                          "no place_args without a place hook")
    if c.place and host:        # the daemon's host (validate, run): a client needs no hook
        try:
            load_place_hook(c.place, dataclasses.asdict(c), dict(c.place_args))
        except ValueError as exc:
            raise loader.fail(f"{where}.chunk.place", c.place, "a compiled placement hook "
                              f'"package.module:name" ({exc})') from None


def _check_time(loader: _Loader, where: str, s: StreamConfig) -> None:
    """Check the clock has both halves, and the heap-mode timestamp item is in heap mode."""
    t = s.time
    if bool(t.sync_time) != bool(t.timestamp_rate):
        missing, given = ("timestamp_rate", "sync_time") if t.sync_time else \
            ("sync_time", "timestamp_rate")
        raise loader.fail(f"{where}.time.{missing}", getattr(t, missing),
                          f"a value with {given} (a clock needs both)")
    if s.chunk is not None and t.timestamp_item >= 0:
        raise loader.fail(f"{where}.time.timestamp_item", t.timestamp_item,
                          "-1 in chunk mode (the chunk's timestamp is chunk.timestamp_item)")


def _check_trigger(loader: _Loader, where: str, s: StreamConfig, host: bool) -> None:
    """Check ``[stream.trigger]``: seconds that become ticks, a pool that holds them, a path."""
    t = s.trigger
    if t is None:
        return
    try:
        template = PathTemplate(t.path, EVENT_PATH_FIELDS)
    except ValueError as exc:
        raise loader.fail(f"{where}.trigger.path", t.path,
                          f"a file name template ({exc})") from None
    if host:
        _check_directory(loader, f"{where}.trigger.path", t.path, template.static_directory)
    if t.kind == "hdf5" and s.chunk is None:
        raise loader.fail(f"{where}.trigger.kind", t.kind,
                          "binary or text (hdf5 event files need chunk mode)")
    timeline = s.timeline
    if not timeline.by_arrival and not s.time.timestamp_rate:
        mode = "chunks" if s.chunk is not None else "heap timestamps"
        raise loader.fail(f"{where}.trigger.retain_seconds", t.retain_seconds,
                          f"a [stream.time] timestamp_rate to turn seconds into {mode}")
    c = s.chunk
    retained = retained_chunks(t, timeline)
    if c is not None and retained is not None:
        need = c.max_chunks + retained + 1
        if c.pool < need:
            raise loader.fail(
                f"{where}.chunk.pool", c.pool,
                f"at least {need}: max_chunks ({c.max_chunks}) + the chunks retain_seconds "
                f"= {t.retain_seconds:g} holds ({retained}, of {timeline.chunk_ticks} ticks "
                f"at {s.time.timestamp_rate:g} ticks/s; {retain_ticks(t, timeline)} ticks) "
                "+ 1 for the buffer to write from")


def _check_flush(loader: _Loader, where: str, s: StreamConfig) -> None:
    """Flush conditions that can fire: one at least, none beyond what the buffer holds."""
    b = s.buffer
    if not (b.flush_count or b.flush_bytes or b.flush_interval or b.flush_custom):
        raise loader.fail(f"{where}.buffer.flush_count", b.flush_count,
                          "a flush condition that can fire (flush_count, flush_bytes, "
                          "flush_interval and flush_custom are all off)")
    if b.flush_count > b.capacity:
        raise loader.fail(f"{where}.buffer.flush_count", b.flush_count,
                          f"at most capacity ({b.capacity}): the buffer never holds more")
    reach = b.capacity * recv_builder.largest_record_bytes(s)
    if b.flush_bytes > reach:
        raise loader.fail(f"{where}.buffer.flush_bytes", b.flush_bytes,
                          f"at most capacity x the largest record ({reach}): the buffer "
                          "never holds more")


def _wal_path(s: StreamConfig) -> str:
    return s.buffer.wal.format(stream=s.name)


def _check_wal(loader: _Loader, where: str, s: StreamConfig, host: bool) -> None:
    """Check the write-ahead log's path template, size bound and (`host`) directory."""
    b = s.buffer
    if not b.wal:
        return
    try:
        path = _wal_path(s)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise loader.fail(f"{where}.buffer.wal", b.wal,
                          "a path whose only field is {stream}") from None
    frame = recv_builder.largest_record_bytes(s) + buffers.WAL_RECORD_SLACK
    if b.wal_max_bytes < frame:
        raise loader.fail(f"{where}.buffer.wal_max_bytes", b.wal_max_bytes,
                          f"at least one record's frame ({frame} bytes: a chunk, or a heap "
                          "of max_heap_size), else such a record cannot be logged")
    if host:
        _check_directory(loader, f"{where}.buffer.wal", b.wal, Path(path).parent)
        if os.path.lexists(path) and not (
                os.path.isfile(path) and os.access(path, os.R_OK | os.W_OK)):
            raise loader.fail(f"{where}.buffer.wal", b.wal,
                              f"a write-ahead log file we may read and write ({path} is not)")


def _check_stream(loader: _Loader, i: int, s: StreamConfig, host: bool) -> None:
    where = f"stream[{i}]"
    _check_name(loader, f"{where}.name", s.name)
    if s.exit_on_stop_heap and not s.stop_on_stop_item:
        raise loader.fail(f"{where}.exit_on_stop_heap", True,
                          "false while stop_on_stop_item = false (stop heaps are then "
                          "not stream control, so none can end the stream)")
    c = s.chunk
    if c is not None:
        _check_chunk(loader, where, s, c, host)
    _check_threads(loader, where, s, host)
    _check_contiguous_only(loader, where, s)
    s = _check_process(loader, where, s)    # the rest checks the records as written
    _check_time(loader, where, s)
    _check_trigger(loader, where, s, host)
    _check_flush(loader, where, s)
    for j, sink in enumerate(s.sinks):
        _check_sink_kind(loader, f"{where}.sinks[{j}].kind", sink)
        # The directory part before the first {field} is the one that must exist.
        directory = _check_sink_templates(loader, f"{where}.sinks[{j}]", sink, s)
        if sink.kind == "zarr" and is_local(sink.path):     # the store's directory's
            directory = Path(local_root(sink.path.format(stream=s.name))).parent
        # A kind of another package's says itself what its path means.
        if host and sink.kind in SINK_KINDS and (sink.kind != "zarr" or is_local(sink.path)):
            _check_directory(loader, f"{where}.sinks[{j}].path", sink.path, directory)
        if sink.kind in ("hdf5", "zarr") and c is None:
            raise loader.fail(f"{where}.sinks[{j}].kind", sink.kind,
                              f"binary, text or pcap ({sink.kind} sinks need chunk mode)")
        _check_zarr_sink(loader, f"{where}.sinks[{j}]", s, sink, host)
    _check_wal(loader, where, s, host)


def _check_threads(loader: _Loader, where: str, s: StreamConfig, host: bool) -> None:
    """Check ``threads`` (sources that can be split, lossy eviction) and ``affinity``.

    Several sockets on one port are fed by the kernel's flow hash, so one may
    get no flow at all: a lossless chunk group would wait for it for ever.
    `host`: each CPU must be one this process may run on.
    """
    if s.threads > 1:
        for k, uri in enumerate(s.sources):
            problem = split_problem(uri)
            if problem:
                raise loader.fail(f"{where}.threads", s.threads,
                                  f"1 for sources[{k}] = {uri!r} ({problem})")
        if s.chunk is not None and s.chunk.eviction == "lossless":
            raise loader.fail(f"{where}.threads", s.threads,
                              '1 with chunk.eviction = "lossless" (the kernel may hash no '
                              "flow to a socket, whose thread would then hold every chunk "
                              'back); set chunk.eviction = "lossy"')
    receive_threads = len(s.sources) * s.threads
    if len(s.affinity) > receive_threads:
        raise loader.fail(f"{where}.affinity", list(s.affinity),
                          f"at most {receive_threads} CPUs (one per receive thread: "
                          f"{len(s.sources)} sources x threads = {s.threads})")
    if host and s.affinity:
        allowed = os.sched_getaffinity(0)
        for k, cpu in enumerate(s.affinity):
            if cpu not in allowed:
                raise loader.fail(f"{where}.affinity[{k}]", cpu,
                                  "a CPU this process may run on (one of "
                                  f"{', '.join(map(str, sorted(allowed)))})")


def _check_contiguous_only(loader: _Loader, where: str, s: StreamConfig) -> None:
    """Refuse ``contiguous_only = false`` where incomplete heap records cannot go.

    Chunk mode has no heap records (a chunk's ``present`` marks a heap slot
    that did not arrive whole); a binary sink writes a heap record's payload
    unframed, and an incomplete heap has none to write.
    """
    if s.contiguous_only:
        return
    if s.chunk is not None:
        raise loader.fail(f"{where}.contiguous_only", False,
                          "true in chunk mode (a chunk's present flags mark the heaps "
                          "that did not arrive whole)")
    for j, sink in enumerate(s.sinks):
        if sink.kind == "binary":
            raise loader.fail(f"{where}.sinks[{j}].kind", sink.kind,
                              "text or pcap with contiguous_only = false (a binary sink "
                              "writes payloads unframed: an incomplete heap has none)")
    if s.trigger is not None and s.trigger.kind == "binary":
        raise loader.fail(f"{where}.trigger.kind", s.trigger.kind,
                          "text with contiguous_only = false (a binary sink writes payloads "
                          "unframed: an incomplete heap has none)")


def _check_process(loader: _Loader, where: str, s: StreamConfig) -> StreamConfig:
    """Import and make the processing step (its layout too); return the stream as written."""
    p = s.process
    if p is None:
        return s
    if s.chunk is None:
        raise loader.fail(f"{where}.process.call", p.call,
                          "no processing step in heap mode (it needs [stream.chunk])")
    try:
        processor = process_step.build_process(s)
    except ValueError as exc:
        raise loader.fail(f"{where}.process.call", p.call,
                          f'"package.module:name" naming a processing step ({exc})') from None
    assert processor is not None        # s.process is set: there is a step
    out: StreamConfig = processor.stream(s)
    return out


def _check_sink_kind(loader: _Loader, key: str, sink: SinkConfig) -> None:
    """Check a sink's kind: built in, or an entry point's that loads and has the protocol.

    The entry must also pass the class's optional ``check``
    (`daqd.sinks.check_config`).
    """
    if sink.kind in SINK_KINDS:
        return                          # imported when used (h5py, zarr)
    try:
        check_sink_config(sink)
    except ValueError as exc:
        raise loader.fail(key, sink.kind, f"a sink kind ({exc})") from None


def _check_zarr_sink(loader: _Loader, where: str, s: StreamConfig, sink: SinkConfig,
                     host: bool) -> None:
    """Zarr keys only on zarr sinks; a zarr sink's region, chunking and existing store."""
    defaults = SinkConfig(kind=sink.kind, path=sink.path)
    if sink.kind != "zarr":
        for name in ZARR_KEYS:
            if getattr(sink, name) != getattr(defaults, name):
                raise loader.fail(f"{where}.{name}", getattr(sink, name),
                                  f"no value (a zarr sink key; this sink is {sink.kind})")
        return
    for name in ("rotate_bytes", "rotate_seconds", "header", "template"):
        if getattr(sink, name) != getattr(defaults, name):
            raise loader.fail(f"{where}.{name}", getattr(sink, name),
                              "no value (a zarr store is one per stream, with no header)")
    assert s.chunk is not None
    layout = ZarrLayout.from_config(sink, s.chunk, clock=s.timeline.has_utc)
    name, problem = layout.problem()
    if problem:
        raise loader.fail(f"{where}.{name}", getattr(sink, name), problem)
    if host:
        from daqd.sinks.zarr_store import LayoutMismatch, check_layout, find_layout
        url = sink.path.format(stream=s.name)
        try:
            found = find_layout(url)
            if found is not None:
                check_layout(found, layout, url)
        except LayoutMismatch as exc:
            raise loader.fail(f"{where}.path", sink.path,
                              f"a store this daemon's layout fits ({exc})") from None
        except (OSError, ImportError, ValueError) as exc:
            # e.g. s3:// without s3fs: fsspec raises ImportError naming the package
            raise loader.fail(f"{where}.path", sink.path, "a Zarr store that can be opened "
                              f"({type(exc).__name__}: {exc})") from None


def _check_files(loader: _Loader, streams: Sequence[StreamConfig]) -> None:
    """No two sinks or write-ahead logs write the same files (any stream, any kind).

    Paths are compared with ``{stream}`` filled in and every other field as a
    wildcard, so ``{seq}`` and ``{chunk_id}`` in the same place collide too.
    Zarr sinks of several streams may share a store (its writers each have
    a region of their own): their substream regions must not overlap.
    """
    writers: dict[str, str] = {}
    regions: dict[str, list[tuple[str, range]]] = {}     # zarr store -> (key, substreams)
    for i, s in enumerate(streams):
        named: list[tuple[str, str, str, SinkConfig | None]] = [
            (f"stream[{i}].sinks[{j}].path", sink.path, template_glob(sink.path, s.name), sink)
            for j, sink in enumerate(s.sinks)]
        if s.buffer.wal:
            named.append((f"stream[{i}].buffer.wal", s.buffer.wal, glob.escape(_wal_path(s)),
                          None))
        if s.trigger is not None:
            named.append((f"stream[{i}].trigger.path", s.trigger.path,
                          template_glob(s.trigger.path, s.name), None))
        for key, value, pattern, sink in named:
            pattern = os.path.normpath(os.path.abspath(pattern))
            if sink is not None and sink.kind == "zarr" and s.chunk is not None:
                mine = range(sink.substream_offset, sink.substream_offset + s.chunk.substreams)
                for other, theirs in regions.setdefault(pattern, []):
                    if set(mine) & set(theirs):
                        raise loader.fail(f"{key[:-len('.path')]}.substream_offset",
                                          sink.substream_offset,
                                          f"a substream region of the store {pattern} that "
                                          f"{other} does not write (it has substreams "
                                          f"{theirs.start}-{theirs.stop - 1})")
                regions[pattern].append((key, mine))
                if len(regions[pattern]) > 1:
                    continue            # the store's first zarr sink stands for it below
            if pattern in writers:
                raise loader.fail(key, value, "a file name no other sink or write-ahead log "
                                  f"uses ({writers[pattern]} writes {pattern})")
            writers[pattern] = key


def available_memory() -> int | None:
    """Return the machine's available memory (MemAvailable of /proc/meminfo), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(n: float) -> str:
    """Bytes for a person: 512 B, 8.0 MiB, 477.0 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_needs(streams: Sequence[StreamConfig]) -> list[tuple[str, Any, str, int]]:
    """List what a configuration's streams may allocate: (key, value, what, bytes) per part.

    Each layer says what its objects hold (`daqd.recv.builder.memory_needs`,
    `daqd.pipeline.buffers.memory_needs`); the key named is the one that sizes
    the part.
    """
    needs = []
    for i, s in enumerate(streams):
        parts = recv_builder.memory_needs(s)
        if s.sinks:
            # A processing step's records are its own (its layout), not pool chunks.
            step = process_step.build_process(s) if s.process is not None else None
            written = step.stream(s) if step is not None else s
            parts += [(f"buffer.{k}", what, n) for k, what, n in buffers.memory_needs(
                s.buffer, recv_builder.expected_record_bytes(written),
                shares_pool=s.chunk is not None and step is None)]
        for key, what, n in parts:
            value: Any = s
            for name in key.split("."):
                value = getattr(value, name)
            needs.append((f"stream[{i}].{key}", value, what, n))
    return needs


def memory_budget(daemon: DaemonConfig) -> tuple[int | None, str]:
    """Return the memory budget (None: unknown) and where it comes from."""
    if daemon.memory_budget:
        return daemon.memory_budget, "daemon.memory_budget"
    return available_memory(), "MemAvailable"


def memory_summary(config: Config) -> str:
    """Say what a configuration needs of its budget: ``36.1 MiB of 22.6 GiB (MemAvailable)``."""
    budget, source = memory_budget(config.daemon)
    total = _size(sum(n for *_, n in memory_needs(config.streams)))
    return f"{total} of {_size(budget)} ({source})" if budget is not None else total


def _check_memory(loader: _Loader, daemon: DaemonConfig,
                  streams: Sequence[StreamConfig]) -> None:
    """Check that what the configuration allocates fits the memory budget."""
    budget, source = memory_budget(daemon)
    if budget is None:
        return
    needs = memory_needs(streams)
    total = sum(n for *_, n in needs)
    if total <= budget:
        return
    needs.sort(key=lambda need: -need[-1])
    key, value, _, _ = needs[0]
    parts = ", ".join(f"{k}: {what} {_size(n)}" for k, _, what, n in needs[:3])
    raise loader.fail(key, value, f"a configuration that fits in {_size(budget)} ({source}); "
                      f"it needs {_size(total)} ({parts})")


def parse(text: str, path: str = "<config>", *, host: bool = True) -> Config:
    """Validate configuration text completely; raise ConfigError on the first problem.

    With `host` (``daqd validate``, ``run``, ``start``), what depends on the
    machine is checked too: that every directory to be written in is
    writable, and that the memory the configuration allocates fits the
    budget.  Clients of a running daemon (``status``, ``stop``, ``stats``)
    leave it out, since the daemon holds that memory itself.
    """
    loader = _Loader(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = {"daemon", "zmq", "stream", "simulate"}
    for key in data:
        if key not in top:
            raise loader.fail(key, data[key], "one of the tables daemon, zmq, stream, simulate")
    daemon = DaemonConfig(**loader.table(DaemonConfig, data.get("daemon", {}), "daemon"))
    _check_prometheus(loader, daemon.prometheus)
    zmq_cfg = ZmqConfig(**loader.table(ZmqConfig, data.get("zmq", {}), "zmq"))
    _check_endpoint(loader, "zmq.stats", zmq_cfg.stats, zmq_cfg)
    _check_endpoint(loader, "zmq.control", zmq_cfg.control, zmq_cfg)
    _check_control_access(loader, zmq_cfg)
    if host:
        _check_ipc_directory(loader, "zmq.stats", zmq_cfg.stats, private=False)
        _check_ipc_directory(loader, "zmq.control", zmq_cfg.control,
                             private=not zmq_cfg.curve_secret_key)
        _check_directory(loader, "daemon.pidfile", daemon.pidfile, Path(daemon.pidfile).parent)
    raw_streams = data.get("stream", [])
    if not isinstance(raw_streams, list) or not raw_streams:
        raise loader.fail("stream", raw_streams, "one or more [[stream]] tables")
    streams = []
    names: set[str] = set()
    bound: dict[tuple[str, int], str] = {}
    for i, raw in enumerate(raw_streams):
        where = f"stream[{i}]"
        values = loader.table(StreamConfig, raw, where)
        if "chunk" in raw:
            values["chunk"] = ChunkConfig(**loader.table(ChunkConfig, raw["chunk"],
                                                         f"{where}.chunk"))
        if "buffer" in raw:
            values["buffer"] = BufferConfig(**loader.table(BufferConfig, raw["buffer"],
                                                           f"{where}.buffer"))
        if "time" in raw:
            values["time"] = TimeConfig(**loader.table(TimeConfig, raw["time"], f"{where}.time"))
        if "trigger" in raw:
            values["trigger"] = TriggerConfig(**loader.table(TriggerConfig, raw["trigger"],
                                                             f"{where}.trigger"))
        if "process" in raw:
            values["process"] = ProcessConfig(**loader.table(ProcessConfig, raw["process"],
                                                             f"{where}.process"))
        raw_sinks = raw.get("sinks", [])
        if not isinstance(raw_sinks, list):
            raise loader.fail(f"{where}.sinks", raw_sinks, "[[stream.sinks]] tables")
        values["sinks"] = tuple(
            SinkConfig(**loader.table(SinkConfig, sink, f"{where}.sinks[{j}]"))
            for j, sink in enumerate(raw_sinks))
        stream = StreamConfig(**values)
        if stream.name in names:
            raise loader.fail(f"{where}.name", stream.name, "a name no other stream has")
        names.add(stream.name)
        for k, uri in enumerate(stream.sources):
            host_port = _check_source(loader, f"{where}.sources[{k}]", uri)
            if host_port is not None:
                if host_port in bound:
                    raise loader.fail(f"{where}.sources[{k}]", uri,
                                      f"a port no other source uses ({bound[host_port]} "
                                      "has it)")
                bound[host_port] = f"{where}.sources[{k}]"
        _check_stream(loader, i, stream, host)
        streams.append(stream)
    _check_files(loader, streams)
    if host:
        _check_memory(loader, daemon, streams)
    simulate = _simulators(loader, data.get("simulate", []), bound)
    return Config(path=path, text=text, daemon=daemon, zmq=zmq_cfg, streams=tuple(streams),
                  simulate=simulate)


def _simulators(loader: _Loader, raw: Any, bound: dict[tuple[str, int], str],
                ) -> tuple[SimulateConfig, ...]:
    """Build the `[[simulate]]` senders; each must target a udp:// or tcp:// source of ours."""
    if not isinstance(raw, list):
        raise loader.fail("simulate", raw, "[[simulate]] tables")
    out = []
    for i, table in enumerate(raw):
        where = f"simulate[{i}]"
        sim = SimulateConfig(**loader.table(SimulateConfig, table, where))
        if _check_source(loader, f"{where}.target", sim.target, NETWORK_SCHEMES) not in bound:
            raise loader.fail(f"{where}.target", sim.target,
                              "the udp:// or tcp:// URI of one of the streams' sources")
        out.append(sim)
    return tuple(out)


def default_config_text() -> str:
    """Return the built-in default configuration (``daqd/data/daqd.toml``, package data)."""
    return importlib.resources.files("daqd.data").joinpath(DEFAULT_CONFIG_NAME).read_text()


def load(path: str | os.PathLike | None = None, *, host: bool = True) -> Config:
    """Read and validate a configuration file (the built-in default when None).

    `host`: check the machine too (writable directories, memory; see `parse`).
    """
    if path is None:
        return parse(default_config_text(), f"<built-in {DEFAULT_CONFIG_NAME}>", host=host)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse(text, str(path), host=host)
