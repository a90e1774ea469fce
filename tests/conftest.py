"""Fixtures shared by several test files."""

import io
import json
import shutil
import tempfile

import pytest
import zmq

from daqd import logs


@pytest.fixture
def ctx():
    """A ZeroMQ context, destroyed without lingering after the test."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def ipc_dir():
    """A short directory for ipc:// endpoints (their paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="daqd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def json_logs():
    """Collect log events as parsed JSON objects."""
    stream = io.StringIO()
    logs.configure_logging("json", "debug", stream, cache_loggers=False)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.reset_logging()
