"""The package's layers (docs/dev-layout.md), as the import-linter contract in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contract_holds():
    """`lint-imports`: layers kept, no benchmark code under the daemon, no import circles."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_daemon_imports_no_benchmark_code():
    """What `daqd run` imports holds neither daqd's benchmarks nor spead2."""
    code = ("import sys, daqd.cli; from daqd.service import daemon; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('daqd', 'spead2')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    assert "daqd.service.daemon" in loaded
    assert not [m for m in loaded if m.startswith(("daqd.tools", "daqd._spead2compat", "spead2"))]
