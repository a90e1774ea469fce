"""Running the real ``daqd`` command in tests, and checking its one-line errors."""

from __future__ import annotations

import subprocess
import sys

TIMEOUT = 60


def daqd(*args: str, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daqd", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, name: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("daqd: error:"), lines[0]
    assert name in lines[0], lines[0]
    assert proc.stdout == ""
