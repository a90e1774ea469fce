"""Sinks: each file format read back by the tools a user would read it with."""

import json
import struct
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import spead2
import spead2.recv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spead_packets import daqd_heap_key, sim_packets, spead2_heap_key

import daqd
from daqd import _spead
from daqd.config import ChunkConfig, SinkConfig
from daqd.pipeline.records import ChunkRecord, HeapRecord, PacketRecord
from daqd.recv.sources import open_source
from daqd.sinks import SinkContext, make_sink
from daqd.sinks.binary import load, read_header
from daqd.sinks.pcap import MAX_UDP_PAYLOAD
from daqd.sinks.text import check_template

TS = 0x1600
HPC = 8
W1_CHUNK = ChunkConfig(timestamp_item=TS, timestamp_step=8192, heaps_per_chunk=HPC,
                       heap_bytes=8192, extra_items=(TS,), max_chunks=2, pool=6)
CONFIG_TEXT = "[[stream]]\nname = \"adc0\"\n"


def pool_chunks(heaps, drop=frozenset()):
    """Chunks of a real ChunkStream fed W1 heaps (those in `drop` left out).

    Each chunk is still held from the pool: the caller releases it.
    """
    c = W1_CHUNK
    stream = _spead.ChunkStream(timestamp_item=c.timestamp_item,
                                timestamp_step=c.timestamp_step,
                                heaps_per_chunk=c.heaps_per_chunk, heap_bytes=c.heap_bytes,
                                extra_items=list(c.extra_items), max_chunks=c.max_chunks,
                                pool=c.pool, max_heaps=4)
    packets = [p for i, p in enumerate(sim_packets("W1", heaps)) if i not in drop]
    for i in range(0, len(packets) + HPC, HPC):
        if i < len(packets):
            stream.add_packets(packets[i:i + HPC])
        else:
            stream.finish()
        while True:
            try:
                chunk = stream.get(0)
            except TimeoutError:        # none ready yet
                break
            if chunk is None:           # finished and drained
                return
            yield chunk


def context(tmp_path, kind, chunk=W1_CHUNK, name=None, **config):
    path = str(tmp_path / (name or f"{{stream}}-{{seq}}.{kind}"))
    return SinkContext("adc0", SinkConfig(kind, path, **config), chunk, CONFIG_TEXT)


def write_pool(sink, heaps, drop=frozenset(), per_flush=2):
    """Write pool chunks through `sink`, `per_flush` per write; return copies of them.

    The records are views of the pool's chunks, released after the write, as
    the buffer does.
    """
    copies, held = [], []
    for chunk in pool_chunks(heaps, drop):
        record = ChunkRecord.from_chunk(chunk)
        copies.append(ChunkRecord(record.chunk_id, record.timestamp, record.data.copy(),
                                  record.present.copy(), record.extra.copy()))
        held.append(record)
        if len(held) == per_flush:
            sink.write(held)
            for r in held:
                r.release()
            held = []
    assert not held, "use a per_flush that divides the chunk count"
    return copies


def only_file(tmp_path, pattern="*"):
    files = [p for p in tmp_path.glob(pattern) if p.is_file()]
    assert len(files) == 1, files
    return files[0]


# ----------------------------------------------------------------------
# binary


def test_binary_chunk_mode_reads_back_with_numpy(tmp_path):
    sink = make_sink(context(tmp_path, "binary"))
    copies = write_pool(sink, 4 * HPC, drop={3, 17}, per_flush=1)
    sink.close()
    path = only_file(tmp_path)
    meta = read_header(str(path))
    assert meta["format"] == "daqd.binary/1" and meta["mode"] == "chunk"
    assert meta["stream"] == "adc0" and meta["daqd_version"] == daqd.__version__
    assert meta["record_shape"] == [HPC, 1, 8192] and meta["record_bytes"] == HPC * 8192
    assert meta["header_bytes"] % 4096 == 0 and meta["first_chunk_id"] == 0
    # Plain numpy, as the module docstring says.
    raw = np.fromfile(path, np.dtype(meta["dtype"]), offset=meta["header_bytes"])
    data = raw.reshape(-1, *meta["record_shape"])
    assert len(data) == len(copies) == 4
    for row, rec in zip(data, copies, strict=True):
        np.testing.assert_array_equal(row, rec.data)
    assert not data[0, 3].any() and data[0, 2].any()     # the dropped heap's slot is zero
    _, mapped = load(str(path))
    np.testing.assert_array_equal(mapped, data)
    assert sink.stats()["records"] == 4 and sink.stats()["bytes"] == 4 * HPC * 8192


