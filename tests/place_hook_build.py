"""examples/place_hook built as its README says, for the tests that load it by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "place_hook"


def build_example_hook(work: Path) -> Path:
    """Build ``frequency_place`` in a scratch copy under `work` (``python setup.py
    build_ext --inplace``); return the directory to put on the import path."""
    for name in ("frequency_place.pyx", "setup.py"):
        shutil.copy(EXAMPLE / name, work / name)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=work,
                   check=True, capture_output=True, timeout=300)
    return work
