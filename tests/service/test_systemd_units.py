"""The unit files in systemd/: systemd-analyze verify accepts them, and they say what daqd needs."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
PLACEHOLDER = "/opt/daqd/bin/daqd"          # ExecStart in the shipped units
INSTALL_TIMEOUT = 600


def _install_systemd():
    """Install Debian's systemd package (for systemd-analyze); a reason string if impossible."""
    if os.geteuid() != 0:
        return "not root, so systemd cannot be installed"
    if shutil.which("apt-get") is None:
        return "no apt-get to install systemd with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]
    for commands in ([install], [["apt-get", "update"], install]):
        try:
            if all(subprocess.run(c, env=env, capture_output=True,
                                  timeout=INSTALL_TIMEOUT).returncode == 0 for c in commands):
                break
        except subprocess.TimeoutExpired:
            return "installing systemd took too long"
    if shutil.which("systemd-analyze") is None:
        return "apt-get could not install systemd"
    return None


@pytest.fixture(scope="session")
def systemd_analyze():
    """The systemd-analyze program, installed on the spot on a fresh Debian CI machine."""
    if shutil.which("systemd-analyze") is None:
        reason = _install_systemd()
        if reason:
            pytest.skip(f"systemd-analyze is missing and {reason}")
    return shutil.which("systemd-analyze")


@pytest.fixture(scope="session")
def daqd_program():
    """The installed daqd script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "daqd"
    found = str(beside) if beside.exists() else shutil.which("daqd")
    if found is None:
        pytest.fail("the daqd script is not installed (pip install -e .)")
    return found


def directives(path):
    """{(section, key): [values]} of a unit file (continuation lines are not used in ours)."""
    out, section = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key), []).append(value)
    return out


@pytest.mark.parametrize("unit, name", [("daqd.service", "daqd.service"),
                                        ("daqd@.service", "daqd@adc0.service")])
def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze, daqd_program, tmp_path,
                                                 unit, name):
    text = (UNITS / unit).read_text()
    assert PLACEHOLDER in text
    (tmp_path / unit).write_text(text.replace(PLACEHOLDER, daqd_program))
    done = subprocess.run([systemd_analyze, "verify", "--man=no", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    # verify exits 0 on warnings such as an unknown key; those count as failures here
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "daqd" in line]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr


@pytest.mark.parametrize("unit", ["daqd.service", "daqd@.service"])
def test_the_unit_runs_daqd_as_a_notify_service_with_watchdog_and_drain(unit):
    d = directives(UNITS / unit)
    service = {key: values[-1] for (section, key), values in d.items() if section == "Service"}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert re.fullmatch(r"\S+/daqd run --config /etc/daqd/\S+\.toml --log-format json",
                        service["ExecStart"])
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()   # a bad config stays down
    assert re.fullmatch(r"\d+s", service["WatchdogSec"])
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 60
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    # the control socket and the pidfile: a runtime directory only the daqd user may enter
    assert service["RuntimeDirectoryMode"] == "0700"
    if unit == "daqd@.service":
        assert " --config /etc/daqd/%i.toml " in service["ExecStart"]
        assert service["StateDirectory"] == "daqd/%i"
        assert service["RuntimeDirectory"] == "daqd/%i"


def test_the_template_differs_from_the_single_unit_only_by_instance():
    single, template = directives(UNITS / "daqd.service"), directives(UNITS / "daqd@.service")
    assert single.keys() == template.keys()
    differing = {key for key in single if single[key] != template[key]}
    assert differing == {("Unit", "Description"), ("Service", "ExecStart"),
                         ("Service", "StateDirectory"), ("Service", "RuntimeDirectory"),
                         ("Service", "WorkingDirectory")}
    for key in differing:
        assert all("%i" in value for value in template[key])


@pytest.mark.parametrize("unit", ["daqd.service", "daqd@.service"])
def test_the_command_line_the_units_run_exists(unit):
    """Each unit's ExecStart parses as a daqd command line: the command, every option and
    every choice exist (click parses it as the installed script would, without running)."""
    import click

    from daqd.cli import cli

    (exec_start,) = directives(UNITS / unit)[("Service", "ExecStart")]
    program, *argv = shlex.split(exec_start)
    assert program == PLACEHOLDER
    with click.Context(cli) as group:
        command = cli.get_command(group, argv[0])
    assert command is not None, f"{unit}: daqd has no command {argv[0]!r}"
    with command.make_context(argv[0], argv[1:]) as ctx:
        assert ctx.params["config_path"].startswith("/etc/daqd/")
        assert ctx.params["log_format"] == "json"
