"""Incomplete heaps' ``payload_ranges``, against spead2 4.5.1.

spead2 keeps them with ``RingStreamConfig(contiguous_only=False,
incomplete_keep_payload_ranges=True)``; daqd's ``HeapStream`` gives every
incomplete heap its ranges (``Heap.payload_ranges``) and ``daqd dump
--incomplete`` prints them.  The same packets (heaps with packets lost,
reordered, repeated; evicted and flushed; in order and out of order) go to
both and every heap must agree: cnt, received, length and ranges.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import spead2
import spead2.recv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spead2_helpers as h
import spead_packets as sp
from cli_helpers import daqd
from lossy_heaps import spead2_incomplete, workload

from daqd import _spead


def daqd_incomplete(packets: list[bytes], allow_out_of_order: bool) -> list[dict]:
    stream = _spead.HeapStream(max_heaps=3, allow_out_of_order=allow_out_of_order)
    out = []
    for x in stream.add_packets(packets) + stream.flush():
        if x.complete:
            assert x.payload_ranges is None
            out.append({"cnt": x.cnt, "complete": True})
        else:
            out.append({"cnt": x.cnt, "received": x.received, "length": x.length,
                        "payload_ranges": [list(r) for r in x.payload_ranges]})
    return out


@pytest.mark.parametrize("allow_out_of_order", [False, True])
def test_payload_ranges_equal_spead2(allow_out_of_order):
    packets = workload()
    ours = daqd_incomplete(packets, allow_out_of_order)
    assert ours == spead2_incomplete(packets, allow_out_of_order)
    ranges = {r["cnt"]: r["payload_ranges"] for r in ours if "payload_ranges" in r}
    if allow_out_of_order:
        assert ranges[1] == [[0, 200], [300, 500]] and ranges[2] == [[0, 64], [128, 192],
                                                                    [256, 320]]
    else:
        assert ranges[1] == [[0, 200]] and ranges[2] == [[0, 64]] and 3 not in ranges


def test_dump_incomplete_prints_them(tmp_path):
    packets = workload()
    path = tmp_path / "lossy.spead"
    path.write_bytes(b"".join(packets))
    proc = daqd("dump", f"file:{path}", "--incomplete", "--allow-out-of-order",
                "--max-heaps", "3")
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = spead2_incomplete(packets, True)
    assert [{k: r[k] for k in ("cnt", "received", "length", "payload_ranges")}
            if not r["complete"] else {"cnt": r["cnt"], "complete": True}
            for r in printed] == expected


@pytest.mark.parametrize("allow_out_of_order", [False, True])
@pytest.mark.parametrize("contiguous_only", [True, False])
def test_contiguous_only_hands_out_what_spead2_does(contiguous_only, allow_out_of_order):
    packets = workload()
    stream = spead2.recv.Stream(
        h.THREAD_POOL,
        spead2.recv.StreamConfig(max_heaps=3, allow_out_of_order=allow_out_of_order),
        spead2.recv.RingStreamConfig(contiguous_only=contiguous_only))
    stream.add_inproc_reader(sp.inproc_queue(spead2, packets))
    theirs = h.collect_spead2(stream)
    stats = {n: stream.stats[n] for n in ("heaps", "incomplete_heaps_evicted",
                                          "incomplete_heaps_flushed")}
    ours = _spead.HeapStream(max_heaps=3, allow_out_of_order=allow_out_of_order,
                             contiguous_only=contiguous_only)
    got = [h.daqd_record(x) for x in ours.add_packets(packets) + ours.flush()]
    assert got == theirs
    assert any(not r["complete"] for r in got) is not contiguous_only
    assert {n: ours.stats()[n] for n in stats} == stats
