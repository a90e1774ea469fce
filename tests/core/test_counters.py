"""The counters: one list (cython_ext/stats.pxd), seen from Python and documented."""

import pathlib
import re

from daqd import _spead
from daqd.recv.counters import DROP_COUNTERS, MAXIMA, StatIndex

MONITORING = pathlib.Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def test_names_come_from_the_compiled_enum():
    members = [m for m in _spead.StatIndex if m.name != "N_STATS"]
    assert [m.name for m in members] == ["STAT_" + n.upper() for n in _spead.STAT_NAMES]
    assert [int(m) for m in members] == list(range(len(_spead.STAT_NAMES)))
    assert _spead.StatIndex.N_STATS == len(_spead.STAT_NAMES)


def test_stat_index_matches_compiled_names():
    assert [s.name.lower() for s in StatIndex] == list(_spead.STAT_NAMES)


def test_stat_index_values_are_positions():
    assert [int(s) for s in StatIndex] == list(range(len(_spead.STAT_NAMES)))


def test_maxima_match():
    assert {s.name.lower() for s in MAXIMA} == set(_spead.STAT_MAXIMA)
    assert "max_batch" in _spead.STAT_MAXIMA


def test_drop_counters_exist_and_are_reported():
    stats = _spead.HeapStream().stats()
    assert list(stats) == list(_spead.STAT_NAMES)
    assert DROP_COUNTERS
    for name in DROP_COUNTERS:
        assert name in stats


def test_every_counter_is_documented_with_its_mode():
    rows = dict(re.findall(r"^\| `([a-z0-9_]+)` \| (sum|maximum) \|",
                           MONITORING.read_text(), re.M))
    assert set(rows) == set(_spead.STAT_NAMES), (
        f"undocumented: {sorted(set(_spead.STAT_NAMES) - set(rows))}, "
        f"documented but unknown: {sorted(set(rows) - set(_spead.STAT_NAMES))}")
    assert {n for n, mode in rows.items() if mode == "maximum"} == set(_spead.STAT_MAXIMA)


def test_counters_named_elsewhere_exist():
    """The service's hand-picked lists (log line, per-source statistics, the stats table)
    name counters that exist: a renamed counter would otherwise show as 0."""
    from daqd.service.daemon import LOG_COUNTERS
    from daqd.service.stream_runner import SOURCE_COUNTERS
    from daqd.service.zmq_clients import MAIN_COUNTERS

    for names in (LOG_COUNTERS, SOURCE_COUNTERS, MAIN_COUNTERS):
        assert set(names) <= set(_spead.STAT_NAMES), set(names) - set(_spead.STAT_NAMES)
