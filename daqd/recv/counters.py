"""Names of the receive counters, mirrored from the compiled core.

WARNING: StatIndex must list the counters in the order of ``StatIndex`` in
cython_ext/stats.pxd (and ``daqd._spead.STAT_NAMES``); tests/test_counters.py
fails when they drift apart.  Meanings are in docs/monitoring.md.
"""

from enum import IntEnum


class StatIndex(IntEnum):
    """Index of each counter in the stream's counter array."""

    PACKETS = 0
    BATCHES = 1
    HEAPS = 2
    INCOMPLETE_HEAPS_EVICTED = 3
    INCOMPLETE_HEAPS_FLUSHED = 4
    SINGLE_PACKET_HEAPS = 5
    WORKER_BLOCKED = 6
    MAX_BATCH = 7
    BYTES = 8
    PAYLOAD_BYTES = 9
    HEAPS_COMPLETE = 10
    STOP_HEAPS = 11
    PACKETS_REJECTED_TOO_SHORT = 12
    PACKETS_REJECTED_BAD_MAGIC = 13
    PACKETS_REJECTED_BAD_VERSION = 14
    PACKETS_REJECTED_BAD_FLAVOUR = 15
    PACKETS_REJECTED_ITEMS_OVERFLOW = 16
    PACKETS_REJECTED_MISSING_ITEMS = 17
    PACKETS_REJECTED_PAYLOAD_LENGTH = 18
    PACKETS_REJECTED_PAYLOAD_OUTSIDE_HEAP = 19
    PACKETS_REJECTED_HEAP_TOO_LARGE = 20
    PACKETS_REJECTED_INCONSISTENT_HEAP = 21
    PACKETS_REJECTED_OUT_OF_ORDER = 22
    PACKETS_REJECTED_DUPLICATE = 23
    PACKETS_REJECTED_AFTER_STOP = 24
    PACKETS_REJECTED_TRUNCATED = 25
    PACKETS_REJECTED_NO_MEMORY = 26
    PACKETS_REJECTED_UNSIZED = 27
    STREAM_BYTES_SKIPPED = 28
    PCAP_FRAMES_SKIPPED_NOT_UDP = 29
    PCAP_FRAMES_SKIPPED_FRAGMENT = 30
    PCAP_FRAMES_SKIPPED_PORT = 31
    PCAP_RECORDS_TRUNCATED = 32
    PACKETS_DROPPED_SOCKET_BUFFER = 33
    PACKETS_TAP_DROPPED = 34
    CHUNKS_COMPLETED = 35
    CHUNK_HEAPS_PLACED = 36
    CHUNK_HEAPS_PRESENT = 37
    CHUNK_HEAPS_TOO_OLD = 38
    CHUNK_HEAPS_REJECTED_SIZE = 39
    CHUNK_HEAPS_REJECTED_NO_TIMESTAMP = 40
    CHUNK_HEAPS_REJECTED_MISALIGNED = 41
    CHUNK_HEAPS_REJECTED_SUBSTREAM = 42
    CHUNK_HEAPS_REJECTED_BY_PLACE = 43
    CHUNK_HEAPS_REJECTED_PLACEMENT = 44
    CHUNK_HEAPS_NO_FREE_CHUNK = 45
    CHUNK_PACKETS_DISCARDED = 46
    CHUNK_SLOTS_MISSING = 47
    CHUNK_WINDOW_RESETS = 48


#: Counters whose mode is "maximum" (spead2's stream_stat_config::mode).
MAXIMA = frozenset({StatIndex.MAX_BATCH})

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
