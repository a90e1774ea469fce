"""The CURVE key options of every client command (``status``, ``stats``, ``stop``, ``top``).

One definition of the two options and of how a client's keys are chosen: the
options, else the configuration's ``[zmq]`` client keys (`ClientSecurity.choose`).
"""

from __future__ import annotations

from typing import Any

import click

from daqd.service.zmq_security import ClientSecurity

__all__ = ["client_security", "curve_options"]


def curve_options(command: Any) -> Any:
    """``--curve-secret-key`` and ``--curve-server-key``: a client of a daemon with CURVE."""
    command = click.option(
        "--curve-server-key", "curve_server_key", type=click.Path(dir_okay=False),
        default=None, help="The daemon's public key file (default: zmq.curve_server_key, "
        "else the public half of zmq.curve_secret_key).")(command)
    return click.option(
        "--curve-secret-key", "curve_secret_key", type=click.Path(dir_okay=False),
        default=None, help="This client's CURVE secret key file, as `daqd keygen` writes it "
        "(default: the configuration's zmq.curve_client_secret_key).")(command)


def client_security(cfg: Any, secret_key: str | None, server_key: str | None
                    ) -> ClientSecurity | None:
    """Choose a client's CURVE keys: the options, else the configuration's (or None)."""
    return ClientSecurity.choose(cfg.zmq if cfg is not None else None, secret_key, server_key)
