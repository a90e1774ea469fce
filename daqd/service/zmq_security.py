"""ZeroMQ security: which endpoints are local, and CURVE for the ones that are not.

The statistics (PUB) and control (ROUTER) sockets bind to loopback or
``ipc://`` by default.  Binding anywhere else requires CURVE: the daemon
loads its server keypair from ``zmq.curve_secret_key`` (a
``zmq.auth.create_certificates`` ``.key_secret`` file) and a
``zmq.auth.thread.ThreadAuthenticator`` admits only the clients whose public
keys are the ``.key`` files in ``zmq.curve_clients``.  A client without a
key, or with a key not in that directory, fails the handshake: it receives no
statistics and its control requests never reach the daemon.

An ``ipc://`` socket file is the owner's alone: its directory is made 0700
when the daemon creates it, and the socket file is made 0600 after the bind
(`bind_checked`).  libzmq accepts connections from the bind on, and a peer
connected before the chmod keeps its connection, so a private socket (the
control socket without CURVE) is refused in a directory others may enter
(`daqd.addresses.open_to_others`): the 0700 directory is what keeps them out.

`Security` is the server side (one per `zmq.Context`: libzmq has one ZAP
handler per context) and `ClientSecurity` the client side used by
``daqd stats`` and ``daqd status``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from daqd.addresses import ipc_path, is_local_endpoint, open_to_others
from daqd.errors import UsageProblem

if TYPE_CHECKING:
    from daqd.config import ZmqConfig

log = structlog.get_logger("daqd.zmq")


def check_bind(endpoint: str, security: Security | None) -> None:
    """Refuse to bind a non-local endpoint without CURVE.

    The configuration loader already refuses such configurations; this is
    the same rule enforced where the socket is bound.

    Parameters
    ----------
    endpoint : str
        The endpoint about to be bound.
    security : Security or None
        The server-side CURVE configuration, if any.

    Raises
    ------
    UsageProblem
        When `endpoint` is not local and `security` is None.
    """
    if security is None and not is_local_endpoint(endpoint):
        raise UsageProblem(f"{endpoint}: refusing to bind a non-loopback endpoint without "
                           "CURVE keys (zmq.curve_secret_key)")


def bind_checked(socket: zmq.Socket, endpoint: str, security: Security | None,
                 what: str, private: bool = False) -> str:
    """Apply `security` to a server socket and bind it, or close it and explain.

    Parameters
    ----------
    socket : zmq.Socket
        A new, unbound socket; closed when this raises.
    endpoint : str
        Where to bind.
    security : Security or None
        Server-side CURVE; required for a non-local endpoint.
    what : str
        What the socket is for ("statistics", "control"), for the message.
    private : bool
        Only this user may connect (control): without CURVE, an ``ipc://``
        socket must be in a directory no one else may enter.

    Returns
    -------
    str
        The bound endpoint (with the port chosen for ``tcp://HOST:*``).

    Raises
    ------
    UsageProblem
        When the endpoint is refused (`check_bind`) or cannot be bound.
    """
    try:
        check_bind(endpoint, security)
        if security is not None:
            security.apply(socket)
        path = ipc_path(endpoint)
        if path is not None and path != "*":
            _private_directory(endpoint, os.path.dirname(path) or ".", what,
                               private and security is None)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise UsageProblem(f"{endpoint}: cannot bind the {what} socket: "
                               f"{exc.strerror}") from None
        last = socket.last_endpoint
        assert isinstance(last, bytes)     # LAST_ENDPOINT is a bytes option
        bound = last.decode()
        path = ipc_path(bound)
        if path is not None:
            try:
                os.chmod(path, 0o600)
            except OSError as exc:
                raise UsageProblem(f"{bound}: cannot make the {what} socket private (0600): "
                                   f"{exc.strerror}") from None
    except BaseException:
        socket.close(linger=0)
        raise
    return bound


def _private_directory(endpoint: str, directory: str, what: str, private: bool) -> None:
    """Make the directory of an ipc:// socket 0700 if it is missing.

    `private`: refuse one others may enter (they could connect between the
    bind and the chmod).
    """
    why = open_to_others(directory) if private else None
    if why is not None:
        raise UsageProblem(f"{endpoint}: the {what} socket needs a directory only this user "
                           f"may enter, or CURVE keys: {why}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageProblem(f"{endpoint}: cannot make the directory of the {what} socket: "
                           f"{exc.strerror}") from None


def _load_keypair(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    """Load a zmq.auth certificate; a one-line UsageProblem when it cannot be read."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise UsageProblem(f"{path}: cannot load the {what}: {reason}") from None
    return public, secret


class Security:
    """Server-side CURVE: the daemon's keypair and the authenticator of its clients.

    Parameters
    ----------
    context : zmq.Context
        The context of the server sockets.  Only one `Security` per context,
        for the context's lifetime: libzmq has one ZAP handler per context,
        and its endpoint is released asynchronously after `close`.
    secret_key_file : str or os.PathLike
        The server's ``.key_secret`` file (``zmq.auth.create_certificates``).
    clients_dir : str or os.PathLike
        A directory of the ``.key`` public-key files of the allowed clients.

    Raises
    ------
    UsageProblem
        When a key file or the clients directory cannot be read, or the key
        file has no secret key.
    """

    def __init__(self, context: zmq.Context, secret_key_file: str | os.PathLike[str],
                 clients_dir: str | os.PathLike[str]):
        public, secret = _load_keypair(secret_key_file, "CURVE secret key")
        if secret is None:
            raise UsageProblem(f"{secret_key_file}: expected a secret key file "
                               "(zmq.auth .key_secret), found only a public key")
        self.public_key = public
        self._secret_key = secret
        self.clients_dir = Path(clients_dir)
        self._count_clients()
        self._auth: ThreadAuthenticator | None = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.clients_dir))
        log.info("curve enabled", clients_dir=str(self.clients_dir),
                 clients=len(self._auth.certs.get("*", {})))

    @classmethod
    def from_config(cls, context: zmq.Context, cfg: ZmqConfig) -> Security | None:
        """Build the `Security` a configuration asks for.

        Parameters
        ----------
        context : zmq.Context
            The context of the server sockets.
        cfg : daqd.config.ZmqConfig
            The ``[zmq]`` table.

        Returns
        -------
        Security or None
            None when ``curve_secret_key`` is empty (local endpoints only).

        Raises
        ------
        UsageProblem
            When ``curve_secret_key`` is set without ``curve_clients``, or a
            file or directory cannot be read.
        """
        if not cfg.curve_secret_key:
            return None
        if not cfg.curve_clients:
            raise UsageProblem(f"zmq.curve_clients = {cfg.curve_clients!r}: expected a "
                               "directory of allowed client public keys when "
                               "zmq.curve_secret_key is set")
        return cls(context, cfg.curve_secret_key, cfg.curve_clients)

    def _count_clients(self) -> int:
        if not self.clients_dir.is_dir():
            raise UsageProblem(f"zmq.curve_clients = {str(self.clients_dir)!r}: expected a "
                               "directory of client public keys (.key files)")
        try:
            keys = zmq.auth.load_certificates(self.clients_dir)
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"{self.clients_dir}: cannot load the client keys: "
                               f"{str(exc).splitlines()[0]}") from None
        if not keys:
            log.warning("no curve client keys: no client can connect",
                        clients_dir=str(self.clients_dir))
        return len(keys)

    def reload_clients(self) -> int:
        """Re-read the clients directory (e.g. on SIGHUP); the number of keys allowed."""
        count = self._count_clients()
        if self._auth is not None:
            self._auth.configure_curve(domain="*", location=str(self.clients_dir))
        return count

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server with the daemon's keypair; call before bind."""
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True

    def close(self) -> None:
        """Stop the authenticator thread; idempotent.  Close the sockets first."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> Security:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ClientSecurity:
    """Client-side CURVE: a client keypair and the daemon's public key.

    Parameters
    ----------
    public_key, secret_key : bytes
        The client's Z85-encoded keypair.
    server_key : bytes
        The daemon's Z85-encoded public key.
    """

    def __init__(self, public_key: bytes, secret_key: bytes, server_key: bytes):
        self.public_key = public_key
        self._secret_key = secret_key
        self.server_key = server_key

    @classmethod
    def from_files(cls, client_secret_key_file: str | os.PathLike[str],
                   server_key_file: str | os.PathLike[str]) -> ClientSecurity:
        """Load a client keypair and the daemon's public key from zmq.auth key files.

        Parameters
        ----------
        client_secret_key_file : str or os.PathLike
            The client's ``.key_secret`` file; its public ``.key`` must be in
            the daemon's ``zmq.curve_clients`` directory.
        server_key_file : str or os.PathLike
            The daemon's public ``.key`` file (its ``.key_secret`` works too).

        Returns
        -------
        ClientSecurity

        Raises
        ------
        UsageProblem
            When a file cannot be read or the client file has no secret key.
        """
        public, secret = _load_keypair(client_secret_key_file, "CURVE client secret key")
        if secret is None:
            raise UsageProblem(f"{client_secret_key_file}: expected a secret key file "
                               "(zmq.auth .key_secret), found only a public key")
        server_public, _ = _load_keypair(server_key_file, "daemon's CURVE public key")
        return cls(public, secret, server_public)

    @classmethod
    def choose(cls, cfg: ZmqConfig | None, secret_key_file: str | None = None,
               server_key_file: str | None = None) -> ClientSecurity | None:
        """Choose a command-line client's CURVE keys: its options, else the ``[zmq]`` keys.

        Parameters
        ----------
        cfg : daqd.config.ZmqConfig or None
            The ``[zmq]`` table of ``--config``, if one was given.
        secret_key_file : str, optional
            ``--curve-secret-key``: the client's ``.key_secret`` file; else
            ``zmq.curve_client_secret_key``.
        server_key_file : str, optional
            ``--curve-server-key``: the daemon's public ``.key`` file; else
            ``zmq.curve_server_key``, else the public half of the daemon's own
            ``zmq.curve_secret_key`` (a client running as the daemon's user).

        Returns
        -------
        ClientSecurity or None
            None when no client secret key is given anywhere (no CURVE).

        Raises
        ------
        UsageProblem
            A server key without a client key, no server key to be found, or
            a key file that cannot be read.
        """
        secret = secret_key_file or (cfg.curve_client_secret_key if cfg is not None else "")
        server = server_key_file or (cfg.curve_server_key or cfg.curve_secret_key
                                     if cfg is not None else "")
        if not secret:
            if server_key_file:
                raise UsageProblem(f"--curve-server-key {server_key_file}: expected "
                                   "--curve-secret-key (or zmq.curve_client_secret_key) too")
            return None
        if not server:
            raise UsageProblem(f"{secret}: a CURVE client key needs the daemon's public key: "
                               "expected --curve-server-key (or zmq.curve_server_key)")
        return cls.from_files(secret, server)

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client of the daemon; call before connect."""
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self.public_key
        socket.curve_serverkey = self.server_key
