"""process() with a budget: batch after batch in one call, back early when the caller has work.

The daemon's receive thread calls ``stream.process(reader, budget)`` so that it
takes the GIL about once per budget rather than once per batch (issue 16).  A
call goes on while the reader has packets and the budget lasts, and returns
after the batch that left its caller something: ready heaps (heap mode),
descriptor heaps (chunk mode), a stop heap, a packet tap half full.  The
budgets here are long (10 s), so each case ends by one of those conditions or
the reader's end, never by the clock; the packets and counters must be those
of one batch per call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.test_chunk_descriptors import descriptor_bytes
from spead2_helpers import split_packets
from spead_packets import sim_packets, stop_heap

from daqd import _spead
from daqd.recv.workloads import WORKLOADS

BUDGET = 10.0
BATCH = 64
HPC = 16


def chunk_stream() -> _spead.ChunkStream:
    return _spead.ChunkStream(**WORKLOADS["W2"].layout(HPC), max_chunks=4, pool=64,
                              max_heaps=8)


def reader(packets: list[bytes]) -> _spead.ByteStreamReader:
    return _spead.ByteStreamReader(b"".join(packets), batch=BATCH)


def drain(stream, r, budget: float = 0.0) -> tuple[list[int], dict[str, int]]:
    """process() until the reader ends; what each call consumed, and the counters."""
    used = []
    while (rc := stream.process(r, budget)) >= 0:
        used.append(rc)
    return used, stream.stats()


def test_a_budget_takes_batch_after_batch_in_one_call():
    packets = sim_packets("W2", 10 * BATCH + 5)
    one, one_stats = drain(chunk_stream(), reader(packets))
    assert max(one) == BATCH and sum(one) == len(packets)
    many, many_stats = drain(chunk_stream(), reader(packets), BUDGET)
    assert many[0] == len(packets)                  # every batch in the first call
    assert one_stats == many_stats                  # the same batches, the same counters
    assert many_stats["batches"] == 11 and many_stats["heaps"] == len(packets)


def test_heap_mode_returns_after_the_batch_that_made_ready_heaps():
    packets = sim_packets("W2", 4 * BATCH)
    one_batch = _spead.HeapStream(max_heaps=8).process(reader(packets))
    stream = _spead.HeapStream(max_heaps=8)
    r = reader(packets)
    assert stream.process(r, BUDGET) == one_batch   # heaps ready: the caller pops them
    assert len(stream.pop_ready()) == one_batch
    assert stream.process(r, BUDGET) == BATCH - one_batch      # the rest of the batch


def test_a_descriptor_heap_ends_the_call_after_its_batch():
    w2 = sim_packets("W2", 4 * BATCH)
    desc = split_packets(descriptor_bytes())
    stream = chunk_stream()
    r = reader(w2[:BATCH + 10] + desc + w2[BATCH + 10:])
    assert stream.process(r, BUDGET) == 2 * BATCH   # to the end of the descriptor's batch
    assert stream.descriptor_bytes > 0
    stream.take_descriptor_packets()
    assert stream.process(r, BUDGET) == len(w2) + len(desc) - 2 * BATCH


@pytest.mark.parametrize("where", [BATCH + 3, 3 * BATCH - 1])
def test_a_stop_heap_ends_the_call_after_its_batch(where):
    w2 = sim_packets("W2", 4 * BATCH)
    stream = _spead.ChunkStream(**WORKLOADS["W2"].layout(HPC), max_chunks=4, pool=64,
                                max_heaps=8, stop_boundary=True)
    r = reader(w2[:where] + [stop_heap(10**6)] + w2[where:])
    consumed = stream.process(r, BUDGET)
    assert stream.stop_heaps == 1
    assert consumed == (where // BATCH + 1) * BATCH     # up to the end of the stop's batch
    assert stream.process(r, BUDGET) == len(w2) + 1 - consumed     # a boundary: the rest
    assert stream.process(r, BUDGET) == -1


def test_a_packet_tap_half_full_ends_the_call():
    packets = sim_packets("W2", 8 * BATCH)
    size = len(packets[0])
    stream = chunk_stream()
    r = reader(packets)
    r.enable_tap(1 << 30, 2 * BATCH)               # half full after one batch
    assert stream.process(r, BUDGET) == BATCH
    blob, lengths = r.take_tap()
    assert len(lengths) == BATCH and len(blob) == BATCH * size
