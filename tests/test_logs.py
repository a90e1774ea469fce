"""Structured logs: JSON lines on pipes, console lines on terminals, stdlib records alike."""

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import warnings
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from daqd import logs

WAIT = 10.0          # upper bound of every wait; never a speed requirement

EMITTER = textwrap.dedent("""
    import logging, sys
    import structlog
    from daqd.logs import configure_logging
    fmt = None if sys.argv[1] == "auto" else sys.argv[1]
    configure_logging(fmt, "info", daemon="dq")
    structlog.get_logger("daqd.test").info("hello", answer=42)
    structlog.get_logger("daqd.test").debug("below the level")
    logging.getLogger("somelib").warning("from %s", "stdlib")
""")

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def emit_on_pipe(log_format, env=None):
    done = subprocess.run([sys.executable, "-c", EMITTER, log_format], capture_output=True,
                          text=True, timeout=WAIT, env=env)
    assert done.returncode == 0, done.stderr
    return done.stderr


def emit_on_pty(log_format, env=None):
    """Run EMITTER with its stderr (and stdout) on a real pseudo-terminal."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", EMITTER, log_format], stdin=secondary,
                            stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], WAIT)
            assert ready, "the process wrote nothing for too long"
            try:
                data = os.read(primary, 4096)
            except OSError:             # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
        assert proc.wait(WAIT) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def parse_json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_recent_utc(timestamp):
    when = datetime.fromisoformat(timestamp)
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(hours=1)


@pytest.fixture
def capture():
    """configure_logging into a StringIO; yields a function returning the parsed lines."""
    stream = io.StringIO()

    def configure(log_format="json", log_level="debug", **kwargs):
        chosen = logs.configure_logging(log_format, log_level, stream, **kwargs)
        return chosen

    configure.stream = stream
    configure.lines = lambda: parse_json_lines(stream.getvalue())
    configure.text = stream.getvalue
    yield configure
    logs.reset_logging()


def test_on_a_pipe_auto_gives_json_lines_with_every_field():
    events = parse_json_lines(emit_on_pipe("auto"))
    assert [e["event"] for e in events] == ["hello", "from stdlib"]
    hello, stdlib = events
    assert hello["level"] == "info" and hello["logger"] == "daqd.test"
    assert hello["answer"] == 42 and hello["daemon"] == "dq"
    assert stdlib["level"] == "warning" and stdlib["logger"] == "somelib"
    assert stdlib["daemon"] == "dq"
    for event in events:
        assert_recent_utc(event["timestamp"])
        assert list(event)[:4] == ["timestamp", "level", "logger", "event"]


def test_on_a_terminal_auto_gives_console_lines():
    text = ANSI.sub("", emit_on_pty("auto"))
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 2, text
    hello, stdlib = lines
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info\s*\] hello", hello), hello
    assert "answer=42" in hello and "daemon=dq" in hello and "[daqd.test]" in hello
    assert re.search(r"\[warning\s*\] from stdlib", stdlib) and "[somelib]" in stdlib


def test_an_inherited_journal_stream_does_not_turn_a_terminal_to_json():
    env = {**os.environ, "JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0" * 32}
    text = ANSI.sub("", emit_on_pty("auto", env))
    assert "hello" in text and '"event"' not in text


def test_an_explicit_format_wins_over_the_terminal():
    events = parse_json_lines(ANSI.sub("", emit_on_pty("json")))
    assert [e["event"] for e in events] == ["hello", "from stdlib"]


def test_the_journal_named_by_journal_stream_gets_json(monkeypatch):
    primary, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            st = os.fstat(secondary)
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            assert logs.choose_format(None, terminal) == "json"
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
            assert logs.choose_format(None, terminal) == "console"
            assert logs.choose_format("auto", terminal) == "console"
            assert logs.choose_format("json", terminal) == "json"
    finally:
        os.close(primary)
        os.close(secondary)
    assert logs.choose_format("", io.StringIO()) == "json"
    assert logs.choose_format("console", io.StringIO()) == "console"


def test_level_filtering_applies_to_structlog_and_stdlib_and_changes_at_run_time(capture):
    capture("json", "warning")
    log = structlog.get_logger("daqd.daemon")
    lib = logging.getLogger("somelib")
    log.info("hidden")
    lib.info("hidden too")
    log.warning("shown", k=1)
    lib.error("shown too")
    assert [(e["event"], e["level"]) for e in capture.lines()] == [
        ("shown", "warning"), ("shown too", "error")]
    logs.set_log_level("debug")       # e.g. on SIGHUP; `log` is cached by now
    log.debug("now shown")
    lib.debug("now shown too")
    assert [e["event"] for e in capture.lines()][2:] == ["now shown", "now shown too"]


def test_reconfiguring_switches_format_for_cached_loggers(capture):
    capture("json", "info", daemon="first")
    log = structlog.get_logger("daqd.daemon")
    log.info("one")
    capture("console", "info", daemon="second")
    log.info("two")
    first, second = capture.text().splitlines()
    assert json.loads(first)["daemon"] == "first"
    assert "two" in second and "daemon=second" in second and not second.startswith("{")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is capture.stream]
    assert len(ours) == 1                 # replaced, not stacked: no line is written twice


def test_library_warnings_and_extras_come_through_the_pipeline(capture):
    capture("json", "info")
    logging.getLogger("zmq.auth").warning("denied %s", "client", extra={"peer": "10.0.0.1"})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    denied, warned = capture.lines()
    assert denied["event"] == "denied client" and denied["peer"] == "10.0.0.1"
    assert denied["logger"] == "zmq.auth"
    assert warned["logger"] == "py.warnings" and "deprecated thing" in warned["event"]


def test_exceptions_are_structured_without_local_variables(capture):
    capture("json", "info")
    secret = "hunter2"  # noqa: F841 - a local that must not reach the logs
    try:
        raise ValueError("bad value")
    except ValueError:
        structlog.get_logger("daqd.daemon").exception("failed", stream="adc0")
    (event,) = capture.lines()
    assert event["level"] == "error" and event["stream"] == "adc0"
    (exc,) = event["exception"]
    assert exc["exc_type"] == "ValueError" and exc["exc_value"] == "bad value"
    assert "hunter2" not in capture.text()


@pytest.mark.parametrize("log_format, log_level", [("xml", "info"), ("json", "loud")])
def test_unknown_format_or_level_is_refused(capture, log_format, log_level):
    with pytest.raises(ValueError, match=log_format if log_format == "xml" else log_level):
        capture(log_format, log_level)