def test_binary_wider_dtype_and_no_header(tmp_path):
    chunk = ChunkConfig(heaps_per_chunk=2, heap_bytes=8, dtype="int16")
    sink = make_sink(context(tmp_path, "binary", chunk, header=False))
    records = [ChunkRecord(i, i * 2, np.full((2, 1, 4), -i, np.int16), np.ones((2, 1), np.uint8))
               for i in range(3)]
    sink.write(records)
    sink.close()
    data = np.fromfile(only_file(tmp_path), np.int16).reshape(-1, 2, 1, 4)
    assert [int(d[0, 0, 0]) for d in data] == [0, -1, -2]


def test_binary_heap_mode_writes_payloads_verbatim(tmp_path):
    sink = make_sink(context(tmp_path, "binary", chunk=None))
    heaps = [HeapRecord(7, {TS: 100, 0x3301: b"bb", 0x3300: b"aaa"}), HeapRecord(8, {TS: 5})]
    sink.write(heaps + [PacketRecord(b"x", np.array([1], np.uint32))])   # not accepted: skipped
    sink.close()
    path = only_file(tmp_path)
    meta = read_header(str(path))
    assert meta["mode"] == "heap" and meta["record_bytes"] is None
    assert path.read_bytes()[meta["header_bytes"]:] == b"aaabb"
    assert sink.stats()["records"] == 2


# ----------------------------------------------------------------------
# text


def test_text_chunk_mode_default_lines(tmp_path):
    sink = make_sink(context(tmp_path, "text"))
    copies = write_pool(sink, 3 * HPC, drop={0, 1, 9}, per_flush=1)
    sink.close()
    lines = only_file(tmp_path).read_text().splitlines()
    assert lines[0] == "# chunk_id timestamp fraction_present heaps_present"
    parsed = [line.split() for line in lines[1:]]
    assert [int(p[0]) for p in parsed] == [r.chunk_id for r in copies] == [0, 1, 2]
    assert [int(p[1]) for p in parsed] == [r.timestamp for r in copies]
    assert [int(p[3]) for p in parsed] == [6, 7, 8]
    assert [float(p[2]) for p in parsed] == [6 / 8, 7 / 8, 1.0]
    # numpy reads the file directly (the header is a comment).
    table = np.loadtxt(only_file(tmp_path))
    assert table.shape == (3, 4)


def test_text_custom_template_and_no_header(tmp_path):
    sink = make_sink(context(tmp_path, "text", template="{chunk_id:05d},{heaps}:{time}",
                             header=False))
    sink.write([ChunkRecord(3, 0, np.zeros((8, 1, 4), np.uint8), np.ones((8, 1), np.uint8),
                            received=0.25)])
    sink.close()
    assert only_file(tmp_path).read_text() == "00003,8:1970-01-01T00:00:00.250000+00:00\n"


def test_text_heap_mode_values_and_items(tmp_path):
    sink = make_sink(context(tmp_path, "text", chunk=None, name="h-{seq}.txt"))
    sink.write([HeapRecord(1, {TS: 57344, 0x3300: b"\x00\xff"}), HeapRecord(2, {0x3300: b"\x01"})])
    sink.close()
    assert only_file(tmp_path).read_text().splitlines() == [
        "# cnt values", "1 0x1600=57344 0x3300=00ff", "2 0x3300=01"]

    sink = make_sink(context(tmp_path, "text", chunk=None, name="i-{seq}.txt",
                             template="{cnt} {items[5632]} {nbytes}"))
    sink.write([HeapRecord(1, {TS: 9, 0x3300: b"ab"}), HeapRecord(2, {0x3300: b"ab"})])
    sink.close()
    assert only_file(tmp_path, "i-*").read_text().splitlines() == [
        "# cnt items[5632] nbytes", "1 9 10", "2  2"]


