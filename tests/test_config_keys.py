"""Every key of the configuration schema takes effect.

One case per key (``table.key``, as `daqd.config.schema_keys` lists them): a
TOML value, and a probe of what the layers' own builders made of the whole
configuration, or of what then happened (files written, datagrams sent, log
lines).  Each case builds twice, from a base configuration and from the base
with the case's value, and the probe must tell the two apart and see the
case's value.  A key added to the schema without a case fails
`test_every_key_has_a_case`.

Builders used, as the daemon uses them: `daqd.recv.builder.build_receiver`
(sources, compiled streams, chunk group), `daqd.sinks.build_sinks`,
`daqd.pipeline.buffers.build_buffer`, `daqd.recv.workloads.WorkloadSender`,
`daqd.service.daemon.Daemon` (in this process, started and shut down), and
``daqd run`` as a subprocess for the keys the command line applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spead2
import spead2.send
import zmq
import zmq.auth

sys.path.insert(0, str(Path(__file__).parent))
from daemon_helpers import free_port
from place_hook_build import build_example_hook
from spead2_helpers import THREAD_POOL, split_packets
from spead_packets import addr as sp_addr
from spead_packets import heap_packets, packet, sim_packets

from daqd import _spead
from daqd.config import Config, ConfigError, parse, schema_keys
from daqd.pipeline.buffers import build_buffer
from daqd.pipeline.events import build_triggers
from daqd.pipeline.process import build_process
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.pipeline.retention import build_retention
from daqd.recv.builder import build_receiver, build_stream
from daqd.recv.heap_records import build_recorder
from daqd.recv.uri import stream_udp_port
from daqd.recv.workloads import WorkloadSender
from daqd.service.daemon import Daemon
from daqd.service.stream_runner import StreamRunner
from daqd.service.zmq_security import ClientSecurity
from daqd.sinks import build_event_sink, build_sinks


def base_tables(tmp: Path, port: int, port2: int) -> dict[str, Any]:
    """The base configuration, as nested tables (one chunk-mode stream, one sender)."""
    return {
        "daemon": {"pidfile": f"{tmp}/run/daqd.pid"},
        "zmq": {"stats": "tcp://127.0.0.1:*", "control": f"ipc://{tmp}/control/daqd.sock"},
        "stream": [{
            "name": "adc0",
            "sources": [f"udp://127.0.0.1:{port}"],
            "chunk": {"heaps_per_chunk": 8},
            "buffer": {"wal": f"{tmp}/wal/{{stream}}.wal"},
            "sinks": [{"kind": "binary", "path": f"{tmp}/data/{{stream}}-{{seq:04d}}.bin"}],
        }],
        "simulate": [{"target": f"udp://127.0.0.1:{port}", "heaps": 16}],
    }


def to_toml(tables: dict[str, Any]) -> str:
    """TOML text of `tables` (scalars, lists of scalars, tables, arrays of tables)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []

    def table(name: str, body: dict[str, Any], array: bool) -> None:
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        nested = []
        for k, v in body.items():
            if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
                nested.append((k, v))
            else:
                lines.append(f"{k} = {value(v)}")
        for k, v in nested:
            for sub in (v if isinstance(v, list) else [v]):
                table(f"{name}.{k}", sub, isinstance(v, list))

    for name, body in tables.items():
        for entry in (body if isinstance(body, list) else [body]):
            table(name, entry, isinstance(body, list))
    return "\n".join(lines) + "\n"


#: A value of `Case.also` that removes the key (a table) from the base.
DELETE = object()


