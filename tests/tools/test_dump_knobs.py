"""``daqd dump``'s spead2 stream knobs (`--allow-unsized-heaps`, `--memcpy`), against spead2.

The same bytes, in a file, are decoded by spead2 4.5.1 with the same option
and by ``daqd dump`` as a user runs it; the heaps printed must be spead2's.
(`--bug-compat` is in tests/recv/test_bug_compat.py.)
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
from cli_helpers import assert_one_line_error, daqd

PACKETS = [
    sp.raw_packet([sp.imm(sp.HEAP_CNT_ID, 100), sp.addr(0x1000, 0), sp.imm(sp.HEAP_OFFSET_ID, 0),
                   sp.imm(sp.PAYLOAD_LENGTH_ID, 64)], bytes(range(64))),
    *sp.sim_packets("W3", 2),
    sp.packet(9, bytes(range(32)), items=[sp.addr(0x1000, 0)]),
]


def dumped(tmp_path: Path, *options: str) -> list[dict]:
    path = tmp_path / "in.spead"
    path.write_bytes(b"".join(PACKETS))
    proc = daqd("dump", f"file:{path}", *options)
    assert proc.returncode == 0, proc.stderr
    return [h.dump_view(h.dump_record(json.loads(line))) for line in proc.stdout.splitlines()]


def spead2_view(**config) -> list[dict]:
    stream = spead2.recv.Stream(h.THREAD_POOL, spead2.recv.StreamConfig(max_heaps=8, **config))
    stream.add_buffer_reader(b"".join(PACKETS))
    return [h.dump_view(r) for r in h.collect_spead2(stream)]


@pytest.mark.parametrize("allow", [True, False])
def test_allow_unsized_heaps_as_spead2(tmp_path, allow):
    options = [] if allow else ["--no-allow-unsized-heaps"]
    got = dumped(tmp_path, *options)
    assert got == spead2_view(allow_unsized_heaps=allow)
    assert len(got) == (4 if allow else 3)


@pytest.mark.parametrize("memcpy", ["standard", "nontemporal"])
def test_memcpy_as_spead2(tmp_path, memcpy):
    theirs = spead2.MEMCPY_NONTEMPORAL if memcpy == "nontemporal" else spead2.MEMCPY_STD
    assert dumped(tmp_path, "--memcpy", memcpy) == spead2_view(memcpy=theirs)


def test_an_unknown_memcpy_is_one_line():
    assert_one_line_error(daqd("dump", "sim:W1?heaps=1", "--memcpy", "fast"), "--memcpy")
