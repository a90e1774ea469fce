"""``bug_compat``: descriptors of PySPEAD-0.5.2-style senders, against spead2 4.5.1.

spead2 sends each heap with a flavour carrying the bugs (``Flavour(...,
bug_compat)``); spead2 and daqd receive the same bytes with the same
``bug_compat`` and must agree: descriptor for descriptor (id, name, shape,
format, the dtype spead2's ``Descriptor.from_raw`` makes), and item value for
item value (``ItemGroup.update``), in heap mode and from a chunk stream's
descriptor packets.  Also the issue's example and the text form's checks.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spead2
import spead2.recv
import spead2.send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, daqd
from spead2_helpers import THREAD_POOL, split_packets

from daqd import _spead
from daqd.pipeline.items import ItemDescriptors
from daqd.recv import bug_compat as bc
from daqd.recv.descriptors import decode_descriptors, descriptors_from_packets
from daqd.recv.heap_records import HeapRecorder

MASKS = [0, bc.BUG_COMPAT_DESCRIPTOR_WIDTHS, bc.BUG_COMPAT_SHAPE_BIT_1,
         bc.BUG_COMPAT_SWAP_ENDIAN, 3, 5, 6, bc.BUG_COMPAT_PYSPEAD_0_5_2]

RNG = np.random.default_rng(15)
# name -> (shape, descriptor kind, value maker); widths that fit 24 bits (DESCRIPTOR_WIDTHS)
ITEMS: dict[str, tuple[tuple, dict[str, Any], Any]] = {
    "matrix": ((2, 3), {"format": [("u", 16)]}, lambda: RNG.integers(0, 1 << 16, (2, 3))),
    "samples": ((2, 3), {"dtype": "<i2"}, lambda: RNG.integers(-999, 999, (2, 3)).astype("<i2")),
    "readings": ((4,), {"dtype": ">f4"}, lambda: RNG.normal(size=4).astype(">f4")),
    "bytes": ((5,), {"dtype": "u1"}, lambda: RNG.integers(0, 255, 5).astype("u1")),
    "table": ((2,), {"dtype": np.dtype([("a", "<u2"), ("b", ">f4")])},
              lambda: np.array([(1, 0.5), (2, -1.5)], [("a", "<u2"), ("b", ">f4")])),
    "spectrum": ((None,), {"format": [("u", 16)]},
                 lambda: RNG.integers(0, 1 << 16, int(RNG.integers(1, 30)))),
    "pairs": ((None, 2), {"format": [("i", 8)]},
              lambda: RNG.integers(-128, 128, (int(RNG.integers(1, 9)), 2))),
    "count": ((), {"format": [("u", 32)]}, lambda: int(RNG.integers(0, 1 << 32))),
    "adc12": ((3,), {"format": [("u", 12)]}, lambda: [int(v) for v in RNG.integers(0, 4096, 3)]),
}


def sent(mask: int, address_bits: int = 48, heaps: int = 3) -> list[bytes]:
    """Datagrams of `heaps` heaps spead2 sends with `mask`: descriptors first, then values."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, address_bits, mask))
    for i, (name, (shape, kind, _)) in enumerate(ITEMS.items()):
        ig.add_item(0x1000 + i, name, f"the {name}", shape, **kind)
    stream = spead2.send.BytesStream(THREAD_POOL, spead2.send.StreamConfig())
    for cnt in range(1, heaps + 1):
        for name, (_, _, make) in ITEMS.items():
            ig[name].value = make()
        stream.send_heap(ig.get_heap(data="all"), cnt)
    return split_packets(stream.getvalue())


def spead2_heaps(packets: list[bytes], mask: int) -> list[Any]:
    config = spead2.recv.StreamConfig(max_heaps=4, bug_compat=mask)
    stream = spead2.recv.Stream(THREAD_POOL, config)
    stream.add_buffer_reader(b"".join(packets))
    return list(stream)


def daqd_heaps(packets: list[bytes]) -> list[Any]:
    stream = _spead.HeapStream(max_heaps=4)
    return [h for h in stream.add_packets(packets) + stream.flush() if h.complete]


def spead2_descriptors(heap: Any) -> list[dict[str, Any]]:
    """spead2's raw descriptors of `heap` as daqd's dicts; the numpy header as the dtype
    spead2's ``Descriptor.from_raw`` makes of it (swapped with ``SWAP_ENDIAN``)."""
    out = []
    for raw in heap.get_descriptors():
        dtype = None
        if raw.numpy_header:
            dtype = spead2.Descriptor._parse_numpy_header(raw.numpy_header.decode())[2]
            if heap.flavour.bug_compat & spead2.BUG_COMPAT_SWAP_ENDIAN:
                dtype = dtype.newbyteorder()
        out.append({"id": raw.id, "name": raw.name.decode(),
                    "shape": list(raw.shape),
                    "format": [list(f) for f in raw.format], "dtype": dtype})
    return out


