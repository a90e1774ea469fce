"""daqd.service.control: the ROUTER control server on real ZeroMQ sockets."""

from __future__ import annotations

import json
import threading

import pytest
import zmq

from daqd.service.control import ControlServer, parse_request

TIMEOUT = 5.0          # bound on every wait; never reached when things work


class Calls:
    """Handlers that record their calls."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def handler(self, name, result=None):
        def handle(args):
            self.calls.append((name, args))
            return result if result is not None else {"command": name}
        return handle


def boom(args):
    raise RuntimeError("disk on fire\nsecond line of the traceback text")


@pytest.fixture
def server(ctx, ipc_dir):
    calls = Calls()
    handlers = {
        "status": calls.handler("status", {"state": "running", "uptime": 1.5}),
        "trigger": calls.handler("trigger"),
        "stop": calls.handler("stop"),
        "flush": boom,
        "capture-start": lambda args: {"bad": object()},
        "reset-counters": lambda args: None,
    }
    srv = ControlServer(ctx, f"ipc://{ipc_dir}/control", handlers, poll_interval=0.02)
    srv.start()
    srv.calls = calls.calls
    yield srv
    srv.stop()


def client(ctx, endpoint, kind=zmq.REQ):
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def recv_reply(sock) -> dict:
    assert sock.poll(int(TIMEOUT * 1000)), "no reply"
    return json.loads(sock.recv_multipart()[-1])


def ask(ctx, endpoint, payload: bytes) -> dict:
    sock = client(ctx, endpoint)
    try:
        sock.send(payload)
        return recv_reply(sock)
    finally:
        sock.close()


def test_status_request_gets_the_handler_result(ctx, server):
    reply = ask(ctx, server.endpoint, b'{"command": "status"}')
    assert reply == {"ok": True, "state": "running", "uptime": 1.5}
    assert server.calls == [("status", {})]


def test_arguments_reach_the_handler(ctx, server):
    reply = ask(ctx, server.endpoint, json.dumps({"command": "trigger", "label": "cal"}).encode())
    assert reply == {"ok": True, "command": "trigger"}
    assert server.calls == [("trigger", {"label": "cal"})]


@pytest.mark.parametrize("payload", [b"stop", b'"stop"', b"  stop\n"])
def test_a_bare_command_string_is_accepted(ctx, server, payload):
    assert ask(ctx, server.endpoint, payload) == {"ok": True, "command": "stop"}


def test_a_handler_returning_none_gets_ok(ctx, server):
    assert ask(ctx, server.endpoint, b"reset-counters") == {"ok": True}


@pytest.mark.parametrize("payload, kind, words", [
    (b'{"command": "status"', "malformed", "malformed JSON"),
    (b"not a command!", "malformed", "malformed JSON"),
    (b"[1, 2]", "malformed", "got a JSON list"),
    (b"42", "malformed", "got a JSON int"),
    (b'{"label": "x"}', "malformed", 'missing "command"'),
    (b'{"command": 5}', "malformed", 'missing "command"'),
    (b"", "malformed", "empty request"),
    (b"\xff\xfe", "malformed", "not UTF-8"),
    (b'{"command": "explode"}', "unknown_command", "unknown command 'explode'"),
    (b"flush", "handler_errors", "flush: disk on fire second line"),
    (b"capture-start", "handler_errors", "not JSON serialisable"),
])
def test_bad_requests_get_one_line_errors_and_the_server_carries_on(ctx, server, payload,
                                                                    kind, words):
    reply = ask(ctx, server.endpoint, payload)
    assert reply["ok"] is False and words in reply["error"]
    assert "\n" not in reply["error"]
    assert server.stats()[kind] == 1 and server.stats()["errors"] == 1
    # same server, new client: still answering
    assert ask(ctx, server.endpoint, b"status")["ok"] is True
    assert server.stats()["replies_ok"] == 1


def test_unknown_command_error_names_the_known_ones(ctx, server):
    reply = ask(ctx, server.endpoint, b"explode")
    assert "known commands: capture-start, flush, reset-counters, status, stop, trigger" \
        in reply["error"]


def test_multipart_garbage_gets_an_error_and_does_not_break_the_socket(ctx, server):
    dealer = client(ctx, server.endpoint, zmq.DEALER)
    try:
        dealer.send_multipart([b"", b'{"command": "status"}', b"junk"])
        reply = recv_reply(dealer)
        assert reply["ok"] is False and "got 2 frames" in reply["error"]
        dealer.send_multipart([b""])                  # an envelope and no body
        reply = recv_reply(dealer)
        assert reply["ok"] is False and reply["error"] == "empty request"
        dealer.send_multipart([b'{"command": "status"}'])   # DEALER without envelope
        frames = dealer.poll(int(TIMEOUT * 1000)) and dealer.recv_multipart()
        assert frames and len(frames) == 1 and json.loads(frames[0])["ok"] is True
    finally:
        dealer.close()
    assert server.stats()["malformed"] == 2


def test_one_client_s_garbage_does_not_disturb_another_in_flight(ctx, server):
    good = client(ctx, server.endpoint)
    bad = client(ctx, server.endpoint, zmq.DEALER)
    try:
        bad.send_multipart([b"", b"\x00garbage"])
        good.send(b"status")
        bad.send_multipart([b"a", b"b", b"c"])
        assert recv_reply(good)["ok"] is True
        assert recv_reply(bad)["ok"] is False
        assert recv_reply(bad)["ok"] is False
    finally:
        good.close()
        bad.close()


def test_the_reply_to_stop_gets_out_before_the_server_closes(ctx, ipc_dir):
    stopping = threading.Event()
    srv = ControlServer(ctx, f"ipc://{ipc_dir}/control",
                        {"stop": lambda args: stopping.set() or {"stopping": True}},
                        poll_interval=0.02)
    srv.start()
    sock = client(ctx, srv.endpoint)
    try:
        sock.send(b"stop")
        assert stopping.wait(TIMEOUT)
        srv.stop()                     # as the daemon does, as soon as it sees the flag
        assert recv_reply(sock) == {"ok": True, "stopping": True}
    finally:
        sock.close()


def test_stop_ends_the_thread_and_frees_the_endpoint(ctx, ipc_dir):
    endpoint = f"ipc://{ipc_dir}/control"
    srv = ControlServer(ctx, endpoint, {}, poll_interval=0.02)
    srv.start()
    thread = srv._thread
    srv.stop(timeout=TIMEOUT)
    assert not thread.is_alive()
    again = ControlServer(ctx, endpoint, {"status": lambda a: {}}, poll_interval=0.02)
    again.start()                      # the endpoint was released
    try:
        assert ask(ctx, endpoint, b"status") == {"ok": True}
    finally:
        again.stop()
    srv.stop()                         # idempotent


@pytest.mark.parametrize("body, expected", [
    (b'{"command": "trigger", "n": 3}', ("trigger", {"n": 3})),
    (b'"flush"', ("flush", {})),
    (b"capture-stop", ("capture-stop", {})),
])
def test_parse_request(body, expected):
    assert parse_request(body) == expected
