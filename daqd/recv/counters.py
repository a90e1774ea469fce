"""Names of the receive counters, taken from the compiled core.

The one list of counters is the ``StatIndex`` enum in cython_ext/stats.pxd;
``daqd._spead`` makes ``STAT_NAMES`` and ``STAT_MAXIMA`` from it, and this
module names the same indices without the ``STAT_`` prefix.  Meanings are in
docs/monitoring.md (tests/core/test_counters.py checks each counter is there).
"""

from enum import IntEnum

from daqd import _spead

#: Index of each counter in the stream's counter array (``StatIndex.PACKETS``, ...).
StatIndex = IntEnum(  # type: ignore[misc]
    "StatIndex", [(name.upper(), i) for i, name in enumerate(_spead.STAT_NAMES)],
    module=__name__,
)

#: Counters whose mode is "maximum" (spead2's stream_stat_config::mode).
MAXIMA = frozenset(StatIndex[name.upper()] for name in _spead.STAT_MAXIMA)

#: Counters that count packets (or frames) not used, one per reason.
DROP_COUNTERS = tuple(
    s.name.lower() for s in StatIndex if s.name.startswith(("PACKETS_REJECTED", "PCAP_FRAMES"))
)

#: Chunk mode: counters of heaps not placed, one per reason.
CHUNK_HEAP_DROP_COUNTERS = tuple(
    s.name.lower()
    for s in StatIndex
    if s.name.startswith("CHUNK_HEAPS_REJECTED")
    or s.name in ("CHUNK_HEAPS_TOO_OLD", "CHUNK_HEAPS_NO_FREE_CHUNK")
)

#: Every counted loss, one counter per reason: packets not used, heaps not placed,
#: packets the kernel dropped for want of socket buffer, partial heaps evicted
#: unfinished.  ``daqd top`` sums them (units differ: packets and heaps) and names
#: the largest.  Byte counters (stream_bytes_skipped, tcp_bytes_truncated,
#: file_bytes_truncated) are not here: docs/monitoring.md, "What counts as loss".
LOSS_COUNTERS = (*DROP_COUNTERS, *CHUNK_HEAP_DROP_COUNTERS, "packets_dropped_socket_buffer",
                 "incomplete_heaps_evicted")
