"""The packages of ``examples/`` installed as a user would, with pip (tests only).

Each goes into a directory of its own (``pip install --target``), put on the
``PYTHONPATH`` of the daqd processes that should see it: nothing shared
changes, and it is gone with the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from daemon_helpers import REPO

EXAMPLES = REPO / "examples"


def install_example(name: str, tmp: Path) -> Path:
    """Pip-install ``examples/NAME`` into ``tmp/site``; return that directory."""
    source = tmp / "src"
    shutil.copytree(EXAMPLES / name, source)    # the build leaves its files beside the source
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, timeout=120)
    return target


def with_site(site: Path) -> dict[str, str]:
    """The environment of a daqd process that sees the packages installed in `site`."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(site)) if p)}
