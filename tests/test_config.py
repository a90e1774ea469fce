"""Configuration validation: every malformed case is one line naming key and value."""

import pytest

from daqd.config import ConfigError, parse

GOOD = """
[daemon]
name = "test"

[[stream]]
name = "adc0"
sources = ["udp://127.0.0.1:7148"]

[stream.chunk]
heap_bytes = 8192
dtype = "uint16"

[[stream.sinks]]
kind = "binary"
path = "{tmp}/data/{{stream}}.bin"
"""


def config(tmp_path, text=GOOD):
    return parse(text.format(tmp=tmp_path), "test.toml")


def test_good_configuration_loads_into_frozen_objects(tmp_path):
    cfg = config(tmp_path)
    assert cfg.daemon.name == "test"
    stream = cfg.streams[0]
    assert stream.chunk.dtype == "uint16" and stream.chunk.max_chunks == 4
    assert stream.buffer.kind == "circular"
    assert stream.sinks[0].kind == "binary"
    with pytest.raises(AttributeError):
        stream.name = "other"


# A chunk stream for [stream.trigger] cases (chunks of 65536 ticks), and a clock for it.
TRIGGERED = ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\nheaps_per_chunk = 8\n"
             "max_chunks = 2\npool = 16\n")
CLOCK = "[stream.time]\nsync_time = 0\ntimestamp_rate = 6553600\n"

