"""``daqd status``/``stats``/``stop``/``capture`` reaching a real daemon that speaks CURVE on TCP,
with keys written by ``daqd keygen``: right keys work, a wrong client or server key
gives one line and exit status 1."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import DaemonProcess, free_port, toml_table, udp_stream_toml, write_config

pytestmark = pytest.mark.network

REFUSED = 0.5            # seconds a refused client waits


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    proc = daqd("keygen", str(directory), "--name", name)
    assert proc.returncode == 0, proc.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs (public, secret) of the daemon, an allowed client and an intruder."""
    tmp = tmp_path_factory.mktemp("curve")
    made = {name: keygen(tmp / "keys", name) for name in ("server", "client", "intruder")}
    clients = tmp / "clients"
    clients.mkdir()
    (clients / "client.key").write_bytes(made["client"][0].read_bytes())
    return made, clients


def curve_daemon(tmp: Path, keys, client_keys_in_config: bool = False) -> DaemonProcess:
    made, clients = keys
    zmq_keys = {"stats": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                "control": f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                "interval": 0.2, "curve_secret_key": str(made["server"][1]),
                "curve_clients": str(clients)}
    if client_keys_in_config:        # a client beside the daemon: the server key is derived
        zmq_keys["curve_client_secret_key"] = str(made["client"][1])
    text = (toml_table("daemon", name="curved", pidfile=f"{tmp}/run/daqd.pid")
            + toml_table("zmq", **zmq_keys) + udp_stream_toml("adc0", free_port()))
    daemon = DaemonProcess(write_config(tmp, text))
    return daemon


@pytest.fixture
def running(tmp_path, keys):
    daemon = curve_daemon(tmp_path, keys)
    ready = daemon.ready()
    yield daemon, ready, keys[0]
    daemon.close()


def key_options(made, client: str = "client", server: str = "server") -> list[str]:
    return ["--curve-secret-key", str(made[client][1]),
            "--curve-server-key", str(made[server][0])]


def assert_wrong_key(proc, endpoint: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [
        f"daqd: error: no reply from {endpoint} in {REFUSED:g} s; wrong CURVE key?"]
    assert proc.stdout == ""


def test_right_keys_reach_status_and_stats(running):
    daemon, ready, made = running
    proc = daqd("status", "--endpoint", ready["control"], "--json", *key_options(made))
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["ok"] is True and reply["state"] == "running"
    assert "adc0" in reply["streams"]
    proc = daqd("stats", "--endpoint", ready["stats"], "--json", "--count", "2",
                "--timeout", "10", *key_options(made))
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(messages) == 2 and {m["daemon"] for m in messages} == {"curved"}
    proc = daqd("capture", "stop", "--endpoint", ready["control"], "--json", *key_options(made))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["capture"]["adc0"]["state"] == "stopped"


@pytest.mark.parametrize("client, server", [("intruder", "server"), ("client", "intruder")])
def test_a_wrong_key_is_one_line_and_status_1(running, client, server):
    daemon, ready, made = running
    options = key_options(made, client, server)
    assert_wrong_key(daqd("status", "--endpoint", ready["control"],
                          "--timeout", str(REFUSED), *options), ready["control"])
    assert_wrong_key(daqd("stats", "--endpoint", ready["stats"],
                          "--timeout", str(REFUSED), *options), ready["stats"])
    assert_wrong_key(daqd("capture", "start", "--endpoint", ready["control"],
                          "--timeout", str(REFUSED), *options), ready["control"])
    proc = daqd("stop", "--endpoint", ready["control"], "--timeout", "5", *options)
    assert proc.returncode == 1 and "wrong CURVE key?" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    # the daemon never heard the stop, and still answers the right keys
    proc = daqd("status", "--endpoint", ready["control"], "--json", *key_options(made))
    assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "running"
    assert daemon.proc.poll() is None


def test_stop_with_the_right_keys_drains_the_daemon(running):
    daemon, ready, made = running
    proc = daqd("stop", "--endpoint", ready["control"], "--timeout", "30", *key_options(made))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"daqd: stopped, {ready['control']}"
    assert daemon.wait(30) == 0
    assert any(e.get("event") == "draining" and e.get("reason") == "control"
               for e in daemon.events)


def test_the_configuration_keys_serve_the_client(tmp_path, keys):
    """``zmq.curve_client_secret_key``; the server key taken from ``zmq.curve_secret_key``."""
    daemon = curve_daemon(tmp_path, keys, client_keys_in_config=True)
    try:
        daemon.ready()
        config = str(daemon.config_path)
        proc = daqd("status", "--config", config, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state"] == "running"
        proc = daqd("stats", "--config", config, "--json", "--count", "1", "--timeout", "10")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["daemon"] == "curved"
        # the options win over the configuration: an intruder's key is refused
        proc = daqd("status", "--config", config, "--timeout", str(REFUSED),
                    "--curve-secret-key", str(keys[0]["intruder"][1]))
        assert proc.returncode == 1 and "wrong CURVE key?" in proc.stderr, proc.stderr
        proc = daqd("stop", "--config", config, "--timeout", "30")
        assert proc.returncode == 0, proc.stderr
        assert daemon.wait(30) == 0
    finally:
        daemon.close()


def test_a_server_key_without_a_client_key_is_a_usage_error(running):
    daemon, ready, made = running
    proc = daqd("status", "--endpoint", ready["control"],
                "--curve-server-key", str(made["server"][0]))
    assert proc.returncode == 2 and "expected --curve-secret-key" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_top_reaches_a_curve_daemon_with_the_keys_and_sees_nothing_without(running):
    """``daqd top`` takes the same key options: with them the daemon's row is shown,
    without them (or with an intruder's key) the daemon is never heard from."""
    daemon, ready, made = running
    proc = daqd("top", "--endpoint", ready["stats"], "--print-after", "3", *key_options(made))
    assert proc.returncode == 0, proc.stderr
    assert "curved" in proc.stdout and "adc0" in proc.stdout
    for options in ([], key_options(made, "intruder")):
        proc = daqd("top", "--endpoint", ready["stats"], "--print-after", "1.5", *options)
        assert proc.returncode == 0, proc.stderr
        assert "adc0" not in proc.stdout, proc.stdout
        assert f"no statistics from {ready['stats']}" in proc.stdout
