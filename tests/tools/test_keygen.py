"""``daqd keygen DIR``: a CURVE key pair, the secret 0600 and a directory made 0700."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import assert_one_line_error, daqd


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_private_pair_even_under_a_permissive_umask(tmp_path):
    directory = tmp_path / "made" / "keys"
    proc = daqd("keygen", str(directory), "--name", "ops", preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    public, secret = directory / "ops.key", directory / "ops.key_secret"
    assert proc.stdout.splitlines() == [f"public key: {public}", f"secret key: {secret}"]
    assert mode(directory) == 0o700
    assert mode(secret) == 0o600
    assert mode(public) == 0o644
    public_key, secret_key = zmq.auth.load_certificate(secret)
    assert secret_key is not None and len(secret_key) == 40
    assert zmq.auth.load_certificate(public) == (public_key, None)


def test_keygen_leaves_an_existing_directory_and_never_overwrites(tmp_path):
    tmp_path.chmod(0o755)
    assert daqd("keygen", str(tmp_path)).returncode == 0          # default name: daqd
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "daqd.key_secret") == 0o600
    before = (tmp_path / "daqd.key_secret").read_bytes()
    proc = daqd("keygen", str(tmp_path))
    assert_one_line_error(proc, "exists; not overwriting")
    assert (tmp_path / "daqd.key_secret").read_bytes() == before