def test_text_record_the_template_cannot_format_is_counted_not_raised(tmp_path):
    sink = make_sink(context(tmp_path, "text", chunk=None, template="{cnt} {items[1]:d}"))
    sink.write([HeapRecord(1, {1: 5}), HeapRecord(2, {1: b"x"}), HeapRecord(3, {1: 6})])
    sink.close()
    assert only_file(tmp_path).read_text().splitlines()[1:] == ["1 5", "3 6"]
    stats = sink.stats()
    assert stats["records"] == 2 and stats["lost_records"] == 1 and stats["errors"] == 1
    assert "items[1]" in stats["last_error"]


def descriptor(item_id, name, shape=(), fmt=None, dtype=None):
    return {"id": item_id, "name": name, "description": "", "shape": list(shape),
            "format": [list(f) for f in fmt or []], "dtype": dtype}


SENSOR_DESCRIPTORS = [
    descriptor(0x1000, "temperature", fmt=[("f", 64)]),
    descriptor(0x1001, "readings", dtype="{'descr': '>f4', 'fortran_order': False, "
                                         "'shape': (3,)}"),
    descriptor(0x1002, "unit", shape=[None], fmt=[("c", 8)]),
    descriptor(0x1003, "cryo stage 2.temp", fmt=[("u", 48)]),
    descriptor(0x1004, "grid", shape=[2, 2], fmt=[("i", 8)]),
]


def sensor_record(cnt=1, unit=b"deg C", readings=(1.0, 2.5, -3.0), **extra):
    items = {0x1000: struct.pack(">d", 21.5), 0x1001: np.array(readings, ">f4").tobytes(),
             0x1002: unit, 0x1003: 0xABCDEF, 0x1004: bytes([1, 2, 0xFF, 4]),
             0x3300: b"\x00\xff", **extra}
    return HeapRecord(cnt, items, received=0.25, descriptors=SENSOR_DESCRIPTORS)


def heap_text(tmp_path, template, records, name="h-{seq}.txt"):
    sink = make_sink(context(tmp_path, "text", chunk=None, name=name, template=template))
    sink.write(records)
    sink.close()
    return only_file(tmp_path, name.replace("{seq}", "*")).read_text().splitlines(), sink


def test_text_heap_mode_fields_by_item_name_decoded(tmp_path):
    template = ("{cnt} {temperature:.2f} {readings} {readings:.2f} {readings[1]} {unit} "
                "{item[cryo stage 2.temp]:#x} {grid} {item[0x1000]} {item[4096]} "
                "{items[0x3300]} {item[0x3300]}|{absent}|{absent:>3}|{absent:d}|")
    lines, _ = heap_text(tmp_path, template, [sensor_record()])
    assert lines == [
        "# cnt temperature readings readings readings[1] unit item[cryo stage 2.temp] grid "
        "item[0x1000] item[4096] items[0x3300] item[0x3300]|absent|absent|absent|",
        "1 21.50 [1.0,2.5,-3.0] [1.00,2.50,-3.00] 2.5 deg C 0xabcdef [[1,2],[-1,4]] 21.5 "
        "21.5 00ff 00ff||   ||"]


def test_text_heap_mode_values_lists_names_then_raw_ids(tmp_path):
    lines, _ = heap_text(tmp_path, "{cnt} {values}",
                         [sensor_record(), HeapRecord(2, {0x3300: b"\x01", 0x1600: 7})])
    assert lines == [
        "# cnt values",
        '1 temperature=21.5 readings=[1.0,2.5,-3.0] unit="deg C" cryo stage 2.temp=11259375 '
        "grid=[[1,2],[-1,4]] 0x3300=00ff",
        "2 0x1600=7 0x3300=01"]


def test_text_heap_mode_hex_and_decimal_item_keys(tmp_path):
    record = HeapRecord(1, {0x1600: 57344, 0x3300: b"\x00\xff"})
    lines, _ = heap_text(tmp_path, "{items[0x1600]} {items[5632]} {items[0X3300]} "
                         "{items[13056]} {items[0x10]}|", [record])
    assert lines[1] == "57344 57344 00ff 00ff |"


