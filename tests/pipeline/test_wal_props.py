"""The write-ahead log under any one flipped bit (hypothesis): a second angle on its CRC.

`tests/pipeline/test_wal_resync.py` flips one chosen bit per frame field.
Here hypothesis picks the frame, the byte in it and the bit: whatever the
flip, no record comes back altered (the CRC is the only thing that can tell
a flipped payload bit), the damaged record alone is lost and counted, and
every other record comes back in order.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from buffer_sinks import numbered_record

from daqd.pipeline.wal import WriteAheadLog

N = 40


def payload(seq: int) -> bytes:
    return numbered_record(seq).encode() + bytes([seq]) * (seq % 7)     # sizes differ



@settings(max_examples=80, deadline=None)
@given(k=st.integers(0, N - 1), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_loses_only_its_record_and_alters_none(k, where, bit):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w"
        wal = WriteAheadLog(path, fsync="never")
        starts, written = [], {}
        for seq in range(N):
            starts.append(wal.stats()["bytes"])
            written[seq] = payload(seq)
            wal.append(seq, written[seq])
        starts.append(wal.stats()["bytes"])
        wal.close()
        data = bytearray(path.read_bytes())
        offset = starts[k] + int(where * (starts[k + 1] - starts[k]))
        data[offset] ^= 1 << bit
        path.write_bytes(bytes(data))
        wal = WriteAheadLog(path, fsync="never")
        got = list(wal.records(-1))
        stats = wal.stats()
        wal.close()
    for seq, blob in got:
        assert blob == written[seq], f"record {seq} came back altered"
    assert [seq for seq, _ in got] == [i for i in range(N) if i != k]
    assert stats["records_lost"] == 1
