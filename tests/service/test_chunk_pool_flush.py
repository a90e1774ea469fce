"""A chunk-mode buffer never starves the receive side of chunks.

Completed chunk records hold pool chunks until a sink has written them.  With
the library's defaults (``pool = 16``, ``max_chunks = 4``, ``flush_count =
16``) the buffer could hold at most 12 chunks, so a count flush never came and
a fast ``file:`` replay ran out of chunks: 18 of 128 chunks (1152 heaps) were
counted as ``chunk_heaps_no_free_chunk``.  The buffer now also flushes when it
holds what the pool can spare, and the last log line names every loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli_helpers import daqd
from daemon_helpers import toml_table, write_config

HEAPS = 8192                     # 128 chunks of the default 64 heaps


@pytest.mark.parametrize("flush_count", [None, 0])
def test_a_file_replay_with_the_default_pool_writes_every_chunk(tmp_path, flush_count):
    made = daqd("simulate", f"file:{tmp_path}/w1.spead", "--heaps", str(HEAPS),
                "--progress", "off")
    assert made.returncode == 0, made.stderr
    buffer = {} if flush_count is None else {"flush_count": flush_count,
                                             "flush_interval": 3600}
    text = (toml_table("daemon", name="pool", pidfile=f"{tmp_path}/run/daqd.pid")
            + toml_table("zmq", stats="", control="")
            + f'[[stream]]\nname = "s"\nsources = ["file:{tmp_path}/w1.spead"]\n'
            + "[stream.chunk]\n"             # every chunk key at its default
            + (toml_table("stream.buffer", **buffer) if buffer else "")
            + f'[[stream.sinks]]\nkind = "binary"\npath = "{tmp_path}/data/{{stream}}.bin"\n')
    ran = daqd("run", "--config", str(write_config(tmp_path, text)), "--log-format", "json")
    assert ran.returncode == 0, ran.stderr
    last = json.loads(ran.stderr.strip().splitlines()[-1])
    assert last["event"] == "stopped"
    figures = last["s"]
    assert figures["lost"] == {}, figures
    assert figures["heaps"] == HEAPS
    assert figures["chunks_completed"] == figures["records_flushed"] == HEAPS // 64
    # The last line also says how long the sink spent writing (its share of the run).
    (seconds,) = figures["write_seconds"].values()
    assert seconds > 0
