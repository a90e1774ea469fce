"""``explicit_start``: the real daemon binds its sources and takes no packet until the
``start-receiving`` control request (or ``daqd start-receiving``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import (
    W1Sender,
    chunk_daemon,
    control,
    control_endpoint,
    wait_until,
)

pytestmark = pytest.mark.network


def stream_status(endpoint: str) -> dict:
    return control(endpoint, {"command": "status"})["streams"]["adc0"]


def test_packets_wait_for_start_receiving(tmp_path):
    endpoint = control_endpoint(tmp_path)
    with chunk_daemon(tmp_path, stream_keys={"explicit_start": True}) as (daemon, _, port):
        sender = W1Sender(port, heaps=64)
        try:
            sender.send(16)                     # into the bound socket's buffer
            status = stream_status(endpoint)
            assert status["waiting_for_start"] is True
            assert status["counters"]["packets"] == 0
            # A wrong argument: one line, the daemon goes on waiting.
            reply = control(endpoint, {"command": "start-receiving", "stream": "nope"})
            assert reply["ok"] is False and "unknown stream 'nope'" in reply["error"]
            assert stream_status(endpoint)["waiting_for_start"] is True
            refused = daqd("start-receiving", "--config", str(daemon.config_path),
                           "--stream", "nope")
            assert refused.returncode == 1 and "Traceback" not in refused.stderr
            assert refused.stderr.strip().splitlines() == [
                "daqd: error: start-receiving: stream: unknown stream 'nope'; streams: adc0"]

            proc = daqd("start-receiving", "--config", str(daemon.config_path))
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "adc0: started"
            # What waited in the socket is taken, and what comes after it.
            wait_until(lambda: stream_status(endpoint)["counters"]["packets"] == 16,
                       what="the 16 waiting packets taken")
            sender.send(16)
            wait_until(lambda: stream_status(endpoint)["counters"]["packets"] == 32,
                       what="32 packets taken")
            assert stream_status(endpoint)["waiting_for_start"] is False
            again = control(endpoint, {"command": "start-receiving"})
            assert again["ok"] is True and again["started"] == {"adc0": False}
        finally:
            sender.close()
        assert daemon.stop() == 0


def test_a_daemon_never_started_stops_cleanly(tmp_path):
    endpoint = control_endpoint(tmp_path)
    with chunk_daemon(tmp_path, stream_keys={"explicit_start": True}) as (daemon, _, port):
        sender = W1Sender(port, heaps=8)
        sender.send(8)
        sender.close()
        assert stream_status(endpoint)["counters"]["packets"] == 0
        assert daemon.stop() == 0