BAD = [
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nbug_compat = 'pyspead'\n",
     "stream[0].bug_compat = 'pyspead': 'pyspead' is not a bug_compat flag: expected \"\" or "
     "one or more of pyspead-0.5.2, BUG_COMPAT_DESCRIPTOR_WIDTHS"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nbug_compat = 7\n",
     "stream[0].bug_compat = 7: expected a string"),
    ("[daemon]\nnmae = 'x'\n", "daemon.nmae"),
    ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level = 'loud': expected one of debug"),
    ("[zmq]\ninterval = 'fast'\n", "zmq.interval = 'fast': expected a number"),
    ("[zmq]\ninterval = 0\n", "zmq.interval = 0.0: expected at least 0.01"),
    ("[zmq]\nstats_hwm = 0\n", "zmq.stats_hwm = 0: expected at least 1"),
    ("[zmq]\nstats_nodrop = 'yes'\n", "zmq.stats_nodrop = 'yes'"),
    ("[zmq]\nstats = 'tcp://0.0.0.0:5556'\n", "expected a loopback or ipc:// endpoint"),
    ("[zmq]\ncontrol = 'udp://x'\n", "zmq.control = 'udp://x'"),
    ("[extra]\n", "extra = {}: expected one of the tables"),
    ("[[stream]]\nname = 'a'\n", "stream[0]: missing key sources"),
    ("[[stream]]\nname = 'a'\nsources = []\n", "stream[0].sources = []"),
    ("[[stream]]\nname = 'a'\nsources = ['ftp://x']\n", "stream[0].sources[0] = 'ftp://x'"),
    ("[[stream]]\nname = 'a'\nsources = ['udp://127.0.0.1']\n", "udp://HOST:PORT"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W9']\n", "sim:W1, sim:W2, sim:W3"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nmax_heaps = 0\n",
     "stream[0].max_heaps = 0: expected at least 1"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nallow_out_of_order = 1\n",
     "expected true or false"),
    ("[[stream]]\nname = 'a'\nsources = ['udp://127.0.0.1:7000']\n"
     "[[stream]]\nname = 'b'\nsources = ['udp://127.0.0.1:7000']\n",
     "stream[1].sources[0] = 'udp://127.0.0.1:7000': expected a port no other source uses"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream]]\nname = 'a'\nsources = ['sim:W2']\n",
     "stream[1].name = 'a'"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\nheap_bytes = 8191\n"
     "dtype = 'uint16'\n", "stream[0].chunk.heap_bytes = 8191: expected a multiple of the uint16"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\npool = 2\nmax_chunks = 4\n",
     "stream[0].chunk.pool = 2: expected at least max_chunks (4)"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\ndtype = 'uint7'\n",
     "a numpy dtype name"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\nsubstreams = 2\n",
     "substream_item"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\nwhen_full = 'block'\n",
     "expected one of wait, drop"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\nwhen_full = 'wait'\n",
     "expected one of block, drop-newest, overwrite-oldest"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\nkind = 'ring'\n",
     "stream[0].buffer.kind = 'ring'"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream.sinks]]\nkind = 'csv'\npath = 'x'\n",
     "stream[0].sinks[0].kind = 'csv'"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream.sinks]]\nkind = 'binary'\n",
     "stream[0].sinks[0]: missing key path"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream.sinks]]\nkind = 'hdf5'\n"
     "path = '{tmp}/x.h5'\n", "hdf5 sinks need chunk mode"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream.sinks]]\nkind = 'binary'\n"
     "path = '/proc/nope/x.bin'\n", "a path whose directory can be created"),
    ("[[stream]\n", "not valid TOML"),
    ("[[stream]]\nname = 'a'\nsources = ['udp://127.0.0.1:7000']\n[[simulate]]\n"
     "target = 'udp://127.0.0.1:7001'\n", "simulate[0].target = 'udp://127.0.0.1:7001': "
     "expected the udp:// or tcp:// URI of one of the streams' sources"),
    ("[[stream]]\nname = 'a'\nsources = ['udp://127.0.0.1:7000']\n[[simulate]]\n"
     "target = 'udp://127.0.0.1:7000'\nworkload = 'W9'\n",
     "simulate[0].workload = 'W9': expected one of W1, W2, W3"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\neviction = 'maybe'\n",
     "stream[0].chunk.eviction = 'maybe': expected one of lossless, lossy"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\n"
     "flush_custom = ['no_such_module_xyz:f']\n", "stream[0].buffer.flush_custom[0]"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nstop_on_stop_item = false\n"
     "exit_on_stop_heap = true\n", "stream[0].exit_on_stop_heap = True: expected false while "
     "stop_on_stop_item = false"),
    ("[[stream]]\nname = 'a'\nsources = ['tcp://127.0.0.1:7000?once=yes']\n",
     "once='yes' must be 1 or 0"),
    # issue 12, finding 6: what `run` would crash on or run although wrong
    ("[zmq]\ninterval = inf\n", "zmq.interval = inf: expected a finite number"),
    ("[daemon]\nmemory_budget = 1000\n", "daemon.memory_budget = 1000: expected 0 or at least "
     "1048576"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\nmax_heap_size = 4096\n[stream.chunk]\n",
     "stream[0].chunk.heap_bytes = 8192: expected at most max_heap_size (4096)"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\ntimestamp_step = "
     f"{1 << 56}\nheaps_per_chunk = 128\n", "stream[0].chunk.timestamp_step"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\nextra_items = [-1]\n",
     "stream[0].chunk.extra_items[0] = -1: expected at least 0"),
    ("[[stream]]\nname = 'a'\nsources = ["
     + ", ".join(f"'sim:W1?heaps={i + 1}'" for i in range(65))
     + "]\n[stream.chunk]\n", "stream[0].sources = ['sim:W1?heaps=1'"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\ndtype = 'M8[ns]'\n",
     "expected a fixed-size numeric dtype"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.chunk]\ndtype = '(2,)i1'\n",
     "expected a fixed-size numeric dtype"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\ncapacity = 4\n"
     "flush_count = 4\nflush_bytes = 4194304\n[stream.chunk]\nheaps_per_chunk = 8\n",
     "stream[0].buffer.flush_bytes = 4194304: expected at most capacity x the largest record"),
    ("[[stream]]\nname = 'a/b'\nsources = ['sim:W1']\n", "stream[0].name = 'a/b'"),
    ('[[stream]]\nname = "a\\nb"\nsources = ["sim:W1"]\n', "stream[0].name = 'a\\nb'"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[[stream.sinks]]\nkind = 'binary'\n"
     "path = '{tmp}/{seq}.x'\n[[stream.sinks]]\nkind = 'text'\npath = '{tmp}/{chunk_id}.x'\n",
     "stream[0].sinks[1].path = '{tmp}/{chunk_id}.x': expected a file name no other sink"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\nwal = '{tmp}/a.x'\n"
     "[[stream.sinks]]\nkind = 'binary'\npath = '{tmp}/{stream}.x'\n",
     "stream[0].buffer.wal = '{tmp}/a.x': expected a file name no other sink"),
    ("[daemon]\npidfile = '/proc/nope/daqd.pid'\n", "daemon.pidfile = '/proc/nope/daqd.pid'"),
    ("[zmq]\ncontrol = 'ipc:///proc/nope/control'\n", "zmq.control = 'ipc:///proc/nope/control'"),
    ("[zmq]\nstats = 'ipc:///tmp/" + "x" * 120 + "'\n", "expected an ipc:// path of at most 107"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.buffer]\nflush_custom = "
     "['shutil:copy']\n", "shutil:copy(src, dst, *, follow_symlinks=True) cannot be called"),
    # [stream.trigger] (issue 13): seconds need a rate, the pool must hold them, a path
    (TRIGGERED + "[stream.trigger]\npath = '{tmp}/e.bin'\n",
     "stream[0].trigger.retain_seconds = 2.0: expected a [stream.time] timestamp_rate to "
     "turn seconds into chunks"),
    (TRIGGERED.replace("pool = 16", "pool = 13") + CLOCK
     + "[stream.trigger]\npath = '{tmp}/e.bin'\nretain_seconds = 0.1\n",
     "stream[0].chunk.pool = 13: expected at least 14: max_chunks (2) + the chunks "
     "retain_seconds = 0.1 holds (11, of 65536 ticks at 6.5536e+06 ticks/s; 655360 ticks) + 1 "
     "for the buffer to write from"),
    (TRIGGERED + CLOCK + "[stream.trigger]\npath = '{tmp}/{seq}.bin'\n",
     "stream[0].trigger.path = '{tmp}/{seq}.bin': expected a file name template (unknown "
     "field {seq}; the fields are {stream}, {label}, {event}, {start})"),
    (TRIGGERED + CLOCK + "[stream.trigger]\npath = '{tmp}/e.pcap'\nkind = 'pcap'\n",
     "stream[0].trigger.kind = 'pcap': expected one of binary, text, hdf5"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.trigger]\npath = '{tmp}/e.x'\n",
     "stream[0].trigger.kind = 'hdf5': expected binary or text (hdf5 event files need chunk "
     "mode)"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.trigger]\n",
     "stream[0].trigger: missing key path"),
    ("[[stream]]\nname = 'a'\nsources = ['sim:W1']\n[stream.time]\ntimestamp_item = 5632\n"
     "[stream.trigger]\npath = '{tmp}/e.x'\nkind = 'text'\n",
     "expected a [stream.time] timestamp_rate to turn seconds into heap timestamps"),
    (TRIGGERED + CLOCK + "[stream.trigger]\npath = '{tmp}/a.x'\nretain_seconds = 0.01\n"
     "[[stream.sinks]]\nkind = 'binary'\npath = '{tmp}/{stream}.x'\n",
     "stream[0].trigger.path = '{tmp}/a.x': expected a file name no other sink"),
]


