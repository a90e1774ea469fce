"""Network addresses a person writes in the configuration: HOST:PORT and ZeroMQ endpoints.

One reading of each, used where the configuration is checked and where the
sockets are bound.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT`` for IPv6) into host and port.

    Parameters
    ----------
    address
        The address; HOST is an IP address or a host name, PORT 0-65535.

    Returns
    -------
    tuple of (str, int)
        The host (IPv6 without brackets) and the port.

    Raises
    ------
    ValueError
        Not of that form.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("HOST:PORT with PORT 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError("an IPv6 host needs brackets: [ADDRESS]:PORT")
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
        raise ValueError("a host name or IP address")
    return host, int(port)


def is_local_endpoint(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint can only be reached from this machine.

    Parameters
    ----------
    endpoint : str
        A ZeroMQ endpoint such as ``tcp://127.0.0.1:5556`` or ``ipc:///run/daqd.sock``.

    Returns
    -------
    bool
        True for ``ipc://``, ``inproc://`` and ``tcp://`` on a loopback address
        (``127.0.0.0/8``, ``localhost``, ``[::1]``); False otherwise, including
        wildcard binds (``tcp://*:5556``, ``tcp://0.0.0.0:5556``).
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ipc_path(endpoint: str) -> str | None:
    """Return the socket file of an ``ipc://`` endpoint.

    Parameters
    ----------
    endpoint : str
        A ZeroMQ endpoint.

    Returns
    -------
    str or None
        The path after ``ipc://`` (relative paths stay relative; ``*`` is
        libzmq's "a new file of its choosing"); None for other transports and
        for Linux abstract sockets (``ipc://@name``), which have no file.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return endpoint[len("ipc://"):]


def open_to_others(directory: str) -> str | None:
    """Say why other users could reach a socket file in `directory`, or None.

    A socket file is made 0600 only after libzmq has bound it, and a peer that
    connects in between keeps its connection: so a control socket is private
    only in a directory no one else may enter (0700, owned by this user).  A
    missing directory is fine: the daemon makes it 0700.
    """
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    if info.st_uid != os.geteuid():
        return f"{directory} belongs to another user (uid {info.st_uid})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"{directory} is mode {mode:04o}: other users may enter it"
    return None
