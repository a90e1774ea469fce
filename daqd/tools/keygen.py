"""``daqd keygen``: a CURVE key pair for the ZeroMQ sockets, written privately.

pyzmq's ``zmq.auth.create_certificates`` writes the pair (``NAME.key``, the
public key, and ``NAME.key_secret``); it opens them with the process's umask,
so they are written here under umask 077: the secret key is never readable
by others, not even for a moment.  The public key is then made 0644, and a
directory made for them 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import zmq.auth

from daqd.errors import UsageProblem


def keygen(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write the key pair `name` in `directory`; returns (public, secret) paths.

    Raises
    ------
    UsageProblem
        When a file of the pair exists already (it is never overwritten) or
        the directory cannot be made or written.
    """
    directory = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise UsageProblem(f"--name {name!r}: expected a file name without '/'")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise UsageProblem(f"{path}: exists; not overwriting a key (remove it or choose "
                               "another --name)")
    old_umask = os.umask(0o077)
    try:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True)
            directory.chmod(0o700)
        made_public, made_secret = zmq.auth.create_certificates(directory, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
    except OSError as exc:
        raise UsageProblem(f"{exc.filename or directory}: cannot write the key pair: "
                           f"{exc.strerror}") from None
    finally:
        os.umask(old_umask)
    return Path(made_public), Path(made_secret)


@click.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="daqd", show_default=True,
              help="The files' name: NAME.key (public) and NAME.key_secret.")
def command(directory: str, name: str) -> None:
    """Write a CURVE key pair for daqd's ZeroMQ sockets into DIRECTORY.

    The secret key file is 0600 and a directory made for it 0700.  For the
    daemon: zmq.curve_secret_key = NAME.key_secret.  For a client: its
    NAME.key goes into the daemon's zmq.curve_clients directory, and
    `daqd status/stats/stop --curve-secret-key NAME.key_secret
    --curve-server-key SERVER.key` reach the daemon.
    """
    public, secret = keygen(directory, name)
    click.echo(f"public key: {public}")
    click.echo(f"secret key: {secret}")