@pytest.mark.parametrize("template, message", [
    ("{items[temperature]}", "indexed by item id"),
    ("{items[0x16zz]}", "indexed by item id"),
    ("{items}", "takes one"),
    ("{items[1][2]}", "takes one"),
    ("{items[1].real}", "takes one"),
    ("{item}", "takes one"),
    ("{0}", "positional"),
    ("{cnt:s}", "cannot be formatted"),
    ("{time:d}", "cannot be formatted"),
    ("{cnt}\n", "line break"),
    ("{item[a}", "expected .}."),
    ("{cnt} {chunk_id}", "unknown field {chunk_id}: a chunk-mode field"),
    ("{timestamp:d}", "an item named timestamp: {item\\[timestamp\\]}"),
])
def test_text_heap_mode_bad_templates_are_refused(tmp_path, template, message):
    with pytest.raises(ValueError, match=message):
        check_template(template, chunk_mode=False)
    with pytest.raises(ValueError, match=message):
        make_sink(context(tmp_path, "text", chunk=None, template=template))


def test_text_heap_mode_templates_with_names_are_accepted():
    for template in ("{temperature:.2f}", "{item[name with space.and dot]}", "{a-b}",
                     "{readings[0]:.3f}", "{status.real}", "{items[0x1600]:>8}",
                     "{values} {cnt:05d} {time}", "{item[timestamp]} {item[chunk_id]}"):
        check_template(template, chunk_mode=False)
    with pytest.raises(ValueError, match="unknown field"):
        check_template("{temperature}", chunk_mode=True)


def test_text_heap_mode_values_that_do_not_fit_stay_raw(tmp_path):
    record = sensor_record(readings=(1.0,))           # 4 bytes for a (3,) descriptor
    lines, _ = heap_text(tmp_path, "{readings} {values}", [record])
    assert record.decode().failed.keys() == {0x1001}
    assert lines[1].startswith("3f800000 temperature=21.5 readings=3f800000 unit=")


def test_text_heap_mode_one_record_stays_one_line(tmp_path):
    lines, _ = heap_text(tmp_path, "{cnt} {unit} {values}",
                         [sensor_record(unit=b"a\nb\rc"), sensor_record(2)])
    assert len(lines) == 3
    assert lines[1].startswith("1 a\\nb\\rc temperature=21.5")
    assert 'unit="a\\nb\\rc"' in lines[1]


def test_text_heap_mode_a_spec_a_value_cannot_take_loses_that_record(tmp_path):
    lines, sink = heap_text(tmp_path, "{cnt} {unit:d}", [
        HeapRecord(1, {}, descriptors=SENSOR_DESCRIPTORS), sensor_record(2),
        HeapRecord(3, {}, descriptors=SENSOR_DESCRIPTORS)])
    assert lines[1:] == ["1 ", "3 "]
    stats = sink.stats()
    assert stats["lost_records"] == 1 and "unit:d" in stats["last_error"]


# ----------------------------------------------------------------------
# hdf5


def test_hdf5_layout_is_exactly_the_interface(tmp_path):
    sink = make_sink(context(tmp_path, "hdf5"))
    copies = write_pool(sink, 6 * HPC, drop={2, 3, 20, 47}, per_flush=2)
    sink.close()
    with h5py.File(only_file(tmp_path), "r") as f:
        n = len(copies)
        assert n == 6
        expected = {
            "data": ((n, HPC, 1, 8192), np.uint8),
            "present": ((n, HPC, 1), np.uint8),
            "chunk_id": ((n,), np.int64),
            "timestamp": ((n,), np.uint64),
            "extra": ((n, HPC, 1, 1), np.uint64),
        }
        assert set(f) == set(expected)
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
            assert f[name].maxshape[0] is None, name
        assert f["data"].chunks == (1, HPC, 1, 8192)
        assert f["present"].chunks == (1, HPC, 1)
        attrs = dict(f.attrs)
        assert attrs["daqd_version"] == daqd.__version__ and attrs["stream"] == "adc0"
        assert attrs["config"] == CONFIG_TEXT
        assert (attrs["timestamp_step"], attrs["heaps_per_chunk"], attrs["substreams"]) == \
            (8192, HPC, 1)
        np.testing.assert_array_equal(f["chunk_id"][:], [r.chunk_id for r in copies])
        assert list(f["chunk_id"][:]) == sorted(f["chunk_id"][:])
        np.testing.assert_array_equal(f["timestamp"][:], [r.timestamp for r in copies])
        for i, rec in enumerate(copies):
            np.testing.assert_array_equal(f["data"][i], rec.data)
            np.testing.assert_array_equal(f["present"][i], rec.present)
            np.testing.assert_array_equal(f["extra"][i], rec.extra)
        present = f["present"][:]
        assert present.sum() == 6 * HPC - 4
        assert present[0, 2, 0] == 0 and present[0, 3, 0] == 0 and present[2, 4, 0] == 0
        assert present[5, 7, 0] == 0 and not f["data"][5, 7].any()


