"""Run the real daemon as a subprocess and talk to it (tests only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port that is free on 127.0.0.1 right now (for UDP or TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, text: str) -> Path:
    """Write `text` as tmp_path/daqd.toml and return its path."""
    path = tmp_path / "daqd.toml"
    path.write_text(text)
    return path


def toml_table(table: str, *, array: bool = False, **keys: Any) -> str:
    """One TOML table (``[[name]]`` with `array`) with `keys`, values written as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str | list) else repr(v)

    head = f"[[{table}]]" if array else f"[{table}]"
    return "\n".join([head, *(f"{k} = {value(v)}" for k, v in keys.items())]) + "\n"


def buffer_toml(**keys: Any) -> str:
    """A ``[stream.buffer]`` table."""
    return toml_table("stream.buffer", **keys)


def sinks_toml(tmp: Path, *kinds: str, **keys: Any) -> str:
    """One ``[[stream.sinks]]`` table per kind, writing ``tmp/data/{stream}-{seq:04d}.EXT``."""
    ext = {"binary": "bin", "text": "txt", "pcap": "pcap", "hdf5": "h5"}
    return "".join(toml_table("stream.sinks", array=True, kind=kind,
                              path=f"{tmp}/data/{{stream}}-{{seq:04d}}.{ext[kind]}", **keys)
                   for kind in kinds)


def control_endpoint(tmp: Path) -> str:
    """A test daemon's control socket: a file under `tmp`, in a directory the daemon makes."""
    return f"ipc://{tmp}/control/daqd.sock"


def daemon_toml(tmp: Path, name: str = "test-daqd", interval: float = 0.2) -> str:
    """The ``[daemon]`` and ``[zmq]`` tables of a test daemon.

    The pidfile and the control socket are under `tmp`; statistics on a free
    loopback TCP port.
    """
    return (toml_table("daemon", name=name, pidfile=f"{tmp}/run/daqd.pid")
            + toml_table("zmq", stats="tcp://127.0.0.1:*", control=control_endpoint(tmp),
                         interval=interval))


def udp_stream_toml(name: str, port: int, **keys: Any) -> str:
    """A ``[[stream]]`` table receiving from one loopback UDP port (more `keys` if given)."""
    return toml_table("stream", array=True, name=name, sources=[f"udp://127.0.0.1:{port}"],
                      socket_buffer=4 << 20, **keys)


def chunk_stream_config(tmp: Path, *, name: str = "adc0", port: int | None = None,
                        sinks: str = "", buffer: str = "", chunk: str = "",
                        heaps_per_chunk: int = 8, extra: str = "",
                        stream_keys: dict[str, Any] | None = None) -> str:
    """TOML of a daemon with one W1 chunk-mode stream, its files under `tmp`
    (`stream_keys`: more ``[[stream]]`` keys)."""
    port = port or free_port()
    sinks = sinks or sinks_toml(tmp, "binary", "text")
    buffer = buffer or buffer_toml(kind="fifo", capacity=64, when_full="block", flush_count=4,
                                   flush_interval=0.5)
    return daemon_toml(tmp) + udp_stream_toml(name, port, **(stream_keys or {})) + f"""
[stream.chunk]
timestamp_item = 0x1600
timestamp_step = 8192
heaps_per_chunk = {heaps_per_chunk}
heap_bytes = 8192
max_chunks = 2
pool = 96
{chunk}
{buffer}
{sinks}
{extra}
"""


class DaemonProcess:
    """``daqd run`` in a subprocess, its JSON log lines collected as they come."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.config_path = config_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daqd", "run", "--config", str(config_path),
             "--log-format", "json", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})}, cwd=cwd)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first log event called `name`, waiting for it (fails if the daemon exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("event") == name:
                    return event
            if self.proc.poll() is not None:
                self._reader.join(2)
                for event in self.events:
                    if event.get("event") == name:
                        return event
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before "
                                     f"{name!r}:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} within {timeout} s:\n" + "\n".join(self.lines[-20:]))

    def ready(self, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_event("ready", timeout)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGABRT: the daemon's faulthandler writes every thread's stack to
            # stderr, so a hang says where it hangs.
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            raise AssertionError("daemon did not exit (its stacks at SIGABRT last):\n"
                                 + "\n".join(self.lines[-120:])) from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def chunk_daemon(tmp: Path, **options: Any) -> Iterator[tuple[DaemonProcess, dict[str, Any],
                                                               int]]:
    """A daemon on `chunk_stream_config(tmp, **options)`, once ready: (daemon, ready, port)."""
    port = options.pop("port", None) or free_port()
    daemon = DaemonProcess(write_config(tmp, chunk_stream_config(tmp, port=port, **options)))
    try:
        yield daemon, daemon.ready(), port
    finally:
        daemon.close()


def send_w1(port: int, heaps: int, *, rate: float = 50e6, stop: bool = True) -> dict[str, Any]:
    """Send W1 to the daemon's UDP port with daqd's own sender (paced: no loss on loopback)."""
    from daqd.tools.simulate import simulate

    return simulate(f"udp://127.0.0.1:{port}", "W1", rate=rate, heaps=heaps, stop=stop)


def w1_payloads(heaps: int) -> list[bytes]:
    """Heap payloads of the first `heaps` heaps of W1, as the simulator sends them."""
    from daqd import _spead

    reader = _spead.SimReader("W1", heaps=heaps)
    out: list[bytes] = []
    while (batch := reader.read_batch()) is not None:
        out.extend(p[56:] for p in batch[0])
    return out


class Subscriber:
    """A real SUB socket on a daemon's statistics endpoint."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)

    def next(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        topic, body = self.sock.recv_multipart()
        return topic.decode(), json.loads(body)

    def until(self, predicate: Any, timeout: float = 20.0) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            got = self.next(max(0.01, deadline - time.monotonic()))
            if got is None:
                continue
            last = got
            if predicate(*got):
                return got
        raise AssertionError(f"no matching message within {timeout} s; last: {last}")

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def subscribed(endpoint: str, topic: str = "stats.adc0") -> Subscriber:
    """A Subscriber on `endpoint` that has seen a first `topic` message (so nothing later
    is missed)."""
    sub = Subscriber(endpoint)
    sub.until(lambda t, m: t == topic)
    return sub


def control(endpoint: str, request: Any, timeout: float = 5.0) -> dict[str, Any]:
    """One raw control request (a dict is sent as JSON, bytes as they are)."""
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(request if isinstance(request, bytes) else json.dumps(request).encode())
        assert sock.poll(int(timeout * 1000)), f"no reply to {request!r}"
        return json.loads(sock.recv())
    finally:
        sock.close()
        context.term()


class W1Sender:
    """Sends W1 heaps to a UDP port in several goes, timestamps carrying on."""

    def __init__(self, port: int, heaps: int = 1024):
        from daqd import _spead

        reader = _spead.SimReader("W1", heaps=heaps)
        self.packets: list[bytes] = []
        while (batch := reader.read_batch()) is not None:
            self.packets.extend(batch[0])
        self.sent = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))

    def send(self, heaps: int) -> None:
        for packet in self.packets[self.sent:self.sent + heaps]:
            self.sock.send(packet)
        self.sent += heaps

    def close(self) -> None:
        self.sock.close()


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.05)


def last_messages(sub: Subscriber, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The last message of each topic up to the daemon's final ``stopped`` status."""
    last: dict[str, dict[str, Any]] = {}

    def note(topic: str, message: dict[str, Any]) -> bool:
        last[topic] = message
        return topic == "status" and message.get("state") == "stopped"

    sub.until(note, timeout)
    return last
