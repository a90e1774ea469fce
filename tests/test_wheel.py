"""A wheel built from the repository runs as the editable install does.

``pip wheel .`` (an isolated build, as a user's), installed into a fresh
virtual environment, then ``daqd run --duration 3`` from an empty directory
with no ``--config``: every sub-package must be in the wheel, and the
built-in configuration read from package data, not from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A fresh venv with daqd installed from a wheel built from the repository."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # A copy of the sources, without build products a stale build/ could slip in.
    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "*.so", "*.c", "*.html", "__pycache__",
        "data", "run", ".hypothesis", ".pytest_cache"))
    (source / "daqd" / "data").symlink_to("../config")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(root / "dist"), str(source)],
                           capture_output=True, text=True, timeout=900, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list((root / "dist").glob("daqd-*.whl"))
    assert len(wheels) == 1
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels[0])],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "venv" / "bin", wheels[0], env


def test_wheel_holds_every_package_and_the_default_configuration(installed_wheel):
    _, wheel, _ = installed_wheel
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "daqd").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    assert "daqd/data/daqd.toml" in names
    assert "daqd/data/grafana/daqd.json" in names          # the Grafana dashboard
    assert "daqd/include/daqd_place.h" in names
    # the compiled modules' stubs and the PEP 561 marker (mypy sees daqd's types)
    assert {"daqd/_spead.pyi", "daqd/_spead2compat.pyi", "daqd/py.typed"} <= names
    assert any(n.startswith("daqd/_spead.") and n.endswith(".so") for n in names)


@pytest.mark.network
def test_wheel_runs_the_built_in_configuration_from_anywhere(installed_wheel, tmp_path):
    bin_dir, _, env = installed_wheel
    run = subprocess.run([str(bin_dir / "daqd"), "run", "--duration", "3",
                          "--log-format", "json"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"event": "ready"' in run.stderr and '"event": "stopped"' in run.stderr
    written = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert any(n.endswith(".bin") for n in written) and any(n.endswith(".txt") for n in written)
    where = subprocess.run([str(bin_dir / "python"), "-c", "import daqd; print(daqd.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True, env=env)
    assert str(REPO) not in where.stdout        # the wheel's copy, not the source tree
