"""The daqd configuration file: TOML loaded into frozen, typed objects.

Everything is checked before anything starts: unknown keys, wrong types,
out-of-range values and inconsistent combinations.  Each problem is one
`ConfigError` line naming the file, the key, the value and what was expected
(INTERFACES.md, "Configuration").  Keys and defaults are those of
INTERFACES.md; config/daqd.toml is the built-in default.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daqd import _spead, logs
from daqd.addresses import ipc_path, is_local_endpoint, split_host_port
from daqd.errors import SourceError, UsageProblem
from daqd.pipeline import buffers, flush
from daqd.pipeline import wal as wal_log
from daqd.recv.sources import DEFAULT_MAX_PACKET_SIZE, DEFAULT_SOCKET_BUFFER
from daqd.recv.uri import NETWORK_SCHEMES, parse_uri
from daqd.recv.uri import SCHEMES as SOURCE_SCHEMES
from daqd.recv.workloads import WORKLOADS
from daqd.sinks import KINDS as SINK_KINDS
from daqd.sinks.base import FSYNC_POLICIES as SINK_FSYNC_POLICIES
from daqd.sinks.paths import PATH_FIELDS, PATH_FIELDS_BY_KIND, PathTemplate
from daqd.sinks.text import check_template

#: The built-in default configuration (no hardware needed), shipped as package data.
DEFAULT_CONFIG_NAME = "daqd.toml"


class ConfigError(UsageProblem):
    """A configuration problem, as one line naming file, key, value and expectation."""


def key(default: Any = dataclasses.MISSING, *, choices: Sequence[Any] | None = None,
        minimum: float | None = None) -> Any:
    """Declare a configuration key: its default, and the values it accepts.

    `choices` are the values of a key that names a choice, taken from the
    layer the key configures (the one definition of them); `minimum` is the
    inclusive lower bound of a number.
    """
    metadata: dict[str, Any] = {}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if minimum is not None:
        metadata["minimum"] = minimum
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DaemonConfig:
    """The `[daemon]` table (the service's own)."""

    name: str = "daqd"
    pidfile: str = "run/daqd.pid"
    log_format: str = key("auto", choices=logs.FORMAT_CHOICES)  # auto: JSON unless a terminal
    log_level: str = key("info", choices=logs.LEVEL_CHOICES)
    prometheus: str = ""                # HOST:PORT of the Prometheus text endpoint; "" = off


#: The owner's alone: a socket file (0600) in a directory the daemon makes 0700.
DEFAULT_CONTROL = "ipc://run/control/daqd.sock"


@dataclass(frozen=True)
class ZmqConfig:
    """The `[zmq]` table (the service's own)."""

    stats: str = "tcp://127.0.0.1:5556"
    control: str = DEFAULT_CONTROL
    interval: float = key(1.0, minimum=0.01)
    curve_secret_key: str = ""          # path of a zmq.auth secret key file
    curve_clients: str = ""             # directory of allowed client public keys
    stats_hwm: int = key(100, minimum=1)  # statistics messages queued per subscriber
    stats_nodrop: bool = False          # refuse (and count) rather than drop silently
    control_insecure_tcp: bool = False  # allow a tcp:// control socket without CURVE


@dataclass(frozen=True)
class ChunkConfig:
    """The `[stream.chunk]` table: chunk mode's declarative layout.

    Every key is a `daqd._spead.ChunkGroup` argument of the same name
    (`daqd.recv.builder.build_group`).
    """

    timestamp_item: int = key(0x1600, minimum=0)
    timestamp_step: int = key(8192, minimum=1)
    heaps_per_chunk: int = key(64, minimum=1)
    heap_bytes: int = key(8192, minimum=1)
    dtype: str = "uint8"
    substream_item: int = key(-1, minimum=-1)   # -1: no substream axis
    substreams: int = key(1, minimum=1)
    extra_items: tuple[int, ...] = ()
    max_chunks: int = key(4, minimum=1)
    pool: int = key(16, minimum=1)
    when_full: str = key("wait", choices=_spead.WHEN_FULL)
    wait_timeout: float = key(1.0, minimum=0)
    packet_presence: int = key(0, minimum=0)
    eviction: str = key("lossless", choices=_spead.EVICTION)  # several sources: wait for all?


@dataclass(frozen=True)
class BufferConfig:
    """The `[stream.buffer]` table (`daqd.pipeline.buffers.build_buffer`)."""

    kind: str = key("circular", choices=buffers.KINDS)
    capacity: int = key(64, minimum=1)  # records held at most (both kinds)
    when_full: str = key("block", choices=buffers.WHEN_FULL)
    block_timeout: float = key(1.0, minimum=0)  # seconds a blocked put waits before dropping
    flush_count: int = key(16, minimum=0)
    flush_bytes: int = key(0, minimum=0)
    flush_interval: float = key(5.0, minimum=0)
    flush_when: str = key("any", choices=flush.COMBINATIONS)
    flush_custom: tuple[str, ...] = ()  # "module:function" predicates, called with the buffer
    wal: str = ""                       # may contain {stream}
    wal_fsync: str = key("every-flush", choices=wal_log.FSYNC_POLICIES)
    wal_max_bytes: int = key(1 << 30, minimum=1 << 16)


@dataclass(frozen=True)
class SinkConfig:
    """One `[[stream.sinks]]` entry (`daqd.sinks.make_sink`; daqd/sinks/ describes the formats).

    Attributes
    ----------
    kind : str
        ``binary``, ``text``, ``pcap`` or ``hdf5`` (hdf5 needs chunk mode).
    path : str
        File name template: ``{stream}``, ``{start:STRFTIME}`` (UTC), ``{seq}``
        and, except for pcap, ``{chunk_id}``.
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
    """

    kind: str = key(choices=SINK_KINDS)
    path: str = key()
    rotate_bytes: int = key(0, minimum=0)
    rotate_seconds: float = key(0.0, minimum=0)
    fsync: str = key("on-rotate", choices=SINK_FSYNC_POLICIES)
    header: bool = True
    template: str = ""


@dataclass(frozen=True)
class StreamConfig:
    """One `[[stream]]` entry (`daqd.recv.builder.build_receiver` builds its receive side)."""

    name: str
    sources: tuple[str, ...]
    max_heaps: int = key(_spead.DEFAULT_MAX_HEAPS, minimum=1)
    allow_out_of_order: bool = False
    max_packet_size: int = key(DEFAULT_MAX_PACKET_SIZE, minimum=64)
    max_heap_size: int = key(_spead.DEFAULT_MAX_HEAP_SIZE, minimum=0)
    socket_buffer: int = key(DEFAULT_SOCKET_BUFFER, minimum=0)
    stop_on_stop_item: bool = True      # a stop item is stream control (false: an ordinary heap)
    exit_on_stop_heap: bool = False     # a stop heap ends the source (else: capture boundary)
    # Heap mode, per source: payload bytes its live (partial) heaps may hold together.
    max_live_heap_bytes: int = key(_spead.DEFAULT_MAX_LIVE_HEAP_BYTES,
                                   minimum=_spead.MIN_MAX_LIVE_HEAP_BYTES)
    chunk: ChunkConfig | None = None
    buffer: BufferConfig = field(default_factory=BufferConfig)
    sinks: tuple[SinkConfig, ...] = ()


@dataclass(frozen=True)
class SimulateConfig:
    """One `[[simulate]]` entry: a built-in sender of a reference workload.

    It lets a configuration run with no hardware: the daemon sends the
    workload to one of its own sources, e.g. over loopback UDP
    (`daqd.recv.workloads.WorkloadSender`).
    """

    target: str
    workload: str = key("W1", choices=WORKLOADS)
    rate: float = key(0.0, minimum=0)   # bytes per second; 0 = as fast as possible
    heaps: int = key(0, minimum=0)      # 0 = until the daemon stops
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
    "simulate": SimulateConfig,
}
# Fields that hold nested tables, filled by parse().
NESTED = ("ChunkConfig | None", "BufferConfig", "tuple[SinkConfig, ...]")


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
        if kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(key, value, "true or false")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, value, "an integer")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, value, "a number")
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise self.fail(key, value, "a string")
        elif kind.startswith("tuple[int"):
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise self.fail(key, value, "a list of non-negative integers")
            value = tuple(value)
        elif f.name == "flush_custom":
            value = self.predicates(value, key)
        elif kind.startswith("tuple[str"):
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) for v in value):
                raise self.fail(key, value, "a non-empty list of strings")
            value = tuple(value)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise self.fail(key, value, f"at least {minimum}")
        return value

    def predicates(self, value: Any, key: str) -> tuple[str, ...]:
        """Check flush predicates: "module:function" strings that import now."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, value, 'a list of "module:function" strings')
        for i, spec in enumerate(value):
            try:
                flush.resolve_predicate(spec)
            except ValueError as exc:
                raise self.fail(f"{key}[{i}]", spec,
                                f'"module:function" naming an importable callable ({exc})'
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


def _try_mkdir(loader: _Loader, key: str, value: str, directory: Path, existing: Path) -> None:
    """Check that `directory` can be made below `existing` (made, then removed)."""
    made: list[Path] = []
    try:
        for part in reversed(directory.relative_to(existing).parents[:-1]):
            (existing / part).mkdir()
            made.append(existing / part)
        directory.mkdir()
        made.append(directory)
    except OSError as exc:
        raise loader.fail(key, value, "a path whose directory can be created "
                          f"({exc.strerror})") from None
    finally:
        for path in reversed(made):
            path.rmdir()


def _check_sink_templates(loader: _Loader, where: str, sink: SinkConfig,
                          chunk: ChunkConfig | None) -> Path:
    """Check a sink's path and text templates; return the path's field-free directory."""
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
            check_template(sink.template, chunk is not None)
        except ValueError as exc:
            raise loader.fail(f"{where}.template", sink.template,
                              f"a line template ({exc})") from None
    return template.static_directory


def _check_stream(loader: _Loader, i: int, s: StreamConfig) -> None:
    where = f"stream[{i}]"
    if s.exit_on_stop_heap and not s.stop_on_stop_item:
        raise loader.fail(f"{where}.exit_on_stop_heap", True,
                          "false while stop_on_stop_item = false (stop heaps are then "
                          "not stream control, so none can end the stream)")
    c = s.chunk
    if c is not None:
        try:
            itemsize = np.dtype(c.dtype).itemsize
        except TypeError:
            raise loader.fail(f"{where}.chunk.dtype", c.dtype, "a numpy dtype name") from None
        if c.heap_bytes % itemsize:
            raise loader.fail(f"{where}.chunk.heap_bytes", c.heap_bytes,
                              f"a multiple of the {c.dtype} item size ({itemsize})")
        if c.pool < c.max_chunks:
            raise loader.fail(f"{where}.chunk.pool", c.pool,
                              f"at least max_chunks ({c.max_chunks})")
        if c.substreams > 1 and c.substream_item < 0:
            raise loader.fail(f"{where}.chunk.substreams", c.substreams,
                              "1, or a substream_item to index the substreams")
        if c.packet_presence and c.heap_bytes % c.packet_presence:
            raise loader.fail(f"{where}.chunk.packet_presence", c.packet_presence,
                              f"a divisor of heap_bytes ({c.heap_bytes})")
    for j, sink in enumerate(s.sinks):
        # The directory part before the first {field} is the one that must exist.
        directory = _check_sink_templates(loader, f"{where}.sinks[{j}]", sink, c).absolute()
        # Checked without creating anything (validate must not touch the disk): the
        # nearest existing ancestor must be a directory we may create entries in.
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise loader.fail(f"{where}.sinks[{j}].path", sink.path,
                              f"a path whose directory can be created ({existing} is not "
                              "a directory)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise loader.fail(f"{where}.sinks[{j}].path", sink.path,
                              f"a path in a writable directory ({existing} is not writable)")
        if existing != directory:
            _try_mkdir(loader, f"{where}.sinks[{j}].path", sink.path, directory, existing)
        if sink.kind == "hdf5" and c is None:
            raise loader.fail(f"{where}.sinks[{j}].kind", sink.kind,
                              "binary, text or pcap (hdf5 sinks need chunk mode)")


def parse(text: str, path: str = "<config>") -> Config:
    """Validate configuration text completely; raise ConfigError on the first problem."""
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
        _check_stream(loader, i, stream)
        streams.append(stream)
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


def load(path: str | os.PathLike | None = None) -> Config:
    """Read and validate a configuration file (the built-in default when None)."""
    if path is None:
        return parse(default_config_text(), f"<built-in {DEFAULT_CONFIG_NAME}>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse(text, str(path))
