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
    # The one beside this interpreter (the venv's), whether or not the venv is active.
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
        shutil.which("lint-imports")
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


def test_the_service_names_no_other_layers_keys_nor_item_ids():
    """daqd/service passes sections to the layers' builders; it reads no key of theirs.

    Section names (``buffer``, ``sinks``, ``chunk``) and a stream's ``name`` may
    appear: they are the structure, not a setting.  A SPEAD item id would be a
    hexadecimal literal.
    """
    import dataclasses
    import re

    from daqd import config

    keys = {f.name for cls in (config.StreamConfig, config.ChunkConfig, config.BufferConfig,
                                config.SinkConfig, config.SimulateConfig, config.TriggerConfig,
                                config.ProcessConfig)
            for f in dataclasses.fields(cls)}
    # Section names and a stream's name are structure; `stop`, `path`, `kind` and
    # `sources` are also the names of methods and attributes of other objects;
    # `threads` also that of the module daqd.service.threads (and of a runner's
    # list of threads).
    structure = {"name", "sources", "chunk", "buffer", "sinks", "time", "trigger", "process",
                 "stop", "path", "kind", "threads"}
    found = []
    for path in sorted((ROOT / "daqd" / "service").glob("*.py")):
        text = path.read_text()
        for key in sorted(keys - structure):
            found += [f"{path.name}: .{key}" for _ in re.finditer(rf"\.{key}\b", text)]
        found += [f"{path.name}: {m.group()}" for m in re.finditer(r"\b0x[0-9a-fA-F]+\b", text)]
    assert found == []