def ours(descriptors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """daqd's descriptor dicts in the form of `spead2_descriptors`."""
    return [{"id": d["id"], "name": d["name"], "shape": d["shape"], "format": d["format"],
             "dtype": ItemDescriptors.from_dicts([d])[d["id"]].dtype if d["dtype"] else None}
            for d in descriptors]


@pytest.mark.parametrize("address_bits", [40, 48])
@pytest.mark.parametrize(("sender", "receiver"), list(itertools.product(MASKS, MASKS)))
def test_descriptors_equal_spead2(sender, receiver, address_bits):
    # Every pair of masks, matching or not: a receiver that expects other
    # bugs reads other widths and bits, and both must read the same.
    packets = sent(sender, address_bits, heaps=1)
    (theirs,) = spead2_heaps(packets, receiver)
    (heap,) = daqd_heaps(packets)
    expected = spead2_descriptors(theirs)
    assert len(expected) == len(ITEMS)
    assert ours(decode_descriptors(heap, receiver)) == expected


def assert_same(mine: Any, theirs: Any, name: str) -> None:
    assert type(mine) is type(theirs), (name, type(mine), type(theirs))
    if isinstance(theirs, np.ndarray | np.generic):
        assert (mine.dtype, mine.shape, mine.tolist()) == \
            (theirs.dtype, theirs.shape, theirs.tolist()), name
    else:
        assert mine == theirs, name


@pytest.mark.parametrize("mask", MASKS)
def test_item_values_equal_spead2_item_group(mask):
    packets = sent(mask)
    group = spead2.ItemGroup()
    expected = []
    for heap in spead2_heaps(packets, mask):
        updated = group.update(heap)
        expected.append({name: item.value for name, item in updated.items()})
    recorder = HeapRecorder("old", bug_compat=mask)
    records = list(recorder.records(daqd_heaps(packets)))
    assert len(records) == len(expected) == 3
    for record, theirs in zip(records, expected, strict=True):
        decoded = record.decode()
        assert not decoded.failed and decoded.undescribed == 0
        assert set(decoded.by_name) == set(theirs)
        for name, value in theirs.items():
            assert_same(decoded.by_name[name], value, name)


@pytest.mark.parametrize("mask", [bc.BUG_COMPAT_PYSPEAD_0_5_2, 0])
def test_chunk_mode_descriptor_packets_follow_bug_compat(mask):
    # A chunk stream keeps the packets of descriptor heaps; the recorder reads
    # them with its bug_compat, as heap mode does.
    packets = sent(bc.BUG_COMPAT_PYSPEAD_0_5_2, heaps=1)
    (theirs,) = spead2_heaps(packets, mask)
    assert ours(descriptors_from_packets(packets, mask)) == spead2_descriptors(theirs)
    recorder = HeapRecorder("old", bug_compat=mask)
    recorder.add_descriptor_packets(packets)
    assert ours(recorder.known_descriptors()) == \
        sorted(spead2_descriptors(theirs), key=lambda d: d["id"])


def test_the_issues_example():
    # A PySPEAD-0.5.2-style descriptor of shape (2, 3): read without
    # bug_compat, its 8-byte shape fields are misread (SPEAD-64-40: 6-byte
    # fields); with it, (2, 3).
    packets = sent(bc.BUG_COMPAT_PYSPEAD_0_5_2, 40, heaps=1)
    (heap,) = daqd_heaps(packets)
    by_name = {d["name"]: d for d in decode_descriptors(heap)}
    assert by_name["matrix"]["shape"] == [0, 8589934592]
    by_name = {d["name"]: d for d in decode_descriptors(heap, bc.BUG_COMPAT_PYSPEAD_0_5_2)}
    assert by_name["matrix"]["shape"] == [2, 3]
    (theirs,) = spead2_heaps(packets, bc.BUG_COMPAT_PYSPEAD_0_5_2)
    assert [d.shape for d in theirs.get_descriptors() if d.name == b"matrix"] == [[2, 3]]


@pytest.mark.parametrize(("text", "mask"), [
    ("", 0), ("pyspead-0.5.2", 7), ("BUG_COMPAT_PYSPEAD_0_5_2", 7),
    ("BUG_COMPAT_DESCRIPTOR_WIDTHS", 1), ("BUG_COMPAT_SHAPE_BIT_1", 2),
    ("BUG_COMPAT_SWAP_ENDIAN", 4), ("BUG_COMPAT_DESCRIPTOR_WIDTHS | BUG_COMPAT_SWAP_ENDIAN", 5),
])
def test_text_form_is_spead2s_masks(text, mask):
    assert bc.parse_bug_compat(text) == mask
    for name in text.split("|") if text else []:
        name = name.strip()
        spead2_name = "BUG_COMPAT_PYSPEAD_0_5_2" if name == "pyspead-0.5.2" else name
        assert bc.NAMES[name] == getattr(spead2, spead2_name)


@pytest.mark.parametrize("text", ["pyspead", "BUG_COMPAT_SHAPE_BIT_1|", "swap", "7"])
def test_text_form_refuses_other_names(text):
    with pytest.raises(ValueError, match="is not a bug_compat flag"):
        bc.parse_bug_compat(text)


@pytest.mark.parametrize("flags", ["pyspead-0.5.2", "BUG_COMPAT_DESCRIPTOR_WIDTHS|"
                                   "BUG_COMPAT_SHAPE_BIT_1|BUG_COMPAT_SWAP_ENDIAN", ""])
def test_dump_bug_compat_prints_spead2s_descriptors(tmp_path, flags):
    path = tmp_path / "old.spead"
    path.write_bytes(b"".join(sent(bc.BUG_COMPAT_PYSPEAD_0_5_2, heaps=1)))
    proc = daqd("dump", f"file:{path}", *(["--bug-compat", flags] if flags else []))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    printed = json.loads(line)["descriptors"]
    (theirs,) = spead2_heaps(sent(bc.BUG_COMPAT_PYSPEAD_0_5_2, heaps=1),
                             bc.parse_bug_compat(flags))
    assert ours(printed) == spead2_descriptors(theirs)
    shape = {d["name"]: d["shape"] for d in printed}["matrix"]
    assert (shape == [2, 3]) == bool(flags)


def test_dump_refuses_an_unknown_flag_in_one_line():
    proc = daqd("dump", "sim:W1?heaps=1", "--bug-compat", "BUG_COMPAT_ALL")
    assert_one_line_error(proc, "--bug-compat")
