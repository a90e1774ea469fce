"""The control socket: requests to a running daemon over ZeroMQ.

Request and reply format
------------------------
The daemon binds a ROUTER socket (``zmq.control``); clients connect a REQ or
DEALER socket.  A request is one frame (after the REQ envelope) holding a
JSON object::

    {"command": "status"}
    {"command": "trigger", "label": "calibration"}

Every key other than ``command`` is an argument of the command.  A bare
command is accepted too, as a JSON string (``"status"``) or as plain text
(``status``).  Commands: ``status``, ``flush``, ``trigger``, ``stop``,
``capture-start``, ``capture-stop``, ``reset-counters`` (the daemon decides
which it offers; an unknown one gets an error naming those it knows).

Every request gets exactly one reply, a JSON object in one frame::

    {"ok": true, ...}                      the command's result, e.g. for status:
                                           "state", "uptime", "streams": {...}
    {"ok": false, "error": "one line"}     what was wrong

A request that is not UTF-8, not valid JSON (nor a bare command), not an
object or a string, has no ``command`` string, names an unknown command, is
empty, or spans several frames gets an error reply; so does a command whose
handler fails.  None of these disturbs the socket or other clients.  A
request larger than 64 KiB disconnects its sender without a reply (ZeroMQ's
``MAXMSGSIZE``).  Replies are sent without blocking: a client that has gone
away simply misses its reply.

With CURVE configured (``zmq.curve_secret_key``), only clients whose public
keys are in ``zmq.curve_clients`` can connect; others get no reply at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import zmq

from daqd.errors import UsageProblem
from daqd.service.zmq_security import Security
from daqd.service.zmq_server import SocketServer

log = structlog.get_logger("daqd.control")

#: A handler takes the request's arguments and returns a JSON-able result.
Handler = Callable[[dict[str, Any]], Mapping[str, Any] | None]

#: Commands the daemon offers (INTERFACES.md); `ControlServer` serves whatever
#: its handlers name.
COMMANDS = ("status", "flush", "trigger", "stop", "capture-start", "capture-stop",
            "reset-counters", "start-receiving")

_BARE_COMMAND = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# Commands polled often enough that logging each at info would be noise.
_QUIET = frozenset({"status"})


class RequestError(Exception):
    """A request that cannot be served: its `kind` (a stats key) and a one-line message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (newlines included) and cut `text` to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def parse_request(body: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one request frame into a command and its arguments.

    Parameters
    ----------
    body : bytes
        The request frame.

    Returns
    -------
    (str, dict)
        The command and its arguments (the object's other keys).

    Raises
    ------
    RequestError
        With kind ``malformed`` when the frame is not a request.
    """
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RequestError("malformed", "request is not UTF-8 text") from None
    if not text:
        raise RequestError("malformed", "empty request")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        if _BARE_COMMAND.fullmatch(text):
            return text, {}
        raise RequestError("malformed", f"malformed JSON: {exc.msg} at character "
                           f"{exc.pos}") from None
    if isinstance(request, str):
        request = {"command": request}
    if not isinstance(request, dict):
        raise RequestError("malformed", "expected a JSON object with a \"command\" or a "
                           f"command string, got a JSON {type(request).__name__}")
    args = dict(request)
    command = args.pop("command", None)
    if not isinstance(command, str) or not command:
        raise RequestError("malformed", "missing \"command\" (a non-empty string) in the "
                           "request")
    return command, args


class ControlServer(SocketServer):
    """A thread answering control requests on a ZeroMQ ROUTER socket.

    Parameters
    ----------
    context, endpoint, security
        As for `SocketServer` (e.g. ``tcp://127.0.0.1:5557``).
    handlers : mapping
        Command name → callable taking the arguments dict and returning a
        JSON-able mapping (or None); called in the control thread, so keep
        them quick (set a flag, return).  A raised exception becomes an
        error reply.
    poll_interval : float, optional
        Seconds between checks of the stop flag.
    max_request_bytes : int, optional
        Larger requests disconnect their sender.
    linger : float, optional
        Seconds the last replies (e.g. to ``stop``) may take to leave on close.
    """

    def __init__(self, context: zmq.Context, endpoint: str, handlers: Mapping[str, Handler],
                 security: Security | None = None, *, poll_interval: float = 0.1,
                 max_request_bytes: int = 65536, linger: float = 0.2):
        super().__init__(context, endpoint, security)
        self.handlers = dict(handlers)
        self._poll_ms = max(1, int(poll_interval * 1000))
        self._max_request_bytes = max_request_bytes
        self._linger_ms = int(linger * 1000)
        self._stats = {"requests": 0, "replies_ok": 0, "errors": 0, "malformed": 0,
                       "unknown_command": 0, "handler_errors": 0, "send_failures": 0}

    socket_type = zmq.ROUTER
    what = "control"
    private = True
    thread_name = "daqd-control"

    def start(self) -> None:
        """Bind the socket (errors surface here) and start answering."""
        super().start()
        log.info("control listening", endpoint=self.endpoint, commands=sorted(self.handlers))

    def _configure(self, sock: zmq.Socket) -> None:
        sock.maxmsgsize = self._max_request_bytes
        sock.rcvhwm = 100
        sock.sndhwm = 100
        sock.linger = self._linger_ms

    def _run(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(self._poll_ms):
                    continue
                for _ in range(100):           # bounded, so stop() is seen under a flood
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._serve(sock, frames)
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=self._linger_ms)

    def _serve(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        """Answer one routed message: [identity, (envelope..., b""), body...]."""
        self._stats["requests"] += 1
        identity, rest = frames[0], frames[1:]
        if b"" in rest:                        # REQ-style envelope: echo it back
            cut = rest.index(b"") + 1
            envelope, body = rest[:cut], rest[cut:]
        else:
            envelope, body = [], rest
        try:
            reply = self._reply(body)
        except Exception as exc:  # a bug here must not end the control thread; counted
            self._stats["errors"] += 1
            log.exception("control request crashed the server loop")
            reply = json.dumps({"ok": False, "error": f"internal error: {one_line(exc)}"})
        try:
            sock.send_multipart([identity, *envelope, reply.encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._stats["send_failures"] += 1
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM:
                raise
            self._stats["send_failures"] += 1

    def _error(self, kind: str, message: str) -> str:
        self._stats["errors"] += 1
        self._stats[kind] += 1
        return json.dumps({"ok": False, "error": message})

    def _reply(self, body: list[bytes]) -> str:
        """Build the JSON reply to a request body (its frames after the envelope)."""
        if len(body) != 1:
            what = "empty request" if not body else \
                f"expected the request in one frame, got {len(body)} frames"
            return self._error("malformed", what)
        try:
            command, args = parse_request(body[0])
        except RequestError as exc:
            log.debug("control request refused", error=str(exc))
            return self._error(exc.kind, str(exc))
        handler = self.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return self._error("unknown_command", one_line(
                f"unknown command {command!r}; known commands: {known}"))
        try:
            result = handler(args)
            reply = {"ok": True, **(result if isinstance(result, Mapping) else
                                    {} if result is None else {"result": result})}
            text = json.dumps(reply, default=_jsonable)
        except (Exception, SystemExit) as exc:  # reported to the client, logged, counted
            message = one_line(exc) or type(exc).__name__
            if isinstance(exc, UsageProblem | TypeError | ValueError):
                log.warning("control command failed", command=command, error=message)
            else:
                log.exception("control command failed", command=command)
            return self._error("handler_errors", f"{command}: {message}")
        (log.debug if command in _QUIET else log.info)("control command", command=command,
                                                         args=args)
        self._stats["replies_ok"] += 1
        return text

    def stats(self) -> dict[str, int]:
        """Return the server's counters: requests, replies_ok, errors and their kinds."""
        return dict(self._stats)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket (within about one poll interval)."""
        if not self._join(timeout):
            log.warning("control thread did not stop", timeout=timeout)
        self._socket = None


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` default for handler results: numpy values, sets, tuples."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
