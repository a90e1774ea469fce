"""Statistics messages of several daemons, taken without ever blocking.

One ZeroMQ SUB socket per endpoint, so each message is known by the endpoint
it came from (two daemons may share a name).  `Feed.poll` returns what has
arrived and returns at once when nothing has: the monitor calls it from a
timer, and a daemon that stops publishing cannot hold the screen.
"""

from __future__ import annotations

from typing import Any

import zmq

from daqd.errors import UsageProblem
from daqd.service.zmq_clients import decode_message

#: Most messages taken per endpoint in one `Feed.poll` (the screen stays responsive).
MAX_PER_POLL = 256


class Feed:
    """SUB sockets on `endpoints`, subscribed to ``stats.`` and ``status``.

    Parameters
    ----------
    endpoints : list of str
        Statistics endpoints (``zmq.stats`` of each daemon).
    security : ClientSecurity or None
        CURVE client keys for daemons that publish with CURVE (all of them).

    Raises
    ------
    UsageProblem
        When an endpoint is not one ZeroMQ can connect to.
    """

    def __init__(self, endpoints: list[str], security: Any = None):
        self.context = zmq.Context()
        self.sockets: list[tuple[str, zmq.Socket]] = []
        try:
            for endpoint in endpoints:
                sock = self.context.socket(zmq.SUB)
                sock.linger = 0
                self.sockets.append((endpoint, sock))
                if security is not None:
                    security.apply(sock)
                sock.subscribe(b"stats.")
                sock.subscribe(b"status")
                try:
                    sock.connect(endpoint)
                except zmq.ZMQError as exc:
                    raise UsageProblem(f"--endpoint {endpoint}: not a ZeroMQ endpoint to "
                                       f"connect to ({exc.strerror})") from None
        except BaseException:
            self.close()
            raise

    def poll(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every message that has arrived, as ``(endpoint, topic, message)``; never waits."""
        out = []
        for endpoint, sock in self.sockets:
            for _ in range(MAX_PER_POLL):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                decoded = decode_message(frames)
                if decoded is not None:
                    out.append((endpoint, *decoded))
        return out

    def close(self) -> None:
        """Close the sockets and the context."""
        for _, sock in self.sockets:
            sock.close()
        self.sockets = []
        self.context.term()