def test_hdf5_substreams_wider_dtype_and_packet_presence(tmp_path):
    chunk = ChunkConfig(heaps_per_chunk=2, heap_bytes=16, dtype="float32", substreams=3,
                        substream_item=0x4101, packet_presence=8)
    sink = make_sink(context(tmp_path, "hdf5", chunk))
    present = np.ones((2, 3, 2), np.uint8)
    present[1, 2, 0] = 0                       # one packet of one heap missing
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    sink.write([ChunkRecord(5, 80, data, present)])
    sink.close()
    with h5py.File(only_file(tmp_path), "r") as f:
        assert f["data"].dtype == np.float32 and f["data"].shape == (1, 2, 3, 4)
        np.testing.assert_array_equal(f["data"][0], data)
        assert f["present"].shape == (1, 2, 3)
        assert f["present"][0].tolist() == [[1, 1, 1], [1, 1, 0]]
        np.testing.assert_array_equal(f["packet_present"][0], present)
        assert "extra" not in f and f.attrs["substreams"] == 3


def test_hdf5_chunk_id_going_back_starts_a_new_file(tmp_path):
    chunk = ChunkConfig(heaps_per_chunk=1, heap_bytes=4)
    sink = make_sink(context(tmp_path, "hdf5", chunk))

    def rec(i):
        return ChunkRecord(i, i, np.full((1, 1, 4), i, np.uint8), np.ones((1, 1), np.uint8))

    sink.write([rec(5), rec(6), rec(2), rec(3)])     # e.g. the sender restarted
    sink.close()
    ids = []
    for path in sorted(tmp_path.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            ids.append(f["chunk_id"][:].tolist())
    assert ids == [[5, 6], [2, 3]]


# ----------------------------------------------------------------------
# pcap


def pcap_sink(tmp_path, port=7148, **config):
    ctx = SinkContext("adc0", SinkConfig("pcap", str(tmp_path / "cap-{seq}.pcap"), **config),
                      None, udp_port=port)
    return make_sink(ctx)


def packet_record(packets, received=1700000000.123456):
    lengths = np.array([len(p) for p in packets], np.uint32)
    return PacketRecord(b"".join(packets), lengths, received)


def spead2_heaps(path):
    stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
                                spead2.recv.RingStreamConfig(heaps=64))
    stream.add_udp_pcap_file_reader(str(path))
    try:
        return [spead2_heap_key(h) for h in stream]
    finally:
        stream.stop()


def daqd_pcap_heaps(path, port=None):
    uri = f"pcap:{path}" + (f"?port={port}" if port is not None else "")
    source = open_source(uri)
    try:
        heaps = _spead.HeapStream(max_heaps=4).run(source.reader)
    finally:
        source.close()
    return [daqd_heap_key(h) for h in heaps]


@pytest.mark.parametrize("workload", ["W1", "W3"])
def test_pcap_replays_to_the_same_heaps(tmp_path, workload):
    packets = sim_packets(workload, 12)
    stream = _spead.HeapStream(max_heaps=4)
    original = [daqd_heap_key(h) for h in stream.add_packets(packets) + stream.flush()]
    sink = pcap_sink(tmp_path, port=7150)
    # Batches as the packet tap makes them: several packets per record.
    for i in range(0, len(packets), 5):
        sink.write([packet_record(packets[i:i + 5], 1700000000.5 + i)])
    sink.close()
    path = only_file(tmp_path)
    assert len(original) == 12
    assert spead2_heaps(path) == original
    assert daqd_pcap_heaps(path) == original
    assert daqd_pcap_heaps(path, port=7150) == original      # destination port is the stream's
    assert daqd_pcap_heaps(path, port=7148) == []