def set_key(tables: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``table.key`` (``stream``/``simulate`` mean their first entry), or remove it."""
    *path, key = dotted.split(".")
    node: Any = tables
    for part in path:
        node = node.setdefault(part, {})
        if isinstance(node, list):
            node = node[0]
    if value is DELETE:
        node.pop(key, None)
    else:
        node[key] = value


# ----------------------------------------------------------------------
# What a configuration builds (each part made on first use)


class World:
    """The objects one configuration builds, and what they do."""

    def __init__(self, tmp: Path, config: Config, ports: tuple[int, int]):
        self.tmp = tmp
        self.config = config
        self.stream = config.streams[0]
        self.ports = ports
        self._close: list[Callable[[], Any]] = []

    def close(self) -> None:
        for close in reversed(self._close):
            close()

    @cached_property
    def receiver(self) -> Any:
        receiver = build_receiver(self.stream)
        self._close.append(receiver.close)
        receiver.open()
        return receiver

    @cached_property
    def sinks(self) -> list[Any]:
        records, packets = build_sinks(self.stream, self.config.text,
                                       stream_udp_port(self.stream.sources))
        return records + packets

    @cached_property
    def buffer(self) -> Any:
        buffer = build_buffer(self.stream.buffer, [], name=self.stream.name)
        self._close.append(buffer.close)
        return buffer

    def fed(self, packets: list[bytes]) -> Any:
        """The first source's compiled stream, after `packets` went through it."""
        stream = self.receiver.streams[0]
        reader = _spead.ByteListReader(packets)
        while stream.process(reader) >= 0 and not stream.stopped:
            pass
        return stream

    def off_grid_heaps(self) -> int | None:
        """Feed one heap at channel 5 (timestamp 0, a whole heap of the layout); the place
        hook's own counter of heaps off its channel grid (None without a hook)."""
        size = self.stream.chunk.heap_bytes
        stream = self.fed(heap_packets(1, [(0x1600, 0), (0x4103, 5), (0x3300, bytes(size))]))
        return stream.stats().get("place_off_grid_heaps")

    def taken_before_start(self) -> int:
        """Packets the first source's stream takes from a batch offered before any start."""
        stream = self.receiver.streams[0]
        stream.process(_spead.ByteListReader(sim_packets("W1", 1)))
        return stream.stats()["packets"]

    def heap_mode_refusals(self) -> int:
        """Feed a heap announcing 2 MiB to the stream heap mode builds from the section;
        its packets refused as over the live heaps' budget."""
        stream = build_stream(self.stream)      # no chunk group: a HeapStream
        stream.add_packets([packet(1, bytes(1024), offset=i * 1024, heap_size=2 << 20)
                            for i in range(4)])
        return stream.stats()["packets_rejected_heap_over_budget"]

    def heap_mode_unsized(self) -> int:
        """Feed an unsized heap to the stream heap mode builds from the section; the
        packets it rejects as unsized."""
        stream = build_stream(self.stream)      # no chunk group: a HeapStream
        stream.add_packets([packet(1, bytes(64), with_size=False)])
        return stream.stats()["packets_rejected_unsized"]

    def heap_mode_incomplete_records(self) -> list[Any]:
        """Feed a heap missing its second packet to the stream heap mode builds from the
        section, through the section's recorder: the records' payload ranges."""
        stream = build_stream(self.stream)      # no chunk group: a HeapStream
        heaps = stream.add_packets([packet(1, bytes(64), offset=i * 64, heap_size=192,
                                           items=[sp_addr(0x1000, 0)]) for i in (0, 2)])
        records = build_recorder(self.stream).records(heaps)
        return [r.incomplete.payload_ranges for r in records if not r.complete]

    def first_chunk_present_ndim(self) -> int:
        """Feed a chunk's worth of W1 heaps, end the stream; the chunk's ``present`` dimensions."""
        self.fed(sim_packets("W1", self.stream.chunk.heaps_per_chunk)).finish()
        with self.receiver.group.get(timeout=5) as chunk:
            return int(chunk.present.ndim)

    def received(self, source: int = 0, datagram: bytes = b"") -> dict[str, int]:
        """Send `datagram` to source `source` and receive it through its stream."""
        src = self.receiver.sources[source]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(datagram, src.sock.getsockname())
        stream = self.receiver.streams[source]
        deadline = time.monotonic() + 5
        while stream.stats()["packets"] + stream.stats()["packets_rejected_truncated"] == 0:
            stream.process(src.reader)
            assert time.monotonic() < deadline, "nothing received"
        return stream.stats()

    @cached_property
    def files(self) -> list[str]:
        """Write four chunk records (or heap records) through the first sink; the files."""
        real_fsync = os.fsync

        def counted(fd: int) -> None:
            self.fsyncs += 1
            real_fsync(fd)

        self.fsyncs = 0
        os.fsync = counted
        try:
            return self._write_files()
        finally:
            os.fsync = real_fsync

    def _write_files(self) -> list[str]:
        sink = self.sinks[0]
        chunk = self.stream.chunk
        for i in range(4):
            if chunk is not None and sink.kind != "pcap":
                shape = (chunk.heaps_per_chunk, chunk.substreams,
                         chunk.heap_bytes // np.dtype(chunk.dtype).itemsize)
                record: Any = ChunkRecord(i, i * chunk.timestamp_step * chunk.heaps_per_chunk,
                                          np.full(shape, i, chunk.dtype),
                                          np.ones(shape[:2], np.uint8))
            else:
                record = HeapRecord(i, {0x1000: i})
            sink.write([record])
            sink.commit()
            time.sleep(0.02)
        sink.close()
        root = self.tmp / "data"
        return sorted(str(p.relative_to(self.tmp)) for p in root.rglob("*") if p.is_file())

    @cached_property
    def sent(self) -> dict[str, Any]:
        """Start the [[simulate]] sender at test sockets on both ports; what arrived."""
        socks = []
        for port in self.ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.settimeout(0.3)
            socks.append(s)
        sender = WorkloadSender(self.config.simulate[0])
        started = time.monotonic()
        sender.start()
        assert sender.thread is not None
        sender.thread.join(20)
        seconds = time.monotonic() - started
        got: dict[str, Any] = {"ports": [], "sizes": set(), "datagrams": 0, "last": b"",
                               "seconds": seconds, "sender": sender}
        for port, s in zip(self.ports, socks, strict=True):
            with s:
                while True:
                    try:
                        data = s.recv(1 << 16)
                    except TimeoutError:
                        break
                    got["ports"].append(port)
                    got["sizes"].add(len(data))
                    got["datagrams"] += 1
                    got["last"] = data
        got["ports"] = sorted(set(got["ports"]))
        return got

    @cached_property
    def daemon(self) -> Daemon:
        """The daemon, started in this process (sockets bound, threads running)."""
        daemon = Daemon(self.config)
        daemon.start()
        self._close.append(daemon.shutdown)
        return daemon

    @cached_property
    def run(self) -> dict[str, Any]:
        """``daqd run --duration 1`` as a subprocess: log lines, the pidfile seen."""
        path = self.tmp / "daqd.toml"
        path.write_text(self.config.text)
        proc = subprocess.Popen([sys.executable, "-m", "daqd", "run", "--config", str(path),
                                 "--duration", "1.5"], cwd=self.tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pidfiles: set[str] = set()
        while proc.poll() is None:
            # (The loader's trial mkdir of a missing directory may vanish under rglob.)
            with contextlib.suppress(FileNotFoundError):
                pidfiles |= {str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*.pid")}
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
        events = []
        for line in err.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                events.append(None)
        assert proc.returncode == 0, err[-2000:]
        return {"events": events, "pidfiles": sorted(pidfiles), "stderr": err[-3000:]}


def zarr_store(what: Callable[[Any, Any], Any]) -> Callable[[World], Any]:
    """Write the four records of `World.files` through the first sink; if it is a zarr
    sink, `what(store group, sink stats)`, else None."""
    def probe(w: World) -> Any:
        assert w.files is not None          # writes the records
        if w.sinks[0].kind != "zarr":
            return None
        import zarr

        group = zarr.open_group(str(w.tmp / "data" / "adc0.zarr"), mode="r")
        return what(group, w.sinks[0].stats())
    return probe


#: Keys a zarr sink needs for the zarr cases.
ZARR = {"stream.sinks.kind": "zarr", "stream.sinks.path": "{tmp}/data/{stream}.zarr"}


#: A case whose probe's result is only compared with the base's, not with a value.
UNCHECKED = object()


@dataclass
class Case:
    """A non-default value of one key and how to see it."""

    value: Any
    probe: Callable[[World], Any]
    expect: Any = UNCHECKED             # what the probe gives with `value`
    also: dict[str, Any] = field(default_factory=dict)     # other keys the value needs


def interleaved(packets: list[bytes], per_heap: int = 8) -> list[bytes]:
    """The packets of consecutive heaps, their k-th packets together: heaps overlap."""
    heaps = [packets[i:i + per_heap] for i in range(0, len(packets), per_heap)]
    return [heap[k] for k in range(per_heap) for heap in heaps]


def reversed_heaps(packets: list[bytes], per_heap: int = 8) -> list[bytes]:
    """Each heap's packets in reverse order."""
    return [p for i in range(0, len(packets), per_heap)
            for p in reversed(packets[i:i + per_heap])]


def group(name: str) -> Callable[[World], Any]:
    return lambda w: getattr(w.receiver.group, name)


def stream_attr(name: str) -> Callable[[World], Any]:
    return lambda w: getattr(w.receiver.streams[0], name)


def buffer_attr(name: str) -> Callable[[World], Any]:
    return lambda w: getattr(w.buffer, name)


def policy_due(w: World, records: int, nbytes: int) -> Any:
    policy = w.buffer.policy
    for _ in range(records):
        policy.added(nbytes)
    return policy.due(w.buffer)


def rcvbuf(w: World) -> int:
    return w.receiver.sources[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def log_is_json(w: World) -> bool:
    return all(e is not None for e in w.run["events"])


def refuses_a_bigger_pool(w: World) -> bool:
    """Whether the configuration with a pool of 4096 chunks (256 MiB here) is over budget."""
    text = w.config.text.replace("heaps_per_chunk = 8", "heaps_per_chunk = 8\npool = 4096")
    try:
        parse(text, w.config.path)
    except ConfigError as exc:
        return "stream[0].chunk.pool = 4096: expected a configuration that fits" in str(exc)
    return False


def data_time(w: World) -> dict[str, Any]:
    """The daemon's status of the stream once the simulator's last chunk (timestamp 65536)
    is in: its data time. (The first chunk alone gives timestamp 0 on a loaded machine.)"""
    deadline = time.monotonic() + 20
    while True:
        stream = w.daemon.on_status({})["streams"]["adc0"]
        if (stream["newest_timestamp"] or 0) >= 65536 or time.monotonic() > deadline:
            return {k: v for k, v in stream.items() if k.startswith("newest_")}
        time.sleep(0.05)


def receive_sockets(w: World) -> tuple[int, int]:
    """The compiled streams the receive side opens, and the addresses their sockets bound."""
    return len(w.receiver.streams), len({source.address for source in w.receiver.sources})


#: A CPU this process may run on (the last one: with two or more, not all of them).
LAST_CPU = max(os.sched_getaffinity(0))


def receive_thread_cpus(w: World) -> list[int]:
    """The CPUs the daemon's first receive thread may run on, once it runs its loop."""
    runner = w.daemon.runners[0]
    deadline = time.monotonic() + 20
    while not runner.heartbeats or runner.heartbeats[0] == 0:
        assert time.monotonic() < deadline, "the receive thread never ran its loop"
        time.sleep(0.02)
    return sorted(os.sched_getaffinity(runner.threads[0].native_id))


def heap_data_time(w: World) -> int | None:
    """The newest data time a stream runner notes for a heap holding 777 in item 0x1600."""
    runner = StreamRunner(w.stream, w.config)
    runner.gate.observe(HeapRecord(1, {0x1600: 777}))
    return runner.data_time()["newest_timestamp"]


def pyspead_shape(w: World) -> list[Any]:
    """The shape the stream's recorder (`build_recorder`) reads from a PySPEAD-0.5.2-style
    descriptor of shape (2, 3): 8-byte shape fields, bit 1 marking a variable dimension."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 40, spead2.BUG_COMPAT_PYSPEAD_0_5_2))
    ig.add_item(0x1000, "matrix", "", (2, 3), format=[("u", 16)])
    out = spead2.send.BytesStream(THREAD_POOL, spead2.send.StreamConfig())
    out.send_heap(ig.get_heap(descriptors="all", data="none"), 1)
    recorder = build_recorder(w.stream)
    recorder.add_descriptor_packets(split_packets(out.getvalue()))
    return recorder.known_descriptors()[0]["shape"]


def retention_ticks(w: World) -> int | None:
    """Ticks the stream's retention keeps (`build_retention` from ``[stream.trigger]``)."""
    stream = w.stream
    if stream.trigger is None:
        return None
    return build_retention(stream.trigger, stream.timeline).ticks


def post_ticks(w: World) -> int | None:
    """Ticks past the newest data a trigger window may reach (`build_triggers`)."""
    stream = w.stream
    if stream.trigger is None:
        return None
    return build_triggers(stream.trigger, stream.timeline, lambda *a: (None, ""),
                          stream.name).post_ticks


def event_sink(w: World) -> str | None:
    """The kind and file name of event 1 labelled "x" (`build_event_sink`), as one string."""
    stream = w.stream
    if stream.trigger is None:
        return None
    sink, path = build_event_sink(stream, stream.trigger, 1, "x", (0, 65536))
    return f"{sink.kind} {path}"


#: [stream.trigger] needs a clock (chunks of 65536 ticks: 100 a second) and an event path.
TRIGGERED = {"stream.time.sync_time": "0", "stream.time.timestamp_rate": 6553600.0,
             "stream.trigger.path": "{tmp}/events/{stream}-{event:03d}-{label}.bin",
             "stream.trigger.retain_seconds": 0.1}


def processed(w: World) -> tuple[str, int] | None:
    """Run a chunk of 1s through the step `build_process` makes: its dtype and first sample."""
    step = build_process(w.stream)
    if step is None:
        return None
    chunk = w.stream.chunk
    shape = (chunk.heaps_per_chunk, chunk.substreams, chunk.heap_bytes)
    out = step(ChunkRecord(0, 0, np.ones(shape, np.uint8), np.ones(shape[:2], np.uint8)))
    return out.data.dtype.name, int(out.data.flat[0])


def curve_keys(tmp: Path) -> tuple[str, str]:
    keys = tmp / "keys"
    clients = tmp / "clients"
    keys.mkdir(exist_ok=True)
    clients.mkdir(exist_ok=True)
    _, secret = zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(clients), "client")
    return secret, str(clients)


def client_keys(w: World) -> tuple[bytes, bytes] | None:
    """What ``daqd status --config`` takes from the [zmq] keys: (client public, server public)."""
    security = ClientSecurity.choose(w.config.zmq)
    return None if security is None else (security.public_key, security.server_key)


def key_files(secret: str, clients: str) -> tuple[bytes, bytes]:
    """The public keys of the client and the server `curve_keys` wrote."""
    return (zmq.auth.load_certificate(Path(clients) / "client.key_secret")[0],
            zmq.auth.load_certificate(secret)[0])


#: Arguments of examples/place_hook's factory (first channel 0, 4 channels a heap).
HOOK_ARGS = {"first_channel": 0, "channels_per_heap": 4}

CASES: dict[str, Case] = {
    # [daemon]: applied by `daqd run`
    "daemon.name": Case("lab-7", lambda w: {e["daemon"] for e in w.run["events"]
                                            if e and "daemon" in e}, {"lab-7"}),
    "daemon.pidfile": Case("{tmp}/other/lab.pid", lambda w: w.run["pidfiles"],
                           ["other/lab.pid"]),
    "daemon.log_format": Case("console", log_is_json, False),
    "daemon.log_level": Case("warning", lambda w: any(
        e and e.get("event") == "ready" for e in w.run["events"]), False),
    "daemon.prometheus": Case("127.0.0.1:0", lambda w: w.daemon.metrics is not None, True),
    "daemon.memory_budget": Case(64 << 20, refuses_a_bigger_pool, True),
    # [zmq]: the daemon's sockets
    "zmq.stats": Case("", lambda w: w.daemon.publisher is None, True),
    "zmq.control": Case("", lambda w: w.daemon.control is None, True),
    "zmq.control_insecure_tcp": Case(True, lambda w: w.daemon.control.endpoint.startswith(
                                     "tcp://127.0.0.1:"), True,
                                     also={"zmq.control": "tcp://127.0.0.1:*"}),
    "zmq.interval": Case(0.25, lambda w: w.daemon.publisher.interval, 0.25),
    "zmq.curve_secret_key": Case("{secret}", lambda w: w.daemon.security is not None, True,
                                 also={"zmq.curve_clients": "{clients}"}),
    "zmq.curve_clients": Case("{clients}", lambda w: w.daemon.security and str(
                              w.daemon.security.clients_dir),
                              "{clients}", also={"zmq.curve_secret_key": "{secret}"}),
    # [zmq] keys of the command-line clients (the server key: its own, or the daemon's)
    "zmq.curve_client_secret_key": Case("{client_secret}", client_keys, "{client_keys}",
                                        also={"zmq.curve_secret_key": "{secret}",
                                              "zmq.curve_clients": "{clients}"}),
    "zmq.curve_server_key": Case("{server_public}", client_keys, "{client_keys}",
                                 also={"zmq.curve_client_secret_key": "{client_secret}"}),
    "zmq.stats_hwm": Case(7, lambda w: w.daemon.publisher._socket.getsockopt(zmq.SNDHWM), 7),
    "zmq.stats_nodrop": Case(True, lambda w: w.daemon.publisher.nodrop, True),
    # [[stream]]: the receive side
    "stream.name": Case("adc9", lambda w: w.files[0], "data/adc9-0000.bin"),
    "stream.sources": Case(["sim:W2?heaps=8"], lambda w: type(w.receiver.sources[0].reader)
                           .__name__, "SimReader", also={"simulate": []}),
    "stream.max_heaps": Case(3, lambda w: w.fed(interleaved(sim_packets("W3", 4))).stats()[
        "incomplete_heaps_evicted"] > 0, True),
    "stream.allow_out_of_order": Case(True, lambda w: w.fed(reversed_heaps(sim_packets(
        "W3", 4))).stats()["heaps_complete"], 4),
    "stream.max_packet_size": Case(512, lambda w: w.received(0, bytes(1000))[
        "packets_rejected_truncated"], 1),
    "stream.max_heap_size": Case(4096, stream_attr("max_heap_size"), 4096,
                                 also={"stream.chunk.heap_bytes": 4096}),   # heaps must fit
    "stream.socket_buffer": Case(65536, rcvbuf, 2 * 65536),
    "stream.max_live_heap_bytes": Case(1 << 20, World.heap_mode_refusals, 4),
    # sixteen overlapping heaps: evicted from one window of 8 live heaps, not from two
    "stream.heap_windows": Case(2, lambda w: w.fed(interleaved(sim_packets("W3", 16))).stats()[
        "incomplete_heaps_evicted"], 0),
    "stream.explicit_start": Case(True, World.taken_before_start, 0),
    # a stop heap between two runs of heaps: counted as one (a boundary), or,
    # not being stream control, not at all; with exit_on_stop_heap it ends the stream
    "stream.allow_unsized_heaps": Case(False, World.heap_mode_unsized, 1),
    # an incomplete heap becomes a record (heap mode; a binary sink cannot write it)
    "stream.contiguous_only": Case(False, World.heap_mode_incomplete_records, [((0, 64),)],
                                   also={"stream.chunk": DELETE, "stream.sinks.kind": "text",
                                         "stream.sinks.path": "{tmp}/data/{stream}.txt"}),
    # two SO_REUSEPORT sockets on the source's one address, a compiled stream each
    "stream.threads": Case(2, receive_sockets, (2, 1), also={"stream.chunk.eviction": "lossy"}),
    "stream.affinity": Case([LAST_CPU], receive_thread_cpus, [LAST_CPU]),
    "stream.memcpy": Case("standard", lambda w: w.receiver.streams[0].memcpy, "standard"),
    "stream.bug_compat": Case("pyspead-0.5.2", pyspead_shape, [2, 3]),
    "stream.stop_on_stop_item": Case(False, lambda w: w.fed(
        [*sim_packets("W1", 2), _spead.stop_packet(3), *sim_packets("W1", 2)]).stop_heaps, 0),
    "stream.exit_on_stop_heap": Case(True, lambda w: w.fed(
        [*sim_packets("W1", 2), _spead.stop_packet(3), *sim_packets("W1", 2)]).stopped, True),
    # [stream.chunk]: every key a ChunkGroup argument (place: the loaded hook's arguments)
    "stream.chunk.place": Case("frequency_place:FrequencyPlacement", group("place_counters"),
                               ("off_grid_heaps",), also={"stream.chunk.place_args": HOOK_ARGS}),
    # channels_per_heap = 4: channel 5 is off the hook's grid, counted by the hook
    "stream.chunk.place_args": Case(HOOK_ARGS, World.off_grid_heaps, 1,
                                    also={"stream.chunk.place": "frequency_place:"
                                          "FrequencyPlacement"}),
    "stream.chunk.timestamp_item": Case(0x1601, group("timestamp_item"), 0x1601),
    "stream.chunk.timestamp_step": Case(4096, group("timestamp_step"), 4096),
    "stream.chunk.heaps_per_chunk": Case(16, group("heaps_per_chunk"), 16),
    "stream.chunk.heap_bytes": Case(4096, group("heap_bytes"), 4096),
    "stream.chunk.dtype": Case("int16", lambda w: str(w.receiver.group.dtype), "int16"),
    "stream.chunk.substream_item": Case(0x4101, group("substream_item"), 0x4101),
    "stream.chunk.substreams": Case(2, group("substreams"), 2,
                                    also={"stream.chunk.substream_item": 0x4101}),
    "stream.chunk.extra_items": Case([0x4103], group("extra_items"), (0x4103,)),
    "stream.chunk.max_chunks": Case(2, group("max_chunks"), 2),
    "stream.chunk.stream_chunks": Case(2, group("stream_chunks"), 2),
    "stream.chunk.pool": Case(6, group("pool"), 6),
    "stream.chunk.when_full": Case("drop", group("drop_when_full"), True),
    "stream.chunk.wait_timeout": Case(0.25, group("wait_timeout"), 0.25),
    "stream.chunk.packet_presence": Case(1024, World.first_chunk_present_ndim, 3),
    "stream.chunk.eviction": Case("lossy", group("lossless"), False),
    # [stream.buffer]
    "stream.buffer.kind": Case("fifo", buffer_attr("kind"), "fifo"),
    "stream.buffer.capacity": Case(7, buffer_attr("capacity"), 7,
                                   also={"stream.buffer.flush_count": 4}),  # <= capacity
    "stream.buffer.when_full": Case("drop-newest", buffer_attr("when_full"), "drop-newest"),
    "stream.buffer.block_timeout": Case(0.25, buffer_attr("block_timeout"), 0.25),
    "stream.buffer.flush_count": Case(2, lambda w: policy_due(w, 2, 1), "count"),
    "stream.buffer.flush_bytes": Case(100, lambda w: policy_due(w, 1, 200), "bytes"),
    "stream.buffer.flush_interval": Case(0.25, lambda w: w.buffer.policy.interval, 0.25),
    "stream.buffer.flush_when": Case("all", lambda w: policy_due(w, 20, 1), None),   # all: age
    "stream.buffer.flush_custom": Case(["buffer_sinks:flush_always"],
                                       lambda w: policy_due(w, 0, 0),
                                       "custom:buffer_sinks:flush_always"),
    "stream.buffer.wal": Case("{tmp}/other.wal", lambda w: str(w.buffer.wal.path),
                              "{tmp}/other.wal"),
    "stream.buffer.wal_fsync": Case("never", lambda w: w.buffer.wal.fsync, "never"),
    "stream.buffer.wal_max_bytes": Case(1 << 20, lambda w: w.buffer.wal.max_bytes, 1 << 20),
    # [[stream.sinks]]: what the sink writes
    "stream.sinks.kind": Case("text", lambda w: w.files and type(w.sinks[0]).__name__,
                              "TextSink"),
    "stream.sinks.path": Case("{tmp}/data/x/{seq}.dat", lambda w: w.files, ["data/x/0.dat"]),
    "stream.sinks.rotate_bytes": Case(20000, lambda w: len(w.files), 4),
    "stream.sinks.rotate_seconds": Case(0.01, lambda w: len(w.files), 4),
    "stream.sinks.fsync": Case("every-flush", lambda w: w.files and w.fsyncs >= 4, True),
    "stream.sinks.header": Case(False, lambda w: (w.tmp / w.files[0]).read_bytes()[:8]
                                == b"DAQDBIN1", False),
    "stream.sinks.template": Case("{chunk_id}!", lambda w: (w.tmp / w.files[0]).read_bytes()
                                  .decode(errors="replace").splitlines()[1:],
                                  ["0!", "1!", "2!", "3!"],
                                  also={"stream.sinks.kind": "text",
                                        "stream.sinks.path": "{tmp}/data/t.txt"}),
    # zarr sinks: the store's layout and this daemon's region of it
    "stream.sinks.substreams_total": Case(4, zarr_store(lambda g, _: g["data"].shape[2]), 4,
                                          also=ZARR),
    "stream.sinks.substream_offset": Case(
        2, zarr_store(lambda g, _: np.flatnonzero(g["present"][:4].any(axis=(0, 1))).tolist()),
        [2], also={**ZARR, "stream.sinks.substreams_total": 4}),
    "stream.sinks.substream_chunk": Case(
        1, zarr_store(lambda g, _: g["data"].chunks[2]), 1,
        also={**ZARR, "stream.chunk.substream_item": 0x4101, "stream.chunk.substreams": 2}),
    "stream.sinks.origin": Case(
        2 * 8192 * 8, zarr_store(lambda g, st: (st["lost"]["before_origin"],
                                                g["timestamp"][:2].tolist())),
        (2, [2 * 8192 * 8, 3 * 8192 * 8]), also=ZARR),
    "stream.sinks.codec": Case("zstd", zarr_store(
        lambda g, _: [type(c).__name__ for c in g["data"].compressors]), ["ZstdCodec"],
        also=ZARR),
    # [stream.time]: the instrument's clock, in the daemon's status (the simulator's
    # last chunk starts at 8 x 8192 = 65536 ticks)
    "stream.time.sync_time": Case("1000", data_time, {"newest_timestamp": 65536,
                                                      "newest_utc": 1000.0 + 65536},
                                  also={"stream.time.timestamp_rate": 1.0}),
    "stream.time.timestamp_rate": Case(2.0, data_time, {"newest_timestamp": 65536,
                                                        "newest_utc": 32768.0},
                                       also={"stream.time.sync_time": "0"}),
    "stream.time.timestamp_item": Case(0x1600, heap_data_time, 777,
                                       also={"stream.chunk": DELETE}),
    # [stream.trigger]: retention for triggers and event files (pool 16 = max_chunks 4 +
    # 11 chunks of 0.1 s + 1)
    "stream.trigger.retain_seconds": Case(0.05, retention_ticks, 327680,
                                          also={**TRIGGERED, "stream.trigger.retain_seconds":
                                                0.05}),
    "stream.trigger.max_post_seconds": Case(0.5, post_ticks, 3276800, also=TRIGGERED),
    "stream.trigger.kind": Case("text", event_sink,
                                "text {tmp}/events/adc0-001-x.bin", also=TRIGGERED),
    "stream.trigger.path": Case("{tmp}/ev/{label}-{event:02d}-{start:%H%M%S}.bin", event_sink,
                                "hdf5 {tmp}/ev/x-01-000000.bin",
                                also={k: v for k, v in TRIGGERED.items()
                                      if k != "stream.trigger.path"}),
    # [stream.process]: the processing step, made by its builder (tests/process_steps.py)
    "stream.process.call": Case("process_steps:Scale", processed, ("uint16", 2)),
    "stream.process.options": Case({"factor": 5, "dtype": "uint32"}, processed, ("uint32", 5),
                                   also={"stream.process.call": "process_steps:Scale"}),
    # [[simulate]]: the built-in sender
    "simulate.target": Case("udp://127.0.0.1:{port2}", lambda w: w.sent["ports"], ["{port2}"],
                            also={"stream.sources": ["udp://127.0.0.1:{port}",
                                                     "udp://127.0.0.1:{port2}"]}),
    "simulate.workload": Case("W2", lambda w: w.sent["sizes"] - {48}, {56 + 1024}),  # 48: stop
    "simulate.rate": Case(1e6, lambda w: (w.sent["sender"].source.rate, w.sent["seconds"] > 0.05),
                          (1e6, True)),
    "simulate.heaps": Case(4, lambda w: w.sent["datagrams"], 5),
    "simulate.stop": Case(False, lambda w: w.sent["datagrams"], 16),
}


def test_every_key_has_a_case():
    """A key added to the schema needs a case here (and one removed, its case gone)."""
    assert sorted(CASES) == sorted(schema_keys())


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    return curve_keys(tmp_path_factory.mktemp("curve"))


def build(tmp: Path, case: Case | None, key: str, ports: tuple[int, int],
          keys: tuple[str, str]) -> World:
    subst = {"tmp": str(tmp), "port": str(ports[0]), "port2": str(ports[1]),
             "secret": keys[0], "clients": keys[1],
             "client_secret": str(Path(keys[1]) / "client.key_secret"),
             "server_public": keys[0].removesuffix("_secret")}

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            for k, s in subst.items():
                v = v.replace("{" + k + "}", s)
            return v
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    tables = base_tables(tmp, *ports)
    if case is not None:
        for k, v in {key: case.value, **case.also}.items():
            if k == "simulate":
                tables.pop("simulate")
            else:
                set_key(tables, k, fill(v))
    return World(tmp, parse(to_toml(tables), str(tmp / "daqd.toml")), ports)


def probe(tmp: Path, case: Case | None, key: str, ports: tuple[int, int],
          keys: tuple[str, str]) -> tuple[Any, str]:
    """Build the base configuration (`case` None) or the case's in `tmp`; probe `key`.

    Returns what the probe saw, and what ``daqd run`` wrote if it ran (for messages).
    """
    tmp.mkdir()
    world = build(tmp, case, key, ports, keys)
    try:
        return CASES[key].probe(world), world.__dict__.get("run", {}).get("stderr", "")
    finally:
        world.close()


@pytest.fixture(scope="module")
def example_hook(tmp_path_factory):
    """examples/place_hook built and importable (``frequency_place``) for the place keys."""
    path = str(build_example_hook(tmp_path_factory.mktemp("place_hook")))
    sys.path.insert(0, path)
    yield path
    sys.path.remove(path)


@pytest.mark.network
@pytest.mark.parametrize("key", sorted(CASES))
def test_key_takes_effect(key, tmp_path, keys_dir, request):
    if key.startswith("stream.chunk.place"):
        request.getfixturevalue("example_hook")
    case = CASES[key]
    ports = (free_port(), free_port())
    (before, base_log), (after, log) = (probe(tmp_path / name, c, key, ports, keys_dir)
                                        for name, c in (("base", None), ("case", case)))
    assert after != before, f"{key}: the value made no difference ({after!r})\n{base_log}{log}"
    if case.expect is not UNCHECKED:
        expect = case.expect
        if isinstance(expect, str):
            expect = expect.replace("{tmp}", str(tmp_path / "case")).replace(
                "{clients}", keys_dir[1])
        if expect == "{client_keys}":
            expect = key_files(*keys_dir)
        if expect == ["{port2}"]:
            expect = [ports[1]]
        assert after == expect, f"{key}: {after!r}\n{log}"
