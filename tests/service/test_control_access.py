"""Control is the owner's alone by default (issue 12, finding 10).

The default control endpoint is an ``ipc://`` socket file, mode 0600, in a
directory the daemon makes 0700; another user can neither connect nor stop
the daemon.  A ``tcp://`` control endpoint needs CURVE keys, or
``zmq.control_insecure_tcp = true``: without either, ``validate`` and ``run``
refuse it with one line and status 2.  With CURVE it works as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_helpers import (
    REPO,
    DaemonProcess,
    chunk_stream_config,
    control,
    control_endpoint,
    free_port,
    write_config,
)

from daqd.service.zmq_clients import DaemonUnreachable, request, subscribe
from daqd.service.zmq_security import ClientSecurity

pytestmark = pytest.mark.network


def default_config(tmp_path: Path) -> Path:
    """config/daqd.toml as shipped, on free ports (its [zmq] control line untouched)."""
    text = (REPO / "config" / "daqd.toml").read_text()
    udp, stats = free_port(), free_port(socket.SOCK_STREAM)
    text = text.replace("127.0.0.1:7148", f"127.0.0.1:{udp}").replace(
        "tcp://127.0.0.1:5556", f"tcp://127.0.0.1:{stats}")
    return write_config(tmp_path, text)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_default_control_socket_is_0600_in_a_0700_directory(tmp_path):
    cfg = default_config(tmp_path)
    daemon = DaemonProcess(cfg, cwd=tmp_path)
    try:
        ready = daemon.ready()
        assert ready["control"].startswith("ipc://")
        sock = tmp_path / ready["control"].removeprefix("ipc://")
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert (mode(sock), mode(sock.parent)) == (0o600, 0o700)
        # `daqd status --config F` finds the socket from the configuration
        status = subprocess.run([sys.executable, "-m", "daqd", "status", "--config", str(cfg),
                                 "--json"], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "running"
        assert daemon.stop() == 0
    finally:
        daemon.close()


# ----------------------------------------------------------------------
# another user


def as_nobody(endpoint: str) -> dict[str, str]:
    """Try the control socket as user nobody (a forked child that drops root).

    Returns what happened: ``connect`` (a plain Unix-socket connect: ``ok`` or
    the errno name) and ``stop`` (the reply to a ``stop`` request, or ``no
    reply``).
    """
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child: never returns
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = {}
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.connect(endpoint.removeprefix("ipc://"))
                out["connect"] = "ok"
            except OSError as exc:
                out["connect"] = os.strerror(exc.errno or 0)
            finally:
                raw.close()
            context = zmq.Context()
            req = context.socket(zmq.REQ)
            req.linger = 0
            req.connect(endpoint)
            req.send(b'{"command": "stop"}')
            out["stop"] = req.recv().decode() if req.poll(1500) else "no reply"
            req.close()
            context.term()
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory any user may enter, as /tmp or /run are (removed afterwards)."""
    shared = Path(tempfile.mkdtemp(prefix="daqd-ctl-", dir="/tmp"))
    shared.chmod(0o755)
    try:
        yield shared
    finally:
        for path in sorted(shared.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        shared.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run a client as user nobody")
def test_another_user_can_neither_connect_nor_stop_the_daemon(tmp_path):
    # The socket in a directory the daemon makes (0700) inside a shared one.
    # The daemon runs with umask 0, so no umask helps.
    with shared_directory() as shared:
        endpoint = f"ipc://{shared}/ctl/daqd.sock"
        text = chunk_stream_config(tmp_path).replace(control_endpoint(tmp_path), endpoint)
        old_umask = os.umask(0)
        try:
            daemon = DaemonProcess(write_config(tmp_path, text))
        finally:
            os.umask(old_umask)
        try:
            assert daemon.ready()["control"] == endpoint
            tried = as_nobody(endpoint)
            assert tried == {"connect": "Permission denied", "stop": "no reply"}
            assert control(endpoint, {"command": "status"})["state"] == "running"  # the owner
            assert daemon.stop() == 0
        finally:
            daemon.close()


def test_a_control_socket_straight_in_a_shared_directory_is_one_line_and_status_2(tmp_path):
    """libzmq serves the socket from the bind on, before the daemon can make it 0600, and a
    connection made then survives the chmod: only a directory others cannot enter is safe."""
    with shared_directory() as shared:
        endpoint = f"ipc://{shared}/daqd.sock"
        cfg = write_config(tmp_path, chunk_stream_config(tmp_path).replace(
            control_endpoint(tmp_path), endpoint))
        for command in ("validate", "run"):
            result = subprocess.run([sys.executable, "-m", "daqd", command, "--config", str(cfg)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert f"zmq.control = '{endpoint}': expected a socket in a directory only this " \
                   f"user may enter" in result.stderr, result.stderr
            assert f"{shared} is mode 0755" in result.stderr
        assert not (shared / "daqd.sock").exists()


# ----------------------------------------------------------------------
# TCP control


def tcp_control_config(tmp_path: Path, extra: str = "") -> Path:
    """A test daemon whose control socket is on loopback TCP, with `extra` [zmq] keys."""
    text = chunk_stream_config(tmp_path).replace(
        f'control = "{control_endpoint(tmp_path)}"', f'control = "tcp://127.0.0.1:*"{extra}')
    return write_config(tmp_path, text)


def test_a_tcp_control_socket_without_curve_or_the_key_is_one_line_and_status_2(tmp_path):
    cfg = tcp_control_config(tmp_path)
    for command in ("validate", "run"):
        result = subprocess.run([sys.executable, "-m", "daqd", command, "--config", str(cfg)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert re.search(r"zmq\.control = 'tcp://127\.0\.0\.1:\*': expected .*"
                         r"zmq\.control_insecure_tcp = true", result.stderr), result.stderr
        assert str(cfg) in result.stderr


def test_the_explicit_key_allows_a_loopback_tcp_control_socket(tmp_path):
    daemon = DaemonProcess(tcp_control_config(tmp_path, "\ncontrol_insecure_tcp = true"))
    try:
        endpoint = daemon.ready()["control"]
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert control(endpoint, {"command": "status"})["state"] == "running"
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_a_tcp_control_socket_with_curve_works_as_before(tmp_path):
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    Path(client_public).rename(clients / "client.key")
    daemon = DaemonProcess(tcp_control_config(
        tmp_path, f'\ncurve_secret_key = "{server_secret}"\ncurve_clients = "{clients}"'))
    try:
        endpoint = daemon.ready()["control"]
        assert endpoint.startswith("tcp://127.0.0.1:")
        security = ClientSecurity.from_files(client_secret, server_public)
        assert request(endpoint, "status", security=security)["state"] == "running"
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_the_daemon_serves_control_and_stats_only_to_allowed_curve_keys(tmp_path):
    """The real daemon with CURVE: a client with no key or a key not in curve_clients gets
    no reply and no statistics; the allowed key gets both (statistics every 0.2 s)."""
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    _, intruder_secret = zmq.auth.create_certificates(str(keys), "intruder")
    Path(client_public).rename(clients / "client.key")
    daemon = DaemonProcess(tcp_control_config(
        tmp_path, f'\ncurve_secret_key = "{server_secret}"\ncurve_clients = "{clients}"'))
    try:
        ready = daemon.ready()
        endpoint, stats = ready["control"], ready["stats"]
        allowed = ClientSecurity.from_files(client_secret, server_public)
        intruder = ClientSecurity.from_files(intruder_secret, server_public)
        assert request(endpoint, "status", security=allowed, timeout=10)["state"] == "running"
        for security in (None, intruder):
            with pytest.raises(DaemonUnreachable):
                request(endpoint, "status", security=security, timeout=1.0)
            with pytest.raises(DaemonUnreachable):
                next(subscribe(stats, count=1, timeout=1.5, security=security))
        topic, message = next(subscribe(stats, count=1, timeout=10, security=allowed))
        assert message["daemon"] == "test-daqd"
        assert request(endpoint, "status", security=allowed, timeout=10)["state"] == "running"
        assert daemon.stop() == 0
    finally:
        daemon.close()
