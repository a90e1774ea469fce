"""``daqd simulate --descriptors`` / ``--bug-compat``: descriptor heaps as spead2 writes them.

The descriptor packets daqd writes (`daqd.recv.descriptor_heap`) must be
byte for byte those spead2 4.5.1's sender writes for the same descriptors
with the same ``bug_compat`` flavour; and the stream ``daqd simulate``
writes, received by spead2 with that ``bug_compat``, must give spead2's
``ItemGroup`` the workload's items (timestamp, samples, name) as described.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, daqd
from spead2_helpers import THREAD_POOL, split_packets

from daqd import _spead
from daqd.recv import bug_compat as bc
from daqd.recv.descriptor_heap import encode_descriptor
from daqd.recv.workloads import DATA_ITEM, NAME_ITEM, TIMESTAMP_ITEM, WORKLOADS

MASKS = [0, 1, 2, 4, 7]
FLAGS = {0: "", 1: "BUG_COMPAT_DESCRIPTOR_WIDTHS", 2: "BUG_COMPAT_SHAPE_BIT_1",
         4: "BUG_COMPAT_SWAP_ENDIAN", 7: "pyspead-0.5.2"}


def spead2_descriptor_items(descriptors: list[dict], mask: int, address_bits: int) -> list[bytes]:
    """The descriptor items (0x5) spead2's sender writes for `descriptors` with `mask`."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, address_bits, mask))
    for d in descriptors:
        if d["dtype"]:
            header = ast.literal_eval(d["dtype"])
            ig.add_item(d["id"], d["name"], d["description"], header["shape"],
                        dtype=np.dtype(header["descr"]),
                        order="F" if header["fortran_order"] else "C")
        else:
            ig.add_item(d["id"], d["name"], d["description"], tuple(d["shape"]),
                        format=[tuple(f) for f in d["format"]])
    out = spead2.send.BytesStream(THREAD_POOL, spead2.send.StreamConfig())
    out.send_heap(ig.get_heap(descriptors="all", data="none"), 1)
    stream = _spead.HeapStream()
    (heap,) = [x for x in stream.add_packets(split_packets(out.getvalue())) + stream.flush()]
    return [bytes(i.value) for i in heap.items if i.id == 0x5]


@pytest.mark.parametrize("address_bits", [40, 48])
@pytest.mark.parametrize("mask", MASKS)
def test_descriptor_packets_are_spead2s_bytes(mask, address_bits):
    descriptors = WORKLOADS["W3"].descriptors() + [
        {"id": 0x4000, "name": "big-endian", "description": "", "shape": [], "format": [],
         "dtype": repr({"descr": ">f4", "fortran_order": True, "shape": (3, 2)})},
        {"id": 0x4001, "name": "pairs", "description": "x", "shape": [None, 2],
         "format": [["i", 8], ["u", 4], ["u", 4]], "dtype": None},
    ]
    ours = [encode_descriptor(d, mask, address_bits) for d in descriptors]
    assert ours == spead2_descriptor_items(descriptors, mask, address_bits)


@pytest.mark.parametrize("mask", MASKS)
def test_simulated_stream_decodes_in_spead2(tmp_path, mask):
    path = tmp_path / "w1.spead"
    options = ["--bug-compat", FLAGS[mask]] if mask else ["--descriptors"]
    proc = daqd("simulate", f"file:{path}", "--workload", "W1", "--heaps", "3", *options)
    assert proc.returncode == 0, proc.stderr
    stream = spead2.recv.Stream(THREAD_POOL, spead2.recv.StreamConfig(bug_compat=mask))
    stream.add_buffer_reader(path.read_bytes())
    group = spead2.ItemGroup()
    values = []
    for heap in stream:
        group.update(heap)
        values.append({name: item.value for name, item in group.items()})
    assert len(values) == 4                      # the descriptor heap, then 3 heaps
    assert values[0]["workload"] == "W1"
    assert group.ids() >= {TIMESTAMP_ITEM, DATA_ITEM, NAME_ITEM}
    samples = values[-1]["samples"]
    assert samples.dtype == np.dtype("<u2") and samples.shape == (4096,)
    assert [v["timestamp"] for v in values[1:]] == [0, 8192, 16384]
    # daqd reads the same stream's descriptors as spead2 did
    dumped = daqd("dump", f"file:{path}", *(["--bug-compat", FLAGS[mask]] if mask else []))
    first = json.loads(dumped.stdout.splitlines()[0])
    by_name = {d["name"]: d for d in first["descriptors"]}
    assert by_name["workload"]["shape"] == [None]
    assert ast.literal_eval(by_name["samples"]["dtype"])["descr"] == "<u2"


def test_simulate_refuses_an_unknown_flag_in_one_line(tmp_path):
    proc = daqd("simulate", f"file:{tmp_path}/x.spead", "--heaps", "1", "--bug-compat", "old")
    assert_one_line_error(proc, "--bug-compat")
    assert not (tmp_path / "x.spead").exists()
    assert bc.parse_bug_compat(FLAGS[7]) == 7
