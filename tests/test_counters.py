"""daqd/counters.py mirrors the compiled core's counter enum by name and order."""

from daqd import _spead
from daqd.recv.counters import DROP_COUNTERS, MAXIMA, StatIndex


def test_stat_index_matches_compiled_names():
    assert [s.name.lower() for s in StatIndex] == list(_spead.STAT_NAMES)


def test_stat_index_values_are_positions():
    assert [int(s) for s in StatIndex] == list(range(len(_spead.STAT_NAMES)))


def test_maxima_match():
    assert {s.name.lower() for s in MAXIMA} == set(_spead.STAT_MAXIMA)


def test_drop_counters_exist_and_are_reported():
    stats = _spead.HeapStream().stats()
    assert list(stats) == list(_spead.STAT_NAMES)
    assert DROP_COUNTERS
    for name in DROP_COUNTERS:
        assert name in stats
