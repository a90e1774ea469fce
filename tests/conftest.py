"""Fixtures shared by the ZeroMQ tests."""

import shutil
import tempfile

import pytest
import zmq


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
