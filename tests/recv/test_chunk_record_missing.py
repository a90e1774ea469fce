"""`Receiver.chunk_record(s)` count the heap slots missing per substream (both of their paths).

A real receiver built from a configuration is fed W1 heaps with some left
out; the counts must equal what the chunks' ``present`` flags say, for one
substream (the quick count) and for several.
"""

import numpy as np
import pytest

from daqd import _spead
from daqd.config import parse
from daqd.recv.builder import build_receiver

HPC = 8


def config_text(substreams):
    sub = f"substream_item = 0x1600\nsubstreams = {substreams}\n" if substreams > 1 else ""
    return f"""
[[stream]]
name = "s"
sources = ["sim:W1?heaps=1"]
[stream.chunk]
timestamp_item = 0x1600
timestamp_step = 8192
heaps_per_chunk = {HPC}
heap_bytes = 8192
max_chunks = 2
pool = 8
{sub}
"""


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("substreams", [1, 2])
def test_missing_slots_per_substream(substreams, batch):
    receiver = build_receiver(parse(config_text(substreams), host=False).streams[0])
    receiver.open()
    try:
        packets = []
        reader = _spead.SimReader("W1", heaps=4 * HPC)
        while (batch := reader.read_batch()) is not None:
            packets.extend(batch[0])
        skip = {1, 2, 9, 17, 18, 19, 30}
        stream = receiver.streams[0]
        kept = _spead.ByteListReader([p for i, p in enumerate(packets) if i not in skip])
        while stream.process(kept) >= 0 and not stream.stopped:
            pass
        stream.finish()
        expected = np.zeros(substreams, np.int64)
        if batch:                       # every chunk in one batch (chunk_records)
            chunks = receiver.group.get_batch(0, 1.0)
            assert len(chunks) == 4
            for chunk in chunks:
                expected += (np.asarray(chunk.present) == 0).reshape(HPC, substreams).sum(axis=0)
            records = receiver.chunk_records(chunks)
            assert [r.chunk_id for r in records] == [c.chunk_id for c in chunks]
            for record in records:
                record.release()
            assert receiver.group.get_batch(0, 1.0) == []
        while not batch and (chunk := receiver.group.get(1.0)) is not None:
            expected += (np.asarray(chunk.present) == 0).reshape(HPC, substreams).sum(axis=0)
            receiver.chunk_record(chunk).release()
        assert expected.sum() > 0
        assert receiver.heaps_missing_per_substream() == expected.tolist()
    finally:
        receiver.close()