def read_pcap(path):
    """(file header fields, [(sec, nsec, frame bytes)]) parsed by hand."""
    blob = Path(path).read_bytes()
    header = struct.unpack_from("<IHHiIII", blob)
    frames, pos = [], 24
    while pos < len(blob):
        sec, nsec, incl, orig = struct.unpack_from("<IIII", blob, pos)
        assert incl == orig
        frames.append((sec, nsec, blob[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    assert pos == len(blob)
    return header, frames


def ip_checksum_ok(ip_header):
    total = sum(struct.unpack(">10H", ip_header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_pcap_frames_are_well_formed(tmp_path):
    packets = [bytes([i]) * n for i, n in enumerate((1, 100, 8248, 0, 9000))]
    sink = pcap_sink(tmp_path, port=7148)
    sink.write([packet_record(packets, 1700000000.25)])
    sink.close()
    (magic, major, minor, _, _, snaplen, linktype), frames = read_pcap(only_file(tmp_path))
    assert (magic, major, minor, linktype) == (0xA1B23C4D, 2, 4, 1) and snaplen >= 65535
    assert len(frames) == len(packets)
    for (sec, nsec, frame), payload in zip(frames, packets, strict=True):
        assert (sec, nsec) == (1700000000, 250000000)
        assert frame[12:14] == b"\x08\x00"                       # IPv4
        ip = frame[14:34]
        assert ip[0] == 0x45 and ip[9] == 17 and ip_checksum_ok(ip)
        assert struct.unpack(">H", ip[2:4])[0] == 28 + len(payload)
        src, dst, udp_len = struct.unpack(">HHH", frame[34:40])
        assert dst == 7148 and udp_len == 8 + len(payload)
        assert frame[42:] == payload


def test_pcap_packet_too_long_for_udp_is_counted(tmp_path):
    packets = [b"a" * 10, b"b" * (MAX_UDP_PAYLOAD + 1), b"c" * 20]
    sink = pcap_sink(tmp_path)
    sink.write([packet_record(packets)])
    sink.close()
    _, frames = read_pcap(only_file(tmp_path))
    assert [f[2][42:] for f in frames] == [packets[0], packets[2]]
    assert sink.stats()["lost_packets"] == 1 and sink.stats()["records"] == 1


def test_pcap_sink_and_simulator_write_the_same_frames(tmp_path):
    """One frame writer: the sink's records and send(mode="pcap")'s differ only in time."""
    packets = [bytes([i]) * n for i, n in enumerate((1, 100, 8248, 0, MAX_UDP_PAYLOAD))]
    packets.insert(2, b"x" * (MAX_UDP_PAYLOAD + 1))          # neither frames it
    sink = pcap_sink(tmp_path, port=7150)
    sink.write([packet_record(packets)])
    sink.close()
    sink_header, sink_frames = read_pcap(only_file(tmp_path))
    sent = tmp_path / "sent.pcap.raw"
    with open(sent, "xb") as f:
        f.write(_spead.PCAP_FILE_HEADER)
        f.flush()
        count, _, dropped = _spead.send(_spead.ByteListReader(packets), f.fileno(), "pcap",
                                        port=7150)
    sent_header, sent_frames = read_pcap(sent)
    assert sink_header == sent_header
    assert (count, dropped) == (len(packets), 1) and sink.stats()["lost_packets"] == 1
    assert [f[2] for f in sink_frames] == [f[2] for f in sent_frames]
    assert [f[2][42:] for f in sink_frames] == [p for p in packets if len(p) <= MAX_UDP_PAYLOAD]


def test_pcap_frames_checks_the_lengths():
    with pytest.raises(ValueError, match="lengths"):
        _spead.pcap_frames(b"abc", np.array([2, 2], np.uint32), 7148, 0)
    frames, dropped = _spead.pcap_frames(b"", np.zeros(0, np.uint32), 7148, 0)
    assert frames.size == 0 and dropped == 0


def test_pcap_header_setting_does_not_drop_the_file_header(tmp_path):
    sink = pcap_sink(tmp_path, header=False)
    sink.write([packet_record([b"x" * 64])])
    sink.close()
    header, frames = read_pcap(only_file(tmp_path))
    assert header[0] == 0xA1B23C4D and len(frames) == 1


def test_checkpoint_is_json(tmp_path):
    sink = make_sink(context(tmp_path, "hdf5"))
    assert json.loads(json.dumps(sink.checkpoint()))["file"] is None
    write_pool(sink, 2 * HPC, per_flush=1)
    state = json.loads(json.dumps(sink.checkpoint()))
    assert state["file"]["rows"] == 2 and state["file"]["tmp"].endswith(".hdf5.tmp")
    sink.close()
