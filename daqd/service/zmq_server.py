"""A ZeroMQ server socket with a thread of its own: the control socket and the statistics PUB.

The socket is made and bound in the caller's thread, so a refused or busy
endpoint surfaces where the daemon starts; then one thread serves it.
"""

from __future__ import annotations

import threading

import zmq

from daqd.service.threads import ThreadOwner
from daqd.service.zmq_security import Security, bind_checked


class SocketServer(ThreadOwner):
    """Base of the daemon's server sockets (`ControlServer`, `StatsPublisher`).

    Subclasses set `socket_type`, `what` (named in bind errors), `private`
    (only this user may connect: the control socket) and `thread_name`, and
    give `_configure(sock)` and `_run(sock)`.

    Parameters
    ----------
    context : zmq.Context
        The context to make the socket in (the caller terminates it).
    endpoint : str
        Where to bind; ``tcp://127.0.0.1:*`` picks a free port (see
        `endpoint` after `start`).
    security : Security or None
        Server-side CURVE; required for a non-loopback `endpoint`.
    """

    socket_type: int = zmq.PAIR
    what = "server"
    private = False
    thread_name = "daqd-server"

    def __init__(self, context: zmq.Context, endpoint: str, security: Security | None):
        self.context = context
        self.endpoint = endpoint
        self._security = security
        self._stop = threading.Event()
        self._socket: zmq.Socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the socket (in the caller's thread, so errors surface here) and start.

        Raises
        ------
        UsageProblem
            When the endpoint is not local and there is no security, or it
            cannot be bound.
        """
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("start() may be called only once")
        sock = self.context.socket(self.socket_type)
        self._configure(sock)
        self.endpoint = bind_checked(sock, self.endpoint, self._security, self.what,
                                     self.private)
        self._socket = sock
        self._thread = threading.Thread(target=self._run, args=(sock,), name=self.thread_name,
                                        daemon=True)
        self._thread.start()

    def _configure(self, sock: zmq.Socket) -> None:
        """Set the socket's options before it is bound."""

    def _run(self, sock: zmq.Socket) -> None:
        raise NotImplementedError

    def _join(self, timeout: float) -> bool:
        """Stop the thread and wait for it; False if it is still running after `timeout`."""
        self._stop.set()
        return self._join_thread(timeout)
