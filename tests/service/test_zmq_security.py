"""daqd.service.zmq_security: local endpoints, and CURVE end to end on loopback TCP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zmq
import zmq.auth

from daqd import config as daqd_config
from daqd.addresses import is_local_endpoint
from daqd.config import ConfigError, ZmqConfig
from daqd.errors import UsageProblem
from daqd.service.control import ControlServer
from daqd.service.stats_publisher import StatsPublisher
from daqd.service.zmq_clients import DaemonUnreachable, request, subscribe
from daqd.service.zmq_security import ClientSecurity, Security, check_bind

STREAM = '[[stream]]\nname = "a"\nsources = ["sim:W1"]\n'
REFUSED = 0.5          # how long a refused client waits before giving up


@pytest.fixture
def keys(tmp_path):
    """Key files: the daemon's, an allowed client's, and an intruder's."""
    made = {}
    for name in ("server", "client", "intruder"):
        public, secret = zmq.auth.create_certificates(tmp_path, name)
        made[name] = (Path(public), Path(secret))
    clients = tmp_path / "clients"
    clients.mkdir()
    shutil.copy(made["client"][0], clients)
    return made, clients


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5556", True),
    ("tcp://127.1.2.3:5556", True),
    ("tcp://localhost:5556", True),
    ("tcp://[::1]:5556", True),
    ("tcp://127.0.0.1:*", True),
    ("ipc:///run/daqd/stats", True),
    ("inproc://stats", True),
    ("tcp://0.0.0.0:5556", False),
    ("tcp://*:5556", False),
    ("tcp://10.0.0.5:5556", False),
    ("tcp://[::]:5556", False),
    ("tcp://eth0:5556", False),
    ("udp://127.0.0.1:5556", False),
    ("", False),
])
def test_is_local_endpoint(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_loader_refuses_a_non_loopback_bind_without_curve():
    with pytest.raises(ConfigError) as err:
        daqd_config.parse('[zmq]\nstats = "tcp://0.0.0.0:5556"\n' + STREAM, "daqd.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("daqd.toml: zmq.stats = 'tcp://0.0.0.0:5556': expected a "
                              "loopback or ipc:// endpoint")
    assert "zmq.curve_secret_key" in message


def test_loader_accepts_a_non_loopback_bind_with_curve(keys):
    made, clients = keys
    cfg = daqd_config.parse(
        f'[zmq]\nstats = "tcp://0.0.0.0:5556"\ncurve_secret_key = "{made["server"][1]}"\n'
        f'curve_clients = "{clients}"\n' + STREAM)
    assert cfg.zmq.stats == "tcp://0.0.0.0:5556"


@pytest.mark.parametrize("make", [
    lambda ctx: StatsPublisher(ctx, "tcp://0.0.0.0:0", 1.0, dict, "d"),
    lambda ctx: ControlServer(ctx, "tcp://0.0.0.0:0", {}),
])
def test_servers_refuse_a_non_local_bind_without_security(ctx, make):
    with pytest.raises(UsageProblem, match="refusing to bind a non-loopback endpoint"):
        make(ctx).start()


def test_check_bind_allows_a_non_local_endpoint_with_security(ctx, keys):
    made, clients = keys
    with Security(ctx, made["server"][1], clients) as security:
        check_bind("tcp://0.0.0.0:5556", security)       # does not raise


def test_from_config_without_curve_is_none(ctx):
    assert Security.from_config(ctx, ZmqConfig()) is None


def test_from_config_problems_are_one_line(ctx, keys, tmp_path):
    made, clients = keys
    cases = [
        (ZmqConfig(curve_secret_key=str(made["server"][1])), "zmq.curve_clients"),
        (ZmqConfig(curve_secret_key=str(tmp_path / "nope.key_secret"),
                   curve_clients=str(clients)), "cannot load the CURVE secret key"),
        (ZmqConfig(curve_secret_key=str(made["server"][0]), curve_clients=str(clients)),
         "expected a secret key file"),
        (ZmqConfig(curve_secret_key=str(made["server"][1]),
                   curve_clients=str(tmp_path / "missing")), "expected a directory"),
    ]
    for cfg, words in cases:
        with pytest.raises(UsageProblem) as err:
            Security.from_config(ctx, cfg)
        assert words in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def curve_daemon(ctx, keys):
    """A publisher and a control server on loopback TCP with CURVE on."""
    made, clients = keys
    security = Security.from_config(ctx, ZmqConfig(curve_secret_key=str(made["server"][1]),
                                                   curve_clients=str(clients)))
    stops = []
    snapshot = lambda: {"state": "running", "uptime": 1.0,   # noqa: E731
                        "streams": {"a": {"counters": {"packets": 5}}}}
    pub = StatsPublisher(ctx, "tcp://127.0.0.1:*", 0.05, snapshot, "daq-curve", security)
    srv = ControlServer(ctx, "tcp://127.0.0.1:*",
                        {"status": lambda a: {"state": "running"},
                         "stop": lambda a: stops.append(a) or {}},
                        security, poll_interval=0.02)
    pub.start()
    srv.start()
    yield pub, srv, stops, made
    srv.stop()
    pub.stop()
    security.close()


def client_keys(made, name):
    return ClientSecurity.from_files(made[name][1], made["server"][0])


def test_an_authorised_client_gets_stats_and_control_replies(ctx, curve_daemon):
    pub, srv, stops, made = curve_daemon
    security = client_keys(made, "client")
    topics = {topic for topic, _ in subscribe(pub.endpoint, count=4, timeout=5.0,
                                               security=security, context=ctx)}
    assert topics == {"stats.a", "status"}
    assert request(srv.endpoint, "status", security=security, context=ctx) == \
        {"ok": True, "state": "running"}
    assert request(srv.endpoint, "stop", security=security, context=ctx) == {"ok": True}
    assert len(stops) == 1


@pytest.mark.parametrize("who", ["intruder", "no key"])
def test_an_unknown_or_keyless_client_gets_nothing_and_cannot_control(ctx, curve_daemon, who):
    pub, srv, stops, made = curve_daemon
    security = client_keys(made, "intruder") if who == "intruder" else None
    with pytest.raises(DaemonUnreachable):
        next(subscribe(pub.endpoint, count=1, timeout=REFUSED, security=security,
                       context=ctx))
    # with keys, the one line a person sees says what is likely wrong
    words = "no reply to 'stop'" if security is None else \
        f"^no reply from {srv.endpoint} in {REFUSED:g} s; wrong CURVE key\\?$"
    with pytest.raises(DaemonUnreachable, match=words):
        request(srv.endpoint, "stop", timeout=REFUSED, security=security, context=ctx)
    # the server is up and answering authorised clients, yet never ran the intruder's stop
    assert request(srv.endpoint, "status", security=client_keys(made, "client"),
                   context=ctx)["ok"] is True
    assert stops == [] and srv.stats()["requests"] == 1


def test_a_client_trusting_the_wrong_server_key_gets_nothing(ctx, curve_daemon):
    pub, srv, stops, made = curve_daemon
    wrong = ClientSecurity.from_files(made["client"][1], made["intruder"][0])
    with pytest.raises(DaemonUnreachable):
        request(srv.endpoint, "stop", timeout=REFUSED, security=wrong, context=ctx)
    assert stops == []


def test_client_key_problems_are_one_line(keys, tmp_path):
    made, _ = keys
    with pytest.raises(UsageProblem, match="expected a secret key file"):
        ClientSecurity.from_files(made["client"][0], made["server"][0])
    with pytest.raises(UsageProblem, match="cannot load the daemon's CURVE public key"):
        ClientSecurity.from_files(made["client"][1], tmp_path / "absent.key")


def test_close_stops_the_authenticator(ctx, keys):
    made, clients = keys
    security = Security(ctx, made["server"][1], clients)
    thread = security._auth.thread
    security.close()
    security.close()                   # idempotent
    assert not thread.is_alive()