def test_every_numeric_key_has_a_range():
    """`minimum` and `maximum` on every number (and list of numbers) of the schema."""
    import dataclasses

    from daqd.config import SECTIONS

    missing = [f"{table}.{f.name}" for table, cls in SECTIONS.items()
               for f in dataclasses.fields(cls)
               if f.type in ("int", "float", "tuple[int, ...]")
               and not {"minimum", "maximum"} <= set(f.metadata)]
    assert missing == []


def test_clients_skip_the_machine_checks(tmp_path):
    """Writable directories and the memory budget are the starting daemon's, not a client's."""
    text = ("[daemon]\nmemory_budget = 1048576\n[[stream]]\nname = 'a'\nsources = ['sim:W1']\n"
            "[stream.chunk]\n[[stream.sinks]]\nkind = 'binary'\npath = '/proc/nope/x.bin'\n")
    with pytest.raises(ConfigError, match="a path whose directory can be created"):
        parse(text, "x.toml")
    assert parse(text, "x.toml", host=False).daemon.memory_budget == 1048576
    with pytest.raises(ConfigError, match="fits in 1.0 MiB"):
        parse(text.replace("/proc/nope/x.bin", str(tmp_path / "x.bin")), "x.toml")


@pytest.mark.parametrize(("text", "message"), BAD)
def test_each_problem_is_one_line_naming_it(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        parse(text.replace("{tmp}", str(tmp_path)), "bad.toml")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("bad.toml: ")
    assert message.replace("{tmp}", str(tmp_path)) in line


def test_a_sink_directory_made_meanwhile_by_another_daemon_is_fine(tmp_path):
    """Two daemons started at once, sinks in one missing directory: the second's check
    finds parts the first made meanwhile (it must not refuse them, nor remove them)."""
    from daqd.config import _Loader, _try_mkdir

    made_by_other = tmp_path / "data"
    made_by_other.mkdir()                   # after this daemon saw `data` missing
    _try_mkdir(_Loader("x.toml"), "stream[0].sinks[0].path", "p", made_by_other / "adc0",
               tmp_path)
    assert made_by_other.is_dir() and not (made_by_other / "adc0").exists()
    (made_by_other / "in-use").mkdir()      # the other daemon's, while this one checks
    _try_mkdir(_Loader("x.toml"), "stream[0].sinks[0].path", "p", made_by_other / "in-use",
               tmp_path)
    assert (made_by_other / "in-use").is_dir()
    (tmp_path / "file").write_text("")      # a part that exists but is no directory
    with pytest.raises(ConfigError, match="a path whose directory can be created"):
        _try_mkdir(_Loader("x.toml"), "stream[0].sinks[0].path", "p", tmp_path / "file" / "d",
                   tmp_path)
